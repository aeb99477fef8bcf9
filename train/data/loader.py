"""Webdataset pipelines for training: shards -> shuffled, decoded, batched dicts.

One :class:`ShardStream` serves image shards (here) and token shards
(``train/data/tokens.py``). Per DataLoader worker it runs
``tar reading -> shuffle buffer (raw bytes) -> decode (skips counted) -> batch``.

Splitting and epochs:

- Finite mode: the shard list is shuffled with ``(seed, epoch)`` (the same
  order on every rank), rank ``r`` takes ``shards[r::world_size]`` and worker
  ``w`` takes every ``num_workers``-th of those, so ranks and workers read
  disjoint shards. Fewer shards than ``world_size * num_workers`` is a
  ``ValueError`` (use resampled mode or more, smaller shards).
- Every rank yields the same number of batches per epoch:
  ``epoch_samples // (world_size * batch_size)``. ``epoch_samples`` defaults to
  the number of samples in the shards when there is more than one rank. A
  worker whose shards run out before its share goes over its own shards again
  (reshuffled), so it never reads another rank's data; with a single rank and
  no ``epoch_samples`` an epoch is one pass.
- Resampled mode: each worker draws shards with replacement from all shards,
  seeded by ``(seed, epoch, rank, worker)``; endless unless ``epoch_samples``.

Batches (from :class:`ShardLoader`) are dicts: "images" (B, 3, R, R) float in
[0, 1] (uint8 inside the stream, converted in the main process), "captions", "keys", "skipped"
(reason -> samples skipped by that worker since its previous batch) and,
with a tokenizer, "text_tokens" (B, text_len).
"""
from __future__ import annotations

import functools
import logging
import os
import random
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dalle.tokenizer import TextTokenizer
from train.config import DataConfig
from train.data.decode import SampleDecoder, SkipCounter, to_float
from train.data.shards import count_samples, expand_sources

log = logging.getLogger(__name__)

DecoderFactory = Callable[..., Callable[[dict], Any]]   # (counter, rng=...) -> sample -> item | None
Collate = Callable[[list, dict], dict]                  # (items, skipped) -> batch


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else torch.distributed, else RANK/WORLD_SIZE, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


class _CountingHandler:
    """webdataset error handler: count unreadable shards/members and continue."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, exn: Exception) -> bool:
        self.counter.add("shard_error")
        log.warning("shard read error (continuing): %r", exn)
        return True


class ShardStream(IterableDataset):
    """Batches from webdataset shards; see the module docstring for splitting and epochs.

    Args:
        urls: expanded shard URLs.
        decoder_factory: ``factory(counter, rng=rng)`` -> callable mapping a raw sample to an item or None.
        collate: ``collate(items, skipped)`` -> batch dict.
        batch_size: samples per batch.
        train: shuffle shards and samples, drop the last partial batch.
        resampled: draw shards with replacement (endless unless ``batches_per_rank``).
        seed: base of every random choice.
        shuffle_buffer: samples in the shuffle buffer (raw bytes, before decoding).
        rank, world_size: this process and the number of processes.
        num_workers: DataLoader workers planned (checked again when iterating).
        batches_per_rank: batches each rank yields per epoch; None for one pass / endless.
    """

    def __init__(self, urls: list[str], *, decoder_factory: DecoderFactory, collate: Collate,
                 batch_size: int, train: bool, resampled: bool, seed: int, shuffle_buffer: int,
                 rank: int, world_size: int, num_workers: int, batches_per_rank: int | None):
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.urls = list(urls)
        self.decoder_factory = decoder_factory
        self.collate = collate
        self.batch_size = batch_size
        self.train = train
        self.resampled = resampled
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.batches_per_rank = batches_per_rank
        self.epoch = 0
        self._check_readers(max(1, num_workers))

    def _check_readers(self, n_workers: int) -> None:
        readers = self.world_size * n_workers
        if not self.resampled and len(self.urls) < readers:
            raise ValueError(
                f"{len(self.urls)} shard(s) cannot be split over world_size {self.world_size} x "
                f"num_workers {n_workers} = {readers} readers; write more, smaller shards, "
                f"lower data.num_workers, or set data.resampled=true")

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order and random streams of epoch ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.batches_per_rank is None:
            raise TypeError("this stream has no fixed length (one pass or endless)")
        return self.batches_per_rank

    # -- shard plans --------------------------------------------------------
    def rank_shards(self) -> list[str]:
        """This rank's shards in this epoch's order (finite mode)."""
        order = list(self.urls)
        if self.train:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(order)
        return order[self.rank::self.world_size]

    def _passes(self, worker: int, n_workers: int) -> Iterator[list[str]]:
        """Lists of shard URLs for one worker, one list per pass over its data."""
        rng = random.Random(f"passes-{self.seed}-{self.epoch}-{self.rank}-{worker}")
        if self.resampled:
            while True:
                yield [rng.choice(self.urls) for _ in range(len(self.urls))]
        mine = self.rank_shards()[worker::n_workers]
        yield list(mine)
        while self.batches_per_rank is not None:     # repeat own shards to fill the quota
            rng.shuffle(mine)
            yield list(mine)

    # -- iteration ----------------------------------------------------------
    def _items(self, worker: int, n_workers: int, counter: SkipCounter,
               rng: random.Random) -> Iterator[Any]:
        decode = self.decoder_factory(counter, rng=rng)
        handler = _CountingHandler(counter)
        usable = 0
        for urls in self._passes(worker, n_workers):
            raw = wds.tarfile_samples(iter([{"url": u} for u in urls]), handler=handler)
            if self.train and self.shuffle_buffer > 1:
                raw = wds.filters._shuffle(raw, bufsize=self.shuffle_buffer,
                                           initial=min(100, self.shuffle_buffer), rng=rng)
            for sample in raw:
                item = decode(sample)
                if item is not None:
                    usable += 1
                    yield item
            if usable == 0:
                raise ValueError(f"rank {self.rank} worker {worker}: no usable sample in "
                                 f"{len(urls)} shard(s) (skipped: {dict(counter.counts)})")

    def _batches(self, items: Iterable[Any], counter: SkipCounter) -> Iterator[dict]:
        """Full batches; each is held until the next usable item (or the end) so that skips
        after the last batch of a stream are still reported with it."""
        ready: list | None = None
        buf: list = []
        for item in items:
            if ready is not None:
                yield self.collate(ready, counter.drain())
                ready = None
            buf.append(item)
            if len(buf) == self.batch_size:
                ready, buf = buf, []
        if ready is not None:
            yield self.collate(ready, {} if buf and not self.train else counter.drain())
        if buf and not self.train:
            yield self.collate(buf, counter.drain())

    def worker_quota(self, worker: int, n_workers: int) -> int | None:
        """Batches worker ``worker`` yields this epoch (None: until its data ends)."""
        if self.batches_per_rank is None:
            return None
        n = self.batches_per_rank
        return n // n_workers + (1 if worker < n % n_workers else 0)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._check_readers(n_workers)
        counter = SkipCounter()
        rng = random.Random(f"samples-{self.seed}-{self.epoch}-{self.rank}-{worker}")
        batches = self._batches(self._items(worker, n_workers, counter, rng), counter)
        quota = self.worker_quota(worker, n_workers)
        yield from (batches if quota is None else islice(batches, quota))


class ShardLoader(DataLoader):
    """DataLoader over a :class:`ShardStream` that advances the stream's epoch on every ``iter()``.

    The epoch is set in the main process before workers start, so every worker
    (and every rank, which counts epochs the same way) agrees on it. Images cross
    from the workers as uint8 and become float in [0, 1] here, in the main process.
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0, **kwargs: Any):
        super().__init__(stream, batch_size=None, num_workers=num_workers,
                         persistent_workers=False, **kwargs)
        self._next_epoch = 0

    def __iter__(self):
        self.dataset.set_epoch(self._next_epoch)
        self._next_epoch += 1
        return _float_images(super().__iter__())


def _float_images(batches: Iterator[dict]) -> Iterator[dict]:
    for batch in batches:
        if "images" in batch:
            batch["images"] = to_float(batch["images"])        # (B, 3, R, R) float in [0, 1]
        yield batch


def batches_per_rank(urls: list[str], *, batch_size: int, world_size: int, resampled: bool,
                     epoch_samples: int | None) -> int | None:
    """Batches each rank yields per epoch, or None for a single-rank pass / endless stream."""
    if epoch_samples is None:
        if resampled or world_size == 1:
            return None
        epoch_samples = sum(count_samples(u) for u in urls)
    n = epoch_samples // (world_size * batch_size)
    if n < 1:
        raise ValueError(f"{epoch_samples} samples per epoch give no batch of {batch_size} "
                         f"on each of {world_size} rank(s)")
    return n


def build_stream(sources: Any, data_cfg: DataConfig, *, decoder_factory: DecoderFactory,
                 collate: Collate, batch_size: int, train: bool, resampled: bool | None, seed: int,
                 epoch_samples: int | None, rank: int | None, world_size: int | None) -> ShardStream:
    """Common construction of image and token streams (sources expanded, ranks resolved)."""
    urls = expand_sources(sources)
    rank, world_size = dist_info(rank, world_size)
    resampled = data_cfg.resampled if resampled is None else resampled
    n = batches_per_rank(urls, batch_size=batch_size, world_size=world_size,
                         resampled=resampled, epoch_samples=epoch_samples)
    return ShardStream(urls, decoder_factory=decoder_factory, collate=collate, batch_size=batch_size,
                       train=train, resampled=resampled, seed=seed,
                       shuffle_buffer=data_cfg.shuffle_buffer if train else 0,
                       rank=rank, world_size=world_size, num_workers=data_cfg.num_workers,
                       batches_per_rank=n)


class BatchCollate:
    """Decoded samples -> a batch dict: ``field`` stacked from each sample's attribute of the
    same name ("images" (B, 3, R, R) uint8 until ShardLoader, or "image_tokens" (B, h*w)),
    captions, keys, skip counts, and "text_tokens" when a tokenizer is given."""

    def __init__(self, field: str, tokenizer: TextTokenizer | None = None):
        self.field = field
        self.attr = {"images": "image", "image_tokens": "image_tokens"}[field]
        self.tokenizer = tokenizer

    def __call__(self, items: list, skipped: dict[str, int]) -> dict:
        captions = [d.caption for d in items]
        batch = {self.field: torch.stack([getattr(d, self.attr) for d in items]),
                 "captions": captions, "keys": [d.key for d in items], "skipped": skipped}
        if self.tokenizer is not None:
            batch["text_tokens"] = self.tokenizer.encode(captions)   # (B, text_len)
        return batch


def image_dataset(sources: Any, data_cfg: DataConfig, *, batch_size: int, train: bool = True,
                  resampled: bool | None = None, seed: int = 0, epoch_samples: int | None = None,
                  tokenizer: TextTokenizer | None = None, rank: int | None = None,
                  world_size: int | None = None) -> ShardStream:
    """Image-caption batches from img2dataset shards.

    Args:
        sources: shard sources (see :func:`train.data.shards.expand_sources`).
        data_cfg: decoding, shuffling and worker settings.
        batch_size: samples per batch.
        train: shuffle, random crop if ``data_cfg.random_crop``, drop the last partial batch.
        resampled: override ``data_cfg.resampled``.
        seed: base seed (same on every rank).
        epoch_samples: samples per epoch over all ranks (see the module docstring).
        tokenizer: adds "text_tokens" to each batch.
        rank, world_size: default from torch.distributed or RANK/WORLD_SIZE.
    Returns:
        A :class:`ShardStream`; wrap it with :func:`make_loader`.
    """
    factory = functools.partial(SampleDecoder, data_cfg, train=train)
    return build_stream(sources, data_cfg, decoder_factory=factory, collate=BatchCollate("images", tokenizer),
                        batch_size=batch_size, train=train, resampled=resampled, seed=seed,
                        epoch_samples=epoch_samples, rank=rank, world_size=world_size)


def make_loader(stream: ShardStream, num_workers: int, **kwargs: Any) -> ShardLoader:
    """The DataLoader for a stream (batching happens in the stream)."""
    return ShardLoader(stream, num_workers=num_workers, **kwargs)


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders over image shards or token shards, split by the trainer's ranks.

    Args:
        data_cfg: the preset's data section (``train_shards`` / ``val_shards`` used
            unless sources are given).
        batch_size: per-rank batch size.
        kind: ``"images"`` (img2dataset shards) or ``"tokens"`` (precomputed token shards).
        train_sources, val_sources: override the config's shard lists (e.g. token shards).
        tokenizer: adds "text_tokens" to every batch.
        image_grid: expected code grid side for token shards (checked per sample).
        seed: base seed.
        epoch_samples, val_samples: samples per epoch over all ranks (see the module docstring).
    """

    def __init__(self, data_cfg: DataConfig, *, batch_size: int, kind: str = "images",
                 train_sources: list[str] | None = None, val_sources: list[str] | None = None,
                 tokenizer: TextTokenizer | None = None, image_grid: int | None = None,
                 seed: int = 0, epoch_samples: int | None = None, val_samples: int | None = None):
        super().__init__()
        if kind not in ("images", "tokens"):
            raise ValueError(f"kind must be 'images' or 'tokens', got {kind!r}")
        self.data_cfg = data_cfg
        self.batch_size = batch_size
        self.kind = kind
        self.train_sources = list(train_sources if train_sources is not None else data_cfg.train_shards)
        self.val_sources = list(val_sources if val_sources is not None else data_cfg.val_shards)
        self.tokenizer = tokenizer
        self.image_grid = image_grid
        self.seed = seed
        self.epoch_samples = epoch_samples
        self.val_samples = val_samples
        self.rank, self.world_size = 0, 1

    def setup(self, stage: str | None = None) -> None:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            self.rank, self.world_size = trainer.global_rank, trainer.world_size
        else:
            self.rank, self.world_size = dist_info()

    def _stream(self, sources: list[str], *, train: bool, epoch_samples: int | None) -> ShardStream:
        kw = dict(batch_size=self.batch_size, train=train, seed=self.seed, epoch_samples=epoch_samples,
                  tokenizer=self.tokenizer, rank=self.rank, world_size=self.world_size)
        if not train:
            kw["resampled"] = False
        if self.kind == "tokens":
            from train.data.tokens import token_dataset   # tokens.py builds on this module
            return token_dataset(sources, self.data_cfg, image_grid=self.image_grid, **kw)
        return image_dataset(sources, self.data_cfg, **kw)

    def train_dataloader(self) -> ShardLoader:
        if not self.train_sources:
            raise ValueError("no training shards: set data.train_shards (or the token shards)")
        stream = self._stream(self.train_sources, train=True, epoch_samples=self.epoch_samples)
        return make_loader(stream, self.data_cfg.num_workers)

    def val_dataloader(self) -> ShardLoader | list:
        if not self.val_sources:
            return []
        stream = self._stream(self.val_sources, train=False, epoch_samples=self.val_samples)
        return make_loader(stream, self.data_cfg.num_workers)
