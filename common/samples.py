"""Shard samples: read in order, then decoded to (image tensor, caption) or a counted skip.

:func:`read_samples` is the one call that reads the raw samples of shards (unreadable
shards and hidden members counted, never fatal). :class:`SampleDecoder` is the one decode
path: training, the scorer's evaluation, ``dalle data inspect``, token precomputation and
the loader benchmark all call it, so what inspection and evaluation see is what training sees.

Policy (every refusal raises :class:`SkipSample` with a reason that is counted):

- image bytes missing -> ``no_image``; zero bytes -> ``empty_image``; not an
  image Pillow can identify or decode -> ``corrupt_image``; cut short ->
  ``truncated_image`` (a PNG whose pixel data ends before its last row counts too,
  although Pillow decodes it without complaint, as black); more than ``DataConfig.max_pixels`` pixels according to
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

The image decoder itself is :mod:`common.image_decode`, shared with ``dalle edit``,
the Python API and the web page; this module adds captions, sample keys and the
skip counting of shards.
"""
from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import webdataset as wds

from common.image_decode import DecodeSettings, SkipSample, decode_image_uint8
from dalle.tokenizer import normalize_caption

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"


class SkipCounter:
    """Counts skipped samples by reason; ``drain()`` hands over and resets the counts."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

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


class _CountingHandler:
    """webdataset error handler: count unreadable shards/members and continue."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, exn: Exception) -> bool:
        self.counter.add("shard_error")
        log.warning("shard read error (continuing): %r", exn)
        return True


class MemberFilter:
    """webdataset ``select_files``: hidden members (``._x.jpg`` AppleDouble forks, ``.hidden.jpg``)
    are no samples; webdataset would drop them silently, here they are counted as ``hidden_member``."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, fname: str) -> bool:
        if os.path.basename(fname).startswith("."):
            self.counter.add("hidden_member")
            return False
        return True


def part_of(key: str) -> str:
    """The part of the data a sample belongs to: its key's last path component without digits
    (``sign000000123`` -> ``sign``, ``dir/scene0001`` -> ``scene``; img2dataset's all-digit keys -> ``""``)."""
    return re.sub(r"\d+", "", str(key).rsplit("/", 1)[-1])


def read_samples(urls: list[str], counter: SkipCounter, *,
                 handler: Callable[[Exception], bool] | None = None) -> Iterator[dict]:
    """Raw samples of ``urls`` in order; hidden members are counted in ``counter``.

    Args:
        urls: expanded shard URLs (:func:`common.shards.expand_sources`).
        counter: where ``hidden_member`` (and, with the default handler, ``shard_error``) are counted.
        handler: webdataset's error handler; default: count the error as ``shard_error``, warn, go on.
    """
    return wds.tarfile_samples(iter([{"url": u} for u in urls]),
                               handler=handler if handler is not None else _CountingHandler(counter),
                               select_files=MemberFilter(counter))


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


@dataclass
class SampleSettings(DecodeSettings):
    """What :class:`SampleDecoder` reads from a config: the image settings, the side and the crop
    (training passes its ``DataConfig``, which has the same fields and defaults)."""

    resolution: int = 0
    random_crop: bool = False


class SampleDecoder(SkipCountingDecoder):
    """Raw webdataset sample dict -> :class:`Decoded` or ``None`` (skip counted in ``counter``).

    Args:
        cfg: the data settings, training's ``DataConfig`` or :class:`SampleSettings` (resolution
            must be set: it is derived from the VQVAE).
        counter: where skips are counted.
        train: random crop when ``cfg.random_crop`` and training; centre crop otherwise.
        rng: random source for crops (per worker).
        sample_seed: when given, each sample's crop comes from its own generator seeded by
            ``(sample_seed, key)`` instead of ``rng``, so a stream can be resumed mid-way exactly.
        captions: False for image-only work (the image tokenizer): a sample needs no caption, and
            ``Decoded.caption`` is empty.
    """

    def __init__(self, cfg: Any, counter: SkipCounter, *, train: bool = False,
                 rng: random.Random | None = None, sample_seed: str | None = None, captions: bool = True):
        if cfg.resolution < 1:
            raise ValueError("data.resolution is not set; it is derived from the vqvae preset section")
        self.cfg = cfg
        self.counter = counter
        self.random_crop = bool(train and cfg.random_crop)
        self.rng = rng or random.Random(0)
        self.sample_seed = sample_seed
        self.captions = captions

    def _crop_rng(self, sample: dict) -> random.Random:
        if self.sample_seed is None or not self.random_crop:
            return self.rng
        return random.Random(f"crop-{self.sample_seed}-{sample.get('__key__', '')}")

    def decode(self, sample: dict) -> Decoded:
        """Decode or raise :class:`SkipSample` (caption first: it is cheap)."""
        # case kept: the text tokenizer lowercases what it does not spell (dalle.tokenizer), so the
        # words to draw reach it as written
        caption = decode_caption(sample.get(CAPTION_EXT), lowercase=False) if self.captions else ""
        image = decode_image_uint8(find_image(sample), self.cfg, resolution=self.cfg.resolution,
                                   rng=self._crop_rng(sample), random_crop=self.random_crop)
        return Decoded(key=str(sample.get("__key__", "")), caption=caption, image=image)
