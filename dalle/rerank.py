"""Reranking candidates: scorers and their registry.

A scorer is a callable ``scorer(candidates) -> (N,) float tensor`` (higher is better).
A scorer that needs pixels (e.g. a contrastive image-text model) sets the attribute
``needs_images = True``; the pipeline then decodes every candidate before scoring
and fills ``Candidates.images``. Register new scorers in :data:`SCORERS` (or with
:func:`register_scorer`) so they can be chosen by name.
"""
from __future__ import annotations

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

SCORERS: dict[str, Scorer] = {"logprob": logprob_scorer}


def register_scorer(name: str, scorer: Scorer) -> None:
    """Make ``scorer`` available by ``name`` (e.g. a CLIP-style image-text scorer)."""
    if not callable(scorer):
        raise ValueError(f"scorer {name!r} is not callable")
    SCORERS[name] = scorer


def get_scorer(scorer: str | Callable) -> Scorer:
    """A scorer by registry name, or a callable passed through."""
    if callable(scorer):
        return scorer
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; available: {sorted(SCORERS)}")
    return SCORERS[scorer]


def needs_images(scorer: Scorer) -> bool:
    """Whether the scorer reads ``Candidates.images``."""
    return bool(getattr(scorer, "needs_images", False))
