"""The scorer's training data: shard streams of :mod:`common.scorer_batches` batches.

The same shards, the same stream (:mod:`train.data.loader`: splitting, shuffling, exact
resume) and the same decode path as the rest of training (bad samples are skipped and
counted by reason); each batch carries the hard negatives of its samples' truth and, with
``aux_grid``, the auxiliary targets (see :mod:`common.scorer_batches`).
"""
from __future__ import annotations

import functools
from typing import Any

from common.scorer_batches import ScorerCollate, ScorerSampleDecoder
from dalle.tokenizer import TextTokenizer
from train.config import DataConfig
from train.data.datamodule import ShardDataModule
from train.data.loader import ShardStream, build_stream


def scorer_dataset(sources: Any, data_cfg: DataConfig, *, tokenizer: TextTokenizer, batch_size: int,
                   train: bool = True, with_negatives: bool = True, aux_grid: int | None = None,
                   image_negatives: int = 0, resampled: bool | None = None, seed: int = 0,
                   epoch_samples: int | None = None, rank: int | None = None,
                   world_size: int | None = None) -> ShardStream:
    """Scorer batches from img2dataset shards (arguments as :func:`train.data.loader.image_dataset`).

    Args:
        with_negatives: build the hard negatives (off: in-batch negatives only).
        aux_grid: add the auxiliary targets on this grid (None: none).
        image_negatives: render up to this many image negatives per sample (0: none).
    """
    factory = functools.partial(ScorerSampleDecoder, data_cfg, train=train, with_negatives=with_negatives,
                                aux_grid=aux_grid, image_negatives=image_negatives)
    return build_stream(sources, data_cfg, decoder_factory=factory, collate=ScorerCollate(tokenizer),
                        batch_size=batch_size, train=train, resampled=resampled, seed=seed,
                        epoch_samples=epoch_samples, rank=rank, world_size=world_size)


class ScorerDataModule(ShardDataModule):
    """:class:`ShardDataModule` whose streams carry hard negatives (``tokenizer`` is required)."""

    def __init__(self, data_cfg: DataConfig, *, tokenizer: TextTokenizer, with_negatives: bool = True,
                 aux_grid: int | None = None, image_negatives: int = 0, **kwargs: Any):
        super().__init__(data_cfg, kind="images", tokenizer=tokenizer, **kwargs)
        self.with_negatives = with_negatives
        self.aux_grid = aux_grid
        self.image_negatives = image_negatives

    def _stream(self, sources: list[str], *, train: bool, epoch_samples: int | None) -> ShardStream:
        return scorer_dataset(sources, self.data_cfg, tokenizer=self.tokenizer, batch_size=self.batch_size,
                              train=train, with_negatives=self.with_negatives, aux_grid=self.aux_grid,
                              image_negatives=self.image_negatives if train else 0,
                              resampled=None if train else False, seed=self.seed, epoch_samples=epoch_samples,
                              rank=self.rank, world_size=self.world_size)
