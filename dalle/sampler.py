"""Token-level sampling: prefill the caption, then decode image codes one position at a time.

Randomness: every row has its own ``torch.Generator`` seeded by an integer (see
:func:`image_seed`), which draws ``image_len`` uniforms up front, one per code
position. Code ``j`` is drawn by inverse CDF from uniform ``j`` of its row, so
an image depends on its seed (and the model and options) only: never on the
batch size, the other rows, or whether the KV cache is used.

Classifier-free guidance runs the conditional rows and the null-caption rows in
ONE doubled batch that shares one KV cache; the sampled code is fed to both
halves and ``logits = uncond + g * (cond - uncond)``. With ``g == 1`` the batch
is not doubled, so the result is exactly the conditional path.

``SampleOutput.logprobs[b, j]`` is ``log p(code_j | caption, codes_<j)`` under the
model's *conditional*, *untempered*, *unfiltered* distribution (no guidance,
temperature, top-k or top-p), for sampled and kept (prefix) codes alike.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from dalle.filters import filter_logits

log = logging.getLogger(__name__)

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_compiled_decode: dict[str, Callable] = {}


class SampleOutput(NamedTuple):
    image_tokens: torch.Tensor   # (B, image_len) int64
    logprobs: torch.Tensor       # (B, image_len) float32, conditional untempered log-probabilities


def image_seed(seed: int, prompt: str, index: int) -> int:
    """The seed of image ``index`` of ``prompt`` in a run seeded with ``seed`` (63-bit, via SHA-256)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{int(index)}\x00{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_sampling_options(*, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                           guidance: float = 1.0) -> None:
    """Raise ValueError with one clear message for an invalid sampling option."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not guidance >= 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")


def row_uniforms(seeds: Sequence[int], n: int) -> torch.Tensor:
    """(B, n) float32 uniforms in [0, 1): row b from its own CPU generator seeded with seeds[b]."""
    rows = [torch.rand(n, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows) if rows else torch.empty(0, n)


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: (B, V) filtered logits and (B,) uniforms -> (B,) int64 indices.

    Returns the first index whose cumulative probability exceeds ``u * total``; tokens
    with zero probability (``-inf`` logits) are never returned.
    """
    probs = torch.softmax(logits.float(), dim=-1)                       # (B, V)
    cdf = torch.cumsum(probs, dim=-1)                                   # (B, V)
    total = cdf[:, -1:].contiguous()                                    # (B, 1)
    idx = torch.searchsorted(cdf, u.to(cdf.dtype)[:, None] * total, right=True)   # (B, 1)
    last = torch.searchsorted(cdf, total, right=False)                  # last token with mass
    return torch.minimum(idx, last).squeeze(1)


def decode_one_token(model: torch.nn.Module, image_tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """One cached decoding step: codes (R, 1) at ``input_pos`` (1,) -> next-code logits (R, Vi)."""
    return model(None, image_tokens, input_pos).image[:, -1]


def _decode_fn(compile_mode: str | None) -> Callable:
    if compile_mode is None:
        return decode_one_token
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    if compile_mode not in _compiled_decode:
        _compiled_decode[compile_mode] = torch.compile(decode_one_token, mode=compile_mode, fullgraph=True)
    return _compiled_decode[compile_mode]


class _CachedStepper:
    """Prefill once, then feed one code per step through the KV cache."""

    def __init__(self, model, text_rows: torch.Tensor, cache_dtype: torch.dtype | None,
                 compile_mode: str | None) -> None:
        self.model, self.text_rows = model, text_rows
        self.text_len = model.config.text_len
        model.setup_cache(text_rows.size(0), device=text_rows.device, dtype=cache_dtype)
        self.decode = _decode_fn(compile_mode)

    def start(self, prefix_rows: torch.Tensor | None) -> torch.Tensor:
        k = 0 if prefix_rows is None else prefix_rows.size(1)
        input_pos = torch.arange(self.text_len + k, device=self.text_rows.device)
        return self.model(self.text_rows, prefix_rows, input_pos).image        # (R, k+1, Vi)

    def step(self, codes: torch.Tensor, j: int) -> torch.Tensor:
        input_pos = torch.tensor([self.text_len + j], device=codes.device)
        return self.decode(self.model, codes[:, None], input_pos)               # (R, Vi)


class _RecomputeStepper:
    """No cache: a full forward over the caption and every code so far at each step."""

    def __init__(self, model, text_rows: torch.Tensor) -> None:
        self.model, self.text_rows = model, text_rows
        self.image_rows = text_rows.new_zeros(text_rows.size(0), 0)

    def _forward(self) -> torch.Tensor:
        dummy = self.image_rows.new_zeros(self.image_rows.size(0), 1)   # the last code is never input
        return self.model(self.text_rows, torch.cat([self.image_rows, dummy], 1)).image   # (R, n+1, Vi)

    def start(self, prefix_rows: torch.Tensor | None) -> torch.Tensor:
        if prefix_rows is not None:
            self.image_rows = prefix_rows
        return self._forward()

    def step(self, codes: torch.Tensor, j: int) -> torch.Tensor:
        self.image_rows = torch.cat([self.image_rows, codes[:, None]], 1)
        return self._forward()[:, -1]


def _check_tokens(name: str, tokens: torch.Tensor, shape: tuple[int, int], vocab: int) -> None:
    if tokens.ndim != 2 or tuple(tokens.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tokens.shape)}")
    if tokens.is_floating_point():
        raise ValueError(f"{name} must be integer ids, got dtype {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"{name} must be in [0, {vocab}), got [{int(tokens.min())}, {int(tokens.max())}]")


@torch.inference_mode()
def sample(model: torch.nn.Module, text_tokens: torch.Tensor, *, null_text_tokens: torch.Tensor | None = None,
           guidance: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seeds: Sequence[int], prefix_image_tokens: torch.Tensor | None = None,
           progress: bool = False, use_cache: bool = True, compile_mode: str | None = None) -> SampleOutput:
    """Sample image codes for a batch of captions.

    Args:
        model: a ``DalleTransformer`` (temporarily put in eval mode).
        text_tokens: (B, text_len) int64 captions.
        null_text_tokens: (B, text_len) null captions; required when ``guidance != 1``.
        guidance: classifier-free guidance scale g >= 0 (1: off, the plain conditional path).
        temperature: > 0, divides the guided logits.
        top_k: keep the k most likely codes (None: off).
        top_p: nucleus mass in (0, 1] (None: off).
        seeds: one integer per row (see :func:`image_seed`).
        prefix_image_tokens: (B, k) codes kept as the first k codes in raster order, k < image_len.
        progress: show a tqdm bar over code positions.
        use_cache: decode with the KV cache (False: recompute the full sequence at each step).
        compile_mode: ``torch.compile`` mode for the cached decode step (e.g. ``reduce-overhead``
            for CUDA graphs); None runs eagerly.
    Returns:
        :class:`SampleOutput` with (B, image_len) codes and their conditional log-probabilities.
    """
    cfg = model.config
    check_sampling_options(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance)
    B = text_tokens.size(0) if text_tokens.ndim == 2 else -1
    _check_tokens("text_tokens", text_tokens, (B, cfg.text_len), cfg.text_vocab_total)
    seeds = list(seeds)
    if len(seeds) != B:
        raise ValueError(f"need one seed per row: {B} rows, {len(seeds)} seeds")
    device = next(model.parameters()).device
    text_rows = text_tokens.to(device)
    guided = guidance != 1.0
    if guided:
        if null_text_tokens is None:
            raise ValueError("guidance != 1 needs null_text_tokens (the null caption)")
        _check_tokens("null_text_tokens", null_text_tokens, (B, cfg.text_len), cfg.text_vocab_total)
        text_rows = torch.cat([text_rows, null_text_tokens.to(device)], 0)   # (2B, text_len)
    k = 0
    prefix_rows = None
    if prefix_image_tokens is not None:
        k = prefix_image_tokens.size(1) if prefix_image_tokens.ndim == 2 else -1
        if not 0 <= k < cfg.image_len:
            raise ValueError(f"prefix_image_tokens must be (B, k) with 0 <= k < {cfg.image_len}, "
                             f"got {tuple(prefix_image_tokens.shape)}")
        _check_tokens("prefix_image_tokens", prefix_image_tokens, (B, k), cfg.image_vocab_size)
        if k:
            prefix_rows = prefix_image_tokens.to(device)
            prefix_rows = torch.cat([prefix_rows, prefix_rows], 0) if guided else prefix_rows

    u = row_uniforms(seeds, cfg.image_len).to(device)                   # (B, image_len)
    image_tokens = torch.zeros(B, cfg.image_len, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, cfg.image_len, dtype=torch.float32, device=device)
    if k:
        image_tokens[:, :k] = prefix_image_tokens.to(device)
    on_cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with autocast:
            if use_cache:
                stepper = _CachedStepper(model, text_rows, torch.bfloat16 if on_cuda else None, compile_mode)
            else:
                stepper = _RecomputeStepper(model, text_rows)
            logits = stepper.start(prefix_rows)                         # (R, k+1, Vi)
            if k:
                cond = torch.log_softmax(logits[:B, :k].float(), dim=-1)   # (B, k, Vi)
                logprobs[:, :k] = cond.gather(-1, image_tokens[:, :k, None]).squeeze(-1)
            next_logits = logits[:, -1]                                 # (R, Vi)
            for j in tqdm(range(k, cfg.image_len), disable=not progress, desc="sampling", leave=False):
                cond = next_logits[:B].float()                          # (B, Vi)
                mixed = cond
                if guided:
                    uncond = next_logits[B:].float()
                    mixed = uncond + guidance * (cond - uncond)
                filtered = filter_logits(mixed, temperature=temperature, top_k=top_k, top_p=top_p)
                codes = sample_from_logits(filtered, u[:, j])           # (B,)
                image_tokens[:, j] = codes
                logprobs[:, j] = torch.log_softmax(cond, dim=-1).gather(-1, codes[:, None]).squeeze(-1)
                if j + 1 < cfg.image_len:
                    fed = torch.cat([codes, codes], 0) if guided else codes
                    next_logits = stepper.step(fed, j)
    finally:
        model.train(was_training)
    return SampleOutput(image_tokens, logprobs)
