"""The one decode path: raw shard samples -> (image tensor, caption), or a counted skip.

Training, ``dalle data inspect``, token precomputation and the loader benchmark
all call :class:`SampleDecoder`, so what inspection reports is what training sees.

Policy (every refusal raises :class:`SkipSample` with a reason that is counted):

- image bytes missing -> ``no_image``; zero bytes -> ``empty_image``; not an
  image Pillow can identify or decode -> ``corrupt_image``; cut short ->
  ``truncated_image``; more than ``DataConfig.max_pixels`` pixels according to
  the header (checked before any pixel is decoded) -> ``too_large``; a side
  below ``DataConfig.min_size`` -> ``too_small``.
- caption missing -> ``no_caption``; not valid UTF-8 -> ``bad_caption_encoding``
  (skipped, not repaired: a caption full of U+FFFD teaches the model nothing);
  empty after :func:`normalize_caption` -> ``empty_caption``.
- Colour: alpha (RGBA, LA, palette with transparency) is composited on
  ``DataConfig.background``; 16-bit grayscale is scaled 65535 -> 255; CMYK and
  the other modes go through Pillow's conversion to RGB.
- Large JPEGs are decoded in draft mode (DCT scaling), at the smallest scale
  whose shorter side still covers the resolution.
- Geometry: the shorter side is resized to the resolution and the longer side
  cropped (centre, or random offset when training with ``random_crop``); done as
  one crop-then-resize of the kept square, which is the same image, cheaper.
"""
from __future__ import annotations

import io
import logging
import random
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

from dalle.tokenizer import normalize_caption
from train.config import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SkipCounter:
    """Counts skipped samples by reason; ``drain()`` hands over and resets the counts."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def update(self, counts: dict[str, int]) -> None:
        """Add counts from another counter's ``drain()``."""
        self.counts.update(counts)

    def drain(self) -> dict[str, int]:
        """The counts since the previous drain (reason -> count), then reset."""
        out = {k: v for k, v in self.counts.items() if v}
        self.counts.clear()
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"SkipCounter({dict(self.counts)})"


def decode_caption(data: bytes | str | None, lowercase: bool = True) -> str:
    """UTF-8 bytes -> normalised caption, or :class:`SkipSample`."""
    if data is None:
        raise SkipSample("no_caption")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SkipSample("bad_caption_encoding", str(e)) from None
    caption = normalize_caption(data, lowercase)
    if not caption:
        raise SkipSample("empty_caption")
    return caption


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


def _error_reason(e: Exception) -> str:
    """Pillow says "truncated" for data cut short; anything else is corrupt."""
    return "truncated_image" if "truncated" in str(e).lower() else "corrupt_image"


def decode_image_uint8(data: bytes | None, cfg: DataConfig, *, resolution: int,
                       rng: random.Random | None = None, random_crop: bool = False) -> torch.Tensor:
    """Image bytes -> (3, resolution, resolution) uint8 tensor, or :class:`SkipSample`.

    The loader keeps images in uint8 until they reach the main process (4x less
    inter-process traffic than float32); :func:`decode_image` returns floats.

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


def decode_image(data: bytes | None, cfg: DataConfig, *, resolution: int,
                 rng: random.Random | None = None, random_crop: bool = False) -> torch.Tensor:
    """Image bytes -> (3, resolution, resolution) float tensor in [0, 1], or :class:`SkipSample`.

    Args: as :func:`decode_image_uint8`.
    """
    return to_float(decode_image_uint8(data, cfg, resolution=resolution, rng=rng, random_crop=random_crop))


def find_image(sample: dict) -> bytes | None:
    """The image bytes of a raw webdataset sample (first of ``IMAGE_EXTS`` present)."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    return None


@dataclass
class Decoded:
    """A usable sample."""

    key: str
    caption: str
    image: torch.Tensor        # (3, R, R) uint8; to_float() gives [0, 1]


class SkipCountingDecoder:
    """Calls ``self.decode(sample)``; a :class:`SkipSample` or any other error becomes ``None``,
    counted by reason in ``self.counter`` (a bad sample must never stop training)."""

    counter: SkipCounter

    def decode(self, sample: dict):
        raise NotImplementedError

    def __call__(self, sample: dict):
        try:
            return self.decode(sample)
        except SkipSample as e:
            self.counter.add(e.reason)
            log.debug("skipped %s from %s: %s", sample.get("__key__"), sample.get("__url__"), e)
        except Exception as e:  # noqa: BLE001 - a bad sample must never stop training
            self.counter.add("decode_error")
            log.warning("unexpected error decoding %s from %s: %r",
                        sample.get("__key__"), sample.get("__url__"), e)
        return None


class SampleDecoder(SkipCountingDecoder):
    """Raw webdataset sample dict -> :class:`Decoded` or ``None`` (skip counted in ``counter``).

    Args:
        cfg: the data config (resolution must be set: it is derived from the VQVAE).
        counter: where skips are counted.
        train: random crop when ``cfg.random_crop`` and training; centre crop otherwise.
        rng: random source for crops (per worker).
    """

    def __init__(self, cfg: DataConfig, counter: SkipCounter, *, train: bool = False,
                 rng: random.Random | None = None):
        if cfg.resolution < 1:
            raise ValueError("data.resolution is not set; it is derived from the vqvae preset section")
        self.cfg = cfg
        self.counter = counter
        self.random_crop = bool(train and cfg.random_crop)
        self.rng = rng or random.Random(0)

    def decode(self, sample: dict) -> Decoded:
        """Decode or raise :class:`SkipSample` (caption first: it is cheap)."""
        caption = decode_caption(sample.get(CAPTION_EXT), self.cfg.lowercase)
        image = decode_image_uint8(find_image(sample), self.cfg, resolution=self.cfg.resolution,
                                   rng=self.rng, random_crop=self.random_crop)
        return Decoded(key=str(sample.get("__key__", "")), caption=caption, image=image)
