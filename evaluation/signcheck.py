"""Does a sign image read as the requested word? Template-matching OCR against a lexicon.

1. Locate: the requested word is rendered (capitals, every sign font, ink
   heights 5-18 px, with a blank margin) and matched anywhere in the grey image
   by normalised cross-correlation (either polarity).
2. Find the line: board and ink levels come from the matched window; the text
   line's sub-pixel ink box grows from the match over the neighbouring ink
   columns (gaps up to ``GAP`` px), so the whole line is read, not just the part
   that matched (ZOO inside BOOKS reads as BOOKS).
3. Read: the word is fitted to the line (font, blur sigma 0-3 px, and a search
   over the box edges); every rival (the other lexicon words by default;
   single-letter edits too with ``with_edits``) is rendered into the same box in
   every font at that blur, and its three closest rivals get their own box
   search. A score is the correlation of details: the observed ink and the
   rendering less their blur by ``DETAIL_SIGMA``, so letter shapes count rather
   than the blob of the line, which every word of that size shares.
4. Decide: the word fails when its best-fitting blur is over ``MAX_READ_SIGMA``
   (too blurred to read), when its score is < ``MIN_SCORE``, or when its misfit
   (1 - score) is more than ``RESIDUAL_RATIO`` of the best rival's.

It tells the lexicon's words apart on clean, JPEG'd and mildly blurred renders,
and rejects signs whose word is painted over or replaced by blobs (see
``evaluation.validate`` for measured rates). It does not read arbitrary text: it
answers "is this the requested word rather than another word of the lexicon",
and text in a style far from the known fonts may fail.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from evaluation.imaging import ANALYSIS_RES, CheckResult, blur_2d, prepare
from synth.fonts import sign_fonts
from synth.signs import BOARD_COLORS, WORDS, draw_text_centered, fit_font_size

MIN_SCORE = 0.6        # the word's rendering must correlate this well with the observed ink
EDIT_MARGIN = 0.03     # a one-letter edit of the word may not score more than this above the word
RESIDUAL_RATIO = 0.75  # the word's misfit (1 - score) must be this fraction of the best rival's, or less
READ_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)   # blurs (px at 64 px) tried when fitting the word
MAX_READ_SIGMA = 1.5   # text whose best-fitting blur is wider than this is too blurred to read
DETAIL_SIGMA = 1.5     # scores compare the ink less its blur by this much: letter shapes, not the line's blob
HEIGHTS = tuple(float(h) for h in range(5, 19))
GAP = 3                # widest blank run (px) inside a text line
MARGIN = 2             # px of board around the line's ink box that the read also scores
INK = 0.3              # a pixel this far from the board level towards the ink level is ink
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
def ink_mask(text: str, font: str, size: int = 96) -> Image.Image:
    """High-resolution ink of ``text`` cropped to its ink (the font's side bearings left out)."""
    im = Image.new("L", (size * (len(text) + 2), size * 3), 0)
    draw_text_centered(ImageDraw.Draw(im), text, font, size, (im.width / 2, im.height / 2), 255)
    return im.crop(im.getbbox())


def render_in_box(text: str, font: str, box: tuple[float, float, float, float],
                  shape: tuple[int, int], sigma: float = 0.0) -> np.ndarray:
    """Coverage (h, w) of ``text`` with its ink stretched to the box ``box``, blurred by ``sigma``."""
    h, w = shape
    canvas = Image.new("L", (w * _SS, h * _SS), 0)
    x0, y0, x1, y1 = (int(round(v * _SS)) for v in box)
    if x1 - x0 >= 2 and y1 - y0 >= 2:
        canvas.paste(ink_mask(text, font).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR), (x0, y0))
    return blur_2d(np.asarray(canvas.reduce(_SS), dtype=np.float64) / 255.0, sigma)


def _line_box(gray: np.ndarray, loc: dict[str, Any], gap: int = GAP) -> tuple[np.ndarray, tuple[float, ...]] | None:
    """Ink map of the whole image and the sub-pixel ink box of the text line the located word lies on.

    Board and ink levels come from the matched window. The box starts at the template's own ink (within
    one pixel) and grows over the ink columns of the line's rows, across gaps of at most ``gap`` px, so
    letters beyond the matched template are included; a column with about as much ink two pixels above or
    below the line as on it (a board edge, the wall) is not text and stops the growth.
    """
    t, x, y = loc["template"], loc["x"], loc["y"]
    th, tw = t.shape
    core = gray[y:y + th, x:x + tw]
    if not (t > 0.7).any() or not (t < 0.05).any():
        return None
    board, ink = np.median(core[t < 0.05]), np.median(core[t > 0.7])
    # blur dilutes thin strokes: take the ink level from the most ink-like pixels instead of the median
    ink = np.percentile(core, 98) if ink > board else np.percentile(core, 2)
    if abs(ink - board) < 0.08:
        return None
    a = np.clip((gray - board) / (ink - board), 0.0, 1.0)
    H, W = a.shape
    tys, txs = np.nonzero(t > 0.3)
    ry0, ry1 = max(y + tys.min() - 1, 0), min(y + tys.max() + 2, H)
    rx0, rx1 = max(x + txs.min() - 1, 0), min(x + txs.max() + 2, W)
    ys = np.nonzero(a[ry0:ry1, rx0:rx1].max(1) >= INK)[0] + ry0
    if len(ys) < 2:
        return None
    y0, y1 = int(ys[0]), int(ys[-1])

    def grow_rows(x0: int, x1: int) -> tuple[np.ndarray, int, int]:     # by at most half the line's height
        rows, top, bottom, most = a[:, x0:x1 + 1].max(1), y0, y1, max(2, (y1 - y0 + 1) // 2)
        while top > max(y0 - most, 0) and rows[top - 1] >= INK:
            top -= 1
        while bottom < min(y1 + most, H - 1) and rows[bottom + 1] >= INK:
            bottom += 1
        return rows, top, bottom
    _, y0, y1 = grow_rows(rx0, rx1 - 1)
    band = a[y0:y1 + 1].max(0)
    edge = np.maximum(a[max(y0 - 2, 0)], a[min(y1 + 2, H - 1)]) >= 0.5 * band   # as much ink off the line
    text = (band >= INK) & ~edge
    xs = np.nonzero(text[rx0:rx1])[0] + rx0
    if len(xs) < 2:
        return None
    x0, x1 = int(xs[0]), int(xs[-1])
    while (more := np.nonzero(text[max(x0 - gap - 1, 0):x0])[0]).size:       # grow over gaps <= gap
        x0 = max(x0 - gap - 1, 0) + int(more[0])
    while (more := np.nonzero(text[x1 + 1:x1 + gap + 2])[0]).size:
        x1 = x1 + 1 + int(more[-1])
    rows, y0, y1 = grow_rows(x0, x1)
    cols = np.where(edge, 0.0, a[y0:y1 + 1].max(0))

    def side(v: np.ndarray, i: int, step: int) -> float:          # ink reaching into the pixel beyond
        j = i + step
        return float(v[j]) if 0 <= j < len(v) and v[j] < INK else 0.0
    box = (x0 + 1 - cols[x0] - side(cols, x0, -1), y0 + 1 - rows[y0] - side(rows, y0, -1),
           x1 + cols[x1] + side(cols, x1, 1), y1 + rows[y1] + side(rows, y1, 1))
    return a, box


def _detail(x: np.ndarray) -> np.ndarray:
    """``x`` less its blur by ``DETAIL_SIGMA``: the strokes and gaps, without the line's overall blob."""
    d = x - blur_2d(x, DETAIL_SIGMA)
    return d - d.mean()


def _unit(x: np.ndarray) -> np.ndarray | None:
    """``x`` scaled to unit norm; None when it is flat."""
    n = float(np.sqrt((x * x).sum()))
    return x / n if n > 1e-9 else None


def _score(observed: np.ndarray, cov: np.ndarray) -> float:
    """Correlation of the details of a rendered candidate with ``observed`` (the unit-norm details of the ink)."""
    d = _unit(_detail(cov))
    return float((observed * d).sum()) if d is not None else 0.0


def _refine(obs: np.ndarray, text: str, font: str, box: tuple[float, ...], sigma: float,
            passes: int = 2) -> tuple[float, tuple[float, ...]]:
    """Best score of ``text`` over small moves of each ink-box edge (coordinate ascent), and its box."""
    box_l = list(box)
    best = _score(obs, render_in_box(text, font, box, obs.shape, sigma))
    for _ in range(passes):
        for i in range(4):
            for step in (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0):
                trial = box_l.copy()
                trial[i] += step
                if trial[2] - trial[0] < 2 or trial[3] - trial[1] < 2:
                    continue
                score = _score(obs, render_in_box(text, font, tuple(trial), obs.shape, sigma))
                if score > best:
                    best, box_l = score, trial
    return best, tuple(box_l)


def read_scores(image: Image.Image, word: str, *, fonts: Sequence[str] | None = None,
                lexicon: Sequence[str] = WORDS, rivals: Sequence[str] | None = None) -> dict[str, Any]:
    """Find the word's text line, fit the word to it, then score every rival word in the same box.

    Returns:
        ``{"best": {score, font, x, y, w, h, template}, "rival", "rival_word", "sigma", "box", "scores",
        "rgb", "located"}``; ``best["score"]`` is 0 when no text line was found.
    """
    text = word.upper()
    if not (text.isascii() and text.isalpha()):
        raise ValueError(f"sign word {word!r} must be ASCII letters")
    rgb = prepare(image)
    gray = rgb.astype(np.float64) @ np.asarray([0.299, 0.587, 0.114]) / 255.0
    fonts = list(fonts) if fonts else sign_fonts()
    loc: dict[str, Any] = {"score": -1.0}
    for font in fonts:                                   # 1. locate the text line
        for height in HEIGHTS:
            t = word_template(text, font, float(height))
            if t is None:
                continue
            score, x, y = _ncc(gray, t)
            if score > loc["score"]:
                loc = {"score": score, "font": font, "height": height, "x": x, "y": y, "w": t.shape[1],
                       "h": t.shape[0], "template": t}
    out = {"best": {**loc, "score": 0.0}, "rival": 0.0, "rival_word": None, "rgb": rgb, "located": loc["score"]}
    if loc["score"] < 0 or (line := _line_box(gray, loc)) is None:
        return out
    full, (bx0, by0, bx1, by1) = line
    wx0, wy0 = int(np.floor(bx0)) - MARGIN, int(np.floor(by0)) - MARGIN
    wx1, wy1 = int(np.ceil(bx1)) + MARGIN, int(np.ceil(by1)) + MARGIN
    p = MARGIN + 1
    obs = _unit(_detail(np.pad(full, p, mode="edge")[wy0 + p:wy1 + p, wx0 + p:wx1 + p]))
    if obs is None:
        return out
    line_box = (bx0 - wx0, by0 - wy0, bx1 - wx0, by1 - wy0)
    out["box"] = (bx0, by0, bx1, by1)

    def fit_word(box: tuple[float, ...]) -> tuple[str, float]:
        fit = {(f, s): _score(obs, render_in_box(text, f, box, obs.shape, s)) for f in fonts for s in READ_SIGMAS}
        return max(fit, key=fit.get)

    font, sigma = fit_word(line_box)             # 2. fit the word: font, blur (the image's, as seen through
    score, box = _refine(obs, text, font, line_box, sigma)       # the requested word) and ink box
    font, sigma = fit_word(box)
    score, box = _refine(obs, text, font, box, sigma, passes=1)
    scores, boxes, best_font = {text: score}, {text: box}, {text: font}
    for cand in (rivals if rivals is not None else distractors(text, lexicon)):   # 3. read the rivals
        if cand == text:
            continue
        per = {(f, b): _score(obs, render_in_box(cand, f, bb, obs.shape, sigma))
               for f in fonts for b, bb in (("word", box), ("line", line_box))}
        (best_font[cand], which), scores[cand] = max(per, key=per.get), max(per.values())
        boxes[cand] = box if which == "word" else line_box
    close = sorted((w for w in scores if w != text), key=scores.get, reverse=True)[:3]
    for cand in close:                           # the closest rivals get their own box search
        scores[cand] = max(scores[cand], _refine(obs, cand, best_font[cand], boxes[cand], sigma)[0])
    rival_word = max((w for w in scores if w != text), key=scores.get, default=None)
    out["best"].update(score=scores[text], font=font)
    out.update(sigma=sigma, scores=scores)
    out["rival"], out["rival_word"] = (scores[rival_word], rival_word) if rival_word else (0.0, None)
    return out


def board_color(rgb: np.ndarray, best: dict[str, Any]) -> str:
    """The board colour name nearest the median non-ink pixel of the matched word's window."""
    x, y, w, h, t = best["x"], best["y"], best["w"], best["h"], best["template"]
    win = rgb[y:y + h, x:x + w]
    med = np.median(win[t < 0.05], axis=0)
    return min(BOARD_COLORS, key=lambda n: float(((np.asarray(BOARD_COLORS[n]) - med) ** 2).sum()))


def check_sign(image: Image.Image, description: dict[str, Any], *, with_edits: bool = True) -> CheckResult:
    """Verify a sign image against its caption's claims (the word, and the board colour if named).

    The rivals are the other lexicon words and, with ``with_edits`` (the default: sign words come from
    an open vocabulary, so the word actually drawn is often in no lexicon), every single-letter edit
    of the word. Against lexicon words the word must win by a margin (``RESIDUAL_RATIO``); against
    its own one-letter edits, which differ by a few pixels at 64 px, no edit may score more than
    ``EDIT_MARGIN`` above it.
    """
    claims = description["claims"]
    lexicon = distractors(claims["word"])
    edits = letter_edits(claims["word"]) if with_edits else []
    r = read_scores(image, claims["word"], rivals=lexicon + edits)
    best = r["best"]
    scores = r.get("scores", {})
    lex_word = max((w for w in lexicon if w in scores), key=scores.get, default=None)
    edit_word = max((w for w in edits if w in scores), key=scores.get, default=None)
    found = [{"word_score": round(best["score"], 3), "rival": r["rival_word"], "rival_score": round(r["rival"], 3),
              "font": best.get("font"), "height": best.get("height"), "blur": r.get("sigma")}]
    if r.get("sigma", 0.0) > MAX_READ_SIGMA:
        return CheckResult(False, f"the word {claims['word']!r} is too blurred to read (blur {r['sigma']:.1f} px)",
                           found)
    if best["score"] < MIN_SCORE:
        return CheckResult(False, f"the word {claims['word']!r} is not legible (match {best['score']:.2f})", found)
    if lex_word is not None and 1.0 - best["score"] > RESIDUAL_RATIO * (1.0 - scores[lex_word]):
        return CheckResult(False, f"reads more like {lex_word!r} ({scores[lex_word]:.2f}) than "
                                  f"{claims['word']!r} ({best['score']:.2f})", found)
    if edit_word is not None and scores[edit_word] > best["score"] + EDIT_MARGIN:
        return CheckResult(False, f"reads more like {edit_word!r} ({scores[edit_word]:.2f}) than "
                                  f"{claims['word']!r} ({best['score']:.2f})", found)
    if claims.get("board_color"):
        got = board_color(r["rgb"], best)
        found[0]["board_color"] = got
        if got != claims["board_color"]:
            return CheckResult(False, f"expected a {claims['board_color']} board, found {got}", found)
    return CheckResult(True, "ok", found)
