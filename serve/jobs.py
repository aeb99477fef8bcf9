"""One worker thread runs requests in order; a bounded queue holds the ones waiting.

The model is used by one thread only, so requests never interleave on it. A full
queue refuses at once (the page says "busy, try again") instead of piling up
memory; finished jobs are kept for ``keep`` more requests so their images can be
downloaded, then dropped.
"""
from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room for another request."""


@dataclass
class Job:
    """One request: its state, progress and (when done) its result."""

    kind: str                                  # "generate" or "edit"
    run: Callable[["Job"], Any]                # does the work; calls job.report(done, total)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: str = "queued"                      # queued -> running -> done | error
    done: int = 0                              # codes sampled so far
    total: int = 0                             # codes to sample
    result: Any = None
    error: str | None = None
    number: int = 0                            # arrival order
    started: float | None = None
    finished: float | None = None

    def report(self, done: int, total: int) -> None:
        """Progress callback handed to the sampler."""
        self.done, self.total = int(done), int(total)


class JobQueue:
    """A bounded FIFO of :class:`Job` and the thread that runs them.

    Args:
        size: jobs that may wait behind the running one.
        keep: finished jobs kept for download.
    """

    def __init__(self, size: int = 4, keep: int = 32):
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=size)
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep
        self._counter = itertools.count(1)
        self._running = 0                      # number of the job being run (0: none)
        self._thread = threading.Thread(target=self._work, name="dalle-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``; raises :class:`QueueFull` when the queue has no room."""
        with self._lock:
            job.number = next(self._counter)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"busy: {self._queue.maxsize} requests are already waiting; try again in a "
                                "moment") from None
            self._jobs[job.id] = job
            self._evict()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def ahead_of(self, job: Job) -> int:
        """Requests that will run before ``job`` (the running one included)."""
        if job.state != "queued":
            return 0
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.number < job.number and j.state in ("queued", "running"))

    def close(self) -> None:
        """Stop the worker after the running job (queued ones are dropped)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _evict(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in ("done", "error")]
        for j in finished[:max(0, len(finished) - self._keep)]:
            del self._jobs[j.id]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.state, job.started = "running", time.monotonic()
            try:
                job.result = job.run(job)
                job.state = "done"
            except Exception as e:   # reported on the page, logged here with its traceback
                from serve.requests import RequestError
                if isinstance(e, (RequestError, ValueError)):
                    job.error = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
                else:
                    log.exception("request %s failed", job.id)
                    job.error = f"internal error ({e.__class__.__name__}); see the server log"
                job.state = "error"
            finally:
                job.finished = time.monotonic()
                with self._lock:
                    self._evict()
