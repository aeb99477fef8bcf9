"""Synthetic scenes whose truth is known: 1-4 coloured shapes on a neutral background.

Every sample carries its full description (objects, background) and the claims
its caption makes (object counts, colours, shapes, sizes, one relation, the
background), so ``evaluation.checker`` can verify any image against the caption.
Captions always describe every object in the scene.

Coordinates in a spec are normalised to [0, 1] (x to the right, y downwards);
an object's ``cx, cy`` is the centre of its bounding box and ``d`` its side.
Scenes are drawn at ``SUPERSAMPLE`` times the requested resolution and box
downsampled, so edges are antialiased.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

# Saturated object colours; hues spread so they stay apart under blur and JPEG.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 30),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "purple": (145, 55, 190),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, tuple[float, float]] = {"small": (0.14, 0.18), "large": (0.26, 0.32)}
SIZE_THRESHOLD = 0.22          # side (fraction of the image) between "small" and "large"
# Backgrounds are neutral (chroma <= 25 of 255) so they never look like an object.
NAMED_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "gray": (140, 140, 140), "black": (30, 30, 30)}
UNNAMED_BACKGROUNDS = ((236, 230, 216), (214, 220, 228), (200, 200, 196), (90, 92, 96), (60, 58, 55))
DEFAULT_HELD_OUT: tuple[tuple[str, str], ...] = (("purple", "triangle"), ("orange", "square"),
                                                 ("green", "circle"))
SPLITS = ("train", "heldout")
SUPERSAMPLE = 4
MIN_GAP = 0.05                 # empty space between object boxes
MARGIN = 0.04                  # empty space between objects and the image border
RELATIONS = ("left", "right", "above", "below")
_REL_PHRASES = {"left": ("to the left of", "left of", "on the left of"),
                "right": ("to the right of", "right of", "on the right of"),
                "above": ("above", "over"), "below": ("below", "under", "beneath")}
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_TEMPLATES = ("{x}", "a picture of {x}", "an image of {x}", "a drawing of {x}", "{x}",
              "a simple illustration of {x}")


def _check_held_out(held_out: Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    pairs = tuple((str(c), str(s)) for c, s in held_out)
    for c, s in pairs:
        if c not in COLORS or s not in SHAPES:
            raise ValueError(f"held-out pair ({c!r}, {s!r}) is not a colour x shape of this generator; "
                             f"colours {list(COLORS)}, shapes {list(SHAPES)}")
    if len(set(pairs)) == len(COLORS) * len(SHAPES):
        raise ValueError("every colour-shape pair is held out: nothing left to train on")
    return pairs


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _place(rng: np.random.Generator, sides: list[float], tries: int = 200) -> list[tuple[float, float]] | None:
    """Centres for boxes of the given sides with no overlap (gap MIN_GAP), or None."""
    centres: list[tuple[float, float]] = []
    for d in sides:
        for _ in range(tries):
            lo, hi = MARGIN + d / 2, 1 - MARGIN - d / 2
            cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
            if all(abs(cx - ox) * 2 >= d + od + 2 * MIN_GAP or abs(cy - oy) * 2 >= d + od + 2 * MIN_GAP
                   for (ox, oy), od in zip(centres, sides)):
                centres.append((cx, cy))
                break
        else:
            return None
    return centres


def _background(rng: np.random.Generator) -> dict[str, Any]:
    u = rng.random()
    if u < 0.6:
        name = _pick(rng, list(NAMED_BACKGROUNDS))
        return {"type": "plain", "name": name, "colors": [list(NAMED_BACKGROUNDS[name])]}
    if u < 0.8:
        return {"type": "plain", "name": None, "colors": [list(_pick(rng, UNNAMED_BACKGROUNDS))]}
    a = list(_pick(rng, UNNAMED_BACKGROUNDS + tuple(NAMED_BACKGROUNDS.values())))
    b = list(_pick(rng, UNNAMED_BACKGROUNDS + tuple(NAMED_BACKGROUNDS.values())))
    return {"type": "gradient", "name": None, "colors": [a, b],
            "direction": _pick(rng, ("vertical", "horizontal", "diagonal"))}


def sample_scene(rng: np.random.Generator, *, held_out: Iterable[Sequence[str]] = DEFAULT_HELD_OUT,
                 split: str = "train", n_objects: int | None = None) -> dict[str, Any]:
    """Draw a scene spec.

    Args:
        rng: the random generator.
        held_out: colour-shape pairs never drawn by ``split="train"``.
        split: ``"train"`` (no held-out pair) or ``"heldout"`` (at least one held-out pair).
        n_objects: force the number of objects (1-4); random when None.
    Returns:
        ``{"kind": "scene", "objects": [...], "background": {...}, "split", "held_out"}``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    held = _check_held_out(held_out)
    if split == "heldout" and not held:
        raise ValueError("split='heldout' needs at least one held-out colour-shape pair")
    allowed = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in held]
    n = int(n_objects) if n_objects is not None else int(rng.choice([1, 2, 2, 3, 3, 4]))
    if not 1 <= n <= 4:
        raise ValueError(f"n_objects must be in 1..4, got {n}")
    while True:
        kinds = [_pick(rng, allowed) for _ in range(n)]
        if split == "heldout":
            kinds[0] = _pick(rng, held)
            if n > 1 and rng.random() < 0.5:     # sometimes repeat the held-out object
                kinds[1] = kinds[0]
            kinds = [kinds[i] for i in rng.permutation(n)]
        if n > 2 and rng.random() < 0.4:          # groups of identical objects ("three red circles")
            kinds = ([kinds[0]] * int(rng.integers(2, n + 1)) + kinds[1:])[:n]
        if split == "heldout" and not any(k in held for k in kinds):
            continue
        sizes = [_pick(rng, list(SIZES)) for _ in range(n)]
        sides = [float(rng.uniform(*SIZES[s])) for s in sizes]
        centres = _place(rng, sides)
        if centres is not None:
            break
    objects = [{"color": c, "shape": s, "size": z, "d": round(d, 4), "cx": round(x, 4), "cy": round(y, 4)}
               for (c, s), z, d, (x, y) in zip(kinds, sizes, sides, centres)]
    return {"kind": "scene", "objects": objects, "background": _background(rng), "split": split,
            "held_out": [list(p) for p in held]}


def _background_array(bg: dict[str, Any], size: int) -> np.ndarray:
    cols = np.asarray(bg["colors"], dtype=np.float32)
    if bg["type"] == "plain":
        return np.broadcast_to(cols[0], (size, size, 3)).copy()
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if bg["direction"] == "vertical":
        w = np.broadcast_to(t[:, None], (size, size))
    elif bg["direction"] == "horizontal":
        w = np.broadcast_to(t[None, :], (size, size))
    else:
        w = (t[:, None] + t[None, :]) / 2
    return cols[0] * (1 - w[..., None]) + cols[1] * w[..., None]   # (S, S, 3)


def shape_polygon(shape: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]] | None:
    """Vertices of a square or upward triangle in a box (None for a circle)."""
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[float], fill: Any) -> None:
    """Draw one shape filling ``box`` = (x0, y0, x1, y1) in pixels."""
    poly = shape_polygon(shape, *box)
    if poly is None:
        draw.ellipse(list(box), fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def render_scene(spec: dict[str, Any], resolution: int) -> Image.Image:
    """Render a scene spec to an RGB image of side ``resolution`` (antialiased)."""
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    size = resolution * SUPERSAMPLE
    image = Image.fromarray(np.clip(_background_array(spec["background"], size) + 0.5, 0, 255)
                            .astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in spec["objects"]:
        half = obj["d"] * size / 2
        cx, cy = obj["cx"] * size, obj["cy"] * size
        box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
        if obj.get("outline"):         # a misdrawn object (synth.negatives): its own vertices, in its box
            draw.polygon([(box[0] + u * (box[2] - box[0]), box[1] + v * (box[3] - box[1])) for u, v in obj["outline"]],
                         fill=tuple(COLORS[obj["color"]]))
        else:
            draw_shape(draw, obj["shape"], box, tuple(COLORS[obj["color"]]))
    return image.reduce(SUPERSAMPLE)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(rng: np.random.Generator, color: str, shape: str, count: int, size: str | None) -> str:
    words = ([_pick(rng, _SIZE_WORDS[size])] if size else []) + [color, shape + ("s" if count > 1 else "")]
    head = " ".join(words)
    if count == 1:
        return f"{'one' if rng.random() < 0.15 else _article(head)} {head}"
    return f"{_NUMBERS[count]} {head}"


def relation_of(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The unambiguous relation of object ``a`` to object ``b``, or None when neither axis dominates."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if abs(dx) >= 0.15 and abs(dx) >= 1.5 * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= 0.15 and abs(dy) >= 1.5 * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def describe_scene(spec: dict[str, Any], rng: np.random.Generator, *,
                   with_relation: bool = False) -> tuple[str, dict[str, Any]]:
    """A caption for the scene and the claims it makes (what the checker verifies).

    ``with_relation``: state the relation of a two-object scene whenever it is unambiguous
    (otherwise in 60% of such scenes).

    Returns:
        ``(caption, claims)`` with claims ``{"objects": [{color, shape, count, size}],
        "relation": {subject, relation, object} | None, "background": name | None}``.
    """
    objs = spec["objects"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in objs:
        groups.setdefault((o["color"], o["shape"]), []).append(o)
    relation = None
    if len(objs) == 2 and len(groups) == 2 and (with_relation or rng.random() < 0.6):
        a, b = (objs[0], objs[1]) if rng.random() < 0.5 else (objs[1], objs[0])
        rel = relation_of(a, b)
        if rel is not None:
            relation = {"subject": {"color": a["color"], "shape": a["shape"]}, "relation": rel,
                        "object": {"color": b["color"], "shape": b["shape"]}}
    claims_objects = []
    phrases = []
    order = list(groups)
    if relation is not None:
        order = [(relation["subject"]["color"], relation["subject"]["shape"]),
                 (relation["object"]["color"], relation["object"]["shape"])]
    else:
        order = [order[i] for i in rng.permutation(len(order))]
    for color, shape in order:
        members = groups[(color, shape)]
        same_size = len({m["size"] for m in members}) == 1
        size = members[0]["size"] if same_size and rng.random() < 0.35 else None
        claims_objects.append({"color": color, "shape": shape, "count": len(members), "size": size})
        phrases.append(_phrase(rng, color, shape, len(members), size))
    if relation is not None:
        body = f"{phrases[0]} {_pick(rng, _REL_PHRASES[relation['relation']])} {phrases[1]}"
    elif len(phrases) == 1:
        body = phrases[0]
    else:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    bg = spec["background"]
    background = None
    if bg["type"] == "plain" and bg["name"] and rng.random() < 0.4:
        background = bg["name"]
        body = f"{body} on a {background} background"
    caption = _pick(rng, _TEMPLATES).format(x=body)
    return caption, {"objects": claims_objects, "relation": relation, "background": background}


def caption_scene(spec: dict[str, Any], rng: np.random.Generator) -> str:
    """A natural caption describing every object of the scene (see :func:`describe_scene`)."""
    return describe_scene(spec, rng)[0]


def scene_sample(rng: np.random.Generator, *, held_out: Iterable[Sequence[str]] = DEFAULT_HELD_OUT,
                 split: str = "train", with_relation: bool = False) -> tuple[str, dict[str, Any]]:
    """Draw a scene and its caption; the description holds the spec and the caption's claims.

    ``with_relation``: a scene of two different objects whose caption states where one is relative to
    the other ("a red square above a blue circle"), redrawn until that relation is unambiguous.
    """
    while True:
        spec = sample_scene(rng, held_out=held_out, split=split, n_objects=2 if with_relation else None)
        a, b = spec["objects"][0], spec["objects"][-1]
        if not with_relation or ((a["color"], a["shape"]) != (b["color"], b["shape"]) and relation_of(a, b)):
            break
    caption, claims = describe_scene(spec, rng, with_relation=with_relation)
    return caption, {**spec, "caption": caption, "claims": claims}


def write_shards(out_dir: str | Path, samples: Iterable[tuple[Image.Image, str, dict[str, Any]]], *,
                 shard_size: int = 1000, prefix: str) -> list[Path]:
    """Write (image, caption, metadata) samples as img2dataset webdataset tars (atomic, via ShardWriter).

    Keys are ``{prefix}{count:09d}``: the prefix names the dataset, so shards of
    different builders mixed in one run never share a key.

    Returns:
        The shard paths, in order.
    """
    from common.shards import ShardWriter

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    with ShardWriter(out_dir, max_samples=shard_size) as writer:
        for count, (image, caption, meta) in enumerate(samples):
            key = f"{prefix}{count:09d}"
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            writer.write_sample(key, image=buf.getvalue(), image_ext="png", caption=caption, meta=meta)
    return list(writer.paths)


def build_scenes(out_dir: str | Path, n: int, *, resolution: int = 64, seed: int = 0, split: str = "train",
                 shard_size: int = 1000, held_out: Iterable[Sequence[str]] = DEFAULT_HELD_OUT,
                 relation_share: float = 0.0) -> list[Path]:
    """Write ``n`` synthetic scenes as webdataset shards (``{key}.png``, ``.txt``, ``.json``).

    Args:
        out_dir: directory for the ``NNNNN.tar`` shards.
        n: number of samples.
        resolution: image side in pixels.
        seed: the random seed (same seed, same shards).
        split: ``"train"`` never draws a held-out colour-shape pair; ``"heldout"`` always does.
        shard_size: samples per shard.
        held_out: the held-out colour-shape pairs.
        relation_share: share of scenes drawn as two objects whose caption states their relation
            (:func:`scene_sample` ``with_relation``), on top of those that do by chance (about 7%); 0 keeps
            the shards of a seed exactly as before.
    Returns:
        The shard paths.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= relation_share <= 1.0:
        raise ValueError(f"relation_share must be in [0, 1], got {relation_share}")
    held = _check_held_out(held_out)
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99, 1])

    def samples():
        for _ in range(n):
            relational = relation_share > 0 and bool(rng.random() < relation_share)
            caption, desc = scene_sample(rng, held_out=held, split=split, with_relation=relational)
            yield render_scene(desc, resolution), caption, desc

    paths = write_shards(out_dir, samples(), shard_size=shard_size, prefix="scene")
    log.info("wrote %d %s scenes in %d shards to %s", n, split, len(paths), out_dir)
    return paths
