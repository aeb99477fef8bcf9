"""The transformer over ``[text_tokens ; image_tokens]``: pre-LayerNorm GPT blocks, two heads.

Sequence positions ``0 .. text_len-1`` are the caption, ``text_len ..`` the image codes
in raster order. The output at sequence position ``p`` predicts the token at ``p + 1``:
outputs that predict a text token go through the text head (``text_vocab_total``
classes), outputs that predict an image code through the image head
(``image_vocab_size`` classes), so a text position can never emit an image code and
vice versa.

Calling convention (one method per job, as in gpt-fast):

- ``forward(text_tokens, image_tokens)``: the training / uncached call. The input is
  the full caption and the ``n`` image codes to predict *from* (``0 <= n < image_len``);
  the result is ``Logits(text (B, text_len-1, Vt), image (B, n+1, Vi))``: ``text[:, i]``
  predicts ``text_tokens[:, i+1]`` and ``image[:, j]`` predicts code ``j``. The caller owns
  the shift and the loss: training passes ``image_tokens[:, :-1]`` and scores the
  ``image_len`` image logits against all ``image_tokens``.
- ``prefill(text_tokens, image_tokens)`` (after :meth:`DalleTransformer.setup_cache`):
  the same inputs and outputs as ``forward``, writing keys and values into the cache.
- ``decode_step(image_tokens (B, T), input_pos (T,))``: image codes at sequence positions
  ``input_pos`` through the cache -> image logits (B, T, Vi) of the next codes.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from dalle.atomic import atomic_write, atomic_write_text
from dalle.attention import BACKENDS, LayoutMasks, cached_attention, full_attention
from dalle.config import DalleConfig
from dalle.kv_cache import KVCache

log = logging.getLogger(__name__)

WEIGHTS_FILE = "dalle.safetensors"
CONFIG_FILE = "dalle.json"


def spell_positions(tokens: torch.Tensor, open_id: int, close_id: int) -> tuple[torch.Tensor, ...]:
    """Where each text token sits inside a spelled word (the tokens between ``open_id`` and ``close_id``).

    Args:
        tokens: (B, T) int64 text tokens.
        open_id, close_id: the spelling tokens.
    Returns:
        ``(from_start, from_end, inside)``, each (B, T): a character's index from the word's first
        character and from its last (a word cut off by truncation runs to the end of the caption), and
        whether the position is such a character (the indices elsewhere are 0).
    """
    T = tokens.size(1)
    pos = torch.arange(T, device=tokens.device).expand_as(tokens)
    none = torch.full_like(pos, -1)
    last_open = torch.where(tokens == open_id, pos, none).cummax(1).values
    last_close = torch.where(tokens == close_id, pos, none).cummax(1).values
    inside = (last_open > last_close) & (tokens != open_id)
    after = torch.where(tokens == close_id, pos, torch.full_like(pos, T)).flip(1).cummin(1).values.flip(1)
    zero = torch.zeros_like(pos)
    from_start = torch.where(inside, pos - last_open - 1, zero)
    from_end = torch.where(inside, after - pos - 1, zero)
    return from_start, from_end, inside


def spell_embedding(owner: nn.Module, tokens: torch.Tensor, cfg: Any) -> torch.Tensor:
    """The within-word position embeddings of ``tokens`` (B, T) -> (B, T, C), zero outside spelled words:
    ``owner.spell_start`` / ``spell_end`` / ``spell_centre`` looked up at each character's index from
    the word's start, from its end, and at their difference (the offset from the centre), clamped to
    ``cfg.spell_pos - 1``. Shared by the transformer and the scorer's text encoder."""
    start, end, inside = spell_positions(tokens, cfg.spell_open_id, cfg.spell_close_id)
    n = cfg.spell_pos
    start, end = start.clamp(max=n - 1), end.clamp(max=n - 1)
    extra = owner.spell_start(start) + owner.spell_end(end) + owner.spell_centre(start - end + n - 1)
    return extra * inside.unsqueeze(-1).to(extra.dtype)


def add_spell_tables(owner: nn.Module, cfg: Any, dim: int) -> None:
    """Give ``owner`` the zero-initialised tables of :func:`spell_embedding` (``cfg.spell_pos`` > 0)."""
    if cfg.spell_open_id < 0:
        raise ValueError("spell_pos needs spell_open_id and spell_close_id: the tokenizer's spelling tokens "
                         "(training sets them from a tokenizer that spells)")
    owner.spell_start = nn.Embedding(cfg.spell_pos, dim)          # index from the word's first letter
    owner.spell_end = nn.Embedding(cfg.spell_pos, dim)            # index from its last letter
    owner.spell_centre = nn.Embedding(2 * cfg.spell_pos - 1, dim)  # start - end: offset from the centre
    for table in (owner.spell_start, owner.spell_end, owner.spell_centre):
        nn.init.zeros_(table.weight)     # a model given these tables later starts out unchanged


def zero_spell_state(cfg: Any, dim: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state of freshly added (zero) :func:`add_spell_tables` tables, keyed under ``prefix``: what
    ``--init-from`` adds to the weights of a model or scorer trained without within-word positions."""
    tables = nn.Module()
    add_spell_tables(tables, cfg, dim)
    return {prefix + k: v for k, v in tables.state_dict().items()}


class Logits(NamedTuple):
    """Next-token logits; either field is None when no position of that kind is output."""

    text: torch.Tensor | None    # (B, Tt, text_vocab_total)
    image: torch.Tensor | None   # (B, Ti, image_vocab_size)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a per-layer layout and an optional KV cache."""

    def __init__(self, cfg: DalleConfig, layout: str, masks: LayoutMasks) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.layout = cfg.n_head, cfg.n_embd, layout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.masks = masks
        self.backend = "auto"
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.qkv(x).split(self.n_embd, dim=2)                   # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)                 # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)                 # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)                 # (B, nh, T, hs)
        if input_pos is None:
            y = full_attention(q, k, v, layout=self.layout, masks=self.masks, backend=self.backend,
                               dropout_p=self.dropout if self.training else 0.0)
        else:
            if self.kv_cache is None:
                raise RuntimeError("cached forward (input_pos given) needs setup_cache() first")
            k, v = self.kv_cache.update(input_pos, k, v)                  # (B, nh, S, hs)
            y = cached_attention(q, k.to(q.dtype), v.to(q.dtype), layout=self.layout, masks=self.masks,
                                 input_pos=input_pos)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                  # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: DalleConfig, layout: str, masks: LayoutMasks) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layout, masks)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), input_pos)
        return x + self.mlp(self.ln_2(x))


STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}   # how weights files store floats


class DalleTransformer(nn.Module):
    """Decoder-only transformer over a fixed-length caption followed by image codes.

    Attributes:
        gradient_checkpointing: recompute each block in the backward pass (training only).
        attn_backend: ``auto`` (written out on a CPU in bf16, FlexAttention for sparse layouts on CUDA), ``sdpa``,
            ``flex`` or ``math``.
    """

    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.config = cfg
        self.masks = LayoutMasks(cfg)
        d = cfg.n_embd
        self.text_emb = nn.Embedding(cfg.text_vocab_total, d)
        self.text_pos = nn.Embedding(cfg.text_len, d)
        self.image_emb = nn.Embedding(cfg.image_vocab_size, d)
        self.image_row = nn.Embedding(cfg.image_grid, d)
        self.image_col = nn.Embedding(cfg.image_grid, d)
        if cfg.spell_pos:
            add_spell_tables(self, cfg, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cfg.layout_of(i), self.masks) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, cfg.text_vocab_total, bias=False)
        self.image_head = nn.Linear(d, cfg.image_vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.reset_parameters()

    @property
    def attn_backend(self) -> str:
        return self.blocks[0].attn.backend if len(self.blocks) else "auto"

    @attn_backend.setter
    def attn_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
        for block in self.blocks:
            block.attn.backend = backend

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("weight"):      # LayerNorm gains
                    nn.init.ones_(p)
                else:
                    nn.init.zeros_(p)
            elif name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=resid_std)
            elif name.startswith("spell_"):
                nn.init.zeros_(p)       # a model given these tables later starts out unchanged
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    @torch.no_grad()
    def init_image_codes(self, code_vectors: torch.Tensor, *, seed: int = 0, noise: float = 0.5) -> None:
        """Start the image-code embedding and output head from what each code looks like.

        A random init gives the model no idea that two of 8,192 codes are nearly the same patch;
        here code ``k`` starts at a fixed random projection of ``code_vectors[k]`` (e.g. the 4x4
        pixel patch of a k-means codebook, centred), so similar patches start with similar
        embeddings and similar logits, plus independent N(0, 0.02 * noise) so every code stays
        distinguishable. Both matrices end with the usual init's overall std of 0.02.

        Args:
            code_vectors: (image_vocab_size, D) float, one row per code.
            seed: seed of the projection and the noise.
            noise: std of the per-code noise relative to 0.02.
        """
        v = self.config.image_vocab_size
        if code_vectors.dim() != 2 or code_vectors.shape[0] != v:
            raise ValueError(f"code_vectors must be ({v}, D), got {tuple(code_vectors.shape)}")
        if not bool(torch.isfinite(code_vectors).all()):
            raise ValueError("code_vectors hold non-finite values")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        g = torch.Generator().manual_seed(seed)
        x = code_vectors.detach().float().cpu()
        x = x - x.mean(dim=0, keepdim=True)
        proj = torch.randn(x.shape[1], self.config.n_embd, generator=g) / math.sqrt(x.shape[1])
        y = x @ proj                                                          # (V, n_embd)
        y = y / y.std().clamp_min(1e-8)                                       # unit overall std
        for layer in (self.image_emb, self.image_head):
            w = y + noise * torch.randn(y.shape, generator=g)
            layer.weight.copy_((0.02 * w / w.std()).to(layer.weight))

    # ---- embeddings ----------------------------------------------------------------------
    def _embed_text(self, text_tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.text_emb(text_tokens) + self.text_pos(pos)              # (B, Tt, C)
        if self.config.spell_pos:
            x = x + spell_embedding(self, text_tokens, self.config)
        return x

    def _embed_image(self, image_tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Image codes at raster indices ``index`` (T,): code + row + column embeddings."""
        g = self.config.image_grid
        row = torch.div(index, g, rounding_mode="floor")
        return self.image_emb(image_tokens) + self.image_row(row) + self.image_col(index % g)  # (B, Ti, C)

    def _trunk(self, x: torch.Tensor, input_pos: torch.Tensor | None) -> torch.Tensor:
        x = self.drop(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and input_pos is None:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, input_pos)
        return self.ln_f(x)

    # ---- forward, prefill, decode_step ----------------------------------------------------
    def _check_inputs(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> None:
        cfg = self.config
        if text_tokens.ndim != 2 or text_tokens.size(1) != cfg.text_len:
            raise ValueError(f"expected text_tokens of shape (B, {cfg.text_len}), got {tuple(text_tokens.shape)}")
        if image_tokens.ndim != 2 or not 0 <= image_tokens.size(1) < cfg.image_len:
            raise ValueError(f"expected image_tokens of shape (B, n), 0 <= n < {cfg.image_len} (the codes "
                             f"predicted from), got {tuple(image_tokens.shape)}")
        if image_tokens.size(0) != text_tokens.size(0):
            raise ValueError("text_tokens and image_tokens have different batch sizes")

    def _embed(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """``[text ; image]`` embeddings from sequence position 0: (B, text_len + n, C)."""
        self._check_inputs(text_tokens, image_tokens)
        device = text_tokens.device
        x = self._embed_text(text_tokens, torch.arange(self.config.text_len, device=device))  # (B, Tt, C)
        n = image_tokens.size(1)
        if n:
            x = torch.cat([x, self._embed_image(image_tokens, torch.arange(n, device=device))], 1)
        return x

    def _heads(self, h: torch.Tensor) -> Logits:
        t = self.config.text_len
        return Logits(self.text_head(h[:, : t - 1]),       # (B, text_len - 1, Vt)
                      self.image_head(h[:, t - 1:]))       # (B, n + 1, Vi)

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> Logits:
        """Next-token logits of ``[text_tokens ; image_tokens]`` (no cache).

        Args:
            text_tokens: (B, text_len) int64 captions.
            image_tokens: (B, n) int64 codes in raster order, ``0 <= n < image_len``: the codes the
                outputs predict from (training passes ``image_tokens[:, :-1]``).
        Returns:
            ``Logits(text (B, text_len - 1, Vt), image (B, n + 1, Vi))``.
        """
        return self._heads(self._trunk(self._embed(text_tokens, image_tokens), None))

    def hidden(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states of :meth:`forward`, before the heads: (B, text_len + n, C).

        Position ``text_len - 1 + i`` predicts image code ``i`` through ``image_head``; training
        uses this to compute the image loss without materialising the logits.
        """
        return self._trunk(self._embed(text_tokens, image_tokens), None)

    def prefill(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> Logits:
        """:meth:`forward` through the KV cache, which it fills from sequence position 0.

        Args:
            text_tokens: (B, text_len) int64.
            image_tokens: (B, k) int64 kept codes, ``0 <= k < image_len``.
        Returns:
            ``Logits(text (B, text_len - 1, Vt), image (B, k + 1, Vi))``.
        """
        x = self._embed(text_tokens, image_tokens)
        input_pos = torch.arange(x.size(1), device=x.device)
        return self._heads(self._trunk(x, input_pos))

    def decode_step(self, image_tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Feed image codes at sequence positions ``input_pos`` through the KV cache.

        Args:
            image_tokens: (B, T) int64 codes.
            input_pos: (T,) int64 sequence positions (``text_len + raster index``).
        Returns:
            (B, T, Vi) logits of the codes that follow each of them.
        """
        x = self._embed_image(image_tokens, input_pos - self.config.text_len)   # (B, T, C)
        return self.image_head(self._trunk(x, input_pos))

    # ---- KV cache ------------------------------------------------------------------------
    def setup_cache(self, max_batch_size: int, *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> None:
        """Allocate zeroed K/V buffers of the full sequence for ``max_batch_size`` rows per layer.

        Defaults to the parameters' device and dtype. Reuses the existing cache when it
        already fits (same device/dtype, at least as many rows).
        """
        p = next(self.parameters())
        device = torch.device(device) if device is not None else p.device
        dtype = dtype or p.dtype
        cache = self.blocks[0].attn.kv_cache if len(self.blocks) else None
        if (cache is not None and cache.max_batch_size >= max_batch_size
                and cache.k_cache.device == device and cache.k_cache.dtype == dtype):
            return
        cfg = self.config
        for block in self.blocks:
            block.attn.kv_cache = KVCache(max_batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head,
                                          device=device, dtype=dtype)

    def clear_cache(self) -> None:
        """Free the KV cache."""
        for block in self.blocks:
            block.attn.kv_cache = None

    # ---- accounting ----------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` leaves out the token and position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in (self.text_emb, self.text_pos, self.image_emb,
                                                  self.image_row, self.image_col))
        return n

    def flops_per_token(self, *, training: bool = True, attention: str = "full") -> float:
        """Matmul FLOPs per sequence position of a training sequence (text_len + image_len - 1).

        ``6 N + 12 L T d`` style: N counts the block weights plus the head each position
        actually uses (averaged over positions); embeddings are lookups and not counted.
        Attention costs 4 d FLOPs per (query, key) pair forward; ``attention`` picks the keys
        per query: ``full`` (T, the usual MFU convention), ``causal`` ((T+1)/2) or ``mask``
        (the mean allowed keys of each layer's layout). Backward is twice forward.

        Returns:
            FLOPs per token (forward + backward when ``training``, forward only otherwise).
        """
        cfg = self.config
        T = cfg.text_len + cfg.image_len - 1
        d = cfg.n_embd
        n_block = sum(m.weight.numel() for blk in self.blocks for m in blk.modules() if isinstance(m, nn.Linear))
        n_head = ((cfg.text_len - 1) * cfg.text_vocab_total + cfg.image_len * cfg.image_vocab_size) * d / T
        if attention == "full":
            keys = cfg.n_layer * T
        elif attention == "causal":
            keys = cfg.n_layer * (T + 1) / 2
        elif attention == "mask":
            keys = sum(self.masks.bool_mask(blk.attn.layout, torch.device("cpu"))[:T, :T].sum().item() / T
                       for blk in self.blocks)
        else:
            raise ValueError(f"attention must be 'full', 'causal' or 'mask', got {attention!r}")
        forward = 2 * (n_block + n_head) + 4 * d * keys
        return 3 * forward if training else forward

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, directory: str | Path, *, weights_dtype: str = "float32") -> Path:
        """Write ``dalle.safetensors`` (parameters only) and ``dalle.json`` (the config).

        Args:
            directory: where to write.
            weights_dtype: ``float32`` or ``float16`` storage (half the file; the weights are read
                back as float32, so the model computes exactly as the stored values say).
        """
        if weights_dtype not in STORAGE_DTYPES:
            raise ValueError(f"weights_dtype must be one of {sorted(STORAGE_DTYPES)}, got {weights_dtype!r}")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        dtype = STORAGE_DTYPES[weights_dtype]
        state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
                 for k, v in self.state_dict().items()}
        atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write_text(d / CONFIG_FILE, json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        log.info("saved transformer to %s", d)
        return d

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu") -> "DalleTransformer":
        """Rebuild a model saved by :meth:`save` on ``device``, in eval mode."""
        d = Path(directory)
        cfg_path, weights_path = d / CONFIG_FILE, d / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights_path.is_file():
            raise ValueError(f"{d} is not a transformer checkpoint: need {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            cfg = DalleConfig.from_dict(json.loads(cfg_path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: invalid JSON ({e})") from None
        with torch.device("meta"):
            model = cls(cfg)
        try:
            state = {k: v.float() if v.is_floating_point() else v       # float16 storage computes in float32
                     for k, v in load_file(str(weights_path), device=str(device)).items()}
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"{weights_path} does not match its config: {first}") from None
        return model.eval()
