"""The dVAE encoder: residual groups of bottleneck blocks down to code logits.

Follows OpenAI's released DALL·E ``Encoder``: a 7x7 input convolution, then
``cfg.n_groups`` groups of ``cfg.n_blk_per_group`` bottleneck blocks with a
2x max-pool between groups (group ``g`` has width ``n_hid * 2**g``), and a
ReLU + 1x1 convolution to ``vocab_size`` logits at the end.
"""
from __future__ import annotations

import torch
from torch import nn

from vqvae.blocks import ENCODER_KERNELS, BottleneckBlock
from vqvae.config import VQVAEConfig


class Encoder(nn.Module):
    """Images (already pixel-mapped) -> code logits.

    ``features(x)`` gives the (B, C, h, w) activations just before the output
    head and ``head`` maps them to logits; the trainer's dead-code restart
    re-initialises rows of ``head[-1]`` from those features.
    """

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        widths = [cfg.n_hid * 2 ** g for g in range(cfg.n_groups)]
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.n_hid, 7, padding=3)]
        n_in = cfg.n_hid
        for g, width in enumerate(widths):
            group = [BottleneckBlock(n_in if i == 0 else width, width, cfg.n_layers, ENCODER_KERNELS)
                     for i in range(cfg.n_blk_per_group)]
            if g < cfg.n_groups - 1:
                group.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*group))
            n_in = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(n_in, cfg.vocab_size, 1))
        self.out_width = n_in

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, R, R) -> (B, C, h, w) features before the logit head."""
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, R, R) -> (B, vocab_size, h, w) logits."""
        return self.head(self.features(x))
