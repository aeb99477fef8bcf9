"""GPU sampling throughput: images/s at batch 64 with the KV cache, eager vs torch.compile vs CUDA graphs.

Modes (all use the KV cache and bf16 autocast on CUDA):

- ``eager``: the plain decode loop.
- ``compile``: the decode step under ``torch.compile`` (default mode, no CUDA graphs).
- ``cudagraphs``: ``torch.compile(mode="reduce-overhead")``, which captures the decode
  step in a CUDA graph (CUDA only; skipped elsewhere).

Random weights are fine for timing. Every mode samples the same seeds; the script
reports whether the codes match the eager run (bf16 kernels may differ slightly
between modes, so a mismatch there is reported, not fatal).

    PYTHONPATH=. python bench/gpu_sampling.py                         # base preset, batch 64, CUDA
    PYTHONPATH=. python bench/gpu_sampling.py --device cpu --preset tiny --batch 4   # CPU smoke run
"""
from __future__ import annotations

import argparse
import time

import torch

from dalle.model import DalleTransformer
from dalle.sampler import image_seed, sample
from train.config import load_preset

MODES = {"eager": None, "compile": "default", "cudagraphs": "reduce-overhead"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=1.0, help="!= 1 doubles the batch internally")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated subset of {list(MODES)} (default: all on CUDA, eager+compile on CPU)")
    parser.add_argument("--override", action="append", default=[], help="preset override section.key=value")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode after one warm-up")
    args = parser.parse_args()

    device = torch.device(args.device)
    modes = args.modes.split(",") if args.modes else (
        list(MODES) if device.type == "cuda" else ["eager", "compile"])
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; choose from {list(MODES)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = load_preset(args.preset, args.override).dalle
    torch.manual_seed(0)
    model = DalleTransformer(cfg).to(device).eval()
    text = torch.randint(0, cfg.text_vocab_size, (args.batch, cfg.text_len))
    null = torch.arange(cfg.text_vocab_size, cfg.text_vocab_total).expand(args.batch, -1).clone()
    seeds = [image_seed(0, "gpu-bench", i) for i in range(args.batch)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} torch={torch.__version__} preset={args.preset} params={model.num_params() / 1e6:.1f}M "
          f"layers={cfg.n_layer} width={cfg.n_embd} layouts={cfg.attn_layouts} text_len={cfg.text_len} "
          f"codes={cfg.image_len} batch={args.batch} guidance={args.guidance}")

    reference = None
    for mode in modes:
        if mode == "cudagraphs" and device.type != "cuda":
            print(f"{mode:>10}: skipped (CUDA graphs need a CUDA device)")
            continue
        opts = dict(null_text_tokens=null, guidance=args.guidance, seeds=seeds, top_k=256,
                    compile=MODES[mode])
        try:
            sync(device)
            t0 = time.perf_counter()
            sample(model, text, **opts)                                  # warm-up (and compilation)
            sync(device)
            warm = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = sample(model, text, **opts)
                sync(device)
                times.append(time.perf_counter() - t0)
        except Exception as e:  # report and go on with the other modes
            print(f"{mode:>10}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        best = min(times)
        if reference is None:
            reference = out.image_tokens
        agree = (out.image_tokens == reference).float().mean().item()
        print(f"{mode:>10}: {args.batch / best:9.2f} images/s  {best:8.3f} s/batch  "
              f"{1e3 * best / cfg.image_len:7.2f} ms/step  warm-up {warm:7.2f} s  "
              f"codes equal to first mode: {100 * agree:.1f}%")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
