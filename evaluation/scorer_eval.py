"""How good an oracle the reranking scorer is, on real renders: pick the true caption among its hard negatives.

For every sample of a shard source (held-out or validation renders with their ``.json``
truth) the scorer compares the true caption with the sample's hard negatives
(:mod:`synth.negatives`: the same scene with one colour / count / shape / relation
changed, the same sign with one letter changed, another board colour, another word).
Reported per source: ``accuracy`` (the true caption scores strictly above every one of
its negatives), the same per kind of negative (true caption above that negative), and
``batch_top1`` (image -> caption retrieval among the captions of a batch of
``batch_size`` samples, the usual CLIP figure, easier than the hard negatives).

The other direction is the one reranking asks (which of several images fits one caption):
``image_accuracy`` is the share of samples whose true image the scorer puts strictly above each
of its **image negatives** for the unchanged caption (the truth with one stated fact made false
and rendered: :func:`synth.negatives.image_negatives`), also per kind (``image_per_kind``).

Run: ``dalle scorer eval SHARDS... --scorer DIR``.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from common.samples import SampleSettings, SkipCounter, read_samples
from common.scorer_batches import (NEG_SLOTS, ScorerCollate, ScorerSample, ScorerSampleDecoder, negatives_rng,
                                   rendered_image_negatives)
from common.shards import expand_sources
from dalle.atomic import atomic_write_text
from dalle.scorer import BUNDLE_SCORER_DIR, ImageTextScorer, ScorerError
from dalle.tokenizer import TextTokenizer
from synth.negatives import hard_negatives
from synth.scenes import render_scene, scene_sample
from synth.signs import sign_sample

IMAGE_NEGATIVES = 2      # image negatives per sample in the evaluation (different kinds; for signs, letters)


def hard_negative_accuracy(scorer: ImageTextScorer, tokenizer: TextTokenizer, source: Any, *,
                           max_images: int = 500, batch_size: int = 100, seed: int = 0,
                           device: str | torch.device = "cpu") -> dict[str, Any]:
    """Hard-negative accuracy of ``scorer`` on one shard source (see the module docstring).

    Args:
        scorer: the scorer (on ``device``).
        tokenizer: the caption tokenizer it was trained with.
        source: shard paths / patterns of one split.
        max_images: samples read at most.
        batch_size: samples per batch (also the pool of ``batch_top1``).
        seed: the seed of the negatives (same seed, same negatives).
        device: where the scorer runs.
    Returns:
        ``{"n", "n_with_negatives", "accuracy", "per_kind": {kind: accuracy}, "n_per_kind", "batch_top1",
        "mean_cosine_true", "mean_cosine_negative"}``.
    """
    batches = shard_batches(tokenizer, source, resolution=scorer.config.resolution, batch_size=batch_size, seed=seed)
    report = accuracy_from_batches(scorer, batches, max_images=max_images, device=device)
    return {**report, "batch_size": batch_size}


def _batched(items: Iterable[ScorerSample], collate: ScorerCollate, batch_size: int) -> Iterator[dict]:
    """Batches of ``batch_size`` samples, the last one possibly smaller."""
    batch: list[ScorerSample] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield collate(batch, {})
            batch = []
    if batch:
        yield collate(batch, {})


def shard_batches(tokenizer: TextTokenizer, source: Any, *, resolution: int, batch_size: int,
                  seed: int = 0) -> Iterator[dict]:
    """Scorer batches of the samples of ``source``, read once in order (bad samples skipped).

    They are the batches of the scorer's validation stream (``train.data.scorer_data.scorer_dataset``
    with ``train=False``): the same decode, and the same negatives, whose sample seed in a one-pass
    stream is ``"{seed}-0-0"`` (epoch 0, rank 0).

    Raises:
        ValueError: no shard matches ``source``, or none of its samples is usable.
    """
    urls = expand_sources(source)
    counter = SkipCounter()
    decode = ScorerSampleDecoder(SampleSettings(resolution=resolution), counter, sample_seed=f"{seed}-0-0",
                                 image_negatives=IMAGE_NEGATIVES)
    n = 0
    for batch in _batched(filter(None, map(decode, read_samples(urls, counter))), ScorerCollate(tokenizer),
                          batch_size):
        n += len(batch["keys"])
        yield batch
    if n == 0:
        raise ValueError(f"no usable sample in {len(urls)} shard(s) (skipped: {dict(counter.counts)})")


def render_batches(tokenizer: TextTokenizer, samples: Iterable[tuple[Image.Image, str, dict]], *,
                   batch_size: int, seed: int = 0) -> Iterator[dict]:
    """Scorer batches (as the shards give them) of in-memory renders ``(image, caption, truth)``."""
    from torchvision.transforms.functional import pil_to_tensor

    def item(i: int, image: Image.Image, caption: str, truth: dict) -> ScorerSample:
        key = f"render{i:09d}"
        pixels = pil_to_tensor(image.convert("RGB"))                                  # (3, R, R) uint8
        negs = hard_negatives(caption, truth, negatives_rng(str(seed), key))[:NEG_SLOTS]
        images = rendered_image_negatives(truth, negatives_rng(f"image-{seed}", key), IMAGE_NEGATIVES,
                                          int(pixels.shape[-1]))
        return ScorerSample(key=key, caption=caption, image=pixels, negatives=negs, neg_images=images)

    items = (item(i, *sample) for i, sample in enumerate(samples))
    yield from _batched(items, ScorerCollate(tokenizer), batch_size)


def synthetic_accuracy(scorer: ImageTextScorer, tokenizer: TextTokenizer, *, n: int = 200, seed: int = 0,
                       batch_size: int = 100, device: str | torch.device = "cpu") -> dict[str, dict[str, Any]]:
    """Hard-negative accuracy on fresh renders of the synthetic generators at the scorer's resolution:
    ``{"scenes_heldout", "signs_heldout", "scenes_train", "signs_train"}`` (``n`` renders each; held-out
    scenes use held-out colour-shape pairs, held-out signs the held-out words)."""
    res = scorer.config.resolution
    out = {}
    for kind in ("scenes", "signs"):
        for split in ("heldout", "train"):
            rng = np.random.default_rng([seed, 16, ("scenes", "signs").index(kind), ("heldout", "train").index(split)])
            if kind == "scenes":
                samples = [(render_scene(d, res), cap, d) for cap, d in
                           (scene_sample(rng, split=split) for _ in range(n))]
            else:
                samples = [sign_sample(rng, res, split=split) for _ in range(n)]
            batches = render_batches(tokenizer, samples, batch_size=batch_size, seed=seed)
            out[f"{kind}_{split}"] = {**accuracy_from_batches(scorer, batches, max_images=n, device=device),
                                      "batch_size": batch_size}
    return out


class _Tally:
    """Wins of the true item over its negatives: all of them (``accuracy``) and each one, by kind."""

    def __init__(self) -> None:
        self.n = self.wins = 0
        self.kind_n: dict[str, int] = defaultdict(int)
        self.kind_wins: dict[str, int] = defaultdict(int)
        self.negative_scores: list[float] = []

    def add(self, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor, kinds: list[list[str]]) -> None:
        """pos (b,) true scores; neg (b, K) negative scores; mask (b, K) which slots hold one; kinds per row."""
        for i in range(pos.size(0)):
            slots = [(j, kind) for j, kind in enumerate(kinds[i]) if mask[i, j]]
            if not slots:
                continue
            self.n += 1
            self.wins += int(bool((pos[i] > neg[i][mask[i]]).all()))
            for j, kind in slots:
                self.kind_n[kind] += 1
                self.kind_wins[kind] += int(bool(pos[i] > neg[i, j]))
                self.negative_scores.append(float(neg[i, j]))

    def accuracy(self) -> float | None:
        return self.wins / self.n if self.n else None

    def per_kind(self) -> dict[str, float]:
        return {k: self.kind_wins[k] / self.kind_n[k] for k in sorted(self.kind_n)}


@torch.inference_mode()
def accuracy_from_batches(scorer: ImageTextScorer, batches: Iterable[dict], *, max_images: int,
                          device: str | torch.device = "cpu") -> dict[str, Any]:
    """The figures of :func:`hard_negative_accuracy` over scorer batches (uint8 images, negatives)."""
    n = top1 = top1_n = 0
    captions, images_ = _Tally(), _Tally()
    cos_true: list[float] = []
    for batch in batches:
        keep = min(len(batch["keys"]), max_images - n)
        images = (batch["images"][:keep].float() / 255.0).to(device)               # (b, 3, R, R)
        text = batch["text_tokens"][:keep].to(device)                              # (b, L)
        mask = batch["neg_mask"][:keep]                                            # (b, K)
        img, txt = scorer.encode_images(images), scorer.encode_text(text)          # (b, D)
        pos = (img * txt).sum(-1).cpu()                                            # (b,)
        cos_true += pos.tolist()
        sims = img @ txt.T                                                         # (b, b)
        if keep > 1:
            top1 += int((sims.argmax(1).cpu() == torch.arange(keep)).sum())
            top1_n += keep
        neg = torch.full(mask.shape, float("-inf"))                                # (b, K)
        if bool(mask.any()):
            rows = mask.nonzero()[:, 0].to(device)
            emb = scorer.encode_text(batch["neg_tokens"][:keep][mask].to(device))  # (N, D)
            neg[mask] = (img[rows] * emb).sum(-1).cpu()
        captions.add(pos, neg, mask, batch["neg_kinds"])
        if "neg_images" in batch and bool(batch["neg_image_mask"][:keep].any()):
            imask = batch["neg_image_mask"][:keep]                                 # (b, J)
            rows = imask.nonzero()[:, 0].to(device)
            emb = scorer.encode_images((batch["neg_images"][:keep][imask].float() / 255.0).to(device))   # (N, D)
            ineg = torch.full(imask.shape, float("-inf"))                          # (b, J)
            ineg[imask] = (emb * txt[rows]).sum(-1).cpu()
            images_.add(pos, ineg, imask, batch["neg_image_kinds"])
        n += keep
        if n >= max_images:
            break
    if n == 0:
        raise ValueError("no usable sample")
    negative = captions.negative_scores
    return {"n": n, "n_with_negatives": captions.n, "accuracy": captions.accuracy(),
            "per_kind": captions.per_kind(), "n_per_kind": dict(sorted(captions.kind_n.items())),
            "batch_top1": top1 / top1_n if top1_n else None,
            "mean_cosine_true": sum(cos_true) / len(cos_true),
            "mean_cosine_negative": sum(negative) / len(negative) if negative else None,
            "n_with_image_negatives": images_.n, "image_accuracy": images_.accuracy(),
            "image_per_kind": images_.per_kind()}


def evaluate_scorer(scorer_dir: str | Path, sources: Sequence[Any], *, tokenizer_path: str | Path | None = None,
                    max_images: int = 500, batch_size: int = 100, seed: int = 0, device: str | torch.device = "cpu",
                    out: str | Path | None = None) -> dict[str, Any]:
    """Hard-negative accuracy per source of the scorer in ``scorer_dir``.

    Args:
        scorer_dir: a scorer directory (``dalle scorer train`` writes ``OUT/scorer``), or a model
            bundle with a scorer (``BUNDLE/scorer``).
        sources: one shard source per entry, each reported on its own (named by its last path part).
        tokenizer_path: the scorer's tokenizer (default: ``scorer_dir/tokenizer.json``, or the bundle's
            for a bundle's scorer, which has no copy of its own); its sha256
            must be the one the scorer was trained with.
        out: write ``scorer_eval.json`` and ``scorer_eval.md`` into this directory.
    Returns:
        ``{"scorer": path, "sources": {name: report}}``.
    Raises:
        ScorerError: an unreadable scorer, or a tokenizer that is not the scorer's.
    """
    scorer_dir = Path(scorer_dir)
    if (scorer_dir / "bundle.json").is_file() and (scorer_dir / BUNDLE_SCORER_DIR).is_dir():
        scorer_dir = scorer_dir / BUNDLE_SCORER_DIR                    # a model bundle: its scorer
    scorer = ImageTextScorer.from_checkpoint(scorer_dir, device=device)
    if tokenizer_path is None:
        tokenizer_path = scorer_dir / "tokenizer.json"
        if not tokenizer_path.is_file() and (scorer_dir.parent / "bundle.json").is_file():
            tokenizer_path = scorer_dir.parent / "tokenizer.json"     # a bundle's scorer reads the bundle's
    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise ScorerError(f"no tokenizer: {tokenizer_path} does not exist; pass the scorer's tokenizer.json")
    lowercase = bool(scorer.meta.get("lowercase", True))
    tokenizer = TextTokenizer(tokenizer_path, scorer.config.text_len, scorer.config.text_vocab_size,
                              lowercase=lowercase)
    if tokenizer.sha256 != scorer.tokenizer_sha256:
        raise ScorerError(f"{tokenizer_path} (sha256 {tokenizer.sha256[:12]}) is not the tokenizer the scorer "
                          f"was trained with ({str(scorer.tokenizer_sha256)[:12]})")
    names = [Path(str(s).rstrip("/")).name or str(s) for s in sources]
    if len(set(names)) != len(names):
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    report = {"scorer": str(scorer_dir), "seed": seed,
              "sources": {name: hard_negative_accuracy(scorer, tokenizer, src, max_images=max_images,
                                                       batch_size=batch_size, seed=seed, device=device)
                          for name, src in zip(names, sources)}}
    if out is not None:
        atomic_write_text(Path(out) / "scorer_eval.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(Path(out) / "scorer_eval.md", to_markdown(report))
    return report


def to_markdown(report: dict[str, Any]) -> str:
    """A table: one row per source, accuracy overall and per kind of negative, then the same for image negatives."""
    kinds = sorted({k for r in report["sources"].values() for k in r["per_kind"]})
    image_kinds = sorted({k for r in report["sources"].values() for k in r.get("image_per_kind", {})})
    header = ["source", "n", "hard-negative accuracy", *kinds, "batch top-1", "image negatives",
              *(f"image {k}" for k in image_kinds)]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [row(header), row(["---"] * len(header))]
    for name, r in report["sources"].items():
        lines.append(row([name, str(r["n"]), fmt(r["accuracy"]), *(fmt(r["per_kind"].get(k)) for k in kinds),
                          f"{fmt(r['batch_top1'])} (of {r['batch_size']})", fmt(r.get("image_accuracy")),
                          *(fmt(r.get("image_per_kind", {}).get(k)) for k in image_kinds)]))
    return "\n".join(lines) + "\n"
