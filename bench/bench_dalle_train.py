"""CPU benchmark: transformer training throughput (tokens/s) in fp32 and bf16 autocast.

Runs the real training step (``DalleModule.compute_loss``: caption dropout, fp32 loss,
backward, AdamW over the decay groups, gradient clipping) on random token batches for
about ``--seconds`` per precision and image-loss path (``fused``: train.fused_ce, the default;
``plain``: logits then cross-entropy). ``--rounds`` repeats the whole set, interleaved, so that
a machine whose load changes affects every variant alike. Tokens are sequence positions:
batch * (text_len + image_len).

    PYTHONPATH=. python bench/bench_dalle_train.py --preset small --seconds 15
    PYTHONPATH=. python bench/bench_dalle_train.py --precisions bf16 --losses fused,plain --rounds 3
    PYTHONPATH=. python bench/bench_dalle_train.py --precisions bf16 --attention auto,sdpa --rounds 3
    PYTHONPATH=. python bench/bench_dalle_train.py --precisions bf16 --set dalle.n_layer=8 --set dalle.n_embd=384 \
        --set dalle.n_head=6

Each round also measures the matrix-product peak of this thread count in each precision (the best of
square products of 512, 1,024 and 2,048), and every result gives the model's FLOP/s as a share of it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
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


def matmul_peak(precision: str, seconds: float = 1.0, sizes: tuple[int, ...] = (512, 1024, 2048)) -> float:
    """GFLOP/s of the fastest n x n matrix product over ``sizes`` in this precision, on this thread count."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

        def product(_: int) -> float:
            a @ b
            return 0.0

        count, sec, _ = time_steps(product, seconds, warmup=1)
        best = max(best, 2 * n ** 3 * count / sec / 1e9)
    return best


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
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="preset override, as in dalle train (e.g. dalle.n_embd=384); repeatable")
    parser.add_argument("--attention", default="auto",
                        help="attention backends to compare, e.g. auto,sdpa (auto: written out on a CPU)")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="timed seconds per matmul size")
    args = parser.parse_args()
    for loss_path in args.losses.split(","):
        if loss_path not in ("fused", "plain"):
            parser.error(f"unknown loss path {loss_path!r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = load_preset(args.preset, args.set)
    cfg, train_cfg = preset.dalle, preset.dalle_train
    batch_size = args.batch_size or train_cfg.batch_size
    batch = random_batch(cfg, batch_size, "cpu")
    tokens_per_step = batch_size * cfg.block_size
    print(f"preset={args.preset} layers={cfg.n_layer} width={cfg.n_embd} heads={cfg.n_head} "
          f"seq={cfg.block_size} batch={batch_size} tokens/step={tokens_per_step} "
          f"threads={torch.get_num_threads()}")
    attentions = args.attention.split(",")
    results: dict[tuple[str, str, str], list[float]] = {}
    peaks: dict[str, list[float]] = {}
    flops = 0.0
    for r in range(args.rounds):
        for precision in args.precisions.split(","):
            peaks.setdefault(precision, []).append(matmul_peak(precision, args.peak_seconds))
            for loss_path, attention in itertools.product(args.losses.split(","), attentions):
                torch.manual_seed(0)
                module = DalleModule(cfg, dataclasses.replace(train_cfg, fused_image_loss=loss_path == "fused"))
                module.configure_model()
                module.model.attn_backend = attention
                flops = module.model.flops_per_token(training=True, attention="mask")
                steps, sec, loss = measure(module, batch, precision, args.seconds, "cpu")
                tps = steps * tokens_per_step / sec
                results.setdefault((precision, loss_path, attention), []).append(tps)
                print(f"round {r}: {precision:>5} {loss_path:>5} {attention:>4}: {steps:4d} steps in {sec:6.1f} s  "
                      f"{sec / steps * 1e3:8.1f} ms/step  {tps:9.0f} tokens/s  "
                      f"{tps * flops / 1e9:7.1f} GFLOP/s (masked-attention count)  loss {loss:.3f}  "
                      f"(matmul peak this round {peaks[precision][-1]:.0f} GFLOP/s)", flush=True)
    best = {k: max(v) for k, v in results.items()}
    for (precision, loss_path, attention), tps in best.items():
        peak = max(peaks[precision])
        print(f"best {precision} {loss_path} {attention}: {tps:.0f} tokens/s, "
              f"{tps / tokens_per_step * batch_size:.1f} samples/s, {tps * flops / 1e9:.1f} model GFLOP/s = "
              f"{tps * flops / 1e9 / peak:.1%} of the {precision} matmul peak ({peak:.0f} GFLOP/s, best of "
              f"{len(peaks[precision])} rounds)")

    def ratio(label: str, a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
        if a in best and b in best:
            print(f"{label}: {best[a] / best[b]:.2f}x")

    first = attentions[0]
    for loss_path in args.losses.split(","):
        ratio(f"bf16 / fp32 throughput ({loss_path})", ("bf16", loss_path, first), ("fp32", loss_path, first))
    for precision in args.precisions.split(","):
        ratio(f"fused / plain throughput ({precision})", (precision, "fused", first), (precision, "plain", first))
        for other in attentions[1:]:
            ratio(f"attention {first} / {other} throughput ({precision}, fused)", (precision, "fused", first),
                  (precision, "fused", other))


if __name__ == "__main__":
    main()
