"""The dVAE decoder: one-hot (or relaxed) codes -> pixel distribution parameters.

Follows OpenAI's released DALL·E ``Decoder``: a 1x1 convolution from
``vocab_size`` to ``n_init`` channels (an embedding lookup for hard codes),
``cfg.n_groups`` groups of bottleneck blocks with nearest-neighbour 2x
upsampling between groups (widths ``n_hid * 2**g`` in reverse), and a ReLU +
1x1 convolution to ``2 * in_channels`` channels (logit-Laplace mu, log-scale)
or ``in_channels`` (MSE).

``n_init`` is not a config field: it is ``n_hid // 2`` (the paper's 128 for
``n_hid`` 256).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqvae.blocks import DECODER_KERNELS, BottleneckBlock
from vqvae.config import VQVAEConfig
from vqvae.losses import pixel_likelihood


class Decoder(nn.Module):
    """(B, vocab_size, h, w) one-hot or relaxed codes -> (B, out_channels, R, R)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        n_init = max(1, cfg.n_hid // 2)
        self.input = nn.Conv2d(cfg.vocab_size, n_init, 1)
        widths = [cfg.n_hid * 2 ** g for g in reversed(range(cfg.n_groups))]
        layers: list[nn.Module] = []
        n_in = n_init
        for g, width in enumerate(widths):
            group: list[nn.Module] = [
                BottleneckBlock(n_in if i == 0 else width, width, cfg.n_layers, DECODER_KERNELS)
                for i in range(cfg.n_blk_per_group)]
            if g < cfg.n_groups - 1:
                group.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(nn.Sequential(*group))
            n_in = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(n_in, pixel_likelihood(cfg.likelihood).out_channels(cfg.in_channels), 1))

    def embed(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Hard codes (B, h, w) int64 -> (B, n_init, h, w): the input 1x1 conv of a one-hot, as a lookup."""
        weight = self.input.weight.flatten(1).t()                      # (V, n_init)
        x = F.embedding(image_tokens, weight)                           # (B, h, w, n_init)
        if self.input.bias is not None:
            x = x + self.input.bias
        return x.permute(0, 3, 1, 2)                                    # (B, n_init, h, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, V, h, w) codes (one-hot or relaxed) -> (B, out_channels, R, R)."""
        return self.decode_embedded(self.input(z))

    def decode_embedded(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_init, h, w) embedded codes -> (B, out_channels, R, R)."""
        return self.head(self.blocks(x))
