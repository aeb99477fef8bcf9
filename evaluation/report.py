"""Plots and tables for ``dalle eval``: matplotlib when installed, otherwise plain Pillow drawing."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from dalle.images import make_grid, save_png_atomic

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_lines(series: dict[str, Sequence[tuple[float, float]]], path: str | Path, *, title: str,
               xlabel: str, ylabel: str, logx: bool = False, ymax: float = 1.0) -> Path:
    """Line plot of named (x, y) series with y in [0, ymax], saved as PNG."""
    path = Path(path)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pillow(series, path, title=title, xlabel=xlabel, ylabel=ylabel, logx=logx, ymax=ymax)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, ymax))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_pillow(series, path: Path, *, title: str, xlabel: str, ylabel: str, logx: bool,
                 ymax: float = 1.0) -> Path:
    w, h, left, right, top, bottom = 520, 360, 60, 20, 30, 50
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    xs = [p[0] for pts in series.values() for p in pts] or [1.0]
    fx = (lambda x: math.log10(x)) if logx else (lambda x: x)
    x0, x1 = fx(min(xs)), fx(max(xs))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (fx(x) - x0) / (x1 - x0) * (w - left - right), top + (1 - y / ymax) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        y = i / 5 * ymax
        d.line([px(min(xs), y)[0] - 4, px(min(xs), y)[1], left, px(min(xs), y)[1]], fill="black")
        d.text((8, px(min(xs), y)[1] - 6), f"{y:.3g}", fill="black", font=font)
    last_label = -1e9
    for x in sorted(set(xs)):
        X = px(x, 0)[0]
        d.line([X, h - bottom, X, h - bottom + 4], fill="black")
        label = f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        if X - last_label >= 7 * len(label) + 8:     # a tick for every point, a label where it fits
            d.text((X - 8, h - bottom + 6), label, fill="black", font=font)
            last_label = X
    d.text((w / 2 - 60, 8), title, fill="black", font=font)
    d.text((w / 2 - 20, h - 20), xlabel, fill="black", font=font)
    d.text((4, top - 20), ylabel, fill="black", font=font)
    for i, (name, pts) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        coords = [px(x, y) for x, y in pts]
        if len(coords) > 1:
            d.line(coords, fill=color, width=2)
        for cx, cy in coords:
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        d.text((left + 10, top + 8 + 14 * i), name, fill=color, font=font)
    return save_png_atomic(im, path)


def pass_fail_grid(passing: Sequence[Image.Image], failing: Sequence[Image.Image], path: str | Path, *,
                   per_row: int = 8, scale: int = 2) -> Path:
    """A grid: the first rows passing samples framed green, then failing ones framed red."""
    framed = []
    for images, color in ((passing, (40, 170, 60)), (failing, (210, 40, 40))):
        for img in images[:per_row * 2]:
            img = img.convert("RGB")
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
            box = Image.new("RGB", (img.width + 6, img.height + 6), color)
            box.paste(img, (3, 3))
            framed.append(box)
    if not framed:
        framed = [Image.new("RGB", (16, 16), "white")]
    size = max(f.width for f in framed)
    framed = [f if f.width == size else f.resize((size, size)) for f in framed]
    return save_png_atomic(make_grid(framed, ncol=per_row), Path(path))
