"""The image decoder shared by training and inference: bytes -> a square RGB tensor, or a named skip.

One function decodes every image the project reads, so that ``dalle edit``, the
Python API and the web page see an image exactly as training does: any Pillow
mode to RGB (alpha composited on a background, 16-bit scaled), the
decompression-bomb guard read from the header before any pixel is decoded, a
PNG whose pixel data ends early refused as truncated, JPEG draft-mode decoding,
and "shorter side to the resolution, then crop". Settings (``background``,
``max_pixels``, ``min_size``) come from any object that has them (training's
``DataConfig``, or :class:`DecodeSettings`).
"""
from __future__ import annotations

import io
import random
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode


@dataclass
class DecodeSettings:
    """What :func:`decode_image_uint8` reads from a config (the defaults of training's ``DataConfig``)."""

    background: list[int] = field(default_factory=lambda: [255, 255, 255])
    max_pixels: int = 89_478_485   # Pillow's default decompression-bomb limit
    min_size: int = 8


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> RGB, alpha composited on ``background``, 16-bit scaled to 8-bit."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)               # (H, W)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0                                  # 0..65535 -> 0..255
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")   # L, 1, P, CMYK (Adobe-inverted handled by the JPEG plugin), YCbCr, ...
    return img


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}        # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_pixel_bytes_missing(data: bytes) -> int:
    """How many bytes of filtered scanlines a PNG lacks (0 for a complete or non-PNG file).

    Pillow decodes a PNG whose zlib stream ends early without an error, the missing rows
    black; this inflates the IDAT chunks (counting, not keeping) and compares with the
    size the header implies.
    """
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 33 or data[12:16] != b"IHDR":
        return 0
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, ctype, interlace = data[24], data[25], data[28]
    bpp = depth * _PNG_CHANNELS.get(ctype, 4)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
        if pw > 0 and ph > 0:
            expected += ph * (1 + -(-(pw * bpp) // 8))
    inflate = zlib.decompressobj()
    got, pos, seen = 0, 8, False
    try:
        while pos + 8 <= len(data) and got < expected:
            n, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
            if kind == b"IDAT":
                seen = True
                chunk = data[pos + 8:pos + 8 + n]
                while chunk and got < expected:
                    got += len(inflate.decompress(chunk, 1 << 20))
                    chunk = inflate.unconsumed_tail
            elif kind == b"IEND":
                break
            pos += 12 + n
    except zlib.error:
        return 0                      # corrupt, not short: Pillow reports that itself
    return max(0, expected - got) if seen else 0     # no pixel data at all: corrupt (Pillow says so)


def _error_reason(e: Exception) -> str:
    """Pillow says "truncated" for data cut short; anything else is corrupt."""
    return "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"


def decode_image_uint8(data: bytes | None, cfg: Any, *, resolution: int,
                       rng: random.Random | None = None, random_crop: bool = False) -> torch.Tensor:
    """Image bytes -> (3, resolution, resolution) uint8 tensor, or :class:`SkipSample`.

    The loader keeps images in uint8 until they reach the main process (4x less
    inter-process traffic than float32); :func:`to_float` makes them floats.

    Args:
        data: encoded image (JPEG, PNG, WebP, ...).
        cfg: background, max_pixels and min_size come from here.
        resolution: output side; the shorter side is resized to it, then cropped.
        rng: source of random crop offsets (needed when ``random_crop``).
        random_crop: random instead of centre crop.
    """
    if data is None:
        raise SkipSample("no_image")
    if len(data) == 0:
        raise SkipSample("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))                 # header only, no pixels yet
    except Image.DecompressionBombError as e:
        raise SkipSample("too_large", str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise SkipSample(_error_reason(e), str(e)) from None
    w, h = img.size
    if w * h > cfg.max_pixels:
        raise SkipSample("too_large", f"{w}x{h} > max_pixels {cfg.max_pixels}")
    if min(w, h) < cfg.min_size:
        raise SkipSample("too_small", f"{w}x{h} < min_size {cfg.min_size}")
    if img.format == "PNG":
        missing = png_pixel_bytes_missing(data)
        if missing:
            raise SkipSample("truncated_image", f"{w}x{h} PNG lacks {missing} bytes of pixel data")
    if img.format == "JPEG":
        img.draft("RGB", (resolution, resolution))              # DCT-domain downscale, both sides >= R
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                     # EXIF/ICC chatter
            img.load()
            img = _to_rgb(img, tuple(cfg.background))
    except (OSError, ValueError, SyntaxError, TypeError, EOFError, Image.DecompressionBombError) as e:
        raise SkipSample(_error_reason(e), str(e)) from None
    # crop the square that "shorter side -> resolution, then crop" keeps, and resize only that
    w, h = img.size
    side = min(w, h)
    if random_crop:
        rng = rng or random.Random()
        top, left = rng.randint(0, h - side), rng.randint(0, w - side)
    else:
        top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    img = TF.resized_crop(img, top, left, side, side, [resolution, resolution],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(img)                                # (3, R, R) uint8


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, R, R) -> float in [0, 1] (floats are returned unchanged)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images
