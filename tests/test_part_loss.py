"""scripts/part_loss.py: held-out image-code loss per part of the data."""
import json
import math

import numpy as np
import torch

from tests.bundles import save_tiny_bundle
from tests.helpers import load_script
from train.config import load_preset
from train.data.tokens import TokenShardWriter


def test_losses_are_split_by_the_sample_keys_part(tmp_path):
    part_loss = load_script("part_loss")
    assert part_loss.part_of("sign000000123") == "sign" and part_loss.part_of("dir/scene0001") == "scene"
    bundle = save_tiny_bundle(tmp_path)
    cfg = load_preset("tiny").dalle
    rng = np.random.default_rng(0)
    with TokenShardWriter(tmp_path / "tokens", max_samples=5) as writer:
        for i in range(7):
            for part in ("sign", "scene"):
                codes = rng.integers(0, cfg.image_vocab_size, (cfg.image_grid, cfg.image_grid))
                writer.write_tokens(f"{part}{i:06d}", codes, f"a red cube {part}")
    # a copy of the bundle whose image head says nothing: every code costs log(V) in every part
    from dalle.bundle import load_bundle, save_bundle
    b = load_bundle(bundle)
    with torch.no_grad():
        b.model.image_head.weight.zero_()
    uniform = save_bundle(tmp_path / "uniform", model=b.model, vqvae=b.image_tokenizer, tokenizer_path=tmp_path / "tokenizer.json")
    out = tmp_path / "losses.json"
    shards = [str(p) for p in writer.paths]
    assert part_loss.main([str(bundle), str(uniform), "--shards", *shards, "--json", str(out)]) == 0
    losses = json.loads(out.read_text())["losses"]
    assert sorted(losses[str(uniform)]) == ["all", "scene", "sign"]
    for value in losses[str(uniform)].values():
        assert math.isclose(value, math.log(cfg.image_vocab_size), rel_tol=1e-5)
    random_model = losses[str(bundle)]
    assert random_model["sign"] != random_model["scene"]                  # the parts are scored apart
    assert math.isclose(random_model["all"], (random_model["sign"] + random_model["scene"]) / 2, rel_tol=1e-6)
