"""``guardstream rebuild``: recompute a store from the decisions topic, from offset 0.

The topic is the source of truth while Kafka retains it; the store is a deterministic function of it
(same code, same settings, same pseudonym key). Rebuild reads every partition from the beginning with
a plain consumer (no group: it does not disturb a running worker's offsets), runs exactly the worker's
batch path (decode, dedupe, detectors, one DuckDB transaction per batch) and stops once the topic has
been quiet for ``idle_seconds``. Nothing is published: dead letters and alerts reached their topics when
the events first went through, so the rebuilt outbox is marked published.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.broker import client_kwargs
from streams.detector_config import DetectorConfigError
from streams.heap import Heap
from streams.pipeline import DeadLetter, Message, Pipeline
from streams.settings import PrivacySettingsError, Settings
from streams.store import Store, open_store
from streams.worker import build_pipeline, detector_config, warn_if_raw_user_ids


class RebuildError(RuntimeError):
    pass


@dataclass(slots=True)
class RebuildResult:
    messages: int = 0
    decisions: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    alert_changes: int = 0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> next offset reached
    seconds: float = 0.0


def commit_batch(pipeline: Pipeline, messages: list[Message], result: RebuildResult) -> None:
    prepared = pipeline.prepare(messages)
    failed: dict[str, DeadLetter] = {}
    while (outcome := pipeline.commit(prepared, failed)).retry:
        failed.update(outcome.retry)  # detector errors: stored, dead-lettered in the table, not re-run
    result.messages += len(messages)
    result.decisions += len(outcome.new)
    result.duplicates += outcome.duplicates
    result.dead_letters += len(prepared.dead_letters) + len(outcome.dead_letters)
    result.alert_changes += len(outcome.changes)


async def rebuild(
    settings: Settings,
    *,
    idle_seconds: float = 5.0,
    batch_size: int | None = None,
    progress: Callable[[RebuildResult], None] | None = None,
) -> RebuildResult:
    try:  # the store it writes is pseudonymized like the workers' (or raw on purpose: --allow-raw-user-ids)
        warn_if_raw_user_ids(settings)
    except PrivacySettingsError as exc:
        raise RebuildError(str(exc)) from exc
    if settings.db.exists():
        raise RebuildError(
            f"{settings.db} exists: rebuild writes a new store. Move it away (or pass --db NEW.duckdb) first."
        )
    try:  # before the new store exists: a config that cannot be used must not leave an empty one behind
        config = detector_config(settings)
    except DetectorConfigError as exc:
        raise RebuildError(str(exc)) from exc
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=2 * 1024 * 1024
    )
    await consumer.start()
    store: Store | None = None
    started = time.monotonic()
    result = RebuildResult()
    try:
        partitions = consumer.partitions_for_topic(settings.decisions_topic)
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.decisions_topic)
        if not partitions:
            raise RebuildError(f"topic {settings.decisions_topic!r} does not exist on {settings.bootstrap}")
        tps = [TopicPartition(settings.decisions_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        store = open_store(settings)
        pipeline = build_pipeline(settings, store, config)
        pipeline.assign(set(partitions))
        size = batch_size or settings.batch_max_events
        heap = Heap(enabled=settings.gc_freeze, reclaim_seconds=settings.gc_reclaim_seconds)
        heap.take_over()
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_seconds:
            fetched = await consumer.getmany(timeout_ms=500, max_records=size)
            records = [r for batch in fetched.values() for r in batch]
            if not records:
                continue
            quiet_since = time.monotonic()
            messages = [Message(r.partition, r.offset, r.key, r.value, r.timestamp or 0) for r in records]
            commit_batch(pipeline, messages, result)
            heap.settle()
            for m in messages:
                result.partitions[m.partition] = max(result.partitions.get(m.partition, 0), m.offset + 1)
            if progress is not None:
                progress(result)
        pending = store.unpublished_changes()
        store.mark_published([c["change_id"] for c in pending])
    finally:
        await consumer.stop()
        if store is not None:
            store.close()
    result.seconds = time.monotonic() - started - idle_seconds
    return result
