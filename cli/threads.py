"""How many CPU threads a command's torch work uses.

torch starts one OpenMP thread per core, which is the fastest choice on an idle machine and a poor
one on a busy one: with both cores of a 2-core machine taken by other jobs, `dalle generate` took
22 s with torch's 2 threads and 6.4 s with one (BENCHMARKS.md, "Threads on a shared CPU"). So the
inference commands take ``--threads N``, and by default (``auto``) use the cores the other jobs
leave free (cores minus the 1-minute load average, at least one, at most torch's own default),
unless the user already chose through ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.
"""
from __future__ import annotations

import os

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def auto_threads(cores: int, load: float | None, default: int) -> int:
    """Threads for a process starting on a machine with ``cores`` cores and 1-minute load ``load``
    (None: unknown): the cores the running jobs leave free, at least 1, at most ``default``."""
    if load is None:
        return max(1, default)
    return max(1, min(default, cores - int(round(load))))


def configure_threads(threads: int | None, env: dict[str, str] | None = None) -> int | None:
    """Set torch's intra-op threads for this process; return the number set (None: left alone).

    Args:
        threads: the user's ``--threads`` (None: ``auto``).
        env: the environment to read (default ``os.environ``).
    """
    import torch

    env = os.environ if env is None else env
    if threads is None:
        if any(env.get(name) for name in THREAD_ENV):
            return None                      # the user chose already
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):    # not available on this platform
            load = None
        threads = auto_threads(os.cpu_count() or 1, load, torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads
