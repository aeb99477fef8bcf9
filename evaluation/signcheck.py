"""Does a sign image read as the requested word? Template-matching OCR against a lexicon.

1. Locate: the requested word is rendered (capitals, every sign font, ink
   heights 5-18 px, with a blank margin) and matched anywhere in the grey image
   by normalised cross-correlation (either polarity).
2. Read: in the matched window the ink coverage and its sub-pixel ink box are
   estimated; the word and every rival (the other lexicon words by default;
   single-letter edits too with ``with_edits``) are rendered stretched into that
   box, in every font, blurred like the image (sigma fitted on the requested
   word), and correlated with the observed ink. The word and its three closest
   rivals get a small search over the box edges.
3. Decide: the word passes when its correlation is >= ``MIN_SCORE`` and its
   misfit (1 - correlation) is at most ``RESIDUAL_RATIO`` of the best rival's.

It tells the lexicon's words apart on clean, JPEG'd and mildly blurred renders
(see ``evaluation.validate`` for measured rates). It does not read arbitrary
text: it answers "is this the requested word rather than another word of the
lexicon", and text in a style far from the known fonts may fail.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from evaluation.checker import ANALYSIS_RES, CheckResult, blur_matrix, prepare
from train.builders.fonts import load_font, sign_fonts
from train.builders.signs import BOARD_COLORS, WORDS, draw_text_centered, fit_font_size

MIN_SCORE = 0.6        # the word's rendering must correlate this well with the observed ink
RESIDUAL_RATIO = 0.75  # the word's misfit (1 - score) must be this fraction of the best rival's, or less
READ_SIGMAS = (0.0, 0.5, 1.0, 1.5)
HEIGHTS = tuple(float(h) for h in range(5, 19))
_SS = 4
_EDIT = {c: chr((ord(c) - 65 + 13) % 26 + 65) for c in map(chr, range(65, 91))}   # visually unrelated letter


@functools.lru_cache(maxsize=20000)
def word_template(text: str, font: str, height: float) -> np.ndarray | None:
    """Ink coverage (h, w) of ``text`` with ink height ``height`` px, padded by a blank margin."""
    size = fit_font_size(text, font, 10_000, height * _SS)
    pad_x, pad_y = int(round(0.5 * height)), int(round(0.35 * height))
    im = Image.new("L", (ANALYSIS_RES * 2 * _SS, int(height * 2 * _SS)), 0)
    x0, y0, x1, y1 = draw_text_centered(ImageDraw.Draw(im), text, font, size,
                                        (im.width / 2, im.height / 2), 255)
    w = int(np.ceil((x1 - x0) / _SS)) + 2 * pad_x
    h = int(np.ceil((y1 - y0) / _SS)) + 2 * pad_y
    if w > ANALYSIS_RES or h > ANALYSIS_RES:
        return None
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = (int(round(cx - w * _SS / 2)), int(round(cy - h * _SS / 2)))
    crop = im.crop((box[0], box[1], box[0] + w * _SS, box[1] + h * _SS)).reduce(_SS)
    return np.asarray(crop, dtype=np.float32) / 255.0


def _box_sums(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of every h x w window of img, via an integral image: (H-h+1, W-w+1)."""
    ii = np.pad(img, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]


def _ncc(gray: np.ndarray, template: np.ndarray) -> tuple[float, int, int]:
    """Best |normalised cross-correlation| of a template over a (H, W) image: (score, x, y)."""
    t = template.astype(np.float64) - template.mean()
    norm = float(np.sqrt((t * t).sum()))
    if norm < 1e-6:
        return 0.0, 0, 0
    h, w = t.shape
    windows = np.lib.stride_tricks.sliding_window_view(gray, (h, w))     # (H-h+1, W-w+1, h, w)
    num = np.tensordot(windows, t / norm, axes=([2, 3], [0, 1]))
    s1, s2 = _box_sums(gray, h, w), _box_sums(gray * gray, h, w)
    den = np.sqrt(np.clip(s2 - s1 * s1 / (h * w), 1e-12, None))
    score = np.where(den > 1e-2, np.abs(num) / den, 0.0)                 # flat windows never match
    y, x = np.unravel_index(int(score.argmax()), score.shape)
    return float(score[y, x]), int(x), int(y)


def distractors(word: str, lexicon: Sequence[str] = WORDS) -> list[str]:
    """Words the image must not read as better: the other lexicon words."""
    text = word.upper()
    return sorted({w.upper() for w in lexicon} - {text})


def letter_edits(word: str) -> list[str]:
    """Single-letter edits of ``word`` (each letter replaced by an unrelated one): a harder control."""
    text = word.upper()
    return sorted({text[:i] + _EDIT[c] + text[i + 1:] for i, c in enumerate(text) if c in _EDIT} - {text})


@functools.lru_cache(maxsize=4096)
def ink_mask(text: str, font: str, size: int = 96) -> tuple[Image.Image, tuple[float, ...]]:
    """High-resolution ink of ``text`` cropped to its ink box, and the letter boundaries (fractions of width)."""
    im = Image.new("L", (size * (len(text) + 2), size * 3), 0)
    x0, y0, x1, y1 = draw_text_centered(ImageDraw.Draw(im), text, font, size, (im.width / 2, im.height / 2), 255)
    f = load_font(font, size)
    start = f.getbbox(text)[0]
    edges = [0.0] + [(f.getlength(text[:i]) - start) / max(x1 - x0, 1) for i in range(1, len(text))] + [1.0]
    return (im.crop((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1)))),
            tuple(float(np.clip(e, 0, 1)) for e in edges))


def render_in_box(text: str, font: str, box: tuple[float, float, float, float],
                  shape: tuple[int, int], sigma: float = 0.0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Coverage (h, w) of ``text`` stretched to the ink box ``box``, blurred by ``sigma``, and its letter
    column ranges."""
    h, w = shape
    canvas = Image.new("L", (w * _SS, h * _SS), 0)
    x0, y0, x1, y1 = (int(round(v * _SS)) for v in box)
    mask, edges = ink_mask(text, font)
    if x1 - x0 >= 2 and y1 - y0 >= 2:
        canvas.paste(mask.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR), (x0, y0))
    bx = [box[0] + e * (box[2] - box[0]) for e in edges]
    cells = [(max(int(np.floor(a)), 0), min(int(np.ceil(b)), w)) for a, b in zip(bx[:-1], bx[1:])]
    cov = np.asarray(canvas.reduce(_SS), dtype=np.float64) / 255.0
    if sigma > 0:
        cov = blur_matrix(h, sigma) @ cov @ blur_matrix(w, sigma).T
    return cov, cells


def _ink_box(window: np.ndarray, template: np.ndarray, pad: int) -> tuple[np.ndarray, tuple[float, ...]] | None:
    """Ink coverage of a matched window (grown by ``pad``) and its sub-pixel ink box.

    The box is searched only within one pixel of the template's own ink, so board edges are left out.
    """
    th, tw = template.shape
    core = window[pad:pad + th, pad:pad + tw]
    if not (template > 0.7).any() or not (template < 0.05).any():
        return None
    board, ink = np.median(core[template < 0.05]), np.median(core[template > 0.7])
    # blur dilutes thin strokes: take the ink level from the most ink-like pixels instead of the median
    ink = np.percentile(core, 98) if ink > board else np.percentile(core, 2)
    if abs(ink - board) < 0.08:
        return None
    a = np.clip((window - board) / (ink - board), 0.0, 1.0)
    tys, txs = np.nonzero(template > 0.3)
    ry0, ry1 = tys.min() + pad - 1, tys.max() + pad + 2
    rx0, rx1 = txs.min() + pad - 1, txs.max() + pad + 2
    region = np.zeros_like(a)
    region[ry0:ry1, rx0:rx1] = a[ry0:ry1, rx0:rx1]
    cols, rows = region.max(0), region.max(1)
    xs, ys = np.nonzero(cols >= 0.5)[0], np.nonzero(rows >= 0.5)[0]
    if len(xs) < 2 or len(ys) < 2:
        return None
    x0, x1, y0, y1 = xs[0], xs[-1], ys[0], ys[-1]
    box = (x0 + 1 - cols[x0], y0 + 1 - rows[y0], x1 + cols[x1], y1 + rows[y1])
    return a, box


def _score(a: np.ndarray, cov: np.ndarray, cells: list[tuple[int, int]]) -> float:
    """Correlation of the rendered candidate with the observed ink, in the word's columns."""
    c0, c1 = cells[0][0], cells[-1][1]
    x, y = a[:, c0:c1], cov[:, c0:c1]
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 1e-9 else 0.0


def _refine(a: np.ndarray, text: str, font: str, box: tuple[float, ...], sigma: float, passes: int = 2) -> float:
    """Best score of ``text`` over small moves of each ink-box edge (coordinate ascent)."""
    box = list(box)
    best = _score(a, *render_in_box(text, font, tuple(box), a.shape, sigma))
    for _ in range(passes):
        for i in range(4):
            for step in (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0):
                trial = box.copy()
                trial[i] += step
                if trial[2] - trial[0] < 2 or trial[3] - trial[1] < 2:
                    continue
                score = _score(a, *render_in_box(text, font, tuple(trial), a.shape, sigma))
                if score > best:
                    best, box = score, trial
    return best


def read_scores(image: Image.Image, word: str, *, fonts: Sequence[str] | None = None,
                lexicon: Sequence[str] = WORDS, rivals: Sequence[str] | None = None) -> dict[str, Any]:
    """Find the word, then score it and every rival word rendered into the same ink box.

    Returns:
        ``{"best": {score, font, x, y, w, h, template}, "rival", "rival_word", "rgb"}``.
    """
    text = word.upper()
    if not (text.isascii() and text.isalpha()):
        raise ValueError(f"sign word {word!r} must be ASCII letters")
    rgb = prepare(image)
    gray_np = rgb.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114]) / 255.0
    gray = gray_np
    fonts = list(fonts) if fonts else sign_fonts()
    loc: dict[str, Any] = {"score": -1.0}
    for font in fonts:                                   # 1. locate the text line
        for height in HEIGHTS:
            t = word_template(text, font, float(height))
            if t is None:
                continue
            score, x, y = _ncc(gray, t)
            if score > loc["score"]:
                loc = {"score": score, "font": font, "x": x, "y": y, "w": t.shape[1], "h": t.shape[0],
                       "template": t}
    out = {"best": {**loc, "score": 0.0}, "rival": 0.0, "rival_word": None, "rgb": rgb, "located": loc["score"]}
    if loc["score"] < 0:
        return out
    pad = 2
    y0, x0 = loc["y"] - pad, loc["x"] - pad
    window = np.pad(gray_np, pad, mode="edge")[y0 + pad:y0 + pad + loc["h"] + 2 * pad,
                                              x0 + pad:x0 + pad + loc["w"] + 2 * pad]
    ink = _ink_box(window, loc["template"], pad)
    if ink is None:
        return out
    a, box = ink
    fit = {(f, s): _score(a, *render_in_box(text, f, box, a.shape, s)) for f in fonts for s in READ_SIGMAS}
    sigma = max(fit, key=fit.get)[1]           # the image's blur, as seen through the requested word
    scores, best_font = {}, {}
    for cand in [text, *(rivals if rivals is not None else distractors(text, lexicon))]:   # 2. read
        per = {font: _score(a, *render_in_box(cand, font, box, a.shape, sigma)) for font in fonts}
        best_font[cand] = max(per, key=per.get)
        scores[cand] = per[best_font[cand]]
    close = sorted((w for w in scores if w != text), key=scores.get, reverse=True)[:3]
    for cand in (text, *close):                # 3. refine the box for the word and its closest rivals
        scores[cand] = max(scores[cand], _refine(a, cand, best_font[cand], box, sigma))
    rival_word = max((w for w in scores if w != text), key=scores.get, default=None)
    out["best"]["score"] = scores[text]
    out["rival"], out["rival_word"] = (scores[rival_word], rival_word) if rival_word else (0.0, None)
    return out


def board_color(rgb: np.ndarray, best: dict[str, Any]) -> str:
    """The board colour name nearest the median non-ink pixel of the matched word's window."""
    x, y, w, h, t = best["x"], best["y"], best["w"], best["h"], best["template"]
    win = rgb[y:y + h, x:x + w]
    med = np.median(win[t < 0.05], axis=0)
    return min(BOARD_COLORS, key=lambda n: float(((np.asarray(BOARD_COLORS[n]) - med) ** 2).sum()))


def check_sign(image: Image.Image, description: dict[str, Any], *, with_edits: bool = False) -> CheckResult:
    """Verify a sign image against its caption's claims (the word, and the board colour if named).

    The rivals are the other lexicon words and, with ``with_edits``, single-letter edits of the word.
    """
    claims = description["claims"]
    rivals = distractors(claims["word"]) + (letter_edits(claims["word"]) if with_edits else [])
    r = read_scores(image, claims["word"], rivals=rivals)
    best = r["best"]
    found = [{"word_score": round(best["score"], 3), "rival": r["rival_word"], "rival_score": round(r["rival"], 3),
              "font": best.get("font"), "height": best.get("height")}]
    if best["score"] < MIN_SCORE:
        return CheckResult(False, f"the word {claims['word']!r} is not legible (match {best['score']:.2f})", found)
    if 1.0 - best["score"] > RESIDUAL_RATIO * (1.0 - r["rival"]):
        return CheckResult(False, f"reads more like {r['rival_word']!r} ({r['rival']:.2f}) than "
                                  f"{claims['word']!r} ({best['score']:.2f})", found)
    if claims.get("board_color"):
        got = board_color(r["rgb"], best)
        found[0]["board_color"] = got
        if got != claims["board_color"]:
            return CheckResult(False, f"expected a {claims['board_color']} board, found {got}", found)
    return CheckResult(True, "ok", found)
