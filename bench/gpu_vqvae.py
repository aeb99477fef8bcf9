"""dVAE throughput on an accelerator: encode, decode and a training step (images/s).

Runs the model of a preset (default: the paper's dVAE, ``dalle-12b``) under
bf16 autocast, with channels_last memory format and, optionally,
``torch.compile``. Prints one line per measurement and the peak memory.

    PYTHONPATH=. python bench/gpu_vqvae.py                       # H100: paper preset
    PYTHONPATH=. python bench/gpu_vqvae.py --compile
    PYTHONPATH=. python bench/gpu_vqvae.py --device cpu --preset tiny --iters 2   # smoke test
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from train.config import load_preset
from vqvae import DiscreteVAE
from vqvae.losses import elbo_loss, kl_uniform

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call after ``warmup`` untimed calls (compilation happens there)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="dalle-12b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--skip-train", action="store_true", help="only encode/decode")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --device cpu --preset tiny for a smoke run")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = load_preset(args.preset).vqvae
    torch.manual_seed(0)
    model = DiscreteVAE(cfg).to(device)
    memory_format = torch.contiguous_format if args.no_channels_last else torch.channels_last
    model = model.to(memory_format=memory_format)
    dtype = DTYPES[args.dtype]
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
    run = torch.compile(model) if args.compile else model
    encode = torch.compile(model.encode) if args.compile else model.encode
    decode = torch.compile(model.decode) if args.compile else model.decode

    b = args.batch_size
    images = torch.rand(b, cfg.in_channels, cfg.resolution, cfg.resolution, device=device)
    images = images.contiguous(memory_format=memory_format)
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
          f"preset={args.preset} resolution={cfg.resolution} grid={cfg.grid_size} vocab={cfg.vocab_size} "
          f"params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M batch={b} dtype={args.dtype} "
          f"channels_last={not args.no_channels_last} compile={args.compile} torch={torch.__version__}")

    model.eval()
    with torch.inference_mode(), autocast:
        codes = encode(images)
        t_enc = timed(lambda: encode(images), args.iters, args.warmup, device)
        t_dec = timed(lambda: decode(codes), args.iters, args.warmup, device)
    print(f"encode: {b / t_enc:10.1f} images/s ({1000 * t_enc:.2f} ms/batch)")
    print(f"decode: {b / t_dec:10.1f} images/s ({1000 * t_dec:.2f} ms/batch)")

    if not args.skip_train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        n_dims, n_pos = cfg.in_channels * cfg.resolution ** 2, cfg.grid_size ** 2

        def step() -> None:
            with autocast:
                out = run(images, 0.5)
                terms = elbo_loss(model.likelihood.nll(images, out.params),
                                  kl_uniform(out.logits), 6.6, n_pixel_dims=n_dims, n_positions=n_pos)
            terms.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t_train = timed(step, args.iters, args.warmup, device)
        print(f"train step: {b / t_train:10.1f} images/s ({1000 * t_train:.2f} ms/step)")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
