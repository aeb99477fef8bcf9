"""The prompt suite of ``dalle eval``: three parts, each prompt carrying its checkable description.

Parts: ``in_distribution`` (scenes and signs drawn like the training data),
``heldout_combos`` (scenes using colour-shape pairs never seen in training) and
``heldout_words`` (signs with held-out words, "OpenAI" first).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from synth.scenes import render_scene, scene_sample
from synth.signs import (
    DEFAULT_HELD_OUT_WORDS,
    describe_sign,
    render_sign,
    sample_sign,
)

PARTS = ("in_distribution", "heldout_combos", "heldout_words")
KINDS = ("scene", "sign")


@dataclass
class SuitePrompt:
    """One prompt of the suite and the description the checker verifies it against."""

    part: str
    prompt: str
    description: dict[str, Any]


def _sign(rng: np.random.Generator, split: str, word: str | None = None) -> tuple[str, dict[str, Any]]:
    spec = sample_sign(rng, split=split)
    if word is not None:
        spec.update(word=word, text=word.upper())
    caption, claims = describe_sign(spec, rng)
    return caption, {**spec, "caption": caption, "claims": claims}


def default_suite(prompts_per_part: int = 4, seed: int = 0, kinds: Sequence[str] = KINDS) -> list[SuitePrompt]:
    """The default suite: ``prompts_per_part`` prompts in each of the three parts, distinct captions.

    ``kinds`` keeps scenes or signs only (spelling work: ``("sign",)`` gives signs of training words in
    distribution and the held-out words, no held-out combinations); with both, the suite is the same
    as always.
    """
    if prompts_per_part < 1:
        raise ValueError(f"prompts_per_part must be >= 1, got {prompts_per_part}")
    kinds = tuple(kinds)
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be some of {KINDS}, got {kinds}")
    rng = np.random.default_rng([seed, 6])
    scenes, signs = "scene" in kinds, "sign" in kinds
    makers = {
        "in_distribution": lambda i: (scene_sample(rng, split="train") if scenes and (i % 2 == 0 or not signs)
                                      else _sign(rng, "train")),
        "heldout_combos": lambda i: scene_sample(rng, split="heldout"),
        "heldout_words": lambda i: _sign(rng, "heldout", DEFAULT_HELD_OUT_WORDS[i % len(DEFAULT_HELD_OUT_WORDS)]),
    }
    parts = [p for p in PARTS if (p != "heldout_combos" or scenes) and (p != "heldout_words" or signs)]
    suite: list[SuitePrompt] = []
    for part in parts:
        seen: set[str] = set()
        i = 0
        while len(seen) < prompts_per_part and i < 100 * prompts_per_part:
            caption, desc = makers[part](len(seen))
            i += 1
            if caption not in seen:
                seen.add(caption)
                suite.append(SuitePrompt(part, caption, desc))
    return suite


def render_description(description: dict[str, Any], resolution: int) -> Image.Image:
    """A real render of a suite description (the reference a generated image is compared with)."""
    if description["kind"] == "scene":
        return render_scene(description, resolution)
    return render_sign(description, resolution)[0]


def save_suite(suite: list[SuitePrompt], path: str | Path) -> Path:
    """Write a suite as JSON (a list of {part, prompt, description})."""
    path = Path(path)
    path.write_text(json.dumps([asdict(p) for p in suite], indent=1) + "\n")
    return path


def load_suite(path: str | Path) -> list[SuitePrompt]:
    """Read a suite written by :func:`save_suite` (or by hand, in the same format)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read prompt suite {path}: {e}") from e
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"prompt suite {path} must be a non-empty JSON list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or {"part", "prompt", "description"} - set(item):
            raise ValueError(f"prompt suite {path}: every entry needs part, prompt and description")
        if item["description"].get("kind") not in ("scene", "sign") or "claims" not in item["description"]:
            raise ValueError(f"prompt suite {path}: description of {item['prompt']!r} needs kind and claims")
        out.append(SuitePrompt(str(item["part"]), str(item["prompt"]), dict(item["description"])))
    return out
