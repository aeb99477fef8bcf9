"""What prompt-level generation returns and the image handling around it.

:class:`Generation` is one generated image as ``dalle.Dalle.generate`` / ``.edit``
return it; ``prepare_image`` turns a user's image into the tokenizer's input and
``keep_count`` says how many codes an edit keeps.
"""
from __future__ import annotations

import io

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from common.image_decode import DecodeSettings, SkipSample, decode_image_uint8


@dataclass
class Generation:
    """One generated image."""

    prompt: str
    index: int                  # candidate index: image_seed(seed, prompt, index) regenerates it
    seed: int                   # the row seed image_seed(seed, prompt, index)
    image: Image.Image
    image_tokens: torch.Tensor  # (image_len,) int64, on CPU
    score: float                # the scorer's value (mean code log-probability by default)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, R, R) floats in [0, 1] -> RGB PIL images."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)      # (B, 3, R, R)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()                                    # (B, R, R, 3)
    return [Image.fromarray(a) for a in arr]


SKIP_MESSAGES = {"too_large": "it has more pixels than the decompression-bomb guard allows",
                 "truncated_image": "the file is cut short", "empty_image": "the file is empty",
                 "corrupt_image": "it is not a readable image"}


def decode_input_image(data: bytes, resolution: int, *, name: str = "the image",
                       settings: DecodeSettings | None = None) -> torch.Tensor:
    """Encoded image bytes -> (1, 3, R, R) in [0, 1], through the training decoder.

    Raises:
        ValueError: one line saying why the image cannot be used (decompression bomb, truncated, ...).
    """
    settings = settings or DecodeSettings(min_size=1)
    try:
        x = decode_image_uint8(data, settings, resolution=resolution)                 # (3, R, R) uint8
    except SkipSample as e:
        raise ValueError(f"cannot read {name} as an image: "
                         f"{SKIP_MESSAGES.get(e.reason, e.reason.replace('_', ' '))}") from None
    return (x.float() / 255.0)[None]


def prepare_image(image: Image.Image | str | Path | bytes | torch.Tensor, resolution: int) -> torch.Tensor:
    """An image (path, encoded bytes, PIL, or (3, H, W) / (1, 3, H, W) tensor in [0, 1]) -> (1, 3, R, R).

    Paths, bytes and PIL images go through the training decoder (:mod:`common.image_decode`: colour
    modes, 16-bit, alpha on white, the decompression-bomb guard, shorter side to R then centre crop),
    so an edit sees its input exactly as training saw its images.
    """
    if isinstance(image, torch.Tensor):
        x = image[None] if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
            raise ValueError(f"expected a float image tensor (3, H, W) in [0, 1], got {tuple(image.shape)}")
        image = tensor_to_pil(x)[0]
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"image file not found: {path}") from None
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
        return decode_input_image(data, resolution, name=str(path))
    if isinstance(image, bytes):
        return decode_input_image(image, resolution)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, a path, bytes or a tensor, got {type(image).__name__}")
    buf = io.BytesIO()
    image.save(buf, format="PNG")            # lossless, keeps the mode (16-bit, alpha) for the decoder
    return decode_input_image(buf.getvalue(), resolution)


def keep_count(image_len: int, image_grid: int, keep_rows: int | None, keep_fraction: float | None) -> int:
    """Number of leading codes (raster order) kept by an edit; raises ValueError when invalid."""
    if (keep_rows is None) == (keep_fraction is None):
        raise ValueError("edit needs exactly one of keep_rows or keep_fraction")
    if keep_rows is not None:
        if int(keep_rows) != keep_rows or not 0 <= keep_rows < image_grid:
            raise ValueError(f"keep_rows must be an integer in [0, {image_grid - 1}], got {keep_rows}")
        return int(keep_rows) * image_grid
    if not 0 <= keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in [0, 1), got {keep_fraction}")
    k = round(keep_fraction * image_len)
    if k >= image_len:
        raise ValueError(f"keep_fraction {keep_fraction} keeps all {image_len} codes; nothing to sample")
    return k
