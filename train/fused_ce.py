"""Cross-entropy of a linear head without materialising its logits: the image loss of training.

The image head maps every image position (4,096 per batch of 16 at the ``small`` shapes) to 8,192
code logits. Written plainly, that is a (4096, 8192) bfloat16 matrix, cast to a float32 copy,
``log_softmax`` of it, and the same three passes again in the backward: about a quarter of the
training step on a CPU, most of it spent moving 134 MB matrices through memory (see BENCHMARKS.md).

:func:`linear_cross_entropy` computes the same mean cross-entropy chunk by chunk of rows: each
chunk's logits (``chunk`` x V, float32) stay small enough to live in cache, their softmax is turned
into the gradient of the logits in place, and the gradients of the hidden states and of the head's
weight are accumulated right away; the backward only scales what the forward already computed.
Nothing of size N x V is ever kept. The matrix products run in the autocast dtype when autocast is
on (as the plain head would), the softmax always in float32.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK = 512       # rows per chunk: fastest of 128 / 512 / 1024 on one CPU core (8192 codes)


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    kind = h.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return h.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                dtype: torch.dtype, need_grad: bool) -> torch.Tensor:
        n = h.shape[0]
        hc, wc = h.to(dtype), weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(hc) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        for s in range(0, n, chunk):
            x, y = hc[s:s + chunk], targets[s:s + chunk]
            z = (x @ wc.T).float()                                     # (c, V) logits
            lse = torch.logsumexp(z, 1)
            total += (lse - z.gather(1, y[:, None])[:, 0]).sum()
            if need_grad:
                z.sub_(lse[:, None]).exp_()                            # softmax, in place
                z[torch.arange(z.shape[0], device=z.device), y] -= 1.0  # d(sum of losses)/d(logits)
                g = z.div_(n).to(dtype)                                # ... of the mean
                grad_h[s:s + chunk] = g @ wc
                grad_w += g.T @ x
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h.to(h_dtype) * grad_out.to(h_dtype), (grad_w * grad_out).to(w_dtype),
                None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean ``F.cross_entropy(h @ weight.T, targets)`` without keeping the logits.

    Args:
        h: (N, C) hidden states (any float dtype; the products run in the autocast dtype if on).
        weight: (V, C) the head's weight (no bias).
        targets: (N,) int64 in ``[0, V)``.
        chunk: rows per chunk.
    Returns:
        The float32 scalar loss; differentiable in ``h`` and ``weight``.
    """
    if h.ndim != 2 or weight.ndim != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"expected h (N, C) and weight (V, C), got {tuple(h.shape)} and {tuple(weight.shape)}")
    if targets.shape != (h.shape[0],):
        raise ValueError(f"expected targets of shape ({h.shape[0]},), got {tuple(targets.shape)}")
    if chunk < 1:
        raise ValueError("chunk must be positive")
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(h, weight, targets, chunk, _compute_dtype(h), need_grad)
