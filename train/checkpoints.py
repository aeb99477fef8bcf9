"""Which checkpoint a run resumes from, and how checkpoints are read safely.

Every checkpoint this program writes gets a record beside it,
``NAME.ckpt.sha256`` (JSON: sha256, size in bytes, global step). Resuming:

- candidates are this run's own names only: ``checkpoints/last.ckpt``,
  ``checkpoints/stepNNNNNNNN.ckpt``, Lightning's older ``last-vN.ckpt`` and
  SLURM's ``hpc_ckpt_N.ckpt`` in the run directory; anything else is never read;
- they are ordered by the step they record (never by name or mtime), and the
  newest one that is intact wins: its bytes match its record, or, for a file
  from before records existed, it loads with ``weights_only=True`` and holds a
  Lightning state dict;
- a mismatch or a failed load is said in one line and the next one is tried;
  none intact is :class:`CheckpointError` (the CLI exits 2).

Reading always uses ``torch.load(weights_only=True)`` with the few plain
container types in :data:`SAFE_GLOBALS` allowed: a planted pickle cannot run.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from dalle.atomic import atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
RECORD_SUFFIX = ".sha256"
SAFE_GLOBALS = [collections.Counter, collections.OrderedDict, pathlib.PosixPath]
_OWN_NAMES = re.compile(r"^(last|last-v\d+|step\d{8})\.ckpt$")
_HPC_NAMES = re.compile(r"^hpc_ckpt_\d+\.ckpt$")
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """No intact checkpoint to resume from, or one that cannot be read."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(path: str | Path) -> Path:
    """``NAME.ckpt`` -> ``NAME.ckpt.sha256``."""
    path = Path(path)
    return path.with_name(path.name + RECORD_SUFFIX)


def write_record(path: str | Path, step: int) -> Path:
    """Write the checksum record of a finished checkpoint file (atomically)."""
    path = Path(path)
    info = {"sha256": sha256_of(path), "size": path.stat().st_size, "global_step": int(step)}
    return atomic_write_text(record_path(path), json.dumps(info) + "\n")


def read_record(path: str | Path) -> dict | None:
    """The record of ``path``, or None when there is none (or it is unreadable)."""
    rec = record_path(path)
    if not rec.is_file():
        return None
    try:
        info = json.loads(rec.read_text())
        return {"sha256": str(info["sha256"]), "size": int(info["size"]),
                "global_step": int(info["global_step"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"sha256": "", "size": -1, "global_step": -1}      # present but broken: never matches


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed.

    Raises:
        CheckpointError: the file is not a checkpoint this program can read safely.
    """
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated zip, bad magic, forbidden global, ...
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(f"{path}: cannot be loaded safely ({e.__class__.__name__}: {first[:160]})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def candidates(out_dir: str | Path) -> list[Path]:
    """The checkpoint files of this run (by name; nothing else in the directory is read)."""
    out_dir = Path(out_dir)
    found = []
    d = out_dir / CHECKPOINT_DIR
    if d.is_dir():
        found += [p for p in d.iterdir() if _OWN_NAMES.match(p.name) and p.is_file()]
    if out_dir.is_dir():
        found += [p for p in out_dir.iterdir() if _HPC_NAMES.match(p.name) and p.is_file()]
    return sorted(found)


def verify(path: str | Path) -> tuple[int, str | None]:
    """``(global_step, None)`` for an intact checkpoint, ``(-1, why)`` otherwise.

    With a record, the size and sha256 must match it; without one (written before
    records existed) the file must load safely.
    """
    path = Path(path)
    rec = read_record(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return -1, f"unreadable ({e.__class__.__name__})"
    if size == 0:
        return -1, "empty file"
    if rec is not None:
        if rec["size"] != size:
            return -1, f"{size} bytes, its record says {rec['size']} (truncated or replaced)"
        if sha256_of(path) != rec["sha256"]:
            return -1, "sha256 does not match its record (corrupted)"
        return rec["global_step"], None
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        return -1, str(e).split(": ", 1)[-1]
    if not isinstance(ckpt.get("state_dict"), dict):
        return -1, "not a Lightning checkpoint (no state_dict)"
    return int(ckpt.get("global_step", 0)), None


def _recorded_step(path: Path) -> int:
    """The step a file claims (its record, else a safe load), for ordering only; -1 if unknown."""
    rec = read_record(path)
    if rec is not None:
        return rec["global_step"]
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("global_step", 0)) if isinstance(ckpt, dict) else -1
    except Exception:  # noqa: BLE001 - judged again (and reported) by verify()
        return -1


def find_resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest intact checkpoint of the run in ``out_dir`` by recorded step, or None if it has none.

    Raises:
        CheckpointError: checkpoints exist but none of them is intact.
    """
    files = candidates(out_dir)
    if not files:
        return None
    # newest step first; at a tie prefer the periodic file, then last.ckpt (same weights)
    order = sorted(files, key=lambda p: (_recorded_step(p), p.name.startswith("step"), p.name == LAST),
                   reverse=True)
    rejected = []
    for path in order:
        step, why = verify(path)
        if why is None:
            if rejected:
                log.warning("resuming from %s (step %d), the newest intact checkpoint", path, step)
            return path
        rejected.append(path)
        log.warning("checkpoint %s is not usable: %s; trying an older one", path, why)
    raise CheckpointError(f"none of the {len(files)} checkpoint(s) in {Path(out_dir)} is intact "
                          f"(see the warnings above); restore a good copy, or start over with --no-resume "
                          f"in a new --out")


def prune_older(out_dir: str | Path, keep: Path) -> list[Path]:
    """After ``keep`` was chosen (and verified) for a resume, remove the run's older step files and
    Lightning's ``last-vN.ckpt`` copies, so the directory holds one ``last`` and no stale copies.

    Returns:
        The files removed (rank 0 only; other ranks remove nothing).
    """
    if not is_global_zero_env():
        return []
    keep_step = verify(keep)[0] if read_record(keep) is None else read_record(keep)["global_step"]
    removed = []
    for path in candidates(out_dir):
        stale = path.name.startswith("last-v") or (path.name.startswith("step") and path != keep)
        if stale and path != keep and _recorded_step(path) <= keep_step:
            path.unlink(missing_ok=True)
            record_path(path).unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d older checkpoint(s): %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def is_global_zero_env() -> bool:
    """Whether this process is (or will be) global rank 0, judged from the launcher's environment."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("NODE_RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def clean_orphans(out_dir: str | Path) -> list[Path]:
    """Remove what killed runs leave behind: ``.*.tmp`` files and ``.bundle.*`` folders.

    A bundle swap killed between its two renames leaves no ``bundle`` but a whole
    ``.bundle.old``; that one is moved back first. Only rank 0 cleans.

    Returns:
        The paths removed.
    """
    out_dir = Path(out_dir)
    removed: list[Path] = []
    if not out_dir.is_dir() or not is_global_zero_env():
        return removed
    bundle, old = out_dir / "bundle", out_dir / ".bundle.old"
    if not bundle.exists() and old.is_dir() and (old / "bundle.json").is_file():
        os.replace(old, bundle)
        log.warning("restored %s from %s (a bundle swap was interrupted)", bundle, old)
    dirs = [out_dir] + [p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for d in dirs:
        for p in d.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    for p in out_dir.iterdir():
        if p.name.startswith(".bundle.") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed %d file(s) left by an interrupted run: %s", len(removed),
                 ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


def check_resumable(checkpoint: dict[str, Any], *, tokenizer_sha256: str | None, config: Any,
                    what: str) -> None:
    """Refuse to resume a text-conditioned stage (transformer, scorer) from another run's checkpoint.

    Args:
        checkpoint: the Lightning checkpoint being loaded.
        tokenizer_sha256: this run's tokenizer (None: not checked).
        config: this run's model config; the checkpoint's is ``hyper_parameters[f"{what}_config"]``.
        what: ``"dalle"`` or ``"scorer"``.
    Raises:
        ValueError: another tokenizer, or another model config.
    """
    saved = checkpoint.get("tokenizer_sha256")
    if saved is not None and tokenizer_sha256 is not None and saved != tokenizer_sha256:
        raise ValueError(f"checkpoint was trained with tokenizer sha256 {saved[:12]}, but this run's "
                         f"tokenizer is {tokenizer_sha256[:12]}: use the original tokenizer.json")
    saved_cfg = (checkpoint.get("hyper_parameters") or {}).get(f"{what}_config")
    if saved_cfg is not None and type(config).from_dict(dict(saved_cfg)) != config:
        raise ValueError(f"checkpoint was trained with a different {what} config; "
                         "resume with the preset it was started with")
