"""How well an image tokenizer reconstructs and how much of its codebook it uses.

One definition for the training logs (``train/psnr``, ``codebook/usage``, ...) and the
evaluation (``dalle vqvae eval``, ``dalle eval``):

- PSNR (dB) of an image in [0, 1]: ``10 log10(1 / MSE)``, the MSE floored at 1e-10;
- codebook usage: the share of the codes that occur at least once;
- code perplexity: ``exp(entropy)`` of the code histogram, in [1, vocab_size] (0 when empty).
"""
from __future__ import annotations

import torch


def psnr_per_image(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR (dB) of each image (B, C, H, W) in [0, 1] against its reconstruction."""
    mse = (images.float() - reconstructions.float()).pow(2).flatten(1).mean(dim=1)   # (B,)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of per-image PSNR (dB) for images in [0, 1]."""
    return psnr_per_image(images, reconstructions).mean()


def codebook_usage(counts: torch.Tensor) -> torch.Tensor:
    """Share of the codes whose count in ``counts`` (vocab_size,) is above 0 (0-dim tensor)."""
    return (counts > 0).float().mean()


def code_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of the code histogram ``counts`` (vocab_size,), 0 if it is empty (0-dim tensor)."""
    total = counts.sum()
    p = counts / total.clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))
