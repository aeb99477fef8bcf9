"""Saving and loading an image tokenizer: ``vqvae.safetensors`` + ``vqvae.json``, no pickle.

Shared by every tokenizer kind (:class:`vqvae.model.DiscreteVAE`, :class:`vqvae.patch_vq.PatchVQ`):
weights as safetensors, the config as JSON (``config.to_dict()``), each written to a
temporary file and renamed into place, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_FILE = "vqvae.safetensors"
CONFIG_FILE = "vqvae.json"
M = TypeVar("M", bound=nn.Module)


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Temporary file + rename (vqvae/ stays free of other packages; dalle/atomic.py is the shared twin)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tokenizer(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model``'s weights and ``model.config.to_dict()`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic(d / WEIGHTS_FILE, lambda p: save_file(state, p, metadata={"format": "pt"}))
    text = json.dumps(model.config.to_dict(), indent=2, sort_keys=True)
    write_atomic(d / CONFIG_FILE, lambda p: Path(p).write_text(text))
    log.info("saved %s to %s", type(model).__name__, d)
    return d


def load_tokenizer(model_cls: type[M], config_cls: type, directory: str | Path,
                   device: str | torch.device = "cpu", *, complete: bool = False) -> M:
    """Rebuild a tokenizer written by :func:`save_tokenizer`, on ``device``, in eval mode.

    Raises:
        ValueError: missing files, invalid JSON, a bad config, or weights that do not load or match.
    """
    d = Path(directory)
    cfg_path, weights_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ValueError(f"{d} is not an image tokenizer checkpoint: need {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: invalid JSON ({e})") from None
    cfg = config_cls.from_dict(raw, complete=True) if complete else config_cls.from_dict(raw)
    model = model_cls(cfg)
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as e:   # safetensors raises its own error types for truncated or scrambled files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{weights_path} does not load: {first}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{weights_path} does not match its config: {first}") from None
    return model.to(device).eval()
