"""CPU benchmark: KV-cached decoding vs recomputing the full sequence at every step.

Both paths sample the same images (same seeds) in one run and the script checks
they agree. Random weights are fine for timing.

    PYTHONPATH=. python bench/bench_sampling.py --preset small --images 8
"""
from __future__ import annotations

import argparse
import time

import torch

from dalle.model import DalleTransformer
from dalle.sampler import image_seed, sample
from train.config import load_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--images", type=int, default=8, help="batch of images sampled together")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_preset(args.preset).dalle
    torch.manual_seed(0)
    model = DalleTransformer(cfg).to(args.device).eval()
    text = torch.randint(0, cfg.text_vocab_size, (args.images, cfg.text_len))
    null = torch.arange(cfg.text_vocab_size, cfg.text_vocab_total).expand(args.images, -1).clone()
    seeds = [image_seed(0, "bench", i) for i in range(args.images)]
    opts = dict(null_text_tokens=null, guidance=args.guidance, seeds=seeds, top_k=64)
    print(f"preset={args.preset} params={model.num_params() / 1e6:.2f}M layers={cfg.n_layer} "
          f"width={cfg.n_embd} text_len={cfg.text_len} codes={cfg.image_len} images={args.images} "
          f"guidance={args.guidance} device={args.device} threads={torch.get_num_threads()}")

    sample(model, text[:1], **{**opts, "null_text_tokens": null[:1], "seeds": seeds[:1]})   # warm-up
    results = {}
    for name, use_cache in (("kv-cache", True), ("recompute", False)):
        t0 = time.perf_counter()
        out = sample(model, text, use_cache=use_cache, **opts)
        results[name] = (time.perf_counter() - t0, out)
        sec = results[name][0]
        print(f"{name:>10}: {sec:8.2f} s  {args.images / sec:8.2f} images/s  "
              f"{args.images * cfg.image_len / sec:9.1f} codes/s")
    (t_cache, a), (t_full, b) = results["kv-cache"], results["recompute"]
    same = torch.equal(a.image_tokens, b.image_tokens)
    print(f"speed-up (recompute / kv-cache): {t_full / t_cache:.1f}x; identical codes: {same}; "
          f"max |logprob diff|: {(a.logprobs - b.logprobs).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
