"""The open vocabulary of the sign builder: real words, pronounceable strings, random letters.

Spelling is learned rather than memorised only if the words on the signs are
many and varied, so each sign draws its word from three sources: a sample of
6,000 real English words (``assets/words.txt``, SCOWL; licence in
``assets/WORDS_LICENSE``), pronounceable consonant-vowel strings, and random
letter strings, 2-10 letters long. Held-out words never come out of
:func:`sample_word`, whatever the source, compared case-insensitively.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Collection

import numpy as np

WORDS_FILE = Path(__file__).resolve().parent / "assets" / "words.txt"
MIN_LETTERS, MAX_LETTERS = 2, 10
# Length distribution of the made-up strings: short and medium words dominate, long ones stay rare
# because ten capitals at 64 px leave about 4 px per letter.
LENGTHS = np.arange(MIN_LETTERS, MAX_LETTERS + 1)
LENGTH_WEIGHTS = np.array([3, 8, 10, 10, 9, 7, 4, 2, 1], dtype=float)
LENGTH_WEIGHTS /= LENGTH_WEIGHTS.sum()
SOURCES = ("real", "pronounceable", "random")
SOURCE_WEIGHTS = (0.5, 0.3, 0.2)
CONSONANTS = "BCDFGHJKLMNPRSTVWXYZ"
VOWELS = "AEIOU"


@functools.lru_cache(maxsize=1)
def real_words() -> tuple[str, ...]:
    """The real-word list, upper case."""
    return tuple(w.strip().upper() for w in WORDS_FILE.read_text().split() if w.strip())


def pronounceable(rng: np.random.Generator, n: int) -> str:
    """An ``n``-letter string alternating consonants and vowels (starting with either)."""
    start = int(rng.integers(2))
    return "".join(rng.choice(list(CONSONANTS if (i + start) % 2 == 0 else VOWELS)) for i in range(n))


def random_letters(rng: np.random.Generator, n: int) -> str:
    """``n`` uniformly random capitals."""
    return "".join(chr(65 + int(c)) for c in rng.integers(0, 26, size=n))


def sample_word(rng: np.random.Generator, held_out: Collection[str] = (), *,
                real: tuple[str, ...] | None = None) -> str:
    """One sign word in capitals, never a held-out word (compared case-insensitively).

    Args:
        rng: the random generator.
        held_out: words that must never be drawn.
        real: the real-word list (default :func:`real_words`).
    """
    held = {w.upper() for w in held_out}
    real = real_words() if real is None else real
    for _ in range(1000):
        source = SOURCES[int(rng.choice(len(SOURCES), p=SOURCE_WEIGHTS))]
        if source == "real":
            word = real[int(rng.integers(len(real)))]
        else:
            n = int(rng.choice(LENGTHS, p=LENGTH_WEIGHTS))
            word = pronounceable(rng, n) if source == "pronounceable" else random_letters(rng, n)
        if word not in held:
            return word
    raise ValueError("could not draw a word that is not held out")
