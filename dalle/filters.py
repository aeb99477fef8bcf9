"""Logit filters for sampling: temperature, top-k and top-p (nucleus).

All work on (..., V) logits and return new tensors; removed entries become ``-inf``.
"""
from __future__ import annotations

import torch


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` (temperature > 0), the same distribution for every finite row.

    Below 1 the rows are first shifted so that their maximum is 0: the division can then
    only push logits towards ``-inf``, never overflow to ``+inf`` (which would make the
    softmax NaN), so a tiny temperature is greedy decoding (ties kept).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return logits
    if temperature < 1.0:
        logits = logits - logits.amax(dim=-1, keepdim=True)
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to ``-inf``.

    Entries tied with the k-th largest are kept too (so a row may keep more than k).
    ``k >= V`` keeps everything.
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]                # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability is >= p.

    A token is removed when the probability of the tokens strictly more likely than it
    (in sorted order) already reaches ``p``; the most likely token is always kept.
    ``p == 1`` keeps everything.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs                   # (..., V) mass of the better tokens
    remove_sorted = mass_before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)            # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p, as float32 logits.

    Args:
        logits: (..., V).
        temperature: > 0.
        top_k: keep the k most likely (None: off).
        top_p: nucleus mass in (0, 1] (None: off).
    Returns:
        (..., V) float32 logits with removed entries at ``-inf``.
    """
    logits = apply_temperature(logits.float(), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits
