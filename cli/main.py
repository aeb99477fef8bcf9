"""The ``dalle`` command: parse arguments, call one function, report.

Bad input gets one line on stderr and exit status 2, never a traceback
(set DALLE_DEBUG=1 to see the traceback of an error); an internal error keeps its
traceback and exit status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from cli import args as A
from cli.threads import configure_threads

log = logging.getLogger("dalle")

DEFAULT_KEEP_FRACTION = 0.5   # `dalle edit` without --keep-rows / --keep-fraction keeps the top half


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


# What bad user input raises: options and files checked by the library (ValueError, its
# BundleError) and paths that are missing or not writable. RuntimeError, KeyError, TypeError, ...
# are bugs and end in a traceback (exit 1).
USER_ERRORS = (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError)


# A ValueError is the user's only when this project raised it (or it is about a file's content);
# one raised deep inside a library (PIL's "x1 must be greater than or equal to x0") is a bug.
OUR_PACKAGES = frozenset({"cli", "common", "dalle", "evaluation", "serve", "synth", "train", "vqvae"})
CONTENT_ERRORS = (UnicodeDecodeError, json.JSONDecodeError)


def raised_by_this_project(e: BaseException) -> bool:
    """Whether the innermost Python frame of ``e``'s traceback is in one of this project's packages."""
    if not isinstance(e, ValueError) or isinstance(e, CONTENT_ERRORS):
        return True
    tb = e.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in OUR_PACKAGES


class Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


# ----------------------------------------------------------------------------- helpers

def resolve_device(name: str) -> str:
    from dalle.api import resolve_device as resolve
    return str(resolve(name))


def load_preset_arg(a: argparse.Namespace, section: str | None = None):
    """The preset of ``--preset`` with ``--set`` overrides (and ``--logger`` for the training ``section``)."""
    from train.config import load_preset
    overrides = list(a.set or [])
    if section is not None and getattr(a, "logger", None):
        overrides.append(f"{section}.logger={a.logger}")
    return load_preset(a.preset, overrides)


def sampling_options(a: argparse.Namespace, recommended=None):
    """The one :class:`dalle.SamplingOptions` of a generate / edit command (validated here, once).

    Temperature, top-k, top-p and guidance not given on the command line come from ``recommended``
    (the model's :attr:`dalle.Dalle.sampling`), else the defaults; ``--top-k 0`` and ``--top-p 1`` are off.
    """
    from dalle.options import RECOMMENDABLE, SamplingOptions
    scorer = "clip" if scorer_dir(a) else a.scorer       # a scorer directory is used as the clip scorer
    base = recommended if recommended is not None else SamplingOptions()
    given = {name: getattr(a, name) for name in RECOMMENDABLE if getattr(a, name) is not None}
    if given.get("top_k") == 0:
        given["top_k"] = None
    if given.get("top_p") == 1.0:
        given["top_p"] = None
    return SamplingOptions(**(base.recommendable() | given), candidates=a.candidates, batch_size=a.batch_size, scorer=scorer,
                           dtype=a.dtype, compile=a.compile, use_cache=not a.no_cache)


def model_sampling_options(a: argparse.Namespace, model: Any):
    """:func:`sampling_options` with ``model``'s recommended settings, its ``auto`` scorer named as what it
    is on this model (so the settings written beside each image say which scorer ranked it)."""
    options = sampling_options(a, model.sampling)
    return dataclasses.replace(options, scorer=model.resolve_scorer(options.scorer))


def scorer_dir(a: argparse.Namespace) -> str | None:
    """``--scorer`` when it names a scorer directory rather than a registered scorer."""
    from dalle.rerank import MODEL_SCORERS, SCORERS
    name = getattr(a, "scorer", None)
    if not name or name in SCORERS or name in MODEL_SCORERS or not os.path.isdir(name):
        return None
    return name


def load_model(a: argparse.Namespace):
    from dalle import Dalle
    model = Dalle.from_pretrained(a.model, device=a.device)
    if scorer_dir(a):
        model.set_scorer(scorer_dir(a))      # refused unless trained with this model's tokenizer
    return model


# disk and filesystem failures that are the user's to fix (full disk, quota, read-only, no access)
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG}


def check_prompt(text: str) -> str:
    """The stripped prompt; bytes that are not UTF-8 (kept by Python as surrogates) are refused."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"prompt is not valid UTF-8 text (byte 0x{ord(text[e.start]) & 0xFF:02x} at "
                         f"position {e.start}); pass it in UTF-8") from None
    return text.strip()


def check_out_dir(out: str) -> Path:
    """Create ``--out`` if needed and make sure a file can be written there, before any sampling."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is an existing file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--out {out}: part of the path is a file, not a folder") from None
    except OSError as e:
        raise UsageError(f"--out {out} cannot be created: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".dalle-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out {out} is not writable: {e.strerror or e}") from None
    return path


def load_edit_image(path: str, resolution: int):
    """``dalle edit``'s input through the training decoder (colour modes, 16-bit, alpha, the
    decompression-bomb guard, centre crop): (3, resolution, resolution) float in [0, 1]."""
    from dalle.pipeline import prepare_image
    try:
        return prepare_image(path, resolution)[0]
    except ValueError as e:
        raise UsageError(str(e)) from None


def warn_long_prompts(model, prompts: list[str]) -> None:
    limit = model.tokenizer.text_len
    for p in prompts:
        n = model.tokenizer.n_tokens(p)
        if n > limit:
            print(f"dalle: warning: prompt is {n} tokens, truncated to {limit}: {p[:60]!r}", file=sys.stderr)


def report(gens, settings: dict, paths, grid, *, as_json: bool = False, show_scores: bool = False) -> None:
    """Print the written paths (with --show-scores: each image's candidate index and score), or with
    --json one JSON line per image (the grid is in each line)."""
    if not as_json:
        for g, p in zip(gens, paths):
            print(f"{p}\tcandidate {g.index}\t{settings.get('scorer')} {g.score:.4f}" if show_scores else p)
        print(grid)
        return
    import json
    for g, p in zip(gens, paths):
        print(json.dumps({"path": str(p), "prompt": g.prompt, "seed": settings["seed"], "index": g.index,
                          "image_seed": g.seed, "score": round(g.score, 6), "grid": str(grid),
                          "settings": settings}, sort_keys=True))


# ----------------------------------------------------------------------------- commands

def cmd_generate(a: argparse.Namespace) -> int:
    prompts = [check_prompt(p) for p in a.prompts]
    if any(not p for p in prompts):
        raise UsageError("empty prompt: give a caption such as \"a red circle\"")
    check_out_dir(a.out)
    from dalle.images import save_generations
    sampling_options(a)                                    # bad options fail before the model loads
    model = load_model(a)
    options = model_sampling_options(a, model)
    warn_long_prompts(model, prompts)
    gens = model.generate(prompts, n=a.n, seed=a.seed, options=options, progress=not a.quiet)
    settings = {"n": a.n, "seed": a.seed, **options.to_dict(), "model": str(model.path)}
    report(gens, settings, *save_generations(gens, a.out, settings, scale=a.scale, overwrite=a.overwrite),
           as_json=a.json,
           show_scores=a.show_scores)
    return 0


def cmd_edit(a: argparse.Namespace) -> int:
    prompt = check_prompt(a.prompt)
    if not prompt:
        raise UsageError("empty prompt: describe the whole edited image")
    if not Path(a.image).is_file():
        raise UsageError(f"image not found: {a.image}")
    check_out_dir(a.out)
    from dalle.images import save_generations
    sampling_options(a)                                    # bad options fail before the model loads
    model = load_model(a)
    options = model_sampling_options(a, model)
    image = load_edit_image(a.image, model.resolution)                 # (3, R, R) in [0, 1]
    warn_long_prompts(model, [prompt])
    if a.keep_rows is None and a.keep_fraction is None:
        a.keep_fraction = DEFAULT_KEEP_FRACTION
    gens = model.edit(image, prompt, keep_rows=a.keep_rows, keep_fraction=a.keep_fraction, n=a.n, seed=a.seed,
                      options=options, progress=not a.quiet)
    settings = {"n": a.n, "seed": a.seed, **options.to_dict(), "model": str(model.path), "image": str(a.image),
                "keep_rows": a.keep_rows, "keep_fraction": a.keep_fraction}
    report(gens, settings, *save_generations(gens, a.out, settings, scale=a.scale, overwrite=a.overwrite),
           as_json=a.json,
           show_scores=a.show_scores)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        from serve.app import run
        from serve.requests import Limits
    except ImportError as e:
        raise UsageError(f"dalle serve needs the serve extra ({e.name} is missing): "
                         "pip install -e \".[serve]\"") from None
    limits = Limits(max_n=a.max_n, max_candidates=a.max_candidates, max_prompts=a.max_prompts,
                    max_upload_bytes=int(a.max_upload_mb * 2**20), queue_size=a.queue)
    run(a.model, host=a.host, port=a.port, device=a.device, limits=limits)
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
    extra = {}
    if a.data_command == "signs":
        from synth.signs import DEFAULT_HELD_OUT_WORDS
        extra["held_out"] = (*DEFAULT_HELD_OUT_WORDS, *a.held_out_words)
    else:
        extra["relation_share"] = a.relation_share
    for p in build(a.out, a.n, resolution=a.resolution, seed=a.seed, split=a.split, shard_size=a.shard_size,
                   **extra):
        print(p)
    return 0


def cmd_data_emoji(a: argparse.Namespace) -> int:
    from synth.emoji import build_emoji
    stats = build_emoji(a.out, a.resolution, sources=a.sources, held_out=a.held_out,
                        shard_size=a.shard_size)
    for p in [*stats.train_shards, *stats.val_shards]:
        print(p)
    return 0


def cmd_data_recolour(a: argparse.Namespace) -> int:
    from synth.recolour import build_recoloured
    paths, counts = build_recoloured(a.shards, a.out, copies=a.copies, seed=a.seed, resolution=a.resolution,
                                     shard_size=a.shard_size)
    for p in paths:
        print(p)
    print(", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    return 0


def cmd_tokenizer_train(a: argparse.Namespace) -> int:
    from train.text_tokenizer import captions_from_shards, train_tokenizer
    preset = load_preset_arg(a)
    vocab = a.vocab_size or preset.dalle.text_vocab_size
    path = train_tokenizer(captions_from_shards(a.shards, preset.data), vocab, a.out,
                           lowercase=preset.data.lowercase, spell=not a.no_spell)
    print(path)
    return 0


def cmd_vqvae_train(a: argparse.Namespace) -> int:
    from train.vqvae_fit import fit_vqvae
    preset = load_preset_arg(a, "vqvae_train")
    print(fit_vqvae(preset, Path(a.out), train_shards=a.shards or None, resume=not a.no_resume,
                    init_from=a.init_from))
    return 0


def cmd_vqvae_codebook(a: argparse.Namespace) -> int:
    from train.patch_vq_module import fit_codebook
    from vqvae.patch_vq import PatchVQConfig
    preset = load_preset_arg(a, "vqvae_train")
    if not isinstance(preset.vqvae, PatchVQConfig):
        raise UsageError(f"preset {preset.name!r} has no patch_vq image tokenizer (vqvae.kind)")
    counts = a.images if len(a.images) > 1 else a.images * len(a.shards)
    recolour = a.recolour if len(a.recolour) > 1 else a.recolour * len(a.shards)
    for flag, given in (("--images", counts), ("--recolour", recolour)):
        if len(given) != len(a.shards):
            raise UsageError(f"{flag} takes one number or one per source ({len(a.shards)} sources, "
                             f"{len(given)} numbers)")
    if a.init_from is not None and not Path(a.init_from).is_dir():
        raise UsageError(f"--init-from {a.init_from}: no such directory")
    try:
        path, stats = fit_codebook(preset.vqvae, a.shards, counts, a.out, iters=preset.vqvae_train.kmeans_iters,
                                   seed=preset.vqvae_train.seed, recolour=recolour, init_from=a.init_from)
    except ValueError as e:       # an --init-from that is not a matching PatchVQ, too few distinct patches
        raise UsageError(str(e)) from None
    if "same_code_share" in stats:
        print(f"{stats['same_code_share']:.1%} of the training patches keep their code index "
              f"(from {a.init_from})", file=sys.stderr)
    print(path)
    return 0


def cmd_vqvae_eval(a: argparse.Namespace) -> int:
    import json
    from dalle.atomic import atomic_write_text
    from evaluation.recon import evaluate_sources, to_markdown
    from train.data.images import load_described_images
    from vqvae.registry import load_image_tokenizer
    device = resolve_device(a.device)
    vqvae = load_image_tokenizer(a.vqvae, device=device)
    names = [Path(s.rstrip("/")).name or s for s in a.shards]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    loaded = {name: load_described_images(source, vqvae.config.resolution, a.max_images)
              for name, source in zip(names, a.shards)}
    report = evaluate_sources(vqvae, {n: x for n, (x, _) in loaded.items()}, batch_size=a.batch_size,
                              device=device, out_dir=a.out, descriptions={n: d for n, (_, d) in loaded.items()})
    table = to_markdown(report)
    if a.out:
        atomic_write_text(Path(a.out) / "recon.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(Path(a.out) / "recon.md", table)
    print(table, end="")
    return 0


def cmd_tokens(a: argparse.Namespace) -> int:
    import torch
    from train.config import with_image_tokenizer
    from train.data.tokens import precompute_tokens
    from vqvae.registry import load_image_tokenizer
    device = resolve_device(a.device)
    image_tokenizer = load_image_tokenizer(a.vqvae, device=device)
    preset = with_image_tokenizer(load_preset_arg(a), image_tokenizer.config)   # resolution from the artefact

    def encode(images: "torch.Tensor") -> "torch.Tensor":
        with torch.inference_mode():
            return image_tokenizer.encode(images.to(device)).cpu()

    stats = precompute_tokens(a.shards, a.out, encode, preset.data, batch_size=a.batch_size,
                              shard_size=a.shard_size)
    print(stats)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from train.dalle_fit import fit_dalle
    preset = load_preset_arg(a, "dalle_train")
    if not a.tokens and not a.shards:
        raise UsageError("give --tokens (precomputed token shards) or --shards with --on-the-fly")
    print(fit_dalle(preset, Path(a.out), tokenizer_path=a.tokenizer, vqvae_dir=a.vqvae,
                    token_shards=a.tokens or None, image_shards=a.shards or None, resume=not a.no_resume,
                    init_from=a.init_from, val_token_shards=a.val_tokens or None))
    return 0


def cmd_scorer_train(a: argparse.Namespace) -> int:
    from train.scorer_fit import fit_scorer
    preset = load_preset_arg(a, "scorer_train")
    print(fit_scorer(preset, Path(a.out), train_shards=a.shards, tokenizer_path=a.tokenizer,
                     resume=not a.no_resume, init_from=a.init_from))
    return 0


def cmd_scorer_eval(a: argparse.Namespace) -> int:
    from evaluation.scorer_eval import evaluate_scorer, to_markdown
    report = evaluate_scorer(a.scorer, a.shards, tokenizer_path=a.tokenizer, max_images=a.max_images,
                             batch_size=a.batch_size, seed=a.seed, device=resolve_device(a.device), out=a.out)
    print(to_markdown(report), end="")
    return 0


def cmd_scorer_samples(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from common.shards import expand_sources
    from train.scorer_samples import harvest, split_samples
    if a.candidates < 2:
        raise UsageError(f"--candidates must be >= 2 (a passing and a failing one), got {a.candidates}")
    if not 0 <= a.val_share < 1:
        raise UsageError(f"--val-share must be in [0, 1), got {a.val_share}")
    expand_sources(a.shards)                      # a missing source is one line before the model loads
    model = load_model(a)
    bar = tqdm(total=a.prompts, desc="captions", unit="caption")
    stats = harvest(model, a.shards, a.out, prompts=a.prompts, candidates=a.candidates, seed=a.seed,
                    progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    split = split_samples(a.out, val_share=a.val_share, copies=a.copies)
    print(f"{stats['captions']} captions, {stats['passed']} of {stats['candidates']} candidates pass the checker, "
          f"{stats['mixed_captions']} captions with both: {stats['samples']} samples, {split['train_samples']} in "
          f"{a.out}/train (x{a.copies}), {split['val_samples']} in {a.out}/val")
    return 0


def cmd_scorer_attach(a: argparse.Namespace) -> int:
    from dalle.bundle import load_bundle
    from dalle.scorer import ImageTextScorer, attach_scorer
    load_bundle(a.model)                             # a bundle that loads, before it is changed
    print(attach_scorer(a.model, ImageTextScorer.from_checkpoint(a.scorer)))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from evaluation.run import run_eval
    result = run_eval(a.model, a.out, n=a.n, temperatures=a.temperatures, candidates=a.candidates,
                      guidance_values=a.guidance, seed=a.seed, device=resolve_device(a.device),
                      batch_size=a.batch_size, prompts_per_part=a.prompts_per_part, top_k=a.top_k, top_p=a.top_p,
                      suite=a.suite, kinds=a.kinds)
    print(result.get("markdown_path", a.out))
    return 0


# ----------------------------------------------------------------------------- parser

def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=A.positive_int, default=None,
                   help="CPU threads for torch (default: the cores other jobs leave free, unless "
                        "OMP_NUM_THREADS is set)")


def add_sampling(p: argparse.ArgumentParser) -> None:
    add_threads(p)
    p.add_argument("-n", type=A.positive_int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=A.seed, default=0, help="each image depends on (seed, prompt, index) only")
    p.add_argument("--out", default="out", help="output directory (default ./out)")
    p.add_argument("--model", default=None, help="model bundle directory (default: the embedded model)")
    p.add_argument("--temperature", type=A.positive_float, default=None,
                   help="(default: the model's recommended setting, else 1)")
    p.add_argument("--top-k", type=A.nonneg_int, default=None,
                   help="keep the k most likely codes; 0: off (default: the model's recommended setting, else off)")
    p.add_argument("--top-p", type=A.probability, default=None,
                   help="nucleus sampling mass in (0, 1]; 1: off (default: the model's, else off)")
    p.add_argument("--guidance", type=A.nonneg_float, default=None,
                   help="classifier-free guidance scale, 1: off (default: the model's recommended setting, else 1)")
    p.add_argument("--candidates", type=A.positive_int, default=None,
                   help="draw this many per prompt and keep the best -n by --scorer")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=A.positive_int, default=16)
    p.add_argument("--scorer", default="auto",
                   help="how --candidates are ranked: auto (default: clip when the model has a scorer, else "
                        "logprob), logprob (mean code log-probability), pmi (the transformer's caption-image "
                        "pointwise mutual information: log p(codes | caption) - log p(codes | no caption)), "
                        "clip (the model's image-caption scorer), or a scorer directory from 'dalle scorer train'")
    p.add_argument("--show-scores", action="store_true",
                   help="print each image's candidate index and score next to its path")
    p.add_argument("--dtype", default="auto",
                   help="compute and KV-cache dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="torch.compile the decode step with this mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence at each step")
    p.add_argument("--scale", type=A.scale, default=1, help="nearest-neighbour upscaling of the PNGs (1-32)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace images of the same name in --out (default: keep them, write name-2.png, ...)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print one JSON line per image (path, prompt, seed, image_seed, score, settings)")


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

    p = sub.add_parser("serve", help="a local web page for generating and editing (the serve extra)")
    p.add_argument("--model", default=None, help="model bundle directory (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 shares it)")
    p.add_argument("--port", type=A.positive_int, default=7860)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_threads(p)
    p.add_argument("--max-n", type=A.positive_int, default=16, help="images per prompt a request may ask for")
    p.add_argument("--max-candidates", type=A.positive_int, default=64)
    p.add_argument("--max-prompts", type=A.positive_int, default=8, help="prompts (lines) per request")
    p.add_argument("--max-upload-mb", type=A.positive_float, default=8.0, help="largest image upload")
    p.add_argument("--queue", type=A.positive_int, default=4,
                   help="requests that may wait behind the running one; more get 'busy, try again'")
    p.set_defaults(func=cmd_serve)

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
        if name == "signs":
            q.add_argument("--held-out-words", type=A.word_list, default=[], metavar="WORD,...",
                           help="words kept out of training in addition to the defaults "
                                "(OpenAI, MUSEUM, ROBOTS, KEDUVA, ZUGEVU, NIMUZA); --split heldout draws only them")
        else:
            q.add_argument("--relation-share", type=A.share, default=0.0, metavar="F",
                           help="share of scenes drawn as two objects whose caption says where one is "
                                "relative to the other (default 0: about 7%% do by chance)")
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
    q = dsub.add_parser("recolour", help="re-render built-in scenes and signs in random palette colours as "
                        "caption-less shards for image-tokenizer training")
    q.add_argument("shards", nargs="+", metavar="SHARDS", help="built-in scene or sign shards (others skipped)")
    q.add_argument("--out", required=True, metavar="OUT_DIR")
    q.add_argument("--copies", type=A.positive_int, default=1, help="renderings per sample")
    q.add_argument("--resolution", type=A.positive_int, default=64)
    q.add_argument("--seed", type=A.seed, default=0)
    q.add_argument("--shard-size", type=A.positive_int, default=1000)
    q.set_defaults(func=cmd_data_recolour)

    p = sub.add_parser("tokenizer", help="train the caption BPE")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="TOKENIZER_COMMAND", parser_class=Parser,
                            required=True)
    q = tsub.add_parser("train", help="train a byte-level BPE on the captions of shards")
    q.add_argument("shards", nargs="+", metavar="SHARDS")
    q.add_argument("--vocab-size", type=A.positive_int, default=None,
                   help="default: the preset's dalle.text_vocab_size")
    q.add_argument("--out", default="tokenizer.json")
    q.add_argument("--no-spell", action="store_true",
                   help="plain BPE: no character tokens for the text a caption asks to draw")
    add_preset(q)
    q.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("vqvae", help="train and evaluate the discrete VAE (image tokenizer)")
    vsub = p.add_subparsers(dest="vqvae_command", metavar="VQVAE_COMMAND", parser_class=Parser, required=True)
    q = vsub.add_parser("train", help="fit the dVAE on image shards; resumes by itself")
    q.add_argument("shards", nargs="*", metavar="SHARDS", help="default: the preset's data.train_shards")
    q.add_argument("--out", default="runs/vqvae")
    q.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    q.add_argument("--init-from", default=None, metavar="DIR",
                   help="an exported image tokenizer to start from (e.g. a fitted PatchVQ codebook)")
    q.add_argument("--logger", choices=("csv", "tensorboard"), default=None,
                   help="csv (default: out/logs/metrics.csv) or tensorboard (also out/tensorboard; "
                        "the tensorboard extra)")
    add_preset(q)
    q.set_defaults(func=cmd_vqvae_train)
    q = vsub.add_parser("codebook", help="fit a PatchVQ k-means codebook and export it (its codes are final)")
    q.add_argument("shards", nargs="+", metavar="SHARDS", help="one source per argument")
    q.add_argument("--images", nargs="+", type=A.positive_int, default=[2000],
                   help="images read from each source (one number for all, or one per source)")
    q.add_argument("--out", required=True)
    q.add_argument("--recolour", nargs="+", type=A.nonneg_int, default=[0], metavar="N",
                   help="use each built-in scene and sign as N renderings in random palette colours instead "
                        "of its own (edges of every colour, held-out pairs included; 0: as it is); one "
                        "number for all sources or one per source")
    q.add_argument("--init-from", default=None, metavar="DIR",
                   help="a PatchVQ (or bundle) to start from: its codebook is refitted and the new codes "
                        "renumbered so that most patches keep their index (fine-tune its transformer on them)")
    add_preset(q)
    q.set_defaults(func=cmd_vqvae_codebook)
    q = vsub.add_parser("eval", help="checker ceiling, PSNR, codebook usage and perplexity of reconstructions "
                        "of held-out shards")
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
    p.add_argument("--val-tokens", nargs="+", default=[],
                   help="held-out token shards whose loss is logged every dalle_train.val_every steps")
    p.add_argument("--shards", nargs="+", default=None, help="image shards, tokenised on the fly")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json")
    p.add_argument("--vqvae", default=None, help="exported dVAE directory (bundled with the model)")
    p.add_argument("--out", default="runs/dalle")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--init-from", default=None, metavar="BUNDLE",
                   help="start from this bundle's (or run checkpoint's) transformer weights: fine-tuning, or "
                        "continuing when the run directory is gone (a resumable --out takes precedence)")
    p.add_argument("--logger", choices=("csv", "tensorboard"), default=None,
                   help="csv (default: out/logs/metrics.csv) or tensorboard (also out/tensorboard; "
                        "the tensorboard extra)")
    add_preset(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("scorer", help="train and evaluate the image-caption scorer that reranks candidates")
    ssub = p.add_subparsers(dest="scorer_command", metavar="SCORER_COMMAND", parser_class=Parser, required=True)
    q = ssub.add_parser("train", help="fit the contrastive scorer (hard negatives from the shards' .json); "
                        "resumes by itself")
    q.add_argument("shards", nargs="+", metavar="SHARDS", help="img2dataset shards (paths, brace patterns)")
    q.add_argument("--tokenizer", required=True, help="the tokenizer.json of the model it will rerank for")
    q.add_argument("--out", default="runs/scorer", help="run directory; the scorer is written to OUT/scorer")
    q.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    q.add_argument("--init-from", default=None, metavar="SCORER_DIR",
                   help="start a fresh run from this exported scorer's weights (same architecture and "
                        "tokenizer; --set scorer.spell_pos=N may add within-word positions), e.g. to "
                        "fine-tune the default model's scorer")
    q.add_argument("--logger", choices=("csv", "tensorboard"), default=None,
                   help="csv (default: out/logs/metrics.csv) or tensorboard (the tensorboard extra)")
    add_preset(q)
    q.set_defaults(func=cmd_scorer_train)
    q = ssub.add_parser("eval", help="accuracy at picking the true caption among its hard negatives")
    q.add_argument("shards", nargs="+", metavar="SHARDS", help="one source per argument, reported separately")
    q.add_argument("--scorer", required=True,
                   help="scorer directory (OUT/scorer of 'dalle scorer train'), or a model bundle with a scorer")
    q.add_argument("--tokenizer", default=None,
                   help="the tokenizer.json the scorer was trained with (default: the scorer's own copy, or "
                        "the bundle's)")
    q.add_argument("--max-images", type=A.positive_int, default=500, help="samples read per source")
    q.add_argument("--batch-size", type=A.positive_int, default=100)
    q.add_argument("--seed", type=A.seed, default=0, help="seed of the hard negatives")
    q.add_argument("--out", default=None, help="write scorer_eval.json and scorer_eval.md here")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.set_defaults(func=cmd_scorer_eval)
    q = ssub.add_parser("samples", help="a model's own samples for training captions, labelled by the checker: "
                        "shards of passing candidates with failing ones as image negatives")
    q.add_argument("shards", nargs="+", metavar="SHARDS",
                   help="training shards with synthetic truth (.json claims): scenes or signs")
    q.add_argument("--model", default=None, help="model bundle directory (default: the embedded model)")
    q.add_argument("--out", required=True, help="directory for the shards and harvest.json")
    q.add_argument("--prompts", type=A.positive_int, default=1000, help="captions drawn from the shards")
    q.add_argument("--candidates", type=A.positive_int, default=8, help="images per caption (>= 2)")
    q.add_argument("--val-share", type=float, default=0.15,
                   help="share of the captions (the last drawn) whose samples go to OUT/val, not OUT/train")
    q.add_argument("--copies", type=A.positive_int, default=1,
                   help="write OUT/train this many times (distinct shard names) to weigh it in a training mix")
    q.add_argument("--seed", type=A.seed, default=0)
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.set_defaults(func=cmd_scorer_samples, scorer=None)
    q = ssub.add_parser("attach", help="put a scorer into a model bundle (checked: same tokenizer, resolution)")
    q.add_argument("scorer", metavar="SCORER_DIR", help="scorer directory (OUT/scorer of 'dalle scorer train')")
    q.add_argument("--model", required=True, help="the model bundle directory to add it to")
    q.set_defaults(func=cmd_scorer_attach)

    p = sub.add_parser("eval", help="pass@k, temperature sweep, reranking and reconstruction metrics")
    p.add_argument("--model", default=None, help="model bundle directory (default: the embedded model)")
    p.add_argument("--out", default="eval_out")
    p.add_argument("-n", type=A.positive_int, default=20, help="samples per prompt")
    p.add_argument("--temperatures", type=A.positive_float, nargs="+", default=[0.7, 1.0])
    p.add_argument("--candidates", type=A.positive_int, default=8, help="M for reranked pass@1")
    p.add_argument("--guidance", type=A.nonneg_float, nargs="+", default=None,
                   help="guidance scales: the first in the temperature sweep, each then at the best pass@1 "
                        "temperature (default: the model's recommended guidance, then 1 or 3 for comparison)")
    p.add_argument("--top-k", type=A.nonneg_int, default=None,
                   help="sample from the k most likely codes; 0: off (default: the model's recommended setting)")
    p.add_argument("--top-p", type=A.probability, default=None,
                   help="nucleus sampling mass in (0, 1] (default: the model's recommended setting)")
    p.add_argument("--prompts-per-part", type=A.positive_int, default=12,
                   help="prompts in each part of the default suite (12: every held-out word twice; at "
                        "pass rates of a few percent 6 left one passing prompt per part)")
    p.add_argument("--suite", default="default",
                   help="the prompt suite: default, or a JSON list of {part, prompt, description} (evaluation.suite)")
    p.add_argument("--kinds", nargs="+", choices=("scene", "sign"), default=["scene", "sign"],
                   help="keep only these kinds of prompt (--kinds sign: spelling only)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=A.positive_int, default=32)
    add_threads(p)
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
        if hasattr(a, "threads"):     # the inference commands: --threads N, or auto (see cli/threads.py)
            configure_threads(a.threads)
        return a.func(a)
    except KeyboardInterrupt:
        print("dalle: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:   # bad input: one line; anything else is a bug and keeps its traceback
        if os.environ.get("DALLE_DEBUG") or not raised_by_this_project(e):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        print(f"dalle {a.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:       # a full disk, a read-only filesystem: the user's to fix, one line
        if e.errno not in DISK_ERRNOS or os.environ.get("DALLE_DEBUG"):
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"dalle {a.command}: error: {e.strerror or e}{where}; nothing half-written was left", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
