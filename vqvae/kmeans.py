"""k-means on raw pixel patches: the patch codebook behind :class:`vqvae.patch_vq.PatchVQ`.

A 64 px image cut into 4x4 patches is a 16x16 grid of 48-dimensional vectors;
k-means over the patches of a few thousand training images gives a codebook in
which flat colours, edges and strokes of letters each get codes. Plain Lloyd
iterations in torch, chunked so that memory stays bounded, with a seeded
initialisation from distinct data points and empty clusters re-seeded by the
worst-fitted points, so that a fit is deterministic for a seed.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, R, R) images -> (B, h, w, C*p*p) patch vectors, h = w = R / p."""
    b, c, r, _ = images.shape
    g = r // patch
    x = images.reshape(b, c, g, patch, g, patch)                     # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, g, g, c * patch * patch)


def from_patches(vectors: torch.Tensor, patch: int, channels: int = 3) -> torch.Tensor:
    """(B, h, w, C*p*p) patch vectors -> (B, C, h*p, w*p) images (inverse of :func:`to_patches`)."""
    b, h, w, _ = vectors.shape
    x = vectors.reshape(b, h, w, channels, patch, patch)              # (B, h, w, C, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, h * patch, w * patch)


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid of each row of ``x`` (N, D) and the squared distance to it."""
    c = centroids.float()
    c2 = (c ** 2).sum(1)                                               # (K,)
    idx, dist = [], []
    for xb in x.float().split(chunk):
        d = torch.addmm(c2, xb, c.T, alpha=-2.0)                       # (n, K): |c|^2 - 2 x.c
        m, i = d.min(dim=1)
        idx.append(i)
        dist.append((m + (xb ** 2).sum(1)).clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def fit_kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0,
               chunk: int = 4096, init: torch.Tensor | None = None) -> torch.Tensor:
    """Lloyd's k-means of the rows of ``x``.

    Identical rows (flat colours are most of a synthetic image's patches) are merged
    into one weighted point first, which gives the same centroids for a fraction of
    the distance computations.

    Args:
        x: (N, D) float data with at least k distinct rows.
        k: number of centroids.
        iters: Lloyd iterations.
        seed: seeds the choice of initial centroids (distinct data points).
        chunk: rows per distance block.
        init: (k0, D) centroids to start from, k0 <= k (refitting a codebook to new data): code i
            starts at ``init[i]``, so a code keeps its index and, where the data allow, its look; the
            other ``k - k0`` start at the worst-fitted distinct points.
    Returns:
        (k, D) float32 centroids.
    Raises:
        ValueError: fewer distinct rows than centroids, or ``init`` of the wrong shape.
    """
    points, weights = torch.unique(x.float(), dim=0, return_counts=True)
    weights = weights.float()
    n = points.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} distinct points, got {n}")
    if init is None:
        g = torch.Generator().manual_seed(seed)
        centroids = points[torch.randperm(n, generator=g)[:k]].clone()
    else:
        if init.dim() != 2 or init.shape[0] > k or init.shape[1] != points.shape[1]:
            raise ValueError(f"init must be (k0 <= {k}, {points.shape[1]}) centroids, got {tuple(init.shape)}")
        centroids = init.float().clone()
        if centroids.shape[0] < k:
            _, dist = nearest(points, centroids, chunk)
            worst = (dist * weights).argsort(descending=True)[:k - centroids.shape[0]]
            centroids = torch.cat([centroids, points[worst]])
    for it in range(iters):
        idx, dist = nearest(points, centroids, chunk)
        sums = torch.zeros_like(centroids).index_add_(0, idx, points * weights[:, None])
        mass = torch.zeros(k).index_add_(0, idx, weights)
        alive = mass > 0
        centroids[alive] = sums[alive] / mass[alive, None]
        dead = int((~alive).sum())
        if dead:                                   # re-seed empty clusters with the worst-fitted points
            worst = (dist * weights).argsort(descending=True)[:dead]
            centroids[~alive] = points[worst]
        log.debug("k-means iteration %d: mean squared error %.6f, %d empty", it,
                  float((dist * weights).sum() / weights.sum()), dead)
    return centroids


def match_codes(old: torch.Tensor, new: torch.Tensor, k: int,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The renumbering of a refitted codebook that keeps the most data on the same code index.

    ``old[n]`` and ``new[n]`` are the codes the old and the new codebook give data point ``n``
    (weighted by ``weights``). Pairs (old code i, new code j) are taken greedily by how much data
    they share, each code once; codes left over are paired in index order. A transformer trained
    on the old codes then sees most of its training tokens unchanged.

    Args:
        old, new: (N,) int64 codes in [0, k).
        k: codebook size (both).
        weights: (N,) data weights, default 1.
    Returns:
        ``order`` (k,): new code ``order[i]`` takes index i; and the share of the data whose
        index is the same after renumbering.
    """
    w = torch.ones(old.shape[0]) if weights is None else weights.float()
    pair = old.long() * k + new.long()
    keys, inverse = torch.unique(pair, return_inverse=True)
    mass = torch.zeros(keys.shape[0]).index_add_(0, inverse, w)
    order = torch.full((k,), -1, dtype=torch.long)
    taken = torch.zeros(k, dtype=torch.bool)
    kept = 0.0
    for key, m in zip(keys[mass.argsort(descending=True)].tolist(), mass.sort(descending=True).values.tolist()):
        i, j = divmod(key, k)
        if order[i] < 0 and not taken[j]:
            order[i], taken[j] = j, True
            kept += m
    order[order < 0] = torch.nonzero(~taken).flatten()
    return order, kept / float(w.sum())
