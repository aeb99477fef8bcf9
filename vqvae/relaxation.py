"""Relaxations of the categorical code posterior used while training the dVAE.

``gumbel``: the Gumbel-softmax (concrete) relaxation, a soft sample
``softmax((logits + g) / temperature)`` with ``g ~ Gumbel(0, 1)``; the
trainer anneals the temperature from 1 towards 1/16.

``straight_through``: the forward pass uses the hard one-hot of the same
Gumbel-perturbed argmax while gradients flow through the soft sample.

The KL term of the ELB (KL(q || uniform prior)) lives in :mod:`vqvae.losses`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def gumbel_noise_like(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise with the shape, dtype and device of ``logits``."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    neg_log_u = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)     # Exp(1) sample, > 0
    return (-torch.log(neg_log_u)).to(logits.dtype)


def one_hot_channels(codes: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, h, w) int64 -> (B, V, h, w) one-hot in ``dtype``."""
    return F.one_hot(codes, vocab_size).permute(0, 3, 1, 2).to(dtype)   # (B, V, h, w)


def gumbel_softmax(logits: torch.Tensor, temperature: float, *, noise: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Soft relaxed sample over the channel dimension.

    Args:
        logits: (B, V, h, w) unnormalised code logits.
        temperature: > 0; lower is closer to one-hot.
        noise: add Gumbel noise (False gives the deterministic tempered softmax).
        generator: optional RNG for the noise.
    Returns:
        (B, V, h, w) probabilities summing to 1 over V.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if noise:
        logits = logits + gumbel_noise_like(logits, generator)
    return F.softmax(logits.float() / temperature, dim=1).to(logits.dtype)


def straight_through(logits: torch.Tensor, temperature: float, *, noise: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard one-hot forward, gradient of the soft Gumbel-softmax sample backward.

    Same arguments and shape as :func:`gumbel_softmax`.
    """
    soft = gumbel_softmax(logits, temperature, noise=noise, generator=generator)
    hard = one_hot_channels(soft.argmax(dim=1), soft.shape[1], soft.dtype)   # (B, V, h, w)
    return hard - soft.detach() + soft


RELAXATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gumbel": gumbel_softmax,
    "straight_through": straight_through,
}


def relax(kind: str, logits: torch.Tensor, temperature: float, *, noise: bool = True,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the relaxation named ``kind`` (a key of :data:`RELAXATIONS`)."""
    if kind not in RELAXATIONS:
        raise ValueError(f"unknown relaxation {kind!r}; choose one of {sorted(RELAXATIONS)}")
    return RELAXATIONS[kind](logits, temperature, noise=noise, generator=generator)
