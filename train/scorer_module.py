"""LightningModule that trains the contrastive image-caption scorer (:mod:`dalle.scorer`).

Loss (fp32): the symmetric InfoNCE of CLIP over the batch (image -> caption and
caption -> image cross-entropies, learned temperature), where rows with the very same
caption are not counted as each other's negatives, plus, weighted by
``hard_negative_weight``, an image -> caption cross-entropy of each image over its
true caption and its hard negatives (same scene with one fact changed, same sign
with one letter changed; :mod:`synth.negatives`), as in NegCLIP (Yuksekgonul et al. 2023), and, weighted
by ``image_negative_weight`` when the batches carry them (``image_negatives`` > 0), a caption -> image
cross-entropy of each caption over its true image and its **image negatives** (the truth with one stated fact
made false, rendered): reranking compares images under one caption, which caption negatives never train.

Auxiliary heads (training only, ``aux_weight`` > 0; not part of the exported scorer)
predict what the truth says from both towers. From the image encoder's feature grid: for
scenes the colour-shape class under each cell (where things are, what colour, what shape)
and the count of each colour-shape pair, for signs the letters of the word. From the
caption's embedding in the shared space: the same counts and letters, and the relation the
caption states with its subject. From both (``layout``, ``text_layout``): the two objects of a
stated relation in reading order along its axis, which a caption tower that sums word features
cannot give ("A right of B" and "A left of B" differ by one word whatever A and B are; their
layouts differ in which object comes first). Contrastive
learning alone first aligns the easiest cue (colour) and leaves captions that differ in
a shape, a relation or a letter almost on top of each other (cosine 0.99 after 400 steps);
the dense targets make both towers carry those facts within the CPU budget. With ``aux_factored`` a
colour-shape target is two classifications, colour and shape, so a held-out pair is no unseen class.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F

from common.image_decode import to_float
from common.scorer_batches import MAX_CHARS, N_CELL_CLASSES, N_CHAR_CLASSES, N_COUNT_CLASSES, N_RELATION_CLASSES
from dalle.scorer import ImageTextScorer, ScorerConfig
from synth.scenes import COLORS, SHAPES
from train.checkpoints import check_resumable
from train.config import ScorerTrainConfig
from train.optim import NonFiniteSteps, build_optimizer, optimizer_config

log = logging.getLogger(__name__)


class ScorerLoss(NamedTuple):
    """The total and its parts (fp32 scalars), and two accuracies for logging."""

    loss: torch.Tensor
    clip_loss: torch.Tensor
    hard_loss: torch.Tensor
    batch_accuracy: torch.Tensor      # image -> caption top-1 within the batch
    hard_accuracy: torch.Tensor       # true caption above all its hard negatives (rows that have some)
    aux_loss: torch.Tensor | None = None   # the auxiliary heads' loss (ScorerModule), unweighted
    image_loss: torch.Tensor | None = None       # caption -> image over the true image and its image negatives
    image_accuracy: torch.Tensor | None = None   # true image above all its image negatives (rows that have some)


def contrastive_loss(model: ImageTextScorer, images: torch.Tensor, text_tokens: torch.Tensor,
                     neg_tokens: torch.Tensor | None = None, neg_mask: torch.Tensor | None = None,
                     hard_negative_weight: float = 1.0, *, image_features: torch.Tensor | None = None,
                     text_embeddings: torch.Tensor | None = None) -> ScorerLoss:
    """The scorer's training loss on one batch.

    Args:
        model: the scorer.
        images: (B, 3, R, R) floats in [0, 1].
        image_features: ``model.image_encoder.proj(model.image_encoder.grid(images).flatten(1))`` (before
            normalising) when the caller has it already (then images are not re-read).
        text_embeddings: ``model.encode_text(text_tokens)`` when the caller has it already.
        text_tokens: (B, text_len) the true captions.
        neg_tokens: (B, K, text_len) hard negative captions, or None.
        neg_mask: (B, K) bool, which slots hold a negative.
        hard_negative_weight: weight of the hard-negative term.
    Returns:
        :class:`ScorerLoss`.
    """
    B = images.size(0)
    if image_features is None:
        img = model.encode_images(images).float()                      # (B, D)
    else:
        img = F.normalize(image_features, dim=-1).float()
    txt = (model.encode_text(text_tokens) if text_embeddings is None else text_embeddings).float()   # (B, D)
    scale = model.temperature_scale().float()
    logits = scale * img @ txt.T                                       # (B, B)
    eye = torch.eye(B, dtype=torch.bool, device=images.device)
    same = (text_tokens[:, None, :] == text_tokens[None, :, :]).all(-1) & ~eye   # (B, B) duplicate captions
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(B, device=images.device)
    clip_loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    batch_accuracy = (logits.argmax(1) == target).float().mean()

    zero = logits.new_zeros(())
    hard_loss, hard_accuracy = zero, zero
    if neg_tokens is not None and neg_mask is not None and bool(neg_mask.any()) and hard_negative_weight > 0:
        K = neg_tokens.size(1)
        neg = img.new_zeros(B, K, img.size(1))                         # (B, K, D)
        neg[neg_mask] = model.encode_text(neg_tokens[neg_mask]).float()
        hard_loss, hard_accuracy = true_above_negatives(img, txt, neg, neg_mask, scale)
    loss = clip_loss + hard_negative_weight * hard_loss
    return ScorerLoss(loss, clip_loss, hard_loss, batch_accuracy, hard_accuracy)


def true_above_negatives(anchor: torch.Tensor, true: torch.Tensor, negatives: torch.Tensor, mask: torch.Tensor,
                         scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each row's true partner over it and the row's negatives (rows without one left out).

    Args:
        anchor: (B, D) normalised embeddings of what is matched (an image, or a caption).
        true: (B, D) of its true partner; negatives: (B, K, D) of its negatives, ``mask`` (B, K) which slots
            hold one.
        scale: the learned temperature.
    Returns:
        (loss, accuracy: the true partner scored highest), both over the rows that have a negative.
    """
    pos_logit = scale * (anchor * true).sum(-1, keepdim=True)                      # (B, 1)
    neg_logits = (scale * (anchor[:, None, :] * negatives).sum(-1)).masked_fill(~mask, float("-inf"))   # (B, K)
    both = torch.cat([pos_logit, neg_logits], dim=1)[mask.any(1)]                  # (b, 1 + K)
    target = torch.zeros(both.size(0), dtype=torch.long, device=both.device)
    return F.cross_entropy(both, target), (both.argmax(1) == 0).float().mean()


def split_pair_classes(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-shape classes (background ``N_CELL_CLASSES - 1``, none -1) as (colour, shape) classes: a colour
    index or ``len(COLORS)`` for the background, a shape index or ``len(SHAPES)``; -1 stays -1 in both."""
    background, none = target == N_CELL_CLASSES - 1, target < 0
    colour = torch.where(background, len(COLORS), target.div(len(SHAPES), rounding_mode="floor"))
    shape = torch.where(background, len(SHAPES), target.remainder(len(SHAPES)))
    return colour.masked_fill(none, -1), shape.masked_fill(none, -1)


class ScorerModule(L.LightningModule):
    """Trains an :class:`ImageTextScorer`.

    Args:
        scorer_config: the architecture (resolution, caption length and vocabulary derived from the preset).
        train_config: optimisation and the hard-negative weight.
        tokenizer_sha256: identity of the caption tokenizer; stored in checkpoints and the export, checked on resume.
    """

    def __init__(self, scorer_config: ScorerConfig | dict, train_config: ScorerTrainConfig | dict, *,
                 tokenizer_sha256: str | None = None):
        super().__init__()
        self.config = scorer_config if isinstance(scorer_config, ScorerConfig) else ScorerConfig.from_dict(scorer_config)
        self.train_config = (train_config if isinstance(train_config, ScorerTrainConfig)
                             else ScorerTrainConfig(**train_config))
        self.tokenizer_sha256 = tokenizer_sha256
        self.save_hyperparameters({"scorer_config": self.config.to_dict(),
                                   "train_config": dataclasses.asdict(self.train_config),
                                   "tokenizer_sha256": tokenizer_sha256})
        self.model = ImageTextScorer(self.config, tokenizer_sha256=tokenizer_sha256)
        heads = self.train_config.aux_heads if self.train_config.aux_weight > 0 else []
        self.aux = bool(heads)
        c, g, d = self.config.channels[-1], self.config.pool_grid, self.config.embed_dim
        n_pairs = (N_CELL_CLASSES - 1) * N_COUNT_CLASSES
        # one colour-shape target: N_CELL_CLASSES logits, or colour then shape logits (aux_factored)
        P = len(COLORS) + len(SHAPES) + 2 if self.train_config.aux_factored else N_CELL_CLASSES
        self.pair_logits = P
        make = {"cells": lambda: torch.nn.Conv2d(c, P, 1),                                   # per cell
                "chars": lambda: torch.nn.Linear(c * g * g, MAX_CHARS * N_CHAR_CLASSES),     # per letter slot
                "counts": lambda: torch.nn.Linear(c * g * g, n_pairs),                       # per colour-shape pair
                "text_chars": lambda: torch.nn.Linear(d, MAX_CHARS * N_CHAR_CLASSES),        # from the caption
                "text_counts": lambda: torch.nn.Linear(d, n_pairs),
                "layout": lambda: torch.nn.Linear(d, 2 * P),                 # from the image embedding
                "text_relation": lambda: torch.nn.Linear(d, N_RELATION_CLASSES + P),
                "text_layout": lambda: torch.nn.Linear(d, 2 * P)}
        self.aux_heads = torch.nn.ModuleDict({name: make[name]() for name in heads})   # built in the listed order
        self.skipped: collections.Counter[str] = collections.Counter()
        self.nonfinite = NonFiniteSteps()

    @property
    def aux_grid(self) -> int | None:
        """The grid of the auxiliary cell targets the data must carry (None: no auxiliary heads)."""
        return self.config.pool_grid if self.aux else None

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_config(build_optimizer(self, self.train_config), self.train_config)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """On CPU: count the skips the loader reports and drop what the device does not need."""
        batch = dict(batch)
        for reason, count in (batch.pop("skipped", None) or {}).items():
            self.skipped[reason] += int(count)
        batch.pop("neg_kinds", None)
        batch.pop("neg_image_kinds", None)
        return batch

    def compute_loss(self, batch: dict) -> ScorerLoss:
        """The loss of one batch ("images", "text_tokens", optionally "neg_tokens" / "neg_mask")."""
        use_hard = self.train_config.hard_negatives
        images = batch["images"]
        grid = self.model.image_encoder.grid(images)                                  # (B, C, g, g)
        flat = grid.flatten(1)                                                        # (B, C*g*g)
        img = self.model.image_encoder.proj(flat)                                     # (B, D) before normalising
        txt = self.model.encode_text(batch["text_tokens"])                            # (B, D)
        out = contrastive_loss(self.model, images, batch["text_tokens"],
                               batch.get("neg_tokens") if use_hard else None,
                               batch.get("neg_mask") if use_hard else None,
                               self.train_config.hard_negative_weight, image_features=img, text_embeddings=txt)
        weight = self.train_config.image_negative_weight
        if "neg_images" in batch and weight > 0 and bool(batch["neg_image_mask"].any()):
            image_loss, image_accuracy = self.image_negative_loss(F.normalize(img, dim=-1), txt, batch["neg_images"],
                                                                  batch["neg_image_mask"])
            out = out._replace(loss=out.loss + weight * image_loss, image_loss=image_loss,
                               image_accuracy=image_accuracy)
        if not self.aux or "aux_cells" not in batch:
            return out
        B = images.size(0)
        h = self.aux_heads
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []                           # (logits, target)
        if "cells" in h:
            pairs += self._pair_terms(h["cells"](grid).float().flatten(2).transpose(1, 2), batch["aux_cells"])
        if "chars" in h:
            pairs.append((h["chars"](flat).float().view(B, MAX_CHARS, N_CHAR_CLASSES), batch["aux_chars"]))
        if "counts" in h:
            pairs.append((h["counts"](flat).float().view(B, -1, N_COUNT_CLASSES), batch["aux_counts"]))
        if "text_chars" in h:
            pairs.append((h["text_chars"](txt).float().view(B, MAX_CHARS, N_CHAR_CLASSES), batch["aux_chars"]))
        if "text_counts" in h:
            pairs.append((h["text_counts"](txt).float().view(B, -1, N_COUNT_CLASSES), batch["aux_counts"]))
        if "text_relation" in h:
            rel = h["text_relation"](txt).float()
            pairs.append((rel[:, :N_RELATION_CLASSES], batch["aux_relation"][:, 0]))
            pairs += self._pair_terms(rel[:, N_RELATION_CLASSES:], batch["aux_relation"][:, 1])
        for name in ("layout", "text_layout"):     # both from the shared space, where the cosine reads them
            if name in h:                      # only scenes that state a relation: the order is theirs
                feats = txt if name == "text_layout" else img
                stated = batch["aux_relation"][:, :1] > 0                              # (B, 1)
                target = batch["aux_relation"][:, 2:].masked_fill(~stated, -1)         # (B, 2)
                pairs += self._pair_terms(h[name](feats).float().view(B, 2, self.pair_logits), target)
        aux = grid.new_zeros((), dtype=torch.float32)
        for logits, target in pairs:
            if bool((target >= 0).any()):
                aux = aux + F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-1)
        return out._replace(loss=out.loss + self.train_config.aux_weight * aux, aux_loss=aux)

    def image_negative_loss(self, img: torch.Tensor, txt: torch.Tensor, neg_images: torch.Tensor,
                            neg_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption -> image cross-entropy of each caption over its true image and its image negatives.

        Args:
            img: (B, D) normalised embeddings of the true images; txt: (B, D) of the captions.
            neg_images: (B, J, 3, R, R) uint8 renders; neg_mask: (B, J) which slots hold one.
        Returns:
            (loss, accuracy) over the rows that have a negative: accuracy = the true image scored highest.
        """
        neg = img.new_zeros(*neg_mask.shape, img.size(1), dtype=torch.float32)         # (B, J, D)
        neg[neg_mask] = self.model.encode_images(to_float(neg_images[neg_mask])).float()
        return true_above_negatives(txt.float(), img.float(), neg, neg_mask, self.model.temperature_scale().float())

    def _pair_terms(self, logits: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, target) terms of colour-shape targets: one over pairs, or colour and shape (aux_factored)."""
        if not self.train_config.aux_factored:
            return [(logits, target)]
        colour, shape = split_pair_classes(target)
        return [(logits[..., :len(COLORS) + 1], colour), (logits[..., len(COLORS) + 1:], shape)]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        out = self.compute_loss(batch)
        if not self.nonfinite.finite(self.trainer, out.loss):
            log.warning("non-finite scorer loss at step %d: step skipped", self.global_step)
            return None
        self.log("train/loss", out.loss.detach(), prog_bar=True)
        self.log("train/clip_loss", out.clip_loss.detach())
        self.log("train/hard_loss", out.hard_loss.detach())
        self.log("train/batch_acc", out.batch_accuracy.detach())
        self.log("train/hard_acc", out.hard_accuracy.detach(), prog_bar=True)
        self.log("train/logit_scale", self.model.temperature_scale().detach())
        if out.aux_loss is not None:
            self.log("train/aux_loss", out.aux_loss.detach())
        if out.image_loss is not None:
            self.log("train/image_loss", out.image_loss.detach())
            self.log("train/image_acc", out.image_accuracy.detach(), prog_bar=True)
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        if self.trainer.global_step % max(1, self.train_config.log_every) == 0:
            for reason, count in self.skipped.items():
                self.log(f"data/skipped_{reason}", float(count))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer_sha256"] = self.tokenizer_sha256
        checkpoint["scorer_train_state"] = {"skipped": dict(self.skipped)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resumable(checkpoint, tokenizer_sha256=self.tokenizer_sha256, config=self.config, what="scorer")
        self.skipped = collections.Counter((checkpoint.get("scorer_train_state") or {}).get("skipped", {}))

    def export(self, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the inference scorer (safetensors + JSON) to ``out_dir``."""
        self.model.meta = {**(meta or {}), "global_step": int(self.global_step), "skipped": dict(self.skipped)}
        return self.model.save(out_dir)
