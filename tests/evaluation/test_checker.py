"""The checker passes real renders (also mildly degraded) and rejects every kind of negative control."""
import numpy as np
import pytest
from PIL import Image

from evaluation.checker import check
from evaluation.validate import POSITIVES, scene_controls, sign_controls
from train.builders.scenes import render_scene, scene_sample
from train.builders.signs import sign_sample

SCENES = [scene_sample(np.random.default_rng(100 + i), split="heldout" if i % 2 else "train")[1] for i in range(8)]


@pytest.mark.parametrize("degrade", ["clean", "blur1", "jpeg75"])
def test_scenes_pass(degrade):
    for desc in SCENES:
        r = check(POSITIVES[degrade](render_scene(desc, 64)), desc)
        assert r.passed, (desc["caption"], r.reason)


def test_scene_controls_fail():
    kinds = set()
    for i, desc in enumerate(SCENES + [scene_sample(np.random.default_rng(7), split="train")[1]]):
        rng = np.random.default_rng(i)
        for kind, (img, d) in scene_controls(desc, render_scene(desc, 64), rng, 64).items():
            kinds.add(kind)
            assert not check(img, d).passed, (kind, desc["caption"])
    assert kinds >= {"wrong_colour", "wrong_count", "wrong_shape", "blurred", "shuffled"}


def test_swapped_positions_fail():
    rng = np.random.default_rng(0)
    n = 0
    while n < 3:
        _, desc = scene_sample(rng)
        controls = scene_controls(desc, render_scene(desc, 64), rng, 64)
        if "swapped_positions" in controls:
            assert check(render_scene(desc, 64), desc).passed
            img, d = controls["swapped_positions"]
            r = check(img, d)
            assert not r.passed and "is not" in r.reason
            n += 1


def test_larger_images_are_checked_at_64px():
    desc = SCENES[0]
    assert check(render_scene(desc, 128), desc).passed


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_sign_passes_and_controls_fail(seed):
    rng = np.random.default_rng(seed)
    image, _, desc = sign_sample(rng, 64, split="heldout" if seed % 2 else "train")
    r = check(image, desc)
    assert r.passed, (desc["caption"], r.reason)
    for kind, (img, d) in sign_controls(desc, image, rng).items():
        assert not check(img, d).passed, (kind, desc["caption"], d["claims"])


def test_small_images_fail_and_bad_descriptions_raise():
    desc = SCENES[0]
    r = check(render_scene(desc, 16), desc)
    assert not r.passed and "too small" in r.reason
    with pytest.raises(ValueError):
        check(Image.new("RGB", (64, 64)), {"kind": "scene"})


def test_an_empty_colour_window_is_unrecognised_not_a_crash():
    from evaluation.checker import fit_shape

    fit = fit_shape(np.zeros((12, 12)))
    assert fit["error"] == float("inf")
