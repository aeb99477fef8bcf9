"""The default model's learning curve: held-out loss and eval pass@1 against samples seen.

Reads a transformer run directory: ``logs/metrics.csv`` (``val/loss``, ``val/image_loss`` and
``val/text_loss`` every ``val_every`` steps) and the checkpoints copied aside during the run
(``CURVE_DIR/step*.ckpt``), evaluates each checkpoint with a short ``dalle eval``
(``--n`` samples per prompt of the default suite at one temperature, no guidance sweep),
and writes ``learning_curve.json`` and ``learning_curve.png`` (two panels).

    W=~/.cache/dalle-runs/v2
    PYTHONPATH=. python scripts/learning_curve.py $W/run $W/run2 --curve $W/curve $W/curve2 --offsets 0 3600 \\
        --tokenizer $W/tokenizer.json --vqvae $W/codebook8192 --top-k 16 --out docs/images
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from dalle.bundle import save_bundle
from dalle.images import make_grid, save_png_atomic
from evaluation.report import plot_lines
from evaluation.run import run_eval
from train.config import load_preset, with_image_tokenizer
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
    p.add_argument("--preset", default="small")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely codes")
    p.add_argument("--batch-size", type=int, default=16, help="sampling batch")
    p.add_argument("--train-batch", type=int, default=16, help="samples per optimizer step of the run")
    a = p.parse_args(argv)
    offsets = a.offsets if a.offsets is not None else [0] * len(a.run_dirs)
    if not len(a.run_dirs) == len(a.curve) == len(offsets):
        p.error("give one --curve folder and one --offsets value per run directory")
    image_tokenizer = load_image_tokenizer(a.vqvae)
    dalle_config = with_image_tokenizer(load_preset(a.preset), image_tokenizer.config).dalle
    batch = a.train_batch
    cache = a.out / "learning_curve.json"       # checkpoints evaluated by an earlier call are not redone
    # (a cache of another temperature or top-k is not reused)
    settings = {"n": a.n, "temperature": a.temperature, "top_k": a.top_k}
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    done = {pt["step"]: pt for pt in cached["eval"]} if cached.get("settings") == settings else {}
    points = []
    for ckpt, offset in [(c, off) for folder, off in zip(a.curve, offsets) for c in sorted(folder.glob("step*.ckpt"))]:
        model, info = model_from_checkpoint(ckpt, dalle_config)
        step = offset + info["global_step"]            # steps since the first run began
        if step in done:
            points.append(done[step])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            bundle = save_bundle(Path(tmp) / "bundle", model=model, vqvae=image_tokenizer, tokenizer_path=a.tokenizer)
            res = run_eval(bundle, Path(tmp) / "eval", n=a.n, temperatures=(a.temperature,), ks=(1,),
                           candidates=2, guidance_values=(1.0,), batch_size=a.batch_size, frechet=False,
                           top_k=a.top_k, n_recon=8, n_scorer_check=20)
        summary = res["temperatures"][str(a.temperature)]["summary"]
        points.append({"step": step, "samples": step * batch,
                       **{part: s["pass@k"]["1"] for part, s in summary.items()}})
        print(points[-1], flush=True)
    points.sort(key=lambda pt: pt["step"])      # step1200 sorts before step400 by name
    losses = merged_val_losses(a.run_dirs, offsets)
    a.out.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings, "val": losses, "eval": points}
    (a.out / "learning_curve.json").write_text(json.dumps(record, indent=2) + "\n")
    tmp = Path(tempfile.mkdtemp())
    try:
        ymax = max(r["val/loss"] for r in losses) * 1.1
        left = plot_lines({k.split("/")[1]: [(r["step"] * batch, r[k]) for r in losses]
                           for k in ("val/loss", "val/image_loss", "val/text_loss")},
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
