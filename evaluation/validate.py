"""Validate the checker before trusting it: agreement on real renders, rejection of negative controls.

Positives are renders of held-out and training scenes/signs, clean and degraded
the way generated images are (Gaussian blur sigma 1 px at 64 px, JPEG quality
75 with 4:2:0 chroma, both). Negative controls are true renders checked against
a wrong description (wrong colour / count / shape / word / board colour) or
images that no longer show the scene (objects swapped, heavy blur sigma 4 px,
pixels shuffled) or, for signs, no longer show any word (the word painted over
with the board colour, or replaced by random blobs of the text colour; both then
blurred sigma 1 px, like a blurry generated sign with no legible text).

Run: ``PYTHONPATH=. python -m evaluation.validate --scenes 300 --signs 100``.
"""
from __future__ import annotations

import argparse
import copy
import io
import zlib
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from evaluation.checker import check
from evaluation.signcheck import letter_edits
from synth.scenes import COLORS, SHAPES, render_scene, scene_sample
from synth.signs import BOARD_COLORS, TEXT_COLORS, WORDS, sign_sample

Degrade = Callable[[Image.Image], Image.Image]


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    """JPEG round trip (Pillow's default 4:2:0 chroma subsampling)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def blur(sigma: float) -> Degrade:
    """Gaussian blur of ``sigma`` pixels at 64 px, scaled to the image size."""
    return lambda im: im.filter(ImageFilter.GaussianBlur(sigma * im.width / 64))


def shuffle_pixels(image: Image.Image, seed: int = 0) -> Image.Image:
    """The same pixels in a random order."""
    a = np.asarray(image.convert("RGB"))
    flat = a.reshape(-1, 3)[np.random.default_rng(seed).permutation(a.shape[0] * a.shape[1])]
    return Image.fromarray(flat.reshape(a.shape))


def erase_word(image: Image.Image, desc: dict[str, Any], blobs: int = 0, seed: int = 0) -> Image.Image:
    """The sign with its word painted over in the board colour, then ``blobs`` random ellipses of the
    text colour drawn in the word's box (smeared, unreadable "text"); blurred sigma 1 px."""
    ss, (w, h) = 4, image.size
    big = image.convert("RGB").resize((w * ss, h * ss), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(big)
    x0, y0, x1, y1 = (v * n * ss for v, n in zip(desc["text_bbox"], (w, h, w, h)))
    draw.rectangle([np.floor(x0 / ss - 1) * ss, np.floor(y0 / ss - 1) * ss, np.ceil(x1 / ss + 1) * ss - 1,
                    np.ceil(y1 / ss + 1) * ss - 1], fill=BOARD_COLORS[desc["board_color"]])
    rng = np.random.default_rng(seed)
    th = y1 - y0
    for _ in range(blobs):
        bw, bh = th * rng.uniform(0.3, 1.0), th * rng.uniform(0.5, 1.0)
        cx, cy = rng.uniform(x0 + bw / 2, x1 - bw / 2), rng.uniform(y0 + bh / 2, y1 - bh / 2)
        draw.ellipse([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], fill=TEXT_COLORS[desc["text_color"]])
    return blur(1.0)(big.reduce(ss))


POSITIVES: dict[str, Degrade] = {"clean": lambda im: im, "blur1": blur(1.0), "jpeg75": jpeg,
                                 "blur1+jpeg75": lambda im: jpeg(blur(1.0)(im))}


def _other(rng: np.random.Generator, options: list[str], current: str) -> str:
    return str(rng.choice([o for o in options if o != current]))


def scene_controls(desc: dict[str, Any], image: Image.Image, rng: np.random.Generator,
                   resolution: int) -> dict[str, tuple[Image.Image, dict[str, Any]]]:
    """Negative controls of one scene: (image, description) pairs that must fail."""
    out = {}
    d = copy.deepcopy(desc)
    g = d["claims"]["objects"][0]
    g["color"] = _other(rng, list(COLORS), g["color"])
    out["wrong_colour"] = (image, d)
    d = copy.deepcopy(desc)
    g = d["claims"]["objects"][0]
    g["count"] = g["count"] + 1 if g["count"] == 1 or rng.random() < 0.5 else g["count"] - 1
    out["wrong_count"] = (image, d)
    d = copy.deepcopy(desc)
    g = d["claims"]["objects"][0]
    g["shape"] = _other(rng, list(SHAPES), g["shape"])
    out["wrong_shape"] = (image, d)
    if desc["claims"].get("relation"):
        swapped = copy.deepcopy(desc)
        a, b = swapped["objects"]
        a["cx"], a["cy"], b["cx"], b["cy"] = b["cx"], b["cy"], a["cx"], a["cy"]
        inside = all(o["d"] / 2 <= o[c] <= 1 - o["d"] / 2 for o in (a, b) for c in ("cx", "cy"))
        apart = (abs(a["cx"] - b["cx"]) >= (a["d"] + b["d"]) / 2 + 0.02
                 or abs(a["cy"] - b["cy"]) >= (a["d"] + b["d"]) / 2 + 0.02)
        if inside and apart:                                   # sizes kept, so size claims still hold
            out["swapped_positions"] = (render_scene(swapped, resolution), desc)
    out["blurred"] = (blur(4.0)(image), desc)
    out["shuffled"] = (shuffle_pixels(image, int(rng.integers(1 << 30))), desc)
    return out


def sign_controls(desc: dict[str, Any], image: Image.Image,
                  rng: np.random.Generator) -> dict[str, tuple[Image.Image, dict[str, Any]]]:
    """Negative controls of one sign."""
    out = {}
    d = copy.deepcopy(desc)
    d["claims"]["word"] = _other(rng, [w for w in WORDS if w.upper() != desc["word"].upper()], desc["word"])
    out["wrong_word"] = (image, d)
    d = copy.deepcopy(desc)
    d["claims"]["word"] = str(rng.choice(letter_edits(desc["word"])))
    out["letter_edit"] = (image, d)
    d = copy.deepcopy(desc)
    d["claims"]["board_color"] = _other(rng, list(BOARD_COLORS), desc["board_color"])
    out["wrong_board_colour"] = (image, d)
    out["blurred"] = (blur(4.0)(image), desc)
    out["shuffled"] = (shuffle_pixels(image, int(rng.integers(1 << 30))), desc)
    out["blank_board"] = (erase_word(image, desc), desc)
    seed = zlib.crc32(image.tobytes())      # not drawn from rng, so the samples that follow are unchanged
    out["text_blobs"] = (erase_word(image, desc, blobs=2 * len(desc["word"]), seed=seed), desc)
    return out


def validate_checker(n_scenes: int = 100, n_signs: int = 30, *, resolution: int = 64,
                     seed: int = 1000) -> dict[str, dict[str, dict[str, float]]]:
    """Agreement on positives and rejection of controls, for scenes and signs.

    Returns:
        ``{"scene"|"sign": {"agreement": {degradation: rate}, "rejection": {control: rate},
        "failures": {...: [reason, ...]}}}``; half of the samples are held-out ones.
    """
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {}
    for kind, count in (("scene", n_scenes), ("sign", n_signs)):
        agree: dict[str, list[bool]] = {k: [] for k in POSITIVES}
        reject: dict[str, list[bool]] = {}
        failures: dict[str, list[str]] = {}
        for i in range(count):
            split = "heldout" if i % 2 else "train"
            if kind == "scene":
                _, desc = scene_sample(rng, split=split)
                image = render_scene(desc, resolution)
                controls = scene_controls(desc, image, rng, resolution)
            else:
                image, _, desc = sign_sample(rng, resolution, split=split)
                controls = sign_controls(desc, image, rng)
            for name, degrade in POSITIVES.items():
                r = check(degrade(image), desc)
                agree[name].append(r.passed)
                if not r.passed:
                    failures.setdefault(name, []).append(f"{desc['caption']}: {r.reason}")
            for name, (img, d) in controls.items():
                r = check(img, d)
                reject.setdefault(name, []).append(not r.passed)
                if r.passed:
                    failures.setdefault(name, []).append(d["caption"])
        report[kind] = {"n": count, "agreement": {k: float(np.mean(v)) for k, v in agree.items()},
                        "rejection": {k: float(np.mean(v)) for k, v in reject.items()},
                        "controls": {k: len(v) for k, v in reject.items()}, "failures": failures}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--signs", type=int, default=100)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=1000)
    a = p.parse_args(argv)
    rep = validate_checker(a.scenes, a.signs, resolution=a.resolution, seed=a.seed)
    for kind, r in rep.items():
        print(f"## {kind}s (n={r['n']}, half held-out)")
        print("agreement on real renders: " + ", ".join(f"{k} {v:.3f}" for k, v in r["agreement"].items()))
        print("rejection of controls:     " + ", ".join(f"{k} {v:.3f} (n={r['controls'][k]})"
                                                         for k, v in r["rejection"].items()))
        for k, reasons in r["failures"].items():
            for reason in reasons[:3]:
                print(f"  miss [{k}] {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
