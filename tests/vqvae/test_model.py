import json

import pytest
import torch

from train.config import load_preset
from vqvae import DiscreteVAE, VQVAEConfig
from vqvae.relaxation import one_hot_channels



@pytest.fixture
def tiny_cfg() -> VQVAEConfig:
    return load_preset("tiny").vqvae


def _model(cfg: VQVAEConfig, seed: int = 0) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(cfg).eval()


@pytest.mark.parametrize("cfg", [
    load_preset("tiny").vqvae,
    VQVAEConfig(resolution=32, n_hid=8, downsample=8, vocab_size=16),
    VQVAEConfig(resolution=16, n_hid=8, downsample=4, vocab_size=16, likelihood="mse"),
], ids=["tiny", "downsample8", "mse"])
def test_encode_decode_shapes_and_ranges(cfg):
    model = _model(cfg)
    images = torch.rand(3, 3, cfg.resolution, cfg.resolution)
    codes = model.encode(images)
    g = cfg.resolution // cfg.downsample
    assert codes.shape == (3, g, g) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < cfg.vocab_size
    out = model.decode(codes)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Row-major flattened tokens decode to the same images.
    assert torch.equal(model.decode(codes.flatten(1)), out)
    # Every code id decodes (the whole vocabulary is reachable).
    all_codes = torch.arange(g * g).remainder(cfg.vocab_size).view(1, g, g)
    assert model.decode(all_codes).shape == (1, 3, cfg.resolution, cfg.resolution)
    fwd = model(images, 0.5)
    assert fwd.logits.shape == (3, cfg.vocab_size, g, g)
    channels = 6 if cfg.likelihood == "logit_laplace" else 3
    assert fwd.params.shape == (3, channels, cfg.resolution, cfg.resolution)


def test_grid_follows_downsample():
    assert VQVAEConfig(resolution=64, downsample=8).grid_size == 8
    model = _model(VQVAEConfig(resolution=64, n_hid=4, downsample=8, vocab_size=8))
    assert model.encode(torch.rand(1, 3, 64, 64)).shape == (1, 8, 8)


def test_eval_mode_is_deterministic(tiny_cfg):
    model = _model(tiny_cfg)
    images = torch.rand(4, 3, 16, 16)
    codes = model.encode(images)
    assert torch.equal(codes, model.encode(images))
    assert torch.equal(model.decode(codes), model.decode(codes))
    a = model(images, 0.3, noise=False).params
    assert torch.equal(a, model(images, 0.3, noise=False).params)


def test_decode_lookup_equals_one_hot_convolution(tiny_cfg):
    model = _model(tiny_cfg)
    codes = torch.randint(0, tiny_cfg.vocab_size, (2, 4, 4))
    via_lookup = model.decoder.decode_embedded(model.decoder.embed(codes))
    via_conv = model.decoder(one_hot_channels(codes, tiny_cfg.vocab_size, torch.float32))
    torch.testing.assert_close(via_lookup, via_conv, rtol=1e-5, atol=1e-5)


def test_save_from_checkpoint_round_trip_without_pickle(tiny_cfg, tmp_path):
    model = _model(tiny_cfg, seed=1)
    with torch.no_grad():                      # move away from the init so the test means something
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path)
    weights = (tmp_path / "vqvae.safetensors").read_bytes()
    header_len = int.from_bytes(weights[:8], "little")
    assert weights[8:9] == b"{" and json.loads(weights[8:8 + header_len])  # safetensors, not pickle
    assert json.loads((tmp_path / "vqvae.json").read_text()) == tiny_cfg.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqvae.json", "vqvae.safetensors"]

    loaded = DiscreteVAE.from_checkpoint(tmp_path)
    assert not loaded.training and loaded.config == tiny_cfg
    images = torch.rand(4, 3, 16, 16)
    codes = model.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    other = _model(tiny_cfg, seed=2)
    assert not torch.equal(other.decode(codes), model.decode(codes))


def test_from_checkpoint_errors(tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match="not an image tokenizer checkpoint"):
        DiscreteVAE.from_checkpoint(tmp_path)
    _model(tiny_cfg).save(tmp_path)
    bigger = dict(tiny_cfg.to_dict(), vocab_size=64)
    (tmp_path / "vqvae.json").write_text(json.dumps(bigger))
    with pytest.raises(ValueError, match="does not match its config"):
        DiscreteVAE.from_checkpoint(tmp_path)


def test_bad_inputs_raise_clear_errors(tiny_cfg):
    model = _model(tiny_cfg)
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.decode(torch.full((1, 4, 4), 32))
    with pytest.raises(ValueError, match="shape"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))


def test_paper_preset_builds_on_meta_with_openai_size():
    cfg = load_preset("dalle-12b").vqvae
    with torch.device("meta"):
        model = DiscreteVAE(cfg)
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    print(f"dalle-12b dVAE: encoder {n_enc / 1e6:.2f}M + decoder {n_dec / 1e6:.2f}M "
          f"= {(n_enc + n_dec) / 1e6:.2f}M parameters")
    assert all(p.is_meta for p in model.parameters())
    # OpenAI's released encoder + decoder hold ~97M parameters together.
    assert 90e6 < n_enc + n_dec < 105e6
    assert n_enc > n_dec
