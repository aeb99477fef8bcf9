"""A tiny real model bundle on disk (random weights, a real BPE) for the CLI and server tests."""
from __future__ import annotations

from pathlib import Path

import torch

from dalle.bundle import save_bundle
from dalle.config import DalleConfig
from dalle.model import DalleTransformer
from tests.helpers import write_bpe
from train.config import load_preset
from vqvae.model import DiscreteVAE

CORPUS = ["a red cube on a table", "a blue sphere in the sky", "two green cats", "a small yellow house",
          "an orange dog running on the grass"] * 4


def random_transformer(cfg: DalleConfig) -> DalleTransformer:
    """A transformer (eval mode) whose weight matrices are N(0, 0.3): random, but its samples are far
    from uniform, so they differ by prompt and seed."""
    model = DalleTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def save_tiny_bundle(root: Path) -> Path:
    """Write a ``tiny`` bundle (16 px images, 4x4 codes out of 32, 8 caption tokens) to ``root/tiny``."""
    preset = load_preset("tiny")
    root.mkdir(parents=True, exist_ok=True)
    write_bpe(root / "tokenizer.json", CORPUS)
    torch.manual_seed(0)
    model = random_transformer(preset.dalle)
    vqvae = DiscreteVAE(preset.vqvae).eval()
    return save_bundle(root / "tiny", model=model, vqvae=vqvae, tokenizer_path=root / "tokenizer.json",
                       meta={"preset": "tiny"})
