"""Shared test helpers: random captions and images, shard writing, a tiny BPE."""
from __future__ import annotations

import importlib.util
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from common.image_decode import decode_image_uint8, to_float
from common.shards import ShardWriter
from dalle.tokenizer import EOT

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["square", "circle", "triangle", "star"]


def load_script(name: str):
    """A module of ``scripts/`` (not a package) imported from its file."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_caption(rng: random.Random) -> str:
    """A short caption from a small vocabulary."""
    return f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} on a {rng.choice(COLOURS)} background"


def decode_image(data: bytes | None, cfg, **kwargs):
    """:func:`common.image_decode.decode_image_uint8` as floats in [0, 1] (3, R, R)."""
    return to_float(decode_image_uint8(data, cfg, **kwargs))


def write_bpe(path: str | Path, corpus: list[str], vocab_size: int = 100) -> Path:
    """Train a small BPE on ``corpus`` (whitespace pre-tokenizer, the one special token ``EOT``) and
    save it to ``path`` (a ``tokenizer.json``); returns ``path``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT]))
    tok.save(str(path))
    return Path(path)


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """PIL image -> bytes in ``fmt`` ("png", "jpg" or "webp")."""
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def random_image(rng: np.random.Generator, size: int | tuple[int, int]) -> Image.Image:
    """Random RGB noise image of ``size`` (side or (w, h))."""
    w, h = (size, size) if isinstance(size, int) else size
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def write_image_shards(out_dir: str | Path, n: int = 16, *, size: int | tuple[int, int] = 24,
                       fmt: str = "png", per_shard: int | None = None, seed: int = 0,
                       key_prefix: str = "") -> list[Path]:
    """Write ``n`` random images with captions as img2dataset shards; returns the tar paths.

    Keys are ``{key_prefix}{i:09d}`` like img2dataset's.
    """
    rng = np.random.default_rng(seed)
    cap_rng = random.Random(seed)
    with ShardWriter(out_dir, max_samples=per_shard or n) as writer:
        for i in range(n):
            writer.write_sample(f"{key_prefix}{i:09d}", image=encode_image(random_image(rng, size), fmt),
                                image_ext=fmt, caption=random_caption(cap_rng))
    return writer.paths



def scene_and_sign_shards(root: str | Path, n: int = 12) -> Path:
    """``root/scenes`` and ``root/signs``: ``n`` synthetic samples each (seeds 1 and 2), with their truth."""
    from synth.scenes import build_scenes
    from synth.signs import build_signs
    root = Path(root)
    build_scenes(root / "scenes", n, seed=1)
    build_signs(root / "signs", n, seed=2)
    return root
