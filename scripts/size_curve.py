"""Transformer sizes compared on the same data: held-out loss against samples seen and against hours.

Each RUN is a ``dalle train`` run directory started from random weights on the same token shards,
codebook and schedule, differing only in the model's shape. For each, the script reads the held-out
losses (``logs/metrics.csv``), the model shape and batch (``logs/hparams.yaml``) and the measured
training speed (the median of ``train/samples_per_s``, or ``--rates``), and writes ``size_curve.json`` and
``size_curve.png``: the held-out image-code loss against samples seen (left) and against hours of
training at each run's own speed (right). The JSON gives each run's parameter count, speed, losses,
and, for every pair, the ratio of their losses wherever both logged one at the same samples, so the question "is the
larger model worth its cost on this machine" is read off one run of each, not guessed.

    W=~/.cache/dalle-runs/v4
    PYTHONPATH=. python scripts/size_curve.py $W/run_s1 $W/run_m1 --out docs/images
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import val_losses  # noqa: E402

from dalle.atomic import atomic_write_text  # noqa: E402
from dalle.config import DalleConfig  # noqa: E402
from dalle.images import make_grid, save_png_atomic  # noqa: E402
from dalle.model import DalleTransformer  # noqa: E402
from evaluation.report import plot_lines  # noqa: E402

KEY = "val/image_loss"


def run_summary(run_dir: Path, rate: float | None = None) -> dict:
    """Shape, parameter count, batch, speed and held-out losses of one run directory.

    ``rate`` (samples/s) replaces the run's own median speed, e.g. where parts of the run had another
    thread count or code version: give every run its speed from one benchmark of the same code.
    """
    hp = yaml.safe_load((run_dir / "logs" / "hparams.yaml").read_text())
    cfg = DalleConfig(**hp["dalle_config"])
    with torch.device("meta"):
        params = sum(p.numel() for p in DalleTransformer(cfg).parameters())
    rates = []
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/samples_per_s"):
                rates.append(float(row["train/samples_per_s"]))
    if rate is None:
        if not rates:
            raise ValueError(f"{run_dir}: no train/samples_per_s in logs/metrics.csv")
        rate = statistics.median(rates)
    batch = int(hp["train_config"]["batch_size"]) * int(hp["train_config"].get("grad_accum", 1))
    losses = [{"step": r["step"], "samples": (r["step"] + 1) * batch, "hours": (r["step"] + 1) * batch / rate / 3600,
               **{k: r[k] for k in ("val/loss", "val/image_loss", "val/text_loss")}} for r in val_losses(run_dir)]
    return {"run": str(run_dir), "label": f"{cfg.n_layer}x{cfg.n_embd} ({params / 1e6:.1f}M)",
            "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head, "parameters": params,
            "batch": batch, "samples_per_s": rate, "run_median_samples_per_s": statistics.median(rates) if rates else None,
            "val": losses}


def loss_ratios(runs: list[dict], key: str = KEY) -> list[dict]:
    """For each pair of runs, ``loss(b) / loss(a)`` at every number of samples where both logged a held-out loss."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            at_b = {r["samples"]: r[key] for r in b["val"]}
            points = [{"samples": r["samples"], "a": r[key], "b": at_b[r["samples"]],
                       "b_over_a": at_b[r["samples"]] / r[key]} for r in a["val"] if r["samples"] in at_b]
            if points:
                out.append({"a": a["label"], "b": b["label"], "key": key, "points": points})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="dalle train run directories (same data and schedule)")
    ap.add_argument("--out", type=Path, required=True, help="directory for size_curve.json and size_curve.png")
    ap.add_argument("--ymax", type=float, default=1.2, help="top of the loss axes")
    ap.add_argument("--rates", type=float, nargs="+", metavar="SAMPLES_PER_S",
                    help="each run's training speed for the hours axis (default: its own median train/samples_per_s)")
    a = ap.parse_args(argv)
    if a.rates is not None and len(a.rates) != len(a.runs):
        ap.error(f"--rates takes one speed per run ({len(a.runs)}), got {len(a.rates)}")
    runs = [run_summary(r, None if a.rates is None else a.rates[i]) for i, r in enumerate(a.runs)]
    for run in runs:
        if not run["val"]:
            ap.error(f"{run['run']}: no held-out loss logged yet")
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"key": KEY, "runs": runs, "ratios": loss_ratios(runs)}
    atomic_write_text(a.out / "size_curve.json", json.dumps(result, indent=1) + "\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        left = plot_lines({r["label"]: [(v["samples"], v[KEY]) for v in r["val"]] for r in runs}, tmp / "s.png",
                          title="held-out image-code loss", xlabel="samples seen", ylabel="nats per code",
                          logx=True, ymax=a.ymax)
        right = plot_lines({r["label"]: [(v["hours"], v[KEY]) for v in r["val"]] for r in runs}, tmp / "h.png",
                           title="the same against training time", xlabel="hours at the given speed",
                           ylabel="nats per code", logx=True, ymax=a.ymax)
        save_png_atomic(make_grid([Image.open(left), Image.open(right)], ncol=2), a.out / "size_curve.png")
    for r in runs:
        last = r["val"][-1]
        print(f"{r['label']}: {r['samples_per_s']:.2f} samples/s, {last['samples']} samples, "
              f"held-out image loss {last[KEY]:.4f}")
    for p in result["ratios"]:
        last = p["points"][-1]
        print(f"{p['b']} / {p['a']} at {last['samples']} samples: {last['b_over_a']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
