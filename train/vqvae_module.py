"""Lightning training of the discrete VAE (stage 1).

The step: relaxed encode-decode at the scheduled Gumbel temperature, the
beta-weighted negative ELB of :mod:`vqvae.losses` with the KL weight warmed up
from 0, AdamW with linear warm-up + cosine decay. Logged: every loss term,
temperature, KL weight, PSNR (of the relaxed reconstruction every step,
``train/psnr_hard`` of the argmax codes at log steps), codebook usage / perplexity / dead codes over a
sliding window of recent codes, cumulative skipped-sample counts. A PNG grid
(originals over reconstructions from the hard codes) goes to
``out_dir/images/step_XXXXXX.png`` every ``image_every`` steps, and dead codes
are restarted from encoder features (see :mod:`train.codebook`).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
import torch.distributed as dist
from torchvision.utils import make_grid

from dalle.images import save_recon_grid
from train.codebook import CodeUsage, restart_dead_codes
from train.config import VQVAETrainConfig
from train.frozen import hold
from train.monitor import log_image
from train.optim import ndim_groups, optimizer_config
from vqvae.config import VQVAEConfig
from vqvae.losses import elbo_loss, kl_uniform
from vqvae.metrics import psnr
from vqvae.model import DiscreteVAE
from vqvae.relaxation import one_hot_channels

log = logging.getLogger(__name__)

GRID_IMAGES = 8


# ---- schedules (pure functions) -------------------------------------------------------------
def temperature_at(step: int, *, start: float, end: float, anneal_steps: int) -> float:
    """Relaxation temperature at ``step``: from ``start`` to ``end`` over ``anneal_steps`` (geometric
    interpolation), then flat.

    Args:
        step: optimizer step (0-based).
        start, end: temperatures, ``0 < end <= start``.
        anneal_steps: length of the anneal (<= 0: always ``end``).
    """
    if anneal_steps <= 0:
        return end
    t = min(max(step, 0) / anneal_steps, 1.0)
    return start * (end / start) ** t


def kl_weight_at(step: int, *, kl_weight: float, warmup_steps: int) -> float:
    """KL weight at ``step``: from 0 to ``kl_weight`` over ``warmup_steps`` (a half cosine), then flat.

    Args:
        step: optimizer step (0-based).
        kl_weight: the final weight (beta).
        warmup_steps: length of the warm-up (<= 0: always ``kl_weight``).
    """
    if warmup_steps <= 0:
        return kl_weight
    t = min(max(step, 0) / warmup_steps, 1.0)
    return kl_weight * 0.5 * (1.0 - math.cos(math.pi * t))


def recon_grid(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Originals (top row) over reconstructions (bottom row) as one (3, H, W) image in [0, 1]."""
    return make_grid(torch.cat([images.float(), reconstructions.float()]).clamp(0, 1).cpu(),
                     nrow=images.shape[0], padding=1)                 # (3, H, W)


class VQVAEModule(L.LightningModule):
    """Trains a :class:`DiscreteVAE`; ``export(dir)`` writes the inference weights."""

    model_class: type[torch.nn.Module] = DiscreteVAE

    def __init__(self, vqvae_cfg: VQVAEConfig, train_cfg: VQVAETrainConfig,
                 out_dir: str | Path | None = None) -> None:
        super().__init__()
        self.vqvae_cfg = vqvae_cfg
        self.train_cfg = train_cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model = self.model_class(vqvae_cfg)
        self.usage = CodeUsage(vqvae_cfg.vocab_size, train_cfg.usage_window)
        self.skipped_total: Counter[str] = Counter()   # summed over ranks up to the last sync
        self._skipped_local: Counter[str] = Counter()  # this rank, since the last sync
        self.codes_restarted = 0
        self._features: torch.Tensor | None = None
        self._last_grid_step = -1
        hold(self, "_forward", self.model)   # not a submodule (see configure_model)
        self.n_pixel_dims = vqvae_cfg.in_channels * vqvae_cfg.resolution ** 2
        self.n_positions = vqvae_cfg.grid_size ** 2

    # ---- setup ------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.train_cfg.compile and self._forward is self.model:
            # Not registered as a submodule: the state_dict keeps the plain model's keys.
            hold(self, "_forward", torch.compile(self.model))

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.train_cfg
        opt = torch.optim.AdamW(ndim_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
        return optimizer_config(opt, cfg)

    # ---- schedules at the current step ------------------------------------------------------
    def temperature(self) -> float:
        c = self.train_cfg
        return temperature_at(self.global_step, start=c.temp_start, end=c.temp_end,
                              anneal_steps=c.temp_anneal_steps)

    def kl_weight(self) -> float:
        c = self.train_cfg
        return kl_weight_at(self.global_step, kl_weight=c.kl_weight, warmup_steps=c.kl_warmup_steps)

    def _is_log_step(self) -> bool:
        # Lightning writes step metrics when (batches_that_stepped + 1) % log_every_n_steps == 0.
        return (self.global_step + 1) % max(1, self.train_cfg.log_every) == 0

    # ---- steps ------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["images"]                                      # (B, 3, R, R) in [0, 1]
        temperature, kl_w = self.temperature(), self.kl_weight()
        out = self._forward(images, temperature)
        recon = self.model.likelihood.nll(images, out.params)
        kl = kl_uniform(out.logits)
        terms = elbo_loss(recon, kl, kl_w, n_pixel_dims=self.n_pixel_dims, n_positions=self.n_positions)

        codes = out.logits.detach().argmax(dim=1)                     # (B, h, w)
        self.usage.update(self.all_gather(codes))                     # identical on every rank
        self._features = out.features.detach()
        self._add_skipped(batch.get("skipped") or {})

        bs = images.shape[0]
        self.log_dict({"train/loss": terms.loss, "train/recon": terms.recon, "train/kl": terms.kl,
                       "train/psnr": psnr(images, self.model.params_to_images(out.params.detach())),  # relaxed
                       "train/temperature": temperature, "train/kl_weight": kl_w},
                      on_step=True, on_epoch=False, prog_bar=False, batch_size=bs)
        self.log("loss", terms.loss, prog_bar=True, logger=False, on_step=True, batch_size=bs)
        ckpt_every = max(1, self.train_cfg.ckpt_every)
        if self._is_log_step() or (self.global_step + 1) % ckpt_every == 0:
            self._sync_skipped()
        if self._is_log_step():
            with torch.no_grad():                                     # the tokenizer as used: hard codes
                hard = self.model.decode(codes)
            self.log("train/psnr_hard", psnr(images, hard), on_step=True, on_epoch=False, batch_size=bs)
            self.log_dict({"codebook/usage": self.usage.usage(), "codebook/perplexity": self.usage.perplexity(),
                           "codebook/dead": self.usage.n_dead().float(),
                           "codebook/restarted": float(self.codes_restarted)},
                          on_step=True, on_epoch=False, batch_size=bs)
            self.log_dict({f"skipped/{k}": float(v) for k, v in sorted(self.skipped_total.items())},
                          on_step=True, on_epoch=False, batch_size=bs)
        return terms.loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Deterministic evaluation of the tokenizer as used: hard argmax codes, then decode."""
        images = batch["images"]
        logits = self.model.code_logits(images)                      # (B, V, h, w)
        one_hot = one_hot_channels(logits.argmax(dim=1), self.vqvae_cfg.vocab_size, logits.dtype)
        params = self.model.decoder(one_hot)                          # (B, out, R, R)
        self.log_dict({"val/recon": self.model.likelihood.nll(images, params),
                       "val/kl": kl_uniform(logits),
                       "val/psnr": psnr(images, self.model.params_to_images(params))},
                      on_step=False, on_epoch=True, batch_size=images.shape[0], sync_dist=True)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the dead-code restart.

        Done here rather than in ``on_train_batch_end`` because checkpoint callbacks
        run before the module's ``on_train_batch_end``; a restart there would be
        missing from the checkpoint of the same step.
        """
        super().optimizer_step(*args, **kwargs)
        cfg = self.train_cfg
        if (cfg.dead_code_restart and self._features is not None
                and self.usage.due_for_restart(cfg.usage_target)):
            self._restart_dead_codes()
        self._features = None

    def on_train_batch_end(self, outputs: Any, batch: Mapping[str, Any], batch_idx: int) -> None:
        step, cfg = self.global_step, self.train_cfg
        if (cfg.image_every and step % cfg.image_every == 0 and step != self._last_grid_step
                and self.out_dir is not None and self.trainer.is_global_zero):
            self._save_grid(batch["images"][:GRID_IMAGES], step)
            self._last_grid_step = step

    # ---- codebook ---------------------------------------------------------------------------
    def _restart_dead_codes(self) -> None:
        dead = self.usage.dead_codes()
        gen = torch.Generator().manual_seed(self.train_cfg.seed * 1_000_003 + self.global_step)
        n = restart_dead_codes(self.model, dead, self._features, generator=gen)
        self.usage.mark_restart()
        if n == 0:
            return
        head, dec_in = self.model.encoder.head[-1], self.model.decoder.input
        touched = (head.weight, head.bias, dec_in.weight)
        if dist.is_available() and dist.is_initialized():
            for p in touched:                                         # rank 0's features win
                dist.broadcast(p.data, src=0)
        self._reset_optimizer_state(dead.to(head.weight.device))
        self.codes_restarted += n
        log.info("step %d: restarted %d dead codes (usage %.3f)", self.global_step, n,
                 float(self.usage.usage()))

    def _reset_optimizer_state(self, dead: torch.Tensor) -> None:
        """Zero AdamW's moments for the re-initialised rows / columns."""
        try:
            opt = self.optimizers()
        except Exception:            # not attached to a trainer (unit use)
            return
        opt = getattr(opt, "optimizer", opt)
        head, dec_in = self.model.encoder.head[-1], self.model.decoder.input
        for p, dim in ((head.weight, 0), (head.bias, 0), (dec_in.weight, 1)):
            for key in ("exp_avg", "exp_avg_sq"):
                buf = opt.state.get(p, {}).get(key)
                if buf is not None:
                    buf.index_fill_(dim, dead, 0.0)

    # ---- skipped samples --------------------------------------------------------------------
    def _add_skipped(self, skipped: Mapping[str, Any]) -> None:
        for reason, count in skipped.items():
            self._skipped_local[str(reason)] += int(count)

    def _sync_skipped(self) -> None:
        """Add every rank's counts since the last sync to the (identical) totals."""
        local = dict(self._skipped_local)
        self._skipped_local.clear()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[dict[str, int]] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        for part in gathered:
            self.skipped_total.update(part)

    # ---- images -----------------------------------------------------------------------------
    @torch.no_grad()
    def _save_grid(self, images: torch.Tensor, step: int) -> Path:
        recon = self.model.decode(self.model.encode(images))
        path = save_recon_grid(images, recon, self.out_dir / "images" / f"step_{step:06d}.png")
        log_image(self.trainer, "images/reconstructions", recon_grid(images, recon), step)
        log.info("saved reconstructions to %s", path)
        return path

    # ---- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vqvae_config"] = self.vqvae_cfg.to_dict()
        checkpoint["vqvae_train_config"] = asdict(self.train_cfg)
        checkpoint["skipped_total"] = dict(self.skipped_total + self._skipped_local)
        checkpoint["codes_restarted"] = self.codes_restarted

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("vqvae_config")
        if saved is not None and saved != self.vqvae_cfg.to_dict():
            raise ValueError("checkpoint was trained with a different vqvae config; "
                             "use the same preset to resume")
        self.skipped_total = Counter({str(k): int(v) for k, v in checkpoint.get("skipped_total", {}).items()})
        self._skipped_local.clear()
        self.codes_restarted = int(checkpoint.get("codes_restarted", 0))

    def export(self, directory: str | Path) -> Path:
        """Write the inference weights (``DiscreteVAE.save``) into ``directory``."""
        return self.model.save(directory)
