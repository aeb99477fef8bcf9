"""Loader throughput: samples/s per worker on the training decode path.

Two cases, each on shards this script writes to a temporary directory:

- ``jpeg512``: 512 px JPEGs (several aspect ratios) decoded in draft mode, resized and
  random-cropped to 256 px, captions encoded by a TextTokenizer (text_len 32).
- ``png64``: 64 px RGBA PNGs (emoji-like) at 64 px.

For each it prints the full loader (tar read, shuffle buffer, decode, batch, tokenise) and
the decode step alone, per worker (``--workers 0`` runs in the main process = one core).

    PYTHONPATH=. python bench/bench_loader.py [--n 400] [--workers 0] [--epochs 2]
"""
from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from dalle.tokenizer import TextTokenizer
from train.config import DataConfig
from common.samples import SampleDecoder, SkipCounter
from train.data.loader import image_dataset, make_loader
from common.shards import ShardWriter
from train.text_tokenizer import train_tokenizer

WORDS = ("a photo of a red green blue small large old new dog cat house tree car bird on in the "
         "with near under street beach mountain city sunset painting drawing of two three").split()


def smooth_image(rng: np.random.Generator, w: int, h: int, alpha: bool = False) -> Image.Image:
    """Photo-like content: upsampled low-frequency noise plus fine detail (JPEG-realistic sizes)."""
    low = Image.fromarray(rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8))
    img = np.asarray(low.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    out = Image.fromarray(img, "RGB")
    if alpha:
        mask = Image.new("L", (w, h), 0)
        mask.paste(255, (w // 8, h // 8, w - w // 8, h - h // 8))
        out.putalpha(mask)
    return out


def write_case(out: Path, n: int, kind: str, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    cap = random.Random(seed)
    captions = []
    with ShardWriter(out, max_samples=max(1, n // 4)) as w:
        for i in range(n):
            buf = io.BytesIO()
            if kind == "jpeg512":
                long, short = 512, cap.choice([512, 384, 341])
                size = (long, short) if i % 2 else (short, long)
                smooth_image(rng, *size).save(buf, format="JPEG", quality=90)
                ext = "jpg"
            else:
                smooth_image(rng, 64, 64, alpha=True).save(buf, format="PNG")
                ext = "png"
            caption = " ".join(cap.choice(WORDS) for _ in range(cap.randint(4, 16)))
            captions.append(caption)
            w.write_sample(f"{i:09d}", image=buf.getvalue(), image_ext=ext, caption=caption)
    return captions


def bench_loader(shards: Path, cfg: DataConfig, tokenizer: TextTokenizer, workers: int, epochs: int,
                 batch_size: int) -> tuple[float, int]:
    loader = make_loader(image_dataset(shards, cfg, batch_size=batch_size, tokenizer=tokenizer,
                                       rank=0, world_size=1), workers)
    next(iter(loader))                                    # warm up (worker start, first reads)
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["keys"])
    return n / (time.perf_counter() - start), n


def bench_decode(shards: Path, cfg: DataConfig) -> float:
    samples = list(wds.tarfile_samples(iter([{"url": str(p)} for p in sorted(shards.glob("*.tar"))])))
    decode = SampleDecoder(cfg, SkipCounter(), train=True, rng=random.Random(0))
    start = time.perf_counter()
    ok = sum(decode(s) is not None for s in samples)
    return ok / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="samples per case")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: main process)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    per = max(1, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"workers={args.workers} n={args.n} epochs={args.epochs} batch={args.batch_size} "
              f"torch threads={torch.get_num_threads()}")
        for kind, resolution in (("jpeg512", 256), ("png64", 64)):
            captions = write_case(tmp / kind, args.n, kind)
            tok_path = train_tokenizer(captions, 1024, tmp / f"{kind}-tokenizer.json")
            tokenizer = TextTokenizer(tok_path, text_len=32, vocab_size=1024)
            cfg = DataConfig(resolution=resolution, num_workers=args.workers, shuffle_buffer=100,
                             random_crop=True)
            rate, n = bench_loader(tmp / kind, cfg, tokenizer, args.workers, args.epochs, args.batch_size)
            decode_rate = bench_decode(tmp / kind, cfg)
            print(f"{kind:8s} -> {resolution:3d}px: loader {rate / per:7.1f} samples/s per worker "
                  f"({n} samples), decode alone {decode_rate:7.1f} samples/s, "
                  f"loader/decode {rate / per / decode_rate:.2f}")


if __name__ == "__main__":
    main()
