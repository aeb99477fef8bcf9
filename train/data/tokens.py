"""Token shards: image codes precomputed by the frozen VQVAE, for transformer training.

A token shard is a webdataset tar with ``{key}.codes.npy`` (int16 (h, w) code
grid), ``{key}.txt`` (caption: NFC + whitespace normalised, case kept) and
``{key}.json``. :func:`precompute_tokens` makes them from image shards through
the training decode path (centre crop); :func:`token_dataset` reads them as
batches like the image loader (``train/data/loader.py``) does.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from common.image_decode import SkipSample, to_float
from common.samples import CAPTION_EXT, SampleDecoder, SkipCounter, SkipCountingDecoder, decode_caption, read_samples
from common.shards import ShardWriter, expand_sources, valid_key
from dalle.tokenizer import TextTokenizer
from train.config import DataConfig
from train.data.loader import BatchCollate, ShardStream, build_stream

log = logging.getLogger(__name__)

CODES_EXT = "codes.npy"
CODES_DTYPE = np.int16


def codes_to_bytes(codes: np.ndarray) -> bytes:
    """(h, w) integer codes -> ``.npy`` bytes (int16, range checked)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be a 2-d integer array, got {codes.dtype} {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(CODES_DTYPE).max):
        raise ValueError(f"codes must be in [0, {np.iinfo(CODES_DTYPE).max}], "
                         f"got [{codes.min()}, {codes.max()}]")
    buf = io.BytesIO()
    np.save(buf, codes.astype(CODES_DTYPE), allow_pickle=False)
    return buf.getvalue()


def codes_from_bytes(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> (h, w) integer array (no pickles)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


class TokenShardWriter(ShardWriter):
    """A :class:`ShardWriter` for ``{key}.codes.npy`` + ``{key}.txt`` + ``{key}.json`` samples."""

    def write_tokens(self, key: str, codes: np.ndarray, caption: str, meta: dict | None = None) -> None:
        files: dict[str, bytes | str] = {CODES_EXT: codes_to_bytes(codes), "txt": caption}
        if meta is not None:
            files["json"] = json.dumps(meta, ensure_ascii=False)
        self.write(key, files)


@dataclass
class DecodedTokens:
    """A usable token sample."""

    key: str
    caption: str
    image_tokens: torch.Tensor   # (h*w,) int64, row-major


class TokenDecoder(SkipCountingDecoder):
    """Raw token-shard sample -> :class:`DecodedTokens` or ``None`` (skip counted).

    Skip reasons: ``no_codes``, ``bad_codes`` (unreadable, not 2-d integer,
    negative, or a grid other than ``image_grid`` / the first grid seen), and the
    caption reasons of :func:`common.samples.decode_caption`.
    """

    def __init__(self, cfg: DataConfig, counter: SkipCounter, *, image_grid: int | None = None,
                 rng: random.Random | None = None, train: bool = False, sample_seed: str | None = None):
        self.cfg = cfg
        self.counter = counter
        self.shape = (image_grid, image_grid) if image_grid else None

    def decode(self, sample: dict) -> DecodedTokens:
        caption = decode_caption(sample.get(CAPTION_EXT), lowercase=False)   # case kept: the text tokenizer lowercases
        # what it does not spell (dalle.tokenizer), so the words to draw reach it as written
        data = sample.get(CODES_EXT)
        if data is None:
            raise SkipSample("no_codes")
        try:
            codes = codes_from_bytes(data)
        except (ValueError, OSError, EOFError) as e:
            raise SkipSample("bad_codes", str(e)) from None
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer) or (codes.size and codes.min() < 0):
            raise SkipSample("bad_codes", f"{codes.dtype} {codes.shape}")
        if self.shape is None:
            self.shape = codes.shape
        if codes.shape != self.shape:
            raise SkipSample("bad_codes", f"grid {codes.shape} != {self.shape}")
        tokens = torch.from_numpy(codes.astype(np.int64).reshape(-1))   # (h*w,) row-major
        return DecodedTokens(key=str(sample.get("__key__", "")), caption=caption, image_tokens=tokens)


def token_dataset(sources: Any, data_cfg: DataConfig, *, batch_size: int, train: bool = True,
                  resampled: bool | None = None, seed: int = 0, epoch_samples: int | None = None,
                  tokenizer: TextTokenizer | None = None, image_grid: int | None = None,
                  rank: int | None = None, world_size: int | None = None) -> ShardStream:
    """Token batches from token shards; arguments as :func:`train.data.loader.image_dataset`.

    Args:
        image_grid: expected side of the code grid (``DalleConfig.image_grid``); samples
            with another grid are skipped as ``bad_codes``.
    """
    factory = functools.partial(TokenDecoder, data_cfg, image_grid=image_grid, train=train)
    return build_stream(sources, data_cfg, decoder_factory=factory, collate=BatchCollate("image_tokens", tokenizer),
                        batch_size=batch_size, train=train, resampled=resampled, seed=seed,
                        epoch_samples=epoch_samples, rank=rank, world_size=world_size)


def iter_token_shards(sources: Any, data_cfg: DataConfig, *,
                      counter: SkipCounter | None = None) -> Iterator[DecodedTokens]:
    """Read token shards in order, one sample at a time (skips counted in ``counter``)."""
    counter = counter if counter is not None else SkipCounter()
    decode = TokenDecoder(data_cfg, counter)
    urls = expand_sources(sources)
    for sample in read_samples(urls, counter):
        item = decode(sample)
        if item is not None:
            yield item


@dataclass
class TokenStats:
    """What :func:`precompute_tokens` wrote."""

    samples: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    grid: tuple[int, int] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def precompute_tokens(image_sources: Any, out_dir: str | Path,
                      encode_fn: Callable[[torch.Tensor], torch.Tensor], data_cfg: DataConfig, *,
                      batch_size: int, shard_size: int) -> TokenStats:
    """Encode image shards into token shards.

    Args:
        image_sources: img2dataset shard sources.
        out_dir: where ``00000.tar``... (and ``_stats.json`` files) are written atomically.
        encode_fn: images (B, 3, R, R) float in [0, 1] on the CPU -> codes (B, h, w) integer;
            e.g. ``lambda x: vae.encode(x.to(device)).cpu()`` with a frozen ``DiscreteVAE``.
        data_cfg: the decode settings (resolution from the VQVAE); centre crop always.
        batch_size: images per ``encode_fn`` call.
        shard_size: samples per output shard.
    Returns:
        :class:`TokenStats` (samples written, shard paths, skips by reason, code grid).
    """
    start = time.time()
    counter = SkipCounter()
    decode = SampleDecoder(dataclasses.replace(data_cfg, lowercase=False), counter, train=False)
    stats = TokenStats()
    batch: list[tuple[Any, dict]] = []

    def flush(writer: TokenShardWriter) -> None:
        images = to_float(torch.stack([d.image for d, _ in batch]))       # (B, 3, R, R) in [0, 1]
        with torch.inference_mode():
            codes = encode_fn(images)
        codes = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        if codes.ndim != 3 or codes.shape[0] != len(batch):
            raise ValueError(f"encode_fn returned shape {codes.shape}, expected ({len(batch)}, h, w)")
        if stats.grid is None:
            stats.grid = (int(codes.shape[1]), int(codes.shape[2]))
        for (d, sample), grid in zip(batch, codes):
            if not valid_key(d.key):            # "/abs", "../x", "sub/dir/key": never a path in our shards
                counter.add("bad_key")
                log.warning("skipped sample %r from %s: a key must contain no '/', backslash or '.'",
                            d.key, sample.get("__url__"))
                continue
            if writer.has_key(d.key):
                counter.add("duplicate_key")
                continue
            meta = {"key": d.key, "caption": d.caption, "source": sample.get("__url__"),
                    "grid": list(grid.shape)}
            writer.write_tokens(d.key, grid, d.caption, meta)
            stats.samples += 1
        batch.clear()

    urls = expand_sources(image_sources)
    with TokenShardWriter(out_dir, max_samples=shard_size) as writer:
        for sample in read_samples(urls, counter):
            d = decode(sample)
            if d is not None:
                batch.append((d, sample))
            if len(batch) == batch_size:
                flush(writer)
        if batch:
            flush(writer)
        stats.shards = [str(p) for p in writer.close()]
    stats.skipped = counter.drain()
    stats.seconds = time.time() - start
    log.info("precomputed %d token samples into %d shard(s); skipped %s",
             stats.samples, len(stats.shards), stats.skipped)
    return stats
