"""One place that turns a :class:`TrainConfig` into a Lightning ``Trainer``.

Both training stages use it: precision and strategy resolution, atomic
checkpoints every ``ckpt_every`` steps (plus ``last.ckpt``), CSV logs, and
finding the checkpoint to resume from.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from dalle.atomic import atomic_write
from train.config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, fsyncs, then renames.

    A run killed mid-write leaves the previous checkpoint intact, never half a file.
    Paths with a URL scheme (object stores) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = str(path)
        if "://" in path:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda tmp: _save_synced(checkpoint, tmp))


def _save_synced(checkpoint: dict[str, Any], path: str) -> None:
    """``torch.save`` into ``path`` and fsync it, so the rename that follows publishes whole bytes."""
    with open(path, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


def resolve_precision(precision: str) -> str:
    """``auto`` -> bf16-mixed on CUDA, fp32 on CPU; other values pass through."""
    if precision == "auto":
        return "bf16-mixed" if torch.cuda.is_available() else "32-true"
    return "32-true" if precision == "32" else precision


def resolve_strategy(strategy: str, devices: Any, num_nodes: int, *,
                     fsdp_wrap: set[type] | None = None) -> Any:
    """``auto`` -> DDP when more than one process will run, else Lightning's choice.

    ``fsdp`` shards each module of a class in ``fsdp_wrap`` (the transformer's blocks)
    as its own unit; activation checkpointing stays the model's own flag.
    """
    if strategy != "auto":
        if strategy == "fsdp":
            if not torch.cuda.is_available():
                raise ValueError("strategy 'fsdp' needs CUDA GPUs; use 'ddp' on CPU")
            from lightning.pytorch.strategies import FSDPStrategy
            return FSDPStrategy(auto_wrap_policy=fsdp_wrap)
        return strategy
    many = num_nodes > 1 or (isinstance(devices, int) and devices > 1) or (
        isinstance(devices, (list, tuple)) and len(devices) > 1)
    if devices in ("auto", -1) and torch.cuda.device_count() > 1:
        many = True
    return "ddp" if many else "auto"


def build_trainer(cfg: TrainConfig, out_dir: Path, *, callbacks: Iterable[L.Callback] = (),
                  enable_progress_bar: bool = True, logger: bool = True, fsdp_wrap: set[type] | None = None,
                  **overrides: Any) -> L.Trainer:
    """Build the Lightning ``Trainer`` for one training stage.

    Args:
        cfg: the stage's training config.
        out_dir: run directory; checkpoints go to ``out_dir/checkpoints``, logs to ``out_dir/logs``.
        callbacks: extra callbacks.
        enable_progress_bar: show Lightning's progress bar.
        logger: write CSV logs.
        fsdp_wrap: module classes FSDP shards as units (with ``strategy: fsdp``).
        overrides: extra ``Trainer`` keyword arguments (tests use these).
    Returns:
        The configured ``Trainer``.
    """
    out_dir = Path(out_dir)
    ckpt = ModelCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, filename="step{step:08d}",
                           auto_insert_metric_name=False, every_n_train_steps=cfg.ckpt_every,
                           save_top_k=1, save_last=True)
    cbs: list[L.Callback] = [ckpt, *callbacks]
    loggers: Any = False
    if logger:
        loggers = CSVLogger(save_dir=str(out_dir), name="logs", version="")
        cbs.append(LearningRateMonitor(logging_interval="step"))
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(out_dir),
        max_steps=cfg.max_steps,
        precision=resolve_precision(cfg.precision),
        accelerator="auto",
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=resolve_strategy(cfg.strategy, cfg.devices, cfg.num_nodes, fsdp_wrap=fsdp_wrap),
        gradient_clip_val=cfg.grad_clip if cfg.grad_clip > 0 else None,
        accumulate_grad_batches=cfg.grad_accum,
        log_every_n_steps=cfg.log_every,
        callbacks=cbs,
        logger=loggers,
        enable_progress_bar=enable_progress_bar,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        limit_val_batches=None if cfg.val_every else 0,
        val_check_interval=cfg.val_every if cfg.val_every else None,
        check_val_every_n_epoch=None,
        use_distributed_sampler=False,   # webdataset splits shards by rank itself
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint a resumed run should start from: ``last.ckpt`` if present, else the newest."""
    d = Path(out_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return None
    last = d / LAST
    if last.is_file():
        return last
    ckpts = sorted(d.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return ckpts[-1] if ckpts else None
