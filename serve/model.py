"""The one model the server loads, behind the public ``dalle.Dalle`` object.

The web page needs ``generate`` / ``edit`` with a progress callback, and a few facts
about the model (resolution, code grid, caption length) to draw the edit overlay and
to warn about truncated prompts; all of it comes from the ``Dalle`` object.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelInfo:
    """What the page shows and checks against."""

    name: str
    resolution: int      # image side in pixels
    image_grid: int      # codes per side
    text_len: int        # caption tokens; longer prompts are truncated
    sampling: dict       # temperature, top_k, top_p, guidance: the model's recommended ones over the defaults


class ServedModel:
    """A :class:`dalle.Dalle` loaded once, with what the page needs to know about it.

    Args:
        path: model bundle directory (None: the embedded default model).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(self, path: str | Path | None = None, device: str = "auto"):
        from dalle import Dalle
        self.dalle = Dalle.from_pretrained(path, device=device)
        cfg = self.dalle.config
        self.info = ModelInfo(name=str(self.dalle.path or "default"), resolution=self.dalle.resolution,
                              image_grid=cfg.image_grid, text_len=cfg.text_len,
                              sampling=self.dalle.sampling.recommendable())

    def n_tokens(self, prompt: str) -> int:
        """Caption tokens of ``prompt`` before truncation."""
        return self.dalle.tokenizer.n_tokens(prompt)

    def generate(self, prompts: Sequence[str], *, n: int, seed: int, progress: Progress, **sampling: Any) -> list:
        """``len(prompts) * n`` :class:`dalle.pipeline.Generation` objects."""
        return self.dalle.generate(list(prompts), n=n, seed=seed, progress=progress, **sampling)

    def edit(self, image: Image.Image, prompt: str, *, keep_rows: int | None, keep_fraction: float | None, n: int,
             seed: int, progress: Progress, **sampling: Any) -> list:
        """``n`` completions of the kept part of ``image``."""
        return self.dalle.edit(image, prompt, keep_rows=keep_rows, keep_fraction=keep_fraction, n=n, seed=seed,
                               progress=progress, **sampling)
