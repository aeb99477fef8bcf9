"""Issue 13 items 10-12: bad input to ``dalle generate`` / ``dalle edit`` is one line and exit 2 (never a
traceback), checked before any sampling, nothing half-written; images are never overwritten silently;
``dalle edit`` decodes its image exactly as the training decoder does."""
from __future__ import annotations

import errno
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import cli.main as M
from cli.main import main
from tests.cli.test_cli import make_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bad_input"))


def png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and the non-empty stderr lines of ``dalle ARGV`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as e:                                   # argparse errors
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def never_sample(*args, **kwargs):
    raise AssertionError("sampling started before the input was checked")


CASES = {
    # name: (argv with OUT / FILE / BOMB / IMG placeholders, expected words of the one line)
    "non-utf8 prompt": (["generate", "a \udcff\udcfe circle", "--out", "OUT"], "not valid UTF-8"),
    "non-utf8 edit prompt": (["edit", "IMG", "a \udcff circle", "--out", "OUT"], "not valid UTF-8"),
    "out is a file": (["generate", "a red circle", "--out", "FILE"], "existing file"),
    "out under a file": (["generate", "a red circle", "--out", "FILE/sub"], "part of the path is a file"),
    "edit out is a file": (["edit", "IMG", "a red circle", "--out", "FILE"], "existing file"),
    "scale 100000": (["generate", "a red circle", "--scale", "100000", "--out", "OUT"], "--scale"),
    "scale 0": (["generate", "a red circle", "--scale", "0", "--out", "OUT"], "--scale"),
    "20000x20000 edit image": (["edit", "BOMB", "a red circle", "--out", "OUT"], "decompression-bomb"),
    "truncated edit image": (["edit", "CUT", "a red circle", "--out", "OUT"], "cut short"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_before_sampling(name, bundle_dir, tmp_path, capsys, monkeypatch):
    argv, words = CASES[name]
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "bomb.png").write_bytes(png_header_only(20000, 20000))
    Image.new("RGB", (24, 24), (200, 30, 30)).save(tmp_path / "img.png")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    (tmp_path / "cut.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    subs = {"OUT": str(tmp_path / "out"), "FILE": str(tmp_path / "file"), "FILE/sub": str(tmp_path / "file" / "sub"),
            "BOMB": str(tmp_path / "bomb.png"), "IMG": str(tmp_path / "img.png"), "CUT": str(tmp_path / "cut.png")}
    argv = [subs.get(a, a) for a in argv] + ["--model", str(bundle_dir), "-q"]
    monkeypatch.setattr("dalle.api.Dalle.generate", never_sample)
    monkeypatch.setattr("dalle.api.Dalle.edit", never_sample)
    code, err = run(argv, capsys)
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not any("Traceback" in line for line in err)


def test_read_only_out_is_refused_before_sampling(bundle_dir, tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(M.tempfile, "mkstemp", read_only)
    monkeypatch.setattr("dalle.api.Dalle.generate", never_sample)
    code, err = run(["generate", "a red circle", "--out", str(tmp_path / "ro"), "--model", str(bundle_dir), "-q"],
                    capsys)
    assert code == 2 and len(err) == 1 and "not writable: Read-only file system" in err[0], err


def test_full_disk_is_one_line_and_leaves_nothing_half_written(bundle_dir, tmp_path, capsys, monkeypatch):
    real_save = Image.Image.save

    def save_then_full(self, fp, *args, **kwargs):
        if isinstance(fp, str) and fp.endswith(".tmp") and "grid" in fp:     # the images fit, the grid does not
            with open(fp, "wb") as f:
                f.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_full)
    out = tmp_path / "out"
    code, err = run(["generate", "a red circle", "-n", "2", "--out", str(out), "--model", str(bundle_dir), "-q"],
                    capsys)
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a-red-circle_000.png", "a-red-circle_001.png"], names     # whole files only, no .tmp
    for name in names:
        Image.open(out / name).load()


def test_two_generates_into_one_out_never_overwrite(bundle_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["generate", "a red circle", "-n", "1", "--out", str(out), "--model", str(bundle_dir), "-q"]
    assert run([*base, "--seed", "1"], capsys)[0] == 0
    first = (out / "a-red-circle_000.png").read_bytes()
    assert main([*base, "--seed", "2"]) == 0
    printed = capsys.readouterr().out.split()
    assert (out / "a-red-circle_000.png").read_bytes() == first                   # the first run's image kept
    assert str(out / "a-red-circle_000-2.png") in printed and str(out / "grid-2.png") in printed
    assert str(out / "a-red-circle_000.png") not in printed                      # only its own paths
    assert main([*base, "--seed", "3", "--overwrite"]) == 0                      # asked for: replaced in place
    capsys.readouterr()
    assert (out / "a-red-circle_000.png").read_bytes() != first
    assert sorted(p.name for p in out.iterdir()) == ["a-red-circle_000-2.png", "a-red-circle_000.png",
                                                     "grid-2.png", "grid.png"]


def test_edit_decodes_its_image_like_the_training_decoder(tmp_path):
    """Issue 13 item 11: a 16-bit PNG was clipped to white by ``convert("RGB")``; the edit path now
    calls the training decoder (16-bit scaled, alpha composited, centre crop)."""
    from train.config import DataConfig
    from tests.helpers import decode_image

    grey16 = np.full((40, 30), 32896, np.uint16)                     # 50% grey at 16 bits
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 0] = 255                                               # transparent red: the background shows
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    for name in ("grey16.png", "clear.png"):
        got = M.load_edit_image(str(tmp_path / name), 16)
        want = decode_image((tmp_path / name).read_bytes(), DataConfig(resolution=16), resolution=16)
        assert got.shape == (3, 16, 16) and torch.equal(got, want), name
    assert M.load_edit_image(str(tmp_path / "grey16.png"), 16).mean().item() == pytest.approx(128 / 255, abs=1e-3)
    assert M.load_edit_image(str(tmp_path / "clear.png"), 16).min().item() == 1.0     # white background
