"""pass@k and reranked pass@1 against exact enumeration over subsets."""
import itertools
import math

import pytest

from evaluation.passk import pass_at_k, rerank_pass_at_1


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_equals_subset_enumeration(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            exact = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_stable_for_large_n():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100), rel=1e-9)
    assert pass_at_k(10_000, 0, 100) == 0.0 and pass_at_k(200, 150, 100) == 1.0


def test_pass_at_k_rejects_bad_input():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


@pytest.mark.parametrize("seed", range(5))
def test_rerank_equals_enumeration(seed):
    import random
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    scores = [rng.choice([0.1, 0.5, 0.9, rng.random()]) for _ in range(n)]   # ties included
    passed = [rng.random() < 0.5 for _ in range(n)]
    for m in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), m))
        exact = sum(passed[min(s, key=lambda i: (-scores[i], i))] for s in subsets) / len(subsets)
        assert rerank_pass_at_1(scores, passed, m) == pytest.approx(exact, abs=1e-12)


def test_rerank_limits():
    scores, passed = [3.0, 2.0, 1.0], [False, True, True]
    assert rerank_pass_at_1(scores, passed, 1) == pytest.approx(2 / 3)       # m=1: plain pass@1
    assert rerank_pass_at_1(scores, passed, 3) == 0.0                          # the best score fails
    with pytest.raises(ValueError):
        rerank_pass_at_1(scores, passed, 4)
