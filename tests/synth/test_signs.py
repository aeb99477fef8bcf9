"""Synthetic signs: held-out words never reach training, metadata describes the render, fonts always work."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from synth.fonts import BUILTIN, load_font, sign_fonts
from synth.signs import (
    BOARD_COLORS,
    BOARDS,
    DEFAULT_HELD_OUT_WORDS,
    WORDS,
    build_signs,
    check_words,
    sample_sign,
    sign_sample,
    split_words,
)
from synth.words import real_words


def test_openai_never_in_training_signs(tmp_path):
    rng = np.random.default_rng(0)
    for _ in range(300):
        _, caption, desc = sign_sample(rng, 32, split="train", fonts=[BUILTIN])
        assert "openai" not in caption.lower() and desc["text"] != "OPENAI"
        assert desc["word"].upper() not in {w.upper() for w in DEFAULT_HELD_OUT_WORDS}
    for p in build_signs(tmp_path, 20, resolution=32, fonts=[BUILTIN], shard_size=8):
        assert b"openai" not in p.read_bytes().lower()


def test_heldout_split_draws_only_held_out_words():
    rng = np.random.default_rng(1)
    words = {sign_sample(rng, 32, split="heldout", fonts=[BUILTIN])[2]["word"] for _ in range(120)}
    assert words == set(DEFAULT_HELD_OUT_WORDS) and "OpenAI" in words
    assert "OpenAI" not in split_words("train", WORDS)
    assert split_words("train", None) is None     # the open vocabulary


def test_word_list_is_short_and_unambiguous():
    check_words(WORDS)
    upper = [w.upper() for w in WORDS]
    assert all(3 <= len(w) <= 8 for w in upper)
    assert not [(a, b) for a in upper for b in upper if a != b and a in b]
    with pytest.raises(ValueError):
        check_words(["o", "CAFE"])
    with pytest.raises(ValueError):
        check_words(["ABCDEFGHIJK"])


@pytest.mark.parametrize("seed", range(6))
def test_text_box_inside_board_and_ink_there(seed):
    """The json's text box lies on the board, and the pixels in it contain the text colour."""
    image, _, desc = sign_sample(np.random.default_rng(seed), 64, fonts=sign_fonts())
    bx0, by0, bx1, by1 = BOARDS[desc["layout"]]
    x0, y0, x1, y1 = desc["text_bbox"]
    assert bx0 < x0 < x1 < bx1 and by0 < y0 < y1 < by1
    a = np.asarray(image, dtype=np.float32)
    inside = a[int(y0 * 64) + 1:int(y1 * 64) - 1, int(x0 * 64) + 1:int(x1 * 64) - 1].reshape(-1, 3)
    board = np.asarray(BOARD_COLORS[desc["board_color"]], dtype=np.float32)
    far = np.abs(inside - board).sum(1) > 150           # ink pixels
    assert 0.15 < far.mean() < 0.9
    outside = a[int(by0 * 64) + 2, int((bx0 + bx1) / 2 * 64)]     # the board just below its top edge
    assert np.abs(outside - board).sum() < 60


def test_fonts_always_have_builtin():
    names = sign_fonts()
    assert names[-1] == BUILTIN and len(names) >= 1
    assert load_font(BUILTIN, 20).getbbox("CAFE")[2] > 0
    with pytest.raises(ValueError, match="not installed"):
        load_font("NoSuchFont-Bold", 12)


def test_build_signs_shards(tmp_path):
    paths = build_signs(tmp_path, 3, resolution=32, fonts=[BUILTIN], seed=5)
    with tarfile.open(paths[0]) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    metas = [json.loads(v) for k, v in files.items() if k.endswith(".json")]
    assert len(metas) == 3
    for m in metas:
        assert m["font"] == BUILTIN and m["claims"]["word"] == m["word"]
        assert m["word"].lower() in files[f"{m['key']}.txt"].decode().lower()
        assert Image.open(io.BytesIO(files[f"{m['key']}.png"])).size == (32, 32)


def test_open_vocabulary_is_large_varied_and_never_held_out():
    """Training signs spell thousands of different words of 2-10 letters in every case; held-out never."""
    rng = np.random.default_rng(3)
    held = {w.upper() for w in DEFAULT_HELD_OUT_WORDS} | {"JAZZ"}
    specs = [sample_sign(rng, held_out=[*DEFAULT_HELD_OUT_WORDS, "JAZZ"], fonts=[BUILTIN]) for _ in range(3000)]
    texts = [s["text"] for s in specs]
    assert len(set(texts)) > 2500
    assert {len(t) for t in texts} == set(range(2, 11))
    assert not held & set(texts)
    assert all(s["text"] == s["word"].upper() for s in specs)
    cases = {("upper" if s["word"].isupper() else "lower" if s["word"].islower() else "title") for s in specs
             if len(s["word"]) > 1}
    assert cases == {"upper", "lower", "title"}
    real = set(real_words())
    assert 0.35 < np.mean([t in real for t in texts]) < 0.65


def test_sample_word_skips_held_out_real_words(monkeypatch):
    import synth.words as W
    monkeypatch.setattr(W, "SOURCE_WEIGHTS", (1.0, 0.0, 0.0))        # real words only
    rng = np.random.default_rng(0)
    assert {W.sample_word(rng, ["ab"], real=("AB", "CD")) for _ in range(50)} == {"CD"}
    with pytest.raises(ValueError, match="held out"):
        W.sample_word(rng, ["AB"], real=("AB",))
