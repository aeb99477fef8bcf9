"""dVAE reconstruction metrics and `dalle vqvae eval`."""
import json
import math

import pytest
import torch
from PIL import Image

from cli.main import main
from evaluation.recon import evaluate_sources, recon_metrics, to_markdown
from train.data.images import load_images
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
    r = model.config.resolution
    images = {"a": load_images(str(a[0].parent), r, 8), "b": load_images(str(b[0].parent), r, 8)}
    report = evaluate_sources(model, images, batch_size=3, out_dir=tmp_path / "out")
    assert report["a"]["images"] == 8 and report["b"]["images"] == 7 and report["all"]["images"] == 15
    grid = Image.open(tmp_path / "out" / "recon_a.png")
    assert grid.size == (8 * 4 * r + 9, 2 * 4 * r + 3) and (tmp_path / "out" / "recon_b.png").is_file()
    x = load_images(str(b[0].parent), model.config.resolution, 100)
    assert report["b"]["psnr_db"] == recon_metrics(model, [x])[0]["psnr_db"]
    assert to_markdown(report).count("\n") == 2 + 3


def test_vqvae_eval_command(tmp_path, image_shards, capsys):
    tiny_vqvae(tmp_path)
    shards = image_shards(5, subdir="held")
    rc = main(["vqvae", "eval", str(shards[0].parent), "--vqvae", str(tmp_path / "vqvae"),
               "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert rc == 0
    assert "| held | 5 | - |" in capsys.readouterr().out       # random images carry no truth: no ceiling
    report = json.loads((tmp_path / "eval" / "recon.json").read_text())
    assert report["held"]["images"] == 5
    assert (tmp_path / "eval" / "recon.md").is_file()


def test_vqvae_eval_bad_input_exits_2(tmp_path, image_shards, capsys):
    shards = image_shards(2, subdir="held")
    assert main(["vqvae", "eval", str(shards[0].parent), "--vqvae", str(tmp_path)]) == 2
    assert main(["vqvae", "eval", str(tmp_path / "missing"), "--vqvae", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("dalle vqvae: error:") for line in err)


def test_checker_ceiling_is_one_for_perfect_reconstructions_and_low_for_blurred_ones():
    import numpy as np
    from PIL import ImageFilter

    from evaluation.recon import checker_pass_rate
    from synth.scenes import render_scene, scene_sample
    from synth.signs import sign_sample

    rng = np.random.default_rng(5)
    images, descriptions = [], []
    for i in range(6):
        if i % 2:
            image, _, desc = sign_sample(rng, 64, split="heldout")
        else:
            desc = scene_sample(rng, split="train")[1]
            image = render_scene(desc, 64)
        images.append(image)
        descriptions.append(desc)
    to_tensor = lambda ims: torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)  # noqa: E731
                                         for im in ims]).permute(0, 3, 1, 2)
    assert checker_pass_rate(to_tensor(images), descriptions) == 1.0
    blurred = [im.filter(ImageFilter.GaussianBlur(4)) for im in images]
    assert checker_pass_rate(to_tensor(blurred), descriptions) <= 1 / 6
    with pytest.raises(ValueError, match="one description per image"):
        checker_pass_rate(to_tensor(images), descriptions[:2])


def test_vqvae_eval_reports_the_checker_ceiling_of_described_shards(tmp_path, capsys):
    from synth.signs import build_signs
    from vqvae.patch_vq import PatchVQ, PatchVQConfig
    from train.data.images import load_described_images

    build_signs(tmp_path / "signs", 6, resolution=64, seed=3, split="heldout")
    x, descriptions = load_described_images(str(tmp_path / "signs"), 64, 10)
    assert x.shape == (6, 3, 64, 64) and all(d["kind"] == "sign" for d in descriptions)
    model = PatchVQ(PatchVQConfig(resolution=64, patch=4, vocab_size=64, n_hid=8, n_blocks=1))
    model.fit_codebook(x, iters=3)
    model.save(tmp_path / "pvq")
    assert main(["vqvae", "eval", str(tmp_path / "signs"), "--vqvae", str(tmp_path / "pvq"),
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "recon.json").read_text())["signs"]
    assert report["checker_originals"] == 1.0
    assert report["checker_ceiling"] < 1.0         # 64 codes cannot keep six words legible
    assert "(1.000)" in capsys.readouterr().out
    assert Image.open(tmp_path / "eval" / "recon_signs.png").size == (6 * 4 * 64 + 7, 2 * 4 * 64 + 3)
