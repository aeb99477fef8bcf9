"""Learning-rate schedules shared by both training stages."""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_lr_ratio``.

    Args:
        step: the optimizer step (0-based).
        warmup_steps: steps of linear warm-up (0 for none).
        max_steps: the step at which the decay reaches ``min_lr_ratio``.
        min_lr_ratio: the final multiplier.
    Returns:
        A multiplier in [min_lr_ratio, 1] (warm-up starts above 0).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr_ratio
    span = max(1, max_steps - warmup_steps)
    progress = (step - warmup_steps) / span
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
