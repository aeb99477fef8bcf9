"""Image tokenizers by kind: ``load_image_tokenizer(directory)`` reads the kind from ``vqvae.json``.

Every image tokenizer has the same small interface: ``encode(images) -> image_tokens``,
``decode(image_tokens) -> images``, ``save(directory)``, ``from_checkpoint(directory, device)``
and a ``config`` with ``vocab_size``, ``grid_size`` and ``resolution``. Its ``vqvae.json``
names it with a ``"kind"`` key; a file without one is the discrete VAE.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqvae.config import VQVAEConfig
from vqvae.checkpoint import CONFIG_FILE
from vqvae.model import DiscreteVAE
from vqvae.patch_vq import KIND as PATCH_VQ, PatchVQ, PatchVQConfig

DEFAULT_KIND = "dvae"
# kind -> (model class, config class); a new tokenizer adds one line here
IMAGE_TOKENIZERS: dict[str, tuple[type[nn.Module], type]] = {DEFAULT_KIND: (DiscreteVAE, VQVAEConfig),
                                                               PATCH_VQ: (PatchVQ, PatchVQConfig)}


def config_class(kind: str) -> type:
    """The config class of an image tokenizer kind (a preset's ``vqvae.kind``)."""
    if kind not in IMAGE_TOKENIZERS:
        raise ValueError(f"unknown image tokenizer kind {kind!r}; known: {sorted(IMAGE_TOKENIZERS)}")
    return IMAGE_TOKENIZERS[kind][1]


def config_from_preset(section: dict[str, Any]) -> Any:
    """The image tokenizer config of a preset's ``vqvae`` section (``kind`` selects the class; default dVAE)."""
    d = dict(section)
    return config_class(d.pop("kind", DEFAULT_KIND)).from_dict(d)


def build_image_tokenizer(config: Any) -> nn.Module:
    """A new, untrained image tokenizer for ``config``."""
    for model_cls, config_cls in IMAGE_TOKENIZERS.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise ValueError(f"no image tokenizer for config {type(config).__name__}")


def read_config(directory: str | Path) -> tuple[str, dict[str, Any]]:
    """``(kind, config fields)`` of the image tokenizer saved in ``directory``.

    Raises:
        ValueError: no or unreadable ``vqvae.json``, or an unknown kind.
    """
    path = Path(directory) / CONFIG_FILE
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("kind", DEFAULT_KIND)
    if kind not in IMAGE_TOKENIZERS:
        raise ValueError(f"{path}: unknown image tokenizer kind {kind!r}; known: {sorted(IMAGE_TOKENIZERS)}")
    return kind, d


def load_image_tokenizer(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The image tokenizer saved in ``directory`` (its kind read from ``vqvae.json``), in eval mode.

    The config must be complete (no key left to a default) and of the right types.

    Raises:
        ValueError: a missing, incomplete or mistyped config, or weights that do not load.
    """
    kind, fields = read_config(directory)
    model_cls, config_cls = IMAGE_TOKENIZERS[kind]
    config_cls.from_dict(fields, complete=True)   # fail on a missing key before the model's own reader
    return model_cls.from_checkpoint(directory, device=device)
