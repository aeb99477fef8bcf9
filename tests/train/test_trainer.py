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
    assert os.listdir(path.parent) == ["last.ckpt"]   # no temporary file left behind


def test_atomic_checkpoint_has_normal_file_permissions(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert path.stat().st_mode & 0o777 == default_mode()   # not mkstemp's 0600


def test_latest_checkpoint_prefers_last(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / "step00000010.ckpt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "step00000010.ckpt"
    (d / "last.ckpt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "last.ckpt"


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
