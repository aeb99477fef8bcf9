"""scripts/learning_curve.py: a run continued with --init-from counts its steps from the first run's start."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("learning_curve", ROOT / "scripts" / "learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(run: Path, rows: list[tuple[int, float | None]]) -> Path:
    (run / "logs").mkdir(parents=True)
    lines = ["step,train/loss,val/loss,val/image_loss,val/text_loss"]
    lines += [f"{step},0.9,,," if loss is None else f"{step},,{loss},{loss - 0.1},{loss + 0.1}" for step, loss in rows]
    (run / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_held_out_losses_of_a_continuation_follow_the_first_run(tmp_path):
    lc = _script()
    first = _metrics(tmp_path / "run", [(10, None), (249, 1.5), (499, 0.8)])
    second = _metrics(tmp_path / "run2", [(249, 0.6), (300, None), (499, 0.5)])
    rows = lc.merged_val_losses([first, second], [0, 500])
    assert [r["step"] for r in rows] == [249, 499, 749, 999]
    assert [r["val/loss"] for r in rows] == [1.5, 0.8, 0.6, 0.5]
    assert rows[-1]["val/image_loss"] == pytest.approx(0.4)
    assert lc.merged_val_losses([first], [0]) == lc.val_losses(first)
