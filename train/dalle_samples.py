"""Samples for fixed prompts every ``image_every`` steps while the transformer trains.

Rank 0 draws one image per prompt of ``dalle_train.sample_prompts`` with a fixed seed
(so the grids of successive steps are comparable), through the public ``dalle.Dalle``
object, writes ``out_dir/images/samples_step_XXXXXX.png`` and sends the grid to
TensorBoard when that logger is on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
import torchvision.transforms.functional as TF

from dalle.atomic import atomic_write
from dalle.images import make_grid
from train.monitor import log_image

log = logging.getLogger(__name__)


class SampleImages(L.Callback):
    """Every ``every`` optimizer steps, sample ``prompts`` with the current weights (rank 0 only).

    Args:
        vqvae: the frozen image tokenizer that decodes the codes.
        tokenizer: the caption tokenizer of the run.
        prompts: the fixed prompts.
        every: steps between grids (> 0).
        out_dir: run directory; grids go to ``out_dir/images``.
        seed: run seed of the samples.
    """

    def __init__(self, vqvae: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], every: int,
                 out_dir: str | Path, seed: int = 0):
        self.vqvae, self.tokenizer, self.prompts = vqvae, tokenizer, list(prompts)
        self.every, self.out_dir, self.seed = int(every), Path(out_dir), int(seed)
        self._last = -1
        self._warned = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.prompts or step == self._last or step == 0 or step % self.every or not trainer.is_global_zero:
            return
        self._last = step
        if "fsdp" in type(trainer.strategy).__name__.lower():
            if not self._warned:
                log.warning("sample grids are off under FSDP (the weights are sharded)")
                self._warned = True
            return
        self.sample(pl_module.model, step, trainer)

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, step: int, trainer: L.Trainer | None = None) -> Path:
        """Draw the grid with ``model`` now; returns the PNG path."""
        from dalle import Dalle
        device = next(model.parameters()).device
        vqvae = self.vqvae.to(device).eval()
        gens = Dalle(model, vqvae, self.tokenizer).generate(self.prompts, n=1, seed=self.seed)
        grid = make_grid([g.image for g in gens], ncol=len(gens))
        path = self.out_dir / "images" / f"samples_step_{step:06d}.png"
        atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
        log_image(trainer, "images/samples", TF.pil_to_tensor(grid).float() / 255.0, step)
        log.info("step %d: samples for %d fixed prompts in %s", step, len(gens), path)
        return path
