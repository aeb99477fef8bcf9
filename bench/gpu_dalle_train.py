"""GPU benchmark: transformer training throughput and MFU, eager vs torch.compile, per attention layout.

For each attention layout (every layer set to it; ``preset`` keeps the preset's own mix)
and each mode (eager / ``torch.compile``), runs the real training step of
``DalleModule.compute_loss`` (caption dropout, fp32 logits and loss, backward, fused AdamW,
gradient clipping) under bf16 autocast with fp32 weights (Lightning's ``bf16-mixed``).

FLOPs are counted honestly with ``DalleTransformer.flops_per_token(attention="mask")``:
matmuls of the blocks and of the head each position uses, and attention over only the
keys each layer's mask allows (so a sparse layout is not credited with work it skips);
embedding lookups, norms, softmax and optimizer are not counted; backward = 2x forward.
MFU = achieved FLOP/s / the card's dense bf16 peak. The ``full`` count (every key, the
usual convention) is printed as well.

    PYTHONPATH=. python bench/gpu_dalle_train.py --preset base --batch-size 16
    PYTHONPATH=. python bench/gpu_dalle_train.py --device cpu --preset tiny   # smoke test
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import torch

from train.config import load_preset
from train.dalle_module import DalleModule, null_text_tokens
from train.optim import build_optimizer, build_scheduler

# dense bf16 tensor-core peaks (no sparsity), TFLOP/s
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, or None when unknown (CPU, other cards)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):   # "H100 PCIe" before "H100"
        if all(part in name for part in key.split()):
            return PEAK_TFLOPS[key]
    return None


def random_batch(cfg, batch: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    text = null_text_tokens(cfg, batch)
    n = cfg.text_len // 2
    text[:, :n] = torch.randint(0, cfg.text_vocab_size, (batch, n), generator=g)
    image = torch.randint(0, cfg.image_vocab_size, (batch, cfg.image_len), generator=g)
    return {"text_tokens": text.to(device), "image_tokens": image.to(device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(cfg, train_cfg, batch: dict, device: torch.device, *, compile: bool, warmup: int,
            steps: int) -> dict:
    """Build, warm up (compiles) and time ``steps`` training steps of one configuration."""
    torch.manual_seed(0)
    module = DalleModule(cfg, dataclasses.replace(train_cfg, compile=compile))
    with device:
        module.configure_model()
    model = module.model.to(device).train()
    opt = build_optimizer(model, module.train_config)
    sched = build_scheduler(opt, module.train_config)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if device.type in ("cuda", "cpu")
           else contextlib.nullcontext())

    def step(i: int) -> torch.Tensor:
        with amp:
            out = module.compute_loss(batch, step=i)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        sched.step()
        return out.loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(warmup + i)
    sync(device)
    sec = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"sec": sec, "warm_s": warm_s, "loss": float(loss), "mem_gib": mem,
            "flops_mask": model.flops_per_token(training=True, attention="mask"),
            "flops_full": model.flops_per_token(training=True, attention="full"),
            "params": model.num_params()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=16, help="per-step batch on the one device")
    parser.add_argument("--layouts", default="dense,row,column,conv,preset",
                        help="comma list; each sets every layer's layout ('preset': the preset's mix)")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="override the card's bf16 peak")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; use --device cpu --preset tiny for a smoke run")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    preset = load_preset(args.preset)
    base_cfg, train_cfg = preset.dalle, preset.dalle_train
    batch = random_batch(base_cfg, args.batch_size, device)
    tokens = args.batch_size * base_cfg.block_size
    peak = args.peak_tflops or peak_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} peak_bf16={peak or 'unknown'} TFLOP/s preset={args.preset} layers={base_cfg.n_layer} "
          f"width={base_cfg.n_embd} heads={base_cfg.n_head} seq={base_cfg.block_size} batch={args.batch_size} "
          f"tokens/step={tokens} torch={torch.__version__}")
    print(f"{'layout':>22} {'mode':>8} {'ms/step':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'MFU(full)':>9} {'vs dense':>8} {'mem GiB':>8} {'warm-up s':>9} {'loss':>7}")
    dense_tps: dict[str, float] = {}
    for layout in args.layouts.split(","):
        layouts = list(base_cfg.attn_layouts) if layout == "preset" else [layout]
        cfg = dataclasses.replace(base_cfg, attn_layouts=layouts)
        label = f"preset:{'+'.join(layouts)}" if layout == "preset" else layout
        for mode in args.modes.split(","):
            try:
                r = run_one(cfg, train_cfg, batch, device, compile=mode == "compile",
                            warmup=args.warmup, steps=args.steps)
            except torch.cuda.OutOfMemoryError:
                print(f"{label:>22} {mode:>8}  out of memory at batch {args.batch_size}")
                torch.cuda.empty_cache()
                continue
            tps = args.steps * tokens / r["sec"]
            tflops = tps * r["flops_mask"] / 1e12
            mfu = f"{tflops / peak:6.1%}" if peak else "   n/a"
            mfu_full = f"{tps * r['flops_full'] / 1e12 / peak:9.1%}" if peak else "      n/a"
            if layout == "dense":
                dense_tps[mode] = tps
            ratio = f"{tps / dense_tps[mode]:7.2f}x" if mode in dense_tps else "     n/a"
            print(f"{label:>22} {mode:>8} {r['sec'] / args.steps * 1e3:9.1f} {tps:10.0f} {tflops:8.2f} {mfu} "
                  f"{mfu_full} {ratio} {r['mem_gib']:8.2f} {r['warm_s']:9.1f} {r['loss']:7.3f}")
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
