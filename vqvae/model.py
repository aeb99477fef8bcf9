"""The discrete VAE (DALL·E's image tokenizer): encoder, relaxation, decoder.

Public API (what the rest of the project uses):

- ``encode(images) -> image_tokens``: (B, 3, R, R) in [0, 1] -> (B, h, w) int64,
  the argmax of the encoder logits (deterministic).
- ``decode(image_tokens) -> images``: (B, h, w) or (B, h*w) -> (B, 3, R, R) in [0, 1].
- ``save(dir)`` / ``DiscreteVAE.from_checkpoint(dir)``: ``vqvae.safetensors`` +
  ``vqvae.json`` (the config), no pickle.

Training uses ``forward(images, temperature)``, which returns the logits and
the decoder's pixel-distribution parameters; the loss is in :mod:`vqvae.losses`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from vqvae.checkpoint import load_tokenizer, save_tokenizer
from vqvae.checks import check_images, check_tokens
from vqvae.config import VQVAEConfig
from vqvae.decoder import Decoder
from vqvae.encoder import Encoder
from vqvae.losses import pixel_likelihood
from vqvae.relaxation import relax

log = logging.getLogger(__name__)



class VQVAEOutput(NamedTuple):
    logits: torch.Tensor     # (B, V, h, w) code logits
    params: torch.Tensor     # (B, 2C, R, R) logit-Laplace (mu, log_scale) or (B, C, R, R) for MSE
    features: torch.Tensor   # (B, F, h, w) encoder features before the logit head


class DiscreteVAE(nn.Module):
    """DALL·E's dVAE: images <-> a grid of ``vocab_size`` discrete codes."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.likelihood = pixel_likelihood(cfg.likelihood)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI's init: conv weights ~ N(0, 1 / fan_in), zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, std=1.0 / math.sqrt(fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ---- helpers -------------------------------------------------------------------------
    def _encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        return self.likelihood.encoder_input(images.to(self.encoder.head[-1].weight.dtype))

    def params_to_images(self, params: torch.Tensor) -> torch.Tensor:
        """Decoder output -> (B, C, R, R) float images in [0, 1] (the distribution's mean pixel)."""
        return self.likelihood.mean(params, self.config.in_channels)

    # ---- training ------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, temperature: float, *, noise: bool = True,
                generator: torch.Generator | None = None) -> VQVAEOutput:
        """Relaxed encode-decode pass used by training.

        Args:
            images: (B, C, R, R) in [0, 1].
            temperature: relaxation temperature (> 0).
            noise: sample Gumbel noise (False: deterministic tempered softmax).
            generator: optional RNG for the noise.
        Returns:
            :class:`VQVAEOutput` with logits, decoder parameters and encoder features.
        """
        check_images(images, self.config)
        features = self.encoder.features(self._encoder_input(images))   # (B, F, h, w)
        logits = self.encoder.head(features)                              # (B, V, h, w)
        z = relax(self.config.relaxation, logits, temperature, noise=noise, generator=generator)
        params = self.decoder(z)                                          # (B, out, R, R)
        return VQVAEOutput(logits, params, features)

    # ---- inference -----------------------------------------------------------------------
    def code_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) images in [0, 1] -> (B, V, h, w) code logits (differentiable)."""
        check_images(images, self.config)
        return self.encoder(self._encoder_input(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) images in [0, 1] -> (B, h, w) int64 codes (argmax, deterministic)."""
        return self.code_logits(images).argmax(dim=1)                    # (B, h, w)

    @torch.no_grad()
    def decode(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) or (B, h*w) int64 codes -> (B, C, R, R) float images in [0, 1]."""
        image_tokens = check_tokens(image_tokens, self.config)
        params = self.decoder.decode_embedded(self.decoder.embed(image_tokens))
        return self.params_to_images(params)

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``vqvae.safetensors`` and ``vqvae.json`` (the config) into ``directory``."""
        return save_tokenizer(self, directory)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu") -> "DiscreteVAE":
        """Rebuild a model saved by :meth:`save`, on ``device``, in eval mode."""
        return load_tokenizer(cls, VQVAEConfig, directory, device)
