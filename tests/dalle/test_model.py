"""The transformer: training-call contract, causality, KV cache == full forward, checkpoints, sizes."""
import json
import math

import pytest
import torch

from dalle.config import ATTN_LAYOUTS
from dalle.model import DalleTransformer, Logits
from train.config import load_preset


def tiny_cfg(*layouts: str):
    overrides = ["dalle.conv_kernel=3"]
    if layouts:
        overrides.append(f"dalle.attn_layouts=[{','.join(layouts)}]")
    return load_preset("tiny", overrides).dalle


def batch(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, cfg.text_vocab_total, (B, cfg.text_len), generator=g)
    image = torch.randint(0, cfg.image_vocab_size, (B, cfg.image_len - 1), generator=g)
    return text, image      # the inputs of a training call: every code but the last


def test_training_call_shapes_follow_the_contract():
    cfg = tiny_cfg()
    model = DalleTransformer(cfg)
    text, image = batch(cfg)
    out = model(text, image)
    assert isinstance(out, Logits)
    assert out.text.shape == (3, cfg.text_len - 1, cfg.text_vocab_total)
    assert out.image.shape == (3, cfg.image_len, cfg.image_vocab_size)
    # n codes in -> n + 1 image predictions out (code j is predicted from the codes before it)
    assert model(text, image[:, :5]).image.shape == (3, 6, cfg.image_vocab_size)
    assert model(text, image[:, :0]).image.shape == (3, 1, cfg.image_vocab_size)


@pytest.mark.parametrize("layout", ATTN_LAYOUTS)
def test_outputs_never_see_the_token_they_predict(layout):
    cfg = tiny_cfg(layout)
    model = DalleTransformer(cfg).eval()
    text, image = batch(cfg)
    base = model(text, image)
    j = 6
    changed = image.clone()
    changed[:, j] = (changed[:, j] + 1) % cfg.image_vocab_size
    out = model(text, changed)
    assert torch.equal(out.text, base.text)
    assert torch.equal(out.image[:, : j + 1], base.image[:, : j + 1])   # image[:, j] predicts image_tokens[:, j]
    assert not torch.allclose(out.image[:, j + 1], base.image[:, j + 1])
    t = 4
    text2 = text.clone()
    text2[:, t] = (text2[:, t] + 1) % cfg.text_vocab_total
    out = model(text2, image)
    assert torch.equal(out.text[:, :t], base.text[:, :t])                # text[:, i] predicts text[:, i + 1]
    assert not torch.allclose(out.image, base.image)                     # every image position sees all text


@pytest.mark.parametrize("layout", ATTN_LAYOUTS)
@pytest.mark.parametrize("prefix", (0, 5))
def test_cached_logits_equal_full_forward(layout, prefix):
    cfg = tiny_cfg(layout, "dense") if layout != "dense" else tiny_cfg("dense")
    model = DalleTransformer(cfg).eval()
    text, image = batch(cfg)
    with torch.inference_mode():
        full = model(text, image)
        model.setup_cache(text.size(0))
        pre = model.prefill(text, image[:, :prefix])
        parts = [pre.image]
        for j in range(prefix, cfg.image_len - 1):
            parts.append(model.decode_step(image[:, j:j + 1], torch.tensor([cfg.text_len + j])))
    cached = torch.cat(parts, dim=1)
    assert cached.shape == full.image.shape
    torch.testing.assert_close(pre.text, full.text, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached, full.image, atol=1e-5, rtol=0)


def test_cache_is_not_in_the_state_dict_and_checkpoint_round_trips(tmp_path):
    cfg = tiny_cfg("row", "column")
    model = DalleTransformer(cfg).eval()
    model.setup_cache(4)
    assert not any("cache" in k for k in model.state_dict())
    model.save(tmp_path)
    assert json.loads((tmp_path / "dalle.json").read_text()) == cfg.to_dict()
    loaded = DalleTransformer.from_checkpoint(tmp_path)
    assert not loaded.training and loaded.config == cfg
    text, image = batch(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(text, image).image, model(text, image).image, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not a transformer checkpoint"):
        DalleTransformer.from_checkpoint(tmp_path / "missing")


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    cfg = tiny_cfg()
    model = DalleTransformer(cfg).eval()
    model.save(tmp_path / "f32")
    model.save(tmp_path / "f16", weights_dtype="float16")
    size = {d: (tmp_path / d / "dalle.safetensors").stat().st_size for d in ("f32", "f16")}
    assert size["f16"] < 0.55 * size["f32"]
    loaded = DalleTransformer.from_checkpoint(tmp_path / "f16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.half().float(), b), name                   # exactly the stored float16 values
    text, image = batch(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(text, image).image, model(text, image).image, atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        model.save(tmp_path / "x", weights_dtype="int8")


def test_dalle_12b_preset_has_twelve_billion_parameters():
    cfg = load_preset("dalle-12b").dalle
    with torch.device("meta"):
        model = DalleTransformer(cfg)
    L, d = cfg.n_layer, cfg.n_embd
    per_block = 12 * d * d + 13 * d            # qkv, proj, fc, proj weights + their biases + 2 LayerNorms
    embeddings = (cfg.text_vocab_total + cfg.text_len + cfg.image_vocab_size + 2 * cfg.image_grid) * d
    heads = (cfg.text_vocab_total + cfg.image_vocab_size) * d
    assert model.num_params() == L * per_block + embeddings + heads + 2 * d
    assert 12.0e9 < model.num_params() < 12.5e9                          # 12.29e9; the paper says 12B
    assert model.num_params(non_embedding=True) < model.num_params()


def test_init_scales_residual_projections():
    cfg = load_preset("small").dalle
    model = DalleTransformer(cfg)
    proj_std = model.blocks[0].attn.proj.weight.std().item()
    qkv_std = model.blocks[0].attn.qkv.weight.std().item()
    assert math.isclose(proj_std, 0.02 / math.sqrt(2 * cfg.n_layer), rel_tol=0.05)
    assert math.isclose(qkv_std, 0.02, rel_tol=0.05)
    assert torch.all(model.blocks[0].ln_1.weight == 1) and torch.all(model.blocks[0].attn.qkv.bias == 0)


def _pair_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    off = ~torch.eye(a.shape[0], dtype=torch.bool)                  # the zero diagonal would correlate anyway
    da, db = torch.cdist(a, a)[off], torch.cdist(b, b)[off]
    return torch.corrcoef(torch.stack([da, db]))[0, 1].item()


def test_image_codes_start_from_what_they_look_like():
    cfg = tiny_cfg()
    g = torch.Generator().manual_seed(0)
    vectors = torch.rand(cfg.image_vocab_size, 8, generator=g)
    vectors[1] = vectors[0] + 0.01                       # two codes that are nearly the same patch
    model = DalleTransformer(cfg)
    assert abs(_pair_corr(model.image_emb.weight, vectors)) < 0.2          # the random init knows nothing
    model.init_image_codes(vectors, seed=0)
    for layer in (model.image_emb, model.image_head):
        w = layer.weight
        assert math.isclose(w.std().item(), 0.02, rel_tol=0.05)
        assert _pair_corr(w, vectors) > 0.6
        near = torch.cosine_similarity(w[0], w[1], dim=0)
        others = torch.cosine_similarity(w[0:1], w[2:], dim=1)
        assert near > 0.6 and near > others.quantile(0.9)
        assert not torch.equal(w[0], w[1])                 # still distinguishable
    again = DalleTransformer(cfg)
    again.init_image_codes(vectors, seed=0)
    assert torch.equal(again.image_emb.weight, model.image_emb.weight)     # deterministic for a seed
    with pytest.raises(ValueError, match="code_vectors must be"):
        model.init_image_codes(vectors[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        model.init_image_codes(torch.full_like(vectors, float("nan")))


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = tiny_cfg("row", "conv")
    text, image = batch(cfg)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = DalleTransformer(cfg).train()
        model.gradient_checkpointing = ckpt
        out = model(text, image)
        (out.image.logsumexp(-1).mean() + out.text.logsumexp(-1).mean()).backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_dropout_only_in_training():
    cfg = load_preset("tiny", ["dalle.dropout=0.5"]).dalle
    model = DalleTransformer(cfg)
    text, image = batch(cfg)
    model.train()
    assert not torch.allclose(model(text, image).image, model(text, image).image)
    model.eval()
    assert torch.equal(model(text, image).image, model(text, image).image)


def test_flops_per_token():
    cfg = tiny_cfg("dense")
    model = DalleTransformer(cfg)
    T = cfg.text_len + cfg.image_len - 1
    full, causal, mask = (model.flops_per_token(attention=a) for a in ("full", "causal", "mask"))
    assert full - causal == pytest.approx(12 * cfg.n_embd * cfg.n_layer * (T - (T + 1) / 2))
    assert mask == pytest.approx(causal)                                 # dense layout = causal attention
    assert model.flops_per_token(training=False) == pytest.approx(full / 3)
    sparse = DalleTransformer(tiny_cfg("column")).flops_per_token(attention="mask")
    assert sparse < mask


def test_bad_inputs_raise_value_errors():
    cfg = tiny_cfg()
    model = DalleTransformer(cfg)
    text, image = batch(cfg)
    with pytest.raises(ValueError, match="text_tokens"):
        model(text[:, :-1], image)
    full = torch.cat([image, image[:, :1]], 1)                           # all image_len codes: none left to predict
    with pytest.raises(ValueError, match="image_tokens"):
        model(text, full)
    with pytest.raises(ValueError, match="batch sizes"):
        model(text, image[:2])
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.decode_step(image[:, :1], torch.tensor([cfg.text_len]))
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.prefill(text, image[:, :0])
    with pytest.raises(ValueError, match="backend"):
        model.attn_backend = "xformers"
