"""Temperature, top-k and top-p on hand-made logits."""
import math

import pytest
import torch

from dalle.filters import apply_temperature, filter_logits, top_k_filter, top_p_filter

INF = float("inf")


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def top_p(logits: torch.Tensor, p: float) -> int:
    """Number of tokens the nucleus keeps in the first row."""
    return len(kept(top_p_filter(logits, p))[0])


def test_temperature_divides():
    logits = torch.tensor([[1.0, -2.0, 4.0]])
    assert torch.equal(apply_temperature(logits, 2.0), torch.tensor([[0.5, -1.0, 2.0]]))
    assert torch.equal(apply_temperature(logits, 1.0), logits)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(logits, bad)


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0, -1.0],
                           [5.0, -5.0, 0.5, 0.4, 9.0]])
    out = top_k_filter(logits, 2)
    assert kept(out) == [[1, 2], [0, 4]]
    assert torch.equal(out[0], torch.tensor([-INF, 3.0, 2.0, -INF, -INF]))
    assert kept(top_k_filter(logits, 1)) == [[1], [4]]
    assert torch.equal(top_k_filter(logits, 5), logits)
    assert torch.equal(top_k_filter(logits, 99), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_top_k_keeps_ties_with_the_kth():
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert kept(top_k_filter(logits, 1)) == [[1, 2]]


def test_top_p_keeps_the_smallest_nucleus():
    # probabilities 1/2, 1/4, 1/8, 1/8 in a shuffled vocabulary order
    probs = torch.tensor([[0.125, 0.5, 0.125, 0.25]])
    logits = probs.log()
    assert kept(top_p_filter(logits, 0.4)) == [[1]]           # 0.5 >= 0.4
    assert kept(top_p_filter(logits, 0.5)) == [[1]]           # exactly p is enough (exact in float32)
    assert kept(top_p_filter(logits, 0.75)) == [[1, 3]]
    assert kept(top_p_filter(logits, 0.6)) == [[1, 3]]        # 0.5 + 0.25 >= 0.6
    assert top_p(logits, 0.8) == 3                            # needs one of the 1/8s
    assert kept(top_p_filter(logits, 0.9)) == [[0, 1, 2, 3]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    # the kept logits are unchanged
    out = top_p_filter(logits, 0.6)
    assert out[0, 1] == logits[0, 1] and out[0, 3] == logits[0, 3]
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="top_p"):
            top_p_filter(logits, bad)


def test_top_p_always_keeps_the_most_likely_token_per_row():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    assert kept(top_p_filter(logits, 1e-6)) == [[0], [2]]


def test_filter_order_is_temperature_then_top_k_then_top_p():
    # temperature 0.5 sharpens [log .5, log .3, log .2] to probabilities ~ [.66, .24, .11]
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    assert kept(filter_logits(logits, top_p=0.6)) == [[0, 1]]
    assert kept(filter_logits(logits, temperature=0.5, top_p=0.6)) == [[0]]
    out = filter_logits(logits, temperature=2.0, top_k=2, top_p=1.0)
    assert kept(out) == [[0, 1]]
    assert math.isclose(out[0, 0].item(), math.log(0.5) / 2, rel_tol=1e-6)
    assert out.dtype == torch.float32
    assert filter_logits(logits.double()).dtype == torch.float32
