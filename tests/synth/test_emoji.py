"""The emoji builder on a fake emoji-datasource directory (no real emoji packages needed)."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from synth.emoji import SETUP_COMMAND, build_emoji, emoji_caption
from train.data.inspect import inspect_shards
from common.shards import expand_sources


def fake_datasource(root, *, with_emojibase: bool = True):
    """node_modules/emoji-datasource-twitter with three 64 px PNGs (one a skin-tone variant)."""
    pkg = root / "node_modules" / "emoji-datasource-twitter"
    img_dir = pkg / "img" / "twitter" / "64"
    img_dir.mkdir(parents=True)
    colours = {"1f600": (255, 200, 0), "1f34e": (220, 0, 0), "1f44b": (250, 220, 180), "1f44b-1f3ff": (90, 60, 30)}
    for code, rgb in colours.items():
        img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        img.paste(Image.new("RGBA", (40, 40), rgb + (255,)), (12, 12))
        img.save(img_dir / f"{code}.png")
    entries = [
        {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_name": "grinning"},
        {"name": "RED APPLE", "unified": "1F34E", "image": "1f34e.png", "short_name": "apple"},
        {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "short_name": "wave",
         "skin_variations": {"1F3FF": {"unified": "1F44B-1F3FF", "image": "1f44b-1f3ff.png"}}},
        {"name": "NO IMAGE", "unified": "1F999", "image": "1f999.png", "short_name": "none"},
    ]
    (pkg / "emoji.json").write_text(json.dumps(entries))
    if with_emojibase:
        data = root / "node_modules" / "emojibase-data" / "en"
        data.mkdir(parents=True)
        data.joinpath("data.json").write_text(json.dumps([
            {"label": "grinning face", "hexcode": "1F600"},
            {"label": "red apple", "hexcode": "1F34E"},
            {"label": "waving hand", "hexcode": "1F44B",
             "skins": [{"label": "waving hand: dark skin tone", "hexcode": "1F44B-1F3FF"}]},
        ]))


def read(paths):
    return list(wds.tarfile_samples(iter([{"url": str(p)} for p in paths])))


def test_builds_captioned_shards_with_held_out_names(tmp_path, tiny_preset):
    fake_datasource(tmp_path / "emoji")
    stats = build_emoji(tmp_path / "out", 16, sources=("twemoji",), held_out=["red apple"],
                        shard_size=2, emoji_dirs=[tmp_path / "emoji"])
    assert (stats.train, stats.val, stats.by_source) == (3, 1, {"twemoji": 4})
    train = read(stats.train_shards)
    captions = sorted(s["txt"].decode() for s in train)
    assert captions == ["an emoji of a grinning face", "an emoji of a waving hand",
                        "an emoji of a waving hand: dark skin tone"]
    assert [s["txt"].decode() for s in read(stats.val_shards)] == ["an emoji of a red apple"]
    sample = next(s for s in train if b"dark" in s["txt"])
    meta = json.loads(sample["json"])
    assert meta["source"] == "twemoji" and meta["codepoints"] == "1f44b-1f3ff" and meta["license"] == "CC-BY-4.0"
    img = Image.open(io.BytesIO(sample["png"]))
    assert img.size == (16, 16) and img.mode == "RGBA"
    centre = np.asarray(img)[8, 8]
    assert tuple(centre[:3]) == pytest.approx((90, 60, 30), abs=3) and centre[3] == 255
    report = inspect_shards(expand_sources(tmp_path / "out" / "train"), tiny_preset.data)
    assert report.usable == 3 and report.skipped == {}


def test_names_fall_back_to_the_datasource(tmp_path, monkeypatch):
    from synth import emoji as builder
    monkeypatch.setattr(builder, "NOTO_FONT_PATHS", ())      # only the fake source is "auto"-found
    monkeypatch.setitem(sys.modules, "emoji", None)          # no PyPI emoji names either
    fake_datasource(tmp_path / "emoji", with_emojibase=False)
    stats = build_emoji(tmp_path / "out", 16, sources=("auto",), held_out=0.0, emoji_dirs=[tmp_path / "emoji"])
    captions = sorted(s["txt"].decode() for s in read(stats.train_shards))
    assert "an emoji of a waving hand sign: dark skin tone" in captions and stats.val == 0


def test_none_installed_names_the_setup_command(tmp_path):
    with pytest.raises(ValueError) as e:
        build_emoji(tmp_path / "out", 16, sources=("twemoji",), emoji_dirs=[tmp_path / "nothing"])
    assert SETUP_COMMAND in str(e.value)
    with pytest.raises(ValueError, match="unknown emoji source"):
        build_emoji(tmp_path / "out", 16, sources=("clipart",), emoji_dirs=[tmp_path])


def test_none_installed_auto(tmp_path, monkeypatch):
    from synth import emoji as builder
    monkeypatch.setattr(builder, "NOTO_FONT_PATHS", ())      # this machine may have the real font
    with pytest.raises(ValueError, match="no emoji source is installed"):
        build_emoji(tmp_path / "out", 16, emoji_dirs=[tmp_path / "nothing"])


def test_caption_article():
    assert emoji_caption("apple") == "an emoji of an apple"
    assert emoji_caption("grinning face") == "an emoji of a grinning face"
