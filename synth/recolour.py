"""Recoloured copies of built-in samples, for fitting an image tokenizer's codebook.

A codebook of pixel patches only holds the colour pairs its training images show: a
held-out colour-shape pair ("orange square") never puts an orange straight edge in
front of it, and a sign with a rare board / text pair gets strokes of another pair.
Re-rendering each training sample from its ``.json`` truth with other colours of the
same palette shows the codebook every edge in every colour without drawing anything
the data cannot hold (a channel swap invents colours; BENCHMARKS.md measured it worse).
Captions are not involved: only the image tokenizer sees these images, never the
transformer, so no held-out pair or word reaches a caption. :func:`build_recoloured`
writes them as shards with no caption at all (``dalle data recolour``): image-tokenizer
training reads them, while every stage that needs a caption skips each sample as
``no_caption``. Their ``split`` is ``recoloured``: they may show held-out colour-shape pairs.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from synth.scenes import COLORS, render_scene
from synth.signs import READABLE_ON, render_sign

log = logging.getLogger(__name__)


def recolour_scene(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A scene spec with its object colours mapped through one random permutation of the scene palette
    (:data:`synth.scenes.COLORS`): the same layout, shapes and background."""
    names = list(COLORS)
    perm = dict(zip(names, (names[i] for i in rng.permutation(len(names)))))
    return {**spec, "objects": [{**o, "color": perm[o["color"]]} for o in spec["objects"]]}


def recolour_sign(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A sign spec with a random legible board / text colour pair (:data:`synth.signs.READABLE_ON`)."""
    boards = list(READABLE_ON)
    board = boards[int(rng.integers(len(boards)))]
    text = READABLE_ON[board][int(rng.integers(len(READABLE_ON[board])))]
    return {**spec, "board_color": board, "text_color": text}


RECOLOURERS = {"scene": recolour_scene, "sign": recolour_sign}   # the kinds that can be recoloured


def recolour(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    """:func:`recolour_scene` or :func:`recolour_sign` by the spec's ``kind``; None for other samples."""
    fn = RECOLOURERS.get(spec.get("kind"))
    return None if fn is None else fn(spec, rng)


def render_spec(spec: dict[str, Any], resolution: int) -> Image.Image:
    """The RGB image of a scene or sign spec."""
    return render_scene(spec, resolution) if spec["kind"] == "scene" else render_sign(spec, resolution)[0]


def render_recoloured(spec: dict[str, Any], resolution: int, rng: np.random.Generator) -> torch.Tensor | None:
    """(3, R, R) float image in [0, 1] of a recoloured scene or sign spec; None for other samples."""
    from torchvision.transforms.functional import pil_to_tensor

    new = recolour(spec, rng)
    return None if new is None else pil_to_tensor(render_spec(new, resolution)).float() / 255.0


def build_recoloured(sources: Sequence[str], out_dir: str | Path, *, copies: int = 1, seed: int = 0,
                     resolution: int = 64, shard_size: int = 1000) -> tuple[list[Path], dict[str, int]]:
    """Write ``copies`` recoloured renderings of every built-in scene and sign of ``sources`` as
    image-only shards (``{key}.png`` and ``{key}.json``, the recoloured truth; no ``.txt``).

    Each ``.json`` keeps the recoloured layout (objects, board and text colours, words) but not the
    source's caption or claims, which name the old colours. Samples of other kinds (emoji, scraped
    images) and samples whose ``.json`` is unreadable are skipped and counted. Keys are
    ``recolour{n:09d}``; the same sources and seed give the same shards.

    Returns:
        ``(shard paths, counts)``: counts of ``written`` images, ``read`` samples and skip reasons.
    Raises:
        ValueError: ``copies`` < 1, or no scene or sign in the sources.
    """
    import webdataset as wds

    from common.samples import SkipCounter, read_samples
    from common.shards import ShardWriter, expand_sources

    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    rng = np.random.default_rng([seed, 7])
    counter = SkipCounter()
    counts = {"read": 0, "written": 0}
    with ShardWriter(out_dir, max_samples=shard_size) as writer:
        for sample in read_samples(expand_sources(list(sources)), counter, handler=wds.reraise_exception):
            counts["read"] += 1
            try:
                spec = json.loads(sample["json"])
            except (KeyError, ValueError, UnicodeDecodeError):
                counter.add("no_description")
                continue
            if not isinstance(spec, dict) or spec.get("kind") not in RECOLOURERS:
                counter.add("not_scene_or_sign")
                continue
            for _ in range(copies):
                new = recolour(spec, rng)
                buf = io.BytesIO()
                render_spec(new, resolution).save(buf, format="PNG")
                key = f"recolour{counts['written']:09d}"
                record = {k: v for k, v in new.items() if k not in ("caption", "claims", "key", "status")}
                record.update(key=key, source_key=str(sample.get("__key__", "")), split="recoloured")
                writer.write(key, {"png": buf.getvalue(), "json": json.dumps(record, ensure_ascii=False)})
                counts["written"] += 1
    if counts["written"] == 0:
        raise ValueError(f"no built-in scene or sign in {list(sources)} (read {counts['read']} samples)")
    counts.update(counter.counts)
    log.info("wrote %d recoloured images of %d samples in %d shards to %s", counts["written"], counts["read"],
             len(writer.paths), out_dir)
    return list(writer.paths), counts
