"""Token-level sampling: prefill the caption, then decode image codes one position at a time.

Randomness: every row has its own ``torch.Generator`` seeded by an integer (see
:func:`image_seed`), which draws ``image_len`` uniforms up front, one per code
position. Code ``j`` is drawn by inverse CDF from uniform ``j`` of its row, so
an image depends on its seed (and the model and options) only: never on the
batch size, the other rows, or whether the KV cache is used.

Whatever the logits, every drawn index lies in the vocabulary: a tiny temperature is
greedy (see :func:`dalle.filters.apply_temperature`), and non-finite logits (from the
model's weights, or from a guidance scale that overflows float32) are a ``ValueError``
naming the cause, checked once after the loop so that decoding never waits on the GPU.

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
from typing import Any, Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from dalle.filters import filter_logits
from dalle.options import SamplingOptions

log = logging.getLogger(__name__)

_compiled_decode: dict[str, Callable] = {}


class SampleOutput(NamedTuple):
    image_tokens: torch.Tensor   # (B, image_len) int64
    logprobs: torch.Tensor       # (B, image_len) float32, conditional untempered log-probabilities


def image_seed(seed: int, prompt: str, index: int) -> int:
    """The seed of image ``index`` of ``prompt`` in a run seeded with ``seed`` (63-bit, via SHA-256)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{int(index)}\x00{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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
    # NaN rows (non-finite logits, reported by the caller) must still give an index in range
    return torch.minimum(idx, last).clamp_(0, logits.size(-1) - 1).squeeze(1)


def decode_one_token(model: torch.nn.Module, image_tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """One cached decoding step: codes (R, 1) at ``input_pos`` (1,) -> next-code logits (R, Vi)."""
    return model.decode_step(image_tokens, input_pos)[:, -1]


def _decode_fn(compile_mode: str | None) -> Callable:
    if compile_mode is None:
        return decode_one_token
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

    def start(self, prefix_rows: torch.Tensor) -> torch.Tensor:
        return self.model.prefill(self.text_rows, prefix_rows).image             # (R, k+1, Vi)

    def step(self, codes: torch.Tensor, j: int) -> torch.Tensor:
        input_pos = torch.tensor([self.text_len + j], device=codes.device)
        return self.decode(self.model, codes[:, None], input_pos)               # (R, Vi)


class _RecomputeStepper:
    """No cache: a full forward over the caption and every code so far at each step."""

    def __init__(self, model, text_rows: torch.Tensor) -> None:
        self.model, self.text_rows = model, text_rows
        self.image_rows = text_rows.new_zeros(text_rows.size(0), 0)

    def _forward(self) -> torch.Tensor:
        return self.model(self.text_rows, self.image_rows).image                   # (R, n+1, Vi)

    def start(self, prefix_rows: torch.Tensor) -> torch.Tensor:
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
def sample(model: torch.nn.Module, text_tokens: torch.Tensor, *, seeds: Sequence[int],
           null_text_tokens: torch.Tensor | None = None, prefix_image_tokens: torch.Tensor | None = None,
           options: SamplingOptions | None = None, progress: bool | Callable[[int, int], None] = False,
           **sampling: Any) -> SampleOutput:
    """Sample image codes for a batch of captions.

    Args:
        model: a ``DalleTransformer`` (temporarily put in eval mode; never moved).
        text_tokens: (B, text_len) int64 captions.
        seeds: one integer per row (see :func:`image_seed`).
        null_text_tokens: (B, text_len) null captions; required when ``guidance != 1``.
        prefix_image_tokens: (B, k) codes kept as the first k codes in raster order, k < image_len.
        options: :class:`dalle.options.SamplingOptions` (temperature, top_k, top_p, guidance,
            dtype, compile, use_cache are used here); ``sampling`` keywords override its fields.
        progress: True shows a tqdm bar over code positions; a callable is called as
            ``progress(positions_done, positions_total)`` after each sampled position.
    Returns:
        :class:`SampleOutput` with (B, image_len) codes and their conditional log-probabilities.
    Raises:
        ValueError: bad inputs, or non-finite logits (the message says whether the model's
            outputs or the guidance scale caused them).
    """
    opts = SamplingOptions.of(options, **sampling)
    cfg = model.config
    B = text_tokens.size(0) if text_tokens.ndim == 2 else -1
    _check_tokens("text_tokens", text_tokens, (B, cfg.text_len), cfg.text_vocab_total)
    seeds = list(seeds)
    if len(seeds) != B:
        raise ValueError(f"need one seed per row: {B} rows, {len(seeds)} seeds")
    device = next(model.parameters()).device
    text_rows = text_tokens.to(device)
    guidance = float(opts.guidance)
    guided = guidance != 1.0
    if guided:
        if null_text_tokens is None:
            raise ValueError("guidance != 1 needs null_text_tokens (the null caption)")
        _check_tokens("null_text_tokens", null_text_tokens, (B, cfg.text_len), cfg.text_vocab_total)
        text_rows = torch.cat([text_rows, null_text_tokens.to(device)], 0)   # (2B, text_len)
    k = 0
    prefix_rows = text_rows.new_zeros(text_rows.size(0), 0)                 # (R, 0)
    if prefix_image_tokens is not None:
        k = prefix_image_tokens.size(1) if prefix_image_tokens.ndim == 2 else -1
        if not 0 <= k < cfg.image_len:
            raise ValueError(f"prefix_image_tokens must be (B, k) with 0 <= k < {cfg.image_len}, "
                             f"got {tuple(prefix_image_tokens.shape)}")
        _check_tokens("prefix_image_tokens", prefix_image_tokens, (B, k), cfg.image_vocab_size)
        prefix_rows = prefix_image_tokens.to(device)
        prefix_rows = torch.cat([prefix_rows, prefix_rows], 0) if guided else prefix_rows

    u = row_uniforms(seeds, cfg.image_len).to(device)                   # (B, image_len)
    image_tokens = torch.zeros(B, cfg.image_len, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, cfg.image_len, dtype=torch.float32, device=device)
    model_bad = torch.zeros((), dtype=torch.bool, device=device)       # non-finite model logits seen
    mixed_bad = torch.zeros((), dtype=torch.bool, device=device)       # non-finite guided logits seen
    if k:
        image_tokens[:, :k] = prefix_image_tokens.to(device)
    dtype = opts.compute_dtype(device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        with autocast:
            if opts.use_cache:
                stepper = _CachedStepper(model, text_rows, None if dtype == torch.float32 else dtype,
                                         opts.compile)
            else:
                stepper = _RecomputeStepper(model, text_rows)
            logits = stepper.start(prefix_rows)                         # (R, k+1, Vi)
            if k:
                cond = torch.log_softmax(logits[:B, :k].float(), dim=-1)   # (B, k, Vi)
                logprobs[:, :k] = cond.gather(-1, image_tokens[:, :k, None]).squeeze(-1)
            next_logits = logits[:, -1]                                 # (R, Vi)
            report = progress if callable(progress) else None
            for j in tqdm(range(k, cfg.image_len), disable=report is not None or not progress, desc="sampling",
                          leave=False):
                model_bad |= ~torch.isfinite(next_logits).all()
                cond = next_logits[:B].float()                          # (B, Vi)
                mixed = cond
                if guided:
                    uncond = next_logits[B:].float()
                    mixed = uncond + guidance * (cond - uncond)
                    mixed_bad |= ~torch.isfinite(mixed).all()
                filtered = filter_logits(mixed, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p)
                codes = sample_from_logits(filtered, u[:, j])           # (B,)
                image_tokens[:, j] = codes
                if report is not None:
                    report(j + 1 - k, cfg.image_len - k)
                logprobs[:, j] = torch.log_softmax(cond, dim=-1).gather(-1, codes[:, None]).squeeze(-1)
                if j + 1 < cfg.image_len:
                    fed = torch.cat([codes, codes], 0) if guided else codes
                    next_logits = stepper.step(fed, j)
    finally:
        model.train(was_training)
    if bool(model_bad):
        raise ValueError("the model produced non-finite logits (NaN or inf): its weights or its "
                         f"{'bfloat16/float16 ' if dtype != torch.float32 else ''}activations are not finite")
    if bool(mixed_bad):
        raise ValueError(f"guidance {guidance:g} overflows the logits to non-finite values: use a smaller "
                         "guidance scale")
    return SampleOutput(image_tokens, logprobs)
