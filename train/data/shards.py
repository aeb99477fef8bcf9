"""Moved to :mod:`common.shards` (the synthetic builders and evaluation write shards without training code).

Kept as a re-export while branches that import ``train.data.shards`` land; import ``common.shards``.
"""
from common.shards import ShardWriter, count_samples, expand_sources

__all__ = ["ShardWriter", "count_samples", "expand_sources"]
