"""The scorer's training data from a model's own samples, labelled by the checker.

Renders with one fact made false (:mod:`synth.negatives`) teach the scorer what a wrong image looks
like when it is drawn cleanly; an undertrained model draws wrong images its own way (blobs, merged
shapes, a colour between two). Reranking asks the scorer to order exactly those. So: draw
``candidates`` images for each caption of some training shards, check each against the caption's
truth with the project's checker (:mod:`evaluation.checker`, the oracle of ``dalle eval``), and for
every caption with at least one passing and one failing candidate write one sample per passing
candidate: the caption, that image, and up to :data:`MAX_STORED_NEGATIVES` failing candidates of the
same caption as stored image negatives (``neg0.png``, ``neg1.png``, ...). Scorer training reads them
as image negatives of kind ``generated`` (``scorer_train.image_negatives`` > 0) next to the rendered
ones; the ``.json`` (``kind: generated``) is no synthetic truth, so these samples have no caption
negatives and no auxiliary targets.

Only training captions are drawn (the caller passes training shards): the evaluation's prompts
and held-out words and pairs never reach these samples.

:func:`split_samples` then divides them by caption: the last ``val_share`` of the captions (in the order
drawn) go to ``DIR/val`` to measure how often a scorer puts a passing candidate above a failing one, the
rest to ``DIR/train``, written ``copies`` times under different shard names so that a few hundred
samples weigh something beside tens of thousands of renders (shard sources are deduplicated by name).

Run: ``dalle scorer samples SHARDS... --model BUNDLE --out DIR [--val-share 0.15 --copies 10]``.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from common.samples import SkipCounter, decode_caption, read_samples
from common.scorer_batches import read_truth
from common.shards import ShardWriter, expand_sources
from dalle.atomic import atomic_write_text

log = logging.getLogger(__name__)

MAX_STORED_NEGATIVES = 3
GENERATED_KIND = "generated"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def training_captions(sources: Sequence[Any], limit: int) -> Iterator[tuple[str, str, dict]]:
    """``(key, caption, truth)`` of up to ``limit`` synthetic samples (scenes and signs with claims), taken
    from the sources in turn (one from each, round robin), so every source is drawn from."""
    counter = SkipCounter()
    readers = [read_samples(expand_sources(s), counter) for s in sources]
    n = 0
    while readers and n < limit:
        alive = []
        for reader in readers:
            for sample in reader:
                truth = read_truth(sample.get("json"))
                if not (isinstance(truth, dict) and truth.get("kind") in ("scene", "sign")
                        and isinstance(truth.get("claims"), dict)):
                    continue
                try:
                    caption = decode_caption(sample.get("txt"), lowercase=False)
                except Exception:  # noqa: BLE001 - SkipSample or anything else: not a usable caption
                    continue
                yield str(sample["__key__"]), caption, truth
                n += 1
                alive.append(reader)
                break
            if n >= limit:
                return
        readers = alive


def harvest(model: Any, sources: Sequence[Any], out_dir: str | Path, *, prompts: int = 1000, candidates: int = 8,
            seed: int = 0, chunk: int = 8, check: Callable[[Image.Image, dict], Any] | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Draw, check and write the samples (see the module docstring).

    Args:
        model: a :class:`dalle.api.Dalle` (its recommended sampling settings are used, no reranking).
        sources: training shard sources with synthetic truth (``.json`` with ``claims``).
        out_dir: where the shards and ``harvest.json`` (the counts) go.
        prompts: captions drawn; candidates: images per caption (>= 2).
        seed: the sampling seed (image ``i`` of a caption is ``image_seed(seed, caption, i)``).
        chunk: captions per ``generate`` call.
        check: ``check(image, truth) -> result with .passed`` (default: :func:`evaluation.checker.check`).
        progress: called with ``(captions_done, prompts)``.
    Returns:
        The counts written to ``harvest.json``: captions, candidates, passing candidates, captions with
        mixed results, samples written, and the pass rate of the candidates.
    """
    if candidates < 2:
        raise ValueError(f"candidates must be >= 2 (a passing and a failing one), got {candidates}")
    if prompts < 1:
        raise ValueError(f"prompts must be positive, got {prompts}")
    if check is None:
        from evaluation.checker import check
    out_dir = Path(out_dir)
    stats = {"captions": 0, "candidates": 0, "passed": 0, "mixed_captions": 0, "samples": 0,
             "per_kind": {}, "seed": seed, "candidates_per_caption": candidates,
             "sampling": {k: v for k, v in model.sampling.to_dict().items() if k in ("temperature", "top_k", "top_p",
                                                                                      "guidance")}}
    rng = np.random.default_rng(seed)
    with ShardWriter(out_dir, max_samples=1000) as writer:
        batch: list[tuple[str, str, dict]] = []

        def flush() -> None:
            gens = model.generate([c for _, c, _ in batch], n=candidates, seed=seed, candidates=None)
            for (key, caption, truth), start in zip(batch, range(0, len(gens), candidates)):
                group = gens[start:start + candidates]
                passed = [bool(check(g.image, truth).passed) for g in group]
                kind = stats["per_kind"].setdefault(truth["kind"], {"captions": 0, "candidates": 0, "passed": 0,
                                                                    "mixed_captions": 0})
                for counts in (stats, kind):
                    counts["captions"] += 1
                    counts["candidates"] += len(group)
                    counts["passed"] += sum(passed)
                good = [g for g, p in zip(group, passed) if p]
                bad = [g for g, p in zip(group, passed) if not p]
                if not good or not bad:
                    continue
                stats["mixed_captions"] += 1
                kind["mixed_captions"] += 1
                for g in good:
                    picks = rng.permutation(len(bad))[:MAX_STORED_NEGATIVES]
                    files: dict[str, bytes | str] = {"png": _png(g.image), "txt": caption}
                    for j, b in enumerate(picks):
                        files[f"neg{j}.png"] = _png(bad[int(b)].image)
                    meta = {"key": f"{key}_{g.index}", "caption": caption, "status": "success",
                            "kind": GENERATED_KIND, "source_key": key, "source_kind": truth["kind"],
                            "candidate": g.index, "negative_candidates": [bad[int(b)].index for b in picks]}
                    files["json"] = json.dumps(meta)
                    writer.write(f"{key}_{g.index}", files)
                    stats["samples"] += 1
            if progress is not None:
                progress(stats["captions"], prompts)
            batch.clear()

        for item in training_captions(sources, prompts):
            batch.append(item)
            if len(batch) == chunk:
                flush()
        if batch:
            flush()
    stats["pass_rate"] = stats["passed"] / stats["candidates"] if stats["candidates"] else None
    atomic_write_text(out_dir / "harvest.json", json.dumps(stats, indent=2) + "\n")
    log.info("%d captions, %d of %d candidates pass, %d captions mixed: %d samples in %s", stats["captions"],
             stats["passed"], stats["candidates"], stats["mixed_captions"], stats["samples"], out_dir)
    return stats


def split_samples(out_dir: str | Path, *, val_share: float = 0.15, copies: int = 1) -> dict[str, int]:
    """Divide the harvested shards of ``out_dir`` by caption into ``out_dir/train`` (``copies`` identical
    shards ``00000.tar``, ``00001.tar``, ...) and ``out_dir/val`` (see the module docstring); the harvested
    shards are removed once both are written. Returns the counts."""
    if not 0 <= val_share < 1:
        raise ValueError(f"val_share must be in [0, 1), got {val_share}")
    if copies < 1:
        raise ValueError(f"copies must be positive, got {copies}")
    out_dir = Path(out_dir)
    shards = sorted(out_dir.glob("*.tar"))
    samples = [{k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
               for sample in read_samples([str(p) for p in shards], SkipCounter())]
    caption_of = [json.loads(sample["json"])["source_key"] for sample in samples]
    captions = list(dict.fromkeys(caption_of))                                    # source keys, in order drawn
    val_captions = set(captions[int(len(captions) * (1 - val_share)):]) if val_share else set()
    val = [sample for sample, c in zip(samples, caption_of) if c in val_captions]
    train = [sample for sample, c in zip(samples, caption_of) if c not in val_captions]

    def write(directory: Path, part: list[dict], index: int) -> None:
        with ShardWriter(directory, max_samples=max(1, len(part)), start_index=index) as writer:
            for sample in part:
                writer.write(sample["__key__"], {k: v for k, v in sample.items() if k != "__key__"})

    for stale in [*(out_dir / "train").glob("*"), *(out_dir / "val").glob("*")]:
        stale.unlink()                                  # a split of an earlier draw into the same directory
    for c in range(copies):
        write(out_dir / "train", train, c)
    write(out_dir / "val", val, 0)
    for shard in shards:
        shard.unlink()
        shard.with_name(shard.stem + "_stats.json").unlink(missing_ok=True)
    counts = {"captions": len(captions), "train_samples": len(train), "val_samples": len(val), "copies": copies}
    log.info("%d captions: %d train samples (x%d), %d val samples", len(captions), len(train), copies, len(val))
    return counts
