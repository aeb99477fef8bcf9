"""Fault injection (issue 13): SIGKILLs at random steps and during checkpoint writes, corrupt and
planted checkpoints, a launcher world size that disagrees with the preset.

Killed runs are real processes, SIGKILLed: forked children of one subprocess per test
(``tests/train/fault_run.py``, so the imports are paid once). Each is resumed by simply running
it again, and the loss of every step must equal the uninterrupted run's (one rank), or repeat
its value from before the kill (two ranks: ``ddp_fork`` with gloo on CPU, inside the subprocess).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import write_image_shards
from tests.train.test_resume import write_token_shards
from train.checkpoints import CheckpointError, candidates, find_resume_checkpoint, read_record
from train.config import load_preset

ROOT = Path(__file__).resolve().parents[2]


def run_specs(specs: list[dict], timeout: float = 400) -> tuple[list[int], str]:
    """Run the specs one after the other in one subprocess (each in a forked child); exit codes, stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "tests.train.fault_run", json.dumps(specs)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def losses(out: Path, rank: int = 0) -> dict[int, float]:
    """Step -> loss; a step trained again after a resume keeps its last value."""
    result: dict[int, float] = {}
    for line in (out / f"losses-rank{rank}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        result[rec["step"]] = rec["loss"]
    return result


def in_process(spec: dict) -> None:
    """An uninterrupted (or final, resuming) single-rank run in this process: same code, same thread count."""
    from tests.train.fault_run import main as fault_main

    fault_main({**spec, "kill": None})


def kill_and_resume(tmp_path: Path, spec: dict, kills: list[list], ranks: int = 1) -> dict:
    """The run killed at each of ``kills`` in turn (subprocesses, SIGKILL) and resumed after each.

    Single rank: every step's loss must equal an uninterrupted run's. Two ranks: every step
    trained again after a resume (between the checkpoint resumed from and the kill) must
    repeat the loss it had before the kill, on each rank.
    """
    out = tmp_path / "killed"
    runs = [{**spec, "out": str(out), "kill": kill} for kill in kills]
    if ranks > 1:
        runs.append({**spec, "out": str(out), "kill": None})
    codes, stderr = run_specs(runs)
    if ranks == 1:
        assert codes[:len(kills)] == [-9] * len(kills), (codes, stderr[-3000:])     # each one SIGKILLed
    else:                                   # a rank was SIGKILLed; the launcher stops the run
        assert all(c != 0 for c in codes[:len(kills)]) and "signal SIGKILL" in stderr, (codes, stderr[-3000:])
    if ranks == 1:
        in_process({**spec, "out": str(tmp_path / "full")})
        in_process({**spec, "out": str(out)})
    else:
        assert codes[-1] == 0, stderr[-3000:]                                     # the resumed run finishes
    repeated = 0
    for rank in range(ranks):
        first: dict[int, float] = {}
        for line in (out / f"losses-rank{rank}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["step"] in first:
                repeated += 1
                assert rec["loss"] == pytest.approx(first[rec["step"]], rel=1e-6, abs=1e-7), (rank, rec["step"])
            first.setdefault(rec["step"], rec["loss"])
        assert sorted(first) == list(range(spec_steps(spec)))
        if ranks == 1:
            want = losses(tmp_path / "full")
            for step in want:
                assert first[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
        assert len({round(v, 4) for v in first.values()}) > len(first) // 2   # the losses do move
    if ranks > 1:
        assert repeated >= 2 * ranks, "no step was trained again after a resume: nothing compared"
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".bundle.")]
    assert not leftovers, leftovers                                       # item 7: orphans cleaned
    return {"kills": len(kills), "steps": spec_steps(spec)}


def spec_steps(spec: dict) -> int:
    for o in spec["overrides"]:
        if o.split("=")[0].endswith(".max_steps"):
            return int(o.split("=")[1])
    raise AssertionError("max_steps not set")


def random_kills(seed: int, max_steps: int, ckpt_every: int) -> list[list]:
    """A kill at a random step, one half-way through a checkpoint write, one before its record."""
    rng = random.Random(seed)
    ckpt_steps = list(range(ckpt_every, max_steps - 1, ckpt_every))
    first = rng.randrange(2, ckpt_steps[1])
    write = rng.choice([s for s in ckpt_steps if s > first])
    record = rng.choice([s for s in ckpt_steps if s > write] or [write])
    return [["step", first], ["write", write], ["record", record]]


@pytest.fixture
def token_spec(tmp_path, tiny_preset, tiny_tokenizer):
    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=3, per_shard=14)
    return {"stage": "dalle", "shards": shards, "tokenizer": str(tiny_tokenizer.path),
            "overrides": ["dalle_train.max_steps=14", "dalle_train.ckpt_every=3", "dalle_train.log_every=1",
                          "dalle_train.caption_dropout=0.3", "dalle_train.warmup_steps=2", "data.num_workers=2"]}


@pytest.mark.slow
def test_transformer_killed_three_times_resumes_step_for_step(tmp_path, token_spec):
    # 3 shards over 2 workers: worker 0 yields 3 batches an epoch, worker 1 one, so resumes
    # land mid-epoch, on a worker that has run dry, and across epoch ends
    kill_and_resume(tmp_path, token_spec, random_kills(13, 14, 3))


@pytest.mark.slow
def test_dvae_killed_three_times_resumes_step_for_step(tmp_path):
    shards = [str(p) for p in write_image_shards(tmp_path / "images", 36, size=20, per_shard=12)]
    spec = {"stage": "vqvae", "shards": shards,
            "overrides": ["vqvae_train.max_steps=14", "vqvae_train.ckpt_every=3", "vqvae_train.log_every=1",
                          "vqvae_train.image_every=0", "vqvae_train.usage_window=64", "data.random_crop=true"]}
    kill_and_resume(tmp_path, spec, random_kills(7, 14, 3))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dalle", "vqvae"])
def test_two_ranks_killed_resume_step_for_step(tmp_path, tiny_preset, tiny_tokenizer, stage):
    if stage == "dalle":
        shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=4, per_shard=9)
        spec = {"stage": "dalle", "shards": shards, "tokenizer": str(tiny_tokenizer.path), "devices": 2,
                "overrides": ["dalle_train.max_steps=9", "dalle_train.ckpt_every=2", "dalle_train.log_every=1",
                              "dalle_train.batch_size=4", "dalle_train.caption_dropout=0.3"]}
    else:
        shards = [str(p) for p in write_image_shards(tmp_path / "images", 36, size=20, per_shard=9)]
        spec = {"stage": "vqvae", "shards": shards, "devices": 2,
                "overrides": ["vqvae_train.max_steps=9", "vqvae_train.ckpt_every=2", "vqvae_train.log_every=1",
                              "vqvae_train.batch_size=4", "vqvae_train.image_every=0"]}
    # 36 samples / (2 ranks x 4) = 4 batches per rank and epoch: killed writing step 6 (mid-epoch 2),
    # resumed from step 4 on both ranks; steps 4 and 5 are trained again and must repeat their losses
    kill_and_resume(tmp_path, spec, [["write", 6]], ranks=2)


# ---- corrupt, planted and foreign checkpoints (in process: fast) -------------------------------
@pytest.fixture
def dalle_run(tmp_path, tiny_preset, tiny_tokenizer):
    """``run(max_steps, **kw)`` trains the tiny transformer in ``tmp_path/run`` (checkpoints every 4)."""
    from train.dalle_fit import fit_dalle

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=2, per_shard=16)

    def run(max_steps: int, **kw):
        preset = load_preset("tiny", [f"dalle_train.max_steps={max_steps}", "dalle_train.ckpt_every=4"])
        return fit_dalle(preset, tmp_path / "run", tokenizer_path=tiny_tokenizer.path, token_shards=shards,
                         enable_progress_bar=False, accelerator="cpu", enable_model_summary=False, **kw)

    return run


def test_truncated_empty_and_bit_flipped_checkpoints_fall_back_to_an_intact_one(tmp_path, dalle_run, caplog):
    dalle_run(6)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in candidates(tmp_path / "run")) == ["last.ckpt", "step00000004.ckpt"]
    assert read_record(ckpts / "last.ckpt")["global_step"] == 6
    good = (ckpts / "last.ckpt").read_bytes()

    (ckpts / "last.ckpt").write_bytes(good[: len(good) // 3])                       # truncated
    assert find_resume_checkpoint(tmp_path / "run").name == "step00000004.ckpt"
    assert "truncated" in caplog.text
    (ckpts / "last.ckpt").write_bytes(b"")                                          # 0 bytes
    assert find_resume_checkpoint(tmp_path / "run").name == "step00000004.ckpt"
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x40                                              # one bit in the weights
    (ckpts / "last.ckpt").write_bytes(bytes(flipped))
    caplog.clear()
    assert find_resume_checkpoint(tmp_path / "run").name == "step00000004.ckpt"
    assert "sha256 does not match" in caplog.text

    # resuming from the fallback goes on from step 4 (not 0, not the corrupt 6)
    dalle_run(8)
    assert read_record(ckpts / "last.ckpt")["global_step"] == 8

    for p in ckpts.glob("*.ckpt"):                                                 # nothing intact left
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"none of the \d checkpoint"):
        dalle_run(10)


class Payload:
    """A pickle that would create ``marker`` when loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_planted_pickle_never_runs(tmp_path, dalle_run):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for path in (run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_99.ckpt"):
        torch.save({"global_step": 10**6, "state_dict": {}, "x": Payload(marker)}, path)
    (run / "checkpoints" / "evil.ckpt").write_bytes((run / "hpc_ckpt_99.ckpt").read_bytes())

    with pytest.raises(CheckpointError):            # resume: the only "checkpoints" are refused ...
        dalle_run(4)
    assert not marker.exists()                      # ... and never executed
    ckpt = dalle_run(4, resume=False)               # --no-resume trains and keeps its own weights
    assert not marker.exists()
    assert ckpt.name in ("last.ckpt", "step00000004.ckpt") and read_record(ckpt)["global_step"] == 4


def test_orphans_of_a_killed_run_are_removed_at_start(tmp_path, dalle_run):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.ckpt.x1y2.tmp").write_bytes(b"half")
    (run / ".bundle.abc123").mkdir()
    (run / ".bundle.abc123" / "dalle.safetensors").write_bytes(b"half")
    (run / ".preset.json.77.tmp").write_text("{")
    dalle_run(2)
    left = [p.name for p in run.rglob(".*")]
    assert left == [], left


def test_metrics_csv_keeps_its_rows_across_resumes(tmp_path, tiny_preset, tiny_tokenizer):
    import csv

    from train.dalle_fit import fit_dalle

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=2, per_shard=16)
    for steps in (4, 8):
        preset = load_preset("tiny", [f"dalle_train.max_steps={steps}", "dalle_train.ckpt_every=4",
                                      "dalle_train.log_every=1"])
        fit_dalle(preset, tmp_path / "run", tokenizer_path=tiny_tokenizer.path, token_shards=shards,
                  enable_progress_bar=False, accelerator="cpu", enable_model_summary=False)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 7   # both runs, once each


def test_launcher_world_size_that_disagrees_with_the_preset_stops_in_one_line(tmp_path, tiny_preset,
                                                                                tiny_tokenizer):
    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=2, per_shard=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TORCHELASTIC_RUN_ID": "t13",
           "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29513"}
    r = subprocess.run([sys.executable, "-m", "cli.main", "train", "--preset", "tiny", "--tokens", *shards,
                        "--tokenizer", str(tiny_tokenizer.path), "--out", str(tmp_path / "run"),
                        "--set", "dalle_train.devices=1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "num_nodes=2" in err[0] and "WORLD_SIZE" in err[0], r.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bit_flip_in_a_bundle_file_is_refused_in_one_line(tmp_path, tiny_preset, tiny_tokenizer):
    """Issue 13 item 5: bundle files carry a checksum too; a flipped weight never loads silently."""
    from dalle.bundle import BundleError, load_bundle
    from train.dalle_fit import fit_dalle
    from vqvae.model import DiscreteVAE

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=2, per_shard=8)
    vqvae = DiscreteVAE(tiny_preset.vqvae).save(tmp_path / "vqvae")
    bundle = fit_dalle(load_preset("tiny", ["dalle_train.max_steps=2"]), tmp_path / "run",
                       tokenizer_path=tiny_tokenizer.path, vqvae_dir=vqvae, token_shards=shards,
                       enable_progress_bar=False, accelerator="cpu", enable_model_summary=False)
    load_bundle(bundle)
    weights = bytearray((bundle / "dalle.safetensors").read_bytes())
    weights[-100] ^= 0x40                                       # in the tensor data, past the header
    (bundle / "dalle.safetensors").write_bytes(bytes(weights))
    with pytest.raises(BundleError, match="does not match the sha256"):
        load_bundle(bundle)
