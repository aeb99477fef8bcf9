"""Plain BPE against letter-by-letter spelling of the words to draw, on held-out words (issue 11, section 1).

Two caption tokenizers are trained on the same captions with the same vocabulary size: the
project's spelling tokenizer (the text a caption asks to draw reaches the model as characters)
and a plain byte-level BPE (``dalle tokenizer train --no-spell``). Two transformers are then
trained from the same seed on the same sign token shards for the same number of steps, one per
tokenizer; the only difference between the runs is how the caption reaches the model. Measured:

- the teacher-forced image-token loss (nats per code) on validation signs (words drawn like
  the training words: the open vocabulary's real, pronounceable and random strings, almost all
  unseen as such) and on held-out-word signs (words never drawn in training, "OpenAI" first);
  the caption loss is left out, as the two tokenizers split captions differently;
- samples of the sign prompts of ``dalle eval``'s default suite (in-distribution signs and the
  held-out words): the share the sign checker passes, and the mean match of the asked word in
  the sample's text line (continuous; it moves long before pass@1 does).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_spelling.py --work ~/.cache/dalle-runs/spell \\
        --data ~/.cache/dalle-runs/v2/data --vqvae ~/.cache/dalle-runs/v2/codebook8192 --steps 900

Everything it makes stays in ``--work``; a second call reuses what is there (a finished run is not
retrained) and rewrites ``spelling.json`` and ``spelling.md``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

VARIANTS = {"spell": [], "bpe": ["--no-spell"]}


def run(cmd: list[str], log: Path) -> None:
    """Run a ``dalle`` command, its output appended to ``log``; raise with the log's tail on failure."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text().splitlines()[-20:]
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}); the end of {log}:\n" + "\n".join(tail))


def shards(pattern: str) -> list[str]:
    found = sorted(glob.glob(pattern))
    if not found:
        raise SystemExit(f"no shards match {pattern}")
    return found


def image_loss(bundle_dir: Path, token_shards: list[str], batch_size: int = 50) -> dict[str, float]:
    """Mean teacher-forced cross-entropy of the image codes given the full caption (nats per code)."""
    import torch.nn.functional as F

    from dalle.bundle import load_bundle
    from train.config import DataConfig
    from train.data.tokens import iter_token_shards

    b = load_bundle(bundle_dir)
    b.model.eval()
    total, count, samples = 0.0, 0, 0
    items = list(iter_token_shards(token_shards, DataConfig()))
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i: i + batch_size]
            text = b.tokenizer.encode([x.caption for x in chunk])                 # (B, text_len)
            image = torch.stack([x.image_tokens for x in chunk])                  # (B, image_len)
            logits = b.model(text, image[:, :-1]).image.float()                   # (B, image_len, V)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), image.reshape(-1),
                                           reduction="sum"))
            count += image.numel()
            samples += len(chunk)
    return {"image_loss": total / count, "samples": samples}


def sign_eval(bundle_dir: Path, n: int, seed: int) -> dict[str, dict[str, float]]:
    """Per part of the default suite's sign prompts (in-distribution signs, held-out words), over ``n``
    samples per prompt at the bundle's sampling defaults and no reranking: the share the sign checker
    passes (pass@1) and the mean match of the asked word read in its text line (``read_scores``: 0 when
    no line is found, 1 for a perfect render), the continuous measure that moves before pass@1 does."""
    from dalle.api import Dalle
    from evaluation.signcheck import check_sign, read_scores
    from evaluation.suite import default_suite

    model = Dalle.from_pretrained(bundle_dir, device="cpu")
    parts: dict[str, dict[str, list[float]]] = {}
    for p in (p for p in default_suite(12) if p.description["kind"] == "sign"):
        word = p.description["claims"]["word"]
        row = parts.setdefault(p.part, {"passed": [], "match": []})
        for g in model.generate(p.prompt, n=n, seed=seed, candidates=n):
            row["passed"].append(float(check_sign(g.image, p.description).passed))
            row["match"].append(float(read_scores(g.image, word)["best"]["score"]))
    return {part: {"pass@1": sum(r["passed"]) / len(r["passed"]), "match": sum(r["match"]) / len(r["match"]),
                   "samples": len(r["passed"])} for part, r in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the build's data directory (scripts/build_default_model.sh)")
    ap.add_argument("--vqvae", type=Path, required=True, help="the image tokenizer of the token shards")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt in the sign eval")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra preset overrides for both runs")
    a = ap.parse_args(argv)
    w, d = a.work, a.data
    w.mkdir(parents=True, exist_ok=True)
    log = w / "log.txt"
    dalle = [sys.executable, "-m", "cli.main"]
    precision = "bf16-mixed" if _bf16() else "32"

    captions = [str(d / "scenes"), str(d / "signs"), str(d / "emoji" / "train")]
    for name, held in (("val_signs", d / "val_signs"), ("heldout_signs", d / "heldout_signs")):
        if not (w / "tokens" / name).is_dir():
            run([*dalle, "tokens", str(held), "--preset", a.preset, "--vqvae", str(a.vqvae), "--out",
                 str(w / "tokens" / name), "--device", "cpu"], log)
    train_tokens = shards(str(d / "tokens" / "signs" / "*.tar"))

    results: dict[str, dict] = {}
    for v in a.variants:
        tok = w / f"tokenizer_{v}.json"
        if not tok.exists():
            run([*dalle, "tokenizer", "train", *captions, "--preset", a.preset, "--out", str(tok), *VARIANTS[v]], log)
        out = w / f"run_{v}"
        if not (out / "bundle").is_dir():
            sets = [f"dalle_train.max_steps={a.steps}", f"dalle_train.precision={precision}",
                    "dalle_train.val_every=150", "dalle_train.image_every=0", f"dalle_train.seed={a.seed}", "data.num_workers=1", *a.set]
            run([*dalle, "train", "--preset", a.preset, "--tokens", *train_tokens,
                 "--val-tokens", *shards(str(w / "tokens" / "heldout_signs" / "*.tar")),
                 "--tokenizer", str(tok), "--vqvae", str(a.vqvae), "--out", str(out),
                 *[x for s in sets for x in ("--set", s)]], log)
        row = {"tokenizer": str(tok), "steps": a.steps}
        for name in ("val_signs", "heldout_signs"):
            row[name] = image_loss(out / "bundle", shards(str(w / "tokens" / name / "*.tar")))
        row["eval"] = sign_eval(out / "bundle", a.n, a.seed)
        results[v] = row
        print(v, json.dumps(row), flush=True)

    (w / "spelling.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"| caption tokenizer | steps | image loss, val signs | image loss, held-out words | "
             f"pass@1 / word match, in-dist signs | pass@1 / word match, held-out words |", "|---|---|---|---|---|---|"]
    for v, r in results.items():
        cells = [f"{r['eval'][part]['pass@1']:.3f} / {r['eval'][part]['match']:.3f}" if part in r["eval"] else "-"
                 for part in ("in_distribution", "heldout_words")]
        lines.append(f"| {v} | {r['steps']} | {r['val_signs']['image_loss']:.4f} | "
                     f"{r['heldout_signs']['image_loss']:.4f} | {' | '.join(cells)} |")
    (w / "spelling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _bf16() -> bool:
    from train.trainer import cpu_has_bf16
    return cpu_has_bf16()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
