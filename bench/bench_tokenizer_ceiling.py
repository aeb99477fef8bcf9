"""The checker ceiling of image tokenizers side by side, with a k-means baseline fitted in the same run.

For each tokenizer given with ``--tokenizer`` and for a plain k-means codebook of raw
pixel patches at the same grid and codebook size as the first one (fitted here, on the
training images given with ``--train``, timed), this prints per evaluation part the
share of reconstructions that ``evaluation.checker`` passes (the ceiling on every
pass@k of a model built on the tokenizer), the PSNR, codebook usage and bits per image,
plus encode + decode throughput on one thread.

    PYTHONPATH=. python bench/bench_tokenizer_ceiling.py \\
        --train ~/.cache/dalle-runs/v2/data/scenes:2500 ~/.cache/dalle-runs/v2/data/signs:2000 \\
                ~/.cache/dalle-runs/v2/data/emoji/train:500 \\
        --eval ~/.cache/dalle-runs/v2/data/{val_scenes,heldout_scenes,val_signs,heldout_signs,emoji/val} \\
        --tokenizer ~/.cache/dalle-runs/v2/vqvae/export dalle/assets/default --max-images 200
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from evaluation.recon import evaluate_sources
from synth.recolour import render_recoloured
from train.data.images import load_described_images, load_images
from vqvae.patch_vq import PatchVQ, PatchVQConfig
from vqvae.registry import load_image_tokenizer


def recolour(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each image with its RGB channels in one of the 6 orders, drawn per image: the same edges and
    layouts in other colours (red <-> green <-> blue, yellow <-> cyan <-> purple, ...), so that a
    codebook of patches meets edges of every colour against every background."""
    orders = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    pick = orders[torch.randint(len(orders), (x.shape[0],), generator=torch.Generator().manual_seed(seed))]
    return torch.stack([img[order] for img, order in zip(x, pick)])


def load_training_images(src: str, resolution: int, n: int, *, palette: bool = False, seed: int = 0) -> torch.Tensor:
    """``n`` training images of ``src``; with ``palette``, each scene re-rendered from its description
    with its colours permuted within the palette (:func:`synth.recolour.render_recoloured`; other images
    kept as they are)."""
    if not palette:
        return load_images(src, resolution, n)
    x, descriptions = load_described_images(src, resolution, n)
    if not descriptions:
        return x
    rng = np.random.default_rng(seed)
    out = [render_recoloured(d, resolution, rng) if d.get("kind") == "scene" else img
           for img, d in zip(x, descriptions)]
    return torch.stack(out)


def kmeans_baseline(train: list[tuple[str, int]], resolution: int, patch: int, vocab: int,
                    seed: int = 0, recoloured: str | None = None) -> tuple[PatchVQ, float]:
    """A PatchVQ with an untrained decoder: exactly k-means of raw patches. Returns it and the fit seconds.
    ``recoloured``: fitted on the same images with their colour channels reordered (``"channels"``,
    :func:`recolour`) or their scenes' colours permuted within the palette (``"palette"``)."""
    x = torch.cat([load_training_images(src, resolution, n, palette=recoloured == "palette", seed=seed + i)
                   for i, (src, n) in enumerate(train)])
    if recoloured == "channels":
        x = recolour(x, seed)
    model = PatchVQ(PatchVQConfig(resolution=resolution, patch=patch, vocab_size=vocab, n_hid=8, n_blocks=0))
    t = time.perf_counter()
    model.fit_codebook(x, iters=15, seed=seed)
    return model.eval(), time.perf_counter() - t


def throughput(model, images: torch.Tensor, repeats: int = 3) -> float:
    """Encode + decode images per second (best of ``repeats`` passes over ``images`` in batches of 64)."""
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            for xb in images.split(64):
                model.decode(model.encode(xb))
            best = min(best, time.perf_counter() - t)
    return images.shape[0] / best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", nargs="+", required=True, metavar="SOURCE:N",
                   help="training sources of the k-means baseline, each with the number of images read")
    p.add_argument("--eval", nargs="+", required=True, help="held-out sources, one part each")
    p.add_argument("--tokenizer", nargs="+", required=True, help="exported image tokenizers or bundles")
    p.add_argument("--max-images", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--recolour", nargs="?", const="channels", choices=("channels", "palette"), default=None,
                   help="also a k-means codebook of the same images recoloured: 'channels' (the default) "
                        "reorders each image's colour channels, 'palette' permutes each scene's colours "
                        "within the scene palette")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    train = [(s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1])) for s in a.train]
    models = {str(t): load_image_tokenizer(t) for t in a.tokenizer}
    first = next(iter(models.values())).config
    patch = first.resolution // first.grid_size
    baseline, fit_s = kmeans_baseline(train, first.resolution, patch, first.vocab_size)
    models[f"k-means {first.vocab_size} (fitted in {fit_s:.0f} s)"] = baseline
    if a.recolour:
        model, fit_s = kmeans_baseline(train, first.resolution, patch, first.vocab_size, recoloured=a.recolour)
        models[f"k-means {first.vocab_size}, training images recoloured by {a.recolour} "
               f"(fitted in {fit_s:.0f} s)"] = model
    results = {}
    for name, model in models.items():
        res = model.config.resolution
        loaded = {Path(s.rstrip("/")).name if Path(s).name != "val" else Path(s).parent.name + "/val":
                  load_described_images(s, res, a.max_images) for s in a.eval}
        report = evaluate_sources(model, {k: x for k, (x, _) in loaded.items()},
                                  descriptions={k: d for k, (_, d) in loaded.items()})
        report["throughput_images_per_s"] = throughput(model, next(iter(loaded.values()))[0])
        results[name] = report
        print(f"## {name}")
        for k, m in report.items():
            if isinstance(m, dict):
                c = f"{m['checker_ceiling']:.3f}" if "checker_ceiling" in m else "-"
                print(f"  {k:16s} ceiling {c:6s} PSNR {m['psnr_db']:6.2f} dB  usage {m['codebook_usage']:.3f}  "
                      f"bits {m['bits_per_image']:.0f}")
        print(f"  encode+decode {report['throughput_images_per_s']:.1f} images/s ({a.threads} thread)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
