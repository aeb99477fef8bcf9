"""Pixel likelihoods and the ELB terms of the dVAE.

Logit-Laplace (the paper's likelihood): pixels are squeezed into
``(eps, 1 - eps)`` by ``x -> (1 - 2 eps) x + eps`` (eps = 0.1) so that
``logit(x)`` is finite, and the density is

    f(x | mu, b) = 1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b),  b = exp(log_scale).

The decoder predicts ``mu`` and ``log_scale`` per pixel and colour; the mean
of the distribution of ``logit(x)`` is ``mu``, so the reconstruction is
``unmap_pixels(sigmoid(mu))``. MSE is the option for plain regression.

Each likelihood is one :class:`PixelLikelihood` (:data:`LIKELIHOODS`, by the name that
``VQVAEConfig.likelihood`` holds): the channels the decoder predicts, what the encoder
sees, the reconstruction (the distribution's mean pixel) and the loss.

Normalisation of the loss: the negative ELB is a sum over pixel dimensions
(reconstruction) and over code positions (KL), and the paper's KL weight
beta = 6.6 refers to those sums. :func:`elbo_loss` divides that weighted sum
by the number of pixel dimensions, i.e. the loss is
``mean_pixel_nll + kl_weight * mean_position_kl * (positions / pixel_dims)``,
so ``kl_weight`` keeps the paper's meaning at every resolution.
"""
from __future__ import annotations

import math
from typing import NamedTuple

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


class PixelLikelihood:
    """The decoder's distribution over pixels: what it predicts, what the encoder sees, the loss."""

    def out_channels(self, in_channels: int) -> int:
        """Channels the decoder predicts for images of ``in_channels`` colours."""
        raise NotImplementedError

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of (B, C, R, R) images in [0, 1]."""
        return images

    def mean(self, params: torch.Tensor, in_channels: int) -> torch.Tensor:
        """Decoder output -> (B, C, R, R) float images in [0, 1] (the distribution's mean pixel)."""
        raise NotImplementedError

    def nll(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Mean per-dimension reconstruction loss of ``images`` (B, C, R, R) in [0, 1] under ``params``."""
        raise NotImplementedError


class LogitLaplace(PixelLikelihood):
    """The paper's likelihood (see the module docstring): (mu, log_scale) per colour, mapped pixels."""

    def out_channels(self, in_channels: int) -> int:
        return 2 * in_channels

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        return map_pixels(images)

    def mean(self, params: torch.Tensor, in_channels: int) -> torch.Tensor:
        return unmap_pixels(torch.sigmoid(params[:, :in_channels].float()))

    def nll(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return logit_laplace_nll(images, params)


class MSE(PixelLikelihood):
    """Plain regression: the decoder predicts the pixels themselves."""

    def out_channels(self, in_channels: int) -> int:
        return in_channels

    def mean(self, params: torch.Tensor, in_channels: int) -> torch.Tensor:
        return params.float().clamp(0.0, 1.0)

    def nll(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return mse_nll(images, params)


LIKELIHOODS: dict[str, PixelLikelihood] = {"logit_laplace": LogitLaplace(), "mse": MSE()}


def pixel_likelihood(name: str) -> PixelLikelihood:
    """The likelihood named ``name`` (a key of :data:`LIKELIHOODS`)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name]


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

