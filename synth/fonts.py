"""Font discovery for the synthetic signs: installed TrueType fonts plus Pillow's built-in one.

Fonts are named by their file stem (``"DejaVuSans-Bold"``); ``"builtin"`` is
Pillow's scalable default font (``ImageFont.load_default(size=...)``, Pillow
>= 10.1), always available, so nothing needs installing for tests. Which fonts
exist differs between machines: the sign builder records the font of every
sample in its metadata.
"""
from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from pathlib import Path

from PIL import ImageFont

log = logging.getLogger(__name__)

BUILTIN = "builtin"
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/usr/X11R6/lib/X11/fonts",
             "~/.fonts", "~/.local/share/fonts", "/Library/Fonts", "/System/Library/Fonts",
             "C:/Windows/Fonts")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
# Upright, heavy faces stay legible at 64 px; preferred in this order when installed.
PREFERRED = ("DejaVuSans-Bold", "DejaVuSerif-Bold", "DejaVuSansMono-Bold", "LiberationSans-Bold",
             "LiberationSerif-Bold", "LiberationMono-Bold", "FreeSansBold", "FreeSerifBold",
             "NotoSans-Bold", "Ubuntu-B", "Arial Bold", "Arial-Bold")
_SKIP_WORDS = ("italic", "oblique", "light", "thin", "condensed")


def _fc_list() -> list[Path]:
    if shutil.which("fc-list") is None:
        return []
    try:
        out = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("fc-list failed: %s", e)
        return []
    return [Path(line.split(":")[0].strip()) for line in out.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def find_fonts() -> dict[str, Path]:
    """Installed font files by name (file stem), from ``fc-list`` and the usual font directories."""
    files = _fc_list()
    for d in FONT_DIRS:
        root = Path(d).expanduser()
        if root.is_dir():
            files.extend(p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
    fonts: dict[str, Path] = {}
    for path in sorted(set(files)):
        if path.suffix.lower() in FONT_SUFFIXES and path.is_file():
            fonts.setdefault(path.stem, path)
    return fonts


def sign_fonts(max_fonts: int = 4) -> list[str]:
    """Names of the legible fonts the sign builder draws from: preferred installed ones, then builtin."""
    if max_fonts < 1:
        raise ValueError(f"max_fonts must be >= 1, got {max_fonts}")
    installed = find_fonts()
    names = [n for n in PREFERRED if n in installed]
    if not names:   # no preferred face: any upright regular/bold face
        names = sorted(n for n in installed if not any(w in n.lower() for w in _SKIP_WORDS))
    return names[: max_fonts - 1] + [BUILTIN]


@functools.lru_cache(maxsize=256)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """The font ``name`` at pixel size ``size``.

    Raises:
        ValueError: the font is not installed on this machine.
    """
    if size < 1:
        raise ValueError(f"font size must be >= 1, got {size}")
    if name == BUILTIN:
        return ImageFont.load_default(size=size)
    path = find_fonts().get(name)
    if path is None:
        raise ValueError(f"font {name!r} is not installed here; available: {[BUILTIN, *find_fonts()]}")
    return ImageFont.truetype(str(path), size=size)
