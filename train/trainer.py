"""One place that turns a :class:`TrainConfig` into a Lightning ``Trainer``.

Both training stages use it: precision and strategy resolution, atomic
checkpoints every ``ckpt_every`` steps (plus one ``last.ckpt``) each with a
checksum record, checkpoints read with ``weights_only=True``, CSV logs that
append across resumes, the exact-resume state (data position and RNG streams
per rank), the launcher-versus-preset world-size check, and finding the
checkpoint to resume from (:mod:`train.checkpoints`).
"""
from __future__ import annotations

import csv
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from dalle.atomic import atomic_write
from train.checkpoints import CHECKPOINT_DIR, LAST, find_resume_checkpoint, load_checkpoint, write_record
from train.config import TrainConfig
from train.monitor import (GradNormMonitor, StepProgressBar, ThroughputMonitor, TrainingSummary,
                           tensorboard_logger)
from train.data.loader import ResumeState

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_DIR", "LAST", "build_trainer", "latest_checkpoint", "check_world_size"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, fsyncs, renames, then records its sha256.

    A run killed mid-write leaves the previous checkpoint intact, never half a file; a
    kill between the rename and the record leaves a file whose record does not match,
    which resuming treats as corrupt (and falls back to an older one). Loading is
    ``weights_only=True``. Paths with a URL scheme (object stores) go through Lightning's own writer.
    ``last_saved`` is the path of the newest checkpoint this process wrote.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_saved: Path | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = str(path)
        if "://" in path:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda tmp: _save_synced(checkpoint, tmp))
        write_record(path, int(checkpoint.get("global_step", 0)))
        self.last_saved = Path(path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        record = Path(str(path) + ".sha256")
        if "://" not in str(path) and record.is_file():
            record.unlink()


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is continued, not deleted.

    Rows at or after ``start_step`` (logged by a killed run after its checkpoint, and
    logged again by the resumed one) are dropped once, so each step appears once.
    """

    def __init__(self, log_dir: str, start_step: int | None = None) -> None:
        self.start_step = start_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = list(reader)
        if self.start_step is not None:
            kept = [r for r in rows if _row_step(r) < self.start_step]
            if len(kept) != len(rows):
                with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=keys)
                    writer.writeheader()
                    writer.writerows(kept)
        self.metrics_keys = sorted(keys)


def _row_step(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class AppendingCSVLogger(CSVLogger):
    """A CSVLogger whose ``metrics.csv`` grows across resumes (see :class:`AppendingExperimentWriter`)."""

    def __init__(self, *args: Any, start_step: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._start_step = start_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(self.log_dir, start_step=self._start_step)
        return self._experiment


class StepCheckpoint(ModelCheckpoint):
    """Checkpoints every ``every_n_train_steps``; at a step that also validates, after the validation.

    Lightning saves step checkpoints at the end of the training batch, before the validation of the
    same step runs; a run killed in between resumed after that step and never computed its held-out
    loss (two such points are missing from a run's ``metrics.csv``). Here such a save waits for the
    end of that validation, so the checkpoint comes after the loss is logged; at the end of training
    a save still waiting is made.
    """

    def __init__(self, *args: Any, val_every: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._val_every = val_every
        self._waiting = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._save_waiting(trainer)                   # no validation came after the step it waited for
        step = trainer.global_step
        if (self._val_every and self._every_n_train_steps and step % self._every_n_train_steps == 0
                and step % self._val_every == 0 and not self._should_skip_saving_checkpoint(trainer)):
            self._waiting = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_waiting(self, trainer) -> None:
        if self._waiting and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        self._waiting = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._waiting and not trainer.sanity_checking:
            self._save_waiting(trainer)
            return
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_waiting(trainer)
        super().on_train_end(trainer, pl_module)


def _save_synced(checkpoint: dict[str, Any], path: str) -> None:
    """``torch.save`` into ``path`` and fsync it, so the rename that follows publishes whole bytes."""
    with open(path, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX); False when unknown."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> str:
    """``auto`` -> bf16-mixed on CUDA, fp32 on CPU; other values pass through.

    bf16 asked for on a CPU without native bfloat16 arithmetic is warned about: emulated, it ran
    25x slower than fp32 on one AVX2 core (``bench/bench_dalle_train.py``, BENCHMARKS.md).
    """
    if precision == "auto":
        return "bf16-mixed" if torch.cuda.is_available() else "32-true"
    if precision.startswith("bf16") and not torch.cuda.is_available() and not cpu_has_bf16():
        log.warning("precision %s on a CPU without native bfloat16 (no AVX-512 BF16 / AMX): bfloat16 is "
                    "emulated and far slower than fp32 here; use precision 32 (or auto)", precision)
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
                  resume_step: int | None = None, **overrides: Any) -> L.Trainer:
    """Build the Lightning ``Trainer`` for one training stage.

    Args:
        cfg: the stage's training config.
        out_dir: run directory; checkpoints go to ``out_dir/checkpoints``, logs to ``out_dir/logs``.
        callbacks: extra callbacks.
        enable_progress_bar: show Lightning's progress bar.
        logger: write logs: the CSV, plus TensorBoard when ``cfg.logger == "tensorboard"``
            (see :mod:`train.monitor`), the learning rate and the gradient norm.
        fsdp_wrap: module classes FSDP shards as units (with ``strategy: fsdp``).
        resume_step: the step being resumed from; CSV rows logged at or after it are replaced.
        overrides: extra ``Trainer`` keyword arguments (tests use these).
    Returns:
        The configured ``Trainer``.
    """
    out_dir = Path(out_dir)
    ckpt = StepCheckpoint(dirpath=out_dir / CHECKPOINT_DIR, filename="step{step:08d}",
                          auto_insert_metric_name=False, every_n_train_steps=cfg.ckpt_every,
                          save_top_k=1, save_last=True, enable_version_counter=False, val_every=cfg.val_every)
    cbs: list[L.Callback] = [ckpt, ResumeState(), TrainingSummary(), *callbacks]
    if enable_progress_bar:
        cbs.append(StepProgressBar())
    loggers: Any = False
    if logger:
        loggers = [AppendingCSVLogger(save_dir=str(out_dir), name="logs", version="", start_step=resume_step)]
        if cfg.logger == "tensorboard":
            loggers.append(tensorboard_logger(out_dir))
        cbs += [LearningRateMonitor(logging_interval="step"), GradNormMonitor(cfg.log_every),
                ThroughputMonitor(cfg.log_every)]
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
    if cfg.max_minutes:
        kwargs["max_time"] = timedelta(minutes=cfg.max_minutes)
    kwargs.update(overrides)
    trainer = L.Trainer(**kwargs)
    check_world_size(trainer, cfg)
    return trainer


def check_world_size(trainer: L.Trainer, cfg: TrainConfig) -> None:
    """Stop when the launcher (torchrun, SLURM) starts another number of processes than the Trainer plans.

    Otherwise each process would train alone on all the data and race on the same files.

    Raises:
        ValueError: one line naming the setting to change.
    """
    launched = os.environ.get("WORLD_SIZE")
    if launched is None or "TORCHELASTIC_RUN_ID" not in os.environ:   # not started by torchrun
        return
    try:
        launched_n = int(launched)
    except ValueError:
        return
    planned = trainer.num_nodes * trainer.num_devices
    if launched_n != planned:
        per_node = os.environ.get("LOCAL_WORLD_SIZE")
        hint = (f"set num_nodes={launched_n // int(per_node)} and devices={per_node}"
                if per_node and per_node.isdigit() and int(per_node) and launched_n % int(per_node) == 0
                else f"make num_nodes x devices equal {launched_n}")
        raise ValueError(f"the launcher started {launched_n} process(es) (WORLD_SIZE) but the preset plans "
                         f"num_nodes={trainer.num_nodes} x devices={trainer.num_devices} = {planned}: {hint} "
                         f"(--set {cfg_section(cfg)}.num_nodes=... --set {cfg_section(cfg)}.devices=...)")


def cfg_section(cfg: TrainConfig) -> str:
    """The preset section a training config comes from."""
    return "vqvae_train" if type(cfg).__name__.startswith("VQVAE") else "dalle_train"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint a resumed run should start from: the newest intact one by recorded step.

    See :func:`train.checkpoints.find_resume_checkpoint` (raises ``CheckpointError`` when
    checkpoints exist but none is intact).
    """
    return find_resume_checkpoint(out_dir)
