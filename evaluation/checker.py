"""Does an image show what its caption says? A classical checker for the synthetic data.

Scenes: every pixel gets the palette colour of nearest hue and a strength
(its chroma over the palette colour's chroma, i.e. its coverage when mixed with
a neutral background); strong pixels of one colour form connected components.
Each component is explained by synthesis. Its coverage is estimated against the
local background (a plane fitted to the window's weak pixels, so gradients are
followed) twice: from luminance, which JPEG keeps at full resolution, and from
chrominance, which it subsamples (4:2:0) and smears; each counts in proportion
to its contrast with the background (chroma contrast weighted by
``CHROMA_WEIGHT``). For each shape, an ideal render with the same mass and
centroid, blurred by each of ``SIGMAS`` (its chroma by up to ``CHROMA_SIGMAS``
more), is compared with both; the best (shape, blur) wins, and its error must be
small. The claims of the caption (counts of each colour x shape, sizes, one
relation, the background) must hold exactly, every component must be a
recognisable shape, and the fitted blur must stay below ``MAX_SIGMA`` (a heavily
blurred image fails). A small object whose best fit is ambiguous may be counted
as a shape that fits within ``SHAPE_TOLERANCE`` of its best one, when that is
what makes the counts hold (on clean or blurred renders the true shape fits far
better than any other, so wrong shapes are still rejected). Signs: see
:mod:`evaluation.signcheck`.

Images are analysed at ``ANALYSIS_RES`` (64) pixels whatever their size;
below ``MIN_CHECK_RES`` (32) a check fails with "image too small" (both in
:mod:`evaluation.imaging`, shared with the sign checker).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from evaluation.imaging import MIN_CHECK_RES, CheckResult, blur_2d, prepare
from evaluation.signcheck import check_sign
from synth.scenes import (
    COLORS,
    NAMED_BACKGROUNDS,
    SHAPES,
    SIZE_THRESHOLD,
    draw_shape,
)

STRONG = 0.5            # strength above which a pixel belongs to an object
MIN_AREA = 12           # components smaller than this (pixels at 64 px) are specks, ignored
REL_MARGIN = 0.03       # relations need centres this far apart (fraction of the image)

_PALETTE = list(COLORS)
_RGB = np.asarray([COLORS[c] for c in _PALETTE], dtype=np.float32)
_CHROMA = _RGB.max(1) - _RGB.min(1)


def _hue(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return h * 60.0


_PALETTE_HUE = _hue(_RGB)


def colour_maps(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel palette index (nearest hue) and strength in [0, 1]. rgb: (H, W, 3)."""
    chroma = rgb.max(-1) - rgb.min(-1)
    d = np.abs(_hue(rgb)[..., None] - _PALETTE_HUE)          # (H, W, P)
    d = np.minimum(d, 360 - d)
    label = d.argmin(-1)
    return label, np.clip(chroma / _CHROMA[label], 0.0, 1.0)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x) pixel indices."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pix = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out.append(np.asarray(pix))
    return out


SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.5, 5.0)     # blur levels tried when fitting a shape
CHROMA_SIGMAS = (0.0, 1.0)   # extra blur of the chroma channels tried (JPEG 4:2:0 subsamples chroma)
CHROMA_WEIGHT = 0.25    # weight of a unit of chroma contrast against a unit of luma contrast
MAX_SIGMA = 3.0         # a best-fitting blur at or above this means "blurred", not a rendered object
MAX_FIT_ERROR = 0.35    # weighted L1 error of the best template over the object's mass
SHAPE_TOLERANCE = 0.15  # another shape whose error is within this fraction of the best one's may be claimed
_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}       # area / side**2
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 6}  # centroid below the box centre / side
# RGB -> (Y, Cb, Cr) without offsets, the transform JPEG uses
_YCC = np.asarray([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _coverage(shape: str, h: int, w: int, cx: float, cy: float, d: float, ss: int = 4) -> np.ndarray:
    """Coverage (h, w) in [0, 1] of ``shape`` with side d centred at (cx, cy), in window pixels."""
    im = Image.new("L", (w * ss, h * ss), 0)
    x0, y0 = (cx - d / 2) * ss, (cy - d / 2) * ss
    side = max(d * ss, 1.0)        # a speck of mass (side under one sub-pixel) is one sub-pixel, not an inverted box
    draw_shape(ImageDraw.Draw(im), shape, (x0, y0, x0 + side - 1, y0 + side - 1), 255)
    return np.asarray(im.reduce(ss), dtype=np.float64) / 255.0


def fit_shape(obs: np.ndarray, chroma: np.ndarray | None = None,
              luma_weight: np.ndarray | float = 1.0) -> dict[str, Any]:
    """Fit each shape (mass-preserving side, centroid-matched, blurred by each of SIGMAS) to a window.

    Args:
        obs: (h, w) coverage of one object's colour from luminance, other objects masked out.
        chroma: (h, w) the same coverage from chrominance, or None (``obs`` is all there is). Its
            template may be blurred further (by each of ``CHROMA_SIGMAS``), as JPEG blurs chroma.
        luma_weight: per pixel (or scalar) weight in [0, 1] of ``obs`` against ``chroma`` (how much
            of the object's contrast with the background is luminance).
    Returns:
        The best fit ``{"shape", "sigma", "error", "d", "cx", "cy"}`` in window pixels (error: the
        weighted L1 over the mass), with ``"errors"`` (shape: rounded error) and ``"fits"`` (shape:
        its fit).
    """
    h, w = obs.shape
    wl = np.broadcast_to(np.asarray(luma_weight, dtype=np.float64), obs.shape)
    if chroma is None:
        chroma, wl = obs, np.ones_like(obs)
    wc = 1.0 - wl
    comb = wl * obs + wc * chroma
    mass = float(comb.sum())
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    fits: dict[str, dict[str, Any]] = {}

    def score(shape: str, cx: float, cy: float, d: float) -> tuple[float, float]:
        """(error, sigma) of the best blur of this template."""
        cov = _coverage(shape, h, w, cx, cy, d)
        out = (np.inf, 0.0)
        for sigma in SIGMAS:
            t = blur_2d(cov, sigma)
            err = float((wl * np.abs(t - obs)).sum())
            if wc.any():
                cands = [blur_2d(cov, float(np.hypot(sigma, sc))) for sc in CHROMA_SIGMAS]
                err += min(float((wc * np.abs(c - chroma)).sum()) for c in cands)
            out = min(out, (err / mass, sigma))
        return out

    if mass > 1e-6:
        mx, my = float((comb * xs).sum() / mass), float((comb * ys).sum() / mass)
        for shape in SHAPES:
            d = float(np.sqrt(mass / _AREA[shape]))
            cy = my - _CENTROID_DY[shape] * d
            err, sigma = score(shape, mx, cy, d)
            fits[shape] = {"shape": shape, "sigma": sigma, "error": err, "d": d, "cx": mx, "cy": cy}
    best = min(fits.values(), key=lambda f: f["error"], default=None)
    if best is None or not np.isfinite(best["error"]):   # no mass to fit (or only NaN errors)
        best = {"shape": SHAPES[0], "sigma": 0.0, "error": np.inf, "d": 0.0, "cx": w / 2, "cy": h / 2}
    return {**best, "errors": {k: round(f["error"], 3) for k, f in fits.items()}, "fits": fits}


def _background_plane(win: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The background of a window (h, w, C) as a least-squares plane through the pixels of ``mask``
    (plain and linear-gradient backgrounds are planes); the median when too few pixels."""
    h, w, ch = win.shape
    if mask.sum() < 8:
        return np.broadcast_to(np.median(win.reshape(-1, ch), axis=0), win.shape)
    ys, xs = np.nonzero(mask)
    if np.ptp(ys) < 3 or np.ptp(xs) < 3 or mask.sum() < 24:
        return np.broadcast_to(np.median(win[mask], axis=0), win.shape)
    a = np.stack([np.ones_like(xs), xs, ys], 1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(a, win[mask], rcond=None)                    # (3, C)
    gy, gx = np.mgrid[0:h, 0:w]
    return coef[0] + gx[..., None] * coef[1] + gy[..., None] * coef[2]


def _describe(pix: np.ndarray, label_id: int, rgb: np.ndarray, label: np.ndarray, strength: np.ndarray,
              others: np.ndarray) -> dict[str, Any]:
    res = label.shape[0]
    ys, xs = pix[:, 0], pix[:, 1]
    pad = 8
    Y0, Y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, res)
    X0, X1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, res)
    # coverage of the object colour over the local background, separately from luminance (which JPEG
    # keeps at full resolution) and chrominance (which it subsamples), each weighted by its contrast
    win, free = rgb[Y0:Y1, X0:X1].astype(np.float64) @ _YCC.T, ~others[Y0:Y1, X0:X1]
    bg_mask = free & (strength[Y0:Y1, X0:X1] < 0.15)
    if bg_mask.sum() < 8:
        bg_mask = free
    bg = _background_plane(win, bg_mask)
    diff = win - bg
    delta = _RGB[label_id].astype(np.float64) @ _YCC.T - bg                  # (h, w, 3)
    dl = delta[..., 0]
    dc2 = np.maximum((delta[..., 1:] ** 2).sum(-1), 1.0)
    luma = np.clip(diff[..., 0] * dl / np.maximum(dl ** 2, 1.0), 0.0, 1.0)
    chroma = np.clip((diff[..., 1:] * delta[..., 1:]).sum(-1) / dc2, 0.0, 1.0)
    wl = np.abs(dl) / (np.abs(dl) + CHROMA_WEIGHT * np.sqrt(dc2))
    tinted = (label[Y0:Y1, X0:X1] == label_id) & (strength[Y0:Y1, X0:X1] >= 0.1)   # excludes the background
    keep = free & tinted
    fit = fit_shape(np.where(keep, luma, 0.0), np.where(keep, chroma, 0.0), wl)
    ok = fit["error"] <= MAX_FIT_ERROR

    def place(f: dict[str, Any]) -> dict[str, Any]:
        side = f["d"] / res
        return {"sigma": f["sigma"], "size": "large" if side >= SIZE_THRESHOLD else "small",
                "side": round(side, 3), "cx": round((X0 + f["cx"]) / res, 3), "cy": round((Y0 + f["cy"]) / res, 3)}

    near = sorted((f for f in fit.get("fits", {}).values()
                   if f["error"] <= min(MAX_FIT_ERROR, fit["error"] * (1 + SHAPE_TOLERANCE))),
                  key=lambda f: f["error"])
    return {"color": _PALETTE[label_id], "shape": fit["shape"] if ok else "unrecognised",
            "best_shape": fit["shape"], "error": round(fit["error"], 3), "errors": fit["errors"],
            **place(fit), "area": len(pix),
            "alternatives": {f["shape"]: place(f) for f in near if f["shape"] != fit["shape"]}}


def detect_objects(image: Image.Image) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Objects found in a scene image, and the background mask (weak pixels), at 64 px."""
    rgb = prepare(image)
    label, strength = colour_maps(rgb)
    strong = strength >= STRONG
    comps = [(i, pix) for i in range(len(_PALETTE)) for pix in components(strong & (label == i))
             if len(pix) >= MIN_AREA]
    found = []
    for i, pix in comps:
        others = np.zeros_like(strong)
        for j, other in comps:
            if other is not pix:
                others[other[:, 0], other[:, 1]] = True
        found.append(_describe(pix, i, rgb, label, strength, _dilate(_dilate(others))))
    found.sort(key=lambda o: (o["cy"], o["cx"]))
    return found, strength < 0.15


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _name(color: str, shape: str, count: int = 1) -> str:
    return f"{count} {color} {shape}{'s' if count != 1 else ''}"


def _relation_holds(a: dict[str, Any], b: dict[str, Any], rel: str) -> bool:
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    return {"left": dx < -REL_MARGIN, "right": dx > REL_MARGIN,
            "above": dy < -REL_MARGIN, "below": dy > REL_MARGIN}[rel]


def background_name(rgb: np.ndarray, weak: np.ndarray) -> str | None:
    """The named background (white / gray / black) nearest the median weak pixel, None if none."""
    if weak.sum() < 0.2 * weak.size:
        return None
    med = np.median(rgb[weak], axis=0)
    if med.max() - med.min() > 40:
        return None
    lum = float(med.mean())
    return min(NAMED_BACKGROUNDS, key=lambda n: abs(np.mean(NAMED_BACKGROUNDS[n]) - lum))


def _assign_shapes(found: list[dict[str, Any]], want: Counter) -> list[str] | None:
    """A shape for each found object, its best fit or an alternative that fits nearly as well
    (``SHAPE_TOLERANCE``), such that the counts of colour x shape are exactly ``want``; of all such
    assignments the one with the fewest alternatives. None when there is none (or too many objects
    to try)."""
    have_colours = Counter(o["color"] for o in found)
    want_colours: Counter = Counter()
    for (colour, _), n in want.items():
        want_colours[colour] += n
    if have_colours != +want_colours or len(found) > 12:
        return None
    options = [[o["shape"], *o.get("alternatives", {})] for o in found]
    best: tuple[int, list[str]] | None = None
    left = Counter(want)
    chosen: list[str] = [""] * len(found)

    def search(i: int, cost: int) -> None:
        nonlocal best
        if best is not None and cost >= best[0]:
            return
        if i == len(found):
            best = (cost, list(chosen))
            return
        for rank, shape in enumerate(options[i]):
            key = (found[i]["color"], shape)
            if left[key] > 0:
                left[key] -= 1
                chosen[i] = shape
                search(i + 1, cost + (rank > 0))
                left[key] += 1

    search(0, 0)
    return None if best is None else best[1]


def check_scene(image: Image.Image, description: dict[str, Any]) -> CheckResult:
    """Verify a scene image against the claims of its caption (``description["claims"]``)."""
    claims = description["claims"]
    found, weak = detect_objects(image)
    for o in found:
        if o["shape"] == "unrecognised":
            return CheckResult(False, f"unrecognised {o['color']} blob at ({o['cx']:.2f}, {o['cy']:.2f}) "
                                      f"(best {o['best_shape']}, error {o['error']})", found)
    want = Counter({(c["color"], c["shape"]): c["count"] for c in claims["objects"]})
    shapes = _assign_shapes(found, want)   # each object's best shape, or one nearly as good
    if shapes is None:
        have = Counter((o["color"], o["shape"]) for o in found)
        for key in sorted(set(want) | set(have)):
            if want[key] != have[key]:
                return CheckResult(False, f"expected {_name(*key, want[key])}, found {have[key]}", found)
        shapes = [o["shape"] for o in found]
    found = [o if s == o["shape"] else {**o, **o["alternatives"][s], "shape": s} for o, s in zip(found, shapes)]
    for o in found:
        if o["sigma"] >= MAX_SIGMA:
            return CheckResult(False, f"blurred: the {o['color']} {o['shape']} fits best with blur "
                                      f"sigma {o['sigma']} px", found)
    for c in claims["objects"]:
        if c.get("size"):
            bad = [o for o in found if (o["color"], o["shape"]) == (c["color"], c["shape"])
                   and o["size"] != c["size"]]
            if bad:
                return CheckResult(False, f"expected {c['size']} {c['color']} {c['shape']}, found "
                                          f"side {bad[0]['side']}", found)
    rel = claims.get("relation")
    if rel:
        subj = [o for o in found if (o["color"], o["shape"]) == (rel["subject"]["color"], rel["subject"]["shape"])]
        obj = [o for o in found if (o["color"], o["shape"]) == (rel["object"]["color"], rel["object"]["shape"])]
        if not any(_relation_holds(a, b, rel["relation"]) for a in subj for b in obj):
            return CheckResult(False, f"the {rel['subject']['color']} {rel['subject']['shape']} is not "
                                      f"{rel['relation']} of the {rel['object']['color']} {rel['object']['shape']}",
                               found)
    if claims.get("background"):
        got = background_name(prepare(image), weak)
        if got != claims["background"]:
            return CheckResult(False, f"expected a {claims['background']} background, found {got}", found)
    return CheckResult(True, "ok", found)


def check(image: Image.Image, description: dict[str, Any]) -> CheckResult:
    """Verify an image against a scene or sign description (the ``.json`` of a synthetic sample).

    Args:
        image: the image, any size >= ``MIN_CHECK_RES`` (analysed at 64 px).
        description: a dict with ``"kind"`` ("scene" or "sign") and ``"claims"``.
    Returns:
        A :class:`CheckResult`.
    """
    if "claims" not in description or description.get("kind") not in ("scene", "sign"):
        raise ValueError("description must have kind 'scene' or 'sign' and the caption's 'claims'")
    if min(image.size) < MIN_CHECK_RES:
        return CheckResult(False, f"image too small to check ({min(image.size)} px < {MIN_CHECK_RES} px)")
    if description["kind"] == "scene":
        return check_scene(image, description)
    return check_sign(image, description)
