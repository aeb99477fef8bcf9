"""The LightningDataModule of both training stages: train/val loaders over image or token shards.

It sits above the two stream builders, :func:`train.data.loader.image_dataset`
and :func:`train.data.tokens.token_dataset` (which builds on the loader), so
imports flow one way: ``datamodule -> tokens -> loader``.
"""
from __future__ import annotations

import lightning as L

from dalle.tokenizer import TextTokenizer
from train.config import DataConfig
from train.data.loader import ShardLoader, ShardStream, dist_info, image_dataset, make_loader
from train.data.tokens import token_dataset


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
        captions: False for image batches that need no caption (image-tokenizer training reads
            caption-less shards too, e.g. ``dalle data recolour``'s).
    """

    def __init__(self, data_cfg: DataConfig, *, batch_size: int, kind: str = "images",
                 train_sources: list[str] | None = None, val_sources: list[str] | None = None,
                 tokenizer: TextTokenizer | None = None, image_grid: int | None = None,
                 seed: int = 0, epoch_samples: int | None = None, val_samples: int | None = None,
                 captions: bool = True):
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
        self.captions = captions
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
            return token_dataset(sources, self.data_cfg, image_grid=self.image_grid, **kw)
        return image_dataset(sources, self.data_cfg, captions=self.captions, **kw)

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
