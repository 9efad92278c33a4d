"""How Faust hands fetched records to the pipeline: three adaptations of Faust's consumer, each measured.

Faust owns the consumer group (assignment, rebalances, offset commits), the producer, the web server and the
timers. What it does per message on the way from a fetch to an agent (a ``ConsumerMessage`` and an ``Event``
per record, the conductor's routing, the stream's buffer and iterator, a serializer call for key and value, an
ack each) was most of a worker's time outside the detectors, for a pipeline that works in batches anyway. So:

* :func:`set_fetch_max_wait`: Faust hard-codes a 1.5 s fetch wait; tansu holds every fetch for all of it.
* :func:`deliver_without_race`: the stock per-message path, without the ``wait_first`` race per message.
* :func:`deliver_batches`: the drain loop hands every fetched record batch of one topic to a handler as one
  list of :class:`streams.pipeline.Message`, and :func:`ack_messages` acks a committed batch in one step.
  Records of any other topic take Faust's own path. Delivery stays ordered per partition, one batch at a time:
  the drain loop awaits the handler (a bounded queue) before it fetches again, so a slow store holds fetching
  back as the stream buffer did.

The consumer patches call into Faust's internals (faust-streaming 0.15): :func:`deliver_batches` checks that
what it uses is there and leaves Faust's own path in place otherwise.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from streams.pipeline import Message

log = logging.getLogger("guardstream.delivery")

BatchHandler = Callable[[list[Message]], Awaitable[None]]

# what deliver_batches and ack_messages use of faust.transport.consumer.Consumer
_CONSUMER_INTERNALS = (
    "_wait_next_records",
    "_read_offset",
    "_buffered_partitions",
    "_add_gap",
    "_acked",
    "_acked_index",
    "_committed_offset",
    "_n_acked",
    "_commit_every",
    "flow_active",
    "perform_seek",
    "callback",
    "suspend_flow",
    "_to_message",
)
# app -> (topic, handler): which apps take batches, and of which topic
_routes: weakref.WeakKeyDictionary[Any, tuple[str, BatchHandler]] = weakref.WeakKeyDictionary()


def set_fetch_max_wait(ms: int) -> None:
    """Faust builds its worker consumer with ``fetch_max_wait_ms=1500`` and no setting for it. A broker that
    answers a fetch as soon as data is there (Kafka) makes that an idle-time value only; tansu holds every
    fetch for the whole wait, which put ~1.5 s into every alert's latency. Set it on the consumer Faust
    creates, before it starts."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    original = getattr(create, "__wrapped__", create)

    @functools.wraps(original)
    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms  # read by aiokafka when the consumer starts its fetcher
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def deliver_without_race() -> None:
    """Faust's consumer loop hands each fetched message to the agents with ``wait_first(callback(message),
    suspend_flow.wait())``: four futures, an ``asyncio.wait`` and three cancellations per message (a third of
    Faust's per-message cost in py-spy), so that a callback blocked on a full stream buffer is abandoned if a
    rebalance suspends the flow. Await the callback directly while the flow runs; when it is suspended, or for any
    other ``wait_first`` call, Faust's own path runs. A blocked callback is not stuck: the agent keeps draining
    its stream into the commit queue, which ``on_partitions_revoked`` empties (``Service.drain``), and the
    rebalance tests (tests/integration/test_scale_out.py) cover kills, joins and clean stops under load."""
    from asyncio import Event

    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    flow_wait = Event.wait.__code__
    original = getattr(Consumer.wait_first, "__wrapped__", Consumer.wait_first)

    @functools.wraps(original)
    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if (
            timeout is None
            and len(coros) == 2
            and getattr(coros[1], "cr_code", None) is flow_wait
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
        ):
            callback, flow = coros
            flow.close()  # the suspend_flow.wait() coroutine, never started
            return WaitResults([callback], [await callback], False)
        return await original(self, *coros, timeout=timeout)

    Consumer.wait_first = wait_first  # type: ignore[method-assign]


def deliver_batches(app: Any, topic: str, handler: BatchHandler) -> None:
    """Route every fetched record batch of ``topic`` to ``handler`` instead of Faust's per-message path.

    ``handler`` gets the records of one fetch, in offset order per partition, and must ack them with
    :func:`ack_messages` once they are committed (never before: Kafka's committed offset must not run ahead of the
    store). A consumer that lacks what this uses (another Faust version) keeps Faust's own path, with a warning:
    the records then reach the topic's agent, one by one."""
    from faust.transport.consumer import Consumer

    _routes[app] = (topic, handler)
    original = getattr(Consumer._drain_messages, "__wrapped__", Consumer._drain_messages)

    @functools.wraps(original)
    async def drain_messages(self: Any, fetcher: Any) -> None:
        route = _routes.get(self.app)
        missing = [name for name in _CONSUMER_INTERNALS if not hasattr(self, name)]
        if route is None or missing:
            if route is not None:
                log.warning("batch delivery off: this Faust consumer has no %s; one message at a time", missing)
            await original(self, fetcher)
            return
        try:
            await _drain_batches(self, fetcher, *route)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            log.info("broker stopped the consumer, shutting down")

    Consumer._drain_messages = drain_messages  # type: ignore[method-assign]


async def _drain_batches(consumer: Any, fetcher: Any, topic: str, handler: BatchHandler) -> None:
    """Faust's ``Consumer._drain_messages`` and ``getmany``, a fetch at a time instead of a message at a time: the
    same read-offset filter (records below the last read offset, after a seek, are dropped), the same gap
    bookkeeping for the offset commit, the same seek while the flow is suspended and the same ``commit_every``."""
    consumer_stopped = consumer._stopped.is_set
    fetcher_stopped = fetcher._stopped.is_set
    read_offsets = consumer._read_offset
    commit_every = consumer._commit_every
    while not (consumer_stopped() or fetcher_stopped()):
        records, active = await consumer._wait_next_records(1.0)
        await consumer.sleep(0)  # getmany can return at once, again and again: let the loop run
        if records is None or consumer.should_stop:
            continue
        if not consumer.flow_active:
            try:
                await consumer.perform_seek()  # a rebalance is under way: back to the committed offsets
            except Exception as exc:
                log.warning("seek while the flow is suspended failed: %s", exc)
            continue
        if commit_every is not None and consumer._n_acked >= commit_every:
            consumer._n_acked = 0
            await consumer.commit()
        batch: list[Message] = []
        for tp, tp_records in records.items():
            if active is not None and tp not in active and tp not in consumer._buffered_partitions:
                continue
            if tp.topic != topic:
                await _deliver_one_by_one(consumer, tp, tp_records)
                continue
            read = read_offsets[tp]
            for record in tp_records:
                offset = record.offset
                if read is not None and offset < read:
                    continue
                if read and offset - read > 1:
                    await consumer._add_gap(tp, read + 1, offset)  # compacted or control records: not a hole
                batch.append(Message(record.partition, offset, record.key, record.value, record.timestamp or 0))
                read = offset
            read_offsets[tp] = read
        if batch:
            await handler(batch)


async def _deliver_one_by_one(consumer: Any, tp: Any, records: Iterable[Any]) -> None:
    """Faust's own path, for a topic other than the batched one."""
    read_offsets = consumer._read_offset
    acks_enabled = consumer.app.topics.acks_enabled_for(tp.topic)
    for record in records:
        read = read_offsets[tp]
        if read is None or record.offset >= read:
            if read and record.offset - read > 1 and acks_enabled:
                await consumer._add_gap(tp, read + 1, record.offset)
            message = consumer._to_message(tp, record)
            await consumer.wait_first(consumer.callback(message), consumer.suspend_flow.wait())
            read_offsets[tp] = record.offset


def ack_messages(consumer: Any, topic: str, messages: Iterable[Message]) -> None:
    """What ``Consumer.ack`` does for each message, for a committed batch at once: its offsets become committable
    (Faust's commit timer commits each partition up to its first unacked offset)."""
    from faust.types import TP
    from faust.types.tuples import ack_lock
    from mode.utils.futures import notify

    by_partition: dict[int, list[int]] = {}
    for message in messages:
        by_partition.setdefault(message.partition, []).append(message.offset)
    acked = 0
    with ack_lock:
        for partition, offsets in by_partition.items():
            tp = TP(topic, partition)
            committed = consumer._committed_offset[tp]
            index = consumer._acked_index[tp]
            pending = consumer._acked[tp]
            for offset in offsets:
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    pending.append(offset)
                    acked += 1
        consumer._n_acked += acked
        notify(consumer._waiting_for_ack)
