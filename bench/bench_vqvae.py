"""CPU throughput of the dVAE tokenizer: encode and decode images per second.

    PYTHONPATH=. python bench/bench_vqvae.py --preset small --batch-size 16 --iters 5
"""
from __future__ import annotations

import argparse
import time

import torch

from train.config import load_preset
from vqvae import DiscreteVAE


def timed(fn, iters: int, warmup: int) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_preset(args.preset).vqvae
    torch.manual_seed(0)
    model = DiscreteVAE(cfg).eval()
    images = torch.rand(args.batch_size, cfg.in_channels, cfg.resolution, cfg.resolution)
    with torch.inference_mode():
        codes = model.encode(images)
        t_enc = timed(lambda: model.encode(images), args.iters, args.warmup)
        t_dec = timed(lambda: model.decode(codes), args.iters, args.warmup)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"preset={args.preset} resolution={cfg.resolution} grid={cfg.grid_size}x{cfg.grid_size} "
          f"vocab={cfg.vocab_size} params={n_params / 1e6:.2f}M batch={args.batch_size} "
          f"threads={torch.get_num_threads()} device=cpu dtype=float32")
    print(f"encode: {args.batch_size / t_enc:8.1f} images/s ({1000 * t_enc:.1f} ms/batch)")
    print(f"decode: {args.batch_size / t_dec:8.1f} images/s ({1000 * t_dec:.1f} ms/batch)")
    print(f"decode/encode time ratio: {t_dec / t_enc:.2f}")


if __name__ == "__main__":
    main()
