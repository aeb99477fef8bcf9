"""Hard negative captions: the true caption of a synthetic sample with one fact changed.

A contrastive scorer that only tells "a storefront" from "three circles" is no
oracle for reranking; it must notice when one colour, count, shape or relation of
a scene is wrong, or one letter of a sign's word. This module makes those
captions from a sample's truth (the ``.json`` written by :mod:`synth.scenes` /
:mod:`synth.signs`) by editing the true caption in place, so the negative keeps
the template, word order and every other word, and differs only in the fact changed:

- scenes: ``colour`` (one group's colour), ``count`` (one group's count +-1, in
  1..4, with the article and plural fixed), ``shape`` (one group's shape),
  ``relation`` (the relation reversed: left <-> right, above <-> below);
- signs: ``letter`` (one letter of the word replaced by another, case kept; two of
  these, at different positions), ``board_colour`` (when the caption names it),
  ``word`` (another word of the same source and length range).

Reranking asks the other question: which of several images fits one caption. So the truth also
gives **image** negatives (:func:`image_negatives`): the sample's spec with one fact the caption
states made false, to be rendered and scored against the unchanged caption: ``colour`` / ``shape``
(one object of a stated group gets another colour / shape, never a held-out pair of the spec),
``count`` (one object of a stated group removed), ``relation`` (the stated subject and object swap
places), ``size`` (one object of a group stated "small" / "large" drawn at the other size), ``blob``
(one object of a stated group misdrawn as an irregular polygon of its colour: what an undertrained
model draws); for signs ``letter`` (one letter of the drawn text replaced).

A sample without a usable truth (another dataset's ``.json``, or none) has no hard
negatives. Every choice comes from the ``rng`` passed in.
"""
from __future__ import annotations

import re
import string
from typing import Any

import numpy as np

from synth.scenes import COLORS, SHAPES, SIZES
from synth.signs import BOARD_COLORS, DEFAULT_HELD_OUT_WORDS, caption_case
from synth.words import sample_word

SCENE_KINDS = ("colour", "count", "shape", "relation")
SIGN_KINDS = ("letter", "letter", "board_colour", "word")
KINDS = tuple(dict.fromkeys(SCENE_KINDS + SIGN_KINDS))
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
_COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
_SIZE = r"(?:small|little|large|big)"
# relation phrases of synth.scenes, longest first, and their reversal
_REVERSED = [("to the left of", "to the right of"), ("to the right of", "to the left of"),
             ("on the left of", "on the right of"), ("on the right of", "on the left of"),
             ("left of", "right of"), ("right of", "left of"), ("above", "below"), ("over", "under"),
             ("below", "above"), ("under", "over"), ("beneath", "above")]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _group_match(caption: str, color: str, shape: str) -> re.Match | None:
    """The phrase of one (colour, shape) group: count word, optional size word, colour, shape(s)."""
    pattern = rf"\b(a|an|one|two|three|four) ({_SIZE} )?{color} {shape}(s?)\b"
    return re.search(pattern, caption)


def _phrase(count_word: str, size: str | None, color: str, shape: str, count: int) -> str:
    head = f"{size or ''}{color} {shape}{'s' if count > 1 else ''}"
    if count == 1:
        word = "one" if count_word == "one" else _article(head)
    else:
        word = _NUMBERS[count]
    return f"{word} {head}"


def _replace(caption: str, m: re.Match, text: str) -> str:
    return caption[:m.start()] + text + caption[m.end():]


def scene_negative(caption: str, claims: dict[str, Any], kind: str, rng: np.random.Generator) -> str | None:
    """The caption with one fact of ``kind`` changed, or None when the scene has no such fact."""
    groups = claims.get("objects") or []
    if kind == "relation":
        rel = claims.get("relation")
        if not rel:
            return None
        for old, new in _REVERSED:
            m = re.search(rf"\b{old}\b", caption)
            if m is not None:
                return _replace(caption, m, new)
        return None
    if not groups:
        return None
    order = [int(i) for i in rng.permutation(len(groups))]
    existing = {(g["color"], g["shape"]) for g in groups}
    for i in order:
        g = groups[i]
        m = _group_match(caption, g["color"], g["shape"])
        if m is None:
            continue
        count_word, size = m.group(1), m.group(2)
        count = _COUNT_WORDS[count_word]
        if kind == "colour":
            options = [c for c in COLORS if c != g["color"] and (c, g["shape"]) not in existing]
            if options:
                new = str(options[int(rng.integers(len(options)))])
                return _replace(caption, m, _phrase(count_word, size, new, g["shape"], count))
        elif kind == "shape":
            options = [s for s in SHAPES if s != g["shape"] and (g["color"], s) not in existing]
            if options:
                new = str(options[int(rng.integers(len(options)))])
                return _replace(caption, m, _phrase(count_word, size, g["color"], new, count))
        elif kind == "count":
            options = [c for c in (count - 1, count + 1) if 1 <= c <= 4]
            new_count = options[int(rng.integers(len(options)))]
            return _replace(caption, m, _phrase(count_word, size, g["color"], g["shape"], new_count))
        else:
            raise ValueError(f"unknown scene negative kind {kind!r}; known: {SCENE_KINDS}")
    return None


def letter_change(word: str, rng: np.random.Generator, avoid: set[int] = frozenset()) -> tuple[str, int] | None:
    """``word`` with one letter (at a position not in ``avoid``) replaced by another, case kept."""
    positions = [i for i, c in enumerate(word) if c.isalpha() and i not in avoid]
    if not positions:
        return None
    i = positions[int(rng.integers(len(positions)))]
    old = word[i].upper()
    letters = [c for c in string.ascii_uppercase if c != old]
    new = letters[int(rng.integers(len(letters)))]
    new = new if word[i].isupper() else new.lower()
    return word[:i] + new + word[i + 1:], i


def sign_negatives(caption: str, truth: dict[str, Any], rng: np.random.Generator,
                   kinds: tuple[str, ...] = SIGN_KINDS) -> list[tuple[str, str]]:
    """``(kind, caption)`` negatives of a sign caption (the word is the last thing the caption says)."""
    word = (truth.get("claims") or {}).get("word") or truth.get("word")
    if not word:
        return []
    at = caption.rfind(word)
    if at < 0:
        return []
    before, after = caption[:at], caption[at + len(word):]
    out: list[tuple[str, str]] = []
    used: set[int] = set()
    for kind in kinds:
        if kind == "letter":
            changed = letter_change(word, rng, used)
            if changed is not None:
                used.add(changed[1])
                out.append((kind, before + changed[0] + after))
        elif kind == "board_colour":
            color = (truth.get("claims") or {}).get("board_color")
            m = re.search(rf"\b{color}\b", before) if color else None
            if m is not None:
                options = [c for c in BOARD_COLORS if c != color]
                new = options[int(rng.integers(len(options)))]
                out.append((kind, before[:m.start()] + new + before[m.end():] + word + after))
        elif kind == "word":
            held = (*DEFAULT_HELD_OUT_WORDS, word)
            other = caption_case(rng, sample_word(rng, held))
            out.append((kind, before + other + after))
        else:
            raise ValueError(f"unknown sign negative kind {kind!r}; known: {sorted(set(SIGN_KINDS))}")
    return out


def hard_negatives(caption: str, truth: dict[str, Any] | None, rng: np.random.Generator) -> list[tuple[str, str]]:
    """The hard negatives of one sample: ``[(kind, caption), ...]`` (at most 4, maybe none).

    Args:
        caption: the sample's caption as stored (case kept).
        truth: the sample's ``.json`` (``kind`` "scene" or "sign" and ``claims``), or None.
        rng: where every choice comes from.
    Returns:
        Negatives that differ from ``caption`` (kinds in :data:`KINDS`); [] for other data.
    """
    if not isinstance(truth, dict) or not isinstance(truth.get("claims"), dict):
        return []
    if truth.get("kind") == "scene":
        out = [(k, scene_negative(caption, truth["claims"], k, rng)) for k in SCENE_KINDS]
        out = [(k, c) for k, c in out if c is not None]
    elif truth.get("kind") == "sign":
        out = sign_negatives(caption, truth, rng)
    else:
        return []
    seen = {caption}
    unique = []
    for k, c in out:
        if c not in seen:
            seen.add(c)
            unique.append((k, c))
    return unique


IMAGE_SCENE_KINDS = ("colour", "count", "shape", "relation", "size", "blob")
IMAGE_SIGN_KINDS = ("letter",)


def blob_outline(rng: np.random.Generator) -> list[list[float]]:
    """An irregular polygon in the unit box: 5-8 vertices at jittered angles and radii of 0.25-0.55."""
    n = int(rng.integers(5, 9))
    angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
    radii = rng.uniform(0.25, 0.55, n)
    return [[round(0.5 + float(r * np.cos(a)), 4), round(0.5 + float(r * np.sin(a)), 4)] for a, r in zip(angles, radii)]


def _members(objects: list[dict[str, Any]], group: dict[str, Any]) -> list[int]:
    return [i for i, o in enumerate(objects) if o.get("color") == group.get("color") and o.get("shape") == group.get("shape")]


def scene_image_negative(spec: dict[str, Any], kind: str, rng: np.random.Generator) -> dict[str, Any] | None:
    """The scene spec with one fact its caption states made false (see the module docstring), or None."""
    claims = spec.get("claims") or {}
    objects = [dict(o) for o in spec.get("objects") or []]
    if kind == "relation":
        rel = claims.get("relation")
        if not rel:
            return None
        a, b = _members(objects, rel["subject"]), _members(objects, rel["object"])
        if len(a) != 1 or len(b) != 1:
            return None
        i, j = a[0], b[0]
        for key in ("cx", "cy"):
            objects[i][key], objects[j][key] = objects[j][key], objects[i][key]
        return {**spec, "objects": objects}
    groups = [g for g in claims.get("objects") or [] if _members(objects, g)]
    if kind == "size":
        groups = [g for g in groups if g.get("size") in SIZES]
    if not groups:
        return None
    stated = {(g["color"], g["shape"]) for g in groups}
    barred = stated | {tuple(p) for p in spec.get("held_out") or []}
    for gi in rng.permutation(len(groups)):
        g = groups[int(gi)]
        members = _members(objects, g)
        i = members[int(rng.integers(len(members)))]
        if kind == "count":
            return {**spec, "objects": objects[:i] + objects[i + 1:]}
        if kind == "size":
            other = next(name for name in SIZES if name != g["size"])
            lo, hi = SIZES[other]
            objects[i].update(size=other, d=round(float(rng.uniform(lo, hi)), 4))
            return {**spec, "objects": objects}
        if kind == "blob":
            objects[i]["outline"] = blob_outline(rng)
            return {**spec, "objects": objects}
        if kind == "colour":
            options = [c for c in COLORS if (c, g["shape"]) not in barred]
            field = "color"
        elif kind == "shape":
            options = [s for s in SHAPES if (g["color"], s) not in barred]
            field = "shape"
        else:
            raise ValueError(f"unknown scene image negative kind {kind!r}; known: {IMAGE_SCENE_KINDS}")
        if options:
            objects[i][field] = str(options[int(rng.integers(len(options)))])
            return {**spec, "objects": objects}
    return None


def image_negatives(truth: dict[str, Any] | None, rng: np.random.Generator, n: int = 1) -> list[tuple[str, dict[str, Any]]]:
    """Up to ``n`` ``(kind, spec)`` image negatives of a sample's truth, of different kinds (signs: letters at
    different positions); [] for other data. Render a spec with :func:`synth.recolour.render_spec`."""
    if n < 1 or not isinstance(truth, dict) or not isinstance(truth.get("claims"), dict):
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    if truth.get("kind") == "scene" and truth.get("objects"):
        for k in rng.permutation(len(IMAGE_SCENE_KINDS)):
            spec = scene_image_negative(truth, IMAGE_SCENE_KINDS[int(k)], rng)
            if spec is not None:
                out.append((IMAGE_SCENE_KINDS[int(k)], spec))
            if len(out) == n:
                break
    elif truth.get("kind") == "sign" and isinstance(truth.get("text"), str):
        used: set[int] = set()
        for _ in range(n):
            changed = letter_change(truth["text"], rng, used)
            if changed is None:
                break
            used.add(changed[1])
            out.append(("letter", {**truth, "text": changed[0]}))
    return out
