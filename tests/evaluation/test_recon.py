"""dVAE reconstruction metrics and `dalle vqvae eval`."""
import json
import math

import torch

from cli.main import main
from evaluation.recon import evaluate_sources, load_images, recon_metrics, to_markdown
from train.config import load_preset
from vqvae.model import DiscreteVAE


def tiny_vqvae(tmp_path=None):
    torch.manual_seed(0)
    model = DiscreteVAE(load_preset("tiny").vqvae).eval()
    if tmp_path is not None:
        model.save(tmp_path / "vqvae")
    return model


def test_recon_metrics_match_a_hand_computation():
    model = tiny_vqvae()
    cfg = model.config
    x = torch.rand(6, 3, cfg.resolution, cfg.resolution)
    metrics, rec = recon_metrics(model, x.split(4))
    codes = model.encode(x)
    expected_rec = model.decode(codes)
    mse = ((expected_rec - x) ** 2).flatten(1).mean(1)
    assert torch.allclose(rec, expected_rec)
    assert metrics["images"] == 6
    assert math.isclose(metrics["psnr_db"], float((10 * torch.log10(1 / mse)).mean()), rel_tol=1e-5)
    assert metrics["codebook_usage"] == len(codes.unique()) / cfg.vocab_size
    counts = torch.bincount(codes.flatten(), minlength=cfg.vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    assert math.isclose(metrics["code_perplexity"], math.exp(float(-(p * p.log()).sum())), rel_tol=1e-6)
    assert metrics["bits_per_image"] == cfg.grid_size ** 2 * math.log2(cfg.vocab_size)


def test_perfect_reconstruction_is_capped_not_infinite():
    class Identity:
        config = tiny_vqvae().config

        def encode(self, x):
            return x

        def decode(self, x):
            return x

    metrics, _ = recon_metrics(Identity(), [torch.zeros(2, 3, 4, 4, dtype=torch.long)])
    assert math.isclose(metrics["psnr_db"], 100.0)


def test_evaluate_sources_per_source_and_overall(tmp_path, image_shards):
    model = tiny_vqvae()
    a = image_shards(10, subdir="a", seed=1)
    b = image_shards(7, subdir="b", seed=2)
    report = evaluate_sources(model, {"a": str(a[0].parent), "b": str(b[0].parent)}, max_images=8,
                              batch_size=3, out_dir=tmp_path / "out")
    assert report["a"]["images"] == 8 and report["b"]["images"] == 7 and report["all"]["images"] == 15
    assert (tmp_path / "out" / "recon_a.png").is_file() and (tmp_path / "out" / "recon_b.png").is_file()
    x = load_images(str(b[0].parent), model.config.resolution, 100)
    assert report["b"]["psnr_db"] == recon_metrics(model, [x])[0]["psnr_db"]
    assert to_markdown(report).count("\n") == 2 + 3


def test_vqvae_eval_command(tmp_path, image_shards, capsys):
    tiny_vqvae(tmp_path)
    shards = image_shards(5, subdir="held")
    rc = main(["vqvae", "eval", str(shards[0].parent), "--vqvae", str(tmp_path / "vqvae"),
               "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert rc == 0
    assert "| held | 5 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "recon.json").read_text())
    assert report["held"]["images"] == 5
    assert (tmp_path / "eval" / "recon.md").is_file()


def test_vqvae_eval_bad_input_exits_2(tmp_path, image_shards, capsys):
    shards = image_shards(2, subdir="held")
    assert main(["vqvae", "eval", str(shards[0].parent), "--vqvae", str(tmp_path)]) == 2
    assert main(["vqvae", "eval", str(tmp_path / "missing"), "--vqvae", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("dalle vqvae: error:") for line in err)
