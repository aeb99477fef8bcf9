import os

import pytest
import torch

from dalle.atomic import default_mode
from train.config import load_preset
from train.trainer import AtomicCheckpointIO, build_trainer, latest_checkpoint, resolve_strategy


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while writing")


def test_atomic_checkpoint_never_leaves_half_a_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    with pytest.raises(RuntimeError, match="boom"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(os.listdir(path.parent)) == ["last.ckpt", "last.ckpt.sha256"]   # no temporary file left behind


def test_atomic_checkpoint_has_normal_file_permissions(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert path.stat().st_mode & 0o777 == default_mode()   # not mkstemp's 0600


def test_latest_checkpoint_is_the_newest_intact_one_by_recorded_step(tmp_path):
    """Issue 13 item 1: a moved or copied run (last.ckpt at step 20 next to Lightning's
    last-v1.ckpt at step 60 and a periodic step file at 100) resumes at step 100, not 20."""
    assert latest_checkpoint(tmp_path) is None
    d = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 20, "state_dict": {}}, d / "last.ckpt")
    torch.save({"global_step": 60, "state_dict": {}}, d / "last-v1.ckpt")      # older code: no record
    assert latest_checkpoint(tmp_path).name == "last-v1.ckpt"
    io.save_checkpoint({"global_step": 100, "state_dict": {}}, d / "step00000100.ckpt")
    assert latest_checkpoint(tmp_path).name == "step00000100.ckpt"
    os.utime(d / "last.ckpt")                                                 # newest mtime means nothing
    assert latest_checkpoint(tmp_path).name == "step00000100.ckpt"


def test_cpu_trainer_resolution(tmp_path):
    cfg = load_preset("tiny").vqvae_train
    trainer = build_trainer(cfg, tmp_path, enable_progress_bar=False)
    assert trainer.max_steps == cfg.max_steps
    if not torch.cuda.is_available():
        assert trainer.precision == "32-true"
    assert resolve_strategy("auto", 2, 1) == "ddp"
    assert resolve_strategy("auto", 1, 2) == "ddp"
    assert resolve_strategy("ddp_spawn", 2, 1) == "ddp_spawn"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_strategy("fsdp", 1, 1)


def test_bf16_on_a_cpu_without_native_bfloat16_is_warned_about(monkeypatch, caplog):
    import train.trainer as trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="train.trainer"):
        assert trainer.resolve_precision("bf16-mixed") == "bf16-mixed"    # still what was asked for
    assert "without native bfloat16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="train.trainer"):
        assert trainer.resolve_precision("bf16-mixed") == "bf16-mixed"
        assert trainer.resolve_precision("auto") == "32-true" and trainer.resolve_precision("32") == "32-true"
    assert "bfloat16" not in caplog.text
