"""Synthetic scenes: metadata matches the render, held-out pairs stay out of training, shards are valid."""
import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from evaluation.checker import check_scene, detect_objects
from synth.scenes import (
    DEFAULT_HELD_OUT,
    build_scenes,
    caption_scene,
    relation_of,
    render_scene,
    sample_scene,
    scene_sample,
)


@pytest.mark.parametrize("seed", range(8))
def test_render_matches_metadata(seed):
    """Every object in the json is found in the render at its colour, shape, place and size, and nothing else."""
    spec = sample_scene(np.random.default_rng(seed), split="train" if seed % 2 else "heldout")
    found, _ = detect_objects(render_scene(spec, 64))
    assert len(found) == len(spec["objects"])
    for obj in spec["objects"]:
        match = [f for f in found if (f["color"], f["shape"]) == (obj["color"], obj["shape"])
                 and abs(f["cx"] - obj["cx"]) < 0.03 and abs(f["cy"] - obj["cy"]) < 0.03]
        assert match, (obj, found)
        assert abs(match[0]["side"] - obj["d"]) < 0.03
        assert match[0]["size"] == obj["size"]


def test_train_split_never_draws_held_out_pairs():
    rng = np.random.default_rng(0)
    held = set(DEFAULT_HELD_OUT)
    for _ in range(400):
        caption, desc = scene_sample(rng, split="train")
        assert not {(o["color"], o["shape"]) for o in desc["objects"]} & held
        for c, s in held:
            assert f"{c} {s}" not in caption
    for _ in range(100):
        caption, desc = scene_sample(rng, split="heldout")
        pairs = {(o["color"], o["shape"]) for o in desc["objects"]} & held
        assert pairs and any(f"{c} {s}" in caption for c, s in pairs)


def test_claims_describe_every_object_and_true_relations():
    rng = np.random.default_rng(1)
    relations = 0
    for _ in range(300):
        caption, desc = scene_sample(rng)
        claims = desc["claims"]
        want = Counter({(c["color"], c["shape"]): c["count"] for c in claims["objects"]})
        assert want == Counter((o["color"], o["shape"]) for o in desc["objects"])
        for c in claims["objects"]:
            assert c["color"] in caption and c["shape"] in caption
            if c["size"]:
                assert all(o["size"] == c["size"] for o in desc["objects"]
                           if (o["color"], o["shape"]) == (c["color"], c["shape"]))
        if claims["relation"]:
            relations += 1
            a, b = desc["objects"] if (desc["objects"][0]["color"], desc["objects"][0]["shape"]) == (
                claims["relation"]["subject"]["color"], claims["relation"]["subject"]["shape"]) else desc["objects"][::-1]
            assert relation_of(a, b) == claims["relation"]["relation"]
        if claims["background"]:
            assert desc["background"]["name"] == claims["background"] and claims["background"] in caption
    assert relations > 10


def test_captions_vary():
    rng = np.random.default_rng(2)
    spec = sample_scene(rng, n_objects=2)
    assert len({caption_scene(spec, rng) for _ in range(30)}) > 3


def test_build_scenes_writes_valid_deterministic_shards(tmp_path):
    paths = build_scenes(tmp_path / "a", 5, resolution=32, seed=3, shard_size=2)
    again = build_scenes(tmp_path / "b", 5, resolution=32, seed=3, shard_size=2)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    keys = []
    for p, q in zip(paths, again):
        assert p.read_bytes() == q.read_bytes()
        with tarfile.open(p) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in files:
            if name.endswith(".png"):
                key = name[:-4]
                keys.append(key)
                assert Image.open(io.BytesIO(files[name])).size == (32, 32)
                meta = json.loads(files[f"{key}.json"])
                assert meta["caption"] == files[f"{key}.txt"].decode() and meta["key"] == key
                assert meta["kind"] == "scene" and meta["claims"]["objects"]
    assert len(keys) == 5 and len(set(keys)) == 5
    assert not list((tmp_path / "a").glob(".*tmp"))


def test_relation_scenes_always_state_a_true_relation_and_pass_the_checker():
    rng = np.random.default_rng(4)
    for split in ("train", "heldout"):
        for _ in range(40):
            caption, desc = scene_sample(rng, split=split, with_relation=True)
            rel, objs = desc["claims"]["relation"], desc["objects"]
            assert rel is not None and len(objs) == 2 and len({(o["color"], o["shape"]) for o in objs}) == 2
            subject = next(o for o in objs if (o["color"], o["shape"]) == (rel["subject"]["color"],
                                                                         rel["subject"]["shape"]))
            other = next(o for o in objs if o is not subject)
            assert relation_of(subject, other) == rel["relation"]
            assert check_scene(render_scene(desc, 64), desc).passed, caption
            if split == "train":
                assert not any((o["color"], o["shape"]) in DEFAULT_HELD_OUT for o in objs)


def test_relation_share_adds_relation_scenes_and_zero_keeps_the_old_stream(tmp_path):
    def relations(paths):
        out = []
        for p in paths:
            with tarfile.open(p) as tar:
                out += [json.loads(tar.extractfile(m).read())["claims"]["relation"] is not None
                        for m in tar.getmembers() if m.name.endswith(".json")]
        return out

    plain = relations(build_scenes(tmp_path / "a", 60, resolution=16, seed=5, shard_size=60))
    zero = build_scenes(tmp_path / "b", 60, resolution=16, seed=5, shard_size=60, relation_share=0.0)
    assert zero[0].read_bytes() == (tmp_path / "a" / "00000.tar").read_bytes()
    every = relations(build_scenes(tmp_path / "c", 60, resolution=16, seed=5, shard_size=60, relation_share=1.0))
    assert all(every) and sum(plain) < 30
    with pytest.raises(ValueError, match="relation_share"):
        build_scenes(tmp_path / "d", 5, relation_share=1.5)


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="split"):
        sample_scene(rng, split="test")
    with pytest.raises(ValueError, match="held-out pair"):
        sample_scene(rng, held_out=[("pink", "circle")])
    with pytest.raises(ValueError, match="n must be"):
        build_scenes("/tmp/unused", 0)


def test_builders_never_share_keys(tmp_path):
    from synth.signs import build_signs

    def keys(paths):
        out = set()
        for p in paths:
            with tarfile.open(p) as tar:
                out |= {m.name.split(".", 1)[0] for m in tar}
        return out

    scenes = keys(build_scenes(tmp_path / "scenes", 4, resolution=16, shard_size=2))
    signs = keys(build_signs(tmp_path / "signs", 4, resolution=16, shard_size=2))
    assert len(scenes) == 4 and len(signs) == 4 and not scenes & signs
