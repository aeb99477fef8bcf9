"""pass@k and reranked pass@1 from n samples per prompt, unbiased and numerically stable."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n - c, k) / C(n, k), from c passing samples out of n.

    Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms a large binomial.

    Args:
        n: samples drawn for the prompt.
        c: samples that passed (0 <= c <= n).
        k: the budget (1 <= k <= n).
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def rerank_pass_at_1(scores: Sequence[float], passed: Sequence[bool], m: int) -> float:
    """Expected pass of the best-scoring of m samples drawn without replacement from the n given.

    The sample ranked r (0 = highest score, ties broken by index) is the best of a random m-subset
    with probability C(n - 1 - r, m - 1) / C(n, m); this sums that over the passing samples.

    Args:
        scores: the reranking score of each sample (higher is better, e.g. mean log-probability).
        passed: whether each sample passed the checker.
        m: candidates per reranked output (1 <= m <= n).
    """
    n = len(scores)
    if len(passed) != n or not 1 <= m <= n:
        raise ValueError(f"need len(scores) == len(passed) and 1 <= m <= n, got {n}, {len(passed)}, m={m}")
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    total, p = 0.0, m / n                      # p = C(n-1, m-1) / C(n, m) for rank 0
    for r, i in enumerate(order):
        if r > n - m:
            break
        if passed[i]:
            total += p
        # C(n-2-r, m-1) / C(n-1-r, m-1) = (n-1-r-(m-1)) / (n-1-r)
        p = p * (n - r - m) / (n - 1 - r) if n - 1 - r > 0 else 0.0
    return total
