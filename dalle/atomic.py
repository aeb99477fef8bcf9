"""Atomic file writes: a temporary file beside the target, then a rename.

A process killed mid-write leaves the old file (or none), never half a file.
Files get the usual permissions (0666 minus the umask), not mkstemp's 0600.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def default_mode(directory: bool = False) -> int:
    """0666 (files) or 0777 (directories) minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def _written_temp(path: Path, write: Callable[[str], object]) -> Iterator[str]:
    """A temporary file beside ``path`` (its directory created if missing), filled by ``write``
    and given the usual permissions; gone on the way out unless the caller moved it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it onto ``path``.

    Args:
        path: the target file (its directory is created if missing).
        write: writes the whole content to the path it is given.
    Returns:
        ``path``.
    """
    path = Path(path)
    with _written_temp(path, write) as tmp:
        os.replace(tmp, path)
    return path


def write_new(path: str | Path, write: Callable[[str], object], *, max_tries: int = 10_000) -> Path:
    """Like :func:`atomic_write`, but never replaces an existing file: the first free name of
    ``path``, ``stem-2.ext``, ``stem-3.ext``, ... is taken, with a hard link that fails if the
    name exists, so two processes writing into one folder never overwrite each other.

    Args:
        path: the preferred target.
        write: writes the whole content to the path it is given.
        max_tries: names tried before giving up.
    Returns:
        The path written.
    """
    path = Path(path)
    with _written_temp(path, write) as tmp:
        for i in range(1, max_tries + 1):
            target = path if i == 1 else path.with_name(f"{path.stem}-{i}{path.suffix}")
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"{path}: {max_tries} names taken")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
