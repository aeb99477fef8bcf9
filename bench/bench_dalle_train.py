"""CPU benchmark: transformer training throughput (tokens/s) in fp32 and bf16 autocast.

Runs the real training step (``DalleModule.compute_loss``: caption dropout, fp32 loss,
backward, AdamW over the decay groups, gradient clipping) on random token batches for
about ``--seconds`` per precision and image-loss path (``fused``: train.fused_ce, the default;
``plain``: logits then cross-entropy). ``--rounds`` repeats the whole set, interleaved, so that
a machine whose load changes affects every variant alike. Tokens are sequence positions:
batch * (text_len + image_len).

    PYTHONPATH=. python bench/bench_dalle_train.py --preset small --seconds 15
    PYTHONPATH=. python bench/bench_dalle_train.py --precisions bf16 --losses fused,plain --rounds 3
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


def random_batch(cfg, batch: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    text = null_text_tokens(cfg, batch)
    text[:, : cfg.text_len // 2] = torch.randint(0, cfg.text_vocab_size, (batch, cfg.text_len // 2), generator=g)
    image = torch.randint(0, cfg.image_vocab_size, (batch, cfg.image_len), generator=g)
    return {"text_tokens": text.to(device), "image_tokens": image.to(device)}


def measure(module: DalleModule, batch: dict, precision: str, seconds: float, device: str,
            warmup: int = 2) -> tuple[int, float, float]:
    """Train steps for about ``seconds``; returns (steps, elapsed s, last loss)."""
    opt = build_optimizer(module.model, module.train_config)
    sched = build_scheduler(opt, module.train_config)
    amp = (torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16"
           else contextlib.nullcontext())

    def step(i: int) -> float:
        with amp:
            out = module.compute_loss(batch, step=i)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), module.train_config.grad_clip)
        opt.step()
        sched.step()
        return out.loss.item()

    return time_steps(step, seconds, warmup)


def time_steps(step, seconds: float, warmup: int = 2) -> tuple[int, float, float]:
    """Call ``step(i)`` ``warmup`` times, then for about ``seconds``; returns (steps, elapsed s, last loss)."""
    for i in range(warmup):
        step(i)
    steps, t0, loss = 0, time.perf_counter(), float("nan")
    while time.perf_counter() - t0 < seconds:
        loss = step(warmup + steps)
        steps += 1
    return steps, time.perf_counter() - t0, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the preset's dalle_train.batch_size")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per precision")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--losses", default="fused", help="image-loss paths: fused, plain or both")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every variant, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    for loss_path in args.losses.split(","):
        if loss_path not in ("fused", "plain"):
            parser.error(f"unknown loss path {loss_path!r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = load_preset(args.preset)
    cfg, train_cfg = preset.dalle, preset.dalle_train
    batch_size = args.batch_size or train_cfg.batch_size
    batch = random_batch(cfg, batch_size, "cpu")
    tokens_per_step = batch_size * cfg.block_size
    print(f"preset={args.preset} layers={cfg.n_layer} width={cfg.n_embd} heads={cfg.n_head} "
          f"seq={cfg.block_size} batch={batch_size} tokens/step={tokens_per_step} "
          f"threads={torch.get_num_threads()}")
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for precision in args.precisions.split(","):
            for loss_path in args.losses.split(","):
                torch.manual_seed(0)
                module = DalleModule(cfg, dataclasses.replace(train_cfg, fused_image_loss=loss_path == "fused"))
                module.configure_model()
                flops = module.model.flops_per_token(training=True, attention="mask")
                steps, sec, loss = measure(module, batch, precision, args.seconds, "cpu")
                tps = steps * tokens_per_step / sec
                results.setdefault((precision, loss_path), []).append(tps)
                print(f"round {r}: {precision:>5} {loss_path:>5}: {steps:4d} steps in {sec:6.1f} s  "
                      f"{sec / steps * 1e3:8.1f} ms/step  {tps:9.0f} tokens/s  "
                      f"{tps * flops / 1e9:7.1f} GFLOP/s (masked-attention count)  loss {loss:.3f}", flush=True)
    best = {k: max(v) for k, v in results.items()}
    for (precision, loss_path), tps in best.items():
        print(f"best {precision} {loss_path}: {tps:.0f} tokens/s, {tps / tokens_per_step * batch_size:.1f} samples/s")
    for loss_path in args.losses.split(","):
        if ("fp32", loss_path) in best and ("bf16", loss_path) in best:
            print(f"bf16 / fp32 throughput ({loss_path}): {best['bf16', loss_path] / best['fp32', loss_path]:.2f}x")
    for precision in args.precisions.split(","):
        if (precision, "fused") in best and (precision, "plain") in best:
            print(f"fused / plain throughput ({precision}): "
                  f"{best[precision, 'fused'] / best[precision, 'plain']:.2f}x")

if __name__ == "__main__":
    main()
