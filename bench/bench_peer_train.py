"""CPU benchmark: our transformer training step against minDALL-E's, side by side in one process.

minDALL-E's stage-2 model code (``dalle/models/stage2/{transformer,layers}.py`` of
github.com/kakaobrain/minDALL-E) is read from an ignored directory, never committed; get it with

    mkdir -p peers/minDALL-E/stage2 && touch peers/minDALL-E/stage2/__init__.py
    # copy transformer.py and layers.py of dalle/models/stage2/ there

Both models get the preset's shapes (layers, width, heads, caption length, image codes, both
vocabularies), the same random batch, AdamW with the same settings, gradient clipping and bf16
autocast (or fp32). Ours runs the real ``DalleModule.compute_loss`` (caption dropout, the fused
image loss unless ``--losses plain``); the peer's step is its ``Transformer1d`` forward and
``F.cross_entropy`` of both heads with our text/image weights. Variants are interleaved over
``--rounds`` so that a machine whose load changes affects each alike; the best round counts.
Model FLOP/s are given as a share of the bf16 (or fp32) matrix-product peak measured in the same run.

    PYTHONPATH=. python bench/bench_peer_train.py --preset small --seconds 15 --rounds 3
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.bench_dalle_train import matmul_peak, measure, random_batch, time_steps
from train.config import load_preset
from train.dalle_module import DalleModule

PEER_DIR = Path(__file__).resolve().parents[1] / "peers" / "minDALL-E" / "stage2"


def load_peer(peer_dir: Path):
    """minDALL-E's ``Transformer1d`` class from ``peer_dir`` (omegaconf is only a type hint there)."""
    if not (peer_dir / "transformer.py").is_file():
        raise SystemExit(f"minDALL-E's stage2 code not found in {peer_dir} (see this script's docstring)")
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        sys.modules["omegaconf"] = types.SimpleNamespace(OmegaConf=object)
    spec = importlib.util.spec_from_file_location("mindalle_stage2", peer_dir / "__init__.py",
                                                  submodule_search_locations=[str(peer_dir)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["mindalle_stage2"] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module("mindalle_stage2.transformer").Transformer1d


def peer_step_fn(peer, batch: dict, train_cfg, precision: str, text_len: int):
    """One minDALL-E training step with our optimiser settings."""
    opt = torch.optim.AdamW(peer.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    text, image = batch["text_tokens"], batch["image_tokens"]
    pos_t = torch.arange(text_len)[None].expand(text.shape[0], -1)
    pos_i = torch.arange(image.shape[1])[None].expand(image.shape[0], -1)
    w = train_cfg.text_loss_weight
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def step(i: int) -> float:
        with amp:
            logits_img, logits_txt = peer(image, text, pos_i, pos_t)
            loss = (w * F.cross_entropy(logits_txt.reshape(-1, logits_txt.shape[-1]), text[:, 1:].reshape(-1))
                    + (1 - w) * F.cross_entropy(logits_img.reshape(-1, logits_img.shape[-1]), image.reshape(-1)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), train_cfg.grad_clip)
        opt.step()
        return loss.item()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--losses", default="fused,plain", help="our image-loss paths to include")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peer-dir", type=Path, default=PEER_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Transformer1d = load_peer(args.peer_dir)

    preset = load_preset(args.preset)
    cfg, train_cfg = preset.dalle, preset.dalle_train
    batch = random_batch(cfg, train_cfg.batch_size, "cpu")
    tokens = train_cfg.batch_size * cfg.block_size
    hparams = types.SimpleNamespace(
        n_layers=cfg.n_layer, n_dense_layers=cfg.n_layer, embed_dim=cfg.n_embd, n_heads=cfg.n_head,
        ctx_len_img=cfg.image_len, ctx_len_txt=cfg.text_len, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0,
        mlp_bias=True, attn_bias=True, gelu_use_approx=False)
    torch.manual_seed(0)
    flops = None
    print(f"preset={args.preset} layers={cfg.n_layer} width={cfg.n_embd} heads={cfg.n_head} seq={cfg.block_size} "
          f"image codes={cfg.image_vocab_size} batch={train_cfg.batch_size} precision={args.precision} "
          f"threads={torch.get_num_threads()}")
    results: dict[str, list[float]] = {}
    peaks = []
    for r in range(args.rounds):
        peaks.append(matmul_peak(args.precision))
        for variant in ["minDALL-E", *(f"ours-{x}" for x in args.losses.split(","))]:
            torch.manual_seed(0)
            if variant == "minDALL-E":
                peer = Transformer1d(cfg.text_vocab_total, cfg.image_vocab_size, hparams).train()
                n, sec, _ = time_steps(peer_step_fn(peer, batch, train_cfg, args.precision, cfg.text_len),
                                       args.seconds)
            else:
                tc = dataclasses.replace(train_cfg, fused_image_loss=variant == "ours-fused")
                module = DalleModule(cfg, tc)
                module.configure_model()
                flops = module.model.flops_per_token(training=True, attention="mask")
                n, sec, _ = measure(module, batch, args.precision, args.seconds, "cpu")
            tps = n * tokens / sec
            results.setdefault(variant, []).append(tps)
            print(f"round {r}: {variant:>11}: {n:3d} steps in {sec:5.1f} s  {sec / n * 1e3:7.1f} ms/step  "
                  f"{tps:7.0f} tokens/s  (matmul peak this round {peaks[-1]:.0f} GFLOP/s)", flush=True)
    peak = max(peaks)
    base = max(results["minDALL-E"])
    for variant, v in results.items():
        best = max(v)
        print(f"best {variant:>11}: {best:7.0f} tokens/s  {best / base:4.2f}x minDALL-E  "
              f"{best * flops / 1e9:6.1f} model GFLOP/s = {best * flops / 1e9 / peak:5.1%} of the "
              f"{args.precision} matmul peak ({peak:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
