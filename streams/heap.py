"""Keep Python's cyclic garbage collector off the detectors' state, and out of the batch.

A worker holds millions of long-lived objects (per-user detector state) that never form reference cycles, and
a full collection walks every one of them: offline over 226k events and 3,000 users, 13 full collections took
10 s of a 40 s run, and the pause grows with the number of tracked users (the latency tail grew with it).
After each committed batch :meth:`Heap.settle` collects the young generations, where a batch's garbage is,
and moves every surviving object into the permanent generation (``gc.freeze``), which collections skip. An
object frozen while alive that later becomes part of a garbage cycle would stay until the next reclaim:
every ``reclaim_seconds`` the heap is unfrozen and collected in full once (one pause, logged).

A young collection walks every young object still alive, and in a busy worker most of those were the batches
queued behind the commit, decoded and waiting (~32k objects per 5,000 events; 5.5 ms to walk one queued batch,
88 ms for six, offline): py-spy put 11.6% of a worker's GIL time at peak in the collection after each commit.
:meth:`Heap.staged` freezes a batch as soon as it is queued instead, so the collection after a commit walks only
what that commit allocated. (Batches now wait undecoded and are decoded by the committer: their records are
``Message`` Structs with ``gc=False``, which no collection walks anyway; freezing at staging still takes the batch's
list and whatever the event loop allocated while fetching out of the next young collection.)

A process whose heap this manages (:meth:`Heap.take_over`: the worker, rebuild) also turns the automatic
collections off. Left on, they ran every 700 allocations in the middle of a batch and walked the objects of the
batch in flight, which are freed by reference counting as soon as it is committed: 5,471 young and 29 full
collections took 3.4 s of a 20 s bench run. A batch's cycles, if any, wait for the end of the batch instead, and
:meth:`Heap.tick` settles an idle process every ``idle_seconds``.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("guardstream.heap")


class Heap:
    def __init__(self, *, enabled: bool = True, reclaim_seconds: float = 3600.0, idle_seconds: float = 5.0) -> None:
        self.enabled = enabled
        self.reclaim_seconds = reclaim_seconds
        self.idle_seconds = idle_seconds
        self.reclaimed_at = self.settled_at = time.monotonic()

    def take_over(self) -> None:
        """From now on only this heap collects (at batch boundaries): automatic collections off."""
        if self.enabled:
            gc.disable()

    def staged(self) -> None:
        """A fetched batch was queued behind the commit: freeze it (and whatever else is young) at once, so no
        collection walks it while it waits. Its objects are freed by reference counting after its commit."""
        if self.enabled:
            gc.freeze()

    def settle(self) -> None:
        if not self.enabled:
            return
        gc.collect(1)
        now = self.settled_at = time.monotonic()
        if self.reclaim_seconds and now - self.reclaimed_at >= self.reclaim_seconds:
            self.reclaim()
        gc.freeze()

    def tick(self) -> None:
        """Settle if no batch did for ``idle_seconds`` (an idle worker still has web requests and timers)."""
        if self.enabled and time.monotonic() - self.settled_at >= self.idle_seconds:
            self.settle()

    def reclaim(self) -> None:
        """One full collection over everything, frozen objects included."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        self.reclaimed_at = time.monotonic()
        log.info(
            "full garbage collection: %d unreachable objects, %.0f ms", found, 1000 * (time.perf_counter() - started)
        )
