"""Watching a run: the logger choice, gradient norm, samples/s, a step-based progress bar, images, a summary.

Both training stages get these from :func:`train.trainer.build_trainer`:

- ``TrainConfig.logger``: ``csv`` (``out_dir/logs/metrics.csv``, the default) or
  ``tensorboard`` (event files in ``out_dir/tensorboard`` as well as the CSV; the
  ``tensorboard`` extra). Images go to TensorBoard with :func:`log_image`; the PNG
  files under ``out_dir/images`` are written either way.
- :class:`GradNormMonitor`: ``train/grad_norm`` (before clipping) at log steps.
- :class:`StepProgressBar`: the bar counts optimizer steps out of ``max_steps``, so
  it has an ETA even when the data is a stream of unknown length, and shows samples/s.
- :class:`TrainingSummary`: one paragraph at the end (steps, samples, time, final losses,
  where the result is), written by the fit functions through :func:`summary_paragraph`.
"""
from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 0


def tensorboard_logger(out_dir: str | Path) -> L.pytorch.loggers.Logger:
    """A TensorBoard logger writing to ``out_dir/tensorboard``; a ValueError if tensorboard is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("logger 'tensorboard' needs the tensorboard package: pip install -e \".[tensorboard]\"") \
            from None
    from lightning.pytorch.loggers import TensorBoardLogger
    return TensorBoardLogger(save_dir=str(out_dir), name=TENSORBOARD_DIR, version="", default_hp_metric=False)


def log_image(trainer: L.Trainer | None, tag: str, image: torch.Tensor, step: int) -> None:
    """Send a (3, H, W) image in [0, 1] to every logger that takes images (TensorBoard)."""
    if trainer is None:
        return
    from lightning.pytorch.loggers import TensorBoardLogger
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image.detach().float().clamp(0, 1).cpu(), global_step=step)


class GradNormMonitor(L.Callback):
    """Logs the global L2 norm of the gradients (before clipping) as ``train/grad_norm`` at log steps."""

    def __init__(self, every: int):
        self.every = max(1, int(every))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if (trainer.global_step + 1) % self.every:
            return
        norms = [p.grad.detach().float().norm() for p in pl_module.parameters() if p.grad is not None]
        if norms:
            pl_module.log("train/grad_norm", torch.stack(norms).norm(), on_step=True, on_epoch=False)


class ThroughputMonitor(L.Callback):
    """Logs ``train/samples_per_s`` (all ranks together) at log steps."""

    def __init__(self, every: int):
        self.every = max(1, int(every))
        self.throughput = Throughput()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.throughput.add(batch_size_of(batch) * trainer.world_size)
        rate = self.throughput.rate()
        if rate is not None and trainer.global_step % self.every == 0:
            pl_module.log("train/samples_per_s", rate, on_step=True, on_epoch=False)


class Throughput:
    """Samples per second over the last ``window`` optimizer steps."""

    def __init__(self, window: int = 20):
        self.times: collections.deque = collections.deque(maxlen=window + 1)
        self.total = 0

    def add(self, samples: int) -> None:
        self.total += samples
        self.times.append((time.perf_counter(), self.total))

    def rate(self) -> float | None:
        if len(self.times) < 2:
            return None
        (t0, n0), (t1, n1) = self.times[0], self.times[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimizer steps out of ``max_steps`` (an ETA for streams) plus samples/s."""

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.throughput = Throughput()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._count_steps(trainer)        # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._count_steps(trainer)

    def _count_steps(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step
        bar.unit = "step"
        bar.set_description(f"Epoch {trainer.current_epoch}")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.throughput.add(batch_size_of(batch) * trainer.world_size)
        bar = self.train_progress_bar
        if trainer.global_step == bar.n and trainer.global_step < (bar.total or float("inf")):
            return                                      # mid-accumulation: no optimizer step yet
        bar.n = trainer.global_step
        if bar.n % self.refresh_rate == 0 or bar.n == bar.total:
            postfix = self.get_metrics(trainer, pl_module)
            rate = self.throughput.rate()
            if rate is not None:
                postfix["samples/s"] = f"{rate:.1f}"
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self.train_progress_bar
        bar.n = trainer.global_step
        bar.refresh()


class TrainingSummary(L.Callback):
    """Counts steps, samples and time of this run; :func:`summary_paragraph` reports them."""

    def __init__(self) -> None:
        self.start_step = 0
        self.steps = 0
        self.samples = 0
        self.seconds = 0.0
        self.metrics: dict[str, float] = {}
        self._t0 = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step, self._t0 = trainer.global_step, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.samples += batch_size_of(batch) * trainer.world_size

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps = trainer.global_step
        self.seconds = time.perf_counter() - self._t0
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                        if isinstance(v, (torch.Tensor, float, int)) and torch.as_tensor(v).numel() == 1}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def summary_paragraph(trainer: L.Trainer, what: str, result: str | Path, *,
                      losses: tuple[str, ...] = ("train/loss",)) -> str:
    """One paragraph about the run that just ended (empty when the trainer had no :class:`TrainingSummary`)."""
    summary = next((cb for cb in trainer.callbacks if isinstance(cb, TrainingSummary)), None)
    if summary is None:
        return ""
    ran = summary.steps - summary.start_step
    resumed = f" (resumed at step {summary.start_step})" if summary.start_step else ""
    rate = summary.samples / summary.seconds if summary.seconds > 0 else 0.0
    final = ", ".join(f"{k.split('/')[-1].replace('_', ' ')} {summary.metrics[k]:.4f}" for k in losses
                      if k in summary.metrics)
    stopped = "" if summary.steps >= trainer.max_steps else f"; stopped before max_steps {trainer.max_steps}"
    return (f"Trained the {what} to step {summary.steps} of {trainer.max_steps}{resumed}{stopped}: {ran} steps on "
            f"{summary.samples:,} samples in {_duration(summary.seconds)} ({rate:.1f} samples/s). "
            f"Final {final or 'losses not logged'}. Result: {result}")
