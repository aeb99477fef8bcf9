"""The ``dalle`` command: parse arguments, call one function, report.

Bad input gets one line on stderr and exit status 2, never a traceback
(set DALLE_DEBUG=1 to see the traceback of an error).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cli import args as A

log = logging.getLogger("dalle")

DEFAULT_KEEP_FRACTION = 0.5   # `dalle edit` without --keep-rows / --keep-fraction keeps the top half


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


# ----------------------------------------------------------------------------- helpers

def resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available")
    return name


def load_preset_arg(a: argparse.Namespace):
    from train.config import load_preset
    return load_preset(a.preset, a.set or [])


def sampling_options(a: argparse.Namespace) -> dict:
    return dict(n=a.n, seed=a.seed, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                guidance=a.guidance, candidates=a.candidates, batch_size=a.batch_size)


def load_model(a: argparse.Namespace):
    from dalle.bundle import load_bundle
    return load_bundle(a.model, device=resolve_device(a.device))


def warn_long_prompts(bundle, prompts: list[str]) -> None:
    limit = bundle.tokenizer.text_len
    for p in prompts:
        n = bundle.tokenizer.n_tokens(p)
        if n > limit:
            print(f"dalle: warning: prompt is {n} tokens, truncated to {limit}: {p[:60]!r}", file=sys.stderr)


def report(paths, grid) -> None:
    for p in paths:
        print(p)
    print(grid)


# ----------------------------------------------------------------------------- commands

def cmd_generate(a: argparse.Namespace) -> int:
    prompts = [p.strip() for p in a.prompts]
    if any(not p for p in prompts):
        raise UsageError("empty prompt: give a caption such as \"a red circle\"")
    from dalle.images import save_generations
    from dalle.pipeline import generate
    bundle = load_model(a)
    warn_long_prompts(bundle, prompts)
    opts = sampling_options(a)
    gens = generate(bundle, prompts, **opts, progress=not a.quiet)
    paths, grid = save_generations(gens, a.out, {**opts, "model": str(bundle.path)}, scale=a.scale)
    report(paths, grid)
    return 0


def cmd_edit(a: argparse.Namespace) -> int:
    prompt = a.prompt.strip()
    if not prompt:
        raise UsageError("empty prompt: describe the whole edited image")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(a.image) as im:
            image = im.convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"image not found: {a.image}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"cannot read {a.image} as an image ({e.__class__.__name__})") from None
    from dalle.images import save_generations
    from dalle.pipeline import edit
    bundle = load_model(a)
    warn_long_prompts(bundle, [prompt])
    opts = sampling_options(a)
    if a.keep_rows is None and a.keep_fraction is None:
        a.keep_fraction = DEFAULT_KEEP_FRACTION
    gens = edit(bundle, image, prompt, keep_rows=a.keep_rows, keep_fraction=a.keep_fraction, **opts,
                progress=not a.quiet)
    settings = {**opts, "model": str(bundle.path), "image": str(a.image), "keep_rows": a.keep_rows,
                "keep_fraction": a.keep_fraction}
    paths, grid = save_generations(gens, a.out, settings, scale=a.scale)
    report(paths, grid)
    return 0


def cmd_data_inspect(a: argparse.Namespace) -> int:
    from train.data.inspect import format_report, inspect_shards
    preset = load_preset_arg(a)
    print(format_report(inspect_shards(a.shards, preset.data)))
    return 0


def cmd_data_synthetic(a: argparse.Namespace) -> int:
    from synth.scenes import build_scenes
    from synth.signs import build_signs
    build = {"scenes": build_scenes, "signs": build_signs}[a.data_command]
    for p in build(a.out, a.n, resolution=a.resolution, seed=a.seed, split=a.split, shard_size=a.shard_size):
        print(p)
    return 0


def cmd_data_emoji(a: argparse.Namespace) -> int:
    from synth.emoji import build_emoji
    stats = build_emoji(a.out, a.resolution, sources=a.sources, held_out=a.held_out,
                        shard_size=a.shard_size)
    for p in [*stats.train_shards, *stats.val_shards]:
        print(p)
    return 0


def cmd_tokenizer_train(a: argparse.Namespace) -> int:
    from train.text_tokenizer import captions_from_shards, train_tokenizer
    preset = load_preset_arg(a)
    vocab = a.vocab_size or preset.dalle.text_vocab_size
    path = train_tokenizer(captions_from_shards(a.shards, preset.data), vocab, a.out,
                           lowercase=preset.data.lowercase)
    print(path)
    return 0


def cmd_vqvae_train(a: argparse.Namespace) -> int:
    from train.vqvae_fit import fit_vqvae
    preset = load_preset_arg(a)
    print(fit_vqvae(preset, Path(a.out), train_shards=a.shards or None, resume=not a.no_resume))
    return 0


def cmd_vqvae_eval(a: argparse.Namespace) -> int:
    import json
    from dalle.atomic import atomic_write_text
    from evaluation.recon import evaluate_sources, to_markdown
    from vqvae.model import DiscreteVAE
    device = resolve_device(a.device)
    vqvae = DiscreteVAE.from_checkpoint(a.vqvae, device=device)
    names = [Path(s.rstrip("/")).name or s for s in a.shards]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    report = evaluate_sources(vqvae, dict(zip(names, a.shards)), max_images=a.max_images,
                              batch_size=a.batch_size, device=device, out_dir=a.out)
    table = to_markdown(report)
    if a.out:
        atomic_write_text(Path(a.out) / "recon.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(Path(a.out) / "recon.md", table)
    print(table, end="")
    return 0


def cmd_tokens(a: argparse.Namespace) -> int:
    import torch
    from train.data.tokens import precompute_tokens
    from vqvae.model import DiscreteVAE
    preset = load_preset_arg(a)
    device = resolve_device(a.device)
    vqvae = DiscreteVAE.from_checkpoint(a.vqvae).to(device).eval()
    if vqvae.config.resolution != preset.data.resolution:
        raise UsageError(f"{a.vqvae} works at {vqvae.config.resolution} px but preset "
                         f"{preset.name!r} at {preset.data.resolution} px")

    def encode(images: "torch.Tensor") -> "torch.Tensor":
        with torch.inference_mode():
            return vqvae.encode(images.to(device)).cpu()

    stats = precompute_tokens(a.shards, a.out, encode, preset.data, batch_size=a.batch_size,
                              shard_size=a.shard_size)
    print(stats)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from train.dalle_fit import fit_dalle
    preset = load_preset_arg(a)
    if not a.tokens and not a.shards:
        raise UsageError("give --tokens (precomputed token shards) or --shards with --on-the-fly")
    print(fit_dalle(preset, Path(a.out), tokenizer_path=a.tokenizer, vqvae_dir=a.vqvae,
                    token_shards=a.tokens or None, image_shards=a.shards or None, resume=not a.no_resume))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from evaluation.run import run_eval
    result = run_eval(a.model, a.out, n=a.n, temperatures=a.temperatures, candidates=a.candidates,
                      seed=a.seed, device=resolve_device(a.device), batch_size=a.batch_size,
                      prompts_per_part=a.prompts_per_part)
    print(result.get("markdown_path", a.out))
    return 0


# ----------------------------------------------------------------------------- parser

def add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=A.positive_int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=A.seed, default=0, help="each image depends on (seed, prompt, index) only")
    p.add_argument("--out", default="out", help="output directory (default ./out)")
    p.add_argument("--model", default=None, help="model bundle directory (default: the embedded model)")
    p.add_argument("--temperature", type=A.positive_float, default=1.0)
    p.add_argument("--top-k", type=A.positive_int, default=None, help="keep the k most likely codes")
    p.add_argument("--top-p", type=A.probability, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--guidance", type=A.nonneg_float, default=1.0,
                   help="classifier-free guidance scale (1: off)")
    p.add_argument("--candidates", type=A.positive_int, default=None,
                   help="draw this many per prompt and keep the best -n by mean log-probability")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=A.positive_int, default=16)
    p.add_argument("--scale", type=A.positive_int, default=1, help="nearest-neighbour upscaling of the PNGs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_preset(p: argparse.ArgumentParser, default: str = "small") -> None:
    p.add_argument("--preset", default=default, help=f"preset name in configs/ or a YAML path (default {default})")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a preset value, e.g. --set dalle_train.max_steps=100")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dalle", description="DALL·E-style text-to-image generation: sample, edit, "
                    "build data, train and evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("generate", help="draw images for captions")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    add_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="complete a partial image under a caption (zero-shot image-to-image)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("prompt", metavar="PROMPT")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep-rows", type=A.positive_int, default=None, help="keep the top R rows of codes")
    keep.add_argument("--keep-fraction", type=A.fraction, default=None,
                      help=f"keep this fraction of the codes in raster order (default {DEFAULT_KEEP_FRACTION})")
    add_sampling(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("data", help="inspect shards and build the built-in datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", parser_class=Parser, required=True)
    q = dsub.add_parser("inspect", help="stream shards through the training decode path and count")
    q.add_argument("shards", nargs="+", metavar="SHARDS", help="paths, brace patterns or pipe: commands")
    add_preset(q)
    q.set_defaults(func=cmd_data_inspect)
    for name in ("scenes", "signs"):
        q = dsub.add_parser(name, help=f"write synthetic {name} as img2dataset shards")
        q.add_argument("out", metavar="OUT_DIR")
        q.add_argument("-n", type=A.positive_int, default=20000, help="number of samples")
        q.add_argument("--resolution", type=A.positive_int, default=64)
        q.add_argument("--seed", type=A.seed, default=0)
        q.add_argument("--split", choices=("train", "heldout"), default="train")
        q.add_argument("--shard-size", type=A.positive_int, default=1000)
        q.set_defaults(func=cmd_data_synthetic)
    q = dsub.add_parser("emoji", help="write emoji artwork with their names as img2dataset shards")
    q.add_argument("out", metavar="OUT_DIR")
    q.add_argument("--resolution", type=A.positive_int, default=64)
    q.add_argument("--shard-size", type=A.positive_int, default=1000)
    q.add_argument("--sources", nargs="+", default=["auto"],
                   help="emoji sources to use (default: every installed one)")
    q.add_argument("--held-out", type=A.fraction, default=0.02,
                   help="share of emoji names kept out of training (written to val/)")
    q.set_defaults(func=cmd_data_emoji)

    p = sub.add_parser("tokenizer", help="train the caption BPE")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="TOKENIZER_COMMAND", parser_class=Parser,
                            required=True)
    q = tsub.add_parser("train", help="train a byte-level BPE on the captions of shards")
    q.add_argument("shards", nargs="+", metavar="SHARDS")
    q.add_argument("--vocab-size", type=A.positive_int, default=None,
                   help="default: the preset's dalle.text_vocab_size")
    q.add_argument("--out", default="tokenizer.json")
    add_preset(q)
    q.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("vqvae", help="train and evaluate the discrete VAE (image tokenizer)")
    vsub = p.add_subparsers(dest="vqvae_command", metavar="VQVAE_COMMAND", parser_class=Parser, required=True)
    q = vsub.add_parser("train", help="fit the dVAE on image shards; resumes by itself")
    q.add_argument("shards", nargs="*", metavar="SHARDS", help="default: the preset's data.train_shards")
    q.add_argument("--out", default="runs/vqvae")
    q.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    add_preset(q)
    q.set_defaults(func=cmd_vqvae_train)
    q = vsub.add_parser("eval", help="reconstruction PSNR, codebook usage and perplexity on held-out shards")
    q.add_argument("shards", nargs="+", metavar="SHARDS", help="one source per argument, reported separately")
    q.add_argument("--vqvae", required=True, help="exported dVAE directory (or a model bundle)")
    q.add_argument("--max-images", type=A.positive_int, default=256, help="images read per source")
    q.add_argument("--batch-size", type=A.positive_int, default=64)
    q.add_argument("--out", default=None, help="folder for recon.json, recon.md and reconstruction PNGs")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.set_defaults(func=cmd_vqvae_eval)

    p = sub.add_parser("tokens", help="encode image shards once into token shards for transformer training")
    p.add_argument("shards", nargs="+", metavar="SHARDS")
    p.add_argument("--vqvae", required=True, help="exported dVAE directory")
    p.add_argument("--out", required=True, help="output directory for token shards")
    p.add_argument("--batch-size", type=A.positive_int, default=64)
    p.add_argument("--shard-size", type=A.positive_int, default=10000)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_preset(p)
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("train", help="train the transformer; resumes by itself, writes an inference bundle")
    p.add_argument("--tokens", nargs="+", default=None, help="precomputed token shards (the default path)")
    p.add_argument("--shards", nargs="+", default=None, help="image shards, tokenised on the fly")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json")
    p.add_argument("--vqvae", default=None, help="exported dVAE directory (bundled with the model)")
    p.add_argument("--out", default="runs/dalle")
    p.add_argument("--no-resume", action="store_true")
    add_preset(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="pass@k, temperature sweep, reranking and reconstruction metrics")
    p.add_argument("--model", default=None, help="model bundle directory (default: the embedded model)")
    p.add_argument("--out", default="eval_out")
    p.add_argument("-n", type=A.positive_int, default=20, help="samples per prompt")
    p.add_argument("--temperatures", type=A.positive_float, nargs="+", default=[0.7, 1.0])
    p.add_argument("--candidates", type=A.positive_int, default=8, help="M for reranked pass@1")
    p.add_argument("--prompts-per-part", type=A.positive_int, default=4)
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=A.positive_int, default=32)
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if a.command is None:
        parser.print_help()
        return 2
    try:
        return a.func(a)
    except KeyboardInterrupt:
        print("dalle: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if os.environ.get("DALLE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        print(f"dalle {a.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
