"""Atomic writes: the target is whole or absent, no temporary file stays, modes are the usual ones."""
import os

import pytest

from dalle.atomic import atomic_write, atomic_write_text, default_mode, write_new


def test_atomic_write_replaces_whole_files_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "one")
    assert path.read_text() == "one" and (path.stat().st_mode & 0o777) == default_mode()
    atomic_write_text(path, "two")
    assert path.read_text() == "two"

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "two" and os.listdir(path.parent) == ["a.txt"]


def test_write_new_never_replaces_a_file(tmp_path):
    write = lambda text: lambda tmp: open(tmp, "w").write(text)   # noqa: E731
    first = write_new(tmp_path / "g.png", write("1"))
    second = write_new(tmp_path / "g.png", write("2"))
    assert (first.name, second.name) == ("g.png", "g-2.png") and first.read_text() == "1"
    assert (second.stat().st_mode & 0o777) == default_mode()
    with pytest.raises(FileExistsError, match="1 names taken"):
        write_new(tmp_path / "g.png", write("3"), max_tries=1)
    assert sorted(os.listdir(tmp_path)) == ["g-2.png", "g.png"]
