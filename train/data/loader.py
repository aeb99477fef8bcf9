"""Webdataset pipelines for training: shards -> shuffled, decoded, batched dicts.

One :class:`ShardStream` serves image shards (here) and token shards
(``train/data/tokens.py``, which builds on this module; the DataModule over
both is in ``train/data/datamodule.py``). Per DataLoader worker it runs
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
(reason -> samples skipped by that worker since its previous batch), "position"
(where the batch ends in its worker's stream, see below) and, with a tokenizer,
"text_tokens" (B, text_len).

Exact resume: a worker's stream is a pure function of ``(seed, epoch, rank,
worker)``; random crops are seeded per sample key. A batch's "position" is
``(epoch, worker, raw samples read, batches yielded, end)``; the
:class:`ResumeState` callback hands the positions of the batches actually
trained on to :class:`ShardLoader`, whose ``state_dict`` (every rank's, gathered)
Lightning stores in each checkpoint. On resume each worker re-reads its first
raw samples without decoding them and goes on from there, so the resumed run
sees the batches the uninterrupted one would have seen, in the same order.
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

from common.image_decode import to_float
from common.samples import SampleDecoder, SkipCounter, read_samples
from common.shards import count_samples, expand_sources
from dalle.tokenizer import TextTokenizer
from train.config import DataConfig

log = logging.getLogger(__name__)

DecoderFactory = Callable[..., Callable[[dict], Any]]   # (counter, rng=, sample_seed=) -> sample -> item | None
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


class ShardStream(IterableDataset):
    """Batches from webdataset shards; see the module docstring for splitting and epochs.

    Args:
        urls: expanded shard URLs.
        decoder_factory: ``factory(counter, rng=rng, sample_seed=...)`` -> callable mapping a raw sample
            to an item or None (random choices seeded per sample from ``sample_seed`` and its key).
        collate: ``collate(items, skipped)`` -> batch dict.
        batch_size: samples per batch.
        train: shuffle shards and samples, drop the last partial batch.
        resampled: draw shards with replacement (endless unless ``batches_per_rank``).
        seed: base of every random choice.
        shuffle_buffer: samples in the shuffle buffer (raw bytes, before decoding).
        interleave: shards read at once in training, their samples taken in turn (see
            :func:`interleave_shards`); 1: one shard after another.
        rank, world_size: this process and the number of processes.
        num_workers: DataLoader workers planned (checked again when iterating).
        batches_per_rank: batches each rank yields per epoch; None for one pass / endless.
    """

    def __init__(self, urls: list[str], *, decoder_factory: DecoderFactory, collate: Collate,
                 batch_size: int, train: bool, resampled: bool, seed: int, shuffle_buffer: int,
                 rank: int, world_size: int, num_workers: int, batches_per_rank: int | None,
                 interleave: int = 1):
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
        self.interleave = interleave
        self.rank, self.world_size = rank, world_size
        self.batches_per_rank = batches_per_rank
        self.epoch = 0
        self.resume: dict | None = None     # set by ShardLoader for the first iter() after a resume
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
               rng: random.Random, skip_raw: int = 0) -> Iterator[tuple[Any, int]]:
        """``(item, raw samples read so far)``; the first ``skip_raw`` raw samples are read, not decoded."""
        decode = self.decoder_factory(counter, rng=random.Random(0),
                                      sample_seed=f"{self.seed}-{self.epoch}-{self.rank}")
        usable = 0
        n_raw = 0
        for urls in self._passes(worker, n_workers):
            raw = interleave_shards(urls, counter, self.interleave if self.train else 1)
            if self.train and self.shuffle_buffer > 1:
                raw = wds.filters._shuffle(raw, bufsize=self.shuffle_buffer,
                                           initial=min(100, self.shuffle_buffer), rng=rng)
            for sample in raw:
                n_raw += 1
                if n_raw <= skip_raw:              # resuming: already trained on (or skipped) before
                    usable += 1
                    continue
                item = decode(sample)
                if item is not None:
                    usable += 1
                    yield item, n_raw
            if usable == 0:
                raise ValueError(f"rank {self.rank} worker {worker}: no usable sample in "
                                 f"{len(urls)} shard(s) (skipped: {dict(counter.counts)})")

    def _batches(self, items: Iterable[tuple[Any, int]], counter: SkipCounter, worker: int = 0,
                 done: int = 0) -> Iterator[dict]:
        """Full batches; each is held until the next usable item (or the end) so that skips
        after the last batch of a stream are still reported with it. ``done``: batches this
        worker yielded before a resume."""
        ready: list | None = None
        buf: list = []
        n_raw = 0

        def out(items: list, skipped: dict, end: bool) -> dict:
            nonlocal done
            done += 1
            batch = self.collate(items, skipped)
            batch["position"] = {"epoch": self.epoch, "worker": worker, "raw": n_raw, "batches": done,
                                 "end": end}
            return batch

        for item, n_raw in items:
            if ready is not None:
                yield out(ready, counter.drain(), False)
                ready = None
            buf.append(item)
            if len(buf) == self.batch_size:
                ready, buf = buf, []
        if ready is not None:
            yield out(ready, {} if buf and not self.train else counter.drain(), not (buf and not self.train))
        if buf and not self.train:
            yield out(buf, counter.drain(), True)

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
        resume = self.resume or {}
        # after a resume, DataLoader worker 0 plays the worker whose batch comes next
        worker = (worker + int(resume.get("offset", 0))) % n_workers
        return self._iterate(worker, n_workers, (resume.get("workers") or {}).get(str(worker)))

    def _iterate(self, worker: int, n_workers: int, state: dict | None) -> Iterator[dict]:
        counter = SkipCounter()
        rng = random.Random(f"samples-{self.seed}-{self.epoch}-{self.rank}-{worker}")
        done = int(state["batches"]) if state else 0
        quota = self.worker_quota(worker, n_workers)
        if state and (state["end"] or (quota is not None and done >= quota)):
            return
        # the raw sample that released the last batch trained on is the first of the next one
        skip_raw = max(0, int(state["raw"]) - 1) if state else 0
        batches = self._batches(self._items(worker, n_workers, counter, rng, skip_raw), counter, worker, done)
        yield from (batches if quota is None else islice(batches, quota - done))


class ShardLoader(DataLoader):
    """DataLoader over a :class:`ShardStream` that advances the stream's epoch on every ``iter()``.

    The epoch is set in the main process before workers start, so every worker
    (and every rank, which counts epochs the same way) agrees on it. Images cross
    from the workers as uint8 and become float in [0, 1] here, in the main process.
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0, **kwargs: Any):
        # its own generator: starting an iterator must not draw from the global RNG (exact resume)
        kwargs.setdefault("generator", torch.Generator().manual_seed(stream.seed))
        super().__init__(stream, batch_size=None, num_workers=num_workers,
                         persistent_workers=False, **kwargs)
        self._next_epoch = 0
        self._consumed: dict[str, Any] = {"epoch": 0, "last_worker": -1, "workers": {}}
        self._resume: dict[str, Any] | None = None

    def __iter__(self):
        stream: ShardStream = self.dataset
        resume, self._resume = self._resume, None
        epoch = self._next_epoch
        stream.resume = None
        if resume is not None:
            epoch = resume["epoch"]
            stream.resume = {"offset": (resume["last_worker"] + 1) % max(1, self.num_workers),
                             "workers": resume["workers"]}
        stream.set_epoch(epoch)
        self._consumed = resume or {"epoch": epoch, "last_worker": -1, "workers": {}}
        self._next_epoch = epoch + 1
        it = super().__iter__()          # workers (or the in-process iterator) capture stream.resume here
        stream.resume = None
        return _float_images(it)

    # ---- exact resume -----------------------------------------------------------------
    def consumed(self, position: dict) -> None:
        """Record that the batch at ``position`` (a batch's "position") was trained on."""
        if int(position["epoch"]) != self._consumed["epoch"]:
            self._consumed = {"epoch": int(position["epoch"]), "last_worker": -1, "workers": {}}
        self._consumed["last_worker"] = int(position["worker"])
        self._consumed["workers"][str(int(position["worker"]))] = {
            "raw": int(position["raw"]), "batches": int(position["batches"]), "end": bool(position["end"])}

    def _epoch_finished(self, state: dict) -> bool:
        n = max(1, self.num_workers)
        for w in range(n):
            st = state["workers"].get(str(w))
            quota = self.dataset.worker_quota(w, n)
            if st is None:
                if quota != 0:
                    return False
            elif not (st["end"] or (quota is not None and st["batches"] >= quota)):
                return False
        return True

    def state_dict(self) -> dict[str, Any]:
        """Every rank's data position (gathered: only rank 0 writes the checkpoint)."""
        mine = {**self._consumed, "n_workers": max(1, self.num_workers)}
        ranks = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        return {"version": 1, "world_size": self.dataset.world_size, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from this rank's saved position at the next ``iter()``."""
        stream: ShardStream = self.dataset
        ranks = state.get("ranks") or []
        if state.get("world_size") != stream.world_size or len(ranks) != stream.world_size:
            log.warning("data position not restored: saved with %s rank(s), resumed with %d; "
                        "epoch %s restarts from its beginning", state.get("world_size"), stream.world_size,
                        ranks[0]["epoch"] if ranks else "?")
            if ranks:
                self._next_epoch = int(ranks[0]["epoch"])
            return
        mine = ranks[stream.rank]
        if int(mine.get("n_workers", 1)) != max(1, self.num_workers):
            log.warning("data position not restored: saved with %s worker(s), resumed with %d; "
                        "epoch %d restarts from its beginning", mine.get("n_workers"),
                        max(1, self.num_workers), int(mine["epoch"]))
            self._next_epoch = int(mine["epoch"])
            return
        state_r = {"epoch": int(mine["epoch"]), "last_worker": int(mine["last_worker"]),
                   "workers": {str(k): dict(v) for k, v in mine["workers"].items()}}
        if self._epoch_finished(state_r):
            self._next_epoch = state_r["epoch"] + 1
        else:
            self._resume = state_r


def interleave_shards(urls: list[str], counter: SkipCounter, k: int) -> Iterator[dict]:
    """Raw samples of ``urls``, ``k`` shards open at a time, one sample from each in turn.

    A shuffle buffer smaller than a shard cannot mix shards that each hold one kind of data (the
    built-in builders write signs, scenes and emoji to separate shards; a crawl may be sorted by
    site): read one after another, training would see thousands of steps of one kind, then of the
    next. Shard ``j`` of the list goes to reader ``j % k``, each reader goes through its shards in
    order, and the readers take turns (a finished one drops out), so the order is a fixed function
    of the list: resuming by counting raw samples stays exact.
    """
    k = max(1, min(k, len(urls)))
    if k == 1:
        yield from read_samples(urls, counter)
        return
    readers = [read_samples(urls[j::k], counter) for j in range(k)]
    while readers:
        alive = []
        for r in readers:
            sample = next(r, None)
            if sample is not None:
                yield sample
                alive.append(r)
        readers = alive


def _float_images(batches: Iterator[dict]) -> Iterator[dict]:
    for batch in batches:
        if "images" in batch:
            batch["images"] = to_float(batch["images"])        # (B, 3, R, R) float in [0, 1]
        yield batch


def _rng_state() -> dict[str, Any]:
    """The global RNG streams of this process (torch CPU and CUDA, numpy, Python)."""
    import numpy as np
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    torch.set_rng_state(state["torch"])
    version, keys, *rest = state["python"]
    random.setstate((version, tuple(keys), *rest))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_shard_loaders(trainer: L.Trainer) -> list["ShardLoader"]:
    """The :class:`ShardLoader` training loaders of ``trainer`` (none for other loaders)."""
    loaders = trainer.train_dataloader
    flat = list(loaders.values()) if isinstance(loaders, dict) else (
        list(loaders) if isinstance(loaders, (list, tuple)) else [loaders])
    return [dl for dl in flat if isinstance(dl, ShardLoader)]


class ResumeState(L.Callback):
    """What an exact resume needs beyond weights and optimizer: data position and RNG streams.

    After every trained batch the loader learns the batch's position (ShardLoader saves
    it). The global RNG states of every rank are saved with each checkpoint and set
    again just before the first batch after a resume (after the loader, which draws
    from the global RNG when it starts, has started).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            _set_rng_state(self._pending)
            self._pending = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        position = batch.get("position") if isinstance(batch, dict) else None
        if position is not None:
            for loader in train_shard_loaders(trainer):
                loader.consumed(position)

    def state_dict(self) -> dict[str, Any]:
        ranks = [_rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, _rng_state())
        return {"rng": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("rng") or []
        rank, world = dist_info()
        if len(ranks) == world:
            self._pending = ranks[rank]
        elif ranks:
            log.warning("RNG streams not restored: saved with %d rank(s), resumed with %d", len(ranks), world)


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


def warn_share_imbalance(urls: list[str], *, seed: int, world_size: int, quota: int) -> dict[int, int] | None:
    """Warn when ranks' shares of the samples (first epoch's shard split) differ by more than 2x.

    A rank whose shards hold fewer samples than its quota repeats them; the warning says how often.

    Returns:
        Samples per rank, or None when the shards cannot be counted (``pipe:`` / remote).
    """
    try:
        counts = {u: count_samples(u) for u in urls}
    except (ValueError, OSError):
        return None
    order = list(urls)
    random.Random(f"shards-{seed}-0").shuffle(order)            # ShardStream.rank_shards, epoch 0
    shares = {r: sum(counts[u] for u in order[r::world_size]) for r in range(world_size)}
    low, high = min(shares.values()), max(shares.values())
    if high > 2 * max(low, 1):
        worst = min(shares, key=shares.get)
        repeats = -(-quota // max(low, 1))
        log.warning("ranks' shares of the data differ by more than 2x (%s samples per rank): rank %d reads "
                    "%d sample(s) for a quota of %d per epoch, so each repeats up to %d times; write shards of "
                    "similar size or set data.resampled=true",
                    "/".join(str(shares[r]) for r in range(world_size)), worst, low, quota, repeats)
    return shares


def build_stream(sources: Any, data_cfg: DataConfig, *, decoder_factory: DecoderFactory,
                 collate: Collate, batch_size: int, train: bool, resampled: bool | None, seed: int,
                 epoch_samples: int | None, rank: int | None, world_size: int | None) -> ShardStream:
    """Common construction of image and token streams (sources expanded, ranks resolved)."""
    urls = expand_sources(sources)
    rank, world_size = dist_info(rank, world_size)
    resampled = data_cfg.resampled if resampled is None else resampled
    n = batches_per_rank(urls, batch_size=batch_size, world_size=world_size,
                         resampled=resampled, epoch_samples=epoch_samples)
    if train and n is not None and not resampled and world_size > 1 and rank == 0:
        warn_share_imbalance(urls, seed=seed, world_size=world_size, quota=n * batch_size)
    return ShardStream(urls, decoder_factory=decoder_factory, collate=collate, batch_size=batch_size,
                       train=train, resampled=resampled, seed=seed,
                       shuffle_buffer=data_cfg.shuffle_buffer if train else 0, interleave=data_cfg.interleave,
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
                  world_size: int | None = None, captions: bool = True) -> ShardStream:
    """Image-caption batches from img2dataset shards.

    Args:
        sources: shard sources (see :func:`common.shards.expand_sources`).
        data_cfg: decoding, shuffling and worker settings.
        batch_size: samples per batch.
        train: shuffle, random crop if ``data_cfg.random_crop``, drop the last partial batch.
        resampled: override ``data_cfg.resampled``.
        seed: base seed (same on every rank).
        epoch_samples: samples per epoch over all ranks (see the module docstring).
        tokenizer: adds "text_tokens" to each batch.
        rank, world_size: default from torch.distributed or RANK/WORLD_SIZE.
        captions: False reads images alone (the image tokenizer's stages): samples without a
            caption are kept, and every caption in a batch is empty.
    Returns:
        A :class:`ShardStream`; wrap it with :func:`make_loader`.
    Raises:
        ValueError: a tokenizer with ``captions=False``.
    """
    if tokenizer is not None and not captions:
        raise ValueError("text tokens need captions: pass captions=True with a tokenizer")
    factory = functools.partial(SampleDecoder, data_cfg, train=train, captions=captions)
    return build_stream(sources, data_cfg, decoder_factory=factory, collate=BatchCollate("images", tokenizer),
                        batch_size=batch_size, train=train, resampled=resampled, seed=seed,
                        epoch_samples=epoch_samples, rank=rank, world_size=world_size)


def make_loader(stream: ShardStream, num_workers: int, **kwargs: Any) -> ShardLoader:
    """The DataLoader for a stream (batching happens in the stream)."""
    return ShardLoader(stream, num_workers=num_workers, **kwargs)
