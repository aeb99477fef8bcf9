"""Input checks shared by every image tokenizer: one message for one mistake, whatever the kind."""
from __future__ import annotations

from typing import Any

import torch


def check_images(images: torch.Tensor, config: Any) -> None:
    """Raise ValueError unless ``images`` is a float (B, C, R, R) batch at ``config``'s channels and resolution."""
    r, c = config.resolution, config.in_channels
    if images.ndim != 4 or images.shape[1] != c or images.shape[2] != r or images.shape[3] != r:
        raise ValueError(f"expected images of shape (B, {c}, {r}, {r}), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")


def check_tokens(image_tokens: torch.Tensor, config: Any) -> torch.Tensor:
    """(B, h, w) or (B, h*w) integer codes in [0, vocab_size) -> (B, h, w) int64; ValueError otherwise."""
    g, v = config.grid_size, config.vocab_size
    if image_tokens.ndim == 2 and image_tokens.shape[1] == g * g:
        image_tokens = image_tokens.view(-1, g, g)                            # (B, h, w)
    if image_tokens.ndim != 3 or image_tokens.shape[1:] != (g, g):
        raise ValueError(f"expected image tokens of shape (B, {g}, {g}) or (B, {g * g}), "
                         f"got {tuple(image_tokens.shape)}")
    if image_tokens.is_floating_point() or image_tokens.is_complex():
        raise ValueError(f"expected integer image tokens, got dtype {image_tokens.dtype}")
    image_tokens = image_tokens.long()
    if image_tokens.numel() and (int(image_tokens.min()) < 0 or int(image_tokens.max()) >= v):
        raise ValueError(f"image tokens must be in [0, {v}), got range "
                         f"[{int(image_tokens.min())}, {int(image_tokens.max())}]")
    return image_tokens
