"""dalle eval with an image-caption scorer: reranked pass@1 by each scorer, the oracle pass@M and the
share of the gap closed (on hand-made scores), and the scorer's own figures end to end on a tiny bundle."""
import json

import pytest
import torch

from dalle.scorer import ImageTextScorer, attach_scorer
from dalle.tokenizer import TextTokenizer
from evaluation.run import gap_closed, run_eval, score_run
from evaluation.scorer_eval import synthetic_accuracy, to_markdown
from evaluation.suite import default_suite, render_description
from evaluation.validate import shuffle_pixels
from tests.evaluation.test_run import FakeGeneration, tiny_bundle  # noqa: F401  (fixture)
from train.config import load_preset


def test_each_reranker_closes_its_share_of_the_gap_to_the_oracle():
    """Half the samples pass; clip ranks them first, log-probability last."""
    suite = default_suite(prompts_per_part=1, seed=0)[:2]
    n, gens, clip = 4, [], []
    for p_i, sp in enumerate(suite):
        real = render_description(sp.description, 64)
        good = {i for i in range(n) if (i + p_i) % 2 == 0}
        for i in range(n):
            gens.append(FakeGeneration(sp.prompt, i, real if i in good else shuffle_pixels(real, i),
                                       score=-float(i in good)))
            clip.append(float(i in good))
    out = score_run(suite, gens, n, [1, 2], candidates=2, rankers={"clip": clip})
    r = out["summary"]["all"]["rerank"]
    assert r["m"] == 2 and r["pass@1"] == pytest.approx(0.5) and r["oracle_pass@m"] == pytest.approx(5 / 6)
    assert r["pass@1_by"]["clip"] == pytest.approx(5 / 6)          # the best of 2 is good unless both are bad
    assert r["pass@1_by"]["logprob"] == pytest.approx(1 / 6)       # good only if both drawn are good
    assert r["gap_closed"]["clip"] == pytest.approx(1.0) and r["gap_closed"]["logprob"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="clip scores"):
        score_run(suite, gens, n, [1], candidates=2, rankers={"clip": clip[:-1]})
    assert gap_closed(0.3, 0.3, 0.3) is None


def test_run_eval_reports_the_scorer(tiny_bundle, tmp_path):  # noqa: F811
    preset = load_preset("tiny")
    tok = TextTokenizer(tiny_bundle / "tokenizer.json", preset.dalle.text_len, preset.dalle.text_vocab_size)
    bundle = tmp_path / "with_scorer"
    import shutil
    shutil.copytree(tiny_bundle, bundle)
    torch.manual_seed(0)
    attach_scorer(bundle, ImageTextScorer(preset.scorer, tokenizer_sha256=tok.sha256))
    suite = [p for p in default_suite(prompts_per_part=1, seed=0)]
    result = run_eval(bundle, tmp_path / "eval", suite=suite, n=2, temperatures=(1.0,), ks=(1,), candidates=2,
                      guidance_values=(1.0,), batch_size=4, frechet=False, n_scorer_check=4)
    s = result["temperatures"]["1.0"]["summary"]["all"]["rerank"]
    assert set(s["pass@1_by"]) == {"logprob", "pmi", "clip"} and set(s["gap_closed"]) == {"logprob", "pmi", "clip"}
    results = json.loads((tmp_path / "eval" / "results.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    sc = results["scorer"]
    passed = {part: sum(p["c"] for p in results["temperatures"]["1.0"]["prompts"] if p["part"] == part)
              for part in ("in_distribution", "heldout_combos", "heldout_words")}
    for part, c in passed.items():       # a part none of whose samples passed has no mean, not NaN
        assert (sc["similarity"][part]["generated_passing"] is None) == (c == 0)
    assert set(sc["hard_negative_accuracy"]) == {"scenes_heldout", "signs_heldout", "scenes_train", "signs_train"}
    for part in ("in_distribution", "heldout_combos", "heldout_words", "all"):
        assert -100 <= sc["similarity"][part]["real"] <= 100 and -100 <= sc["similarity"][part]["generated"] <= 100
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "by clip" in md and "by pmi" in md and "CLIPScore-style" in md and "not OpenAI CLIP" in md


def test_synthetic_accuracy_of_a_scorer_that_prefers_true_captions():
    """A scorer that scores every caption it was told is true at 1 and everything else at 0 is right
    everywhere; the figures are the ones of that rule, not of the model."""
    preset = load_preset("tiny", ["dalle.text_len=32"])
    from tests.helpers import write_bpe
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        tok = TextTokenizer(write_bpe(Path(d) / "t.json", ["a red circle", "a sign that says HELLO"] * 4, 60),
                            preset.dalle.text_len, preset.dalle.text_vocab_size)

        class Oracle(ImageTextScorer):
            def encode_images(self, images):
                return torch.nn.functional.one_hot(torch.arange(images.size(0)) % 1, 2).float()

            def encode_text(self, text_tokens):
                self.calls = getattr(self, "calls", 0) + 1
                first = self.calls % 2 == 1        # accuracy_from_batches encodes true captions, then negatives
                return torch.nn.functional.one_hot(torch.full((text_tokens.size(0),), 0 if first else 1), 2).float()

        rep = synthetic_accuracy(Oracle(preset.scorer), tok, n=6, batch_size=3)
    for name, r in rep.items():
        assert r["n"] == 6 and r["accuracy"] == 1.0, name
    assert "scenes_heldout" in to_markdown({"sources": rep})


def test_image_negative_accuracy_counts_the_true_image_above_each_rendered_negative():
    """accuracy_from_batches encodes the true images first, then the image negatives: a scorer that puts
    the first above the second is right on every sample that has image negatives, the reverse on none."""
    preset = load_preset("tiny", ["dalle.text_len=32"])
    from tests.helpers import write_bpe
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        tok = TextTokenizer(write_bpe(Path(d) / "t.json", ["a red circle", "a sign that says HELLO"] * 4, 60),
                            preset.dalle.text_len, preset.dalle.text_vocab_size)

        class Ordered(ImageTextScorer):
            true_first = True

            def encode_images(self, images):
                self.calls = getattr(self, "calls", 0) + 1
                true = (self.calls % 2 == 1) == self.true_first
                return torch.nn.functional.one_hot(torch.full((images.size(0),), 0 if true else 1), 2).float()

            def encode_text(self, text_tokens):
                return torch.nn.functional.one_hot(torch.zeros(text_tokens.size(0), dtype=torch.long), 2).float()

        right = synthetic_accuracy(Ordered(preset.scorer), tok, n=6, batch_size=3)
        wrong_scorer = Ordered(preset.scorer)
        wrong_scorer.true_first = False
        wrong = synthetic_accuracy(wrong_scorer, tok, n=6, batch_size=3)
    for name in right:
        assert right[name]["n_with_image_negatives"] == 6 and right[name]["image_accuracy"] == 1.0, name
        assert wrong[name]["image_accuracy"] == 0.0, name
    assert set(right["signs_train"]["image_per_kind"]) == {"letter"}
    from synth.negatives import IMAGE_SCENE_KINDS
    assert set(right["scenes_train"]["image_per_kind"]) <= set(IMAGE_SCENE_KINDS)
    assert "image negatives" in to_markdown({"sources": right})


def test_markdown_table_has_one_cell_per_column_with_or_without_caption_negatives():
    """A source of stored generated samples has image negatives only: no empty column for the missing kinds."""
    generated = {"n": 4, "accuracy": None, "per_kind": {}, "batch_top1": 0.5, "batch_size": 4,
                 "image_accuracy": 0.75, "image_per_kind": {"generated": 0.75}}
    rendered = {**generated, "accuracy": 0.9, "per_kind": {"colour": 0.9}, "image_per_kind": {"colour": 1.0}}
    for sources, columns in (({"val": generated}, 6), ({"val": generated, "scenes": rendered}, 8)):
        lines = to_markdown({"sources": sources}).splitlines()
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        assert {len(c) for c in cells} == {columns} and "" not in cells[0]
    assert cells[2][:3] == ["val", "4", "-"] and "image generated" in cells[0]
