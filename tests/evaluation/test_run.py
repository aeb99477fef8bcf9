"""dalle eval: scoring on known images, and the whole benchmark end to end on a tiny bundle."""
import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dalle.options import SamplingOptions
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
    image_tokens: torch.Tensor | None = None


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


def test_word_match_follows_what_the_sign_shows():
    """Sign prompts get the checker's mean word match: real renders ~1, the same renders of another word low;
    scene prompts none, and the part means are over sign prompts only."""
    suite = [p for p in default_suite(prompts_per_part=2, seed=0) if p.part == "in_distribution"]
    sign, scene = (next(p for p in suite if p.description["kind"] == k) for k in ("sign", "scene"))
    other = next(p for p in default_suite(prompts_per_part=2, seed=0)
                 if p.description["kind"] == "sign" and p.description["word"] != sign.description["word"])
    n = 2
    gens = [FakeGeneration(sign.prompt, i, render_description(sign.description, 64), 0.0) for i in range(n)]
    gens += [FakeGeneration(scene.prompt, i, render_description(scene.description, 64), 0.0) for i in range(n)]
    wrong = [FakeGeneration(sign.prompt, i, render_description(other.description, 64), 0.0) for i in range(n)]
    out = score_run([sign, scene], gens, n, [1], candidates=2)
    rows = {r["prompt"]: r for r in out["prompts"]}
    assert rows[sign.prompt]["word_match"] > 0.9 and rows[scene.prompt]["word_match"] is None
    assert out["summary"]["in_distribution"]["word_match"] == rows[sign.prompt]["word_match"]
    assert score_run([sign], wrong, n, [1], candidates=2)["prompts"][0]["word_match"] < 0.6


def test_the_default_suite_can_keep_one_kind():
    both = default_suite(prompts_per_part=4, seed=0)
    assert both == default_suite(prompts_per_part=4, seed=0, kinds=("sign", "scene"))   # unchanged
    signs = default_suite(prompts_per_part=4, seed=0, kinds=("sign",))
    assert [p.part for p in signs] == ["in_distribution"] * 4 + ["heldout_words"] * 4
    assert all(p.description["kind"] == "sign" for p in signs)
    scenes = default_suite(prompts_per_part=4, seed=0, kinds=("scene",))
    assert [p.part for p in scenes] == ["in_distribution"] * 4 + ["heldout_combos"] * 4
    assert all(p.description["kind"] == "scene" for p in scenes)
    with pytest.raises(ValueError, match="kinds"):
        default_suite(kinds=("emoji",))


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
    from tests.helpers import write_bpe
    from train.config import load_preset
    from vqvae.model import DiscreteVAE

    preset = load_preset("tiny")
    root = tmp_path_factory.mktemp("bundle")
    write_bpe(root / "tokenizer.json", [p.prompt for p in default_suite(4)] * 3)
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
    assert set(result["vqvae"]) == {"in_distribution", "heldout_words"}     # the parts this suite has
    for v in result["vqvae"].values():
        assert v["images"] == 64 and 0 < v["codebook_usage"] <= 1 and np.isfinite(v["psnr_db"])
        assert v["checker_ceiling"] == 0.0        # 16 px reconstructions are below the checker's minimum
    assert result["frechet"]["value"] is None and result["frechet"]["note"] == "disabled"
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "pass@1" in md and "heldout_words" in md
    for name in ("passk.png", "samples.png"):
        assert Image.open(tmp_path / "eval" / name).size[0] > 0


class RenderModel:
    """A stand-in for ``Dalle`` at 64 px whose samples are known: for the prompt at ``position`` in the
    suite, sample ``i`` is the prompt's real render when ``i < good(position, temperature, guidance)``
    and its pixels shuffled otherwise; the image tokenizer is a real PatchVQ fitted on real renders."""

    resolution, scorer, device, path = 64, None, torch.device("cpu"), "render-model"
    sampling = SamplingOptions()                   # no recommended settings

    def __init__(self, suite, good):
        from vqvae.patch_vq import PatchVQ, PatchVQConfig

        self.suite, self.good = suite, good
        self.image_tokenizer = PatchVQ(PatchVQConfig(resolution=64, patch=4, vocab_size=128, n_hid=8, n_blocks=0))
        renders = [render_description(sp.description, 64) for sp in suite]
        x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255) for im in renders])
        self.image_tokenizer.fit_codebook(x.permute(0, 3, 1, 2), iters=5)       # (N, 3, 64, 64)
        self.calls = []
        self.asked = set()     # what each generation's own score was asked to be
        self.tokenizer = SimpleNamespace(encode=lambda prompts: torch.zeros(len(prompts), 1, dtype=torch.long))

    def scorers(self):
        """Its own "pmi" ranking: the first code of a stand-in generation, 1 for a real render, 0 for shuffled."""
        return {"pmi": lambda cands: cands.image_tokens[:, 0].float()}

    def generate(self, prompts, *, n, seed, temperature, guidance, scorer="auto", **_):
        self.calls.append((temperature, guidance))
        self.asked.add(scorer)
        out = []
        for position, prompt in enumerate(prompts):
            sp = self.suite[position]
            assert sp.prompt == prompt
            real = render_description(sp.description, 64)
            for i in range(n):
                ok = i < self.good(position, temperature, guidance)
                out.append(FakeGeneration(prompt, i, real if ok else shuffle_pixels(real, i), score=float(ok),
                                          image_tokens=torch.tensor([int(ok)])))
        return out


def test_run_eval_counts_real_passes_and_failures(tmp_path, monkeypatch):
    """At 64 px the checker decides: pass counts, the best temperature and the guidance summary follow
    exactly from which samples are real renders."""
    import dalle

    suite = default_suite(prompts_per_part=2, seed=0)                       # 6 prompts, 3 parts
    n = 4

    def good(position, temperature, guidance):
        if guidance != 1.0:
            return n                                                        # guidance: every sample passes
        return position % (n + 1) if temperature == 0.8 else position % 2  # T=1.0 passes fewer

    model = RenderModel(suite, good)
    monkeypatch.setattr(dalle.Dalle, "from_pretrained", classmethod(lambda cls, path, device="cpu": model))
    result = run_eval("unused", tmp_path / "eval", suite=suite, n=n, temperatures=(0.8, 1.0), ks=(1, 2),
                      candidates=2, guidance_values=(1.0, 3.0), batch_size=8, frechet=False, n_recon=4)
    assert model.calls == [(0.8, 1.0), (1.0, 1.0), (0.8, 3.0)]
    assert model.asked == {"logprob"}        # the "by logprob" column is that, even for a model with a scorer
    for t in (0.8, 1.0):
        rows = result["temperatures"][str(t)]["prompts"]
        assert [r["c"] for r in rows] == [good(j, t, 1.0) for j in range(len(suite))]
        for r in rows:
            assert r["pass@k"]["1"] == r["c"] / n
            assert r["pass@k"]["2"] == pytest.approx(pass_at_k(n, r["c"], 2))
            assert (r["reasons"] == []) == (r["c"] == n)
    want_08 = np.mean([good(j, 0.8, 1.0) / n for j in range(len(suite))])   # (0+1+2+3+4+0)/24
    assert result["temperatures"]["0.8"]["summary"]["all"]["pass@k"]["1"] == pytest.approx(want_08)
    assert result["best_temperature"]["1"] == {"temperature": 0.8, "pass@k": pytest.approx(want_08)}
    for t in (0.8, 1.0):   # the stand-in's "pmi" knows which samples are real: best of 2 by it is the oracle
        r = result["temperatures"][str(t)]["summary"]["all"]["rerank"]
        assert r["pass@1_by"]["pmi"] == pytest.approx(r["oracle_pass@m"]) and "clip" not in r["pass@1_by"]
    assert result["guidance"]["3.0"]["summary"]["all"]["pass@k"]["1"] == 1.0
    for part, row in result["guidance"]["1.0"]["summary"].items():
        assert row["prompts"] == (6 if part == "all" else 2)
    ceilings = [v["checker_ceiling"] for v in result["vqvae"].values()]
    assert all(v["images"] == 4 and np.isfinite(v["psnr_db"]) for v in result["vqvae"].values())
    assert all(c * 4 == int(c * 4) for c in ceilings) and max(ceilings) > 0   # 64 px: reconstructions can pass
    grid = Image.open(tmp_path / "eval" / "samples.png")
    assert grid.size[0] > 64


def test_run_eval_rejects_bad_arguments(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="n >= 2k"):
        run_eval(tiny_bundle, tmp_path, n=3, ks=(10,))
    with pytest.raises(ValueError, match="temperatures"):
        run_eval(tiny_bundle, tmp_path, n=4, temperatures=(0.0,))


def test_run_eval_sweeps_at_the_models_recommended_guidance_by_default(tmp_path, monkeypatch):
    import dalle

    suite = default_suite(prompts_per_part=2, seed=0)
    model = RenderModel(suite, lambda position, temperature, guidance: 1)
    monkeypatch.setattr(dalle.Dalle, "from_pretrained", classmethod(lambda cls, path, device="cpu": model))
    kw = dict(suite=suite, n=2, temperatures=(1.0,), ks=(1,), candidates=2, batch_size=8, frechet=False, n_recon=2)
    result = run_eval("unused", tmp_path / "a", **kw)                        # no recommendation: 1, then 3
    assert model.calls == [(1.0, 1.0), (1.0, 3.0)] and result["base_guidance"] == 1.0
    model.calls.clear()
    model.sampling = SamplingOptions.recommended({"guidance": 2.0, "top_k": 8})
    result = run_eval("unused", tmp_path / "b", **kw)                        # the model's 2, then 1 to compare
    assert model.calls == [(1.0, 2.0), (1.0, 1.0)] and result["base_guidance"] == 2.0
    assert set(result["guidance"]) == {"2.0", "1.0"} and result["top_k"] == 8
    with pytest.raises(ValueError, match="guidance"):
        run_eval("unused", tmp_path / "c", guidance_values=(), **kw)
