"""The Faust app: topics, the one agent, and the loopback web endpoints. Thin on purpose: the agent
hands batches to :class:`streams.pipeline.Pipeline` and moves the results to Kafka.

Delivery story. Events are taken without Faust's automatic acks (``noack_take``) and acked only after
the batch's DuckDB transaction committed, so Kafka's committed offset never runs ahead of the store.
The store's own offsets make re-delivered messages no-ops, and ``event_id`` dedupes copies. Rejected
messages go to the dead-letter topic *before* their batch commits (at least once; the DLQ headers carry
the source coordinates to dedupe on). Alerts are written to the ``alerts`` table in the batch's
transaction and published afterwards from that outbox, re-published on start if a crash intervened.
An unexpected error in the hot path ends the process with a non-zero code instead of acking silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import faust
from faust.web import Request, Response, View

from detectors.judge import JudgeDisagreement, disagreement_rates
from streams import __version__
from streams.delivery import ack_messages, deliver_batches, deliver_without_race, set_fetch_max_wait
from streams.endpoints import AUTH_CHALLENGE, TEXT, answer_query, authorized, forget_user, record_verdict
from streams.heap import Heap
from streams.metrics import CONTENT_TYPE, Metrics
from streams.outbox import OutboxError, publish_outbox
from streams.pipeline import DeadLetter, Message, Outcome, Pipeline
from streams.privacy import dead_letter_copy, redact_detail
from streams.settings import Settings
from streams.store import Erasure, Store
from streams.web_security import guard, server_ssl_context

log = logging.getLogger("guardstream.app")
T = TypeVar("T")

EXIT_PIPELINE_FAILURE = 70
EXIT_STALLED = 71
GAUGE_REFRESH_SECONDS = 1.0
DLQ_MAX_VALUE_BYTES = 512 * 1024  # larger rejected payloads are truncated in the DLQ (the header says so)
DLQ_MAX_KEY_BYTES = 64 * 1024  # keys are user ids (<= 256 chars); a longer one is cut too (its own header)


def faust_broker_credentials(settings: Settings) -> Any:
    if settings.security_protocol == "PLAINTEXT":
        return None
    import ssl

    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if settings.security_protocol.startswith("SASL"):
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        if settings.sasl_mechanism and settings.sasl_mechanism.startswith("SCRAM"):
            return faust.SASLCredentials(
                username=settings.sasl_username,
                password=password,
                mechanism=settings.sasl_mechanism,
                ssl_context=context if settings.security_protocol == "SASL_SSL" else None,
            )
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=password,
            ssl_context=context if settings.security_protocol == "SASL_SSL" else None,
        )
    return faust.SSLCredentials(context)


def fail_hard(what: str) -> NoReturn:
    # Faust would ack the batch and carry on: that silently loses it. Stop hard instead; the store's
    # offsets make the restart resume exactly after the last committed batch.
    log.critical("%s; exiting so nothing is acked", what, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_PIPELINE_FAILURE)


@dataclass(slots=True)
class Batch:
    messages: list[Message]
    started: float
    events: list[Any]  # the Faust events to ack through ``stream``; none when Faust delivered record batches
    stream: Any
    queued: float = 0.0  # perf_counter() when it joined the commit queue

    def extend(self, later: Batch) -> None:
        self.events += later.events
        self.messages += later.messages


class Service:
    """Owns the pipeline and the metrics of one worker process, and the store unless a writer process does
    (``store`` is None then: alerts, queries, verdicts and retention are the writer's)."""

    def __init__(self, settings: Settings, store: Store | None, pipeline: Pipeline, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.metrics = metrics
        self.lock = asyncio.Lock()  # one batch at a time; rebalances wait for the batch in flight
        # one outbox publication at a time: the start-up one and a batch's must not both send the same changes
        self.outbox_lock = asyncio.Lock()
        self.started_at = time.time()
        self.first_batch_at: float | None = None
        self.delivery: str | None = None  # how Faust hands over the decisions: "batches" or "stream" (status)
        self.last_commit_at: float | None = None
        self.progress_at = time.time()  # the last commit or partition assignment, for the liveness check
        self.gauges_at = 0.0
        self.gauges_stale = False
        self.counts = {"messages": 0, "decisions": 0, "duplicates": 0, "dead_letters": 0, "alert_changes": 0}
        self.app: faust.App | None = None
        self.top_huggers: list[dict[str, Any]] = []
        # DuckDB refuses concurrent calls on one connection: every writer call goes through this one thread.
        self.db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardstream-db")
        self.batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=8)
        self.heap = Heap(enabled=settings.gc_freeze, reclaim_seconds=settings.gc_reclaim_seconds)
        self.raw_user_ids = pipeline.pseudonym_key is None  # started with --allow-raw-user-ids
        metrics.privacy_raw_ids.set(int(self.raw_user_ids))

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db_thread, functools.partial(fn, *args))

    # -- the hot path -------------------------------------------------------------------------------
    # Each fetched batch is queued as it came (``stage``); the committer takes whatever is queued, and on the DB
    # thread decodes and checks it, runs the detectors and the DuckDB transaction, then publishes and acks. The
    # event loop keeps fetching meanwhile. Decoding on the event loop instead (to overlap it with the commit) made
    # the two threads trade the GIL every few milliseconds: the GIL sat idle a third of the time at half of peak
    # while the committer waited for it, ~2x its own work per event (py-spy --gil). The queue is short, so a slow
    # store holds fetching back instead of piling batches up in memory.
    async def stage_records(self, messages: list[Message]) -> None:
        """A fetch of the decisions topic, straight from Faust's fetcher (:func:`streams.delivery.deliver_batches`),
        in batches of at most ``batch_max_events``."""
        self.delivery = "batches"
        limit = self.settings.batch_max_events
        for start in range(0, len(messages), limit):
            await self.stage(messages[start : start + limit], [], None)

    async def stage_events(self, events: list[Any], stream: Any) -> None:
        """A batch taken from the agent's stream (Faust's per-message path)."""
        self.delivery = "stream"
        messages = [
            Message(
                e.message.partition,
                e.message.offset,
                e.message.key,
                e.message.value,
                int((e.message.timestamp or 0) * 1000),
            )
            for e in events
        ]
        await self.stage(messages, events, stream)

    async def stage(self, messages: list[Message], events: list[Any], stream: Any) -> None:
        started = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = time.time()
        unassigned = {m.partition for m in messages} - self.pipeline.assigned
        if unassigned:
            async with self.lock:
                await self.db(self.pipeline.assign, unassigned)
        self.heap.staged()
        await self.batches.put(Batch(messages, started, events, stream, time.perf_counter()))

    async def commit_batches(self) -> None:
        """The committer, in order. Whatever queued up while the last commit ran goes into the next one:
        under light load each batch commits on its own (low latency); under heavy load commits grow and the
        per-transaction cost is shared. Any failure ends the process (nothing is acked)."""
        limit = self.settings.batch_max_events
        while True:
            batch = await self.batches.get()
            merged = 1
            while not self.batches.empty() and len(batch.messages) < limit:
                batch.extend(self.batches.get_nowait())
                merged += 1
            try:
                async with self.lock:
                    await self.handle(batch)
            except asyncio.CancelledError:
                raise
            except BaseException:
                fail_hard("batch processing failed")
            finally:
                for _ in range(merged):
                    self.batches.task_done()
            del batch  # its objects go now, by reference count, before the collector walks what is alive
            self.heap.settle()

    async def drain(self) -> None:
        """Wait until every queued batch is committed (before partitions move)."""
        await self.batches.join()

    async def handle(self, batch: Batch) -> None:
        assert self.app is not None
        taken = time.perf_counter()
        # the wall clock stands in for a record without a Kafka timestamp, and bounds the ones stamped ahead of it
        prepared = await self.db(self.pipeline.prepare, batch.messages, int(time.time() * 1000))
        decoded = time.perf_counter()
        published: set[tuple[int, int]] = set()
        await self.publish_dead_letters(prepared.dead_letters, published)
        failed: dict[str, DeadLetter] = {}
        spent = [0.0, 0.0]  # detect, sink: over every commit call of the batch
        while True:
            outcome = await self.db(self.pipeline.commit, prepared, failed)
            spent[0] += outcome.detect_seconds
            spent[1] += outcome.sink_seconds
            if outcome.retry:
                # a detector raised: dead-letter those events first, then commit the batch without them
                await self.publish_dead_letters(list(outcome.retry.values()), published)
                failed.update(outcome.retry)
            elif outcome.fenced:
                # another worker committed some of these partitions (a rebalance): the pipeline reloaded them;
                # what it committed is skipped now, the rest goes through on top of its checkpoint
                prepared = await self.db(self.pipeline.prepare, batch.messages, int(time.time() * 1000))
                await self.publish_dead_letters(prepared.dead_letters, published)
            else:
                break
        committed_at = time.time()
        committed = time.perf_counter()
        if outcome.changes and self.store is not None:
            await self.publish_outbox()
        if batch.stream is None:
            ack_messages(self.app.consumer, self.settings.decisions_topic, batch.messages)
        else:
            ack = batch.stream.ack
            for event in batch.events:
                await ack(event)
        phases = {
            "decode": decoded - taken,
            "wait": taken - batch.queued,
            "detect": spent[0],
            "sink": spent[1],
            "publish": time.perf_counter() - committed,
        }
        self.record(batch.messages, prepared.dead_letters, outcome, batch.started, committed_at, phases)

    def record(
        self,
        messages: list[Message],
        rejected: list[DeadLetter],
        outcome: Outcome,
        started: float,
        committed_at: float,
        phases: Mapping[str, float],
    ) -> None:
        m = self.metrics
        record_batch(m, messages, rejected, outcome, started, committed_at, phases)
        self.gauges_stale = True
        if outcome.changes or committed_at - self.gauges_at >= GAUGE_REFRESH_SECONDS:
            self.refresh_gauges(committed_at)
        self.last_commit_at = committed_at
        c = self.counts
        c["messages"] += len(messages)
        c["decisions"] += len(outcome.new)
        c["duplicates"] += outcome.duplicates
        c["dead_letters"] += len(rejected) + len(outcome.dead_letters)
        c["alert_changes"] += len(outcome.changes)
        self.update_lag()

    def pipeline_forget(self, user_id: str, tenant: str | None, erasure: Erasure) -> int:
        """The in-memory half of an erasure, on the DB thread under the lock (see ForgetView)."""
        return self.pipeline.forget(user_id, tenant, erasure.epochs)

    def refresh_gauges(self, now: float) -> None:
        """Gauges that walk the whole in-memory state (users, alerts, populations): on every alert change,
        otherwise at most once per GAUGE_REFRESH_SECONDS, so their cost does not grow with commits/s."""
        m = self.metrics
        engine = self.pipeline.engine
        m.tracked_users.set(engine.tracked_users())
        m.observe_judge_rates(judge_rates(engine))
        self.top_huggers = [
            {
                "rank": i + 1,
                "tenant": a.tenant,
                "user_id": a.user_id,
                "category": a.category,
                "index": a.score,
                "severity": a.severity,
                "since": a.first_ts_ms,
            }
            for i, a in enumerate(m.observe_open_alerts(engine.alerts()))
        ]
        self.gauges_at = now
        self.gauges_stale = False

    def waiting(self) -> int:
        """Messages in the assigned partitions that are not committed yet."""
        assert self.app is not None
        consumer = self.app.consumer
        total = 0
        for partition, next_offset in self.pipeline.next_offsets.items():
            highwater = consumer.highwater(faust.types.TP(self.settings.decisions_topic, partition))
            if highwater is not None:
                total += max(0, int(highwater) - next_offset)
        return total

    def stall_reason(self, now: float) -> str | None:
        """Why this worker should stop, if work waits and nothing has committed for ``stall_seconds``."""
        since = max(self.last_commit_at or 0.0, self.progress_at)
        if now - since < self.settings.stall_seconds:
            return None
        waiting = self.waiting()
        if not waiting:
            return None
        return (
            f"{waiting:,} messages wait and nothing was committed for {now - since:.0f}s "
            f"(GUARDSTREAM_STALL_SECONDS={self.settings.stall_seconds:g}); exiting so a supervisor restarts it"
        )

    def update_lag(self) -> None:
        assert self.app is not None
        consumer = self.app.consumer
        for partition, next_offset in self.pipeline.next_offsets.items():
            tp = faust.types.TP(self.settings.decisions_topic, partition)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self.metrics.lag.labels(str(partition)).set(max(0, int(highwater) - next_offset))

    # -- outputs -------------------------------------------------------------------------------------
    async def publish_dead_letters(self, letters: list[DeadLetter], published: set[tuple[int, int]]) -> None:
        """Each message once per batch, even when the batch is started over (``published`` remembers)."""
        assert self.app is not None
        producer = self.app.producer
        now = datetime.now(UTC).isoformat().encode()
        futures = []
        for letter in letters:
            where = (letter.message.partition, letter.message.offset)
            if where in published:
                continue
            published.add(where)
            original = letter.message.value or b""
            # no prompt text and (with a pseudonym key) no raw user id leave in the copy: streams/privacy.py
            key, copy, redacted = dead_letter_copy(letter.message.key, original, self.pipeline.pseudonym_key)
            value = copy or b""
            reason = redact_detail(letter.detail, original, self.pipeline.pseudonym_key)
            headers = [
                ("guardstream.reason_code", letter.code.encode()),
                ("guardstream.reason", reason[:1000].encode("utf-8", "replace")),
                ("guardstream.source_topic", self.settings.decisions_topic.encode()),
                ("guardstream.source_partition", str(letter.message.partition).encode()),
                ("guardstream.source_offset", str(letter.message.offset).encode()),
                ("guardstream.original_size", str(len(original)).encode()),
                ("guardstream.rejected_at", now),
                *redacted,
            ]
            if len(value) > DLQ_MAX_VALUE_BYTES:
                value = value[:DLQ_MAX_VALUE_BYTES]
                headers.append(("guardstream.truncated", b"true"))
            # Bounded key too: a DLQ record over the producer's (or the broker's) size limit fails the batch, and the
            # restart meets the same message again. Value, key and headers stay under 1 MB, Kafka's default limit.
            if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
                headers.append(("guardstream.original_key_size", str(len(key)).encode()))
                headers.append(("guardstream.key_truncated", b"true"))
                key = key[:DLQ_MAX_KEY_BYTES]
            futures.append(
                await producer.send(
                    self.settings.dlq_topic, key, value, partition=None, timestamp=None, headers=headers
                )
            )
        await asyncio.gather(*futures)

    async def publish_outbox(self) -> None:
        """Publish every alert change not yet acknowledged by the alerts topic, marking each one published; one
        too large for the broker goes to the dead-letter topic as a summary instead (streams/outbox.py)."""
        assert self.app is not None
        if self.store is None:
            return  # the writer process publishes its outbox
        producer, topic, dlq = self.app.producer, self.settings.alerts_topic, self.settings.dlq_topic

        def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
            return producer.send(topic, key, value, partition=None, timestamp=None, headers=headers)

        def dead_letter(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
            return producer.send(dlq, key, value, partition=None, timestamp=None, headers=headers)

        async with self.outbox_lock:
            try:
                done = await publish_outbox(self.store, self.db, send, dead_letter, topic)
            except OutboxError as exc:
                self.metrics.outbox_dead_letters.inc(exc.done.dead_lettered)
                raise
        self.metrics.outbox_dead_letters.inc(done.dead_lettered)

    def status(self) -> dict[str, Any]:
        partitions = {}
        consumer = self.app.consumer if self.app is not None else None
        for partition, next_offset in sorted(self.pipeline.next_offsets.items()):
            highwater = None
            if consumer is not None:
                highwater = consumer.highwater(faust.types.TP(self.settings.decisions_topic, partition))
            partitions[str(partition)] = {"next_offset": next_offset, "highwater": highwater}
        return {
            "version": __version__,
            "pid": os.getpid(),
            "topic": self.settings.decisions_topic,
            "db": str(self.settings.db) if self.store is not None else None,
            "writer": self.settings.writer_url if self.store is None else None,
            "partitions": partitions,
            "counts": self.counts,
            "started_at": self.started_at,
            "first_batch_at": self.first_batch_at,
            "delivery": self.delivery,
            "detectors": [d.name for d in self.pipeline.engine.detectors],  # those the detector config enables
            "last_commit_at": self.last_commit_at,
            "top_huggers": self.top_huggers,  # pseudonymous ids; the metric has rank slots only
            "raw_user_ids": self.raw_user_ids,  # true: --allow-raw-user-ids, ids above and in the store are raw
        }


def record_batch(
    m: Metrics,
    messages: list[Message],
    rejected: list[DeadLetter],
    outcome: Outcome,
    started: float,
    committed_at: float,
    phases: Mapping[str, float],
) -> None:
    """Metrics of one committed batch: one increment per label set, whatever the number of users."""
    m.consumed.inc(len(messages))
    m.observe_decisions(outcome.decision_counts)
    m.observe_categories(outcome.category_counts)
    for letter in rejected + outcome.dead_letters:
        m.observe_dead_letter(letter.code)
    for change in outcome.changes:
        m.observe_alert_change(change.change, change.alert.detector, change.alert.severity, change.alert.category)
    if outcome.duplicates:
        m.duplicates.inc(outcome.duplicates)
    m.observe_memory(outcome.folded, outcome.loaded_users, outcome.evicted_users)
    m.batch_seconds.observe(time.perf_counter() - started)
    for phase, seconds in phases.items():
        m.batch_phase.labels(phase).observe(seconds)
    m.batch_events.observe(len(messages))
    for msg in messages[:: max(1, len(messages) // 50)]:  # a sample keeps the histogram cheap per batch
        if msg.timestamp_ms > 0:  # Kafka reports a record without a timestamp as -1
            m.ingest_latency.observe(max(0.0, committed_at - msg.timestamp_ms / 1000))
    m.last_commit.set(committed_at)


def judge_rates(engine: Any) -> dict[str, tuple[int, int]]:
    totals: dict[str, tuple[int, int]] = {}
    for population in engine.populations(JudgeDisagreement.name):
        for guardrail, (disagreements, judged) in disagreement_rates(population).items():
            d, j = totals.get(guardrail, (0, 0))
            totals[guardrail] = (d + disagreements, j + judged)
    return totals


def web_ssl_context(settings: Settings) -> Any:
    return server_ssl_context(settings)  # HTTPS, and with a client CA mutual TLS


def web_options(settings: Settings) -> dict[str, Any]:
    """Faust's web server settings: guardstream's middleware in front of every route of Faust's aiohttp app (its
    own pages, unknown paths), and Faust's pages that guardstream does not use turned off (no tables, no
    table routing, no debug statistics: they would show the cluster's topology and sensors)."""
    return {
        "web_application_options": {
            "middlewares": [guard(settings)],
            "client_max_size": settings.web_max_request_bytes,
        },
        "web_router_enabled": False,
        "web_tables_enabled": False,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_metrics_enabled": False,
    }


def create_app(settings: Settings, service: Service, datadir: str) -> faust.App:
    """The Faust app; `datadir` is Faust's own scratch directory (the caller owns and removes it)."""
    set_fetch_max_wait(settings.fetch_max_wait_ms)
    if settings.faust_direct_delivery:
        deliver_without_race()
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{hp.strip()}" for hp in settings.bootstrap.split(",")],
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",
        autodiscover=False,
        datadir=datadir,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,  # unacked events are replayed from the store's offsets; never wait on them
        stream_buffer_maxsize=65536,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_ssl_context=web_ssl_context(settings),
        web_in_thread=False,
        **web_options(settings),
        producer_linger_ms=5,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_rebalance_timeout=settings.rebalance_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        producer_max_request_size=2 * 1024 * 1024,
        version=1,
    )
    service.app = app
    decisions = app.topic(
        settings.decisions_topic, key_serializer="raw", value_serializer="raw", partitions=settings.topic_partitions
    )

    async def stage_records(messages: list[Message]) -> None:
        try:
            await service.stage_records(messages)
        except asyncio.CancelledError:
            raise
        except BaseException:
            fail_hard("decoding a batch failed")

    if settings.faust_batch_delivery:
        deliver_batches(app, settings.decisions_topic, stage_records)

    # The agent subscribes the group to the topic. With batch delivery its records reach the pipeline before any
    # stream: the agent then only gets them if this Faust cannot deliver batches (see streams/delivery.py).
    @app.agent(decisions, name="guardstream.decisions")
    async def process(stream: Any) -> None:
        async for batch in stream.noack_take(settings.batch_max_events, within=settings.batch_max_seconds):
            try:
                await service.stage_events(batch, stream)
            except asyncio.CancelledError:
                raise
            except BaseException:
                fail_hard("decoding a batch failed")

    @app.task  # type: ignore[untyped-decorator]
    async def committer() -> None:
        # Faust's Monitor sensor keeps per-message statistics for its own /stats pages, which guardstream
        # does not serve (its metrics are per batch): it costs a few callbacks on every message.
        with contextlib.suppress(KeyError):
            app.sensors.remove(app.monitor)
        await service.commit_batches()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # faust's signal type omits async handlers
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == settings.decisions_topic}
        if partitions:
            await service.drain()  # batches already decoded still belong to this worker: commit them
            async with service.lock:
                service.pipeline.revoke(partitions)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == settings.decisions_topic}
        if partitions:
            async with service.lock:
                await service.db(service.pipeline.assign, partitions)
        service.progress_at = time.time()

    if settings.retention_days is not None and service.store is not None:
        days = settings.retention_days
        store = service.store

        @app.timer(interval=3600.0, on_leader=False)  # type: ignore[untyped-decorator]
        async def retention() -> None:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            async with service.lock:
                deleted = await service.db(store.apply_retention, cutoff)
            log.warning("retention: deleted rows older than %s: %s", cutoff.isoformat(), deleted)

    @app.timer(interval=GAUGE_REFRESH_SECONDS)  # type: ignore[untyped-decorator]
    async def refresh_gauges() -> None:
        if service.gauges_stale:
            async with service.lock:
                service.refresh_gauges(time.time())
        service.heap.tick()

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def liveness() -> None:
        reason = service.stall_reason(time.time())
        if reason is not None:
            log.critical("stalled: %s", reason)
            logging.shutdown()
            os._exit(EXIT_STALLED)

    @app.task  # type: ignore[untyped-decorator]
    async def publish_pending_alerts() -> None:
        await service.publish_outbox()  # alerts committed before a crash but never acknowledged

    authorization = settings.web_authorization()

    class Guarded(View):
        """Every endpoint: basic auth when it is configured (401 otherwise), in constant time. The middleware
        (streams/web_security.py) already guards every path; this keeps guardstream's own views guarded
        wherever Faust's app is mounted."""

        async def dispatch(self, request: Any) -> Any:
            given = request.headers.get("Authorization") if getattr(request, "headers", None) else None
            if not authorized(given, authorization):
                response = self.bytes(b"authentication required", status=401, content_type=TEXT)
                response.headers.update(AUTH_CHALLENGE)
                return response
            return await super().dispatch(request)

    @app.page("/metrics")
    class MetricsView(Guarded):
        async def get(self, request: Request) -> Response:
            return self.bytes(service.metrics.exposition(), content_type=CONTENT_TYPE)

    @app.page("/status")
    class StatusView(Guarded):
        async def get(self, request: Request) -> Response:
            return self.json(service.status())

    @app.task  # type: ignore[untyped-decorator]
    async def load_verdicts() -> None:
        if service.store is not None:
            service.metrics.observe_verdicts(await service.db(service.store.verdict_counts))

    def no_store(view: View) -> Response | None:
        """A worker that commits to a writer process has no store to answer from: say where it is."""
        if service.store is not None:
            return None
        text = f"this worker commits to the writer at {settings.writer_url}: send queries, verdicts and erasures there"
        return view.bytes(text.encode(), status=409, content_type="text/plain")

    @app.page("/verdict")
    class VerdictView(Guarded):
        """Record an analyst's verdict while this process holds the store (``guardstream verdict``)."""

        async def post(self, request: Request) -> Response:
            if (refused := no_store(self)) is not None:
                return refused
            assert service.store is not None
            status, body, kind = await record_verdict(service.store, service.db, service.metrics, await request.read())
            return self.bytes(body, status=status, content_type=kind)

    @app.page("/forget")
    class ForgetView(Guarded):
        """Erase one user (``guardstream forget``) while this process holds the store: from the store and from the
        detectors' memory, between two batches (the service lock), so no later batch writes the user back."""

        async def post(self, request: Request) -> Response:
            if (refused := no_store(self)) is not None:
                return refused
            assert service.store is not None
            body = await request.read()
            async with service.lock:
                status, reply, kind = await forget_user(service.store, service.db, body, service.pipeline_forget)
                if status == 200:
                    service.refresh_gauges(time.time())  # /status top_huggers and the open-alert gauges without it
            if status == 200:
                log.warning("forget: a user was erased on request: %s", reply.decode())
            return self.bytes(reply, status=status, content_type=kind)

    @app.page("/query")
    class QueryView(Guarded):
        async def post(self, request: Request) -> Response:
            if (refused := no_store(self)) is not None:
                return refused
            assert service.store is not None
            headers = getattr(request, "headers", None)
            content_type = headers.get("Content-Type") if headers else None
            status, body, kind = await answer_query(service.store, await request.read(), content_type)
            return self.bytes(body, status=status, content_type=kind)

    return app
