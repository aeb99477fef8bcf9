"""LightningModule that trains the transformer over [text_tokens ; image_tokens].

The loss is a weighted sum of two cross-entropies computed in fp32: the caption
(``logits.text`` vs ``text_tokens[:, 1:]``, weight ``text_loss_weight``) and the
image codes (``logits.image`` vs ``image_tokens``, weight ``1 - text_loss_weight``).
With probability ``caption_dropout`` a row's caption is replaced by the null
caption (all pads) so that the model also learns the unconditional distribution
used by classifier-free guidance.

Two data paths: token batches (precomputed codes, the default) or image batches
tokenised here by the frozen VQVAE (``on_the_fly``). Non-finite losses skip the
step on every rank; ``nan_patience`` of them in a row save a checkpoint and stop.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

import dalle.tokenizer
from common.samples import part_of
from dalle.bundle import check_compatible
from dalle.config import DalleConfig
from dalle.model import DalleTransformer
from dalle.tokenizer import TextTokenizer
from train.checkpoints import check_resumable
from train.config import DalleTrainConfig
from train.frozen import hold
from train.fused_ce import linear_cross_entropy
from train.optim import NonFiniteSteps, build_optimizer, optimizer_config
from vqvae.registry import load_image_tokenizer

log = logging.getLogger(__name__)


class DalleLoss(NamedTuple):
    """The weighted total and its two (unweighted) terms, fp32 scalars."""

    loss: torch.Tensor
    text_loss: torch.Tensor
    image_loss: torch.Tensor


def null_text_tokens(cfg: DalleConfig, batch: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """The null caption of ``cfg`` (:func:`dalle.tokenizer.null_tokens`), shape (batch, text_len)."""
    return dalle.tokenizer.null_tokens(cfg.text_vocab_size, cfg.text_len, batch, device)


def drop_captions(text_tokens: torch.Tensor, p: float, null_tokens: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each row by the null caption with probability ``p``.

    Args:
        text_tokens: (B, text_len) int64 captions.
        p: drop probability in [0, 1].
        null_tokens: (text_len,) or (B, text_len) null caption.
        generator: CPU generator for the coin flips (deterministic per step).
    Returns:
        (B, text_len) captions with the dropped rows nulled.
    """
    if p <= 0.0:
        return text_tokens
    drop = torch.rand(text_tokens.shape[0], generator=generator) < p  # (B,) on CPU
    drop = drop.to(text_tokens.device)
    return torch.where(drop[:, None], null_tokens.to(text_tokens.device), text_tokens)


def dalle_loss(logits: Any, text_tokens: torch.Tensor, image_tokens: torch.Tensor,
               text_loss_weight: float) -> DalleLoss:
    """Weighted next-token cross-entropy over the caption and the image codes, in fp32.

    Args:
        logits: ``Logits(text (B, text_len - 1, V_text), image (B, image_len, V_image))``.
        text_tokens: (B, text_len) int64.
        image_tokens: (B, image_len) int64.
        text_loss_weight: weight of the text term; the image term gets ``1 - text_loss_weight``.
    Returns:
        :class:`DalleLoss`.
    """
    image_logits = logits.image.float()  # (B, image_len, V_image)
    image_loss = F.cross_entropy(image_logits.reshape(-1, image_logits.shape[-1]),
                                 image_tokens.reshape(-1))
    return weighted_loss(logits.text, text_tokens, image_loss, text_loss_weight)


def weighted_loss(text_logits: torch.Tensor, text_tokens: torch.Tensor, image_loss: torch.Tensor,
                  text_loss_weight: float) -> DalleLoss:
    """The caption's cross-entropy (fp32) from ``text_logits`` (B, text_len - 1, V_text), weighted
    with an image loss however it was computed."""
    text_logits = text_logits.float()
    text_loss = F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]), text_tokens[:, 1:].reshape(-1))
    loss = text_loss_weight * text_loss + (1.0 - text_loss_weight) * image_loss
    return DalleLoss(loss, text_loss, image_loss)


def _as_config(value: Any, cls: type) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value) if hasattr(cls, "from_dict") else cls(**value)
    raise TypeError(f"expected {cls.__name__} or dict, got {type(value).__name__}")


class DalleModule(L.LightningModule):
    """Trains a :class:`dalle.model.DalleTransformer`.

    The model is built in :meth:`configure_model` (so FSDP can shard it as it is
    created); call ``configure_model()`` yourself to use the module without a Trainer.

    Args:
        dalle_config: the transformer's config.
        train_config: optimisation, loss weights, caption dropout, patience.
        tokenizer_sha256: identity of the tokenizer; stored in checkpoints, checked on resume.
        tokenizer_path: ``tokenizer.json``; needed only for batches without "text_tokens".
        lowercase: caption normalisation of the tokenizer.
        vqvae_dir: frozen VQVAE checkpoint; needed only for image batches (on the fly).
        out_dir: run directory (where the non-finite stop checkpoint goes).
    """

    def __init__(self, dalle_config: DalleConfig | dict, train_config: DalleTrainConfig | dict, *,
                 tokenizer_sha256: str | None = None, tokenizer_path: str | None = None,
                 lowercase: bool = True, vqvae_dir: str | None = None, out_dir: str | None = None):
        super().__init__()
        self.config: DalleConfig = _as_config(dalle_config, DalleConfig)
        self.train_config: DalleTrainConfig = _as_config(train_config, DalleTrainConfig)
        self.tokenizer_sha256 = tokenizer_sha256
        self.save_hyperparameters({
            "dalle_config": self.config.to_dict(),
            "train_config": dataclasses.asdict(self.train_config),
            "tokenizer_sha256": tokenizer_sha256,
            "tokenizer_path": None if tokenizer_path is None else str(tokenizer_path),
            "lowercase": lowercase,
            "vqvae_dir": None if vqvae_dir is None else str(vqvae_dir),
            "out_dir": None if out_dir is None else str(out_dir),
        })
        self.model: torch.nn.Module | None = None
        self.register_buffer("null_tokens", null_text_tokens(self.config), persistent=False)  # (1, text_len)
        self._tokenizer = None
        hold(self, "_vqvae", None)               # kept out of state_dict, optimizer and DDP
        self.nonfinite = NonFiniteSteps()
        self.skipped: collections.Counter[str] = collections.Counter()
        self._times: collections.deque = collections.deque(maxlen=max(2, self.train_config.log_every + 1))

    # ---- construction --------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the transformer (idempotent): activation checkpointing, optional compile."""
        if self.model is not None:
            return
        model = DalleTransformer(self.config)
        if self.train_config.activation_checkpointing:
            model.gradient_checkpointing = True
        if self.train_config.compile:
            model.compile()
        self.model = model

    def _text_tokenizer(self):
        if self._tokenizer is None:
            path = self.hparams["tokenizer_path"]
            if path is None:
                raise ValueError("batch has no 'text_tokens' and the module was given no tokenizer_path")
            self._tokenizer = TextTokenizer(path, self.config.text_len, self.config.text_vocab_size,
                                            lowercase=self.hparams["lowercase"])
            if self.tokenizer_sha256 is not None and self._tokenizer.sha256 != self.tokenizer_sha256:
                raise ValueError(f"tokenizer {path} has sha256 {self._tokenizer.sha256[:12]}, "
                                 f"expected {self.tokenizer_sha256[:12]}")
        return self._tokenizer

    def vqvae(self, device: torch.device) -> torch.nn.Module:
        """The frozen VQVAE (loaded on first use from ``vqvae_dir``), on ``device``."""
        if self._vqvae is None:
            path = self.hparams["vqvae_dir"]
            if path is None:
                raise ValueError("batch holds images but the module was given no vqvae_dir")
            vq = load_image_tokenizer(path).eval().requires_grad_(False)
            check_compatible(self.config, vq.config)
            hold(self, "_vqvae", vq)
        vq = self._vqvae
        if next(vq.parameters()).device != device:
            vq.to(device)
        return vq

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_config(build_optimizer(self.model, self.train_config), self.train_config)

    # ---- batches -------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """On CPU: count skips, tokenise captions if needed, check token shapes and ranges."""
        batch = dict(batch)
        for reason, count in (batch.pop("skipped", None) or {}).items():
            self.skipped[reason] += int(count)
        if "text_tokens" not in batch:
            batch["text_tokens"] = self._text_tokenizer().encode(list(batch["captions"]))
        self._check_tokens(batch)
        return batch

    def _check_tokens(self, batch: dict) -> None:
        cfg = self.config
        text = batch["text_tokens"]
        if text.ndim != 2 or text.shape[1] != cfg.text_len:
            raise ValueError(f"text_tokens must be (B, {cfg.text_len}), got {tuple(text.shape)}")
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= cfg.text_vocab_total):
            raise ValueError(f"text_tokens out of range [0, {cfg.text_vocab_total})")
        if "image_tokens" in batch:
            image = batch["image_tokens"]
            if image.ndim == 3:
                image = batch["image_tokens"] = image.flatten(1)  # (B, h*w)
            if image.ndim != 2 or image.shape[1] != cfg.image_len:
                raise ValueError(f"image_tokens must be (B, {cfg.image_len}), got {tuple(image.shape)}")
            if image.numel() and (int(image.min()) < 0 or int(image.max()) >= cfg.image_vocab_size):
                raise ValueError(f"image_tokens out of range [0, {cfg.image_vocab_size}): "
                                 "were the token shards made with this VQVAE?")
        elif "images" not in batch:
            raise ValueError("batch has neither 'image_tokens' nor 'images'")

    @torch.no_grad()
    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Image codes from the frozen VQVAE in fp32 (as the token shards are made)."""
        vq = self.vqvae(images.device)
        with torch.autocast(images.device.type, enabled=False):
            codes = vq.encode(images.float())  # (B, h, w)
        return codes.flatten(1).long()  # (B, h*w)

    # ---- loss ----------------------------------------------------------------------
    def compute_loss(self, batch: dict, *, step: int = 0, micro: int = 0, rank: int = 0) -> DalleLoss:
        """Loss of one batch; caption dropout is seeded by (seed, step, micro, rank).

        Args:
            batch: "text_tokens" (B, text_len) and "image_tokens" (B, image_len) or "images".
            step, micro, rank: where this batch sits; makes the dropout reproducible on resume.
        Returns:
            :class:`DalleLoss`.
        """
        if self.model is None:
            raise RuntimeError("call configure_model() first (a Trainer does it)")
        text_tokens = batch["text_tokens"]
        image_tokens = batch.get("image_tokens")
        if image_tokens is None:
            image_tokens = self._encode_images(batch["images"])
        seed = int(np.random.SeedSequence([self.train_config.seed, step, micro, rank]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        text_tokens = drop_captions(text_tokens, self.train_config.caption_dropout, self.null_tokens, gen)
        return self._loss(text_tokens, image_tokens)

    def _loss(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> DalleLoss:
        """The weighted loss of full sequences; the image term through :func:`linear_cross_entropy`
        (no (B, image_len, V) logits) unless ``fused_image_loss`` is off, the model is compiled (its
        compiled forward computes the logits) or the run shards with FSDP, whose flattened parameters
        only the wrapped forward may read."""
        cfg = self.train_config
        inputs = image_tokens[:, :-1]                             # every code but the last
        if not cfg.fused_image_loss or cfg.compile or cfg.strategy == "fsdp":
            return dalle_loss(self.model(text_tokens, inputs), text_tokens, image_tokens, cfg.text_loss_weight)
        model = self.model
        t = model.config.text_len
        h = model.hidden(text_tokens, inputs)                     # (B, text_len + image_len - 1, C)
        hi = h[:, t - 1:]
        image_loss = linear_cross_entropy(hi.reshape(-1, hi.shape[-1]), model.image_head.weight,
                                          image_tokens.reshape(-1))
        return weighted_loss(model.text_head(h[:, : t - 1]), text_tokens, image_loss, cfg.text_loss_weight)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Held-out loss of the full captions (no caption dropout): the learning curve's y axis."""
        text_tokens, image_tokens = batch["text_tokens"], batch.get("image_tokens")
        if image_tokens is None:
            image_tokens = self._encode_images(batch["images"])
        bs = text_tokens.shape[0]
        out, parts = self.loss_by_part(text_tokens, image_tokens, batch.get("keys") or [""] * bs)
        self.log_dict({"val/loss": out.loss, "val/text_loss": out.text_loss, "val/image_loss": out.image_loss},
                      on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        if set(parts) != {""}:                # per part (signs, scenes, ...): what the mixed loss hides. Not
            for part, (p, n) in parts.items():    # synced: under DDP, rank 0's validation shards
                self.log(f"val/image_loss/{part or 'other'}", p.image_loss, on_step=False, on_epoch=True,
                         batch_size=n)

    def loss_by_part(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor,
                     keys: list[str]) -> tuple[DalleLoss, dict[str, tuple[DalleLoss, int]]]:
        """The batch's loss and each part's (rows grouped by :func:`common.samples.part_of` of their keys).

        Returns:
            ``(loss of the batch, {part: (its loss, its rows)})``; the batch's terms are the row-weighted
            means of the parts' (each term is a mean over rows times positions), so they equal
            :meth:`_loss` of the whole batch.
        """
        rows: dict[str, list[int]] = collections.defaultdict(list)
        for i, key in enumerate(keys):
            rows[part_of(key)].append(i)
        parts = {part: (self._loss(text_tokens[idx], image_tokens[idx]), len(idx)) for part, idx in rows.items()}
        bs = len(keys)
        out = DalleLoss(*(sum(getattr(p, f) * (n / bs) for p, n in parts.values()) for f in DalleLoss._fields))
        return out, parts

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        out = self.compute_loss(batch, step=self.global_step, micro=batch_idx % self.train_config.grad_accum,
                                rank=self.global_rank)
        if not self.nonfinite.finite(self.trainer, out.loss):
            self._after_nonfinite(out)
            return None                   # Lightning skips backward; grads are None, so no update
        self.log("train/loss", out.loss.detach(), prog_bar=True)
        self.log("train/text_loss", out.text_loss.detach())
        self.log("train/image_loss", out.image_loss.detach())
        return out.loss

    def _after_nonfinite(self, out: DalleLoss) -> None:
        """Report a dropped step; stop with a checkpoint after ``nan_patience`` in a row."""
        log.warning("non-finite loss at step %d (text %.4g, image %.4g): step skipped (%d in a row, %d total)",
                    self.global_step, float(out.text_loss.detach()), float(out.image_loss.detach()),
                    self.nonfinite.streak, self.nonfinite.total)
        self.log("train/nonfinite_steps", float(self.nonfinite.total))
        patience = self.train_config.nan_patience
        if patience > 0 and self.nonfinite.streak >= patience:
            root = Path(self.hparams["out_dir"] or self.trainer.default_root_dir)
            path = root / "checkpoints" / f"nonfinite-step{self.global_step:08d}.ckpt"
            self.trainer.save_checkpoint(path)
            log.error("stopping: %d consecutive non-finite losses (nan_patience=%d); last finite weights "
                      "saved to %s. Lower the learning rate or check the data before resuming.",
                      self.nonfinite.streak, patience, path)
            self.trainer.should_stop = True

    # ---- throughput and data-skip logging ------------------------------------------
    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        tokens = batch["text_tokens"].shape[0] * self.config.block_size * self.trainer.world_size
        total = (self._times[-1][1] if self._times else 0) + tokens
        self._times.append((time.perf_counter(), total))
        if len(self._times) >= 2:
            (t0, n0), (t1, n1) = self._times[0], self._times[-1]
            if t1 > t0:
                self.log("train/tokens_per_s", (n1 - n0) / (t1 - t0))
        if self.trainer.global_step % max(1, self.train_config.log_every) == 0:
            self.log("train/nonfinite_steps", float(self.nonfinite.total))
            for reason, count in self._global_skips().items():
                self.log(f"data/skipped_{reason}", float(count))

    def _global_skips(self) -> dict[str, int]:
        """Skip counts summed over ranks (every rank calls this at the same steps)."""
        counts = dict(self.skipped)
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, counts)
            counts = dict(sum((collections.Counter(c) for c in gathered), collections.Counter()))
        return counts

    # ---- checkpoints ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer_sha256"] = self.tokenizer_sha256
        checkpoint["dalle_train_state"] = {"nonfinite_total": self.nonfinite.total,
                                           "skipped": dict(self.skipped)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resumable(checkpoint, tokenizer_sha256=self.tokenizer_sha256, config=self.config, what="dalle")
        state = checkpoint.get("dalle_train_state") or {}
        self.nonfinite.total = int(state.get("nonfinite_total", 0))
        self.skipped = collections.Counter(state.get("skipped", {}))
