"""Token shards: precomputation through the decode path, the writer/reader, the token loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.helpers import encode_image, random_image
from common.image_decode import to_float
from common.samples import SampleDecoder, SkipCounter
from train.data.loader import make_loader
from common.shards import ShardWriter, expand_sources
from train.data.tokens import (TokenShardWriter, codes_from_bytes, codes_to_bytes, iter_token_shards,
                               precompute_tokens, token_dataset)


def patch_quantiser(downsample: int, vocab: int):
    """A real deterministic encoder: mean grey level of each patch, quantised to ``vocab`` codes."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        grey = images.mean(dim=1, keepdim=True)                               # (B, 1, R, R)
        means = torch.nn.functional.avg_pool2d(grey, downsample)[:, 0]       # (B, h, w)
        return (means * (vocab - 1)).round().long()
    return encode


def test_codes_bytes_round_trip_and_range():
    codes = np.arange(12).reshape(3, 4)
    back = codes_from_bytes(codes_to_bytes(codes))
    assert back.dtype == np.int16 and np.array_equal(back, codes)
    with pytest.raises(ValueError):
        codes_to_bytes(np.array([[40000]]))
    with pytest.raises(ValueError):
        codes_to_bytes(np.zeros(4, dtype=np.int64))


def test_precompute_matches_encoder_and_counts_skips(tmp_path, tiny_preset, image_shards):
    shards = image_shards(9, per_shard=5, size=(24, 20))
    with ShardWriter(tmp_path / "shards", start_index=len(shards)) as w:           # bad samples too
        w.write("broken", {"png": b"\x89PNG broken", "txt": "a broken image"})
        w.write("nocaption", {"png": shards[0].read_bytes()[:10]})
    cfg, vq = tiny_preset.data, tiny_preset.vqvae
    encode = patch_quantiser(vq.downsample, vq.vocab_size)
    stats = precompute_tokens(tmp_path / "shards", tmp_path / "tokens", encode, cfg, batch_size=4, shard_size=4)
    assert stats.samples == 9 and len(stats.shards) == 3 and stats.grid == (vq.grid_size, vq.grid_size)
    assert stats.skipped == {"corrupt_image": 1, "no_caption": 1}
    # the codes are those of the training decode path's images (centre crop)
    counter = SkipCounter()
    decode = SampleDecoder(cfg, counter)
    expected = {}
    for s in wds.tarfile_samples(iter([{"url": u} for u in expand_sources(shards)])):
        d = decode(s)
        expected[d.key] = (encode(to_float(d.image[None]))[0].numpy(), s["txt"].decode())
    got = list(iter_token_shards(tmp_path / "tokens", cfg))
    assert sorted(t.key for t in got) == sorted(expected)
    for t in got:
        codes, caption = expected[t.key]
        assert torch.equal(t.image_tokens, torch.from_numpy(codes.reshape(-1)))   # row-major (h*w,)
        assert t.caption == caption.lower()


def test_precompute_keeps_caption_case(tmp_path, tiny_preset):
    with ShardWriter(tmp_path / "img") as w:
        w.write_sample("k", image=encode_image(random_image(np.random.default_rng(0), 16), "png"),
                       image_ext="png", caption="  A Red  Fox ")
    precompute_tokens(tmp_path / "img", tmp_path / "tok", patch_quantiser(4, 32), tiny_preset.data,
                      batch_size=2, shard_size=10)
    (sample,) = list(wds.tarfile_samples(iter([{"url": str(tmp_path / "tok" / "00000.tar")}])))
    assert sample["txt"].decode() == "A Red Fox" and set(sample) >= {"codes.npy", "txt", "json"}


def test_token_loader_batches_and_skips(tmp_path, tiny_preset, tiny_tokenizer):
    grid = tiny_preset.dalle.image_grid
    rng = np.random.default_rng(0)
    with TokenShardWriter(tmp_path / "tok", max_samples=5) as w:
        for i in range(10):
            w.write_tokens(f"{i:04d}", rng.integers(0, 32, (grid, grid)), f"caption {i}")
        w.write_tokens("wronggrid", rng.integers(0, 32, (grid + 1, grid)), "bad grid")
        w.write("nocodes", {"txt": "no codes here"})
        w.write("garbage", {"codes.npy": b"not numpy", "txt": "garbage codes"})
    stream = token_dataset(tmp_path / "tok", tiny_preset.data, batch_size=4, train=False,
                           tokenizer=tiny_tokenizer, image_grid=grid)
    batches = list(make_loader(stream, 0))
    b = batches[0]
    assert set(b) == {"image_tokens", "captions", "keys", "skipped", "text_tokens", "position"}
    assert b["image_tokens"].shape == (4, grid * grid) and b["image_tokens"].dtype == torch.long
    assert b["text_tokens"].shape == (4, tiny_preset.dalle.text_len)
    assert sum(len(x["keys"]) for x in batches) == 10
    skipped = {}
    for x in batches:
        for k, v in x["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    assert skipped == {"bad_codes": 2, "no_codes": 1}


def test_token_loader_equal_batches_per_rank(tmp_path, tiny_preset):
    grid = tiny_preset.dalle.image_grid
    w = TokenShardWriter(tmp_path / "tok")
    n = 0
    for size in (9, 2, 3, 6):
        for _ in range(size):
            w.write_tokens(f"{n:04d}", np.full((grid, grid), n % 32), "c")
            n += 1
        w.close()
    cfg = tiny_preset.data
    lens, keys = [], []
    for rank in range(2):
        stream = token_dataset(tmp_path / "tok", cfg, batch_size=2, rank=rank, world_size=2)
        batches = list(make_loader(stream, 0))
        lens.append((len(stream), len(batches)))
        keys.append({k for b in batches for k in b["keys"]})
    assert lens == [(5, 5), (5, 5)] and not keys[0] & keys[1]


def _raw_tar(path, members: dict[str, bytes]) -> None:
    """A tar written by hand (member names ShardWriter would refuse)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_precompute_skips_and_counts_keys_that_are_paths(tmp_path, tiny_preset):
    """Issue 13 item 13: a key with '/' (absolute, '../' or 'sub/dir/key') used to abort the run."""
    png = encode_image(random_image(np.random.default_rng(0), 16), "png")
    members = {}
    for key in ("good0", "/abs/key", "../up", "sub/dir/key", "good1"):
        members[f"{key}.png"], members[f"{key}.txt"] = png, b"a red circle"
    (tmp_path / "img").mkdir()
    _raw_tar(tmp_path / "img" / "00000.tar", members)
    stats = precompute_tokens(tmp_path / "img", tmp_path / "tok", patch_quantiser(4, 32), tiny_preset.data,
                              batch_size=2, shard_size=10)
    assert stats.samples == 2 and stats.skipped.get("bad_key") == 3, stats
    assert sorted(t.key for t in iter_token_shards(tmp_path / "tok", tiny_preset.data)) == ["good0", "good1"]


def test_precompute_on_a_full_disk_leaves_no_temporary_shard(tmp_path, tiny_preset, image_shards, monkeypatch):
    import errno
    import os

    import common.shards as S

    shards = image_shards(12, per_shard=12)
    real_fdopen = os.fdopen

    class FullDisk:
        """A file that takes 4 KB, then fails like a full disk (every later write too)."""

        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(S.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space"):
        precompute_tokens(shards, tmp_path / "tok", patch_quantiser(4, 32), tiny_preset.data,
                          batch_size=4, shard_size=100)
    assert list((tmp_path / "tok").iterdir()) == []          # no .shard-*.tar.tmp left behind


def test_hidden_members_are_counted_not_dropped_silently(tmp_path, tiny_preset):
    """Issue 13 item 14: '._x.jpg' (AppleDouble) and '.hidden.jpg' members vanished uncounted."""
    from train.data.inspect import inspect_shards
    from train.data.loader import image_dataset

    png = encode_image(random_image(np.random.default_rng(0), 16), "png")
    (tmp_path / "img").mkdir()
    _raw_tar(tmp_path / "img" / "00000.tar", {"k1.png": png, "k1.txt": b"a red circle", "._k1.png": b"\0\5\26\7",
                                              ".hidden.jpg": png, "sub/._k2.png": b"x",
                                              "k2.png": png, "k2.txt": b"a blue square"})
    report = inspect_shards(tmp_path / "img", tiny_preset.data)
    assert report.usable == 2 and report.skipped == {"hidden_member": 3}
    batch = next(iter(make_loader(image_dataset(tmp_path / "img", tiny_preset.data, batch_size=2,
                                                train=False), 0)))
    assert batch["skipped"] == {"hidden_member": 3} and sorted(batch["keys"]) == ["k1", "k2"]


def test_inspect_reads_token_shards_as_token_shards(tmp_path, tiny_preset):
    """Issue 13 item 15: ``dalle data inspect`` on token shards said "0 usable"."""
    from train.data.inspect import format_report, inspect_shards

    with TokenShardWriter(tmp_path / "tok") as w:
        for i in range(5):
            w.write_tokens(f"k{i}", np.full((4, 4), i), "a red circle")
        w.write("nocodes", {"txt": "a caption without codes"})
    report = inspect_shards(tmp_path / "tok", tiny_preset.data)
    assert report.usable == 5 and report.token_samples == 5 and report.skipped == {"no_image": 1}
    assert "5 usable" in format_report(report) and "5 of them token samples" in format_report(report)
