"""Held-out image-code loss of transformers, per part of the data (signs, scenes, ...).

The learning curve's held-out loss mixes every kind of sample, and the signs' text is a few dozen of
each image's 256 codes: a model can learn to spell while the mixed loss hardly moves. This script
scores each MODEL (a bundle directory or a ``dalle train`` checkpoint) on token shards and reports the
mean image-code loss (nats per code) for each part, the part being the sample key without its digits
(``sign000000123`` -> ``sign``). With ``--json`` the table is also written as JSON.

    W=~/.cache/dalle-runs/v4
    PYTHONPATH=. python scripts/part_loss.py dalle/assets/default $W/run_sp/checkpoints/last.ckpt \\
        --shards $W/data/val_tokens/*.tar
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from common.samples import part_of
from dalle.atomic import atomic_write_text
from dalle.model import DalleTransformer
from dalle.tokenizer import TextTokenizer
from train.config import DataConfig
from train.dalle_fit import transformer_weights
from train.data.tokens import iter_token_shards


def load_parts(shards: list[str], tokenizer: TextTokenizer, image_len: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Token samples of ``shards`` (read as training reads them; bad ones skipped) grouped by part:
    ``{part: (text (N, Tt), codes (N, image_len))}``."""
    groups: dict[str, list[tuple[list[int], torch.Tensor]]] = defaultdict(list)
    for item in iter_token_shards(shards, DataConfig()):
        if item.image_tokens.numel() != image_len:
            raise ValueError(f"{item.key}: {item.image_tokens.numel()} codes, the model has {image_len}")
        groups[part_of(item.key) or "?"].append((tokenizer.encode_one(item.caption)[0], item.image_tokens))
    return {part: (torch.tensor([ids for ids, _ in rows]), torch.stack([codes for _, codes in rows]))
            for part, rows in sorted(groups.items())}


@torch.no_grad()
def image_loss(model: DalleTransformer, text: torch.Tensor, codes: torch.Tensor, batch: int = 50) -> float:
    """Mean image-code cross-entropy (nats per code) of ``model`` on these samples."""
    total, n = 0.0, 0
    for i in range(0, len(text), batch):
        t, c = text[i:i + batch], codes[i:i + batch]
        logits = model(t, c[:, :-1]).image.float()                        # (b, image_len, V)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), c.reshape(-1), reduction="sum").item()
        n += c.numel()
    return total / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="bundle directories or dalle train checkpoints (.ckpt)")
    ap.add_argument("--shards", nargs="+", required=True, help="held-out token shards")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the first bundle's)")
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args(argv)
    tok_path = args.tokenizer or next((str(Path(m) / "tokenizer.json") for m in args.models if Path(m).is_dir()), None)
    if tok_path is None:
        print("part_loss: give --tokenizer when no model is a bundle directory", file=sys.stderr)
        return 2
    rows: dict[str, dict[str, float]] = {}
    parts = None
    for path in args.models:
        cfg, sha, state = transformer_weights(path)
        tokenizer = TextTokenizer(tok_path, cfg.text_len, cfg.text_vocab_size)
        if sha is not None and sha != tokenizer.sha256:
            print(f"part_loss: {path} was trained with another tokenizer than {tok_path}", file=sys.stderr)
            return 2
        if parts is None:
            parts = load_parts(args.shards, tokenizer, cfg.image_len)
        model = DalleTransformer(cfg)
        model.load_state_dict(state, strict=True)
        model.eval()
        rows[path] = {part: image_loss(model, *parts[part]) for part in parts}
        rows[path]["all"] = (sum(rows[path][p] * len(parts[p][0]) for p in parts)
                             / sum(len(parts[p][0]) for p in parts))
    names = list(next(iter(rows.values())))
    print("| model | " + " | ".join(f"{p} (n={len(parts[p][0])})" if p in parts else p for p in names) + " |")
    print("|---|" + "---|" * len(names))
    for path, row in rows.items():
        print(f"| {path} | " + " | ".join(f"{row[p]:.4f}" for p in names) + " |")
    if args.json:
        atomic_write_text(args.json, json.dumps({"shards": args.shards, "losses": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
