"""Two-process DDP on CPU (gloo, ddp_spawn): real steps, disjoint data per rank, synced weights."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from tests.train.test_resume import write_token_shards

from train.config import load_preset
from train.dalle_fit import fit_dalle
from train.trainer import latest_checkpoint


class RankRecorder(L.Callback):
    """Each rank writes the sample keys it trained on and a hash of its final weights."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.keys: list[str] = []
        self.losses: list[float] = []

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)   # two ranks on a small shared CPU

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.keys += list(batch["keys"])
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for p in pl_module.model.parameters():
            digest.update(p.detach().cpu().numpy().tobytes())
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "keys": self.keys,
                  "losses": self.losses, "weights": digest.hexdigest(), "step": trainer.global_step}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_two_rank_ddp_trains_on_disjoint_data(tmp_path, tiny_preset, tiny_tokenizer):
    preset = load_preset("tiny", ["dalle_train.max_steps=4", "dalle_train.ckpt_every=2",
                                  "dalle_train.batch_size=4"])
    # 4 shards x 8 samples: each rank reads two shards, 32 // (2 ranks * 4) = 4 batches each
    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=4, per_shard=8)
    out = tmp_path / "run"
    fit_dalle(preset, out, tokenizer_path=tiny_tokenizer.path, token_shards=shards,
              callbacks=[RankRecorder(str(tmp_path))], enable_progress_bar=False,
              accelerator="cpu", strategy="ddp_spawn", devices=2)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert [r["step"] for r in records] == [4, 4]
    keys = [set(r["keys"]) for r in records]
    assert len(keys[0]) == len(keys[1]) == 16
    assert keys[0].isdisjoint(keys[1])
    assert len(keys[0] | keys[1]) == 32
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in records)
    assert records[0]["losses"] != records[1]["losses"]          # different data on each rank ...
    assert records[0]["weights"] == records[1]["weights"]        # ... but all-reduced gradients
    assert torch.load(latest_checkpoint(out), map_location="cpu", weights_only=True)["global_step"] == 4
