"""Train the reranking scorer: data, module, Trainer, resume, safetensors + JSON export.

``fit_scorer`` is what ``dalle scorer train`` calls: it builds the scorer's shard
data module (:mod:`train.data.scorer_data`: the same decode and skip counting as the
other stages, plus hard negatives from each sample's truth), the
:class:`~train.scorer_module.ScorerModule` and the shared trainer
(``train/trainer.py``), resumes from the newest intact checkpoint in
``out_dir/checkpoints`` (the tokenizer's sha256 and the scorer config must match),
or, in a fresh run directory, starts from an exported scorer's weights (``init_from``: fine-tuning
the default model's scorer on other shards or with other auxiliary heads), fits to
``scorer_train.max_steps`` and writes the scorer to ``out_dir/scorer``
(``scorer.safetensors`` + ``scorer.json``, which names the tokenizer by its sha256, and a copy of
that ``tokenizer.json``, so the directory is scored and checked on its own).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch

from dalle.atomic import atomic_write_text
from dalle.config import spell_tables_added, with_spelling_ids
from dalle.model import zero_spell_state
from dalle.scorer import ImageTextScorer, ScorerConfig, ScorerError
from dalle.tokenizer import TextTokenizer
from train.checkpoints import clean_orphans, verify
from train.config import Preset
from train.data.scorer_data import ScorerDataModule
from common.shards import expand_sources
from train.scorer_module import ScorerModule
from train.trainer import build_trainer, latest_checkpoint

log = logging.getLogger(__name__)

EXPORT_DIR = "scorer"


def init_weights(path: str | Path, config: ScorerConfig, tokenizer_sha256: str) -> dict[str, torch.Tensor]:
    """The weights of the exported scorer at ``path``, checked against the run's architecture and tokenizer.

    The one change allowed is within-word positions turned on for the caption encoder
    (``scorer.spell_pos``): their tables are added at zero, so the scorer starts out unchanged.

    Raises:
        ValueError: not a scorer directory, another architecture, or another tokenizer (one line each).
    """
    try:
        start = ImageTextScorer.from_checkpoint(path)
    except (ScorerError, OSError) as e:
        raise ValueError(f"--init-from {path}: {e}") from None
    added = spell_tables_added(start.config, config)
    theirs, ours = start.config.to_dict(), config.to_dict()
    if theirs != ours and not added:
        diff = sorted(k for k, v in theirs.items() if ours.get(k) != v)
        raise ValueError(f"--init-from {path}: its scorer config differs from the preset's in {', '.join(diff)}")
    if start.tokenizer_sha256 != tokenizer_sha256:
        raise ValueError(f"--init-from {path}: trained with tokenizer sha256 {str(start.tokenizer_sha256)[:12]}, "
                         f"this run uses {tokenizer_sha256[:12]}")
    state = start.state_dict()
    if added:
        state.update(zero_spell_state(config, config.n_embd, prefix="text_encoder."))
        log.info("--init-from %s: within-word position tables added to the caption encoder "
                 "(scorer.spell_pos=%d), starting at zero", path, config.spell_pos)
    return state


def fit_scorer(preset: Preset, out_dir: str | Path, *, train_shards: list[str], tokenizer_path: str | Path,
               resume: bool = True, init_from: str | Path | None = None, callbacks: Iterable[L.Callback] = (), enable_progress_bar: bool = True,
               trainer_kwargs: dict[str, Any] | None = None) -> Path:
    """Train the scorer of ``preset`` on image shards and export it.

    Args:
        preset: the resolved preset (``scorer``, ``scorer_train`` and ``data`` sections are used).
        out_dir: run directory (checkpoints, logs, ``scorer/``).
        train_shards: shard sources (img2dataset; a ``.json`` with synthetic truth gives hard negatives).
        tokenizer_path: the caption ``tokenizer.json`` of the model the scorer will rerank for.
        resume: continue from the newest intact checkpoint when there is one.
        init_from: an exported scorer directory whose weights a fresh run starts from (its architecture
            and tokenizer must be the preset's; ignored when the run resumes from its own checkpoint).
            The auxiliary heads and the optimizer start fresh.
        callbacks: extra Lightning callbacks.
        enable_progress_bar: show Lightning's progress bar.
        trainer_kwargs: extra ``Trainer`` arguments (passed to ``build_trainer``).
    Returns:
        The exported scorer directory (``dalle.scorer.ImageTextScorer.from_checkpoint`` reads it).
    Raises:
        ValueError: no shards, a tokenizer that does not fit the preset, or a checkpoint (or ``init_from``
            scorer) of another tokenizer or architecture.
    """
    out_dir = Path(out_dir)
    cfg = preset.scorer_train
    shards = [str(s) for s in train_shards]
    if not shards:
        raise ValueError("no training shards: give the image shards to train the scorer on")
    expand_sources(shards)                      # a missing source is one line now, not after the trainer starts
    tokenizer = TextTokenizer(tokenizer_path, preset.scorer.text_len, preset.scorer.text_vocab_size,
                              lowercase=preset.data.lowercase)
    preset = dataclasses.replace(preset, scorer=with_spelling_ids(preset.scorer, tokenizer))
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_orphans(out_dir)
    atomic_write_text(out_dir / "preset.json", json.dumps(preset.to_dict(), indent=2, default=str) + "\n")

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = ScorerModule(preset.scorer, cfg, tokenizer_sha256=tokenizer.sha256)
    data = ScorerDataModule(preset.data, tokenizer=tokenizer, with_negatives=cfg.hard_negatives,
                            aux_grid=module.aux_grid, image_negatives=cfg.image_negatives, batch_size=cfg.batch_size,
                            train_sources=shards, val_sources=[], seed=cfg.seed)
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        log.info("resuming scorer training from %s", ckpt)
        if init_from is not None:
            log.warning("init_from %s ignored: the run resumes from its own checkpoint %s", init_from, ckpt)
    elif init_from is not None:
        module.model.load_state_dict(init_weights(init_from, preset.scorer, tokenizer.sha256))
        log.info("starting from the scorer weights of %s", init_from)
    trainer = build_trainer(cfg, out_dir, callbacks=callbacks, enable_progress_bar=enable_progress_bar,
                            resume_step=verify(ckpt)[0] if ckpt is not None else 0, **(trainer_kwargs or {}))
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt is not None else None)
    seconds = time.perf_counter() - start

    export_dir = out_dir / EXPORT_DIR
    if trainer.is_global_zero:
        meta = {"preset": preset.name, "train_shards": shards, "batch_size": cfg.batch_size,
                "hard_negatives": cfg.hard_negatives, "image_negatives": cfg.image_negatives,
                "aux_weight": cfg.aux_weight,
                "lowercase": preset.data.lowercase,
                "train_seconds_this_run": round(seconds, 1),
                "resumed_from": ckpt.name if ckpt is not None else None,
                "init_from": str(init_from) if init_from is not None and ckpt is None else None}
        module.export(export_dir, meta)
        shutil.copyfile(tokenizer_path, export_dir / "tokenizer.json")
        log.info("wrote scorer %s (step %d, %.0f s)", export_dir, trainer.global_step, seconds)
    trainer.strategy.barrier()
    return export_dir
