"""dalle eval: scoring on known images, and the whole benchmark end to end on a tiny bundle."""
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from evaluation.passk import pass_at_k
from evaluation.run import run_eval, score_run
from evaluation.suite import (
    PARTS,
    default_suite,
    load_suite,
    render_description,
    save_suite,
)
from evaluation.validate import shuffle_pixels


@dataclass
class FakeGeneration:
    prompt: str
    index: int
    image: Image.Image
    score: float


def test_score_run_counts_passing_samples():
    """Real renders pass, shuffled ones fail: c, pass@k and reranking follow from which is which."""
    suite = default_suite(prompts_per_part=1, seed=0)[:2]
    n, gens, truth = 4, [], {}
    for p_i, sp in enumerate(suite):
        real = render_description(sp.description, 64)
        good = [i for i in range(n) if (i + p_i) % 2 == 0]
        truth[sp.prompt] = len(good)
        for i in range(n):
            img = real if i in good else shuffle_pixels(real, i)
            gens.append(FakeGeneration(sp.prompt, i, img, score=float(i in good)))   # good ones rank first
    out = score_run(suite, gens, n, [1, 2], candidates=2)
    for row in out["prompts"]:
        assert row["c"] == truth[row["prompt"]]
        assert row["pass@k"]["2"] == pytest.approx(pass_at_k(n, row["c"], 2))
        assert row["rerank2_pass@1"] == pytest.approx(1 - 1 / 6)   # fails only if both drawn are shuffled
    assert out["summary"]["all"]["pass@k"]["1"] == pytest.approx(0.5)


def test_default_suite_parts_and_round_trip(tmp_path):
    suite = default_suite(prompts_per_part=3, seed=1)
    assert [sum(p.part == part for p in suite) for part in PARTS] == [3, 3, 3]
    words = [p.description["word"] for p in suite if p.part == "heldout_words"]
    assert words[0] == "OpenAI" and "openai" in suite[6].prompt.lower()
    assert all(p.description.get("split") == "heldout" for p in suite if p.part != "in_distribution")
    assert [(p.part, p.prompt) for p in load_suite(save_suite(suite, tmp_path / "s.json"))] == \
        [(p.part, p.prompt) for p in suite]
    with pytest.raises(ValueError):
        (tmp_path / "bad.json").write_text("[]")
        load_suite(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from dalle.bundle import save_bundle
    from dalle.model import DalleTransformer
    from dalle.tokenizer import EOT
    from train.config import load_preset
    from vqvae.model import DiscreteVAE

    preset = load_preset("tiny")
    root = tmp_path_factory.mktemp("bundle")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([p.prompt for p in default_suite(4)] * 3,
                            trainers.BpeTrainer(vocab_size=100, special_tokens=[EOT]))
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    return save_bundle(root / "tiny", model=DalleTransformer(preset.dalle).eval(),
                       vqvae=DiscreteVAE(preset.vqvae).eval(), tokenizer_path=root / "tokenizer.json")


def test_run_eval_end_to_end_on_tiny(tiny_bundle, tmp_path):
    suite = [p for p in default_suite(prompts_per_part=1, seed=0) if p.part != "heldout_combos"]
    result = run_eval(tiny_bundle, tmp_path / "eval", suite=suite, n=2, temperatures=(0.8, 1.0), ks=(1, 10),
                      candidates=2, guidance_values=(1.0, 2.0), batch_size=4, frechet=False)
    assert result["ks"] == [1]                        # n=2 allows only k=1 (n >= 2k)
    on_disk = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert on_disk["best_temperature"] == result["best_temperature"]
    for t in ("0.8", "1.0"):
        rows = result["temperatures"][t]["prompts"]
        assert [r["prompt"] for r in rows] == [p.prompt for p in suite]
        for r in rows:   # 16-px images from a random model: the checker refuses them, with a reason
            assert r["n"] == 2 and r["c"] == 0 and r["pass@k"]["1"] == 0.0 and "too small" in r["reasons"][0]
    assert set(result["guidance"]) == {"1.0", "2.0"}
    v = result["vqvae"]
    assert v["images"] == 64 and 0 < v["codebook_usage"] <= 1 and np.isfinite(v["psnr_db"])
    assert result["frechet"]["value"] is None and result["frechet"]["note"] == "disabled"
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "pass@1" in md and "heldout_words" in md
    for name in ("passk.png", "samples.png"):
        assert Image.open(tmp_path / "eval" / name).size[0] > 0


def test_run_eval_rejects_bad_arguments(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="n >= 2k"):
        run_eval(tiny_bundle, tmp_path, n=3, ks=(10,))
    with pytest.raises(ValueError, match="temperatures"):
        run_eval(tiny_bundle, tmp_path, n=4, temperatures=(0.0,))
