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
