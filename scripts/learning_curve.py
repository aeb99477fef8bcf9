"""The default model's learning curve: held-out loss and eval pass@1 against samples seen.

Reads a transformer run directory: ``logs/metrics.csv`` (``val/loss``, ``val/image_loss`` and
``val/text_loss`` every ``val_every`` steps) and the checkpoints copied aside during the run
(``CURVE_DIR/step*.ckpt``), evaluates each checkpoint with a short ``dalle eval``
(``--n`` samples per prompt of the default suite at one temperature, no guidance sweep),
and writes ``learning_curve.json`` and ``learning_curve.png`` (two panels).

It also predicts, from the same numbers, what more training would give (``prediction`` in the
JSON): a power law ``L(s) = L_inf + A * s**-alpha`` fitted to the held-out image loss at the end
of each run (each run ends its cosine schedule, so those points are comparable), and a log-linear
fit of in-distribution pass@1 against that loss over the evaluated checkpoints; from both, the
loss a pass@1 target needs and the samples (and hours on one core) that reach it, or that the
asymptote ``L_inf`` of this model size lies above that loss.

    W=~/.cache/dalle-runs/v2
    PYTHONPATH=. python scripts/learning_curve.py $W/run $W/run2 --curve $W/curve $W/curve2 --offsets 0 3600 \\
        --tokenizer $W/tokenizer.json --vqvae $W/codebook8192 --top-k 16 --out docs/images

Where the earlier runs' directories are gone (a new machine), ``--prior docs/images/learning_curve.json``
keeps that curve's held-out losses, evaluated checkpoints and run ends, and the runs given continue it.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dalle.bundle import save_bundle
from dalle.images import make_grid, save_png_atomic
from evaluation.report import plot_lines
from evaluation.run import run_eval
from train.dalle_fit import model_from_checkpoint
from vqvae.registry import load_image_tokenizer


def val_losses(run_dir: Path) -> list[dict[str, float]]:
    """Rows of metrics.csv that carry a held-out loss."""
    rows = []
    with open(run_dir / "logs" / "metrics.csv") as f:
        for r in csv.DictReader(f):
            if r.get("val/loss"):
                rows.append({"step": int(r["step"]), **{k: float(r[k]) for k in
                                                         ("val/loss", "val/image_loss", "val/text_loss")}})
    return rows


def merged_val_losses(run_dirs: list[Path], offsets: list[int]) -> list[dict[str, float]]:
    """The held-out losses of a run and its continuations, each step counted from the first run's start."""
    return [{**r, "step": off + r["step"]} for run, off in zip(run_dirs, offsets) for r in val_losses(run)]


def power_law_fit(samples: list[float], losses: list[float]) -> dict[str, float]:
    """Least squares (in log space) fit of ``loss = L_inf + A * samples**-alpha``: ``{"L_inf", "A", "alpha"}``.

    ``L_inf`` is searched on a grid below the smallest loss; for each, ``log(loss - L_inf)`` is linear in
    ``log(samples)``. Needs at least three points.
    """
    s, y = np.asarray(samples, dtype=float), np.asarray(losses, dtype=float)
    if s.size < 3 or s.size != y.size:
        raise ValueError(f"a power-law fit needs >= 3 (samples, loss) points, got {s.size}")
    best = None
    for l_inf in np.linspace(0.0, float(y.min()) * (1 - 1e-4), 2000):
        slope, icept = np.polyfit(np.log(s), np.log(y - l_inf), 1)
        err = float(np.sum((np.log(y - l_inf) - (icept + slope * np.log(s))) ** 2))
        if best is None or err < best[0]:
            best = (err, float(l_inf), float(math.exp(icept)), float(-slope))
    return {"L_inf": best[1], "A": best[2], "alpha": best[3]}


def samples_for_loss(fit: dict[str, float], loss: float) -> float | None:
    """Samples at which the fitted power law reaches ``loss`` (None: at or below its asymptote)."""
    if loss <= fit["L_inf"] or fit["alpha"] <= 0:
        return None
    return (fit["A"] / (loss - fit["L_inf"])) ** (1 / fit["alpha"])


def predict(losses: list[dict[str, float]], points: list[dict[str, float]], run_ends: list[int], *,
            batch: int, target: float, samples_per_second: float, key: str = "val/image_loss",
            part: str = "in_distribution") -> dict:
    """The prediction section of learning_curve.json (see the module docstring).

    Args:
        losses: held-out losses by step (merged over the runs).
        points: evaluated checkpoints (``step``, ``samples`` and pass@1 per part).
        run_ends: the last step of each run (its loss is the last held-out loss at or before it).
        batch: samples per step; target: the pass@1 to reach; samples_per_second: training speed.
    """
    def loss_at(step: int) -> float:
        before = [r for r in losses if r["step"] <= step]
        return (before[-1] if before else losses[0])[key]

    ends = sorted({int(e) for e in run_ends})
    out: dict = {"loss": key, "target_pass@1": target, "samples_per_second": samples_per_second,
                 "run_ends": [{"samples": e * batch, "loss": loss_at(e)} for e in ends]}
    if len(ends) >= 3:
        fit = power_law_fit([e * batch for e in ends], [loss_at(e) for e in ends])
        out["power_law"] = fit
        out["loss_at_10x_samples"] = fit["L_inf"] + fit["A"] * (10 * ends[-1] * batch) ** -fit["alpha"]
    scored = [(loss_at(pt["step"]), pt[part]) for pt in points if pt.get(part, 0) > 0]
    if len(scored) >= 2:
        slope, icept = np.polyfit([l for l, _ in scored], [math.log(p) for _, p in scored], 1)
        out["log_pass_vs_loss"] = {"slope": float(slope), "intercept": float(icept), "points": len(scored)}
        if slope < 0:
            need = (math.log(target) - icept) / slope
            out["loss_for_target"] = float(need)
            if "power_law" in out:
                n = samples_for_loss(out["power_law"], need)
                out["samples_for_target"] = n
                out["hours_for_target"] = None if n is None else n / samples_per_second / 3600
    return out


def with_prior(prior: dict, prior_ends: list[int], start: int, losses: list[dict], points: list[dict],
               run_ends: list[int]) -> tuple[list[dict], list[dict], list[int]]:
    """An earlier curve's held-out losses, evaluated checkpoints and run ends up to ``start`` (the step
    the given runs continue from), followed by the given runs' own."""
    have = {pt["step"] for pt in points}
    return ([r for r in prior["val"] if r["step"] < start] + losses,
            [pt for pt in prior["eval"] if pt["step"] <= start and pt["step"] not in have] + points,
            [e for e in prior_ends if e <= start] + run_ends)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+",
                   help="the run directory, then any runs that continued it with --init-from, in order")
    p.add_argument("--curve", type=Path, nargs="+", required=True,
                   help="folder of checkpoints kept during each run (one per run directory)")
    p.add_argument("--offsets", type=int, nargs="+", default=None,
                   help="optimizer steps before each run began (default 0 for the first; a continuation "
                        "starts where the run it continued ended)")
    p.add_argument("--tokenizer", type=Path, required=True, help="the run's tokenizer.json")
    p.add_argument("--vqvae", type=Path, required=True, help="the run's image tokenizer")
    p.add_argument("--preset", default="small", help="ignored: each checkpoint's own architecture is built")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely codes")
    p.add_argument("--batch-size", type=int, default=16, help="sampling batch")
    p.add_argument("--train-batch", type=int, default=16, help="samples per optimizer step of the run")
    p.add_argument("--prior", type=Path, default=None,
                   help="an earlier learning_curve.json whose points (before the first run's offset) are kept")
    p.add_argument("--prior-run-ends", type=int, nargs="+", default=None,
                   help="the last step of each run in --prior (default: its run_ends)")
    p.add_argument("--target", type=float, default=0.6, help="the in-distribution pass@1 the prediction aims at")
    p.add_argument("--samples-per-second", type=float, default=9.6,
                   help="training speed for the hours of the prediction (the small preset, one core: 9.6)")
    a = p.parse_args(argv)
    offsets = a.offsets if a.offsets is not None else [0] * len(a.run_dirs)
    if not len(a.run_dirs) == len(a.curve) == len(offsets):
        p.error("give one --curve folder and one --offsets value per run directory")
    image_tokenizer = load_image_tokenizer(a.vqvae)
    batch = a.train_batch
    cache = a.out / "learning_curve.json"       # checkpoints evaluated by an earlier call are not redone
    # (a cache of another temperature or top-k is not reused)
    settings = {"n": a.n, "temperature": a.temperature, "top_k": a.top_k}
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    done = {pt["step"]: pt for pt in cached["eval"]} if cached.get("settings") == settings else {}
    points = []
    for ckpt, offset in [(c, off) for folder, off in zip(a.curve, offsets) for c in sorted(folder.glob("step*.ckpt"))]:
        model, info = model_from_checkpoint(ckpt)     # its own architecture (a continuation may add tables)
        step = offset + info["global_step"]            # steps since the first run began
        if step in done:
            points.append(done[step])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            bundle = save_bundle(Path(tmp) / "bundle", model=model, vqvae=image_tokenizer, tokenizer_path=a.tokenizer)
            res = run_eval(bundle, Path(tmp) / "eval", n=a.n, temperatures=(a.temperature,), ks=(1,),
                           candidates=2, guidance_values=(1.0,), batch_size=a.batch_size, frechet=False,
                           prompts_per_part=6,      # the curve's points so far were evaluated on 18 prompts
                           top_k=a.top_k, n_recon=8, n_scorer_check=20)
        summary = res["temperatures"][str(a.temperature)]["summary"]
        points.append({"step": step, "samples": step * batch,
                       **{part: s["pass@k"]["1"] for part, s in summary.items()}})
        print(points[-1], flush=True)
    losses = merged_val_losses(a.run_dirs, offsets)
    run_ends = [off + max(r["step"] for r in val_losses(run)) for run, off in zip(a.run_dirs, offsets)]
    if a.prior is not None:
        prior = json.loads(a.prior.read_text())
        if prior.get("settings") != settings:
            p.error(f"--prior was evaluated with {prior.get('settings')}, not {settings}")
        prior_ends = a.prior_run_ends if a.prior_run_ends is not None else prior.get("run_ends")
        if not prior_ends:
            p.error("--prior records no run_ends: give --prior-run-ends")
        losses, points, run_ends = with_prior(prior, prior_ends, min(offsets), losses, points, run_ends)
    points.sort(key=lambda pt: pt["step"])      # step1200 sorts before step400 by name
    a.out.mkdir(parents=True, exist_ok=True)
    prediction = predict(losses, points, run_ends, batch=batch, target=a.target,
                         samples_per_second=a.samples_per_second)
    print(json.dumps(prediction, indent=2))
    record = {"settings": settings, "run_ends": run_ends, "val": losses, "eval": points, "prediction": prediction}
    (a.out / "learning_curve.json").write_text(json.dumps(record, indent=2) + "\n")
    tmp = Path(tempfile.mkdtemp())
    try:
        keys = ("val/loss", "val/image_loss", "val/text_loss")
        ymax = max(r[k] for r in losses for k in keys) * 1.1        # every curve inside the panel
        left = plot_lines({k.split("/")[1]: [(r["step"] * batch, r[k]) for r in losses] for k in keys},
                          tmp / "loss.png", title="held-out loss (nats per token)", xlabel="samples seen",
                          ylabel="loss", ymax=ymax)
        parts = [k for k in points[0] if k not in ("step", "samples")] if points else []
        right = plot_lines({part: [(pt["samples"], pt[part]) for pt in points] for part in parts},
                           tmp / "pass.png", title=f"pass@1 at T={a.temperature}{f', top-k {a.top_k}' if a.top_k else ''} "
                                                   f"(n={a.n})",
                           xlabel="samples seen", ylabel="pass@1")
        save_png_atomic(make_grid([Image.open(left), Image.open(right)], ncol=2), a.out / "learning_curve.png")
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
