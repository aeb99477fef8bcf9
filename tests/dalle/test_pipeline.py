"""Prompt-level generate / edit with a real tokenizer, transformer and dVAE (tiny, random weights)."""
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from dalle.bundle import Bundle
from dalle.model import DalleTransformer
from dalle.pipeline import Generation, edit, generate, prepare_image, tensor_to_pil
from dalle.rerank import SCORERS, logprob_scorer, register_scorer
from dalle.sampler import image_seed
from dalle.tokenizer import EOT, TextTokenizer
from train.config import load_preset
from vqvae.model import DiscreteVAE

CORPUS = ["a red cube on a table", "a blue sphere in the sky", "two green cats", "a small yellow house",
          "an orange dog running on the grass"] * 4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    preset = load_preset("tiny")
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=100, special_tokens=[EOT]))
    tok.save(str(path))
    tokenizer = TextTokenizer(path, preset.dalle.text_len, preset.dalle.text_vocab_size)
    torch.manual_seed(0)
    model = DalleTransformer(preset.dalle).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    vqvae = DiscreteVAE(preset.vqvae).eval()
    return Bundle(model=model, vqvae=vqvae, tokenizer=tokenizer, dalle_config=preset.dalle,
                  vqvae_config=preset.vqvae, meta={})


def test_generate_returns_images_and_codes(bundle):
    cfg, r = bundle.dalle_config, bundle.vqvae_config.resolution
    gens = generate(bundle, ["a red cube", "two green cats"], n=2, seed=3, top_k=10, guidance=2.0)
    assert [(g.prompt, g.index) for g in gens] == [("a red cube", 0), ("a red cube", 1),
                                                   ("two green cats", 0), ("two green cats", 1)]
    for g in gens:
        assert isinstance(g, Generation) and g.image.size == (r, r) and g.image.mode == "RGB"
        assert g.image_tokens.shape == (cfg.image_len,) and g.image_tokens.dtype == torch.long
        assert int(g.image_tokens.min()) >= 0 and int(g.image_tokens.max()) < cfg.image_vocab_size
        assert g.seed == image_seed(3, g.prompt, g.index)
        decoded = tensor_to_pil(bundle.vqvae.decode(g.image_tokens[None]))[0]
        assert decoded.tobytes() == g.image.tobytes()
    assert gens[0].score == pytest.approx(float(_mean_logprob(bundle, gens[0])), abs=1e-5)


def _mean_logprob(bundle, g):
    text = bundle.tokenizer.encode([g.prompt])
    with torch.no_grad():
        logp = torch.log_softmax(bundle.model(text, g.image_tokens[None]).image, -1)
    return logp.gather(-1, g.image_tokens[None, :, None]).mean()


def test_same_seed_same_image_whatever_n_and_batch_size(bundle):
    one = generate(bundle, ["a blue sphere"], n=1, seed=7, batch_size=1)
    many = generate(bundle, ["a small house", "a blue sphere"], n=3, seed=7, batch_size=2)
    same = next(g for g in many if g.prompt == "a blue sphere" and g.index == 0)
    assert torch.equal(one[0].image_tokens, same.image_tokens)
    others = [g.image_tokens for g in many if g.prompt == "a blue sphere"]
    assert not torch.equal(others[0], others[1])
    assert not torch.equal(generate(bundle, ["a blue sphere"], seed=8)[0].image_tokens, one[0].image_tokens)


def test_candidates_keep_the_best_n_by_score(bundle):
    everything = generate(bundle, ["a red cube"], n=5, seed=1)
    best = generate(bundle, ["a red cube"], n=2, seed=1, candidates=5)
    ranked = sorted(everything, key=lambda g: -g.score)[:2]
    assert [g.index for g in best] == [g.index for g in ranked]
    assert best[0].score >= best[1].score
    assert all(torch.equal(b.image_tokens, r.image_tokens) for b, r in zip(best, ranked))


def test_custom_scorers_plug_in(bundle):
    def brightest(c):
        assert c.images is not None and c.images.shape[0] == len(c.prompts)
        return c.images.mean(dim=(1, 2, 3))

    brightest.needs_images = True
    register_scorer("brightest", brightest)
    try:
        gens = generate(bundle, ["two green cats"], n=1, seed=2, candidates=4, scorer="brightest")
        all4 = generate(bundle, ["two green cats"], n=4, seed=2, scorer="brightest")
        assert gens[0].score == max(g.score for g in all4)
        by_code_sum = generate(bundle, ["two green cats"], n=1, seed=2, candidates=4,
                               scorer=lambda c: c.image_tokens.sum(-1).float())
        assert by_code_sum[0].image_tokens.sum() == max(g.image_tokens.sum() for g in all4)
    finally:
        SCORERS.pop("brightest")
    assert SCORERS["logprob"] is logprob_scorer
    with pytest.raises(ValueError, match="unknown scorer"):
        generate(bundle, ["x"], scorer="clip-that-does-not-exist")


def test_edit_keeps_the_kept_codes(bundle, tmp_path):
    cfg, r = bundle.dalle_config, bundle.vqvae_config.resolution
    g = torch.Generator().manual_seed(0)
    picture = Image.fromarray((torch.rand(3 * r, 2 * r, 3, generator=g) * 255).to(torch.uint8).numpy())
    path = tmp_path / "in.png"
    picture.save(path)
    codes = bundle.vqvae.encode(prepare_image(picture, r)).flatten()
    for kw, k in ((dict(keep_rows=2), 2 * cfg.image_grid), (dict(keep_fraction=0.3), round(0.3 * cfg.image_len))):
        gens = edit(bundle, path, "a red cube", n=3, seed=0, guidance=2.0, **kw)
        assert len(gens) == 3
        for gen in gens:
            assert torch.equal(gen.image_tokens[:k], codes[:k])
        assert len({tuple(gen.image_tokens[k:].tolist()) for gen in gens}) > 1
    assert prepare_image(picture, r).shape == (1, 3, r, r)


def test_bad_arguments_raise_clear_value_errors(bundle):
    picture = Image.new("RGB", (20, 20), (10, 200, 30))
    for kw, match in ((dict(n=0), "n must"), (dict(temperature=0), "temperature"), (dict(top_p=1.5), "top_p"),
                      (dict(top_p=0), "top_p"), (dict(top_k=0), "top_k"), (dict(guidance=-0.5), "guidance"),
                      (dict(n=3, candidates=2), "candidates"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=match):
            generate(bundle, ["a cat"], **kw)
    with pytest.raises(ValueError, match="prompts"):
        generate(bundle, [])
    grid = bundle.dalle_config.image_grid
    for kw in (dict(), dict(keep_rows=1, keep_fraction=0.5), dict(keep_rows=grid), dict(keep_rows=-1),
               dict(keep_fraction=1.0), dict(keep_fraction=0.99)):
        with pytest.raises(ValueError, match="keep"):
            edit(bundle, picture, "a cat", **kw)
    with pytest.raises(ValueError, match="not found"):
        edit(bundle, "/no/such/image.png", "a cat", keep_rows=1)


def test_a_saved_and_loaded_bundle_generates_the_same_images(bundle, tmp_path):
    from dalle.bundle import load_bundle, save_bundle

    save_bundle(tmp_path / "model", model=bundle.model, vqvae=bundle.vqvae,
                tokenizer_path=bundle.tokenizer.path, lowercase=True)
    loaded = load_bundle(tmp_path / "model")
    a = generate(bundle, ["a red cube"], n=2, seed=4, guidance=1.5)
    b = generate(loaded, ["a red cube"], n=2, seed=4, guidance=1.5)
    assert all(torch.equal(x.image_tokens, y.image_tokens) and x.image.tobytes() == y.image.tobytes()
               for x, y in zip(a, b))
