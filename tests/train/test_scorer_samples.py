"""A model's own samples as scorer training data: drawn for training captions, labelled by the checker,
written as passing candidates with failing ones of the same caption as stored image negatives."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main
from common.samples import SampleSettings, SkipCounter, read_samples
from common.scorer_batches import ScorerSampleDecoder
from dalle.pipeline import Generation
from train.scorer_samples import harvest, split_samples, training_captions
from tests.helpers import scene_and_sign_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return scene_and_sign_shards(tmp_path_factory.mktemp("harvest"))


class FakeModel:
    """Candidate i of every caption is a flat image of grey level 10 * i + 5; the checker below passes the
    even ones for scenes and none for signs."""

    sampling = SimpleNamespace(to_dict=lambda: {"temperature": 1.0, "top_k": 8, "top_p": None, "guidance": 2.0})

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, seed, candidates=None):
        self.calls.append((list(prompts), n, seed, candidates))
        return [Generation(prompt=p, index=i, seed=0, image=Image.new("RGB", (64, 64), (10 * i + 5,) * 3),
                           image_tokens=torch.zeros(4, dtype=torch.long), score=0.0)
                for p in prompts for i in range(n)]


def fake_check(image, truth):
    level = image.getpixel((0, 0))[0]
    return SimpleNamespace(passed=truth["kind"] == "scene" and (level - 5) // 10 % 2 == 0)


def test_training_captions_take_every_source_in_turn(shards):
    got = list(training_captions([shards / "scenes", shards / "signs"], 6))
    assert [t["kind"] for _, _, t in got] == ["scene", "sign"] * 3
    assert all(c and k for k, c, _ in got)


def test_harvest_writes_passing_candidates_with_failing_ones_as_stored_negatives(shards, tmp_path):
    model = FakeModel()
    stats = harvest(model, [shards / "scenes", shards / "signs"], tmp_path / "out", prompts=6, candidates=4,
                    seed=3, chunk=4, check=fake_check)
    assert [len(c[0]) for c in model.calls] == [4, 2] and all(c[1:] == (4, 3, None) for c in model.calls)
    # 3 scene captions, each with candidates 0 and 2 passing and 1 and 3 failing; signs never pass
    assert (stats["captions"], stats["candidates"], stats["passed"]) == (6, 24, 6)
    assert (stats["mixed_captions"], stats["samples"]) == (3, 6)
    assert stats["per_kind"]["sign"]["mixed_captions"] == 0 and stats["pass_rate"] == 0.25
    assert json.loads((tmp_path / "out" / "harvest.json").read_text())["samples"] == 6

    counter = SkipCounter()
    decode = ScorerSampleDecoder(SampleSettings(resolution=64), counter, image_negatives=1, aux_grid=8)
    samples = [decode(s) for s in read_samples(sorted(map(str, (tmp_path / "out").glob("*.tar"))), counter)]
    assert len(samples) == 6 and not counter.counts
    for s in samples:
        assert int(s.image[0, 0, 0]) in (5, 25)                               # a passing candidate
        levels = sorted(int(img[0, 0, 0]) for kind, img in s.neg_images)
        assert levels == [15, 35] and {k for k, _ in s.neg_images} == {"generated"}
        assert s.negatives == [] and bool((s.cells == -1).all())             # no synthetic truth of its own
    plain = ScorerSampleDecoder(SampleSettings(resolution=64), counter)      # without image negatives: none
    assert all(plain(s).neg_images == [] for s in read_samples(sorted(map(str, (tmp_path / "out").glob("*.tar"))),
                                                                 counter))
    with pytest.raises(ValueError, match="candidates"):
        harvest(model, [shards / "scenes"], tmp_path / "x", prompts=2, candidates=1, check=fake_check)


def test_a_broken_stored_negative_is_left_out_and_counted(shards, tmp_path):
    model = FakeModel()
    harvest(model, [shards / "scenes"], tmp_path / "out", prompts=1, candidates=2, check=fake_check)
    sample = next(iter(read_samples(sorted(map(str, (tmp_path / "out").glob("*.tar"))), SkipCounter())))
    sample["neg1.png"] = b"not a png"
    counter = SkipCounter()
    decoded = ScorerSampleDecoder(SampleSettings(resolution=64), counter, image_negatives=1)(sample)
    assert len(decoded.neg_images) == 1 and counter.counts["bad_stored_negative"] == 1


def test_split_keeps_each_caption_on_one_side_and_copies_the_training_part(shards, tmp_path):
    out = tmp_path / "out"
    harvest(FakeModel(), [shards / "scenes"], out, prompts=8, candidates=4, check=fake_check)   # 8 captions, 2 each
    counts = split_samples(out, val_share=0.25, copies=3)
    assert counts == {"captions": 8, "train_samples": 12, "val_samples": 4, "copies": 3}
    assert sorted(p.name for p in out.glob("*.tar")) == [] and (out / "harvest.json").is_file()
    train = [sorted(s["__key__"] for s in read_samples([str(p)], SkipCounter())) for p in sorted((out / "train").glob("*.tar"))]
    val = sorted(s["__key__"] for s in read_samples([str(out / "val" / "00000.tar")], SkipCounter()))
    assert len(train) == 3 and train[0] == train[1] == train[2] and len(val) == 4
    caption = {k.rsplit("_", 1)[0] for k in val}
    assert len(caption) == 2 and not caption & {k.rsplit("_", 1)[0] for k in train[0]}
    first = [k for k, _, _ in training_captions([shards / "scenes"], 8)]
    assert caption == set(first[-2:])                                  # the last captions drawn
    with pytest.raises(ValueError, match="val_share"):
        split_samples(out, val_share=1.0)
    harvest(FakeModel(), [shards / "scenes"], out, prompts=4, candidates=4, check=fake_check)      # again, fewer
    assert split_samples(out, val_share=0.5, copies=1)["train_samples"] == 4
    assert [p.name for p in sorted((out / "train").glob("*.tar"))] == ["00000.tar"]   # no stale copies left


def test_scorer_samples_on_the_command_line(shards, tmp_path, capsys):
    """The embedded model and the real checker: every count adds up, bad input is one line with exit 2."""
    out = tmp_path / "gen"
    assert main(["scorer", "samples", str(shards / "scenes"), "--out", str(out), "--prompts", "2",
                 "--candidates", "2", "--device", "cpu", "--val-share", "0"]) == 0
    stats = json.loads((out / "harvest.json").read_text())
    assert (stats["captions"], stats["candidates"]) == (2, 4) and 0 <= stats["passed"] <= 4
    written = sum(1 for _ in read_samples(sorted(map(str, (out / "train").glob("*.tar"))), SkipCounter()))
    assert written == stats["samples"] and f"{stats['samples']} samples" in capsys.readouterr().out
    for argv, match in ((["scorer", "samples", str(tmp_path / "missing"), "--out", str(out)], "missing"),
                        (["scorer", "samples", str(shards / "scenes"), "--out", str(out), "--candidates", "1"],
                         "candidates"),
                        (["scorer", "samples", str(shards / "scenes"), "--out", str(out), "--val-share", "1"],
                         "val-share")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
    assert np.isfinite(stats["pass_rate"])
