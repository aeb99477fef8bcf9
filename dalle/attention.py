"""Attention layouts of the transformer: DALL·E's row, column and convolutional masks.

The sequence is ``[text_tokens ; image_tokens]``: sequence position ``p < text_len``
is text, ``p >= text_len`` is image token ``i = p - text_len`` at grid cell
``(i // g, i % g)`` (row-major, ``g = image_grid``). Every layout is causal
(a query never sees a later position) and has the same text part:

- a text query sees the text at or before it (the standard causal mask);
- an image query sees every text token.

Among image tokens (query ``i``, key ``j <= i``, ``g`` = grid side, ``r = conv_kernel // 2``):

- ``dense``:  every earlier image token (plain causal attention).
- ``row``:    the causal band ``i - g <= j <= i``: the earlier tokens of the
  current row and the last ``g`` tokens before the query in raster order, i.e.
  the previous row from the query's column onwards (Sparse Transformer's local
  pattern with stride ``g``; DALL·E Fig. 11a: on a 4x4 grid, token 8 sees 4..8).
- ``column``: the same column in this and every earlier row: ``(i - j) % g == 0``
  (the strided pattern; DALL·E Fig. 11b).
- ``conv``:   a causal ``k x k`` neighbourhood: ``row(i) - row(j) <= r`` and
  ``|col(i) - col(j)| <= r`` (DALL·E Fig. 11d; the paper uses ``k = 11`` in the last layer).

Each layout is a FlexAttention ``mask_mod`` (used on CUDA, compiled), and the
same function evaluated on index grids gives the boolean (S, S) mask for the
``scaled_dot_product_attention`` fallback and for KV-cached decoding (one row per
query position). ``dense`` in full-sequence mode uses SDPA's ``is_causal``.

On a CPU in bf16, full-sequence attention (training, uncached calls) is written out instead
(``math``: ``softmax(q k^T / sqrt(d) + bias) v`` with the layout as an additive
0 / -inf bias): SDPA's CPU flash kernel runs its backward far from the CPU's
matrix-product speed at these head sizes (64), and the three products and one
softmax written out train the `small` preset's step about 1.2x faster in bf16
(BENCHMARKS.md, "Attention written out on the CPU").
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

from dalle.config import ATTN_LAYOUTS, DalleConfig

log = logging.getLogger(__name__)

try:  # FlexAttention arrived in torch 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
    HAS_FLEX = True
except ImportError:  # pragma: no cover - depends on the torch version
    BlockMask = None
    create_block_mask = flex_attention = None
    HAS_FLEX = False

BACKENDS = ("auto", "sdpa", "flex", "math")
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_mask_mod(layout: str, text_len: int, image_grid: int, conv_kernel: int) -> MaskMod:
    """The ``mask_mod(b, h, q_idx, kv_idx) -> bool`` of a layout over absolute sequence positions.

    Args:
        layout: one of ``dense``, ``row``, ``column``, ``conv``.
        text_len: number of text positions before the image.
        image_grid: side of the image code grid.
        conv_kernel: odd neighbourhood size of ``conv``.
    Returns:
        A function of broadcastable integer tensors, true where attention is allowed.
    """
    if layout not in ATTN_LAYOUTS:
        raise ValueError(f"unknown attention layout {layout!r}; choose from {ATTN_LAYOUTS}")
    g, r = image_grid, conv_kernel // 2

    def image_rule(qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        if layout == "row":
            return qi - ki <= g
        if layout == "column":
            return (qi - ki) % g == 0
        # conv: rows above within r (causality excludes rows below), columns within r
        return (torch.div(qi, g, rounding_mode="floor") - torch.div(ki, g, rounding_mode="floor") <= r) & (
            (qi % g - ki % g).abs() <= r)

    def mask_mod(b, h, q_idx, kv_idx):
        causal = kv_idx <= q_idx
        if layout == "dense":
            return causal
        kv_text = kv_idx < text_len
        return causal & (kv_text | image_rule(q_idx - text_len, kv_idx - text_len))

    mask_mod.__name__ = f"{layout}_mask_mod"
    return mask_mod


def layout_mask(layout: str, cfg: DalleConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The boolean (S, S) mask of a layout over the full sequence (S = ``cfg.block_size``)."""
    idx = torch.arange(cfg.block_size, device=device)
    mod = make_mask_mod(layout, cfg.text_len, cfg.image_grid, cfg.conv_kernel)
    return mod(None, None, idx[:, None], idx[None, :])                  # (S, S)


def use_flex(backend: str, device: torch.device, dropout_active: bool) -> bool:
    """Whether full-sequence attention of a sparse layout runs through FlexAttention.

    ``auto`` picks flex on CUDA; flex has no attention dropout, so dropout falls back to SDPA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    if backend in ("sdpa", "math") or not HAS_FLEX or dropout_active:
        if backend == "flex" and not HAS_FLEX:
            raise RuntimeError("attention backend 'flex' needs torch >= 2.5 (FlexAttention)")
        return False
    return backend == "flex" or device.type == "cuda"


def use_math(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether full-sequence attention is written out (``math``): asked for, or ``auto`` on a CPU in 16 bits.

    In fp32 SDPA's CPU kernel is as fast (0.97x written out), so ``auto`` keeps it there.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    return backend == "math" or (backend == "auto" and device.type == "cpu" and dtype != torch.float32)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v``, written out; ``bias`` (T, T) is 0 where allowed, -inf elsewhere.

    The softmax runs in the inputs' dtype (the CPU kernel accumulates bf16 in float); every row must
    allow at least one key, which every layout's diagonal does.
    """
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1) + bias       # (B, nh, T, T)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


class LayoutMasks:
    """Per-layout boolean masks and flex block masks, built lazily per device and cached.

    Not a module: the masks are derived from the config, never saved, and rebuilt
    on whatever device asks (so a model built on the meta device needs no fix-up).
    """

    def __init__(self, cfg: DalleConfig) -> None:
        self.cfg = cfg
        self._bool: dict[tuple[str, str], torch.Tensor] = {}
        self._bias: dict[tuple[str, int, torch.dtype, str], torch.Tensor] = {}
        self._block: dict[tuple[str, int, int, str], object] = {}
        self._compiled_flex = None

    def mask_mod(self, layout: str) -> MaskMod:
        return make_mask_mod(layout, self.cfg.text_len, self.cfg.image_grid, self.cfg.conv_kernel)

    def bool_mask(self, layout: str, device: torch.device) -> torch.Tensor:
        """(S, S) bool mask of ``layout`` on ``device``."""
        key = (layout, str(device))
        if key not in self._bool:
            self._bool[key] = layout_mask(layout, self.cfg, device)
        return self._bool[key]

    def bias(self, layout: str, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(length, length) additive mask of ``layout``'s first positions: 0 where allowed, -inf elsewhere."""
        key = (layout, length, dtype, str(device))
        if key not in self._bias:
            allowed = self.bool_mask(layout, device)[:length, :length]
            self._bias[key] = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
                ~allowed, float("-inf"))
        return self._bias[key]

    def block_mask(self, layout: str, q_len: int, kv_len: int, device: torch.device):
        """FlexAttention ``BlockMask`` of ``layout`` for the first q_len x kv_len positions."""
        key = (layout, q_len, kv_len, str(device))
        if key not in self._block:
            self._block[key] = create_block_mask(self.mask_mod(layout), None, None, q_len, kv_len,
                                                 device=device)
        return self._block[key]

    def flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> torch.Tensor:
        """FlexAttention over the full sequence prefix; compiled on CUDA, eager elsewhere."""
        fn = flex_attention
        if q.device.type == "cuda":
            if self._compiled_flex is None:
                self._compiled_flex = torch.compile(flex_attention, dynamic=False)
            fn = self._compiled_flex
        return fn(q, k, v, block_mask=self.block_mask(layout, q.size(-2), k.size(-2), q.device))


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str, masks: LayoutMasks,
                   backend: str = "auto", dropout_p: float = 0.0) -> torch.Tensor:
    """Attention over a sequence that starts at position 0 (training / uncached).

    Args:
        q, k, v: (B, nh, T, hs).
        layout: the layer's layout.
        masks: the model's :class:`LayoutMasks`.
        backend: ``auto`` (written out on a CPU in bf16 / fp16, FlexAttention for sparse layouts on
            CUDA, else SDPA) | ``sdpa`` | ``flex`` | ``math``.
        dropout_p: attention dropout (0 in eval).
    Returns:
        (B, nh, T, hs).
    """
    if use_math(backend, q.device, q.dtype):
        return math_attention(q, k, v, masks.bias(layout, q.size(-2), q.dtype, q.device), dropout_p)
    if layout == "dense":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if use_flex(backend, q.device, dropout_p > 0):
        return masks.flex(q, k, v, layout)
    T = q.size(-2)
    mask = masks.bool_mask(layout, q.device)[:T, :T]                    # (T, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str, masks: LayoutMasks,
                     input_pos: torch.Tensor) -> torch.Tensor:
    """Attention of the queries at ``input_pos`` over the whole KV cache (static shapes).

    Args:
        q: (B, nh, T, hs) queries at positions ``input_pos`` (T,).
        k, v: (B, nh, S, hs) the cache; positions not yet written are masked out by causality.
    Returns:
        (B, nh, T, hs).
    """
    mask = masks.bool_mask(layout, q.device).index_select(0, input_pos)   # (T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
