"""Configuration of the discrete VAE (the image tokenizer)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from common.configs import config_from_dict
from vqvae.losses import LIKELIHOODS as _LIKELIHOODS

LIKELIHOODS = tuple(_LIKELIHOODS)        # names of vqvae.losses.LIKELIHOODS
RELAXATIONS = ("gumbel", "straight_through")


@dataclass
class VQVAEConfig:
    """Architecture of the DALL·E-style discrete VAE.

    The number of encoder/decoder groups follows from ``downsample``: one
    group per resolution level, with a 2x max-pool between groups
    (downsample 4 -> 3 groups, 8 -> 4 groups as in the paper).
    """

    resolution: int = 64          # input image side in pixels
    in_channels: int = 3
    n_hid: int = 64               # width of the first group (paper: 256)
    n_blk_per_group: int = 1      # bottleneck blocks per group (paper: 2)
    downsample: int = 4           # 4 or 8
    vocab_size: int = 512         # codebook size (paper: 8192)
    likelihood: str = "logit_laplace"
    relaxation: str = "gumbel"

    def __post_init__(self) -> None:
        if self.downsample not in (4, 8):
            raise ValueError(f"vqvae.downsample must be 4 or 8, got {self.downsample}")
        if self.resolution % self.downsample:
            raise ValueError(
                f"vqvae.resolution {self.resolution} is not divisible by downsample {self.downsample}")
        if self.vocab_size < 2:
            raise ValueError(f"vqvae.vocab_size must be >= 2, got {self.vocab_size}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"vqvae.likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"vqvae.relaxation must be one of {RELAXATIONS}, got {self.relaxation!r}")
        if self.n_hid < 1 or self.n_blk_per_group < 1:
            raise ValueError("vqvae.n_hid and vqvae.n_blk_per_group must be positive")

    @property
    def n_groups(self) -> int:
        """Encoder/decoder groups: one per resolution level."""
        return int(math.log2(self.downsample)) + 1

    @property
    def grid_size(self) -> int:
        """Side of the code grid: resolution / downsample."""
        return self.resolution // self.downsample

    @property
    def n_layers(self) -> int:
        """Total bottleneck blocks (the residual-branch scale is 1 / n_layers**2)."""
        return self.n_groups * self.n_blk_per_group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, complete: bool = False) -> "VQVAEConfig":
        """The config from a mapping; ``complete`` (a saved ``vqvae.json``) requires every key."""
        return config_from_dict(cls, d, what="vqvae", complete=complete)
