"""The sampler: cache == recompute, seeds per row, guidance, prefixes, log-probabilities."""
import pytest
import torch

from dalle.config import ATTN_LAYOUTS
from dalle.model import DalleTransformer
from dalle.sampler import image_seed, row_uniforms, sample, sample_from_logits
from tests.bundles import random_transformer
from train.config import load_preset


def make_model(*layouts: str, seed: int = 0) -> DalleTransformer:
    overrides = ["dalle.conv_kernel=3"]
    if layouts:
        overrides.append(f"dalle.attn_layouts=[{','.join(layouts)}]")
    cfg = load_preset("tiny", overrides).dalle
    torch.manual_seed(seed)
    return random_transformer(cfg)   # larger weights than the init: distinct, non-uniform distributions


def captions(model, B, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, cfg.text_vocab_size, (B, cfg.text_len), generator=g)
    null = torch.arange(cfg.text_vocab_size, cfg.text_vocab_total).expand(B, -1).clone()
    return text, null


def full_logprobs(model, text, image_tokens):
    """log p(code_j | text, codes_<j) of every position from one uncached forward."""
    with torch.no_grad():
        return torch.log_softmax(model(text, image_tokens[:, :-1]).image.float(), -1)   # (B, image_len, Vi)


def test_image_seed_is_stable_and_sensitive():
    s = image_seed(0, "a red cube", 0)
    assert s == image_seed(0, "a red cube", 0) and 0 <= s < 2 ** 63
    assert len({s, image_seed(1, "a red cube", 0), image_seed(0, "a red cube", 1),
                image_seed(0, "a blue cube", 0)}) == 4


def test_inverse_cdf_draw_is_exact_on_hand_made_probabilities():
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5, 0.0]] * 5))
    u = torch.tensor([0.0, 0.2, 0.3, 0.6, 1.0 - 1e-9])
    assert sample_from_logits(logits, u).tolist() == [0, 0, 1, 2, 2]        # never the -inf token
    filtered = torch.tensor([[float("-inf"), 1.0, float("-inf")]] * 2)
    assert sample_from_logits(filtered, torch.tensor([0.0, 0.999999])).tolist() == [1, 1]


@pytest.mark.parametrize("layout", ATTN_LAYOUTS)
def test_cached_sampling_equals_recompute(layout):
    model = make_model(layout, "dense")
    text, _ = captions(model, 3)
    seeds = [11, 12, 13]
    opts = dict(seeds=seeds, temperature=0.9, top_k=20, top_p=0.95)
    cached = sample(model, text, **opts)
    slow = sample(model, text, use_cache=False, **opts)
    assert torch.equal(cached.image_tokens, slow.image_tokens)
    torch.testing.assert_close(cached.logprobs, slow.logprobs, atol=1e-5, rtol=0)
    # and greedy decoding through the cache picks the argmax of one full forward at every position
    greedy = sample(model, text, seeds=seeds, top_k=1)
    with torch.no_grad():
        full = model(text, greedy.image_tokens[:, :-1]).image
    assert torch.equal(greedy.image_tokens, full.argmax(-1))


def test_logprobs_are_the_untempered_conditional_distribution():
    model = make_model()
    text, null = captions(model, 2)
    out = sample(model, text, null_text_tokens=null, guidance=3.0, temperature=0.7, top_k=5, seeds=[1, 2])
    want = full_logprobs(model, text, out.image_tokens).gather(-1, out.image_tokens[..., None]).squeeze(-1)
    assert out.logprobs.dtype == torch.float32
    torch.testing.assert_close(out.logprobs, want, atol=1e-5, rtol=0)


def test_rows_depend_on_their_seed_only():
    model = make_model()
    text, _ = captions(model, 4)
    seeds = [5, 6, 7, 8]
    together = sample(model, text, seeds=seeds).image_tokens
    for b in range(4):
        alone = sample(model, text[b:b + 1], seeds=[seeds[b]]).image_tokens
        assert torch.equal(alone[0], together[b])
    assert torch.equal(sample(model, text[2:], seeds=seeds[2:]).image_tokens, together[2:])
    other = sample(model, text, seeds=[105, 106, 107, 108]).image_tokens
    assert not torch.equal(other, together)


def test_guidance_one_is_the_conditional_path():
    model = make_model("row", "column")
    text, null = captions(model, 3)
    plain = sample(model, text, seeds=[1, 2, 3], top_p=0.9)
    guided = sample(model, text, null_text_tokens=null, guidance=1.0, seeds=[1, 2, 3], top_p=0.9)
    assert torch.equal(plain.image_tokens, guided.image_tokens)
    assert torch.equal(plain.logprobs, guided.logprobs)


def test_guidance_zero_is_the_null_caption_path():
    """The doubled batch's null half, sharing one cache with the conditional half, is the plain null path."""
    model = make_model("row", "column")
    text, null = captions(model, 3)
    uncond = sample(model, null, seeds=[1, 2, 3])
    guided = sample(model, text, null_text_tokens=null, guidance=0.0, seeds=[1, 2, 3])
    assert torch.equal(uncond.image_tokens, guided.image_tokens)


def test_guided_greedy_matches_manual_guidance_with_full_forwards():
    model = make_model("conv")
    text, null = captions(model, 2)
    g = 2.5
    out = sample(model, text, null_text_tokens=null, guidance=g, top_k=1, seeds=[0, 1])
    with torch.no_grad():
        cond = model(text, out.image_tokens[:, :-1]).image
        uncond = model(null, out.image_tokens[:, :-1]).image
    assert torch.equal(out.image_tokens, (uncond + g * (cond - uncond)).argmax(-1))
    plain = sample(model, text, top_k=1, seeds=[0, 1])
    assert not torch.equal(plain.image_tokens, out.image_tokens)    # guidance changed something


@pytest.mark.parametrize("use_cache", (True, False))
def test_prefix_codes_are_kept(use_cache):
    model = make_model("row", "column")
    cfg = model.config
    text, null = captions(model, 2)
    prefix = torch.randint(0, cfg.image_vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    out = sample(model, text, null_text_tokens=null, guidance=2.0, prefix_image_tokens=prefix, seeds=[4, 5],
                 use_cache=use_cache)
    assert torch.equal(out.image_tokens[:, :6], prefix)
    want = full_logprobs(model, text, out.image_tokens).gather(-1, out.image_tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, want, atol=1e-5, rtol=0)
    # an empty prefix is the unconstrained run
    empty = sample(model, text, null_text_tokens=null, guidance=2.0, prefix_image_tokens=prefix[:, :0],
                   seeds=[4, 5], use_cache=use_cache)
    free = sample(model, text, null_text_tokens=null, guidance=2.0, seeds=[4, 5], use_cache=use_cache)
    assert torch.equal(empty.image_tokens, free.image_tokens)
    assert not torch.equal(free.image_tokens[:, :6], prefix)


def test_sampling_restores_training_mode_and_uses_per_row_uniforms():
    model = make_model().train()
    text, _ = captions(model, 1)
    sample(model, text, seeds=[0])
    assert model.training
    u = row_uniforms([3, 4], 5)
    assert torch.equal(u[1], torch.rand(5, generator=torch.Generator().manual_seed(4)))


def test_bad_options_raise_value_errors():
    model = make_model()
    cfg = model.config
    text, _ = captions(model, 2)
    bad = [dict(temperature=0.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(guidance=-1.0),
           dict(guidance=2.0), dict(seeds=[1]),
           dict(prefix_image_tokens=torch.zeros(2, cfg.image_len, dtype=torch.long)),
           dict(prefix_image_tokens=torch.full((2, 3), cfg.image_vocab_size))]
    for kw in bad:
        kw = {"seeds": [1, 2], **kw}
        with pytest.raises(ValueError):
            sample(model, text, **kw)
    with pytest.raises(ValueError, match="text_tokens"):
        sample(model, text[:, :-1], seeds=[1, 2])


# ---- every drawn index lies in the vocabulary, whatever the logits ----------------------
def test_nan_logits_still_draw_an_index_in_the_vocabulary():
    logits = torch.tensor([[float("nan")] * 4, [float("inf"), 0.0, float("-inf"), 1.0], [0.0, 1.0, 2.0, 3.0]])
    idx = sample_from_logits(logits, torch.tensor([0.5, 0.999, 0.999]))
    assert idx.min() >= 0 and idx.max() < 4
    assert idx[2] == 3


@pytest.mark.parametrize("use_cache", (True, False))
def test_a_tiny_temperature_is_greedy_decoding(use_cache):
    model = make_model()
    text, null = captions(model, 2)
    greedy = sample(model, text, seeds=[1, 2], top_k=1, use_cache=use_cache)
    for t in (1e-45, 1e-30, 1e-8):
        tiny = sample(model, text, seeds=[1, 2], temperature=t, use_cache=use_cache)
        assert torch.equal(tiny.image_tokens, greedy.image_tokens), t
    guided = sample(model, text, null_text_tokens=null, guidance=3.0, temperature=1e-45, seeds=[1, 2])
    assert torch.equal(guided.image_tokens,
                       sample(model, text, null_text_tokens=null, guidance=3.0, top_k=1, seeds=[1, 2]).image_tokens)


def test_guidance_that_overflows_float32_is_a_value_error_naming_it():
    model = make_model()
    text, null = captions(model, 2)
    with pytest.raises(ValueError, match="guidance 1e\\+300 overflows"):
        sample(model, text, null_text_tokens=null, guidance=1e300, seeds=[1, 2])


@pytest.mark.parametrize("use_cache", (True, False))
@pytest.mark.parametrize("bad", (float("nan"), float("inf")))
def test_non_finite_weights_are_a_value_error_naming_the_model(use_cache, bad):
    model = make_model()
    with torch.no_grad():
        model.image_head.weight[3, 0] = bad
    text, null = captions(model, 2)
    with pytest.raises(ValueError, match="model produced non-finite logits"):
        sample(model, text, seeds=[1, 2], use_cache=use_cache)
    with pytest.raises(ValueError, match="model produced non-finite logits"):
        sample(model, text, null_text_tokens=null, guidance=2.0, seeds=[1, 2], use_cache=use_cache)
