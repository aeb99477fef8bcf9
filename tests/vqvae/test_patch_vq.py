"""PatchVQ and its k-means: shapes, code range, gradients, determinism, save/load, a real Trainer fit."""
import json

import numpy as np

import pytest
import torch

from tests.train.test_vqvae_module import _LossRecorder, _pattern_images, _write_pattern_shard
import yaml

from configs import PRESET_DIR
from train.config import apply_overrides, preset_from_dict
from train.vqvae_fit import fit_vqvae
from vqvae.kmeans import fit_kmeans, from_patches, nearest, to_patches
from vqvae.patch_vq import PatchVQ, PatchVQConfig
from vqvae.registry import load_image_tokenizer


def _tiny(vocab=16, res=16, patch=4):
    return PatchVQ(PatchVQConfig(resolution=res, patch=patch, vocab_size=vocab, n_hid=8, n_blocks=1))


def test_patches_round_trip_and_layout():
    x = torch.rand(2, 3, 8, 8)
    p = to_patches(x, 4)
    assert p.shape == (2, 2, 2, 48)
    assert torch.equal(p[0, 1, 0].view(3, 4, 4), x[0, :, 4:8, 0:4])     # row 1, column 0
    assert torch.equal(from_patches(p, 4), x)


def test_kmeans_is_deterministic_for_a_seed_and_finds_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centres])
    a, b = fit_kmeans(x, 3, iters=10, seed=1), fit_kmeans(x, 3, iters=10, seed=1)
    assert torch.equal(a, b)
    found = sorted(map(tuple, a.round().tolist()))
    assert found == sorted(map(tuple, centres.tolist()))
    idx, dist = nearest(x, a)
    assert float(dist.max()) < 1.0
    with pytest.raises(ValueError, match="distinct"):
        fit_kmeans(torch.zeros(10, 2), 3)


def test_kmeans_weights_duplicates_like_repeated_points():
    """Merging identical rows into weighted points gives the centroids that plain Lloyd gives."""
    x = torch.tensor([[0.0], [0.0], [0.0], [1.0], [10.0], [11.0]])
    c = fit_kmeans(x, 2, iters=10, seed=0).sort(dim=0).values
    assert torch.allclose(c, torch.tensor([[0.25], [10.5]]))


def test_shapes_code_range_and_an_unfitted_model_refuses_to_encode():
    m = _tiny()
    x = torch.rand(3, 3, 16, 16)
    with pytest.raises(ValueError, match="codebook"):
        m.encode(x)
    m.fit_codebook(torch.rand(20, 3, 16, 16), iters=3)
    codes = m.encode(x)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 16
    assert m.decode(codes).shape == (3, 3, 16, 16)
    assert m.decode(codes.flatten(1)).shape == (3, 3, 16, 16)
    out = m.decode(codes)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="range"):
        m.decode(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="shape"):
        m.encode(torch.rand(1, 3, 8, 8))


def test_untrained_decoder_is_exactly_kmeans_and_gradients_reach_every_parameter():
    m = _tiny()
    x = torch.rand(8, 3, 16, 16)
    m.fit_codebook(x, iters=3)
    codes = m.encode(x)
    kmeans = from_patches(m.centroids[codes], 4)
    assert torch.allclose(m.decode_raw(codes), kmeans)             # zero-initialised correction
    codes, recon = m(x)
    ((recon - x) ** 2).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
    assert float(m.context[-1].weight.grad.abs().sum()) > 0


def test_save_load_round_trip_gives_identical_codes(tmp_path):
    m = _tiny()
    x = torch.rand(6, 3, 16, 16)
    m.fit_codebook(x, iters=3)
    with torch.no_grad():
        m.context[-1].weight.normal_()
    m.save(tmp_path)
    assert json.loads((tmp_path / "vqvae.json").read_text())["kind"] == "patch_vq"
    loaded = load_image_tokenizer(tmp_path)
    assert isinstance(loaded, PatchVQ)
    assert torch.equal(loaded.encode(x), m.encode(x))
    assert torch.equal(loaded.decode(m.encode(x)), m.eval().decode(m.encode(x)))
    (tmp_path / "vqvae.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError):
        load_image_tokenizer(tmp_path)


def test_real_trainer_fit_fits_the_codebook_then_lowers_the_loss(tmp_path):
    raw = yaml.safe_load((PRESET_DIR / "tiny.yaml").read_text())
    raw["vqvae"] = {"kind": "patch_vq", "resolution": 16, "patch": 4, "vocab_size": 32, "n_hid": 16, "n_blocks": 1}
    raw = apply_overrides(raw, ["vqvae_train.kmeans_images=32", "vqvae_train.lr=3.0e-3",
                                "vqvae_train.edge_weight=0.05", "data.shuffle_buffer=8"])
    preset = preset_from_dict(raw, name="tiny-patch-vq")
    _write_pattern_shard(tmp_path / "shards", 64, 24)
    recorder = _LossRecorder()
    out = tmp_path / "run"
    export = fit_vqvae(preset, out, train_shards=[str(tmp_path / "shards")], callbacks=[recorder],
                       enable_progress_bar=False)
    assert len(recorder.losses) == preset.vqvae_train.max_steps
    model = load_image_tokenizer(export)
    codebook = load_image_tokenizer(out / "export_codebook")
    held = _pattern_images(8, 16, seed=99)
    assert torch.equal(model.encode(held), codebook.encode(held))   # training never changes the codes
    err = lambda m: float(((m.decode(m.encode(held)) - held) ** 2).mean())   # noqa: E731
    assert err(model) < 0.97 * err(codebook)     # the held-out loss went down from k-means' own


def test_a_bundle_with_a_patch_vq_tokenizer_generates_and_edits(tmp_path):
    """The inference object treats PatchVQ through the image tokenizer interface only."""
    import dataclasses

    from dalle import Dalle
    from dalle.bundle import save_bundle
    from dalle.model import DalleTransformer
    from train.config import load_preset, with_image_tokenizer
    from train.text_tokenizer import train_tokenizer

    tok = train_tokenizer(["a sign that says HI", "a red circle"] * 10, 128, tmp_path / "tokenizer.json")
    image_tokenizer = _tiny(vocab=32)
    image_tokenizer.fit_codebook(_pattern_images(16, 16, seed=1), iters=3)
    preset = with_image_tokenizer(load_preset("tiny"), image_tokenizer.config)
    assert preset.dalle.image_vocab_size == 32 and dataclasses.asdict(preset.vqvae)["patch"] == 4
    torch.manual_seed(0)
    save_bundle(tmp_path / "bundle", model=DalleTransformer(preset.dalle).eval(), vqvae=image_tokenizer.eval(),
                tokenizer_path=tok)
    model = Dalle.from_pretrained(tmp_path / "bundle", device="cpu")
    assert isinstance(model.image_tokenizer, PatchVQ)
    gens = model.generate(["a sign that says HI"], n=2, seed=3)
    assert len(gens) == 2 and gens[0].image.size == (16, 16)
    again = model.generate(["a sign that says HI"], n=2, seed=3)
    assert torch.equal(gens[1].image_tokens, again[1].image_tokens)
    edits = model.edit(gens[0].image, "a red circle", keep_rows=2, n=1, seed=0)
    kept = model.image_tokenizer.encode(torch.from_numpy(
        np.asarray(gens[0].image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None])
    assert torch.equal(edits[0].image_tokens.view(4, 4)[:2], kept[0, :2])
