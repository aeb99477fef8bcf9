"""What both checkers share: the result type, the analysis resolution, resizing and blurring.

:mod:`evaluation.checker` (scenes, and the dispatch by kind) and
:mod:`evaluation.signcheck` (signs) both build on this module, so imports flow
one way: ``checker -> signcheck -> imaging``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

ANALYSIS_RES = 64
MIN_CHECK_RES = 32


@dataclass
class CheckResult:
    """Pass or fail, why, and what was found."""

    passed: bool
    reason: str
    found: list[dict[str, Any]] = field(default_factory=list)


def prepare(image: Image.Image, resolution: int = ANALYSIS_RES) -> np.ndarray:
    """RGB float array (R, R, 3) in 0..255 at the analysis resolution."""
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        big = image.size[0] > resolution
        image = image.resize((resolution, resolution),
                             Image.Resampling.BOX if big else Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32)


@functools.lru_cache(maxsize=1024)
def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis, rows normalised (edges renormalised); cached, read-only."""
    i = np.arange(n, dtype=np.float64)
    k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    k /= k.sum(1, keepdims=True)
    k.setflags(write=False)
    return k


def blur_2d(a: np.ndarray, sigma: float) -> np.ndarray:
    """A (h, w) array blurred by a Gaussian of ``sigma`` pixels along both axes (``sigma <= 0``: as is)."""
    if sigma <= 0:
        return a
    return blur_matrix(a.shape[0], sigma) @ a @ blur_matrix(a.shape[1], sigma).T
