"""One thread that writes a run's metric points, so that the training step never waits for
the tracking store.

Written synchronously, a slow server or an SQLite file locked by another job stalls rank 0
inside its logging call while every other rank waits for it at the next all-reduce. Here the
training loop only queues; one daemon thread writes, in the order queued (each step's points
reach the store once, in step order), merging what queued while it wrote into fewer calls.
The caller chooses where to wait: :meth:`MetricWriter.flush` (at checkpoints and at the run's
end) returns once every queued point is written and raises if a write failed since the last
flush, so that a lost point stops the job there instead of vanishing; at interpreter exit
whatever is still queued is written (a crash, or a job stopped before its end).

MLflow's own ``log_batch(synchronous=False)`` (3.x) is not used: it hands batches to a pool of
ten threads, so writes race each other for the SQLite lock and land out of order, it retries
nothing, and a failure is only logged unless every returned future is kept and waited on.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from msgfm.errors import MsgfmError

log = logging.getLogger(__name__)
T = TypeVar("T")


class MetricWriteError(MsgfmError):
    """Metric points queued for the tracking store were not written."""


class MetricWriter(Generic[T]):
    """Writes queued points with ``write`` on a daemon thread started by the first :meth:`put`.

    ``write`` takes at most ``max_items`` points per call (the store's batch limit); a queue of
    ``capacity`` batches bounds memory. One producer: the thread that puts also flushes.
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        name: str,
        max_items: int,
        capacity: int = 10_000,
    ) -> None:
        self._write = write
        self._name = name
        self._max_items = max_items
        self._queue: queue.Queue[list[T]] = queue.Queue(maxsize=capacity)
        self._failures: list[Exception] = []
        self._thread: threading.Thread | None = None

    def put(self, points: Sequence[T]) -> None:
        """Queue points and return at once; waits only while ``capacity`` batches are queued
        (the store is hours behind: back-pressure rather than unbounded memory)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            atexit.register(self._drain_at_exit)
        self._queue.put(list(points))

    def flush(self) -> None:
        """Return once every queued point is written; raise if any write failed since the last
        flush (each failure is reported once)."""
        self._queue.join()
        if self._failures:
            failures, self._failures = self._failures, []
            raise MetricWriteError(
                f"{self._name}: {len(failures)} metric write(s) failed, "
                f"points lost; first: {failures[0]}"
            ) from failures[0]

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            taken = 1
            while len(batch) < self._max_items:
                try:
                    batch.extend(self._queue.get_nowait())
                except queue.Empty:
                    break
                taken += 1
            written = 0
            try:
                for start in range(0, len(batch), self._max_items):
                    chunk = batch[start : start + self._max_items]
                    self._write(chunk)
                    written += len(chunk)
            except Exception as exc:  # kept for flush(), which raises it in the training thread
                lost = len(batch) - written
                log.error("%s: %d metric points not written: %s", self._name, lost, exc)
                self._failures.append(exc)
            finally:
                for _ in range(taken):
                    self._queue.task_done()

    def _drain_at_exit(self) -> None:
        """Interpreter exit: write what is still queued (daemon threads still run here)."""
        try:
            self.flush()
        except MetricWriteError as exc:
            log.error("%s", exc)
