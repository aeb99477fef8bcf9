import json

import pytest
import yaml

from dalle.config import DalleConfig
from train.config import available_presets, load_preset, preset_from_dict
from train.schedules import warmup_cosine
from vqvae.registry import config_from_preset


def test_every_preset_loads_and_derives_cross_stage_values():
    names = available_presets()
    assert {"tiny", "small", "base", "dalle-12b"} <= set(names)
    for name in names:
        p = load_preset(name)
        assert p.dalle.image_vocab_size == p.vqvae.vocab_size
        assert p.dalle.image_grid == p.vqvae.resolution // p.vqvae.downsample
        assert p.data.resolution == p.vqvae.resolution
        assert p.dalle.block_size == p.dalle.text_len + p.dalle.image_grid ** 2


def test_tiny_and_paper_shapes():
    tiny = load_preset("tiny")
    assert (tiny.vqvae.resolution, tiny.vqvae.grid_size) == (16, 4)
    paper = load_preset("dalle-12b")
    assert (paper.vqvae.resolution, paper.vqvae.grid_size, paper.vqvae.vocab_size) == (256, 32, 8192)
    assert (paper.dalle.n_layer, paper.dalle.n_head, paper.dalle.n_embd) == (64, 62, 3968)
    assert (paper.dalle.text_len, paper.dalle.text_vocab_size, paper.dalle.image_len) == (256, 16384, 1024)


def test_yaml_config_json_round_trip(tmp_path):
    p = load_preset("small", ["dalle.n_layer=3", "vqvae_train.lr=0.002"])
    assert p.dalle.n_layer == 3 and p.vqvae_train.lr == 0.002
    # what a checkpoint stores, back to configs
    stored = json.loads(json.dumps(p.to_dict()))
    assert DalleConfig.from_dict(stored["dalle"]) == p.dalle
    assert config_from_preset(stored["vqvae"]) == p.vqvae and stored["vqvae"]["kind"] == "patch_vq"
    # a resolved preset written as YAML loads to the same preset (derived keys dropped)
    raw = {k: v for k, v in stored.items() if k != "name"}
    del raw["dalle"]["image_vocab_size"], raw["dalle"]["image_grid"], raw["data"]["resolution"]
    del raw["scorer"]["resolution"], raw["scorer"]["text_len"], raw["scorer"]["text_vocab_size"]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    again = load_preset(path)
    assert again.to_dict() | {"name": p.name} == p.to_dict()


@pytest.mark.parametrize("override, message", [
    ("dalle.image_grid=8", "derived"),
    ("dalle.nope=1", "no key"),
    ("nosection.x=1", "expected one of"),
    ("dalle.n_layer", "section.key=value"),
    ("vqvae.downsample=3", "downsample"),
    ("dalle.n_head=7", "divisible"),
    ("dalle.attn_layouts=[diagonal]", "unknown layout"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_preset("tiny", [override])


def test_numeric_precision_override_reads_as_its_name():
    assert load_preset("tiny", ["dalle_train.precision=32"]).dalle_train.precision == "32"
    with pytest.raises(ValueError, match="precision must be one of"):
        load_preset("tiny", ["dalle_train.precision=64"])


def test_derived_keys_in_yaml_are_rejected():
    with pytest.raises(ValueError, match="derived"):
        preset_from_dict({"vqvae": {"resolution": 16}, "dalle": {"image_vocab_size": 5}})


def test_unknown_preset_names_the_available_ones():
    with pytest.raises(ValueError, match="tiny"):
        load_preset("nope")


def test_warmup_cosine_schedule():
    kw = dict(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(9, **kw) == pytest.approx(1.0)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(500, **kw) == pytest.approx(0.1)
    values = [warmup_cosine(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
