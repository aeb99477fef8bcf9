"""Writing generated images: one PNG per image with its settings, and a grid."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dalle.atomic import atomic_write


def slugify(text: str, max_len: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "image"


def save_png_atomic(image: Image.Image, path: Path, text: dict[str, str] | None = None) -> Path:
    """Save a PNG through a temporary file + rename, with optional text chunks."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def make_grid(images: Sequence[Image.Image], ncol: int | None = None, pad: int = 2,
              background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Tile images (all the same size) into one image, row-major."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    ncol = ncol or math.ceil(math.sqrt(len(images)))
    nrow = math.ceil(len(images) / ncol)
    grid = Image.new("RGB", (ncol * w + (ncol + 1) * pad, nrow * h + (nrow + 1) * pad), background)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid.paste(im.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def save_generations(generations: Sequence[Any], out_dir: str | Path, settings: dict[str, Any],
                     *, scale: int = 1, grid_name: str = "grid.png") -> tuple[list[Path], Path]:
    """Write one PNG per generation and a grid; the prompt, seed and settings go in each PNG's text.

    Args:
        generations: objects with ``prompt``, ``index``, ``seed``, ``image`` (PIL) and ``score``.
        out_dir: the output directory.
        settings: sampling settings stored in the PNG metadata.
        scale: nearest-neighbour upscaling factor for the written files.
        grid_name: file name of the grid.
    Returns:
        The image paths and the grid path.
    """
    out_dir = Path(out_dir)
    paths, shown = [], []
    for g in generations:
        image = g.image
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        meta = {"prompt": g.prompt, "index": str(g.index), "image_seed": str(g.seed),
                "score": f"{g.score:.6f}" if g.score is not None else "",
                "settings": json.dumps(settings, sort_keys=True), "software": "dalle"}
        name = f"{slugify(g.prompt)}_{g.index:03d}.png"
        paths.append(save_png_atomic(image, out_dir / name, meta))
        shown.append(image)
    prompts = sorted({g.prompt for g in generations})
    ncol = max(1, len(generations) // max(1, len(prompts))) if len(prompts) > 1 else None
    grid = save_png_atomic(make_grid(shown, ncol=ncol), out_dir / grid_name,
                           {"prompts": json.dumps(prompts), "settings": json.dumps(settings, sort_keys=True),
                            "software": "dalle"})
    return paths, grid
