"""The inference bundle: everything ``dalle generate`` needs, in one directory.

Layout (no pickles anywhere)::

    bundle.json          format version, tokenizer identity, lowercase flag, metadata, sha256 of the
                         weight and config files (checked after loading: a flipped bit is an error)
    dalle.safetensors    transformer weights    + dalle.json  (DalleConfig)
    vqvae.safetensors    image tokenizer weights + vqvae.json (its config; "kind" names it, default dVAE)
    tokenizer.json       the BPE the transformer was trained with
    README.md            a Hugging Face-style model card with a YAML header (dalle/model_card.py)

Loading checks that the three parts belong together (codebook size, code grid,
tokenizer hash) and loads on CPU with torch alone. Every failure is a one-line
:class:`BundleError`: missing files, truncated weights, configs with missing keys or
wrong types, a ``bundle.json`` version that is not an integer.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from torch import nn

from dalle.atomic import default_mode
from dalle.config import DalleConfig
from dalle.model import DalleTransformer
from dalle.model_card import CARD
from dalle.model_card import model_card as make_card
from dalle.tokenizer import TextTokenizer, file_sha256
from vqvae.registry import IMAGE_TOKENIZERS, load_image_tokenizer, read_config

log = logging.getLogger(__name__)

FORMAT = "dalle-bundle"
VERSION = 1
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "default"
REQUIRED = ("bundle.json", "dalle.safetensors", "dalle.json", "vqvae.safetensors", "vqvae.json",
            "tokenizer.json")


# files whose sha256 bundle.json records (tokenizer.json has its own tokenizer_sha256)
CHECKSUMMED = ("dalle.safetensors", "dalle.json", "vqvae.safetensors", "vqvae.json")


class BundleError(ValueError):
    """A model directory that is missing parts or whose parts do not belong together."""


class Bundle(NamedTuple):
    """The parts of a bundle directory, loaded (``dalle.Dalle`` is the object users hold)."""

    model: DalleTransformer        # its config is model.config
    image_tokenizer: nn.Module     # its config is image_tokenizer.config (vocab_size, grid_size, resolution)
    tokenizer: TextTokenizer
    meta: dict
    path: Path


def check_compatible(model_config: DalleConfig, image_config: Any) -> None:
    """Raise :class:`BundleError` unless the transformer models this image tokenizer's codes.

    Args:
        model_config: the transformer's config.
        image_config: the image tokenizer's config (``vocab_size``, ``grid_size``).
    """
    if model_config.image_vocab_size != image_config.vocab_size:
        raise BundleError(f"the transformer expects {model_config.image_vocab_size} image codes but the "
                          f"image tokenizer has {image_config.vocab_size}: they do not belong together")
    if model_config.image_grid != image_config.grid_size:
        raise BundleError(f"the transformer expects a {model_config.image_grid}x{model_config.image_grid} code "
                          f"grid but the image tokenizer makes {image_config.grid_size}x{image_config.grid_size}")


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {path}: {e}") from None
    if not isinstance(d, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def save_bundle(out_dir: str | Path, *, model: Any, vqvae: Any, tokenizer_path: str | Path,
                lowercase: bool = True, meta: dict | None = None, model_card: str | None = None,
                weights_dtype: str = "float32") -> Path:
    """Write an inference bundle atomically (a temporary directory renamed into place).

    Args:
        out_dir: the bundle directory to create (replaced if it exists).
        model: the trained ``DalleTransformer``.
        vqvae: the image tokenizer whose codes the transformer models (a ``DiscreteVAE`` or another
            kind of ``vqvae.registry.IMAGE_TOKENIZERS``).
        tokenizer_path: the ``tokenizer.json`` used in training.
        lowercase: whether captions are lowercased before encoding.
        meta: free-form metadata (training steps, data, ...), stored in bundle.json.
        model_card: Markdown written by a person for the README.md model card (a YAML header
            is added); None: a card generated from the configs and ``meta`` (see :mod:`dalle.model_card`).
        weights_dtype: how the transformer's weights are stored, ``float32`` or ``float16`` (half the
            file; read back as float32).
    Returns:
        The bundle directory.
    """
    out_dir = Path(out_dir)
    check_compatible(model.config, vqvae.config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    os.chmod(tmp, default_mode(directory=True))
    try:
        model.save(tmp, weights_dtype=weights_dtype)
        vqvae.save(tmp)
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        info = {"format": FORMAT, "version": VERSION,
                "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"),
                "lowercase": bool(lowercase), "meta": meta or {},
                "files": {name: file_sha256(tmp / name) for name in CHECKSUMMED}}
        (tmp / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / CARD).write_text(make_card(model.config, vqvae.config, meta or {}, model_card))
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
    """Load the parts of an inference bundle (the embedded default model when ``path`` is None).

    Use ``dalle.Dalle.from_pretrained`` for generation; this is the file format underneath.

    Args:
        path: the bundle directory.
        device: where to put the models.
    Returns:
        The :class:`Bundle`, models in eval mode.
    Raises:
        BundleError: missing or corrupt files, configs with missing keys or wrong types,
            or parts that do not belong together; always one line.
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    if not path.is_dir():
        raise BundleError(f"model directory not found: {path}")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} is not a dalle model bundle: missing {', '.join(missing)}")
    info = _read_json(path / "bundle.json")
    if info.get("format") != FORMAT:
        raise BundleError(f"{path / 'bundle.json'} is not a {FORMAT} file")
    version = info.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{path / 'bundle.json'}: version must be a positive integer, got {version!r}")
    if version > VERSION:
        raise BundleError(f"{path} has bundle version {version}; this dalle reads <= {VERSION}")
    for key, kind in (("tokenizer_sha256", str), ("lowercase", bool), ("meta", dict), ("files", dict)):
        if key in info and not isinstance(info[key], kind):
            raise BundleError(f"{path / 'bundle.json'}: {key} must be a {kind.__name__}, got {info[key]!r}")
    try:
        model_config = DalleConfig.from_dict(_read_json(path / "dalle.json"), complete=True)
        kind, image_fields = read_config(path)
        image_config = IMAGE_TOKENIZERS[kind][1].from_dict(image_fields, complete=True)
    except ValueError as e:
        raise BundleError(f"{path}: {_first_line(e)}") from None
    check_compatible(model_config, image_config)
    sha = file_sha256(path / "tokenizer.json")
    if sha != info.get("tokenizer_sha256"):
        raise BundleError(f"{path / 'tokenizer.json'} is not the tokenizer the transformer was trained "
                          f"with (sha256 {sha[:12]} != {str(info.get('tokenizer_sha256'))[:12]})")
    try:
        tokenizer = TextTokenizer(path / "tokenizer.json", model_config.text_len, model_config.text_vocab_size,
                                  lowercase=info.get("lowercase", True))
        model = DalleTransformer.from_checkpoint(path, device=device).eval()
        image_tokenizer = load_image_tokenizer(path, device=device).eval()
    except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as e:
        raise BundleError(f"cannot load {path}: {_first_line(e)}") from None
    if model_config.spell_pos and (not tokenizer.spells or (tokenizer.spell_open, tokenizer.spell_close)
                                   != (model_config.spell_open_id, model_config.spell_close_id)):
        raise BundleError(f"{path}: the transformer's spelling token ids "
                          f"({model_config.spell_open_id}, {model_config.spell_close_id}) are not the tokenizer's")
    # last: what loads but is not what was saved (a flipped bit in a weight); older bundles have no record
    for name, recorded in (info.get("files") or {}).items():
        if name in CHECKSUMMED and file_sha256(path / name) != recorded:
            raise BundleError(f"{path / name} does not match the sha256 recorded in bundle.json "
                              f"(corrupted or replaced); copy the bundle again")
    return Bundle(model=model, image_tokenizer=image_tokenizer, tokenizer=tokenizer,
                  meta=info.get("meta", {}), path=path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
