"""Synthetic signs whose truth is known: storefronts, signs and posters showing one word.

Words come from an open vocabulary (:mod:`synth.words`: real words, pronounceable
and random strings of 2-10 letters) so that spelling is learned rather than
memorised; a fixed word list can still be given. Words are drawn in capitals;
the caption writes the word in upper, capitalised or lower case, so a model
learns that every case of a letter asks for the same capital. Held-out words
(``DEFAULT_HELD_OUT_WORDS``: "OpenAI", "MUSEUM", "ROBOTS" and three made-up
words that are in no list of the project) never appear in ``split="train"``
captions or images. Each sample's metadata holds the word, layout, colours, font
and the text's bounding box, and the claims of its caption (word, board colour)
for ``evaluation.checker``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from synth.fonts import BUILTIN, load_font, sign_fonts
from synth.scenes import SPLITS, SUPERSAMPLE, write_shards
from synth.words import MAX_LETTERS, MIN_LETTERS, sample_word

log = logging.getLogger(__name__)

# The checker's lexicon of rival words (and the word list of the first default models).
WORDS: tuple[str, ...] = (
    "CAFE", "BAKERY", "PIZZA", "BOOKS", "HOTEL", "SALE", "BANK", "DINER", "MARKET", "FLOWERS",
    "MUSIC", "SUSHI", "TOYS", "PHARMACY", "GARAGE", "CINEMA", "JAZZ", "DELI", "TACOS", "BURGER",
    "NOODLES", "GIFTS", "SHOES", "CANDY", "FRUIT", "FISH", "COFFEE", "PUB", "GYM", "ZOO", "EXIT",
    "STOP", "HELLO", "WELCOME", "PETS", "DONUTS", "LAUNDRY", "BIKES", "TOOLS", "RADIO", "MUSEUM",
    "ROBOTS", "OpenAI")
DEFAULT_HELD_OUT_WORDS: tuple[str, ...] = ("OpenAI", "MUSEUM", "ROBOTS", "KEDUVA", "ZUGEVU", "NIMUZA")
LAYOUTS = ("storefront", "sign", "poster")
BOARD_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "blue": (40, 70, 200), "green": (30, 140, 60), "yellow": (245, 210, 40),
    "white": (245, 245, 245), "black": (25, 25, 25)}
TEXT_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250), "black": (15, 15, 15), "yellow": (250, 220, 40), "red": (210, 30, 30),
    "blue": (30, 60, 190)}
# Text colours legible on each board (luminance contrast >= ~90 of 255).
READABLE_ON: dict[str, tuple[str, ...]] = {
    "red": ("white", "yellow"), "blue": ("white", "yellow"), "green": ("white", "yellow"),
    "yellow": ("black", "red", "blue"), "white": ("black", "red", "blue"), "black": ("white", "yellow")}
WALLS = ((225, 215, 195), (170, 160, 150), (120, 110, 100), (210, 210, 215), (185, 120, 95))
SKIES = ((170, 205, 240), (200, 220, 240), (225, 230, 235))
# Boards in normalised coordinates (x0, y0, x1, y1).
BOARDS = {"storefront": (0.04, 0.08, 0.96, 0.40), "sign": (0.06, 0.22, 0.94, 0.60),
          "poster": (0.08, 0.10, 0.92, 0.90)}
_CAPTIONS = {
    "storefront": ("a storefront that says {q}", "a shop front with a sign that says {q}",
                   "a {c} storefront sign that reads {q}", "a store called {q}"),
    "sign": ("a {c} sign that reads {q}", "a sign that says {q}", "a {c} sign with the word {q}",
             "a street sign reading {q}"),
    "poster": ("a poster with the word {q}", "a {c} poster that says {q}", "a poster reading {q}",
               "a {c} poster with the text {q}")}


def check_words(words: Iterable[str]) -> tuple[str, ...]:
    """Validate a word list: 2-10 letters A-Z (any case), no duplicates ignoring case."""
    out = tuple(words)
    seen: set[str] = set()
    for w in out:
        if not (MIN_LETTERS <= len(w) <= MAX_LETTERS and w.isascii() and w.isalpha()):
            raise ValueError(f"sign word {w!r} must be {MIN_LETTERS}-{MAX_LETTERS} ASCII letters")
        if w.upper() in seen:
            raise ValueError(f"sign word {w!r} appears twice")
        seen.add(w.upper())
    return out


def split_words(split: str, words: Sequence[str] | None,
                held_out: Sequence[str] = DEFAULT_HELD_OUT_WORDS) -> tuple[str, ...] | None:
    """The words a split draws from: train excludes held-out words, heldout is only them.

    ``words=None`` is the open vocabulary: train then returns None (draw with
    :func:`synth.words.sample_word`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    held = {w.upper() for w in check_words(held_out)}
    if words is None:
        if split == "train":
            return None
        words = ()
    words = check_words(words)
    if split == "train":
        out = tuple(w for w in words if w.upper() not in held)
    else:
        out = tuple(w for w in check_words(held_out))
    if not out:
        raise ValueError(f"no words left for split {split!r}")
    return out


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def caption_case(rng: np.random.Generator, word: str) -> str:
    """The word as a caption writes it: upper case (half), capitalised or lower case (a quarter each)."""
    r = rng.random()
    return word.upper() if r < 0.5 else word.capitalize() if r < 0.75 else word.lower()


def sample_sign(rng: np.random.Generator, *, words: Sequence[str] | None = None,
                held_out: Sequence[str] = DEFAULT_HELD_OUT_WORDS, split: str = "train",
                fonts: Sequence[str] | None = None) -> dict[str, Any]:
    """Draw a sign spec: word, layout, colours, font and where the text goes.

    ``word`` is the word as the caption writes it; ``text`` is what is drawn (capitals).
    Held-out words keep their own spelling ("OpenAI"); training words get a random case.

    Args:
        rng: the random generator.
        words: a fixed word list, or None for the open vocabulary.
        held_out: words never drawn by ``split="train"``; the only words of ``split="heldout"``.
        split: ``"train"`` or ``"heldout"``.
        fonts: font names to draw from (default: :func:`synth.fonts.sign_fonts`).
    """
    pool = split_words(split, words, held_out)
    if pool is None:
        word = caption_case(rng, sample_word(rng, held_out))
    else:
        word = _pick(rng, pool)
        word = word if split == "heldout" else caption_case(rng, word)
    layout = _pick(rng, LAYOUTS)
    board = _pick(rng, list(BOARD_COLORS))
    text = _pick(rng, READABLE_ON[board])
    fonts = list(fonts) if fonts else sign_fonts()
    return {"kind": "sign", "word": word, "text": word.upper(), "layout": layout, "board_color": board,
            "text_color": text, "font": _pick(rng, fonts),
            "width_frac": round(float(rng.uniform(0.62, 0.86)), 4),
            "wall": list(_pick(rng, WALLS)), "sky": list(_pick(rng, SKIES)), "split": split}


def stroke_width(font: str, size: int) -> int:
    """Extra stroke that makes Pillow's thin built-in font as heavy as the bold faces."""
    return max(1, round(size / 16)) if font == BUILTIN else 0


def fit_font_size(text: str, font: str, max_w: float, max_h: float) -> int:
    """The largest font size (pixels) whose ink box fits ``max_w`` x ``max_h``."""
    ref = 100
    x0, y0, x1, y1 = load_font(font, ref).getbbox(text, stroke_width=stroke_width(font, ref))
    scale = min(max_w / max(x1 - x0, 1), max_h / max(y1 - y0, 1))
    return max(1, int(ref * scale))


def draw_text_centered(draw: ImageDraw.ImageDraw, text: str, font: str, size: int,
                       centre: tuple[float, float], fill: Any) -> tuple[float, float, float, float]:
    """Draw ``text`` with its ink box centred on ``centre``; returns the ink box in pixels."""
    f, stroke = load_font(font, size), stroke_width(font, size)
    x0, y0, x1, y1 = f.getbbox(text, stroke_width=stroke)
    ox, oy = centre[0] - (x0 + x1) / 2, centre[1] - (y0 + y1) / 2
    draw.text((ox, oy), text, font=f, fill=fill, stroke_width=stroke, stroke_fill=fill)
    return ox + x0, oy + y0, ox + x1, oy + y1


def _draw_scenery(draw: ImageDraw.ImageDraw, spec: dict[str, Any], s: int) -> None:
    wall, sky = tuple(spec["wall"]), tuple(spec["sky"])
    if spec["layout"] == "storefront":
        draw.rectangle([0, 0, s, s], fill=wall)
        draw.rectangle([0, int(0.9 * s), s, s], fill=(90, 90, 90))                     # pavement
        draw.rectangle([int(0.1 * s), int(0.5 * s), int(0.45 * s), int(0.9 * s)], fill=(150, 190, 215))
        draw.rectangle([int(0.6 * s), int(0.48 * s), int(0.85 * s), int(0.9 * s)], fill=(70, 45, 30))
    elif spec["layout"] == "sign":
        draw.rectangle([0, 0, s, s], fill=sky)
        draw.rectangle([0, int(0.85 * s), s, s], fill=(90, 150, 70))                    # grass
        draw.rectangle([int(0.46 * s), int(0.6 * s), int(0.54 * s), int(0.88 * s)], fill=(110, 110, 110))
    else:
        draw.rectangle([0, 0, s, s], fill=wall)


def render_sign(spec: dict[str, Any], resolution: int) -> tuple[Image.Image, list[float]]:
    """Render a sign spec; returns the image and the text ink box normalised to [0, 1]."""
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    s = resolution * SUPERSAMPLE
    image = Image.new("RGB", (s, s))
    draw = ImageDraw.Draw(image)
    _draw_scenery(draw, spec, s)
    bx0, by0, bx1, by1 = (v * s for v in BOARDS[spec["layout"]])
    board = BOARD_COLORS[spec["board_color"]]
    border = tuple(int(v * 0.6) for v in board)
    draw.rectangle([bx0, by0, bx1, by1], fill=border)
    inset = 0.02 * s
    draw.rectangle([bx0 + inset, by0 + inset, bx1 - inset, by1 - inset], fill=board)
    max_w = (bx1 - bx0) * spec["width_frac"]
    max_h = min((by1 - by0) * 0.6, 0.3 * s)
    size = fit_font_size(spec["text"], spec["font"], max_w, max_h)
    box = draw_text_centered(draw, spec["text"], spec["font"], size, ((bx0 + bx1) / 2, (by0 + by1) / 2),
                             TEXT_COLORS[spec["text_color"]])
    return image.reduce(SUPERSAMPLE), [round(v / s, 4) for v in box]


def describe_sign(spec: dict[str, Any], rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    """A caption for the sign and its claims ``{"word", "board_color" | None, "layout"}``."""
    template = _pick(rng, _CAPTIONS[spec["layout"]])
    quoted = f'"{spec["word"]}"' if rng.random() < 0.5 else spec["word"]
    caption = template.format(q=quoted, c=spec["board_color"])
    color = spec["board_color"] if "{c}" in template else None
    return caption, {"word": spec["word"], "board_color": color, "layout": spec["layout"]}


def sign_sample(rng: np.random.Generator, resolution: int, *, words: Sequence[str] | None = None,
                held_out: Sequence[str] = DEFAULT_HELD_OUT_WORDS, split: str = "train",
                fonts: Sequence[str] | None = None) -> tuple[Image.Image, str, dict[str, Any]]:
    """Draw, render and caption one sign: ``(image, caption, description)``."""
    spec = sample_sign(rng, words=words, held_out=held_out, split=split, fonts=fonts)
    image, box = render_sign(spec, resolution)
    caption, claims = describe_sign(spec, rng)
    return image, caption, {**spec, "text_bbox": box, "caption": caption, "claims": claims}


def build_signs(out_dir: str | Path, n: int, *, resolution: int = 64, seed: int = 0, split: str = "train",
                shard_size: int = 1000, words: Sequence[str] | None = None,
                held_out: Sequence[str] = DEFAULT_HELD_OUT_WORDS,
                fonts: Sequence[str] | None = None) -> list[Path]:
    """Write ``n`` synthetic signs as webdataset shards (``{key}.png``, ``.txt``, ``.json``).

    Args:
        out_dir: directory for the ``NNNNN.tar`` shards.
        n: number of samples.
        resolution: image side in pixels.
        seed: the random seed.
        split: ``"train"`` (never a held-out word) or ``"heldout"`` (only held-out words).
        shard_size: samples per shard.
        words: a fixed word list (default: the open vocabulary of :mod:`synth.words`);
        held_out: the held-out words; fonts: font names (default: installed).
    Returns:
        The shard paths.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    split_words(split, words, held_out)       # validate before writing anything
    fonts = list(fonts) if fonts else sign_fonts()
    rng = np.random.default_rng([seed, SPLITS.index(split), 2])
    samples = (sign_sample(rng, resolution, words=words, held_out=held_out, split=split, fonts=fonts)
               for _ in range(n))
    paths = write_shards(out_dir, samples, shard_size=shard_size, prefix="sign")
    log.info("wrote %d %s signs (fonts %s) in %d shards to %s", n, split, fonts, len(paths), out_dir)
    return paths
