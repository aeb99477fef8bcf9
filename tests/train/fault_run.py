"""A training run that can kill itself with SIGKILL, for the fault-injection tests.

    python -m tests.train.fault_run '[SPEC, SPEC, ...]'

runs each SPEC in turn in a forked child (so the imports are paid once) and prints the
children's exit codes as JSON (-9: killed). SPEC: {"stage": "dalle"|"vqvae", "out": run dir, "shards": [...], "tokenizer": path,
"overrides": [...], "devices": 1|2, "kill": null | ["step", N] | ["write", N] | ["record", N]}

- ``["step", N]``: SIGKILL just before the batch after step N (its checkpoint, if any, is written);
- ``["write", N]``: SIGKILL half-way through writing the checkpoint of step N (half a temporary file);
- ``["record", N]``: SIGKILL after the checkpoint of step N is renamed into place, before its record.

Two ranks run as ``ddp_fork`` (gloo on CPU). Every rank appends ``{"step", "loss", "keys"}`` lines to ``out/losses-rank{R}.jsonl`` after each step.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class LossLog(L.Callback):
    def __init__(self, out: str, kill: list | None):
        self.out, self.kill = out, kill

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.kill and self.kill[0] == "step" and trainer.global_step == self.kill[1]:
            _die()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(Path(self.out) / f"losses-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step - 1, "loss": float(loss),
                                "keys": list(batch.get("keys", []))}) + "\n")
        if self.kill and self.kill[0] in ("write", "record"):
            _arm(self.kill, trainer.global_step)


def _arm(kill: list, step: int) -> None:
    """Make the checkpoint writes of ``step`` (about to happen) die at the chosen moment."""
    if step != kill[1]:
        return
    import train.trainer as T

    if kill[0] == "write":
        def half_then_die(checkpoint, path):
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            data = buf.getvalue()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            _die()
        T._save_synced = half_then_die
    else:
        def die_before_record(path, step):
            _die()
        T.write_record = die_before_record


def main(spec: dict) -> None:
    torch.set_num_threads(1)
    from train.config import load_preset

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    stage = spec["stage"]
    preset = load_preset("tiny", spec.get("overrides", []))
    cb = LossLog(str(out), spec.get("kill"))
    kw = dict(accelerator="cpu", enable_model_summary=False)
    if spec.get("devices", 1) > 1:          # forked ranks (gloo) in this throw-away process: no re-imports
        kw.update(strategy="ddp_fork", devices=spec["devices"])
    if stage == "dalle":
        from train.dalle_fit import fit_dalle
        fit_dalle(preset, out, tokenizer_path=spec["tokenizer"], vqvae_dir=spec.get("vqvae"),
                  token_shards=spec["shards"], callbacks=[cb], enable_progress_bar=False, **kw)
    else:
        from train.vqvae_fit import fit_vqvae
        fit_vqvae(preset, out, train_shards=spec["shards"], callbacks=[cb], enable_progress_bar=False,
                  trainer_kwargs=kw)


def run_all(specs: list[dict]) -> list[int]:
    """Each spec in a forked child of this process (imports paid once), one after the other.

    Returns:
        Each child's wait status as ``os.waitstatus_to_exitcode`` gives it (``-9``: SIGKILLed).
    """
    codes = []
    for spec in specs:
        pid = os.fork()
        if pid == 0:                                  # the child: train, then leave without cleanup
            code = 0
            try:
                main(spec)
            except BaseException:                     # noqa: BLE001 - reported through the exit status
                import traceback
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    return codes


if __name__ == "__main__":
    print(json.dumps(run_all(json.loads(sys.argv[1]))))
