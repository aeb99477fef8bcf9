"""The decode path: every bad-input kind is skipped and counted; colour modes convert correctly."""
from __future__ import annotations

import dataclasses
import io
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from common.image_decode import SkipSample
from tests.helpers import decode_image, encode_image, random_image
from common.samples import SampleDecoder, SkipCounter, decode_caption
from train.data.inspect import format_report, inspect_shards
from common.shards import ShardWriter


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels in its header but holds no pixel data (a cheap bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def reason_of(data: bytes, cfg) -> str:
    with pytest.raises(SkipSample) as e:
        decode_image(data, cfg, resolution=cfg.resolution)
    return e.value.reason


@pytest.fixture
def cfg(tiny_preset):
    return tiny_preset.data


@pytest.fixture
def good_png():
    return encode_image(random_image(np.random.default_rng(0), 32), "png")


def test_good_image_shape_range(cfg, good_png):
    x = decode_image(good_png, cfg, resolution=cfg.resolution)
    assert x.shape == (3, cfg.resolution, cfg.resolution) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated(cfg, fmt):
    data = encode_image(random_image(np.random.default_rng(1), 64), fmt)
    assert reason_of(data[: len(data) // 2], cfg) == "truncated_image"


def test_corrupt_and_empty(cfg, good_png):
    assert reason_of(b"definitely not an image" * 4, cfg) == "corrupt_image"
    broken = bytearray(good_png)
    broken[len(broken) // 2: len(broken) // 2 + 64] = bytes(64)      # zeroed compressed stream
    assert reason_of(bytes(broken), cfg) == "corrupt_image"
    assert reason_of(b"", cfg) == "empty_image"
    with pytest.raises(SkipSample, match="no_image"):
        decode_image(None, cfg, resolution=cfg.resolution)


def test_decompression_bomb_refused_from_header(cfg):
    # 10^10 pixels claimed, no pixel data: refused as too large, never decoded (decoding would say corrupt)
    assert reason_of(png_header_only(100_000, 100_000), cfg) == "too_large"
    small_limit = dataclasses.replace(cfg, max_pixels=1000)
    assert reason_of(png_header_only(40, 40), small_limit) == "too_large"     # 1600 > 1000 from the header
    assert reason_of(png_header_only(20, 20), small_limit) == "corrupt_image"  # within limit -> decoded


def test_too_small(cfg):
    data = encode_image(random_image(np.random.default_rng(2), (cfg.min_size - 1, 40)), "png")
    assert reason_of(data, cfg) == "too_small"


def test_cmyk_jpeg_converts_colour(cfg):
    cyan = Image.new("CMYK", (32, 32), (255, 0, 0, 0))
    buf = io.BytesIO()
    cyan.save(buf, format="JPEG", quality=95)
    x = decode_image(buf.getvalue(), cfg, resolution=cfg.resolution)
    r, g, b = x.mean(dim=(1, 2)).tolist()
    assert r < 0.1 and g > 0.9 and b > 0.9


def test_16bit_grayscale_scaled(cfg):
    arr = np.full((32, 32), 32768, dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    x = decode_image(png(img), cfg, resolution=cfg.resolution)
    assert torch.allclose(x, torch.full_like(x, 128 / 255), atol=1 / 255)


def test_palette_transparency_composited_on_background(cfg):
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)     # index 0 black, index 1 red
    img.paste(1, (0, 0, 16, 32))                          # left half red, right half transparent
    data = png(img, transparency=0)
    blue = dataclasses.replace(cfg, background=[0, 0, 255])
    x = decode_image(data, blue, resolution=16)
    assert torch.allclose(x[:, :, :6], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 16, 6), atol=0.02)
    assert torch.allclose(x[:, :, 10:], torch.tensor([0, 0, 1.0]).view(3, 1, 1).expand(3, 16, 6), atol=0.02)


def test_la_alpha_composited(cfg):
    arr = np.zeros((32, 32, 2), dtype=np.uint8)           # black luminance
    arr[:, 16:, 1] = 255                                  # right half opaque, left half transparent
    img = Image.fromarray(arr, "LA")
    x = decode_image(png(img), cfg, resolution=16)        # default background: white
    assert x[:, :, :6].min() > 0.98 and x[:, :, 10:].max() < 0.02


def test_large_jpeg_draft_close_to_full_decode(cfg):
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((64, 64, 1))).astype(np.uint8)  # 768x1024
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=95)
    drafted = decode_image(buf.getvalue(), cfg, resolution=64)
    full = decode_image(png(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), cfg, resolution=64)
    assert drafted.shape == (3, 64, 64)
    assert (drafted - full).abs().mean() < 0.03


def test_centre_and_random_crop(cfg):
    arr = np.zeros((16, 48, 3), dtype=np.uint8)
    arr[:, :16, 0] = 255                                  # red | green | blue thirds
    arr[:, 16:32, 1] = 255
    arr[:, 32:, 2] = 255
    data = png(Image.fromarray(arr))
    centre = decode_image(data, cfg, resolution=16)
    assert torch.allclose(centre, torch.tensor([0, 1.0, 0]).view(3, 1, 1).expand(3, 16, 16))
    crops = {tuple(decode_image(data, cfg, resolution=16, rng=random.Random(s), random_crop=True)
                   .mean(dim=(1, 2)).round(decimals=2).tolist()) for s in range(20)}
    assert len(crops) > 3                                  # offsets vary with the rng
    assert all(abs(sum(c) - 1.0) < 0.02 for c in crops)   # always inside the image


def test_captions():
    assert decode_caption("  A  Big\n Cat ".encode(), lowercase=True) == "a big cat"
    assert decode_caption("  Two\tWords ".encode(), lowercase=False) == "Two Words"
    assert decode_caption("\ufeffbom".encode("utf-8"), lowercase=True) == "bom"
    for data, reason in [(None, "no_caption"), (b"caf\xe9 \xff", "bad_caption_encoding"),
                         (b"  \n\t ", "empty_caption"), (b"", "empty_caption")]:
        with pytest.raises(SkipSample) as e:
            decode_caption(data)
        assert e.value.reason == reason


def test_caption_nfc():
    decomposed = "cafe\u0301"                             # e + combining acute
    assert decode_caption(decomposed.encode()) == "caf\u00e9"


def test_sample_decoder_counts_every_reason(cfg, good_png):
    counter = SkipCounter()
    decode = SampleDecoder(cfg, counter)
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(cmyk, format="JPEG")
    samples = [
        {"__key__": "good", "png": good_png, "txt": b"a cat"},
        {"__key__": "cmyk", "jpg": cmyk.getvalue(), "txt": b"magenta"},
        {"__key__": "trunc", "png": good_png[:200], "txt": b"x"},
        {"__key__": "corrupt", "png": b"garbage" * 10, "txt": b"x"},
        {"__key__": "zero", "png": b"", "txt": b"x"},
        {"__key__": "bomb", "png": png_header_only(100_000, 100_000), "txt": b"x"},
        {"__key__": "noimg", "txt": b"x"},
        {"__key__": "nocap", "png": good_png},
        {"__key__": "latin1", "png": good_png, "txt": b"caf\xe9"},
        {"__key__": "empty", "png": good_png, "txt": b"   "},
    ]
    out = [decode(s) for s in samples]
    assert [d.key for d in out if d is not None] == ["good", "cmyk"]
    assert counter.drain() == {"truncated_image": 1, "corrupt_image": 1, "empty_image": 1, "too_large": 1,
                               "no_image": 1, "no_caption": 1, "bad_caption_encoding": 1,
                               "empty_caption": 1}
    assert counter.drain() == {}


def test_decoder_needs_resolution(cfg):
    with pytest.raises(ValueError, match="resolution"):
        SampleDecoder(dataclasses.replace(cfg, resolution=0), SkipCounter())


def test_inspect_reports_what_training_would_use(tmp_path, tiny_preset, good_png):
    with ShardWriter(tmp_path / "s", max_samples=4) as w:
        for i in range(5):
            w.write(f"good{i}", {"png": good_png, "txt": f"caption {i}"})
        w.write("zero", {"png": b"", "txt": "x"})
        w.write("nocap", {"png": good_png})
    (tmp_path / "s" / "00002.tar").write_bytes(b"not a tar" * 100)
    report = inspect_shards(tmp_path / "s", tiny_preset.data)
    assert (report.shards, report.opened, report.usable) == (3, 2, 5)
    assert report.skipped == {"empty_image": 1, "no_caption": 1, "shard_error": 1}
    assert report.total == 7 and len(report.bad_shards) == 1
    text = format_report(report)
    assert "5 usable" in text and "empty_image" in text and "00002.tar" in text
    assert inspect_shards(tmp_path / "s", tiny_preset.data, limit=3).usable == 3


def test_inspect_without_a_readable_shard_is_an_error(tmp_path, tiny_preset):
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "b.tar").write_bytes(b"garbage" * 50)
    with pytest.raises(ValueError, match="none of the 2 shard"):
        inspect_shards(tmp_path, tiny_preset.data)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_png_whose_pixel_data_ends_early_is_a_truncated_skip(cfg):
    """Issue 13 item 14: a PNG claiming 9000x9000 px with four rows of data decoded as black."""
    w = h = 9000
    rows = b"".join(b"\x00" + bytes([200, 10, 10]) * w for _ in range(4))
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))
    assert reason_of(png, cfg) == "truncated_image"
    for mode, arr in (("RGB", np.zeros((20, 24, 3), np.uint8)), ("L", np.zeros((20, 24), np.uint8)),
                      ("I;16", np.zeros((20, 24), np.uint16))):
        whole = io.BytesIO()
        Image.fromarray(arr).save(whole, format="PNG")
        assert decode_image(whole.getvalue(), cfg, resolution=16).shape == (3, 16, 16), mode   # complete: kept
