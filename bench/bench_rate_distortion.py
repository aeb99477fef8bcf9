"""How many bits does a PSNR cost? JPEG's rate-distortion curve beside the dVAE's one point.

A dVAE with a ``g x g`` grid of codes out of ``V`` stores ``g * g * log2(V)`` bits
per image (2,304 bits for the ``small`` preset: 16 x 16 codes out of 512). This
script measures, on the same held-out images, what PSNR baseline JPEG reaches at
about that many bits: Pillow's encoder with optimised Huffman tables, 4:2:0 chroma,
counting only the entropy-coded scan (headers and tables excluded, which favours
JPEG). It puts the dVAE's target in context; it is not a claim that JPEG is a bound.

    PYTHONPATH=. python bench/bench_rate_distortion.py runs/default/data/heldout_scenes \\
        runs/default/data/heldout_signs runs/default/data/emoji/val --vqvae dalle/assets/default
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation.recon import recon_metrics
from train.data.images import load_images

QUALITIES = (5, 10, 15, 20, 30, 40, 50, 60, 75, 90)


def scan_bytes(jpeg: bytes) -> int:
    """Bytes of the entropy-coded data: after the SOS segment, before the EOI marker."""
    sos = jpeg.find(b"\xff\xda")
    length = int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    return len(jpeg) - (sos + 2 + length) - 2


def jpeg_point(images: torch.Tensor, quality: int) -> tuple[float, float]:
    """(mean scan bits per image, mean PSNR dB) of a JPEG round trip at ``quality``."""
    bits, psnrs = [], []
    for img in images:
        a = (img.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)         # (R, R, 3)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality, optimize=True, subsampling=2)
        data = buf.getvalue()
        back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255.0
        mse = max(float(((back - a / 255.0) ** 2).mean()), 1e-10)
        bits.append(8 * scan_bytes(data))
        psnrs.append(10 * np.log10(1.0 / mse))
    return float(np.mean(bits)), float(np.mean(psnrs))


def bits_for_psnr(curve: list[tuple[int, float, float]], target_db: float) -> float | None:
    """Bits per image at which the JPEG curve reaches ``target_db`` (linear interpolation)."""
    for (_, b0, p0), (_, b1, p1) in zip(curve, curve[1:]):
        if p0 <= target_db <= p1 and p1 > p0:
            return b0 + (b1 - b0) * (target_db - p0) / (p1 - p0)
    return None


def psnr_at_bits(curve: list[tuple[int, float, float]], bits: float) -> float | None:
    """PSNR the JPEG curve reaches at ``bits`` per image (linear interpolation)."""
    for (_, b0, p0), (_, b1, p1) in zip(curve, curve[1:]):
        if b0 <= bits <= b1 and b1 > b0:
            return p0 + (p1 - p0) * (bits - b0) / (b1 - b0)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+", help="held-out image shards, one source per argument")
    ap.add_argument("--vqvae", default=None, help="dVAE export or bundle directory to place on the curve")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--max-images", type=int, default=256)
    ap.add_argument("--target-db", type=float, default=26.0)
    args = ap.parse_args()

    vqvae = None
    if args.vqvae:
        from vqvae.model import DiscreteVAE
        vqvae = DiscreteVAE.from_checkpoint(args.vqvae)
    print(f"images per source: up to {args.max_images}, {args.resolution} px; JPEG: Pillow, optimize=True, "
          f"4:2:0, scan bits only")
    for source in args.sources:
        images = load_images(source, args.resolution, args.max_images)
        curve = [(q, *jpeg_point(images, q)) for q in QUALITIES]
        name = Path(source.rstrip("/")).name
        print(f"\n## {name} ({len(images)} images)")
        print("JPEG quality: " + "  ".join(f"q{q} {b:.0f} b {p:.1f} dB" for q, b, p in curve))
        need = bits_for_psnr(curve, args.target_db)
        print(f"JPEG reaches {args.target_db:.0f} dB at "
              + (f"{need:.0f} bits/image" if need is not None else "no measured quality"))
        if vqvae is not None:
            m, _ = recon_metrics(vqvae, images.split(64))
            at = psnr_at_bits(curve, m["bits_per_image"])
            print(f"dVAE: {m['bits_per_image']:.0f} bits/image (fixed length), {m['psnr_db']:.2f} dB; "
                  f"JPEG at the same bits: " + (f"{at:.2f} dB" if at is not None else "outside the curve"))


if __name__ == "__main__":
    main()
