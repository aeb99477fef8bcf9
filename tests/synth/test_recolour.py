"""Recoloured copies of built-in samples (synth.recolour), for fitting image-tokenizer codebooks."""
import numpy as np

from synth.recolour import recolour_scene, recolour_sign, render_recoloured
from synth.scenes import COLORS, scene_sample
from synth.signs import READABLE_ON, sample_sign


def test_palette_recolouring_permutes_scene_colours_within_the_palette():
    specs = [scene_sample(np.random.default_rng(i))[1] for i in range(30)]
    a = [recolour_scene(s, np.random.default_rng([7, i])) for i, s in enumerate(specs)]
    b = [recolour_scene(s, np.random.default_rng([7, i])) for i, s in enumerate(specs)]
    assert a == b                                                       # deterministic for a seed
    changed = 0
    for old, new in zip(specs, a):
        assert [(o["shape"], o["cx"], o["cy"], o["d"]) for o in old["objects"]] == \
            [(o["shape"], o["cx"], o["cy"], o["d"]) for o in new["objects"]]
        assert all(o["color"] in COLORS for o in new["objects"])
        same = {}                                                      # one colour -> one colour
        for o, n in zip(old["objects"], new["objects"]):
            assert same.setdefault(o["color"], n["color"]) == n["color"]
        assert len(set(same.values())) == len(same)
        changed += old["objects"] != new["objects"]
    assert changed > len(specs) // 2


def test_sign_recolouring_draws_a_legible_pair_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    specs = [sample_sign(rng) for _ in range(30)]
    new = [recolour_sign(s, np.random.default_rng([3, i])) for i, s in enumerate(specs)]
    assert new == [recolour_sign(s, np.random.default_rng([3, i])) for i, s in enumerate(specs)]
    for old, n in zip(specs, new):
        assert n["text_color"] in READABLE_ON[n["board_color"]]
        assert {k: v for k, v in n.items() if "color" not in k} == {k: v for k, v in old.items() if "color" not in k}
    assert sum(o["board_color"] != n["board_color"] for o, n in zip(specs, new)) > 15


def test_rendered_copies_are_images_and_other_samples_have_none():
    rng = np.random.default_rng(1)
    for spec in (scene_sample(rng)[1], sample_sign(rng)):
        img = render_recoloured(spec, 32, rng)
        assert img.shape == (3, 32, 32) and 0 <= float(img.min()) <= float(img.max()) <= 1
    assert render_recoloured({"kind": "emoji"}, 32, rng) is None


def test_recoloured_shards_hold_images_without_captions(tmp_path):
    import json
    import tarfile

    from synth.recolour import build_recoloured
    from synth.scenes import build_scenes
    from synth.signs import build_signs

    build_scenes(tmp_path / "scenes", 6, seed=1)
    build_signs(tmp_path / "signs", 4, seed=2)
    paths, counts = build_recoloured([str(tmp_path / "scenes"), str(tmp_path / "signs")], tmp_path / "a",
                                     copies=2, seed=3, shard_size=7)
    assert counts == {"read": 10, "written": 20} and len(paths) == 3
    again, _ = build_recoloured([str(tmp_path / "scenes"), str(tmp_path / "signs")], tmp_path / "b",
                                copies=2, seed=3, shard_size=7)
    members = {}
    for p, q in zip(paths, again):
        with tarfile.open(p) as t, tarfile.open(q) as u:
            mine = {m.name: t.extractfile(m).read() for m in t}
            assert mine == {m.name: u.extractfile(m).read() for m in u}    # same sources and seed, same bytes
            members.update(mine)
    assert len(members) == 40 and not any(n.endswith(".txt") for n in members)    # no caption: no stage that
    records = [json.loads(v) for n, v in members.items() if n.endswith(".json")]  # needs one can use them
    assert {r["kind"] for r in records} == {"scene", "sign"}
    assert all(r["split"] == "recoloured" and "caption" not in r and "claims" not in r for r in records)
    scenes = [r for r in records if r["kind"] == "scene"]
    assert len({json.dumps(r["objects"]) for r in scenes}) > 6              # two different copies per scene


def test_recolouring_skips_and_counts_other_samples(tmp_path):
    import pytest

    from common.shards import ShardWriter
    from synth.recolour import build_recoloured
    from synth.scenes import build_scenes
    from tests.helpers import encode_image, random_image

    build_scenes(tmp_path / "scenes", 3, seed=1)
    with ShardWriter(tmp_path / "other") as w:
        w.write_sample("photo1", image=encode_image(random_image(np.random.default_rng(0), 16), "png"),
                       image_ext="png", caption="a photo")
        w.write("nojson1", {"png": encode_image(random_image(np.random.default_rng(1), 16), "png"), "txt": "x"})
    _, counts = build_recoloured([str(tmp_path / "scenes"), str(tmp_path / "other")], tmp_path / "out")
    assert counts == {"read": 5, "written": 3, "not_scene_or_sign": 1, "no_description": 1}
    with pytest.raises(ValueError, match="no built-in scene or sign"):
        build_recoloured([str(tmp_path / "other")], tmp_path / "none")
