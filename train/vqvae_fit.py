"""Stage 1 entry point: train the dVAE on image shards and export the tokenizer.

``fit_vqvae`` is what ``dalle train-vqvae`` calls: it builds the shard data
module (``train/data/loader.py``), the :class:`VQVAEModule` and the trainer
(``train/trainer.py``), resumes from ``out_dir/checkpoints`` when asked, fits
to ``max_steps`` and writes the inference weights to ``out_dir/export``.
``vqvae_train.batch_size`` is the per-process batch size.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import lightning as L

from train.config import Preset
from train.data.loader import ShardDataModule
from train.trainer import build_trainer, latest_checkpoint
from train.vqvae_module import VQVAEModule

log = logging.getLogger(__name__)

EXPORT_DIR = "export"


def fit_vqvae(preset: Preset, out_dir: Path, *, train_shards: list[str] | None = None, resume: bool = True,
              callbacks: Iterable[L.Callback] = (), enable_progress_bar: bool = True,
              trainer_kwargs: dict[str, Any] | None = None) -> Path:
    """Train the discrete VAE of ``preset`` and export it.

    Args:
        preset: the resolved preset (``vqvae``, ``data`` and ``vqvae_train`` sections are used).
        out_dir: run directory (checkpoints, logs, images/, export/).
        train_shards: shard sources; default ``preset.data.train_shards``.
        resume: continue from ``latest_checkpoint(out_dir)`` if there is one.
        callbacks: extra Lightning callbacks.
        enable_progress_bar: show Lightning's progress bar.
        trainer_kwargs: extra ``Trainer`` arguments (passed to ``build_trainer``).
    Returns:
        The export directory (``DiscreteVAE.from_checkpoint`` reads it).
    Raises:
        ValueError: no training shards.
    """
    out_dir = Path(out_dir)
    cfg = preset.vqvae_train
    shards = list(train_shards) if train_shards is not None else list(preset.data.train_shards)
    if not shards:
        raise ValueError("no training shards: pass --shards or set data.train_shards in the preset")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".preset.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(preset.to_dict(), indent=2, default=str))
    os.replace(tmp, out_dir / "preset.json")                  # the resolved config of the run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = ShardDataModule(preset.data, batch_size=cfg.batch_size, kind="images",
                                 train_sources=shards, seed=cfg.seed)
    module = VQVAEModule(preset.vqvae, cfg, out_dir)
    trainer = build_trainer(cfg, out_dir, callbacks=callbacks, enable_progress_bar=enable_progress_bar,
                            **(trainer_kwargs or {}))
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        log.info("resuming dVAE training from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt is not None else None)

    export_dir = out_dir / EXPORT_DIR
    if trainer.is_global_zero:
        module.export(export_dir)
    trainer.strategy.barrier()
    return export_dir
