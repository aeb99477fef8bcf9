"""The residual bottleneck block shared by the dVAE's encoder and decoder.

``id_path(x) + post_gain * res_path(x)``, as in OpenAI's released DALL·E dVAE:
the residual path is four ReLU + convolution pairs through ``n_out // 4``
channels, and its output is scaled by ``1 / n_layers**2`` (``n_layers``: blocks in
the whole encoder or decoder) so that a deep stack starts close to the identity.
The encoder's path is 3x3-3x3-3x3-1x1, the decoder's its mirror 1x1-3x3-3x3-3x3.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

ENCODER_KERNELS = (3, 3, 3, 1)
DECODER_KERNELS = (1, 3, 3, 3)


class BottleneckBlock(nn.Module):
    """``id_path(x) + post_gain * res_path(x)``; ``kernels`` are the four convolution sizes in order."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: Sequence[int]) -> None:
        super().__init__()
        if len(kernels) != 4:
            raise ValueError(f"a bottleneck block has 4 convolutions, got kernels {tuple(kernels)}")
        n_hid = max(1, n_out // 4)
        self.post_gain = 1.0 / n_layers ** 2
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers: list[nn.Module] = []
        for i, k in enumerate(kernels):
            layers += [nn.ReLU(), nn.Conv2d(widths[i], widths[i + 1], k, padding=k // 2)]
        self.res_path = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)
