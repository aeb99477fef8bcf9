"""Cross-entropy of a linear head without materialising its logits: the image loss of training.

The image head maps every image position (4,096 per batch of 16 at the ``small`` shapes) to 8,192
code logits. Written plainly, that is a (4096, 8192) bfloat16 matrix, cast to a float32 copy,
``log_softmax`` of it, and the same three passes again in the backward: about a quarter of the
training step on a CPU, most of it spent moving 134 MB matrices through memory (see BENCHMARKS.md).

:func:`linear_cross_entropy` computes the same mean cross-entropy chunk by chunk of rows: each
chunk's logits (``chunk`` x V) stay small enough to live in cache, one softmax kernel (float32) gives
both the loss (minus the log of the target's probability; from the logits for a row whose target
probability underflows) and, less one at the target, the gradient of the summed loss with respect to
the logits, and the gradients of the hidden states and of the head's
weight are accumulated right away; the backward only scales what the forward already computed.
Nothing of size N x V is ever kept; the mean's 1 / N scales the two gradients at the end. The matrix
products run in the autocast dtype when autocast is on (as the plain head would), the softmax always
in float32.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK = 128       # rows per chunk: fastest of 128 / 256 / 512 / 1024 on one CPU core (8192 codes, bf16)


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
        rows = torch.arange(min(chunk, n), device=h.device)
        for s in range(0, n, chunk):
            x, y = hc[s:s + chunk], targets[s:s + chunk]
            z = x @ wc.T                                               # (c, V) logits
            if not need_grad:
                z = z.float()
                total += (torch.logsumexp(z, 1) - z.gather(1, y[:, None])[:, 0]).sum()
                continue
            p = torch.softmax(z, 1, dtype=torch.float32)               # one pass over the row block
            p_y = p.gather(1, y[:, None])[:, 0]
            loss = -torch.log(p_y)
            lost = p_y < 1e-30                                         # log of an underflowed probability:
            if bool(lost.any()):                                       # those rows' loss from the logits
                zl = z[lost].float()
                loss[lost] = torch.logsumexp(zl, 1) - zl.gather(1, y[lost][:, None])[:, 0]
            total += loss.sum()
            p[rows[:p.shape[0]], y] -= 1.0                             # d(sum of losses)/d(logits)
            g = p.to(dtype)
            grad_h[s:s + chunk] = g @ wc
            grad_w += g.T @ x
        if need_grad:                                                  # ... of the mean
            grad_h.div_(n)
            grad_w.div_(n)
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
