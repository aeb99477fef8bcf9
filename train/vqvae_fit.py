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

from train.checkpoints import clean_orphans, prune_older, verify
from train.config import Preset
from train.data.datamodule import ShardDataModule
from train.trainer import build_trainer, latest_checkpoint
from train.monitor import summary_paragraph
from train.patch_vq_module import PatchVQModule
from train.vqvae_module import VQVAEModule
from vqvae.patch_vq import PatchVQConfig
from vqvae.registry import load_image_tokenizer

log = logging.getLogger(__name__)

EXPORT_DIR = "export"


def fit_vqvae(preset: Preset, out_dir: Path, *, train_shards: list[str] | None = None, resume: bool = True,
              init_from: str | Path | None = None, callbacks: Iterable[L.Callback] = (), enable_progress_bar: bool = True,
              trainer_kwargs: dict[str, Any] | None = None) -> Path:
    """Train the discrete VAE of ``preset`` and export it.

    Args:
        preset: the resolved preset (``vqvae``, ``data`` and ``vqvae_train`` sections are used).
        out_dir: run directory (checkpoints, logs, images/, export/).
        train_shards: shard sources; default ``preset.data.train_shards``.
        resume: continue from ``latest_checkpoint(out_dir)`` if there is one.
        init_from: an exported image tokenizer whose weights a fresh run starts from (its config
            replaces the preset's ``vqvae`` section; e.g. a fitted PatchVQ codebook, whose codes then
            stay those of the token shards made with it). A resumable run ignores it.
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
    clean_orphans(out_dir)
    tmp = out_dir / f".preset.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(preset.to_dict(), indent=2, default=str))
    os.replace(tmp, out_dir / "preset.json")                  # the resolved config of the run

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = ShardDataModule(preset.data, batch_size=cfg.batch_size, kind="images",
                                 train_sources=shards, seed=cfg.seed, captions=False)   # images are all it reads
    ckpt = latest_checkpoint(out_dir) if resume else None
    start = load_image_tokenizer(init_from) if init_from is not None and ckpt is None else None
    vqvae_cfg = start.config if start is not None else preset.vqvae
    module_class = PatchVQModule if isinstance(vqvae_cfg, PatchVQConfig) else VQVAEModule
    module = module_class(vqvae_cfg, cfg, out_dir)
    if start is not None:
        module.model.load_state_dict(start.state_dict())
        log.info("starting from the weights of %s", init_from)
    if ckpt is not None:
        log.info("resuming image-tokenizer training from %s", ckpt)
        prune_older(out_dir, ckpt)
    trainer = build_trainer(cfg, out_dir, callbacks=callbacks, enable_progress_bar=enable_progress_bar,
                            resume_step=verify(ckpt)[0] if ckpt is not None else 0, **(trainer_kwargs or {}))
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt is not None else None)

    export_dir = out_dir / EXPORT_DIR
    if trainer.is_global_zero:
        module.export(export_dir)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        name = "PatchVQ" if isinstance(vqvae_cfg, PatchVQConfig) else "dVAE"
        log.info("%s", summary_paragraph(trainer, name, f"the exported tokenizer {export_dir} (dalle tokens / "
                                         f"dalle train --vqvae {export_dir})",
                                         losses=("train/loss", "train/recon", "train/psnr_hard")))
    return export_dir
