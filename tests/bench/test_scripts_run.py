"""The benchmark scripts still run: the GPU ones in their CPU smoke mode on the tiny preset.

They print measurements, not verdicts, so these tests only check that each runs to the end
and prints its result lines; the numbers themselves live in BENCHMARKS.md.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import load_preset
from vqvae.model import DiscreteVAE

ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("args, expect", [
    (["bench/gpu_dalle_train.py", "--device", "cpu", "--preset", "tiny", "--modes", "eager",
      "--warmup", "1", "--steps", "1"], ["dense", "row", "column", "conv"]),
    (["bench/gpu_sampling.py", "--device", "cpu", "--preset", "tiny", "--batch", "2", "--modes", "eager",
      "--repeats", "1"], ["images/s", "codes equal to first mode: 100.0%"]),
    (["bench/gpu_vqvae.py", "--device", "cpu", "--preset", "tiny", "--iters", "1", "--warmup", "0"],
     ["encode:", "decode:", "train step:"]),
])
def test_gpu_scripts_cpu_smoke(args, expect):
    out = run_script(*args)
    for word in expect:
        assert word in out, out


def test_rate_distortion_script(image_shards, tmp_path):
    DiscreteVAE(load_preset("tiny").vqvae).save(tmp_path / "vqvae")
    shards = image_shards(6, size=16)
    out = run_script("bench/bench_rate_distortion.py", str(shards[0].parent), "--resolution", "16",
                     "--vqvae", str(tmp_path / "vqvae"))
    assert "JPEG quality: q5" in out and "q90" in out
    assert "dVAE: 80 bits/image" in out      # tiny: 4x4 codes out of 32


def test_train_benchmark_compares_both_loss_paths():
    out = run_script("bench/bench_dalle_train.py", "--preset", "tiny", "--seconds", "0.2",
                     "--precisions", "fp32", "--losses", "fused,plain")
    assert "fp32 fused" in out and "fp32 plain" in out and "fused / plain throughput (fp32)" in out


def test_train_benchmark_takes_overrides_and_reports_the_share_of_the_matmul_peak():
    out = run_script("bench/bench_dalle_train.py", "--preset", "tiny", "--seconds", "0.2", "--precisions", "fp32",
                     "--peak-seconds", "0.05", "--set", "dalle.n_layer=3", "--set", "dalle.n_embd=48",
                     "--attention", "math,sdpa")
    assert "layers=3 width=48" in out and "attention math / sdpa throughput (fp32, fused)" in out
    share = re.search(r"GFLOP/s = ([0-9.]+)% of the fp32 matmul peak \(([0-9]+) GFLOP/s", out)
    assert share and 0 < float(share.group(1)) and int(share.group(2)) > 0


def test_peer_benchmark_names_the_missing_peer_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "bench/bench_peer_train.py", "--peer-dir", str(tmp_path)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "minDALL-E's stage2 code not found" in r.stderr


@pytest.mark.skipif(not (ROOT / "peers" / "minDALL-E" / "stage2" / "transformer.py").is_file(),
                    reason="minDALL-E's code is not in peers/ (never committed; see the script)")
def test_peer_benchmark_runs_both_models():
    out = run_script("bench/bench_peer_train.py", "--preset", "tiny", "--seconds", "0.2", "--rounds", "1")
    assert "x minDALL-E" in out and "ours-fused" in out


def test_recolouring_reorders_each_images_channels_deterministically():
    import torch

    from bench.bench_tokenizer_ceiling import recolour
    x = torch.rand(40, 3, 8, 8)
    a, b = recolour(x, seed=3), recolour(x, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, recolour(x, seed=4))
    for img, out in zip(x, a):       # the same three planes, in some order
        assert sorted(out.flatten(1).sum(1).tolist()) == pytest.approx(sorted(img.flatten(1).sum(1).tolist()))
    assert sum(not torch.equal(i, o) for i, o in zip(x, a)) > 20   # 5 of 6 orders change the image
