"""Argument types that reject bad values with one clear line."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(cast: Callable[[str], float], ok: Callable[[float], bool], expect: str) -> Callable[[str], float]:
    """An argparse type: ``cast`` the text, then require ``ok(value)``; else say what was expected."""
    kind = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expect}, got {text}")
        return value

    parse.__name__ = expect
    return parse


positive_int = _number(int, lambda v: v >= 1, "a number >= 1")
nonneg_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
nonneg_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1")
share = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
seed = _number(int, lambda v: 0 <= v < 2**63, "a seed in [0, 2**63)")
scale = _number(int, lambda v: 1 <= v <= 32, "a whole number from 1 to 32")


def word_list(text: str) -> list[str]:
    """``WORD,WORD,...``: sign words of 2-10 ASCII letters."""
    from synth.signs import check_words
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"expected comma-separated words, got {text!r}")
    try:
        return list(check_words(words))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
