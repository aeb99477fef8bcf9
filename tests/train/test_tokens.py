"""Token shards: precomputation through the decode path, the writer/reader, the token loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.helpers import encode_image, random_image
from train.data.decode import SampleDecoder, SkipCounter, to_float
from train.data.loader import make_loader
from train.data.shards import ShardWriter, expand_sources
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
    assert set(b) == {"image_tokens", "captions", "keys", "skipped", "text_tokens"}
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
