"""streams/heap.py: the young garbage is collected, survivors are frozen, and a reclaim frees frozen cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.heap import Heap


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


def test_settle_collects_the_young_garbage_and_freezes_the_survivors() -> None:
    heap = Heap(reclaim_seconds=0)
    kept = cycle()
    garbage = weakref.ref(cycle())  # unreachable at once: only the cyclic collector frees it
    assert garbage() is not None
    heap.settle()
    assert garbage() is None
    assert gc.get_freeze_count() > 0
    assert kept.other is not None


def frozen_then_dead(heap: Heap) -> weakref.ref[Node]:
    """A cycle alive when the heap settles, unreachable right after: only a reclaim can free it."""
    node = cycle()
    heap.settle()
    return weakref.ref(node)


def test_a_cycle_that_dies_while_frozen_waits_for_the_reclaim() -> None:
    heap = Heap(reclaim_seconds=0)
    dead = frozen_then_dead(heap)
    gc.collect()  # a full collection skips the permanent generation
    assert dead() is not None
    heap.reclaim()
    assert dead() is None
    assert gc.get_freeze_count() == 0


def test_settle_reclaims_once_the_interval_is_over() -> None:
    heap = Heap(reclaim_seconds=3600)
    dead = frozen_then_dead(heap)
    heap.settle()
    assert dead() is not None
    heap.reclaimed_at -= 3600
    heap.settle()
    assert dead() is None


def test_disabled_does_nothing() -> None:
    before = gc.get_freeze_count()
    Heap(enabled=False).settle()
    assert gc.get_freeze_count() == before


def test_a_heap_that_takes_over_turns_the_automatic_collections_off() -> None:
    heap = Heap(reclaim_seconds=0)
    heap.take_over()
    assert not gc.isenabled()
    garbage = weakref.ref(cycle())
    for _ in range(10_000):  # far past the allocation threshold that would have started a collection
        cycle()
    assert garbage() is not None, "an automatic collection ran"
    heap.settle()
    assert garbage() is None


def test_a_disabled_heap_leaves_the_automatic_collections_on() -> None:
    Heap(enabled=False).take_over()
    assert gc.isenabled()


def test_tick_settles_a_heap_that_no_batch_settled_for_idle_seconds() -> None:
    heap = Heap(reclaim_seconds=0, idle_seconds=5)
    heap.take_over()
    heap.settle()
    garbage = weakref.ref(cycle())
    heap.tick()
    assert garbage() is not None, "settled again too soon"
    heap.settled_at -= 5
    heap.tick()
    assert garbage() is None


def test_a_staged_batch_is_frozen_so_the_collection_after_its_commit_does_not_walk_it() -> None:
    heap = Heap(reclaim_seconds=0)
    heap.take_over()
    heap.settle()
    queued = [cycle() for _ in range(100)]  # a decoded batch waiting for its commit
    heap.staged()
    assert all(gc.is_tracked(node) for node in queued) and gc.get_freeze_count() >= 200
    assert not any(node in gc.get_objects(0) for node in queued[:3]), "no longer young: collections skip it"
    garbage = weakref.ref(cycle())  # what the commit itself allocated and dropped
    heap.settle()
    assert garbage() is None
    del queued


def test_a_disabled_heap_does_not_freeze_staged_batches() -> None:
    before = gc.get_freeze_count()
    Heap(enabled=False).staged()
    assert gc.get_freeze_count() == before
