"""Reranking candidates: scorers and their registry.

A scorer is a callable ``scorer(candidates) -> (N,) float tensor`` (higher is better).
A scorer that needs pixels (e.g. a contrastive image-text model) sets the attribute
``needs_images = True``; the pipeline then decodes every candidate before scoring
and fills ``Candidates.images``. Register new scorers in :data:`SCORERS` (or with
:func:`register_scorer`) so they can be chosen by name.

Some scorers belong to a model rather than to the program: ``"clip"`` is the
image-caption scorer shipped with a bundle (:mod:`dalle.scorer`), trained with the
bundle's own tokenizer; ``"pmi"`` (:class:`PmiRerank`) is the transformer's own
caption-image pointwise mutual information, which every model has. Their names are in
:data:`MODEL_SCORERS`; the model object passes its own instances to :func:`get_scorer` as
``bound``.

``"auto"`` (the default) is the model's ``"clip"`` scorer when it has one, else ``"logprob"``:
on every default-model candidate measured, best of 8 by mean log-probability passed less than no
reranking, while best of 8 by the scorer passed up to 8x more and at worst 0.057 against 0.058
(BENCHMARKS.md, 2026-12-03).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Protocol

import torch


@dataclass
class Candidates:
    """N sampled candidates (any mix of prompts)."""

    prompts: list[str]                     # N captions
    text_tokens: torch.Tensor              # (N, text_len) int64
    image_tokens: torch.Tensor             # (N, image_len) int64
    logprobs: torch.Tensor                 # (N, image_len) float32, see dalle.sampler.SampleOutput
    images: torch.Tensor | None = None     # (N, 3, R, R) in [0, 1], set when the scorer needs images


class Scorer(Protocol):
    def __call__(self, candidates: Candidates) -> torch.Tensor: ...


def logprob_scorer(candidates: Candidates) -> torch.Tensor:
    """Mean log-probability per code under the model's conditional distribution."""
    return candidates.logprobs.float().mean(dim=-1)


logprob_scorer.needs_images = False


class PmiRerank:
    """Pointwise mutual information of caption and image under the transformer itself: the mean over
    codes of ``log p(code | caption, codes before) - log p(code | null caption, codes before)``.

    The mean log-probability alone prefers whatever is easy to predict (plain, empty pictures), whatever
    the caption; subtracting what the model expects with no caption (the null caption that guidance
    trains) leaves how much this caption explains these codes. No second model, no decoding: one
    teacher-forced pass with the caption and one with the null caption per candidate.
    """

    needs_images = False
    __name__ = "pmi"

    def __init__(self, model: torch.nn.Module, null_tokens: Callable[[int], torch.Tensor],
                 batch_size: int = 32) -> None:
        self.model = model
        self.null_tokens = null_tokens      # batch -> (batch, text_len) null captions
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, candidates: Candidates) -> torch.Tensor:
        model = self.model
        device = next(model.parameters()).device
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda"
                    else contextlib.nullcontext())
        was_training = model.training
        model.eval()
        out = []
        try:
            for i in range(0, candidates.image_tokens.size(0), self.batch_size):
                codes = candidates.image_tokens[i:i + self.batch_size].to(device)            # (b, L)
                b = codes.size(0)
                text = torch.cat([candidates.text_tokens[i:i + b].to(device), self.null_tokens(b).to(device)])
                rows = torch.cat([codes, codes])                                              # (2b, L)
                with autocast:
                    logits = model(text, rows[:, :-1]).image                                  # (2b, L, Vi)
                lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, rows[..., None]).squeeze(-1)
                out.append((lp[:b] - lp[b:]).mean(dim=-1).cpu())                            # (b,)
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)


SCORERS: dict[str, Scorer] = {"logprob": logprob_scorer}
# names resolved by the model that owns the scorer (see the module docstring)
MODEL_SCORERS: dict[str, str] = {
    "clip": "the model's contrastive image-caption scorer (dalle scorer train)",
    "pmi": "the transformer's own caption-image pointwise mutual information (PmiRerank)"}
AUTO = "auto"   # the model's "clip" scorer when it has one, else "logprob"


def register_scorer(name: str, scorer: Scorer) -> None:
    """Make ``scorer`` available by ``name`` (e.g. a CLIP-style image-text scorer)."""
    if not callable(scorer):
        raise ValueError(f"scorer {name!r} is not callable")
    SCORERS[name] = scorer


def check_scorer_name(scorer: str | Callable) -> None:
    """Raise ValueError unless ``scorer`` is a callable, a registered name or a model scorer's name."""
    if callable(scorer):
        return
    if scorer != AUTO and scorer not in SCORERS and scorer not in MODEL_SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; available: {sorted({AUTO, *SCORERS, *MODEL_SCORERS})}")


def resolve_auto(scorer: str | Callable, bound: dict[str, Scorer] | None = None) -> str | Callable:
    """``"auto"`` as the scorer it stands for given the model's own ``bound`` scorers; anything else as is."""
    if scorer == AUTO:
        return "clip" if bound and "clip" in bound else "logprob"
    return scorer


def get_scorer(scorer: str | Callable, bound: dict[str, Scorer] | None = None) -> Scorer:
    """A scorer by name, or a callable passed through.

    Args:
        scorer: a callable, a name in :data:`SCORERS`, a name in :data:`MODEL_SCORERS`, or ``"auto"``.
        bound: the model's own scorers by name (e.g. ``{"clip": ...}`` when its bundle has one).
    Raises:
        ValueError: an unknown name, or a model scorer the model does not have.
    """
    if callable(scorer):
        return scorer
    scorer = resolve_auto(scorer, bound)
    if bound and scorer in bound:
        return bound[scorer]
    if scorer in MODEL_SCORERS:
        raise ValueError(f"scorer {scorer!r} needs a model that has one ({MODEL_SCORERS[scorer]}); this model has "
                         f"none: train one with 'dalle scorer train' and add it with 'dalle scorer attach'")
    check_scorer_name(scorer)
    return SCORERS[scorer]


def needs_images(scorer: Scorer) -> bool:
    """Whether the scorer reads ``Candidates.images``."""
    return bool(getattr(scorer, "needs_images", False))
