"""Scorer batches: image, caption and the caption's hard negatives (shared by scorer training and evaluation).

Each sample's ``.json`` truth gives up to :data:`NEG_SLOTS` hard negative captions
(:func:`synth.negatives.hard_negatives`), decoded by :class:`ScorerSampleDecoder` on top of
:class:`common.samples.SampleDecoder` (bad samples are skipped and counted by reason). A
sample whose ``.json`` is missing, unreadable or not a synthetic truth still trains, with
in-batch negatives only. The negatives of a sample are drawn from a generator seeded by the
stream's sample seed and the sample's key, so a resumed run sees the same ones, and the
evaluation (:mod:`evaluation.scorer_eval`) the ones of the scorer's validation.

:class:`ScorerCollate` adds to the image batches of :mod:`train.data.loader`: "neg_tokens"
(B, NEG_SLOTS, text_len) int64 (empty slots hold the null caption), "neg_mask"
(B, NEG_SLOTS) bool and "neg_kinds" (per sample, the kind of each slot). A negative whose ids equal
the true caption's (the change fell in the part cut by ``text_len``) is no negative: its slot is masked.
With image negatives (``image_negatives`` > 0) batches also carry "neg_images" (B, J, 3, R, R) uint8,
"neg_image_mask" (B, J) bool and "neg_image_kinds": renders of the sample's truth with one fact its caption
states made false, to be scored against the unchanged caption (which image fits, the reranking question).

With ``aux_grid`` set, batches also carry dense targets read off the truth, for the
auxiliary heads of training (:mod:`train.scorer_module`): "aux_cells" (B, aux_grid^2), for
a scene the colour-shape class of the object under each cell centre of an aux_grid x
aux_grid grid (:data:`N_CELL_CLASSES` - 1 for the background), "aux_counts"
(B, :data:`N_CELL_CLASSES` - 1), for a scene how many objects of each colour-shape pair it
has (0..4), "aux_relation" (B, 4), for a scene the relation its caption states (0: none, then
``synth.scenes.RELATIONS``), the colour-shape class of its subject, and the classes of the two
objects in reading order along the relation's axis (the left one then the right one, the upper
one then the lower one; background classes when there is no relation), and "aux_chars" (B, :data:`MAX_CHARS`), for a sign the letters of its
word (26 after the end); -1 where a sample has no such truth.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.image_decode import decode_image_uint8
from common.samples import SampleDecoder, SkipCounter
from dalle.tokenizer import TextTokenizer
from synth.negatives import hard_negatives, image_negatives
from synth.recolour import render_spec
from synth.scenes import COLORS, RELATIONS, SHAPES

NEG_SLOTS = 4
STORED_NEGATIVE = re.compile(r"neg\d+\.(?:png|jpg|jpeg|webp)")   # image negatives a sample carries itself
MAX_CHARS = 12                                   # letters read by the auxiliary word head
N_CHAR_CLASSES = 27                              # A-Z, then "no letter" (after the end of the word)
N_CELL_CLASSES = len(COLORS) * len(SHAPES) + 1   # colour x shape, then background
N_COUNT_CLASSES = 5                              # 0..4 objects of one colour-shape pair
N_RELATION_CLASSES = len(RELATIONS) + 1          # none, then RELATIONS
_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}
_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}


@dataclass
class ScorerSample:
    """A usable sample and its hard negatives."""

    key: str
    caption: str
    image: torch.Tensor                  # (3, R, R) uint8
    negatives: list[tuple[str, str]]     # (kind, caption), at most NEG_SLOTS
    cells: torch.Tensor | None = None    # (aux_grid^2,) int64, -1: no scene truth
    chars: torch.Tensor | None = None    # (MAX_CHARS,) int64, -1: no sign truth
    counts: torch.Tensor | None = None   # (N_CELL_CLASSES - 1,) int64, -1: no scene truth
    relation: torch.Tensor | None = None  # (4,) int64: relation, subject, first, second class; -1: no scene truth
    neg_images: list[tuple[str, torch.Tensor]] = field(default_factory=list)   # (kind, (3, R, R) uint8) image negatives


def _pair_class(obj: dict) -> int:
    """The colour-shape class of a scene object (or a claim's subject / object)."""
    return _COLOR_INDEX[obj["color"]] * len(SHAPES) + _SHAPE_INDEX[obj["shape"]]


def aux_targets(truth: dict | None, grid: int) -> tuple[torch.Tensor, ...]:
    """The auxiliary targets of one sample (see the module docstring): ``(cells, chars, counts, relation)``,
    -1 = none."""
    cells = torch.full((grid * grid,), -1, dtype=torch.long)
    chars = torch.full((MAX_CHARS,), -1, dtype=torch.long)
    counts = torch.full((N_CELL_CLASSES - 1,), -1, dtype=torch.long)
    relation = torch.full((4,), -1, dtype=torch.long)
    if not isinstance(truth, dict):
        return cells, chars, counts, relation
    try:
        if truth.get("kind") == "scene":
            cells.fill_(N_CELL_CLASSES - 1)
            counts.fill_(0)
            rel = (truth.get("claims") or {}).get("relation")
            if rel:
                subject, obj = _pair_class(rel["subject"]), _pair_class(rel["object"])
                # "A right of B" and "B left of A" are one layout: B first, A second. Predicting it from the
                # caption needs the relation bound to its subject, which no sum of word features gives.
                first, second = (subject, obj) if rel["relation"] in ("left", "above") else (obj, subject)
                relation[:] = torch.tensor([RELATIONS.index(rel["relation"]) + 1, subject, first, second])
            else:
                relation[:] = torch.tensor([0, *(N_CELL_CLASSES - 1,) * 3])
            for o in truth["objects"]:
                label = _pair_class(o)
                counts[label] = min(int(counts[label]) + 1, N_COUNT_CLASSES - 1)
                half = float(o["d"]) / 2
                for i in range(grid):
                    y = (i + 0.5) / grid
                    if abs(y - float(o["cy"])) > half:
                        continue
                    for j in range(grid):
                        if abs((j + 0.5) / grid - float(o["cx"])) <= half:
                            cells[i * grid + j] = label
        elif truth.get("kind") == "sign":
            text = str(truth["text"]).upper()
            if len(text) <= MAX_CHARS and text.isascii() and text.isalpha():
                chars.fill_(N_CHAR_CLASSES - 1)
                chars[:len(text)] = torch.tensor([ord(c) - 65 for c in text], dtype=torch.long)
    except (KeyError, TypeError, ValueError):
        cells.fill_(-1)
        chars.fill_(-1)
        counts.fill_(-1)
        relation.fill_(-1)
    return cells, chars, counts, relation


def read_truth(data: bytes | str | None) -> dict | None:
    """A sample's ``.json`` as a dict, or None (missing, not UTF-8 JSON, or not an object)."""
    if data is None:
        return None
    try:
        truth = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return None
    return truth if isinstance(truth, dict) else None


def negatives_rng(sample_seed: str | None, key: str) -> np.random.Generator:
    """The generator of one sample's negatives: a function of the stream's sample seed and the key."""
    digest = hashlib.sha256(f"negatives-{sample_seed}-{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def rendered_image_negatives(truth: dict | None, rng: np.random.Generator, n: int,
                             side: int) -> list[tuple[str, torch.Tensor]]:
    """Up to ``n`` image negatives of a truth (:func:`synth.negatives.image_negatives`) rendered at ``side``
    px: ``[(kind, (3, side, side) uint8)]``; a spec the renderer cannot draw gives no negative."""
    from torchvision.transforms.functional import pil_to_tensor

    out = []
    for kind, spec in image_negatives(truth, rng, n):
        try:
            out.append((kind, pil_to_tensor(render_spec(spec, side))))
        except (KeyError, TypeError, ValueError):
            continue
    return out


class ScorerSampleDecoder(SampleDecoder):
    """:class:`SampleDecoder` plus the hard negatives of the sample's truth (none when ``with_negatives`` is off)
    and, with ``image_negatives`` > 0, up to that many image negatives rendered at the sample's side (the
    truth with one stated fact made false, :func:`synth.negatives.image_negatives`)."""

    def __init__(self, cfg: Any, counter: SkipCounter, *, with_negatives: bool = True,
                 aux_grid: int | None = None, image_negatives: int = 0, **kwargs: Any):
        super().__init__(cfg, counter, **kwargs)
        self.with_negatives = with_negatives
        self.aux_grid = aux_grid
        self.image_negatives = image_negatives

    def decode(self, sample: dict) -> ScorerSample:
        d = super().decode(sample)
        negatives: list[tuple[str, str]] = []
        neg_images: list[tuple[str, torch.Tensor]] = []
        wants_truth = self.with_negatives or self.aux_grid or self.image_negatives
        truth = read_truth(sample.get("json")) if wants_truth else None
        if self.with_negatives:
            negatives = hard_negatives(d.caption, truth, negatives_rng(self.sample_seed, d.key))[:NEG_SLOTS]
        if self.image_negatives:
            neg_images = rendered_image_negatives(truth, negatives_rng(f"image-{self.sample_seed}", d.key),
                                                  self.image_negatives, int(d.image.shape[-1]))
            neg_images += self.stored_image_negatives(sample)
        cells, chars, counts, relation = aux_targets(truth, self.aux_grid) if self.aux_grid else (None,) * 4
        return ScorerSample(key=d.key, caption=d.caption, image=d.image, negatives=negatives,
                            cells=cells, chars=chars, counts=counts, relation=relation, neg_images=neg_images)

    def stored_image_negatives(self, sample: dict) -> list[tuple[str, torch.Tensor]]:
        """The image negatives a sample carries itself (``neg0.png``, ``neg1.png``, ...: failing candidates of a
        model for the same caption, :mod:`train.scorer_samples`), decoded like the sample's image (centre
        crop); one that does not decode is left out and counted as ``bad_stored_negative``."""
        out = []
        for name in sorted(k for k in sample if STORED_NEGATIVE.fullmatch(k)):
            try:
                image = decode_image_uint8(sample[name], self.cfg, resolution=self.cfg.resolution)
            except Exception:  # noqa: BLE001 - SkipSample or a broken file: this negative only
                self.counter.add("bad_stored_negative")
                continue
            out.append(("generated", image))
        return out


class ScorerCollate:
    """Samples -> a batch dict (see the module docstring); captions encoded with ``tokenizer``."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[ScorerSample], skipped: dict[str, int]) -> dict:
        b, L = len(items), self.tokenizer.text_len
        neg_tokens = self.tokenizer.null_tokens(b * NEG_SLOTS).view(b, NEG_SLOTS, L)   # (B, K, L)
        neg_mask = torch.zeros(b, NEG_SLOTS, dtype=torch.bool)                         # (B, K)
        flat = [(i, j, c) for i, s in enumerate(items) for j, (_, c) in enumerate(s.negatives)]
        if flat:
            encoded = self.tokenizer.encode([c for _, _, c in flat])                   # (N, L)
            rows = torch.tensor([i for i, _, _ in flat])
            cols = torch.tensor([j for _, j, _ in flat])
            neg_tokens[rows, cols] = encoded
            neg_mask[rows, cols] = True
        captions = [s.caption for s in items]
        text_tokens = self.tokenizer.encode(captions)                                  # (B, L)
        neg_mask &= ~(neg_tokens == text_tokens[:, None, :]).all(-1)
        batch = {"images": torch.stack([s.image for s in items]), "captions": captions,
                 "keys": [s.key for s in items], "skipped": skipped,
                 "text_tokens": text_tokens, "neg_tokens": neg_tokens, "neg_mask": neg_mask,
                 "neg_kinds": [[k for k, _ in s.negatives] for s in items]}
        slots = max((len(s.neg_images) for s in items), default=0)
        if slots:
            neg_images = torch.zeros(b, slots, *items[0].image.shape, dtype=torch.uint8)   # (B, J, 3, R, R)
            neg_image_mask = torch.zeros(b, slots, dtype=torch.bool)                       # (B, J)
            for i, s in enumerate(items):
                for j, (_, image) in enumerate(s.neg_images):
                    neg_images[i, j] = image
                    neg_image_mask[i, j] = True
            batch.update(neg_images=neg_images, neg_image_mask=neg_image_mask,
                         neg_image_kinds=[[k for k, _ in s.neg_images] for s in items])
        if items and items[0].cells is not None:
            batch["aux_cells"] = torch.stack([s.cells for s in items])            # (B, g*g)
            batch["aux_chars"] = torch.stack([s.chars for s in items])            # (B, MAX_CHARS)
            batch["aux_counts"] = torch.stack([s.counts for s in items])          # (B, colour x shape)
            batch["aux_relation"] = torch.stack([s.relation for s in items])      # (B, 4)
        return batch
