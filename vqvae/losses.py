"""Pixel likelihoods and the ELB terms of the dVAE.

Logit-Laplace (the paper's likelihood): pixels are squeezed into
``(eps, 1 - eps)`` by ``x -> (1 - 2 eps) x + eps`` (eps = 0.1) so that
``logit(x)`` is finite, and the density is

    f(x | mu, b) = 1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b),  b = exp(log_scale).

The decoder predicts ``mu`` and ``log_scale`` per pixel and colour; the mean
of the distribution of ``logit(x)`` is ``mu``, so the reconstruction is
``unmap_pixels(sigmoid(mu))``. MSE is the option for plain regression.

Normalisation of the loss: the negative ELB is a sum over pixel dimensions
(reconstruction) and over code positions (KL), and the paper's KL weight
beta = 6.6 refers to those sums. :func:`elbo_loss` divides that weighted sum
by the number of pixel dimensions, i.e. the loss is
``mean_pixel_nll + kl_weight * mean_position_kl * (positions / pixel_dims)``,
so ``kl_weight`` keeps the paper's meaning at every resolution.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

LOGIT_LAPLACE_EPS = 0.1


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[0, 1] -> [eps, 1 - eps]: the paper's pixel map for the logit-Laplace likelihood."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Inverse of :func:`map_pixels`, clamped to [0, 1]."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0.0, 1.0)


def logit_laplace_nll(images: torch.Tensor, params: torch.Tensor,
                      eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Mean per-dimension negative log-likelihood (nats) of images under the logit-Laplace.

    Args:
        images: (B, C, R, R) in [0, 1] (mapped internally).
        params: (B, 2C, R, R): ``mu`` in the first C channels, ``log_scale`` in the last C.
        eps: the pixel-map epsilon.
    Returns:
        A scalar float32 tensor.
    """
    c = images.shape[1]
    if params.shape[1] != 2 * c or params.shape[2:] != images.shape[2:]:
        raise ValueError(f"params {tuple(params.shape)} do not match images {tuple(images.shape)}")
    x = map_pixels(images.float(), eps)
    mu, log_scale = params[:, :c].float(), params[:, c:].float()    # (B, C, R, R) each
    logit_x = torch.log(x) - torch.log1p(-x)
    nll = (math.log(2.0) + log_scale + torch.log(x) + torch.log1p(-x)
           + (logit_x - mu).abs() * torch.exp(-log_scale))
    return nll.mean()


def mse_nll(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Mean squared error between images (B, C, R, R) in [0, 1] and predictions ``params``."""
    if params.shape != images.shape:
        raise ValueError(f"params {tuple(params.shape)} do not match images {tuple(images.shape)}")
    return F.mse_loss(params.float(), images.float())


RECONSTRUCTION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "logit_laplace": logit_laplace_nll,
    "mse": mse_nll,
}


def reconstruction_loss(likelihood: str, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Dispatch to the likelihood named in the config (a key of :data:`RECONSTRUCTION_LOSSES`)."""
    if likelihood not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {sorted(RECONSTRUCTION_LOSSES)}")
    return RECONSTRUCTION_LOSSES[likelihood](images, params)


def kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Mean over code positions of KL(q || uniform), q = softmax(logits) over channels.

    Args:
        logits: (B, V, h, w).
    Returns:
        A scalar float32 tensor in [0, log V].
    """
    log_q = F.log_softmax(logits.float(), dim=1)                    # (B, V, h, w)
    kl = (log_q.exp() * log_q).sum(dim=1) + math.log(logits.shape[1])  # (B, h, w)
    return kl.mean()


class LossTerms(NamedTuple):
    loss: torch.Tensor    # what is optimised
    recon: torch.Tensor   # mean per-dimension reconstruction term
    kl: torch.Tensor      # mean per-position KL(q || uniform)


def elbo_loss(recon: torch.Tensor, kl: torch.Tensor, kl_weight: float, *,
              n_pixel_dims: int, n_positions: int) -> LossTerms:
    """The beta-weighted negative ELB per pixel dimension (see the module docstring).

    Args:
        recon: mean per-dimension reconstruction loss.
        kl: mean per-position KL.
        kl_weight: beta (the paper's 6.6 refers to sums, as here).
        n_pixel_dims: C * R * R per image.
        n_positions: h * w code positions per image.
    """
    loss = recon + kl_weight * kl * (n_positions / n_pixel_dims)
    return LossTerms(loss, recon, kl)


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of per-image PSNR (dB) for images in [0, 1]."""
    mse = (images.float() - reconstructions.float()).pow(2).flatten(1).mean(dim=1)   # (B,)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
