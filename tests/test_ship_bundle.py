"""scripts/ship_bundle.py: the shipped bundle gets the trained decoder only over the same codebook."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from dalle.api import Dalle
from dalle.bundle import save_bundle
from tests.bundles import CORPUS, random_transformer
from tests.helpers import write_bpe
from train.config import load_preset
from vqvae.patch_vq import PatchVQ, PatchVQConfig

ROOT = Path(__file__).resolve().parents[1]


def ship(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "scripts/ship_bundle.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_ship_swaps_in_the_decoder_over_the_same_codebook_only(tmp_path):
    write_bpe(tmp_path / "tokenizer.json", CORPUS)
    cfg = PatchVQConfig(resolution=16, patch=4, vocab_size=32, n_hid=8, n_blocks=1)
    codebook = PatchVQ(cfg)
    codebook.fit_codebook(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)), iters=2)
    torch.manual_seed(0)
    run = save_bundle(tmp_path / "run", model=random_transformer(load_preset("tiny").dalle), vqvae=codebook,
                      tokenizer_path=tmp_path / "tokenizer.json", meta={"preset": "tiny"})
    decoder = PatchVQ(cfg)
    decoder.load_state_dict(codebook.state_dict())
    with torch.no_grad():
        decoder.context[-1].bias.fill_(0.25)          # "trained": decodes the same codes differently
    codebook.save(tmp_path / "codebook")
    decoder.save(tmp_path / "decoder")

    r = ship(str(run), "--vqvae", str(tmp_path / "decoder"), "--codebook", str(tmp_path / "codebook"),
             "--top-k", "4", "--temperature", "0.9", "--meta", "note=test", "--out", str(tmp_path / "ship"))
    assert r.returncode == 0, r.stderr[-2000:]
    shipped = Dalle.from_pretrained(tmp_path / "ship", device="cpu")
    codes = torch.randint(0, 32, (1, 4, 4))
    assert torch.allclose(shipped.image_tokenizer.decode(codes), decoder.eval().decode(codes))
    assert not torch.allclose(shipped.image_tokenizer.decode(codes), codebook.eval().decode(codes))
    info = json.loads((tmp_path / "ship" / "bundle.json").read_text())
    assert info["meta"]["sampling"] == {"top_k": 4, "temperature": 0.9}
    assert info["meta"]["note"] == "test"
    r = ship(str(tmp_path / "ship"), "--vqvae", str(tmp_path / "decoder"), "--top-k", "8",
             "--out", str(tmp_path / "again"))                 # a bundle's own sampling settings stay
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "bundle.json").read_text())
    assert again["meta"]["sampling"] == {"top_k": 8, "temperature": 0.9}

    other = PatchVQ(cfg)                              # another codebook: its codes mean other patches
    other.fit_codebook(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)), iters=2)
    other.save(tmp_path / "other")
    r = ship(str(run), "--vqvae", str(tmp_path / "other"), "--codebook", str(tmp_path / "codebook"),
             "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "codes mean other patches" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_ship_from_a_checkpoint_keeps_its_own_shape(tmp_path, tiny_tokenizer):
    """A checkpoint of a model with within-word positions ships as it was trained, not as the preset says."""
    import dataclasses

    from dalle.model import DalleTransformer

    cfg = PatchVQConfig(resolution=16, patch=4, vocab_size=32, n_hid=8, n_blocks=1)
    codebook = PatchVQ(cfg)
    codebook.fit_codebook(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)), iters=2)
    codebook.save(tmp_path / "codebook")
    dcfg = dataclasses.replace(load_preset("tiny").dalle, spell_pos=4, spell_open_id=tiny_tokenizer.spell_open,
                               spell_close_id=tiny_tokenizer.spell_close)
    model = DalleTransformer(dcfg)
    with torch.no_grad():
        model.spell_start.weight.normal_()
    ckpt = {"global_step": 7, "hyper_parameters": {"dalle_config": dcfg.to_dict()},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    r = ship(str(tmp_path / "last.ckpt"), "--tokenizer", str(tiny_tokenizer.path), "--preset", "tiny",
             "--vqvae", str(tmp_path / "codebook"), "--out", str(tmp_path / "ship"))
    assert r.returncode == 0, r.stderr[-2000:]
    shipped = Dalle.from_pretrained(tmp_path / "ship", device="cpu")
    assert shipped.model.config.spell_pos == 4 and shipped.meta["global_step"] == 7
    torch.testing.assert_close(shipped.model.spell_start.weight.float(), model.spell_start.weight,
                               atol=1e-3, rtol=1e-3)        # float16 on disk
