"""scripts/size_curve.py: two model sizes compared at equal samples and on each run's own speed."""
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dalle.config import DalleConfig
from dalle.model import DalleTransformer
from tests.helpers import load_script



def _run(path: Path, shape: dict, rate: float, losses: dict[int, float]) -> Path:
    (path / "logs").mkdir(parents=True)
    cfg = {"text_len": 8, "text_vocab_size": 64, "image_vocab_size": 32, "image_grid": 4, **shape}
    (path / "logs" / "hparams.yaml").write_text(yaml.safe_dump(
        {"dalle_config": cfg, "train_config": {"batch_size": 4, "grad_accum": 2}}))
    lines = ["step,train/samples_per_s,val/loss,val/image_loss,val/text_loss"]
    for step in range(0, max(losses) + 1, 25):
        lines.append(f"{step},{rate},,,")
        if step + 24 in losses:
            loss = losses[step + 24]
            lines.append(f"{step + 24},,{loss},{loss},{loss + 0.5}")
    (path / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


def test_sizes_compare_at_equal_samples_and_on_their_own_speed(tmp_path):
    sc = load_script("size_curve")
    small = _run(tmp_path / "small", {"n_layer": 1, "n_embd": 16, "n_head": 2}, 8.0, {99: 1.0, 199: 0.8, 299: 0.7})
    large = _run(tmp_path / "large", {"n_layer": 2, "n_embd": 32, "n_head": 4}, 2.0, {99: 0.9, 199: 0.6})
    assert sc.main([str(small), str(large), "--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "size_curve.json").read_text())
    s, l = out["runs"]
    cfg = DalleConfig(text_len=8, text_vocab_size=64, image_vocab_size=32, image_grid=4, n_layer=2, n_embd=32, n_head=4)
    assert l["parameters"] == sum(p.numel() for p in DalleTransformer(cfg).parameters())
    assert s["parameters"] < l["parameters"]
    assert s["batch"] == l["batch"] == 8
    assert [v["samples"] for v in s["val"]] == [800, 1600, 2400]
    assert l["val"][1]["hours"] == pytest.approx(1600 / 2.0 / 3600)       # the large run's own, slower speed
    assert s["val"][1]["hours"] == pytest.approx(1600 / 8.0 / 3600)
    (pair,) = out["ratios"]
    assert [p["samples"] for p in pair["points"]] == [800, 1600]           # only where both have a loss
    assert [p["b_over_a"] for p in pair["points"]] == pytest.approx([0.9, 0.75])
    with Image.open(tmp_path / "out" / "size_curve.png") as im:
        assert im.width > im.height                                       # two panels side by side
    assert load_script("size_curve").main([str(small), str(large), "--out", str(tmp_path / "out2"),
                                           "--rates", "4", "1"]) == 0
    out2 = json.loads((tmp_path / "out2" / "size_curve.json").read_text())
    assert out2["runs"][1]["val"][1]["hours"] == pytest.approx(1600 / 1.0 / 3600)
    assert out2["runs"][1]["run_median_samples_per_s"] == 2.0
    with pytest.raises(SystemExit):
        load_script("size_curve").main([str(small), str(large), "--out", str(tmp_path / "out3"), "--rates", "4"])


def test_a_run_without_held_out_loss_is_refused(tmp_path):
    sc = load_script("size_curve")
    run = _run(tmp_path / "run", {"n_layer": 1, "n_embd": 16, "n_head": 2}, 8.0, {99: 1.0})
    lines = (run / "logs" / "metrics.csv").read_text().splitlines()
    (run / "logs" / "metrics.csv").write_text("\n".join(l for l in lines if not l.startswith("99,")) + "\n")
    with pytest.raises(SystemExit) as e:
        sc.main([str(run), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
