"""Train the transformer end to end: data, module, Trainer, resume, inference bundle.

``fit_dalle`` is the function the CLI calls. Two data paths:

- default: precomputed token shards (``{key}.codes.npy`` + ``{key}.txt``), integers only;
- ``dalle_train.on_the_fly``: image shards tokenised inside the module by the frozen VQVAE.

A run resumes from ``latest_checkpoint(out_dir)`` (or a newer SLURM requeue checkpoint) by itself (the tokenizer's sha256 and the
transformer config must match the checkpoint's). At the end rank 0 writes the inference
bundle ``out_dir/bundle`` from the final checkpoint, so it works the same for every strategy
(FSDP included: the checkpoint holds the full state dict).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dalle.bundle import check_compatible, save_bundle
from dalle.model import Block, DalleTransformer
from dalle.tokenizer import TextTokenizer
from train.config import Preset, load_preset
from train.dalle_module import DalleModule
from train.data.loader import ShardDataModule
from train.trainer import CHECKPOINT_DIR, LAST, build_trainer, latest_checkpoint
from vqvae.model import DiscreteVAE

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"


class SaveLastOnTrainEnd(L.Callback):
    """Write ``checkpoints/last.ckpt`` when training ends, unless this step is already saved.

    Periodic checkpoints come every ``ckpt_every`` steps; this makes the final weights (and a
    run stopped early, e.g. after non-finite losses) what ``latest_checkpoint`` resumes from.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / CHECKPOINT_DIR / LAST

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt_cb = trainer.checkpoint_callback
        if trainer.global_step == 0:
            return
        if getattr(ckpt_cb, "_last_global_step_saved", None) == trainer.global_step and self.path.is_file():
            return
        trainer.save_checkpoint(self.path)


def model_from_checkpoint(path: str | Path, dalle_config: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the ``DalleTransformer`` (CPU, eval) from a Lightning checkpoint of :class:`DalleModule`.

    Returns:
        ``(model, info)``, info holding the checkpoint's ``global_step`` and training counters.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own Lightning checkpoint
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model = DalleTransformer(dalle_config)
    model.load_state_dict(state, strict=True)
    info = {"global_step": int(ckpt.get("global_step", 0)), **(ckpt.get("dalle_train_state") or {})}
    return model.eval(), info


def resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest of ``latest_checkpoint(out_dir)`` and Lightning's SLURM requeue checkpoints.

    On SLURM, a job pre-empted with ``--signal=SIGUSR1@90`` writes ``out_dir/hpc_ckpt_N.ckpt``
    before it is requeued; that one is newer than the periodic checkpoints.
    """
    candidates = [p for p in Path(out_dir).glob("hpc_ckpt_*.ckpt") if p.is_file()]
    last = latest_checkpoint(out_dir)
    if last is not None:
        candidates.append(last)
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _data_sources(preset: Preset, token_shards: Any, image_shards: Any) -> tuple[str, list[str]]:
    cfg = preset.dalle_train
    if cfg.on_the_fly:
        sources = image_shards if image_shards is not None else preset.data.train_shards
        kind = "images"
    else:
        sources = token_shards if token_shards is not None else cfg.token_shards
        kind = "tokens"
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else list(sources))]
    if not sources:
        what = ("image shards (data.train_shards or image_shards=)" if cfg.on_the_fly
                else "token shards (dalle_train.token_shards or token_shards=)")
        raise ValueError(f"no training data: give {what}")
    return kind, sources


def fit_dalle(preset: Preset | str, out_dir: str | Path, *, tokenizer_path: str | Path,
              vqvae_dir: str | Path | None = None, token_shards: Any = None, image_shards: Any = None,
              resume: bool = True, callbacks: Iterable[L.Callback] = (), enable_progress_bar: bool = True,
              **trainer_overrides: Any) -> Path:
    """Train the transformer of ``preset`` and write its inference bundle.

    Args:
        preset: a :class:`Preset` or a preset name / YAML path.
        out_dir: run directory (checkpoints, logs, ``bundle``).
        tokenizer_path: the ``tokenizer.json`` (its sha256 is stored in checkpoints and checked on resume).
        vqvae_dir: the trained VQVAE; required on the fly and for the bundle.
        token_shards: token shard sources (default ``dalle_train.token_shards``).
        image_shards: image shard sources for ``on_the_fly`` (default ``data.train_shards``).
        resume: continue from :func:`resume_checkpoint` when there is one.
        callbacks: extra Lightning callbacks.
        enable_progress_bar: show Lightning's progress bar.
        trainer_overrides: extra ``Trainer`` arguments (tests: ``accelerator``, ``strategy``, ``devices``).
    Returns:
        The bundle directory ``out_dir/bundle``; without ``vqvae_dir`` no bundle can be
        made and the final checkpoint's path is returned instead.
    """
    if not isinstance(preset, Preset):
        preset = load_preset(preset)
    if image_shards is not None and token_shards is None and not preset.dalle_train.on_the_fly:
        log.info("image shards given without token shards: tokenising them on the fly with the VQVAE")
        preset = dataclasses.replace(preset, dalle_train=dataclasses.replace(preset.dalle_train, on_the_fly=True))
    cfg = preset.dalle_train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind, sources = _data_sources(preset, token_shards, image_shards)
    if cfg.on_the_fly and vqvae_dir is None:
        raise ValueError("dalle_train.on_the_fly needs vqvae_dir (the frozen VQVAE that tokenises images)")
    tokenizer = TextTokenizer(tokenizer_path, preset.dalle.text_len, preset.dalle.text_vocab_size,
                              lowercase=preset.data.lowercase)
    vqvae = None
    if vqvae_dir is not None:
        vqvae = DiscreteVAE.from_checkpoint(vqvae_dir)
        check_compatible(preset.dalle, vqvae.config)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = DalleModule(preset.dalle, cfg, tokenizer_sha256=tokenizer.sha256, tokenizer_path=str(tokenizer_path),
                         lowercase=preset.data.lowercase,
                         vqvae_dir=str(vqvae_dir) if cfg.on_the_fly else None, out_dir=str(out_dir))
    data = ShardDataModule(preset.data, batch_size=cfg.batch_size, kind=kind, train_sources=sources,
                           tokenizer=tokenizer, image_grid=preset.dalle.image_grid, seed=cfg.seed)
    trainer = build_trainer(cfg, out_dir, callbacks=[SaveLastOnTrainEnd(out_dir), *callbacks],
                            enable_progress_bar=enable_progress_bar, fsdp_wrap={Block}, **trainer_overrides)
    ckpt = resume_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    elif not resume and resume_checkpoint(out_dir) is not None:
        log.warning("resume=False: starting from scratch; checkpoints in %s will be overwritten",
                    out_dir / CHECKPOINT_DIR)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)

    last = resume_checkpoint(out_dir)
    if last is None:
        raise RuntimeError(f"training wrote no checkpoint in {out_dir / CHECKPOINT_DIR}")
    if not trainer.is_global_zero:
        return out_dir / BUNDLE_DIR if vqvae is not None else last
    if vqvae is None:
        log.warning("no vqvae_dir: no inference bundle written; final checkpoint %s", last)
        return last
    model, info = model_from_checkpoint(last, preset.dalle)
    meta = {"preset": preset.name, "global_step": info["global_step"], "data": kind,
            "nonfinite_steps": info.get("nonfinite_total", 0), "skipped": info.get("skipped", {}),
            "checkpoint": last.name}
    path = save_bundle(out_dir / BUNDLE_DIR, model=model, vqvae=vqvae, tokenizer_path=tokenizer_path,
                       lowercase=preset.data.lowercase, meta=meta)
    log.info("wrote inference bundle %s (step %d)", path, info["global_step"])
    return path
