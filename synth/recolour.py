"""Recoloured copies of built-in samples, for fitting an image tokenizer's codebook.

A codebook of pixel patches only holds the colour pairs its training images show: a
held-out colour-shape pair ("orange square") never puts an orange straight edge in
front of it, and a sign with a rare board / text pair gets strokes of another pair.
Re-rendering each training sample from its ``.json`` truth with other colours of the
same palette shows the codebook every edge in every colour without drawing anything
the data cannot hold (a channel swap invents colours; BENCHMARKS.md measured it worse).
Captions are not involved: only the tokenizer's codebook sees these images, never the
transformer, so no held-out pair or word reaches a caption.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from synth.scenes import COLORS, render_scene
from synth.signs import READABLE_ON, render_sign


def recolour_scene(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A scene spec with its object colours mapped through one random permutation of the scene palette
    (:data:`synth.scenes.COLORS`): the same layout, shapes and background."""
    names = list(COLORS)
    perm = dict(zip(names, (names[i] for i in rng.permutation(len(names)))))
    return {**spec, "objects": [{**o, "color": perm[o["color"]]} for o in spec["objects"]]}


def recolour_sign(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A sign spec with a random legible board / text colour pair (:data:`synth.signs.READABLE_ON`)."""
    boards = list(READABLE_ON)
    board = boards[int(rng.integers(len(boards)))]
    text = READABLE_ON[board][int(rng.integers(len(READABLE_ON[board])))]
    return {**spec, "board_color": board, "text_color": text}


def render_recoloured(spec: dict[str, Any], resolution: int, rng: np.random.Generator) -> torch.Tensor | None:
    """(3, R, R) float image in [0, 1] of a recoloured scene or sign spec; None for other samples."""
    from torchvision.transforms.functional import pil_to_tensor

    kind = spec.get("kind")
    if kind == "scene":
        image = render_scene(recolour_scene(spec, rng), resolution)
    elif kind == "sign":
        image, _ = render_sign(recolour_sign(spec, rng), resolution)
    else:
        return None
    return pil_to_tensor(image).float() / 255.0
