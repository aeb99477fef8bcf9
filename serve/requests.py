"""Checking what the page sends: limits, sampling options and uploaded images.

Every refusal is a :class:`RequestError` with an HTTP status and one sentence the
page shows as it is; nothing here lets a traceback reach the client.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from PIL import Image

MAX_SEED = 2**63 - 1


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx) and a message for the page."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; bigger requests get a 4xx with the limit in the message."""

    max_n: int = 16                     # images per prompt
    max_candidates: int = 64            # candidates per prompt (reranking)
    max_prompts: int = 8                # prompts (lines) per request
    max_prompt_chars: int = 300         # characters per prompt
    max_upload_bytes: int = 8 * 2**20   # uploaded image file
    max_pixels: int = 4096 * 4096       # uploaded image, from its header, before decoding
    queue_size: int = 4                 # requests waiting behind the running one
    keep_jobs: int = 32                 # finished requests whose images stay downloadable

    def __post_init__(self) -> None:
        for name in ("max_n", "max_candidates", "max_prompts", "max_prompt_chars", "max_upload_bytes",
                     "max_pixels", "queue_size", "keep_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"limit {name} must be >= 1, got {getattr(self, name)}")

    def public(self) -> dict[str, int]:
        """The limits the page shows next to the inputs."""
        return {"max_n": self.max_n, "max_candidates": self.max_candidates, "max_prompts": self.max_prompts,
                "max_prompt_chars": self.max_prompt_chars, "max_upload_bytes": self.max_upload_bytes,
                "max_pixels": self.max_pixels}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _int(form: Mapping[str, Any], key: str, label: str, *, default: int | None, lo: int | None = None,
         hi: int | None = None) -> int | None:
    value = form.get(key)
    if _blank(value):
        return default
    try:
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{label} must be a whole number, got {str(value)[:40]!r}") from None
    if lo is not None and number < lo:
        raise RequestError(f"{label} must be at least {lo}, got {number}")
    if hi is not None and number > hi:
        raise RequestError(f"{label} must be at most {hi}, got {number} (the server's limit)")
    return number


def _float(form: Mapping[str, Any], key: str, label: str, *, default: float | None) -> float | None:
    value = form.get(key)
    if _blank(value):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{label} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"{label} must be a finite number, got {value!r}")
    return number


def sampling_options(form: Mapping[str, Any], limits: Limits,
                     recommended: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """n, seed and the sampling options of a request, checked; raises :class:`RequestError`.

    Temperature, top-k, top-p and guidance the request leaves out are the model's ``recommended``
    ones (``Dalle.sampling``), else the :class:`dalle.SamplingOptions` defaults."""
    if recommended is None:
        from dalle.options import SamplingOptions
        recommended = SamplingOptions().recommendable()
    rec = dict(recommended)
    n = _int(form, "n", "n (images per prompt)", default=4, lo=1, hi=limits.max_n)
    seed = _int(form, "seed", "seed", default=0, lo=0, hi=MAX_SEED)
    temperature = _float(form, "temperature", "temperature", default=rec["temperature"])
    if temperature <= 0:
        raise RequestError(f"temperature must be > 0, got {temperature:g}")
    top_k = _int(form, "top_k", "top-k", default=rec["top_k"], lo=1)
    top_p = _float(form, "top_p", "top-p", default=rec["top_p"])
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError(f"top-p must be in (0, 1], got {top_p:g}")
    guidance = _float(form, "guidance", "guidance", default=rec["guidance"])
    if guidance < 0:
        raise RequestError(f"guidance must be >= 0, got {guidance:g}")
    candidates = _int(form, "candidates", "candidates", default=None, lo=1, hi=limits.max_candidates)
    if candidates is not None and candidates < n:
        raise RequestError(f"candidates ({candidates}) must be at least n ({n}): the best n of them are kept")
    return dict(n=n, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                candidates=candidates)


def parse_prompts(text: Any, limits: Limits) -> list[str]:
    """One prompt per non-empty line; raises :class:`RequestError` for none, too many or too long."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise RequestError("empty prompt: type a caption such as \"a red circle above a blue square\"")
    if len(prompts) > limits.max_prompts:
        raise RequestError(f"{len(prompts)} prompts: at most {limits.max_prompts} per request (one per line)")
    for p in prompts:
        if len(p) > limits.max_prompt_chars:
            raise RequestError(f"a prompt is {len(p)} characters long: at most {limits.max_prompt_chars}")
    return prompts


def parse_keep(form: Mapping[str, Any], image_grid: int) -> tuple[int | None, float | None]:
    """(keep_rows, keep_fraction) of an edit: exactly one of them, in range."""
    mode = str(form.get("keep_mode") or "rows")
    if mode == "rows":
        rows = _int(form, "keep_rows", "rows to keep", default=image_grid // 2, lo=0, hi=image_grid - 1)
        return rows, None
    if mode == "fraction":
        frac = _float(form, "keep_fraction", "fraction to keep", default=0.5)
        if not 0 <= frac < 1:
            raise RequestError(f"fraction to keep must be in [0, 1), got {frac:g}")
        return None, frac
    raise RequestError(f"keep mode must be 'rows' or 'fraction', got {mode[:20]!r}")


_REASONS = {"empty_image": "the uploaded file is empty",
            "corrupt_image": "the upload is not an image the server can read (use PNG, JPEG or WebP)",
            "truncated_image": "the uploaded image is cut short (truncated file)",
            "too_small": "the uploaded image is too small"}


def decode_upload(data: bytes, limits: Limits, resolution: int) -> Image.Image:
    """Uploaded bytes -> the RGB image the model sees (resolution x resolution), or :class:`RequestError`.

    Goes through the training decoder (``common.image_decode``): the same pixel-count guard,
    read from the header before any pixel is decoded, the same alpha compositing and crop.
    """
    from common.image_decode import DecodeSettings, SkipSample, decode_image_uint8

    if len(data) > limits.max_upload_bytes:
        raise RequestError(f"upload is {len(data) / 2**20:.1f} MiB: at most {limits.max_upload_bytes / 2**20:g} MiB",
                           status=413)
    try:
        pixels = decode_image_uint8(data, DecodeSettings(max_pixels=limits.max_pixels, min_size=1),
                                    resolution=resolution)                  # (3, R, R) uint8
    except SkipSample as e:
        if e.reason == "too_large":
            raise RequestError(f"the uploaded image has too many pixels ({str(e).split(': ', 1)[-1]}); "
                               f"the limit is {limits.max_pixels:,}", status=413) from None
        raise RequestError(_REASONS.get(e.reason, f"the upload was refused ({e.reason})")) from None
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
