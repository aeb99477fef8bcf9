"""The public API ``dalle.Dalle``: generate / edit / save with a real tokenizer, transformer and dVAE (tiny, random weights)."""
import pytest
import torch
from PIL import Image

from dalle import Dalle, Generation, SamplingOptions
from dalle.bundle import BundleError
from dalle.pipeline import prepare_image, tensor_to_pil
from dalle.rerank import SCORERS, logprob_scorer, register_scorer
from dalle.sampler import image_seed
from dalle.tokenizer import TextTokenizer
from tests.bundles import CORPUS, random_transformer
from tests.helpers import write_bpe
from train.config import load_preset
from vqvae.model import DiscreteVAE


@pytest.fixture(scope="module")
def dalle(tmp_path_factory):
    preset = load_preset("tiny")
    path = write_bpe(tmp_path_factory.mktemp("tok") / "tokenizer.json", CORPUS)
    tokenizer = TextTokenizer(path, preset.dalle.text_len, preset.dalle.text_vocab_size)
    torch.manual_seed(0)
    model = random_transformer(preset.dalle)
    vqvae = DiscreteVAE(preset.vqvae).eval()
    return Dalle(model, vqvae, tokenizer)


def test_generate_returns_images_and_codes(dalle):
    cfg, r = dalle.config, dalle.resolution
    gens = dalle.generate(["a red cube", "two green cats"], n=2, seed=3, top_k=10, guidance=2.0)
    assert [(g.prompt, g.index) for g in gens] == [("a red cube", 0), ("a red cube", 1),
                                                   ("two green cats", 0), ("two green cats", 1)]
    for g in gens:
        assert isinstance(g, Generation) and g.image.size == (r, r) and g.image.mode == "RGB"
        assert g.image_tokens.shape == (cfg.image_len,) and g.image_tokens.dtype == torch.long
        assert int(g.image_tokens.min()) >= 0 and int(g.image_tokens.max()) < cfg.image_vocab_size
        assert g.seed == image_seed(3, g.prompt, g.index)
        decoded = tensor_to_pil(dalle.image_tokenizer.decode(g.image_tokens[None]))[0]
        assert decoded.tobytes() == g.image.tobytes()
    assert gens[0].score == pytest.approx(float(_mean_logprob(dalle, gens[0])), abs=1e-5)


def _mean_logprob(dalle, g):
    text = dalle.tokenizer.encode([g.prompt])
    with torch.no_grad():
        logp = torch.log_softmax(dalle.model(text, g.image_tokens[None, :-1]).image, -1)
    return logp.gather(-1, g.image_tokens[None, :, None]).mean()


def test_same_seed_same_image_whatever_n_and_batch_size(dalle):
    one = dalle.generate(["a blue sphere"], n=1, seed=7, batch_size=1)
    many = dalle.generate(["a small house", "a blue sphere"], n=3, seed=7, batch_size=2)
    same = next(g for g in many if g.prompt == "a blue sphere" and g.index == 0)
    assert torch.equal(one[0].image_tokens, same.image_tokens)
    others = [g.image_tokens for g in many if g.prompt == "a blue sphere"]
    assert not torch.equal(others[0], others[1])
    assert not torch.equal(dalle.generate(["a blue sphere"], seed=8)[0].image_tokens, one[0].image_tokens)


def test_candidates_keep_the_best_n_by_score(dalle):
    everything = dalle.generate(["a red cube"], n=5, seed=1)
    best = dalle.generate(["a red cube"], n=2, seed=1, candidates=5)
    ranked = sorted(everything, key=lambda g: -g.score)[:2]
    assert [g.index for g in best] == [g.index for g in ranked]
    assert best[0].score >= best[1].score
    assert all(torch.equal(b.image_tokens, r.image_tokens) for b, r in zip(best, ranked))


def test_custom_scorers_plug_in(dalle):
    def brightest(c):
        assert c.images is not None and c.images.shape[0] == len(c.prompts)
        return c.images.mean(dim=(1, 2, 3))

    brightest.needs_images = True
    register_scorer("brightest", brightest)
    try:
        gens = dalle.generate(["two green cats"], n=1, seed=2, candidates=4, scorer="brightest")
        all4 = dalle.generate(["two green cats"], n=4, seed=2, scorer="brightest")
        assert gens[0].score == max(g.score for g in all4)
        by_code_sum = dalle.generate(["two green cats"], n=1, seed=2, candidates=4,
                               scorer=lambda c: c.image_tokens.sum(-1).float())
        assert by_code_sum[0].image_tokens.sum() == max(g.image_tokens.sum() for g in all4)
    finally:
        SCORERS.pop("brightest")
    assert SCORERS["logprob"] is logprob_scorer
    with pytest.raises(ValueError, match="unknown scorer"):
        dalle.generate(["x"], scorer="clip-that-does-not-exist")


def test_the_auto_scorer_is_the_models_scorer_when_it_has_one(dalle):
    from dalle.rerank import get_scorer
    assert dalle.scorer is None and dalle.resolve_scorer("auto") == "logprob"
    assert dalle.resolve_scorer("clip") == "clip" and get_scorer("auto") is logprob_scorer
    own = object()
    assert get_scorer("auto", bound={"clip": own}) is own
    auto = dalle.generate(["a red cube"], n=2, seed=3, candidates=3)                 # the default: "auto"
    by_logprob = dalle.generate(["a red cube"], n=2, seed=3, candidates=3, scorer="logprob")
    assert [g.index for g in auto] == [g.index for g in by_logprob]


def _pmi(dalle, prompt, codes):
    """log p(codes | caption) - log p(codes | null caption), per code, averaged: one row at a time."""
    out = []
    for text in (dalle.tokenizer.encode([prompt]), dalle.tokenizer.null_tokens(1)):
        with torch.no_grad():
            logp = torch.log_softmax(dalle.model(text, codes[None, :-1]).image.float(), -1)
        out.append(logp.gather(-1, codes[None, :, None]).squeeze(-1))
    return float((out[0] - out[1]).mean())


def test_the_pmi_ranking_is_the_caption_s_log_likelihood_ratio(dalle):
    """scorer="pmi": every model has it; each kept image's score is log p(codes | caption) minus log p(codes |
    null caption), per code (computed here one row at a time against the scorer's batches of mixed prompts),
    and the best by it are kept."""
    prompts = ["a red cube", "two green cats"]
    everything = dalle.generate(prompts, n=5, seed=4, guidance=2.0)
    best = dalle.generate(prompts, n=2, seed=4, guidance=2.0, candidates=5, scorer="pmi", batch_size=3)
    pmi = {(g.prompt, g.index): _pmi(dalle, g.prompt, g.image_tokens) for g in everything}
    assert len(set(round(v, 6) for v in pmi.values())) == len(pmi)       # no ties: the order is the score's
    for prompt in prompts:
        kept = [g for g in best if g.prompt == prompt]
        ranked = sorted((g for g in everything if g.prompt == prompt), key=lambda g: -pmi[(g.prompt, g.index)])
        assert [g.index for g in kept] == [g.index for g in ranked[:2]]
        for g in kept:
            assert g.score == pytest.approx(pmi[(g.prompt, g.index)], abs=1e-5)
    assert "pmi" in dalle.scorers() and dalle.resolve_scorer("auto") == "logprob"   # not the default


def test_the_pmi_of_a_model_that_ignores_its_caption_is_zero(dalle):
    """A transformer whose caption embeddings are all the same vector (the null caption's pads included)
    sees no difference between a caption and none: the mutual information is exactly zero."""
    import copy
    from dalle.rerank import Candidates, PmiRerank

    blind = copy.deepcopy(dalle.model)
    with torch.no_grad():
        blind.text_emb.weight[:] = blind.text_emb.weight[0]
    codes = torch.randint(0, dalle.config.image_vocab_size, (3, dalle.config.image_len),
                          generator=torch.Generator().manual_seed(0))
    cands = Candidates(prompts=["a red cube"] * 3, text_tokens=dalle.tokenizer.encode(["a red cube"] * 3),
                       image_tokens=codes, logprobs=torch.zeros(3, dalle.config.image_len))
    assert torch.allclose(PmiRerank(blind, dalle.tokenizer.null_tokens)(cands), torch.zeros(3), atol=1e-6)
    assert PmiRerank(dalle.model, dalle.tokenizer.null_tokens)(cands).abs().min() > 1e-4


def test_edit_keeps_the_kept_codes(dalle, tmp_path):
    cfg, r = dalle.config, dalle.resolution
    g = torch.Generator().manual_seed(0)
    picture = Image.fromarray((torch.rand(3 * r, 2 * r, 3, generator=g) * 255).to(torch.uint8).numpy())
    path = tmp_path / "in.png"
    picture.save(path)
    codes = dalle.image_tokenizer.encode(prepare_image(picture, r)).flatten()
    for kw, k in ((dict(keep_rows=2), 2 * cfg.image_grid), (dict(keep_fraction=0.3), round(0.3 * cfg.image_len))):
        gens = dalle.edit(path, "a red cube", n=3, seed=0, guidance=2.0, **kw)
        assert len(gens) == 3
        for gen in gens:
            assert torch.equal(gen.image_tokens[:k], codes[:k])
        assert len({tuple(gen.image_tokens[k:].tolist()) for gen in gens}) > 1
    assert prepare_image(picture, r).shape == (1, 3, r, r)


def test_bad_arguments_raise_clear_value_errors(dalle):
    picture = Image.new("RGB", (20, 20), (10, 200, 30))
    for kw, match in ((dict(n=0), "n must"), (dict(temperature=0), "temperature"), (dict(top_p=1.5), "top_p"),
                      (dict(top_p=0), "top_p"), (dict(top_k=0), "top_k"), (dict(guidance=-0.5), "guidance"),
                      (dict(n=3, candidates=2), "candidates"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=match):
            dalle.generate(["a cat"], **kw)
    with pytest.raises(ValueError, match="prompts"):
        dalle.generate([])
    grid = dalle.config.image_grid
    for kw in (dict(), dict(keep_rows=1, keep_fraction=0.5), dict(keep_rows=grid), dict(keep_rows=-1),
               dict(keep_fraction=1.0), dict(keep_fraction=0.99)):
        with pytest.raises(ValueError, match="keep"):
            dalle.edit(picture, "a cat", **kw)
    with pytest.raises(ValueError, match="not found"):
        dalle.edit("/no/such/image.png", "a cat", keep_rows=1)


def test_a_saved_and_loaded_model_generates_the_same_images(dalle, tmp_path):
    dalle.save(tmp_path / "model")
    loaded = Dalle.from_pretrained(tmp_path / "model", device="cpu")
    assert loaded.config == dalle.config and loaded.image_tokenizer.config == dalle.image_tokenizer.config
    a = dalle.generate(["a red cube"], n=2, seed=4, guidance=1.5)
    b = loaded.generate(["a red cube"], n=2, seed=4, guidance=1.5)
    assert all(torch.equal(x.image_tokens, y.image_tokens) and x.image.tobytes() == y.image.tobytes()
               for x, y in zip(a, b))


def test_a_float16_bundle_is_half_the_weights_and_loads_as_float32(dalle, tmp_path):
    dalle.save(tmp_path / "f32")
    dalle.save(tmp_path / "f16", weights_dtype="float16")
    sizes = [(tmp_path / d / "dalle.safetensors").stat().st_size for d in ("f32", "f16")]
    assert sizes[1] < 0.55 * sizes[0]
    loaded = Dalle.from_pretrained(tmp_path / "f16", device="cpu")      # its checksums hold
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    again = Dalle.from_pretrained(tmp_path / "f16", device="cpu")
    a, b = (m.generate(["a red cube"], n=2, seed=4) for m in (loaded, again))
    assert all(torch.equal(x.image_tokens, y.image_tokens) for x, y in zip(a, b))


def test_a_bundle_recommends_its_sampling_settings(dalle, tmp_path):
    model = Dalle(dalle.model, dalle.image_tokenizer, dalle.tokenizer)
    assert model.sampling == SamplingOptions()
    model.set_sampling_defaults(top_k=3, temperature=0.9)
    by_default = model.generate(["a red cube"], n=2, seed=1)
    explicit = dalle.generate(["a red cube"], n=2, seed=1, top_k=3, temperature=0.9)
    plain = dalle.generate(["a red cube"], n=2, seed=1)
    assert all(torch.equal(a.image_tokens, b.image_tokens) for a, b in zip(by_default, explicit))
    assert not all(torch.equal(a.image_tokens, b.image_tokens) for a, b in zip(by_default, plain))
    overridden = model.generate(["a red cube"], n=2, seed=1, top_k=None, temperature=1.0)   # the caller wins
    assert all(torch.equal(a.image_tokens, b.image_tokens) for a, b in zip(overridden, plain))
    model.save(tmp_path / "m")
    loaded = Dalle.from_pretrained(tmp_path / "m", device="cpu")
    assert (loaded.sampling.top_k, loaded.sampling.temperature) == (3, 0.9)
    model.set_sampling_defaults(top_k=None)
    assert model.sampling.top_k is None and model.meta["sampling"] == {"temperature": 0.9}
    with pytest.raises(ValueError, match="unknown recommended sampling setting"):
        model.set_sampling_defaults(candidates=4)
    with pytest.raises(BundleError, match="meta.sampling: top_k must be"):
        Dalle(dalle.model, dalle.image_tokenizer, dalle.tokenizer, meta={"sampling": {"top_k": 0}})


def test_one_options_object_is_the_same_as_keywords(dalle):
    opts = SamplingOptions(temperature=0.8, top_k=7, guidance=2.0, batch_size=3)
    a = dalle.generate(["a red cube"], n=2, seed=5, options=opts)
    b = dalle.generate(["a red cube"], n=2, seed=5, temperature=0.8, top_k=7, guidance=2.0, batch_size=3)
    c = dalle.generate(["a red cube"], n=2, seed=5, options=opts, use_cache=False)   # keywords override
    assert all(torch.equal(x.image_tokens, y.image_tokens) for x, y in zip(a, b))
    assert all(torch.equal(x.image_tokens, y.image_tokens) for x, y in zip(a, c))
    assert not any(torch.equal(x.image_tokens, y.image_tokens)
                   for x, y in zip(a, dalle.generate(["a red cube"], n=2, seed=5, options=opts, top_k=1)))


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=2.5), "top_k"), (dict(guidance=float("inf")), "guidance"), (dict(candidates=0), "candidates"),
    (dict(dtype="int8"), "dtype"), (dict(compile="fast"), "compile"), (dict(use_cache="yes"), "use_cache"),
    (dict(scorer="no-such-scorer"), "unknown scorer"), (dict(device="cpu"), "unknown sampling option"),
])
def test_sampling_options_are_validated_once_with_one_line(dalle, kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingOptions.of(**kw)
    with pytest.raises(ValueError, match=match):
        dalle.generate(["a cat"], n=1, **kw)


def test_generate_leaves_the_callers_model_where_and_as_it_was(dalle):
    dalle.model.train()
    before = {k: v.clone() for k, v in dalle.model.state_dict().items()}
    dalle.generate(["a cat"], n=1, seed=0, dtype="bfloat16")
    assert dalle.model.training and dalle.device == torch.device("cpu")
    assert all(torch.equal(v, dalle.model.state_dict()[k]) for k, v in before.items())
    dalle.model.eval()


def test_a_bundle_with_bad_parts_is_a_one_line_bundle_error(dalle, tmp_path):
    import json

    good = dalle.save(tmp_path / "good")

    def broken(name, change):
        import shutil
        d = tmp_path / name
        shutil.copytree(good, d)
        change(d)
        with pytest.raises(BundleError) as err:
            Dalle.from_pretrained(d, device="cpu")
        assert "\n" not in str(err.value)
        return str(err.value)

    def edit_json(file, edit):
        def change(d):
            data = json.loads((d / file).read_text())
            edit(data)
            (d / file).write_text(json.dumps(data))
        return change

    assert "missing ['n_head']" in broken("no-n-head", edit_json("dalle.json", lambda d: d.pop("n_head")))
    assert "dalle.n_head must be int" in broken("str-n-head", edit_json("dalle.json", lambda d: d.update(n_head="4")))
    assert "dalle.attn_layouts" in broken("layouts", edit_json("dalle.json", lambda d: d.update(attn_layouts="dense")))
    assert "missing ['vocab_size']" in broken("no-vocab", edit_json("vqvae.json", lambda d: d.pop("vocab_size")))
    assert "version" in broken("str-version", edit_json("bundle.json", lambda d: d.update(version="1")))
    assert "version" in broken("list-version", edit_json("bundle.json", lambda d: d.update(version=[1])))
    assert "JSON object" in broken("list-config", lambda d: (d / "dalle.json").write_text("[1, 2]"))

    def truncate(d):
        data = (d / "dalle.safetensors").read_bytes()
        (d / "dalle.safetensors").write_bytes(data[: len(data) // 2])

    def scramble_header(d):
        data = bytearray((d / "vqvae.safetensors").read_bytes())
        data[8:40] = b"\xff" * 32
        (d / "vqvae.safetensors").write_bytes(bytes(data))

    assert "cannot load" in broken("truncated", truncate)
    assert "cannot load" in broken("scrambled", scramble_header)
    assert "cannot load" in broken("empty", lambda d: (d / "dalle.safetensors").write_bytes(b""))


def test_the_image_tokenizer_is_loaded_by_the_kind_in_its_config(dalle, tmp_path):
    import json

    from vqvae.registry import IMAGE_TOKENIZERS, load_image_tokenizer

    d = dalle.image_tokenizer.save(tmp_path / "vq")
    assert type(load_image_tokenizer(d)) is type(dalle.image_tokenizer)           # no "kind": the dVAE

    class Renamed(type(dalle.image_tokenizer)):
        @classmethod
        def from_checkpoint(cls, directory, device="cpu"):
            return cls(dalle.image_tokenizer.config)

    cfg = json.loads((d / "vqvae.json").read_text())
    (d / "vqvae.json").write_text(json.dumps({**cfg, "kind": "renamed"}))
    with pytest.raises(ValueError, match="unknown image tokenizer kind 'renamed'"):
        load_image_tokenizer(d)
    IMAGE_TOKENIZERS["renamed"] = (Renamed, IMAGE_TOKENIZERS["dvae"][1])
    try:
        assert type(load_image_tokenizer(d)) is Renamed
    finally:
        IMAGE_TOKENIZERS.pop("renamed")


def test_edit_inputs_go_through_the_training_decoder(tmp_path):
    """A path, bytes or PIL image given to edit is decoded exactly as training decodes images."""
    import numpy as np
    from PIL import Image

    from dalle.pipeline import prepare_image
    from train.config import DataConfig
    from tests.helpers import decode_image

    arr = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)          # 16-bit grey, up to 59,950
    path = tmp_path / "grey16.png"
    Image.fromarray(arr).save(path)                                           # mode I;16
    want = decode_image(path.read_bytes(), DataConfig(resolution=16, min_size=1), resolution=16)
    assert 0.5 < float(want.max()) < 1.0 and float(want.min()) < 0.1         # scaled, not clipped to white
    assert torch.equal(prepare_image(path, 16)[0], want)
    assert torch.equal(prepare_image(path.read_bytes(), 16)[0], want)
    assert torch.equal(prepare_image(Image.open(path), 16)[0], want)
    big = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(big)
    with pytest.raises(ValueError, match="decompression-bomb"):
        prepare_image(big, 16)
