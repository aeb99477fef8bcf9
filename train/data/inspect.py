"""``dalle data inspect``: stream shards through the training decode path and count.

The report says how many samples training would use and why the others are
skipped, per reason, with the same :class:`~common.samples.SampleDecoder`
the loader uses (centre crop, no shuffling, one process). Token shards (samples
with ``codes.npy``, from ``dalle tokens``) are read as token shards, with the
transformer loader's :class:`~train.data.tokens.TokenDecoder`. Hidden members
(``._x.jpg``) are counted as ``hidden_member``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from common.samples import SampleDecoder, SkipCounter, read_samples
from common.shards import expand_sources
from train.config import DataConfig

log = logging.getLogger(__name__)


@dataclass
class InspectReport:
    """Counts from one pass over the shards."""

    shards: int = 0                       # shards named by the sources
    opened: int = 0                       # shards that could be opened and read from
    usable: int = 0                       # samples training would use
    token_samples: int = 0                # of those, token samples (codes.npy) rather than images
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> samples skipped
    bad_shards: list[str] = field(default_factory=list)     # "url: error" of unreadable shards
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Samples seen (usable + skipped, shard-level errors excluded)."""
        return self.usable + sum(v for k, v in self.skipped.items() if k not in ("shard_error", "hidden_member"))


class _ShardErrors:
    """webdataset handler that records the errors of the shard being read."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []

    def __call__(self, exn: Exception) -> bool:
        self.errors.append(exn)
        return True


def inspect_shards(sources: Any, data_cfg: DataConfig, *, limit: int | None = None) -> InspectReport:
    """Decode every sample of ``sources`` as training would and count the outcomes.

    Args:
        sources: shard sources (paths, directories, globs, brace patterns, ``pipe:``).
        data_cfg: decode settings (resolution derived from the preset's VQVAE).
        limit: stop after this many samples (None: all).
    Returns:
        An :class:`InspectReport`.
    Raises:
        ValueError: no shard matches the sources, or none of them can be opened.
    """
    start = time.time()
    urls = expand_sources(sources)
    from train.data.tokens import CODES_EXT, TokenDecoder

    counter = SkipCounter()
    decode = SampleDecoder(data_cfg, counter, train=False)
    decode_tokens = TokenDecoder(data_cfg, counter)
    report = InspectReport(shards=len(urls))
    for url in urls:
        handler = _ShardErrors()
        seen = 0
        for sample in read_samples([url], counter, handler=handler):
            seen += 1
            tokens = CODES_EXT in sample
            if (decode_tokens if tokens else decode)(sample) is not None:
                report.usable += 1
                report.token_samples += int(tokens)
            if limit is not None and report.usable + counter.total >= limit:
                break
        if handler.errors:
            counter.add("shard_error", len(handler.errors))
            report.bad_shards.append(f"{url}: {handler.errors[0]!r}")
        if seen or not handler.errors:
            report.opened += 1
        if limit is not None and report.usable + counter.total >= limit:
            break
    report.skipped = counter.drain()
    report.seconds = time.time() - start
    if report.opened == 0:
        raise ValueError(f"none of the {len(urls)} shard(s) could be opened; first error: "
                         f"{report.bad_shards[0] if report.bad_shards else 'unknown'}")
    return report


def format_report(report: InspectReport) -> str:
    """Human-readable lines for the CLI."""
    lines = [f"shards: {report.opened}/{report.shards} readable",
             f"samples: {report.total} seen, {report.usable} usable "
             f"({100.0 * report.usable / max(report.total, 1):.1f}%)"
             + (f", {report.token_samples} of them token samples" if report.token_samples else "")]
    if report.skipped:
        lines.append("skipped:")
        width = max(len(k) for k in report.skipped)
        for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason:<{width}}  {n}")
    else:
        lines.append("skipped: none")
    for bad in report.bad_shards[:10]:
        lines.append(f"unreadable: {bad}")
    if len(report.bad_shards) > 10:
        lines.append(f"... and {len(report.bad_shards) - 10} more unreadable shard(s)")
    lines.append(f"time: {report.seconds:.1f} s")
    return "\n".join(lines)
