"""Assemble the bundle that ships: a transformer checkpoint (or run bundle), the image tokenizer
with its trained decoder, the scorer, the recommended sampling settings and a model card.

The transformer was trained on the codes of a k-means codebook; a context decoder trained later on
top of that codebook (``dalle vqvae train --init-from CODEBOOK``) decodes the same codes better. The
two are interchangeable only if the encoder's centroids are identical, which is checked.

    PYTHONPATH=. python scripts/ship_bundle.py ~/.cache/dalle-runs/v2/run/checkpoints/last.ckpt \\
        --tokenizer ~/.cache/dalle-runs/v2/tokenizer.json --vqvae ~/.cache/dalle-runs/v2/vqvae/export \\
        --codebook ~/.cache/dalle-runs/v2/codebook8192 --scorer ~/.cache/dalle-runs/v2/scorer/scorer \\
        --top-k 16 --temperature 1.0 --out ~/.cache/dalle-runs/v2/candidate
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dalle.api import Dalle
from dalle.tokenizer import TextTokenizer
from train.config import load_preset, with_image_tokenizer
from train.dalle_fit import model_from_checkpoint
from vqvae.registry import load_image_tokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a transformer checkpoint (.ckpt) or a bundle directory")
    p.add_argument("--tokenizer", type=Path, help="the run's tokenizer.json (with a checkpoint)")
    p.add_argument("--vqvae", type=Path, required=True, help="the image tokenizer to ship (trained decoder)")
    p.add_argument("--codebook", type=Path, help="the image tokenizer the transformer was trained on; "
                                                 "its centroids must equal --vqvae's")
    p.add_argument("--scorer", type=Path, help="the reranking scorer directory")
    p.add_argument("--preset", default="small")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--card", type=Path, help="Markdown model card (default: generated)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="facts for bundle.json")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    image_tokenizer = load_image_tokenizer(a.vqvae).eval()
    if a.codebook is not None:
        trained_on = load_image_tokenizer(a.codebook)
        if not torch.equal(trained_on.centroids, image_tokenizer.centroids):
            p.error(f"{a.vqvae} does not encode with the codebook of {a.codebook}: its codes mean other patches")
    meta: dict = {}
    if a.model.suffix == ".ckpt":
        if a.tokenizer is None:
            p.error("--tokenizer is required with a checkpoint")
        vq = with_image_tokenizer(load_preset(a.preset), image_tokenizer.config).dalle
        model, info = model_from_checkpoint(a.model)   # the checkpoint's own shape (e.g. within-word positions)
        dalle_config = model.config
        if (dalle_config.image_vocab_size, dalle_config.image_grid) != (vq.image_vocab_size, vq.image_grid):
            p.error(f"{a.model} models {dalle_config.image_vocab_size} codes on a {dalle_config.image_grid}-grid, "
                    f"{a.vqvae} has {vq.image_vocab_size} on {vq.image_grid}")
        meta = {"preset": a.preset, "global_step": info["global_step"], "checkpoint": a.model.name}
        tokenizer = TextTokenizer(a.tokenizer, dalle_config.text_len, dalle_config.text_vocab_size)
        bundle = Dalle(model, image_tokenizer, tokenizer, meta=meta)
    else:
        bundle = Dalle.from_pretrained(a.model, device="cpu")
        bundle.image_tokenizer = image_tokenizer
    for item in a.meta:
        key, _, value = item.partition("=")
        bundle.meta[key] = value
    given = {"temperature": a.temperature, "top_k": a.top_k, "guidance": a.guidance}
    bundle.set_sampling_defaults(**{k: v for k, v in given.items() if v is not None})   # a bundle's own stay
    if a.scorer is not None:
        bundle.set_scorer(a.scorer)
    card = a.card.read_text() if a.card else None
    out = bundle.save(a.out, model_card=card, weights_dtype="float16")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
