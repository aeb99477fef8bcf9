"""Writing generated images: one PNG per image with its settings, and a grid."""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from dalle.atomic import atomic_write, write_new


def slugify(text: str, max_len: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "image"


def save_png_atomic(image: Image.Image, path: Path, text: dict[str, str] | None = None, *,
                    overwrite: bool = True) -> Path:
    """Save a PNG through a temporary file + rename, with optional text chunks.

    With ``overwrite=False`` an existing file is kept and the next free name is used
    (:func:`dalle.atomic.write_new`); the path written is returned.
    """
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    write = atomic_write if overwrite else write_new
    return write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def png_metadata(generation: Any, settings: dict[str, Any]) -> dict[str, str]:
    """The PNG text chunks of one generated image: prompt, index, image seed, score and settings."""
    g = generation
    return {"prompt": g.prompt, "index": str(g.index), "image_seed": str(g.seed),
            "score": f"{g.score:.6f}" if g.score is not None else "",
            "scorer": str(settings.get("scorer", "")),
            "settings": json.dumps(settings, sort_keys=True), "software": "dalle"}


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """Encode ``image`` as PNG bytes with optional text chunks."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


LABEL_HEIGHT = 12   # pixels of the text band under each tile of a labelled grid


def make_grid(images: Sequence[Image.Image], ncol: int | None = None, pad: int = 2,
              background: tuple[int, int, int] = (255, 255, 255),
              labels: Sequence[str] | None = None) -> Image.Image:
    """Tile images (all the same size) into one image, row-major.

    Args:
        labels: optional text drawn in a band under each tile (e.g. its score), one per image.
    """
    if not images:
        raise ValueError("no images to tile")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    w, h = images[0].size
    band = LABEL_HEIGHT if labels is not None else 0
    ncol = ncol or math.ceil(math.sqrt(len(images)))
    nrow = math.ceil(len(images) / ncol)
    grid = Image.new("RGB", (ncol * w + (ncol + 1) * pad, nrow * (h + band) + (nrow + 1) * pad), background)
    draw = ImageDraw.Draw(grid) if labels is not None else None
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        x, y = pad + c * (w + pad), pad + r * (h + band + pad)
        grid.paste(im.convert("RGB"), (x, y))
        if draw is not None:
            draw.text((x + 1, y + h + 1), labels[i], fill=(0, 0, 0), font=ImageFont.load_default())
    return grid


def save_generations(generations: Sequence[Any], out_dir: str | Path, settings: dict[str, Any],
                     *, scale: int = 1, grid_name: str = "grid.png",
                     overwrite: bool = False) -> tuple[list[Path], Path]:
    """Write one PNG per generation and a grid; the prompt, seed and settings go in each PNG's text.

    Args:
        generations: objects with ``prompt``, ``index``, ``seed``, ``image`` (PIL) and ``score``.
        out_dir: the output directory.
        settings: sampling settings stored in the PNG metadata.
        scale: nearest-neighbour upscaling factor for the written files.
        grid_name: file name of the grid (each tile labelled with its score).
        overwrite: replace files of the same name; by default an existing file is never
            replaced and the next free name (``name-2.png``, ...) is used instead.
    Returns:
        The image paths and the grid path.
    """
    out_dir = Path(out_dir)
    paths, shown = [], []
    for g in generations:
        image = g.image
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        meta = png_metadata(g, settings)
        name = f"{slugify(g.prompt)}_{g.index:03d}.png"
        paths.append(save_png_atomic(image, out_dir / name, meta, overwrite=overwrite))
        shown.append(image)
    prompts = sorted({g.prompt for g in generations})
    ncol = max(1, len(generations) // max(1, len(prompts))) if len(prompts) > 1 else None
    labels = [f"{g.score:.3f}" if g.score is not None else "" for g in generations]
    grid = save_png_atomic(make_grid(shown, ncol=ncol, labels=labels), out_dir / grid_name,
                           {"prompts": json.dumps(prompts), "settings": json.dumps(settings, sort_keys=True),
                            "scores": json.dumps([round(g.score, 6) if g.score is not None else None
                                                  for g in generations]),
                            "software": "dalle"}, overwrite=overwrite)
    return paths, grid


def save_recon_grid(images: torch.Tensor, reconstructions: torch.Tensor, path: str | Path) -> Path:
    """Write originals (top row) over reconstructions (bottom row), (B, 3, R, R) in [0, 1], as one PNG."""
    rows = torch.cat([images.float(), reconstructions.float()]).clamp(0, 1).cpu()      # (2B, 3, R, R)
    pil = [Image.fromarray(a) for a in (rows * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    return save_png_atomic(make_grid(pil, ncol=images.shape[0], pad=1, background=(0, 0, 0)), Path(path))
