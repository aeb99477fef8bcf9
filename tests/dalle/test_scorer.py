"""The image-caption scorer (dalle.scorer): deterministic scores, files, the identity check against a
model's tokenizer, and reranking with it (checked on hand-made scores)."""
import json

import pytest
import torch

from dalle import Dalle
from dalle.scorer import (
    ImageTextScorer,
    ScorerError,
    attach_scorer,
    check_scorer,
    load_bundle_scorer,
)
from dalle.tokenizer import TextTokenizer
from tests.bundles import random_transformer
from tests.helpers import write_bpe
from train.config import load_preset
from vqvae.model import DiscreteVAE

CORPUS = ["a red circle", "two blue squares", "a sign that says HELLO", "a green triangle left of a red circle"] * 4


def _tokenizer(path, corpus, preset):
    return TextTokenizer(write_bpe(path, corpus, 60), preset.dalle.text_len, preset.dalle.text_vocab_size)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    preset = load_preset("tiny")
    d = tmp_path_factory.mktemp("scorer")
    tokenizer = _tokenizer(d / "tokenizer.json", CORPUS, preset)
    other = _tokenizer(d / "other.json", CORPUS + ["an entirely different corpus of words"] * 3, preset)
    torch.manual_seed(0)
    model = random_transformer(preset.dalle)
    dalle = Dalle(model, DiscreteVAE(preset.vqvae).eval(), tokenizer)
    scorer = ImageTextScorer(preset.scorer, tokenizer_sha256=tokenizer.sha256).eval()
    return preset, dalle, scorer, tokenizer, other


def test_scores_are_deterministic_and_do_not_depend_on_the_batch(parts):
    preset, _, scorer, tokenizer, _ = parts
    r = preset.scorer.resolution
    images = torch.rand(4, 3, r, r, generator=torch.Generator().manual_seed(0))
    text = tokenizer.encode(["a red circle", "two blue squares", "a sign that says HELLO",
                             "a green triangle left of a red circle"])
    with torch.no_grad():
        a, b = scorer.score(images, text), scorer.score(images, text)
        alone = torch.cat([scorer.score(images[i:i + 1], text[i:i + 1]) for i in range(4)])
        logits = scorer(images, text)
    assert torch.equal(a, b)
    torch.testing.assert_close(alone, a, atol=1e-5, rtol=0)        # pads cut per batch change nothing
    assert a.shape == (4,) and bool((a.abs() <= 1 + 1e-6).all())
    torch.testing.assert_close(torch.diagonal(logits), scorer.temperature_scale() * a, atol=1e-5, rtol=0)
    assert len(set(a.tolist())) == 4                               # not a constant


def test_save_and_load_give_the_same_scores_and_bad_files_one_line(parts, tmp_path):
    preset, _, scorer, tokenizer, _ = parts
    r = preset.scorer.resolution
    images, text = torch.rand(2, 3, r, r), tokenizer.encode(["a red circle", "two blue squares"])
    scorer.save(tmp_path / "s")
    loaded = ImageTextScorer.from_checkpoint(tmp_path / "s")
    assert loaded.tokenizer_sha256 == tokenizer.sha256 and loaded.config == scorer.config
    with torch.no_grad():
        assert torch.equal(loaded.score(images, text), scorer.score(images, text))
    (tmp_path / "s" / "scorer.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ScorerError, match="corrupt"):
        ImageTextScorer.from_checkpoint(tmp_path / "s")
    with pytest.raises(ScorerError, match="is not a scorer"):
        ImageTextScorer.from_checkpoint(tmp_path / "missing")


def test_a_scorer_of_another_tokenizer_is_refused(parts, tmp_path):
    preset, dalle, scorer, tokenizer, other = parts
    foreign = ImageTextScorer(preset.scorer, tokenizer_sha256=other.sha256)
    assert other.sha256 != tokenizer.sha256
    with pytest.raises(ScorerError, match="tokenizer sha256"):
        dalle.set_scorer(foreign)
    with pytest.raises(ScorerError, match="tokenizer sha256"):
        check_scorer(foreign, tokenizer_sha256=tokenizer.sha256, text_len=tokenizer.text_len,
                     text_vocab_size=tokenizer.vocab_size, resolution=dalle.resolution)
    bundle = dalle.save(tmp_path / "bundle")
    with pytest.raises(ScorerError, match="does not belong"):
        attach_scorer(bundle, foreign)
    assert "scorer" not in json.loads((bundle / "bundle.json").read_text())
    with pytest.raises(ValueError, match="needs a model that has one"):
        dalle.generate(["a red circle"], n=1, scorer="clip")


def test_the_bundle_records_its_scorer_and_refuses_a_replaced_one(parts, tmp_path):
    preset, dalle, scorer, tokenizer, other = parts
    bundle = dalle.save(tmp_path / "bundle")
    attach_scorer(bundle, scorer)
    record = json.loads((bundle / "bundle.json").read_text())["scorer"]
    assert record["dir"] == "scorer" and record["tokenizer_sha256"] == tokenizer.sha256
    loaded = Dalle.from_pretrained(bundle, device="cpu")
    assert loaded.scorer is not None and loaded.scorer.tokenizer_sha256 == tokenizer.sha256
    again = Dalle.from_pretrained(loaded.save(tmp_path / "copy"), device="cpu")     # saving keeps the scorer
    assert again.scorer is not None
    # a scorer dropped in by hand, even one of the right architecture, is not the recorded one
    ImageTextScorer(preset.scorer, tokenizer_sha256=other.sha256).save(bundle / "scorer")
    with pytest.raises(ScorerError, match="replaced"):
        Dalle.from_pretrained(bundle, device="cpu")
    with pytest.raises(ScorerError, match="replaced"):
        load_bundle_scorer(bundle, tokenizer_sha256=tokenizer.sha256, text_len=tokenizer.text_len,
                           text_vocab_size=tokenizer.vocab_size, resolution=dalle.resolution)


class HandMadeScorer(ImageTextScorer):
    """Scores candidates in the order the pipeline hands them over: prompt-major, index-minor."""

    def __init__(self, config, sha, values):
        super().__init__(config, tokenizer_sha256=sha)
        self.values, self.seen = torch.tensor(values), 0

    def score(self, images, text_tokens):
        out = self.values[self.seen:self.seen + images.size(0)]
        self.seen += images.size(0)
        return out


def test_reranking_with_the_scorer_keeps_the_best_scored_candidates(parts):
    preset, dalle, _, tokenizer, _ = parts
    values = [0.1, 0.9, -0.3, 0.5, 0.7, 0.2,      # prompt 0, candidates 0..5
              0.0, -0.1, 0.4, 0.3, 0.8, 0.6]      # prompt 1
    prompts = ["a red circle", "two blue squares"]
    everything = dalle.generate(prompts, n=6, seed=5, batch_size=4)          # all candidates, by index
    model = Dalle(dalle.model, dalle.image_tokenizer, dalle.tokenizer)
    model.set_scorer(HandMadeScorer(preset.scorer, tokenizer.sha256, values))
    kept = model.generate(prompts, n=2, seed=5, candidates=6, scorer="clip", batch_size=4)
    assert [(g.prompt, g.index) for g in kept] == [(prompts[0], 1), (prompts[0], 4), (prompts[1], 4), (prompts[1], 5)]
    assert [g.score for g in kept] == pytest.approx([0.9, 0.7, 0.8, 0.6])
    by_key = {(g.prompt, g.index): g for g in everything}
    for g in kept:      # the kept images are those candidates, unchanged
        assert g.image.tobytes() == by_key[(g.prompt, g.index)].image.tobytes()
        assert torch.equal(g.image_tokens, by_key[(g.prompt, g.index)].image_tokens)
