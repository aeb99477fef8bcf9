"""PatchVQ: a k-means codebook of pixel patches with a learned context decoder.

Measured on the built-in data (BENCHMARKS.md), the patch itself is what a 16x16
grid of codes must keep: letters are 1-2 px strokes and small shapes a few
patches wide, and a plain k-means codebook of raw 4x4 patches already keeps
them far better than a convolutional dVAE of the same grid. PatchVQ builds on
that:

- encode: cut the image into ``patch`` x ``patch`` cells and give each the index
  of its nearest centroid in a k-means codebook fitted on training patches
  (:mod:`vqvae.kmeans`). Deterministic, no network. "Nearest" is squared error in
  RGB, or, with ``chroma_weight`` set, in an opponent colour space (luma and two
  chroma axes, the chroma scaled by ``chroma_weight``), for fitting and encoding
  alike. Measured on the built-in data (BENCHMARKS.md): in RGB the nearest code
  of an orange edge is often a yellow edge of the right geometry, which a reader
  of the picture (the checker, a person) sees as a yellow fringe; weighting chroma
  2.5x (the ``small`` preset) spends the codes on the colours instead and keeps
  held-out colour-shape pairs.
- decode: look up each code's learned vector (initialised to its centroid), then
  add a correction computed by a small residual conv net over the whole grid of
  code vectors, so that a cell is redrawn knowing its neighbours (an edge or a
  letter stroke continues across cells; a flat cell next to a flat cell stays
  flat). The correction's last layer starts at zero, so before training PatchVQ
  decodes exactly as k-means does, and training only lowers the error.

Same public API as :class:`vqvae.model.DiscreteVAE`: ``encode(images) ->
image_tokens``, ``decode(image_tokens) -> images``, ``save`` /
``from_checkpoint`` (``vqvae.safetensors`` + ``vqvae.json`` with
``"kind": "patch_vq"``).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.configs import config_from_dict
from vqvae.kmeans import fit_kmeans, from_patches, nearest, to_patches
from vqvae.checkpoint import load_tokenizer, save_tokenizer
from vqvae.checks import check_images, check_tokens

log = logging.getLogger(__name__)

KIND = "patch_vq"


@dataclass
class PatchVQConfig:
    """Architecture of a :class:`PatchVQ` tokenizer."""

    resolution: int = 64          # input image side in pixels
    in_channels: int = 3
    patch: int = 4                # cell side in pixels: grid = resolution / patch
    vocab_size: int = 4096        # k-means codebook size
    n_hid: int = 128              # width of the context decoder
    n_blocks: int = 3             # residual blocks of the context decoder
    chroma_weight: float | None = None   # None: nearest code in RGB; w: in luma + w x chroma

    def __post_init__(self) -> None:
        if self.patch < 1 or self.resolution % self.patch:
            raise ValueError(f"vqvae.resolution {self.resolution} is not divisible by patch {self.patch}")
        if self.vocab_size < 2:
            raise ValueError(f"vqvae.vocab_size must be >= 2, got {self.vocab_size}")
        if self.n_hid < 1 or self.n_blocks < 0 or self.in_channels < 1:
            raise ValueError("vqvae.n_hid and vqvae.in_channels must be positive, n_blocks >= 0")
        if self.chroma_weight is not None and (self.chroma_weight <= 0 or self.in_channels != 3):
            raise ValueError(f"vqvae.chroma_weight must be > 0 and needs 3 channels, got {self.chroma_weight}")

    @property
    def grid_size(self) -> int:
        """Side of the code grid: resolution / patch."""
        return self.resolution // self.patch

    @property
    def downsample(self) -> int:
        """Pixels per code along a side (the dVAE's name for ``patch``)."""
        return self.patch

    @property
    def patch_dim(self) -> int:
        """Values in one cell: channels x patch x patch."""
        return self.in_channels * self.patch * self.patch

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, complete: bool = False) -> "PatchVQConfig":
        """The config from a mapping (``kind`` ignored); ``complete`` (a saved file) requires every key."""
        d = {k: v for k, v in d.items() if k != "kind"}
        if complete:
            d.setdefault("chroma_weight", None)        # files written before the field: RGB
        return config_from_dict(cls, d, what="vqvae", complete=complete)


# Luma and two colour-difference axes (BT.601 YCbCr without offsets).
_OPPONENT = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _per_pixel(m: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """The 3x3 colour map ``m`` applied to every pixel of patch vectors (..., 3*p*p)."""
    x = patches.reshape(*patches.shape[:-1], 3, -1)                         # (..., C, p*p)
    return torch.einsum("ij,...jk->...ik", m.to(patches.device, patches.dtype), x).reshape(patches.shape)


def _metric_matrix(chroma_weight: float) -> torch.Tensor:
    m = _OPPONENT.clone()
    m[1:] *= chroma_weight
    return m


def metric_space(patches: torch.Tensor, chroma_weight: float | None) -> torch.Tensor:
    """Patch vectors (..., 3*p*p) mapped to the space whose squared distances pick codes: unchanged
    for ``chroma_weight`` None, else luma and chroma per pixel with the chroma scaled by it (a linear
    map, so k-means centroids map with their points)."""
    return patches if chroma_weight is None else _per_pixel(_metric_matrix(chroma_weight), patches)


class ResBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x))))."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n, n, 3, padding=1)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class PatchVQ(nn.Module):
    """Images <-> a grid of ``vocab_size`` patch codes (k-means encoder, learned context decoder)."""

    def __init__(self, cfg: PatchVQConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.patch_dim
        self.register_buffer("centroids", torch.zeros(cfg.vocab_size, d))   # the encoder's codebook
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))   # k-means done (resume skips it)
        self.embed = nn.Embedding(cfg.vocab_size, d)                         # the decoder's code vectors
        self.context = nn.Sequential(
            nn.Conv2d(d, cfg.n_hid, 3, padding=1),
            *[ResBlock(cfg.n_hid) for _ in range(cfg.n_blocks)],
            nn.ReLU(),
            nn.Conv2d(cfg.n_hid, d, 3, padding=1))
        nn.init.zeros_(self.context[-1].weight)
        nn.init.zeros_(self.context[-1].bias)

    # ---- codebook ------------------------------------------------------------------------
    @torch.no_grad()
    def fit_codebook(self, images: torch.Tensor, *, iters: int = 20, seed: int = 0,
                     init: torch.Tensor | None = None) -> None:
        """Fit the k-means codebook to the patches of ``images`` (B, C, R, R) in [0, 1]; reset the decoder's
        code vectors to the centroids. ``init``: (k0 <= vocab_size, patch_dim) centroids to start from
        (an earlier codebook: its codes keep their indices where the data allow, see
        :func:`vqvae.kmeans.fit_kmeans`)."""
        check_images(images, self.config)
        w = self.config.chroma_weight
        x = to_patches(images.float().cpu(), self.config.patch).reshape(-1, self.config.patch_dim)
        start = None if init is None else metric_space(init.float().cpu(), w)
        fitted = fit_kmeans(metric_space(x, w), self.config.vocab_size, iters=iters, seed=seed, init=start)
        centroids = fitted if w is None else self._from_metric(fitted)
        self.centroids.copy_(centroids)
        self.embed.weight.copy_(centroids)
        self.fitted.fill_(True)

    @torch.no_grad()
    def renumber(self, order: torch.Tensor) -> None:
        """Give code ``order[i]`` the index i (centroids and decoder code vectors alike)."""
        if sorted(order.tolist()) != list(range(self.config.vocab_size)):
            raise ValueError("order must be a permutation of the codes")
        self.centroids.copy_(self.centroids[order].clone())
        self.embed.weight.copy_(self.embed.weight[order].clone())

    def _from_metric(self, vectors: torch.Tensor) -> torch.Tensor:
        """Inverse of :func:`metric_space` for this tokenizer's chroma weight."""
        return _per_pixel(torch.linalg.inv(_metric_matrix(self.config.chroma_weight)), vectors)

    def code_vectors(self) -> torch.Tensor:
        """(vocab_size, patch_dim) what each code looks like: its centroid's pixels (a copy)."""
        if not bool(self.fitted):
            raise ValueError("this PatchVQ has no codebook yet: fit_codebook() first")
        return self.centroids.detach().clone()

    # ---- the two directions ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) images in [0, 1] -> (B, h, w) int64 codes (nearest centroid per cell)."""
        check_images(images, self.config)
        p = to_patches(images.to(self.centroids.dtype), self.config.patch)   # (B, h, w, D)
        return self.encode_patches(p.reshape(-1, p.shape[-1])).view(p.shape[:3])   # (B, h, w)

    @torch.no_grad()
    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, patch_dim) cells -> (N,) int64 codes: the nearest centroid of each."""
        if not bool(self.fitted):
            raise ValueError("this PatchVQ has no codebook yet: fit_codebook() first")
        # Identical cells (flat colour is most of an image) are searched once: same codes, less work.
        unique, inverse = torch.unique(patches.to(self.centroids.dtype), dim=0, return_inverse=True)
        w = self.config.chroma_weight
        idx, _ = nearest(metric_space(unique, w), metric_space(self.centroids, w))
        return idx[inverse]

    def decode_raw(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Differentiable decode (training): (B, h, w) codes -> (B, C, R, R), not clamped."""
        image_tokens = check_tokens(image_tokens, self.config)
        base = self.embed(image_tokens).permute(0, 3, 1, 2)                   # (B, D, h, w)
        cells = base + self.context(base)                                     # (B, D, h, w)
        return from_patches(cells.permute(0, 2, 3, 1), self.config.patch, self.config.in_channels)

    @torch.no_grad()
    def decode(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) or (B, h*w) int64 codes -> (B, C, R, R) float images in [0, 1]."""
        return self.decode_raw(image_tokens).float().clamp(0.0, 1.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: ``(codes (B, h, w), reconstruction (B, C, R, R) not clamped)``."""
        codes = self.encode(images)
        return codes, self.decode_raw(codes)

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``vqvae.safetensors`` and ``vqvae.json`` (the config, ``kind`` included) into ``directory``."""
        return save_tokenizer(self, directory)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu") -> "PatchVQ":
        """Rebuild a model saved by :meth:`save`, on ``device``, in eval mode."""
        return load_tokenizer(cls, PatchVQConfig, directory, device, complete=True)
