"""The sampling options: one dataclass, validated once, carried from the CLI to the sampler."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from dalle.rerank import check_scorer_name

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The settings a bundle may recommend (``bundle.json`` ``meta.sampling``, like a generation config):
# used by generate / edit / serve / eval whenever the caller does not give them.
RECOMMENDABLE = ("temperature", "top_k", "top_p", "guidance")


@dataclass(frozen=True)
class SamplingOptions:
    """How codes are drawn and candidates chosen (everything but prompts, n and seed).

    Attributes:
        temperature: > 0, divides the guided logits; tiny values are greedy decoding.
        top_k: keep the k most likely codes (None: off).
        top_p: nucleus mass in (0, 1] (None: off).
        guidance: classifier-free guidance scale >= 0 (1: off).
        candidates: draw this many per prompt (>= n) and keep the n best by ``scorer`` (None: off).
        batch_size: rows sampled together (guidance doubles them internally).
        scorer: ``"auto"`` (the model's ``"clip"`` scorer when it has one, else ``"logprob"``), a name
            in ``dalle.rerank.SCORERS``, ``"clip"`` (the model's image-caption scorer,
            ``dalle.rerank.MODEL_SCORERS``) or a callable ``scorer(Candidates) -> (N,)``.
        dtype: ``auto`` (bfloat16 autocast and cache on CUDA, float32 elsewhere), ``float32``,
            ``bfloat16`` or ``float16``.
        compile: ``torch.compile`` mode of the cached decode step (None: eager).
        use_cache: decode with the KV cache (False: recompute the whole sequence each step).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance: float = 1.0
    candidates: int | None = None
    batch_size: int = 16
    scorer: str | Callable = "auto"
    dtype: str = "auto"
    compile: str | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not (math.isfinite(self.temperature)
                                                                    and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and (not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.guidance, (int, float)) or not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        if self.candidates is not None and (not _is_int(self.candidates) or self.candidates < 1):
            raise ValueError(f"candidates must be an integer >= 1, got {self.candidates!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        check_scorer_name(self.scorer)   # ValueError for an unknown name
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be None or one of {COMPILE_MODES}, got {self.compile!r}")
        if not isinstance(self.use_cache, bool):
            raise ValueError(f"use_cache must be True or False, got {self.use_cache!r}")

    @classmethod
    def of(cls, options: "SamplingOptions | None" = None, **sampling: Any) -> "SamplingOptions":
        """``options`` with the keyword overrides applied (the defaults when None).

        Raises:
            ValueError: an unknown option name or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(sampling) - known)
        if unknown:
            raise ValueError(f"unknown sampling option(s) {unknown}; known: {sorted(known)}")
        if options is None:
            return cls(**sampling)
        return dataclasses.replace(options, **sampling) if sampling else options

    @classmethod
    def recommended(cls, settings: Any) -> "SamplingOptions":
        """The defaults with a bundle's recommended ``settings`` (a dict of :data:`RECOMMENDABLE` keys) applied.

        Raises:
            ValueError: not a dict, a key that cannot be recommended, or an invalid value.
        """
        if settings is None:
            return cls()
        if not isinstance(settings, dict):
            raise ValueError(f"recommended sampling settings must be a JSON object, got {type(settings).__name__}")
        unknown = sorted(set(settings) - set(RECOMMENDABLE))
        if unknown:
            raise ValueError(f"unknown recommended sampling setting(s) {unknown}; known: {list(RECOMMENDABLE)}")
        return cls(**settings)

    def recommendable(self) -> dict[str, Any]:
        """The :data:`RECOMMENDABLE` fields of these options, by name."""
        return {name: getattr(self, name) for name in RECOMMENDABLE}

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The autocast and KV-cache dtype on ``device``."""
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (a callable scorer is recorded by name)."""
        d = dataclasses.asdict(self)
        if callable(self.scorer):
            d["scorer"] = getattr(self.scorer, "__name__", type(self.scorer).__name__)
        return d
