"""Shard sources and the shard writer (img2dataset format: webdataset tars).

A source is a tar path, a directory (every ``*.tar`` inside, sorted), a glob
(``data/*.tar``), a brace pattern (``shards/{00000..00123}.tar``), a URL
(``http://...``, passed through) or a ``pipe:`` command (passed through).
Files that img2dataset writes beside its tars (``*.parquet``, ``*_stats.json``)
are never read as shards.

:class:`ShardWriter` writes ``{key}.{ext}`` members grouped by key, at most
``max_samples`` samples per tar, each tar written to a temporary file in the
same directory and renamed into place when complete, with an img2dataset-style
``NNNNN_stats.json`` beside it.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterable

import braceexpand

from dalle.atomic import atomic_write_text, default_mode

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")
_KEY_OK = re.compile(r"^[^./\\]+$")


def valid_key(key: str) -> bool:
    """Whether ``key`` can name a sample in a shard: non-empty, no '.', '/' or backslash."""
    return bool(_KEY_OK.match(key))


def _is_passthrough(source: str) -> bool:
    return source.startswith("pipe:") or "://" in source


def expand_sources(sources: str | Path | Iterable[str | Path]) -> list[str]:
    """Expand shard sources into a list of tar URLs (order kept, duplicates dropped).

    Args:
        sources: one source or several (see the module docstring for the forms).
    Returns:
        Local tar paths and passed-through URLs / ``pipe:`` commands.
    Raises:
        ValueError: a source matches nothing (missing file, empty directory or glob).
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out: list[str] = []
    for source in sources:
        source = str(source)
        if _is_passthrough(source):
            out.append(source)
            continue
        pieces = list(braceexpand.braceexpand(os.path.expanduser(source)))
        braced = len(pieces) > 1
        found: list[str] = []
        missing = 0
        for piece in pieces:
            if _GLOB_CHARS.search(piece):
                found += sorted(p for p in glob.glob(piece) if os.path.isfile(p) and p.endswith(".tar"))
            elif os.path.isdir(piece):
                found += sorted(str(p) for p in Path(piece).glob("*.tar") if p.is_file())
            elif os.path.isfile(piece):
                found.append(piece)
            elif braced:
                missing += 1          # img2dataset leaves gaps where a shard failed
            else:
                raise ValueError(f"shard source not found: {piece}")
        if missing:
            log.warning("%s: %d of %d expanded shards do not exist, skipped", source, missing, len(pieces))
        if not found:
            raise ValueError(f"shard source {source!r} matches no .tar file")
        out += found
    return list(dict.fromkeys(out))


def count_samples(url: str) -> int:
    """Samples in one local shard: ``successes`` from its ``_stats.json`` if present, else a header scan.

    Raises:
        ValueError: for ``pipe:`` and remote sources, which cannot be counted without reading them.
    """
    if _is_passthrough(url):
        raise ValueError(f"cannot count the samples of {url!r}; pass epoch_samples explicitly")
    path = Path(url)
    stats = path.with_name(path.stem + "_stats.json")
    if stats.is_file():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; counting %s by scanning it", stats, path)
    keys = set()
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isreg() and "." in member.name:
                keys.add(member.name.split(".", 1)[0])
    return len(keys)


class ShardWriter:
    """Write samples into numbered webdataset tars, atomically, with ``_stats.json`` files.

    Args:
        out_dir: created if missing.
        max_samples: samples per shard.
        start_index: number of the first shard (``00000.tar``).
        digits: zero padding of shard numbers (img2dataset uses 5).

    Use as a context manager; on an exception the incomplete shard is discarded
    (its temporary file removed) and finished shards are kept.
    """

    def __init__(self, out_dir: str | Path, *, max_samples: int = 10_000, start_index: int = 0,
                 digits: int = 5):
        if max_samples < 1:
            raise ValueError("max_samples must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self.index = start_index
        self.digits = digits
        self.paths: list[Path] = []
        self.total = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp: str | None = None
        self._keys: set[str] = set()
        self._start = 0.0

    def _open(self) -> None:
        fd, self._tmp = tempfile.mkstemp(dir=self.out_dir, prefix=".shard-", suffix=".tar.tmp")
        self._tar = tarfile.open(fileobj=os.fdopen(fd, "wb"), mode="w", format=tarfile.USTAR_FORMAT)
        self._keys = set()
        self._start = time.time()

    def write(self, key: str, files: dict[str, bytes | str]) -> None:
        """Add one sample: ``files`` maps extensions (``"png"``, ``"txt"``, ``"codes.npy"``) to contents."""
        if not _KEY_OK.match(key):
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.', '/' or '\\'")
        if not files:
            raise ValueError(f"sample {key!r} has no files")
        if self._tar is None:
            self._open()
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard {self.index}")
        self._keys.add(key)
        for ext, data in files.items():
            if isinstance(data, str):
                data = data.encode("utf-8")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0   # reproducible bytes
            self._tar.addfile(info, io.BytesIO(data))
        if len(self._keys) >= self.max_samples:
            self._finish()

    def has_key(self, key: str) -> bool:
        """Whether ``key`` is already in the shard being written."""
        return self._tar is not None and key in self._keys

    def write_sample(self, key: str, *, image: bytes, image_ext: str, caption: str,
                     meta: dict | None = None) -> None:
        """Add one img2dataset sample: image, caption and a JSON metadata record."""
        if image_ext not in ("jpg", "png", "webp"):
            raise ValueError(f"image_ext must be jpg, png or webp, got {image_ext!r}")
        record = {"key": key, "caption": caption, "status": "success", **(meta or {})}
        self.write(key, {image_ext: image, "txt": caption, "json": json.dumps(record, ensure_ascii=False)})

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        fileobj = self._tar.fileobj
        self._tar.close()
        fileobj.flush()
        os.fsync(fileobj.fileno())
        fileobj.close()
        name = f"{self.index:0{self.digits}d}"
        path = self.out_dir / f"{name}.tar"
        os.chmod(self._tmp, default_mode())
        os.replace(self._tmp, path)
        end = time.time()
        n = len(self._keys)
        stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
                 "duration": end - self._start, "start_time": self._start, "end_time": end,
                 "status_dict": {"success": n}}
        atomic_write_text(self.out_dir / f"{name}_stats.json", json.dumps(stats, indent=2))
        self.paths.append(path)
        self.total += n
        self.index += 1
        self._tar, self._tmp = None, None

    def close(self) -> list[Path]:
        """Finish the current shard; returns every shard written."""
        if self._tar is not None:
            self._finish()
        return list(self.paths)

    def abort(self) -> None:
        """Drop the shard being written; its temporary file is removed even when closing fails
        (on a full disk the tar's end blocks fail to write too)."""
        if self._tar is not None:
            fileobj = self._tar.fileobj
            try:
                self._tar.close()
            except OSError:
                pass
            finally:
                try:
                    fileobj.close()
                except OSError:
                    pass
                if self._tmp is not None and os.path.exists(self._tmp):
                    os.unlink(self._tmp)
                self._tar, self._tmp = None, None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
