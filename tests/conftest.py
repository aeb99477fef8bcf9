"""Shared fixtures: the tiny preset, real image shards and a tiny tokenizer written to tmp_path."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable

import lightning.pytorch  # noqa: F401  (imported here, see _no_leftover_log_handlers)
import pytest
import torch

from dalle.tokenizer import TextTokenizer
from tests.helpers import random_caption, write_image_shards
from train.config import Preset, load_preset


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run many times faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_leftover_log_handlers():
    """``dalle``'s main() calls ``logging.basicConfig``, which gives the root logger a handler on the
    sys.stderr of the moment: under capsys, a capture stream closed when the test ends. Later tests
    then log into a closed stream ("--- Logging error ---" in their output). Remove what a test added.
    Lightning gives its own loggers such a handler when first imported, hence its import at the top
    of this file, before any test captures sys.stderr."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def tiny_preset() -> Preset:
    """The ``tiny`` preset (16 px images, 4x4 codes, text_len 8)."""
    return load_preset("tiny")


@pytest.fixture
def image_shards(tmp_path: Path) -> Callable[..., list[Path]]:
    """Factory: ``image_shards(n=16, size=24, fmt="png", per_shard=None, seed=0, subdir="shards")``."""

    def make(n: int = 16, *, subdir: str = "shards", **kw) -> list[Path]:
        return write_image_shards(tmp_path / subdir, n, **kw)

    return make


@pytest.fixture
def tiny_tokenizer(tmp_path: Path, tiny_preset: Preset) -> TextTokenizer:
    """A BPE trained on captions like the shards' ones, sized for the tiny preset."""
    from train.text_tokenizer import train_tokenizer

    rng = random.Random(0)
    path = train_tokenizer([random_caption(rng) for _ in range(200)], tiny_preset.dalle.text_vocab_size,
                           tmp_path / "tokenizer.json", lowercase=tiny_preset.data.lowercase)
    return TextTokenizer(path, tiny_preset.dalle.text_len, tiny_preset.dalle.text_vocab_size,
                         lowercase=tiny_preset.data.lowercase)
