"""The emoji dataset: emoji images captioned with their CLDR names, as img2dataset shards.

Offline sources (any that are installed are used with ``sources=("auto",)``):

- ``twemoji``: npm ``emoji-datasource-twitter`` (64 px PNGs in ``img/twitter/64/``), CC-BY 4.0.
- ``google``: npm ``emoji-datasource-google`` (64 px Noto PNGs in ``img/google/64/``), Apache-2.0.
- ``noto``: Debian ``fonts-noto-color-emoji`` rendered with Pillow (the bitmap font renders
  only at size 109 with ``embedded_color=True``), names from PyPI ``emoji``; OFL-1.1.
- ``fluent``: npm ``@iconify-json/fluent-emoji-flat`` SVGs rasterised with PyPI ``resvg-py``; MIT.

Names come from npm ``emojibase-data`` (CLDR English labels, MIT) when present,
else from the PyPI ``emoji`` package, else from the datasource's own Unicode names.
npm packages are looked up in ``node_modules`` under ``$DALLE_EMOJI_DIR`` and
``~/.cache/dalle-emoji``. Set everything up with :data:`SETUP_COMMAND`; see
``EMOJI_ATTRIBUTION.md`` for the licences (Twemoji needs attribution).

Output: ``out_dir/train/NNNNN.tar`` and ``out_dir/val/NNNNN.tar`` (RGBA PNGs at the
requested resolution, transparent background; the decode path composites them
on ``data.background``), caption ``"an emoji of a grinning face"``, and a JSON
record with the source, code points and name. Held-out names go to ``val`` in
every style, so validation measures emoji the model has not seen.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Sequence

from PIL import Image, ImageDraw, ImageFont

from common.shards import ShardWriter

log = logging.getLogger(__name__)

SETUP_COMMAND = ("npm install --prefix ~/.cache/dalle-emoji emoji-datasource-twitter emoji-datasource-google "
                 "emojibase-data @iconify-json/fluent-emoji-flat && pip install emoji resvg-py && "
                 "apt-get install -y fonts-noto-color-emoji")
NOTO_FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                   "/usr/share/fonts/noto/NotoColorEmoji.ttf")
NOTO_SIZE = 109          # the only size the CBDT bitmap font renders at
TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark",
         "1F3FF": "dark"}


@dataclass
class EmojiItem:
    """One emoji image: its CLDR name, code points (``1f600``, ``""`` if unknown) and RGBA image."""

    name: str
    codepoints: str
    image: Image.Image


@dataclass
class EmojiStats:
    """What :func:`build_emoji` wrote."""

    train: int = 0
    val: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    train_shards: list[str] = field(default_factory=list)
    val_shards: list[str] = field(default_factory=list)


def search_dirs(emoji_dirs: Sequence[str | Path] | None = None) -> list[Path]:
    """Directories searched for ``node_modules`` and fonts: given ones, $DALLE_EMOJI_DIR, ~/.cache/dalle-emoji."""
    if emoji_dirs is not None:
        return [Path(d).expanduser() for d in emoji_dirs]
    dirs = [Path(os.environ["DALLE_EMOJI_DIR"]).expanduser()] if os.environ.get("DALLE_EMOJI_DIR") else []
    return dirs + [Path("~/.cache/dalle-emoji").expanduser()]


def _find(dirs: list[Path], *parts: str) -> Path | None:
    for d in dirs:
        for base in (d / "node_modules", d):
            p = base.joinpath(*parts)
            if p.exists():
                return p
    return None


def hexkey(codepoints: str) -> str:
    """Canonical code point key: upper case, dash separated, variation selector FE0F dropped."""
    return "-".join(p for p in codepoints.upper().replace("_", "-").split("-") if p and p != "FE0F")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def emoji_caption(name: str) -> str:
    """``"grinning face"`` -> ``"an emoji of a grinning face"``."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"an emoji of {article} {name}"


def pypi_emoji_name(ch: str, en: str) -> str:
    """PyPI ``emoji`` name (``:Bahamas:``) -> CLDR-like name (``flag: Bahamas``)."""
    name = en.strip(":").replace("_", " ")
    if len(ch) == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in ch):   # regional-indicator pair
        name = f"flag: {name}"
    return name


class Names:
    """CLDR names by code point key and by slug (for sources that only have slugs)."""

    def __init__(self, dirs: list[Path]):
        self.by_code: dict[str, str] = {}
        data = _find(dirs, "emojibase-data", "en", "data.json")
        if data is not None:
            for e in json.loads(data.read_text()):
                for entry in [e] + list(e.get("skins") or []):
                    self.by_code[hexkey(entry["hexcode"])] = entry["label"]
        else:
            try:
                import emoji
                for ch, info in emoji.EMOJI_DATA.items():
                    code = "-".join(f"{ord(c):X}" for c in ch)
                    self.by_code.setdefault(hexkey(code), pypi_emoji_name(ch, info["en"]))
            except ImportError:
                pass
        self.by_slug = {slug(n): n for n in self.by_code.values()}

    def name(self, codepoints: str, fallback: str | None = None) -> str | None:
        return self.by_code.get(hexkey(codepoints), fallback)


def _tone_name(base: str, codepoints: str) -> str:
    tones = [TONES[p] for p in hexkey(codepoints).split("-") if p in TONES]
    return f"{base}: {', '.join(t + ' skin tone' for t in tones)}" if tones else base


def _square(img: Image.Image, resolution: int) -> Image.Image:
    """Crop to content, pad to a centred transparent square with a small margin, resize."""
    img = img.convert("RGBA")
    bbox = img.getchannel("A").getbbox()
    if bbox is not None:
        img = img.crop(bbox)
    side = int(max(img.size) * 1.08) + 1
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas.resize((resolution, resolution), Image.Resampling.LANCZOS)


class Source:
    """An emoji image set: ``available(dirs)`` and ``items(dirs, names, resolution)``."""

    name = ""
    license = ""

    def available(self, dirs: list[Path]) -> bool:
        raise NotImplementedError

    def items(self, dirs: list[Path], names: Names, resolution: int) -> Iterator[EmojiItem]:
        raise NotImplementedError


class DatasourcePNGs(Source):
    """npm ``emoji-datasource-<set>``: ``emoji.json`` + ``img/<set>/64/<code>.png``."""

    def __init__(self, name: str, package_set: str, license: str):
        self.name, self.set, self.license = name, package_set, license

    def _root(self, dirs: list[Path]) -> Path | None:
        return _find(dirs, f"emoji-datasource-{self.set}")

    def available(self, dirs: list[Path]) -> bool:
        root = self._root(dirs)
        return root is not None and (root / "emoji.json").is_file() and (root / "img" / self.set / "64").is_dir()

    def items(self, dirs: list[Path], names: Names, resolution: int) -> Iterator[EmojiItem]:
        root = self._root(dirs)
        img_dir = root / "img" / self.set / "64"
        for e in json.loads((root / "emoji.json").read_text()):
            base = names.name(e["unified"], e.get("name", e.get("short_name", "")).lower())
            variants = [(e["unified"], e.get("image"), base)]
            for v in (e.get("skin_variations") or {}).values():
                variants.append((v["unified"], v.get("image"), names.name(v["unified"]) or
                                 _tone_name(base, v["unified"])))
            for code, image, name in variants:
                path = img_dir / (image or f"{code.lower()}.png")
                if name and path.is_file():
                    with Image.open(path) as im:
                        yield EmojiItem(name, code.lower(), im.convert("RGBA"))


class NotoFont(Source):
    """Debian ``fonts-noto-color-emoji`` drawn by Pillow; the emoji list from PyPI ``emoji``."""

    name, license = "noto", "OFL-1.1"

    def _font(self, dirs: list[Path]) -> Path | None:
        for p in [d / "NotoColorEmoji.ttf" for d in dirs] + [Path(p) for p in NOTO_FONT_PATHS]:
            if p.is_file():
                return p
        return None

    def available(self, dirs: list[Path]) -> bool:
        try:
            import emoji  # noqa: F401
        except ImportError:
            return False
        return self._font(dirs) is not None

    def items(self, dirs: list[Path], names: Names, resolution: int) -> Iterator[EmojiItem]:
        import emoji
        font = ImageFont.truetype(str(self._font(dirs)), NOTO_SIZE)

        def render(text: str) -> Image.Image:
            canvas = Image.new("RGBA", (NOTO_SIZE * 2, NOTO_SIZE * 2), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text((NOTO_SIZE // 4, NOTO_SIZE // 4), text, font=font, embedded_color=True)
            return canvas

        tofu = render("\U000f0000").tobytes()          # what a missing glyph looks like
        for ch, info in emoji.EMOJI_DATA.items():
            if info.get("status") != emoji.STATUS["fully_qualified"]:
                continue
            code = "-".join(f"{ord(c):x}" for c in ch)
            img = render(ch)
            bbox = img.getbbox()
            if bbox is None or img.tobytes() == tofu:
                continue
            w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
            if w > 1.5 * h:                             # sequence drawn as several glyphs: unsupported
                continue
            name = names.name(code) or pypi_emoji_name(ch, info["en"])
            yield EmojiItem(name, code, img)


class FluentSVGs(Source):
    """npm ``@iconify-json/fluent-emoji-flat`` rasterised with ``resvg-py``; names via slugs."""

    name, license = "fluent", "MIT"
    TONE_SUFFIXES = ("medium-light", "medium-dark", "light", "medium", "dark")

    def _icons(self, dirs: list[Path]) -> Path | None:
        return _find(dirs, "@iconify-json", "fluent-emoji-flat", "icons.json")

    def available(self, dirs: list[Path]) -> bool:
        try:
            import resvg_py  # noqa: F401
        except ImportError:
            return False
        return self._icons(dirs) is not None

    def _name(self, key: str, icons: Collection[str], names: Names) -> str:
        for tone in self.TONE_SUFFIXES:
            base = key[: -len(tone) - 1]
            if key.endswith("-" + tone) and sum(f"{base}-{t}" in icons for t in self.TONE_SUFFIXES) >= 3:
                return f"{self._name(base, icons, names)}: {tone} skin tone"
        return names.by_slug.get(key, key.replace("-", " "))

    def items(self, dirs: list[Path], names: Names, resolution: int) -> Iterator[EmojiItem]:
        import resvg_py
        data = json.loads(self._icons(dirs).read_text())
        icons = dict(data["icons"])
        for alias, spec in (data.get("aliases") or {}).items():
            parent = icons.get(spec.get("parent"))
            if parent is not None and set(spec) <= {"parent", "hFlip", "vFlip"}:
                icons[alias] = {**parent, "hFlip": spec.get("hFlip", False), "vFlip": spec.get("vFlip", False)}
        for key, icon in icons.items():
            w, h = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
            svg = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{icon.get("left", 0)} '
                   f'{icon.get("top", 0)} {w} {h}">{icon["body"]}</svg>')
            side = max(resolution * 2, 64)
            try:
                img = Image.open(io.BytesIO(resvg_py.svg_to_bytes(svg_string=svg, width=side, height=side)))
            except ValueError as e:
                log.warning("fluent %s: cannot render: %s", key, e)
                continue
            if icon.get("hFlip"):
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if icon.get("vFlip"):
                img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            yield EmojiItem(self._name(key, icons, names), "", img.convert("RGBA"))


SOURCES: dict[str, Source] = {
    "twemoji": DatasourcePNGs("twemoji", "twitter", "CC-BY-4.0"),
    "google": DatasourcePNGs("google", "google", "Apache-2.0"),
    "noto": NotoFont(),
    "fluent": FluentSVGs(),
}


def available_sources(emoji_dirs: Sequence[str | Path] | None = None) -> list[str]:
    """Names of the sources installed here."""
    dirs = search_dirs(emoji_dirs)
    return [n for n, s in SOURCES.items() if s.available(dirs)]


def _held_out_rule(held_out: float | Collection[str]) -> Callable[[str], bool]:
    if isinstance(held_out, (int, float)):
        if not 0.0 <= held_out < 1.0:
            raise ValueError(f"held_out fraction must be in [0, 1), got {held_out}")
        return lambda name: zlib.crc32(name.lower().encode()) / 2**32 < held_out
    held = {n.lower() for n in held_out}
    return lambda name: name.lower() in held


def build_emoji(out_dir: str | Path, resolution: int, *, sources: Iterable[str] = ("auto",),
                held_out: float | Collection[str] = 0.02, shard_size: int = 1000,
                emoji_dirs: Sequence[str | Path] | None = None) -> EmojiStats:
    """Write the emoji dataset as img2dataset shards.

    Args:
        out_dir: gets ``train/`` and ``val/`` shard directories.
        resolution: side of the stored PNGs.
        sources: names from :data:`SOURCES`, or ``"auto"`` for every installed one.
        held_out: fraction of emoji names (stable hash) or a collection of names that go
            to ``val`` only, in every style.
        shard_size: samples per shard.
        emoji_dirs: where to look for ``node_modules`` and fonts (default: $DALLE_EMOJI_DIR,
            ~/.cache/dalle-emoji).
    Returns:
        :class:`EmojiStats`.
    Raises:
        ValueError: unknown source, a requested source not installed, or none installed.
    """
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    dirs = search_dirs(emoji_dirs)
    sources = list(sources)
    unknown = [s for s in sources if s != "auto" and s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown emoji source(s) {unknown}; choose from {sorted(SOURCES)} or 'auto'")
    if "auto" in sources:
        chosen = [s for s in SOURCES.values() if s.available(dirs)]
    else:
        missing = [s for s in sources if not SOURCES[s].available(dirs)]
        if missing:
            raise ValueError(f"emoji source(s) {missing} not installed; set up with: {SETUP_COMMAND}")
        chosen = [SOURCES[s] for s in sources]
    if not chosen:
        raise ValueError(f"no emoji source is installed (searched {[str(d) for d in dirs]}); "
                         f"set up with: {SETUP_COMMAND}")
    names = Names(dirs)
    is_held_out = _held_out_rule(held_out)
    stats = EmojiStats()
    out_dir = Path(out_dir)
    n = 0
    with ShardWriter(out_dir / "train", max_samples=shard_size) as train_w, \
            ShardWriter(out_dir / "val", max_samples=shard_size) as val_w:
        for source in chosen:
            count = 0
            for item in source.items(dirs, names, resolution):
                buf = io.BytesIO()
                _square(item.image, resolution).save(buf, format="PNG", optimize=True)
                val = is_held_out(item.name)
                (val_w if val else train_w).write_sample(
                    f"{n:09d}", image=buf.getvalue(), image_ext="png", caption=emoji_caption(item.name),
                    meta={"source": source.name, "license": source.license, "name": item.name,
                          "codepoints": item.codepoints})
                n += 1
                count += 1
                stats.val += val
                stats.train += not val
            stats.by_source[source.name] = count
            log.info("emoji source %s: %d images", source.name, count)
    stats.train_shards = [str(p) for p in train_w.paths]
    stats.val_shards = [str(p) for p in val_w.paths]
    return stats
