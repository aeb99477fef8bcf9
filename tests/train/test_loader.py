"""The training loader: skip accounting, rank/worker splitting, equal batches per rank, epochs."""
from __future__ import annotations

import dataclasses
import json
import os
import multiprocessing as mp
from collections import Counter
from itertools import islice
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tests.helpers import encode_image, random_image
from train.config import load_preset
from train.data.datamodule import ShardDataModule
from train.data.loader import image_dataset, make_loader
from common.shards import ShardWriter

def write_sized_shards(out_dir: Path, sizes: list[int], *, size: int = 20) -> list[Path]:
    """Shards holding ``sizes[i]`` good samples each; keys are unique across shards."""
    rng = np.random.default_rng(0)
    writer = ShardWriter(out_dir)
    n = 0
    for count in sizes:
        for _ in range(count):
            writer.write_sample(f"{n:09d}", image=encode_image(random_image(rng, size), "png"),
                                image_ext="png", caption=f"sample {n}")
            n += 1
        writer.close()
    return writer.paths


def collect(loader) -> tuple[list[str], Counter]:
    keys, skipped = [], Counter()
    for batch in loader:
        keys += batch["keys"]
        skipped.update(batch["skipped"])
    return keys, skipped


def test_batches_follow_the_contract(tiny_preset, image_shards, tiny_tokenizer):
    cfg = tiny_preset.data
    shards = image_shards(10, per_shard=5)
    batches = list(make_loader(image_dataset(shards[0].parent, cfg, batch_size=4, tokenizer=tiny_tokenizer), 0))
    assert len(batches) == 2                                    # 10 // 4, the partial batch dropped in training
    b = batches[0]
    assert set(b) == {"images", "captions", "keys", "skipped", "text_tokens", "position"}
    assert b["images"].shape == (4, 3, cfg.resolution, cfg.resolution) and b["images"].dtype == torch.float32
    assert b["text_tokens"].shape == (4, tiny_preset.dalle.text_len) and b["text_tokens"].dtype == torch.long
    assert len(b["captions"]) == len(b["keys"]) == 4 and b["skipped"] == {}
    val = list(make_loader(image_dataset(shards[0].parent, cfg, batch_size=4, train=False), 0))
    assert [len(v["keys"]) for v in val] == [4, 4, 2]           # evaluation keeps every sample, in order
    assert sum((v["keys"] for v in val), []) == [f"{i:09d}" for i in range(10)]


def test_bad_samples_counted_across_workers(tmp_path, tiny_preset):
    rng = np.random.default_rng(1)
    good = lambda: encode_image(random_image(rng, 20), "png")  # noqa: E731
    expected_keys = []
    with ShardWriter(tmp_path / "s", max_samples=6) as w:
        for i in range(12):
            key = f"k{i:03d}"
            if i % 3 == 0:
                w.write(key, {"png": good(), "txt": "ok"})
                expected_keys.append(key)
            elif i % 3 == 1:
                w.write(key, {"png": b"not an image", "txt": "corrupt"})
            else:
                w.write(key, {"png": good(), "txt": b"\xff\xfe"})
    (tmp_path / "s" / "00002.tar").write_bytes(b"this is not a tar file" * 40)
    cfg = dataclasses.replace(tiny_preset.data, num_workers=2)
    keys, skipped = collect(make_loader(image_dataset(tmp_path / "s", cfg, batch_size=2, train=False), 2))
    assert sorted(keys) == expected_keys                        # each usable sample exactly once
    assert skipped["corrupt_image"] == 4 and skipped["bad_caption_encoding"] == 4
    assert skipped["shard_error"] >= 1


def test_too_few_shards_is_a_clear_error(tiny_preset, image_shards):
    shards = image_shards(4, per_shard=2)
    cfg = dataclasses.replace(tiny_preset.data, num_workers=2)
    with pytest.raises(ValueError, match=r"2 shard\(s\).*world_size 2 x num_workers 2 = 4"):
        image_dataset(shards, cfg, batch_size=2, rank=0, world_size=2)
    stream = image_dataset(shards, cfg, batch_size=2, rank=0, world_size=2, resampled=True, epoch_samples=8)
    assert len(stream) == 2                                     # resampled mode needs no split


def test_equal_batches_per_rank_in_process(tmp_path, tiny_preset):
    shards = write_sized_shards(tmp_path, [7, 1, 2, 6])         # unequal shards, 16 samples
    cfg = tiny_preset.data
    counts, seen = [], []
    for rank in range(2):
        stream = image_dataset(shards, cfg, batch_size=3, rank=rank, world_size=2)
        keys = [b["keys"] for b in make_loader(stream, 0)]
        counts.append((len(stream), len(keys)))
        seen.append({k for batch in keys for k in batch})
    assert counts == [(2, 2), (2, 2)]                           # 16 // (2 * 3) on both ranks
    assert not seen[0] & seen[1]


def test_resampled_is_endless_or_sized(tiny_preset, image_shards):
    shards = image_shards(4, per_shard=2)
    stream = image_dataset(shards, tiny_preset.data, batch_size=3, resampled=True)
    batches = list(islice(iter(make_loader(stream, 0)), 10))    # 30 samples from 4: keeps going
    assert len(batches) == 10
    sized = image_dataset(shards, tiny_preset.data, batch_size=3, resampled=True, epoch_samples=12)
    assert len(sized) == 4 and len(list(make_loader(sized, 0))) == 4


def test_epochs_reshuffle_same_data(tiny_preset, image_shards):
    shards = image_shards(12, per_shard=3)
    loader = make_loader(image_dataset(shards, tiny_preset.data, batch_size=4, seed=3), 0)
    first, _ = collect(loader)
    second, _ = collect(loader)
    assert sorted(first) == sorted(second) and len(set(first)) == 12
    assert first != second


def _rank_main(rank: int, shards: str, out: str) -> None:
    """One rank of a two-process job: rank and world size come from RANK / WORLD_SIZE."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    cfg = load_preset("tiny", ["data.num_workers=2"]).data
    stream = image_dataset(shards, cfg, batch_size=3, seed=7)
    loader = make_loader(stream, cfg.num_workers)
    result = {"len": len(stream), "epochs": [[b["keys"] for b in loader] for _ in range(2)]}
    Path(out).write_text(json.dumps(result))


def test_two_processes_read_disjoint_equal_data(tmp_path):
    """Two real (forked) processes with RANK/WORLD_SIZE, two workers each: disjoint keys, equal batches."""
    write_sized_shards(tmp_path / "shards", [5, 1, 4, 2, 6, 3, 2, 5])   # 28 samples in 8 unequal shards
    ctx = mp.get_context("fork")                # forked: no re-import of torch in each rank
    procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "shards"), str(tmp_path / f"rank{r}.json")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert out[0]["len"] == out[1]["len"] == 28 // (2 * 3)
    for epoch in range(2):
        batches = [out[r]["epochs"][epoch] for r in range(2)]
        assert [len(b) for b in batches] == [4, 4]
        assert all(len(keys) == 3 for b in batches for keys in b)
        rank_keys = [{k for keys in b for k in keys} for b in batches]
        assert not rank_keys[0] & rank_keys[1]
    assert out[0]["epochs"][0] != out[0]["epochs"][1]


class _MeanModel(L.LightningModule):
    """Tiny module that records what the DataModule feeds it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.skipped = Counter()
        self.seen = 0

    def training_step(self, batch, batch_idx):
        self.skipped.update(batch["skipped"])
        self.seen += len(batch["keys"])
        return ((batch["images"].mean(dim=(2, 3)) - self.w) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_datamodule_with_a_real_trainer(tmp_path, tiny_preset):
    shards = write_sized_shards(tmp_path / "s", [6, 6])
    with ShardWriter(tmp_path / "s", start_index=2) as w:
        w.write("bad", {"png": b"", "txt": "zero bytes"})
    cfg = dataclasses.replace(tiny_preset.data, train_shards=[str(tmp_path / "s")])
    dm = ShardDataModule(cfg, batch_size=4)
    model = _MeanModel()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert (dm.rank, dm.world_size) == (0, 1)
    assert model.seen == 2 * 12 and model.skipped == {"empty_image": 2}   # 3 batches per epoch, 2 epochs
    assert len(shards) == 2


def test_rank_share_imbalance_is_warned_with_the_repeat_count(tmp_path, tiny_preset, caplog):
    """Issue 13 item 8: 23 samples next to 1,200 would repeat silently up to 27 times."""
    from tests.helpers import write_image_shards
    from train.data.loader import image_dataset

    small = write_image_shards(tmp_path / "a", 3, size=16)
    big = write_image_shards(tmp_path / "b", 24, size=16, key_prefix="b")
    with caplog.at_level("WARNING"):
        image_dataset([small[0], big[0]], tiny_preset.data, batch_size=2, rank=0, world_size=2)
    assert "differ by more than 2x" in caplog.text
    # 27 samples // (2 ranks x 2) = 6 batches = 12 samples per rank; the 3-sample rank repeats each 4 times
    assert "rank 0 reads 3 sample(s)" in caplog.text or "rank 1 reads 3 sample(s)" in caplog.text
    assert "repeats up to 4 times" in caplog.text
    caplog.clear()
    even = write_image_shards(tmp_path / "c", 20, size=16, key_prefix="c")
    with caplog.at_level("WARNING"):
        image_dataset([even[0], big[0]], tiny_preset.data, batch_size=2, rank=0, world_size=2)
    assert "differ by more than 2x" not in caplog.text


def test_interleave_takes_samples_from_several_shards_in_turn(tmp_path):
    from common.samples import SkipCounter
    from train.data.loader import interleave_shards

    urls = [str(p) for p in write_sized_shards(tmp_path, [3, 1, 2, 2])]
    order = lambda k: [s["__key__"] for s in interleave_shards(urls, SkipCounter(), k)]
    one = order(1)
    assert len(one) == 8 and order(99) == order(4)           # no more readers than shards
    two = order(2)                                            # readers: shards 0, 2 and shards 1, 3
    assert sorted(two) == sorted(one) and two != one
    assert two == [one[0], one[3], one[1], one[6], one[2], one[7], one[4], one[5]]
    assert order(2) == two                                     # a fixed order: resume by counting stays exact


def test_training_batches_mix_shards_that_each_hold_one_kind(tmp_path, tiny_preset):
    """Two shards of 8 samples each, no shuffle buffer: with interleave 2 every batch of 4 mixes both."""
    shards = write_sized_shards(tmp_path, [8, 8])
    for k, mixed in ((1, False), (2, True)):
        cfg = dataclasses.replace(tiny_preset.data, shuffle_buffer=0, num_workers=0, interleave=k)
        ds = image_dataset([str(s) for s in shards], cfg, batch_size=4, train=True, seed=0)
        batches = [[int(key) // 8 for key in b["keys"]] for b in make_loader(ds, 0)]   # which shard
        assert len(batches) == 4
        assert all(len(set(b)) == (2 if mixed else 1) for b in batches), (k, batches)


def test_image_only_reading_keeps_samples_without_a_caption(tmp_path, tiny_preset, tiny_tokenizer):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "s") as w:
        for i in range(6):
            files = {"png": encode_image(random_image(rng, 20), "png")}
            if i % 2:
                files["txt"] = f"sample {i}"
            w.write(f"{i:09d}", files)
    cfg = dataclasses.replace(tiny_preset.data, shuffle_buffer=0)
    keys, skipped = collect(make_loader(image_dataset(str(tmp_path / "s"), cfg, batch_size=2, train=False), 0))
    assert keys == ["000000001", "000000003", "000000005"] and skipped == {"no_caption": 3}
    batches = list(make_loader(image_dataset(str(tmp_path / "s"), cfg, batch_size=2, train=False,
                                             captions=False), 0))
    assert sum((b["keys"] for b in batches), []) == [f"{i:09d}" for i in range(6)]
    assert all(c == "" for b in batches for c in b["captions"]) and all(b["skipped"] == {} for b in batches)
    with pytest.raises(ValueError, match="need captions"):
        image_dataset(str(tmp_path / "s"), cfg, batch_size=2, captions=False, tokenizer=tiny_tokenizer)
