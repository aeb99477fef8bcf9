"""scripts/learning_curve.py: a run continued with --init-from counts its steps from the first run's start."""
import math
from pathlib import Path

import pytest

from tests.helpers import load_script


def _metrics(run: Path, rows: list[tuple[int, float | None]]) -> Path:
    (run / "logs").mkdir(parents=True)
    lines = ["step,train/loss,val/loss,val/image_loss,val/text_loss"]
    lines += [f"{step},0.9,,," if loss is None else f"{step},,{loss},{loss - 0.1},{loss + 0.1}" for step, loss in rows]
    (run / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_held_out_losses_of_a_continuation_follow_the_first_run(tmp_path):
    lc = load_script("learning_curve")
    first = _metrics(tmp_path / "run", [(10, None), (249, 1.5), (499, 0.8)])
    second = _metrics(tmp_path / "run2", [(249, 0.6), (300, None), (499, 0.5)])
    rows = lc.merged_val_losses([first, second], [0, 500])
    assert [r["step"] for r in rows] == [249, 499, 749, 999]
    assert [r["val/loss"] for r in rows] == [1.5, 0.8, 0.6, 0.5]
    assert rows[-1]["val/image_loss"] == pytest.approx(0.4)
    assert lc.merged_val_losses([first], [0]) == lc.val_losses(first)


def test_the_prediction_recovers_a_power_law_and_solves_for_the_target():
    lc = load_script("learning_curve")
    l_inf, a, alpha = 0.3, 40.0, 0.5
    law = lambda s: l_inf + a * s ** -alpha                      # noqa: E731
    fit = lc.power_law_fit([1e4, 4e4, 1.6e5, 6.4e5], [law(s) for s in (1e4, 4e4, 1.6e5, 6.4e5)])
    assert fit["L_inf"] == pytest.approx(l_inf, abs=2e-3) and fit["alpha"] == pytest.approx(alpha, rel=0.02)
    assert lc.samples_for_loss(fit, law(1e6)) == pytest.approx(1e6, rel=0.05)
    assert lc.samples_for_loss(fit, 0.29) is None                  # below the asymptote: never
    with pytest.raises(ValueError, match=">= 3"):
        lc.power_law_fit([1e4, 2e4], [1.0, 0.9])
    # 10 samples per step; pass@1 = exp(2 - 10 * loss) on the evaluated checkpoints
    steps = [1000, 4000, 16000, 64000]
    losses = [{"step": st, "val/image_loss": law(10 * st)} for st in steps]
    points = [{"step": st, "samples": 10 * st, "in_distribution": math.exp(2 - 10 * law(10 * st))} for st in steps]
    out = lc.predict(losses, points, steps, batch=10, target=math.exp(2 - 10 * law(1e7)), samples_per_second=100)
    assert out["loss_for_target"] == pytest.approx(law(1e7), rel=1e-6)
    assert out["samples_for_target"] == pytest.approx(1e7, rel=0.1)
    assert out["hours_for_target"] == pytest.approx(1e7 / 100 / 3600, rel=0.1)
    unreachable = lc.predict(losses, points, steps, batch=10, target=0.99, samples_per_second=100)
    assert unreachable["samples_for_target"] is None and unreachable["loss_for_target"] < l_inf


def test_a_prior_curve_is_kept_up_to_where_the_new_run_continues_it():
    lc = load_script("learning_curve")
    prior = {"val": [{"step": 249, "val/loss": 1.0}, {"step": 499, "val/loss": 0.8}, {"step": 749, "val/loss": 0.7}],
             "eval": [{"step": 500, "in_distribution": 0.1}, {"step": 750, "in_distribution": 0.2}]}
    losses, points, ends = lc.with_prior(prior, [500, 750], 500, [{"step": 749, "val/loss": 0.6}],
                                         [{"step": 1000, "in_distribution": 0.3}], [999])
    # the prior's points after step 500 belong to a run that the new one replaces
    assert [r["step"] for r in losses] == [249, 499, 749] and losses[-1]["val/loss"] == 0.6
    assert [pt["step"] for pt in points] == [500, 1000]
    assert ends == [500, 999]
