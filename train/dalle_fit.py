"""Train the transformer end to end: data, module, Trainer, resume, inference bundle.

``fit_dalle`` is the function the CLI calls. Two data paths:

- default: precomputed token shards (``{key}.codes.npy`` + ``{key}.txt``), integers only;
- ``dalle_train.on_the_fly``: image shards tokenised inside the module by the frozen VQVAE.

A run resumes by itself from the newest intact checkpoint of its own by recorded step
(:mod:`train.checkpoints`; SLURM requeue checkpoints included; the tokenizer's sha256 and
the transformer config must match the checkpoint's), exactly: data position and RNG
streams are restored too. ``init_from`` starts a new run from a bundle's (or an older
run checkpoint's) transformer weights. At the end rank 0 writes the inference bundle
``out_dir/bundle`` from the final checkpoint this run wrote, so it works the same for
every strategy (FSDP included: the checkpoint holds the full state dict).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dalle.bundle import save_bundle
from dalle.config import spell_tables_added, with_spelling_ids
from dalle.model import Block, DalleTransformer, zero_spell_state
from dalle.tokenizer import TextTokenizer
from train.checkpoints import (CheckpointError, candidates, clean_orphans, load_checkpoint, prune_older,
                               read_record, verify)
from train.config import Preset, load_preset, with_image_tokenizer
from train.dalle_module import DalleModule
from train.dalle_samples import SampleImages
from train.data.datamodule import ShardDataModule
from train.monitor import summary_paragraph
from train.trainer import CHECKPOINT_DIR, LAST, build_trainer, latest_checkpoint
from vqvae.registry import load_image_tokenizer

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
LOSSES = ("train/loss", "train/text_loss", "train/image_loss")


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


def _saved_config(path: str | Path, ckpt: dict[str, Any]) -> Any:
    """The ``DalleConfig`` a :class:`DalleModule` checkpoint records.

    Raises:
        ValueError: it records none (not a transformer checkpoint).
    """
    from dalle.config import DalleConfig

    saved = (ckpt.get("hyper_parameters") or {}).get("dalle_config")
    if saved is None:
        raise ValueError(f"{path}: not a transformer checkpoint (no dalle_config)")
    return DalleConfig.from_dict(dict(saved))


def _model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The transformer's state dict inside a :class:`DalleModule` checkpoint (its ``model.`` entries)."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def model_from_checkpoint(path: str | Path, dalle_config: Any = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the ``DalleTransformer`` (CPU, eval) from a Lightning checkpoint of :class:`DalleModule`.

    Args:
        dalle_config: the architecture to build; None: the one the checkpoint records.
    Returns:
        ``(model, info)``, info holding the checkpoint's ``global_step`` and training counters.
    """
    ckpt = load_checkpoint(path)
    state = _model_state(ckpt)
    if dalle_config is None:
        dalle_config = _saved_config(path, ckpt)
    model = DalleTransformer(dalle_config)
    model.load_state_dict(state, strict=True)
    info = {"global_step": int(ckpt.get("global_step", 0)), **(ckpt.get("dalle_train_state") or {})}
    return model.eval(), info


def resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest intact checkpoint of the run by recorded step, SLURM requeue checkpoints included.

    On SLURM, a job pre-empted with ``--signal=SIGUSR1@90`` writes ``out_dir/hpc_ckpt_N.ckpt``
    before it is requeued; its recorded step makes it win over older periodic checkpoints.
    """
    return latest_checkpoint(out_dir)


def transformer_weights(path: str | Path) -> tuple[Any, str | None, dict[str, torch.Tensor]]:
    """The transformer of a bundle directory or a run checkpoint (``.ckpt``).

    Returns:
        ``(DalleConfig, tokenizer sha256 or None, state_dict)``.
    Raises:
        ValueError: not a bundle / transformer checkpoint.
    """
    from dalle.bundle import load_bundle

    path = Path(path)
    if path.is_dir():
        bundle = load_bundle(path)
        return bundle.model.config, bundle.tokenizer.sha256, bundle.model.state_dict()
    if path.is_file():
        ckpt = load_checkpoint(path)
        return _saved_config(path, ckpt), ckpt.get("tokenizer_sha256"), _model_state(ckpt)
    raise ValueError(f"{path}: no such bundle directory or checkpoint file")


def init_weights(path: str | Path, dalle_config: Any, tokenizer_sha256: str) -> dict[str, torch.Tensor]:
    """Transformer weights to start a run from: a bundle directory or a run checkpoint (``.ckpt``).

    The architecture and the tokenizer must be the ones of this run; the one change allowed is
    within-word positions turned on (``dalle.spell_pos``): their tables are added at zero.

    Raises:
        ValueError: another architecture, another tokenizer, or not a bundle / checkpoint.
    """
    try:
        cfg, sha, state = transformer_weights(path)
    except ValueError as e:
        raise ValueError(f"--init-from {e}") from None
    added = spell_tables_added(cfg, dalle_config)
    if cfg != dalle_config and not added:
        raise ValueError(f"--init-from {path}: its transformer config differs from the preset's "
                         f"dalle section; train with the preset it was made with")
    if sha is not None and sha != tokenizer_sha256:
        raise ValueError(f"--init-from {path}: trained with tokenizer sha256 {str(sha)[:12]}, "
                         f"this run's is {tokenizer_sha256[:12]}: use its tokenizer.json")
    if added:   # the new within-word position tables start at zero: the model starts out unchanged
        state = {**state, **zero_spell_state(dalle_config, dalle_config.n_embd)}
        log.info("--init-from %s: within-word position tables added (dalle.spell_pos=%d), starting at zero",
                 path, dalle_config.spell_pos)
    return state


def _final_checkpoint(trainer: L.Trainer, out_dir: Path, resumed: Path | None) -> Path | None:
    """The checkpoint with the weights this run ends with: the last one this process wrote, else
    (``ddp_spawn`` trains in child processes) the newest of the run's own checkpoints that carry a
    checksum record and are intact, else ``resumed``."""
    io = getattr(trainer.strategy, "checkpoint_io", None)
    last = getattr(io, "last_saved", None)
    if last is not None and Path(last).is_file():
        return Path(last)
    recorded = [(read_record(p)["global_step"], p.name == LAST, p) for p in candidates(out_dir)
                if read_record(p) is not None]
    for _, _, path in sorted(recorded, key=lambda t: t[:2], reverse=True):
        if verify(path)[1] is None:
            return path
    return resumed


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
              val_token_shards: Any = None, resume: bool = True, init_from: str | Path | None = None,
              callbacks: Iterable[L.Callback] = (),
              enable_progress_bar: bool = True, **trainer_overrides: Any) -> Path:
    """Train the transformer of ``preset`` and write its inference bundle.

    Args:
        preset: a :class:`Preset` or a preset name / YAML path.
        out_dir: run directory (checkpoints, logs, ``bundle``).
        tokenizer_path: the ``tokenizer.json`` (its sha256 is stored in checkpoints and checked on resume).
        vqvae_dir: the trained VQVAE; required on the fly and for the bundle.
        token_shards: token shard sources (default ``dalle_train.token_shards``).
        val_token_shards: held-out token shards; with ``dalle_train.val_every`` their loss is logged
            every ``val_every`` steps as ``val/loss``, ``val/text_loss``, ``val/image_loss``.
        image_shards: image shard sources for ``on_the_fly`` (default ``data.train_shards``).
        resume: continue from :func:`resume_checkpoint` when there is one.
        init_from: a bundle directory (or a run checkpoint) whose transformer weights a fresh run
            starts from (fine-tuning, or continuing when the run directory is gone); optimizer,
            schedule and step start anew. Ignored when the run resumes from its own checkpoint.
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
    clean_orphans(out_dir)
    kind, sources = _data_sources(preset, token_shards, image_shards)
    if cfg.on_the_fly and vqvae_dir is None:
        raise ValueError("dalle_train.on_the_fly needs vqvae_dir (the frozen VQVAE that tokenises images)")
    tokenizer = TextTokenizer(tokenizer_path, preset.dalle.text_len, preset.dalle.text_vocab_size,
                              lowercase=preset.data.lowercase)
    preset = dataclasses.replace(preset, dalle=with_spelling_ids(preset.dalle, tokenizer))
    vqvae = None
    if vqvae_dir is not None:   # the codebook size, code grid and resolution are the trained tokenizer's
        vqvae = load_image_tokenizer(vqvae_dir)
        preset = with_image_tokenizer(preset, vqvae.config)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = DalleModule(preset.dalle, cfg, tokenizer_sha256=tokenizer.sha256, tokenizer_path=str(tokenizer_path),
                         lowercase=preset.data.lowercase,
                         vqvae_dir=str(vqvae_dir) if cfg.on_the_fly else None, out_dir=str(out_dir))
    val = [str(v) for v in ([val_token_shards] if isinstance(val_token_shards, (str, Path))
                            else list(val_token_shards or []))]
    data = ShardDataModule(preset.data, batch_size=cfg.batch_size, kind=kind, train_sources=sources,
                           val_sources=val if kind == "tokens" else None,
                           tokenizer=tokenizer, image_grid=preset.dalle.image_grid, seed=cfg.seed)
    ckpt = resume_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
        prune_older(out_dir, ckpt)
        if init_from is not None:
            log.warning("init_from %s ignored: the run resumes from its own checkpoint %s", init_from, ckpt)
    else:
        if not resume and candidates(out_dir):
            log.warning("resume=False: starting from scratch; checkpoints in %s will be overwritten",
                        out_dir / CHECKPOINT_DIR)
        if init_from is not None:
            state = init_weights(init_from, preset.dalle, tokenizer.sha256)
            module.configure_model()
            module.model.load_state_dict(state, strict=True)
            log.info("starting from the transformer weights of %s", init_from)
        elif cfg.code_init == "codebook":
            if vqvae is None or not hasattr(vqvae, "code_vectors"):
                raise ValueError("dalle_train.code_init=codebook needs vqvae_dir with a PatchVQ image tokenizer "
                                 "(its codes' pixels start the code embeddings)")
            module.configure_model()
            module.model.init_image_codes(vqvae.code_vectors(), seed=cfg.seed)
            log.info("image-code embeddings start from the codebook of %s", vqvae_dir)
    resume_step = verify(ckpt)[0] if ckpt is not None else 0
    extra: list[L.Callback] = []
    if vqvae is not None and cfg.image_every > 0 and cfg.sample_prompts:
        extra.append(SampleImages(vqvae, tokenizer, cfg.sample_prompts, cfg.image_every, out_dir, seed=cfg.seed))
    trainer = build_trainer(cfg, out_dir, callbacks=[SaveLastOnTrainEnd(out_dir), *extra, *callbacks],
                            enable_progress_bar=enable_progress_bar, fsdp_wrap={Block},
                            resume_step=resume_step, **trainer_overrides)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)

    last = _final_checkpoint(trainer, out_dir, ckpt)
    if last is None:
        raise CheckpointError(f"training wrote no checkpoint in {out_dir / CHECKPOINT_DIR}")
    if not trainer.is_global_zero:
        return out_dir / BUNDLE_DIR if vqvae is not None else last
    if vqvae is None:
        log.warning("no vqvae_dir: no inference bundle written; final checkpoint %s", last)
        log.info("%s", summary_paragraph(trainer, "transformer", f"checkpoint {last} (no bundle without a VQVAE)",
                                         losses=LOSSES))
        return last
    model, info = model_from_checkpoint(last, preset.dalle)
    meta = {"preset": preset.name, "global_step": info["global_step"], "data": kind,
            "nonfinite_steps": info.get("nonfinite_total", 0), "skipped": info.get("skipped", {}),
            "checkpoint": last.name, "datasets": dataset_names(sources)}
    path = save_bundle(out_dir / BUNDLE_DIR, model=model, vqvae=vqvae, tokenizer_path=tokenizer_path,
                       lowercase=preset.data.lowercase, meta=meta)
    log.info("wrote inference bundle %s (step %d)", path, info["global_step"])
    log.info("%s", summary_paragraph(trainer, "transformer", f"the model bundle {path} (try: dalle serve --model "
                                     f"{path})", losses=LOSSES))
    return path


def dataset_names(sources: Iterable[str]) -> list[str]:
    """Short names of the training data for the model card: the folder of each shard source."""
    names = []
    for s in sources:
        s = str(s)
        name = Path(s.split("{")[0].rstrip("/")).name if not s.startswith("pipe:") else "pipe"
        if Path(s).suffix == ".tar" or name.endswith(".tar") or name.startswith("shard") or not name:
            name = Path(s).parent.name or name
        names.append(name)
    return list(dict.fromkeys(n for n in names if n))
