"""The KV cache: preallocated keys and values of every sequence position, per layer."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer for up to ``max_batch_size`` rows.

    The buffers are non-persistent (never in ``state_dict``) and zero-filled, so
    positions that were never written hold finite values that the causal mask
    gives zero weight. Writes go to ``input_pos`` along the sequence axis; the
    shapes never change, which keeps decoding CUDA-graph friendly.
    """

    def __init__(self, max_batch_size: int, n_head: int, max_seq_len: int, head_dim: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        shape = (max_batch_size, n_head, max_seq_len, head_dim)          # (B, nh, S, hs)
        with torch.inference_mode(False):   # ordinary tensors: usable inside and outside inference_mode
            k_cache = torch.zeros(shape, device=device, dtype=dtype)
            v_cache = torch.zeros(shape, device=device, dtype=dtype)
        self.register_buffer("k_cache", k_cache, persistent=False)
        self.register_buffer("v_cache", v_cache, persistent=False)

    @property
    def max_batch_size(self) -> int:
        return self.k_cache.size(0)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` at ``input_pos`` and return the cache of the first B rows.

        Args:
            input_pos: (T,) int64 sequence positions.
            k, v: (B, nh, T, hs), B <= max_batch_size.
        Returns:
            (k, v) each (B, nh, S, hs), in the cache dtype.
        """
        B = k.size(0)
        if B > self.max_batch_size:
            raise ValueError(f"batch of {B} rows exceeds the KV cache's {self.max_batch_size}; "
                             f"call setup_cache with a larger max_batch_size")
        k_out, v_out = self.k_cache[:B], self.v_cache[:B]                 # views (B, nh, S, hs)
        k_out.index_copy_(2, input_pos, k.to(k_out.dtype))
        v_out.index_copy_(2, input_pos, v.to(v_out.dtype))
        return k_out, v_out
