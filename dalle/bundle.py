"""The inference bundle: everything ``dalle generate`` needs, in one directory.

Layout (no pickles anywhere)::

    bundle.json          format version, tokenizer identity, lowercase flag, metadata
    dalle.safetensors    transformer weights    + dalle.json  (DalleConfig)
    vqvae.safetensors    dVAE weights           + vqvae.json  (VQVAEConfig)
    tokenizer.json       the BPE the transformer was trained with
    MODEL_CARD.md        optional

Loading checks that the three parts belong together (codebook size, code grid,
tokenizer hash) and loads on CPU with torch alone.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dalle.atomic import default_mode
from dalle.config import DalleConfig
from dalle.tokenizer import TextTokenizer, file_sha256
from vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)

FORMAT = "dalle-bundle"
VERSION = 1
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "default"
REQUIRED = ("bundle.json", "dalle.safetensors", "dalle.json", "vqvae.safetensors", "vqvae.json",
            "tokenizer.json")


class BundleError(ValueError):
    """A model directory that is missing parts or whose parts do not belong together."""


@dataclass
class Bundle:
    """A loaded inference bundle."""

    model: Any                      # dalle.model.DalleTransformer
    vqvae: Any                      # vqvae.model.DiscreteVAE
    tokenizer: TextTokenizer
    dalle_config: DalleConfig
    vqvae_config: VQVAEConfig
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        """Where the models are."""
        return next(self.model.parameters()).device


def check_compatible(dalle_cfg: DalleConfig, vqvae_cfg: VQVAEConfig) -> None:
    """Raise :class:`BundleError` unless the transformer was built for this VQVAE."""
    if dalle_cfg.image_vocab_size != vqvae_cfg.vocab_size:
        raise BundleError(f"transformer expects {dalle_cfg.image_vocab_size} image codes but the "
                          f"VQVAE has {vqvae_cfg.vocab_size}: they do not belong together")
    if dalle_cfg.image_grid != vqvae_cfg.grid_size:
        raise BundleError(f"transformer expects a {dalle_cfg.image_grid}x{dalle_cfg.image_grid} code "
                          f"grid but the VQVAE makes {vqvae_cfg.grid_size}x{vqvae_cfg.grid_size}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {path}: {e}") from e


def save_bundle(out_dir: str | Path, *, model: Any, vqvae: Any, tokenizer_path: str | Path,
                lowercase: bool = True, meta: dict | None = None, model_card: str | None = None) -> Path:
    """Write an inference bundle atomically (a temporary directory renamed into place).

    Args:
        out_dir: the bundle directory to create (replaced if it exists).
        model: the trained ``DalleTransformer``.
        vqvae: the ``DiscreteVAE`` whose codes the transformer models.
        tokenizer_path: the ``tokenizer.json`` used in training.
        lowercase: whether captions are lowercased before encoding.
        meta: free-form metadata (training steps, data, ...), stored in bundle.json.
        model_card: optional Markdown text written as MODEL_CARD.md.
    Returns:
        The bundle directory.
    """
    out_dir = Path(out_dir)
    check_compatible(model.config, vqvae.config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    os.chmod(tmp, default_mode(directory=True))
    try:
        model.save(tmp)
        vqvae.save(tmp)
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        info = {"format": FORMAT, "version": VERSION,
                "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"),
                "lowercase": bool(lowercase), "meta": meta or {}}
        (tmp / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        if model_card:
            (tmp / "MODEL_CARD.md").write_text(model_card)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_bundle(path: str | Path | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Load an inference bundle (the embedded default model when ``path`` is None).

    Args:
        path: the bundle directory.
        device: where to put the models.
    Returns:
        The :class:`Bundle`, models in eval mode.
    Raises:
        BundleError: missing files, or parts that do not belong together.
    """
    from dalle.model import DalleTransformer
    from vqvae.model import DiscreteVAE

    path = Path(path) if path is not None else DEFAULT_BUNDLE
    if not path.is_dir():
        raise BundleError(f"model directory not found: {path}")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} is not a dalle model bundle: missing {', '.join(missing)}")
    info = _read_json(path / "bundle.json")
    if info.get("format") != FORMAT:
        raise BundleError(f"{path / 'bundle.json'} is not a {FORMAT} file")
    if info.get("version", 0) > VERSION:
        raise BundleError(f"{path} has bundle version {info.get('version')}; this dalle reads <= {VERSION}")
    dalle_cfg = DalleConfig.from_dict(_read_json(path / "dalle.json"))
    vqvae_cfg = VQVAEConfig.from_dict(_read_json(path / "vqvae.json"))
    check_compatible(dalle_cfg, vqvae_cfg)
    sha = file_sha256(path / "tokenizer.json")
    if sha != info.get("tokenizer_sha256"):
        raise BundleError(f"{path / 'tokenizer.json'} is not the tokenizer the transformer was trained "
                          f"with (sha256 {sha[:12]} != {str(info.get('tokenizer_sha256'))[:12]})")
    try:
        tokenizer = TextTokenizer(path / "tokenizer.json", dalle_cfg.text_len, dalle_cfg.text_vocab_size,
                                  lowercase=bool(info.get("lowercase", True)))
        model = DalleTransformer.from_checkpoint(path).to(device).eval()
        vqvae = DiscreteVAE.from_checkpoint(path).to(device).eval()
    except (OSError, RuntimeError, KeyError) as e:
        raise BundleError(f"cannot load {path}: {e}") from e
    return Bundle(model=model, vqvae=vqvae, tokenizer=tokenizer, dalle_config=dalle_cfg,
                  vqvae_config=vqvae_cfg, meta=info.get("meta", {}), path=path)
