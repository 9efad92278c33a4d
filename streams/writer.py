"""``guardstream writer``: the one process that owns the DuckDB file when several workers share a store.

DuckDB allows one writing process per file, so N workers (``guardstream run --writer URL``) do the Kafka
and detector work and send each batch here as one checkpoint; the writer applies it in one transaction.

Protocol (HTTP, msgpack bodies, Arrow IPC for the tables; basic auth and TLS as for every endpoint):

``POST /v1/checkpoint`` ``{"topic", "partitions"}``
    Each partition's resume offset and the detectors' state there (population baselines and alerts). A worker
    calls it when the group gives it a partition (and again whenever a batch is refused).
``POST /v1/users`` ``{"keys": [[partition, tenant, user_id], ...]}``
    The stored states of these users, as ``[[partition, tenant, user_id, state], ...]`` (users without one left
    out): a worker fetches the users of a batch whose state it does not hold (new, evicted while idle, or not
    loaded since it took the partition over) before it runs the detectors on the batch, one request per batch.
``POST /v1/apply`` one :class:`streams.store.Checkpoint`
    Committed, or refused with nothing changed: *fenced* when a partition's stored offset is not the one the
    worker expects (another worker committed it since: after a rebalance the old owner is a zombie until it
    learns it, and its late batch must not land), *duplicates* when an event in it is already stored. Either
    way the worker reloads the partitions and starts the batch over, so no event is counted twice and none is
    lost, whatever the group membership says at that moment.

The writer also serves ``/query``, ``/verdict``, ``/forget``, ``/status`` and ``/metrics`` (it is what
``guardstream sql``, ``investigate`` and ``forget`` talk to), publishes the alert outbox to the alerts topic and
applies retention. An erasure (``/forget``) moves the epoch of the user's partitions (``partition_epochs``): a
worker's batch carries the epochs it loaded and is refused as *fenced* when one moved, so the worker reloads the
partition without the user instead of writing it back from memory.

A worker that cannot reach the writer keeps retrying the same request (and exits with code 71 after
``GUARDSTREAM_STALL_SECONDS``); a request that reached the writer whose answer was lost is refused as fenced
on the retry, which is the same as committed: the reloaded offsets skip the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import logging
import os
import signal
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import pyarrow as pa
from aiohttp import web
from prometheus_client import Counter, Histogram

from streams import __version__
from streams.endpoints import answer_query, forget_user, record_verdict, to_ipc
from streams.metrics import CONTENT_TYPE, Metrics
from streams.outbox import OutboxError, publish_outbox
from streams.settings import Settings
from streams.store import Applied, Checkpoint, PartitionCheckpoint, Store, UserKey, open_store
from streams.web_security import check_serving, guard, server_ssl_context

log = logging.getLogger("guardstream.writer")
T = TypeVar("T")

MSGPACK = "application/msgpack"
RETRY_STATUSES = {502, 503, 504}


# -- the wire format ---------------------------------------------------------------------------------------
class CheckpointRequest(msgspec.Struct, frozen=True):
    topic: str
    partitions: list[int]


class UsersRequest(msgspec.Struct, frozen=True):
    keys: list[tuple[int, str, str]]  # partition, tenant, user_id


class WireCheckpoint(msgspec.Struct, frozen=True):
    topic: str
    expected: dict[int, int]
    offsets: dict[int, int]
    users: list[tuple[int, str, str, bytes]]
    populations: list[tuple[int, bytes, int]]
    decisions: bytes | None = None  # each table as an Arrow IPC stream
    layouts: bytes | None = None
    daily: bytes | None = None
    alerts: bytes | None = None
    alert_changes: bytes | None = None
    dead_letters: bytes | None = None
    epochs: dict[int, int] | None = None  # the worker's erasure epoch of each partition (None: an older worker)


_encoder = msgspec.msgpack.Encoder()
_checkpoint_request = msgspec.msgpack.Decoder(CheckpointRequest)
_users_request = msgspec.msgpack.Decoder(UsersRequest)
_user_states = msgspec.msgpack.Decoder(list[tuple[int, str, str, bytes]])
_wire_checkpoint = msgspec.msgpack.Decoder(WireCheckpoint)
_partitions = msgspec.msgpack.Decoder(dict[int, PartitionCheckpoint])
_applied = msgspec.msgpack.Decoder(Applied)


def optional_ipc(table: pa.Table | None) -> bytes | None:
    return None if table is None else to_ipc(table)


def from_ipc(data: bytes | None) -> pa.Table | None:
    return None if data is None else pa.ipc.open_stream(data).read_all()


def encode_checkpoint(cp: Checkpoint) -> bytes:
    return _encoder.encode(
        WireCheckpoint(
            topic=cp.topic,
            expected=cp.expected,
            offsets=cp.offsets,
            users=cp.users,
            populations=cp.populations,
            decisions=optional_ipc(cp.decisions),
            layouts=optional_ipc(cp.layouts),
            daily=optional_ipc(cp.daily),
            alerts=optional_ipc(cp.alerts),
            alert_changes=optional_ipc(cp.alert_changes),
            dead_letters=optional_ipc(cp.dead_letters),
            epochs=cp.epochs,
        )
    )


def decode_checkpoint(body: bytes) -> Checkpoint:
    wire = _wire_checkpoint.decode(body)
    return Checkpoint(
        topic=wire.topic,
        decisions=from_ipc(wire.decisions),
        layouts=from_ipc(wire.layouts),
        daily=from_ipc(wire.daily),
        expected=wire.expected,
        alerts=from_ipc(wire.alerts),
        alert_changes=from_ipc(wire.alert_changes),
        dead_letters=from_ipc(wire.dead_letters),
        users=wire.users,  # msgspec decodes the typed tuples
        populations=wire.populations,
        offsets=wire.offsets,
        epochs=wire.epochs,
    )


# -- the worker's side -------------------------------------------------------------------------------------
class WriterError(RuntimeError):
    """The writer answered, but not with a result (bad credentials, a bug): retrying will not help."""


class RemoteSink:
    """The :class:`streams.pipeline.Sink` of a worker whose store is the writer process. Synchronous: it runs
    on the worker's commit thread, like the local store. Unreachable writer: retried until it answers."""

    def __init__(
        self,
        url: str,
        *,
        authorization: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"writer URL must be http(s)://HOST:PORT, not {url!r}")
        self.url = url.rstrip("/")
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname
        self.port = parsed.port or (443 if self.https else 80)
        self.headers = {"Content-Type": MSGPACK}
        if authorization:
            self.headers["Authorization"] = authorization
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.sleep = sleep
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.conn is None:
            if self.https:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.ssl_context
                )
            else:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def call(self, path: str, body: bytes) -> bytes:
        delay, attempts, warned = 0.2, 0, 0.0
        while True:
            attempts += 1
            try:
                conn = self._connect()
                conn.request("POST", path, body, self.headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                problem = f"cannot reach the writer at {self.url}: {exc}"
            else:
                if response.status == 200:
                    if attempts > 1:
                        log.warning("the writer at %s answers again (after %d attempts)", self.url, attempts)
                    return data
                detail = data.decode("utf-8", "replace")[:500]
                if response.status not in RETRY_STATUSES:
                    raise WriterError(f"the writer at {self.url} refused {path}: {response.status} {detail}")
                problem = f"the writer at {self.url} is unavailable: {response.status} {detail}"
            now = time.monotonic()
            if now - warned > 10:
                log.warning("%s; retrying (the batch waits, nothing is acked)", problem)
                warned = now
            self.sleep(delay)
            delay = min(delay * 2, 5.0)

    def checkpoint(self, topic: str, partitions: Iterable[int]) -> dict[int, PartitionCheckpoint]:
        body = _encoder.encode(CheckpointRequest(topic, sorted(partitions)))
        return _partitions.decode(self.call("/v1/checkpoint", body))

    def user_states_for(self, keys: Mapping[int, Iterable[UserKey]]) -> dict[int, list[tuple[str, str, bytes]]]:
        body = _encoder.encode(UsersRequest([(p, t, u) for p, users in sorted(keys.items()) for t, u in users]))
        found: dict[int, list[tuple[str, str, bytes]]] = {}
        for partition, tenant, user_id, state in _user_states.decode(self.call("/v1/users", body)):
            found.setdefault(partition, []).append((tenant, user_id, state))
        return found

    def apply(self, cp: Checkpoint) -> Applied:
        return _applied.decode(self.call("/v1/apply", encode_checkpoint(cp)))

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def writer_client_context(settings: Settings) -> ssl.SSLContext:
    """TLS for a worker calling the writer: trusts GUARDSTREAM_WEB_TLS_CAFILE (else the system's CAs), checks the
    writer's name against its certificate, and presents GUARDSTREAM_WEB_TLS_CLIENT_CERT when set (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(settings.web_tls_cafile) if settings.web_tls_cafile else None)
    settings.load_client_certificate(context)
    return context


def remote_sink(settings: Settings) -> RemoteSink:
    assert settings.writer_url is not None
    return RemoteSink(
        settings.writer_url,
        authorization=settings.web_authorization(),
        ssl_context=writer_client_context(settings) if settings.writer_url.startswith("https:") else None,
    )


# -- the writer process ------------------------------------------------------------------------------------
class WriterMetrics:
    """The writer's own series, next to the analyst-verdict gauges it owns (it holds the store)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.batches = Counter(
            "guardstream_writer_batches_total",
            "Worker batches by result: committed, or refused (fenced: another worker committed the partition "
            "since; duplicates: an event in it was stored already) and started over by the worker",
            ["result"],
            registry=r,
        )
        for result in ("committed", "fenced", "duplicates"):
            self.batches.labels(result)
        self.apply_seconds = Histogram(
            "guardstream_writer_apply_seconds",
            "Time to apply one worker batch in DuckDB (one transaction)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.checkpoints = Counter(
            "guardstream_writer_checkpoint_loads_total", "Partition checkpoints sent to workers", registry=r
        )
        self.user_loads = Counter(
            "guardstream_writer_user_state_loads_total",
            "Users' detector states sent to workers that did not hold them (returning or new users of a batch)",
            registry=r,
        )
        self.published = Counter(
            "guardstream_writer_alerts_published_total", "Alert changes published from the outbox", registry=r
        )


class Writer:
    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.own = WriterMetrics(metrics)
        self.db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardstream-writer-db")
        self.outbox_wake = asyncio.Event()
        self.started_at = time.time()
        self.counts = {"committed": 0, "fenced": 0, "duplicates": 0, "decisions": 0, "checkpoints": 0, "erasures": 0}
        self.last_commit_at: float | None = None
        self.producer: Any = None
        # the writer pseudonymizes nothing itself; with no key it was started with --allow-raw-user-ids (run_writer)
        self.raw_user_ids = settings.pseudonym_key_bytes() is None
        metrics.privacy_raw_ids.set(int(self.raw_user_ids))

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db_thread, functools.partial(fn, *args))

    # -- the worker protocol ---------------------------------------------------------------------------
    async def checkpoint(self, request: web.Request) -> web.Response:
        try:
            asked = _checkpoint_request.decode(await request.read())
        except msgspec.DecodeError as exc:
            return web.Response(status=400, text=f"bad checkpoint request: {exc}")
        found = await self.db(self.store.checkpoint, asked.topic, asked.partitions)
        self.counts["checkpoints"] += len(found)
        self.own.checkpoints.inc(len(found))
        log.info("checkpoint of partitions %s sent to %s", asked.partitions, request.remote)
        return web.Response(body=_encoder.encode(found), content_type=MSGPACK)

    async def users(self, request: web.Request) -> web.Response:
        try:
            asked = _users_request.decode(await request.read())
        except msgspec.DecodeError as exc:
            return web.Response(status=400, text=f"bad users request: {exc}")
        keys: dict[int, list[UserKey]] = {}
        for partition, tenant, user_id in asked.keys:
            keys.setdefault(partition, []).append((tenant, user_id))
        found = await self.db(self.store.user_states_for, keys)
        rows = [(p, t, u, state) for p, users in found.items() for t, u, state in users]
        self.own.user_loads.inc(len(rows))
        return web.Response(body=_encoder.encode(rows), content_type=MSGPACK)

    async def apply(self, request: web.Request) -> web.Response:
        try:
            cp = decode_checkpoint(await request.read())
        except (msgspec.DecodeError, pa.ArrowInvalid) as exc:
            return web.Response(status=400, text=f"bad batch: {exc}")
        started = time.perf_counter()
        applied = await self.db(self.store.apply, cp)
        self.own.apply_seconds.observe(time.perf_counter() - started)
        if applied.fenced:
            result = "fenced"
            log.warning("batch refused, partitions %s were committed by another worker", applied.fenced)
        elif applied.duplicates:
            result = "duplicates"
        else:
            result = "committed"
            self.last_commit_at = time.time()
            self.metrics.last_commit.set(self.last_commit_at)
            self.counts["decisions"] += cp.decisions.num_rows if cp.decisions is not None else 0
            if cp.alert_changes is not None and cp.alert_changes.num_rows:
                self.outbox_wake.set()
        self.counts[result] += 1
        self.own.batches.labels(result).inc()
        return web.Response(body=_encoder.encode(applied), content_type=MSGPACK)

    # -- outputs ---------------------------------------------------------------------------------------
    async def publish_outbox(self) -> None:
        topic, dlq = self.settings.alerts_topic, self.settings.dlq_topic

        def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
            return self.producer.send(topic, value, key=key, headers=headers)

        def dead_letter(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
            return self.producer.send(dlq, value, key=key, headers=headers)

        try:
            done = await publish_outbox(self.store, self.db, send, dead_letter, topic)
        except OutboxError as exc:
            self.own.published.inc(exc.done.published)
            self.metrics.outbox_dead_letters.inc(exc.done.dead_lettered)
            raise
        self.own.published.inc(done.published)
        self.metrics.outbox_dead_letters.inc(done.dead_lettered)

    async def outbox_loop(self) -> None:
        while True:
            try:
                await self.publish_outbox()  # first: what a crash left unpublished
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing alerts failed; retrying in 5s (they stay in the outbox)")
                await asyncio.sleep(5)
                continue
            await self.outbox_wake.wait()
            self.outbox_wake.clear()

    async def retention_loop(self, days: float) -> None:
        while True:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            deleted = await self.db(self.store.apply_retention, cutoff)
            log.warning("retention: deleted rows older than %s: %s", cutoff.isoformat(), deleted)
            await asyncio.sleep(3600)

    # -- reading ---------------------------------------------------------------------------------------
    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def status(self, request: web.Request) -> web.Response:
        offsets = await self.db(self.store.offsets, self.settings.decisions_topic)
        body = {
            "version": __version__,
            "role": "writer",
            "pid": os.getpid(),
            "topic": self.settings.decisions_topic,
            "db": str(self.settings.db),
            "partitions": {str(p): {"next_offset": o} for p, o in sorted(offsets.items())},
            "counts": self.counts,
            "started_at": self.started_at,
            "last_commit_at": self.last_commit_at,
            "raw_user_ids": self.raw_user_ids,
        }
        return web.json_response(body)

    async def query(self, request: web.Request) -> web.Response:
        status, body, kind = await answer_query(self.store, await request.read(), request.headers.get("Content-Type"))
        return web.Response(status=status, body=body, content_type=kind)

    async def verdict(self, request: web.Request) -> web.Response:
        status, body, kind = await record_verdict(self.store, self.db, self.metrics, await request.read())
        return web.Response(status=status, body=body, content_type=kind)

    async def forget(self, request: web.Request) -> web.Response:
        """Erase one user from the store. The workers hold users in memory: the erasure moves the epochs of the
        user's partitions, so each worker's next batch there is refused (fenced) and it reloads them without the
        user; a worker that commits elsewhere first reloads them after that commit (``Applied.epochs``)."""
        status, body, kind = await forget_user(self.store, self.db, await request.read())
        if status == 200:
            self.counts["erasures"] += 1
            log.warning("forget: a user was erased on request: %s", body.decode())
        return web.Response(status=status, body=body, content_type=kind)


def build_web_app(writer: Writer, settings: Settings) -> web.Application:
    """Every route (and every unknown path) behind basic auth when configured; a worker's batch, and the list of
    its users to fetch (up to one per event of a merged batch), may be up to GUARDSTREAM_WEB_MAX_BATCH_BYTES, every
    other body up to GUARDSTREAM_WEB_MAX_REQUEST_BYTES."""
    batch_limit = (settings.web_max_batch_bytes, "GUARDSTREAM_WEB_MAX_BATCH_BYTES")
    limits = {"/v1/apply": batch_limit, "/v1/users": batch_limit}
    app = web.Application(middlewares=[guard(settings, limits)], client_max_size=settings.web_max_request_bytes)
    app.add_routes(
        [
            web.post("/v1/checkpoint", writer.checkpoint),
            web.post("/v1/users", writer.users),
            web.post("/v1/apply", writer.apply),
            web.get("/metrics", writer.metrics_page),
            web.get("/status", writer.status),
            web.post("/query", writer.query),
            web.post("/verdict", writer.verdict),
            web.post("/forget", writer.forget),
        ]
    )
    return app


async def serve(settings: Settings, store: Store, announce: Callable[[str], None] | None = None) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.broker import client_kwargs, ensure_topics

    metrics = Metrics()
    writer = Writer(settings, store, metrics)
    metrics.observe_verdicts(await writer.db(store.verdict_counts))
    await ensure_topics(settings)
    writer.producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5, max_request_size=2 * 1024 * 1024)
    await writer.producer.start()
    runner = web.AppRunner(build_web_app(writer, settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.web_host, settings.web_port, ssl_context=server_ssl_context(settings))
    await site.start()
    url = f"{settings.web_scheme()}://{settings.web_host}:{settings.web_port}"
    log.warning("guardstream writer for %s listening on %s", settings.db, url)
    if announce is not None:
        announce(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(writer.outbox_loop())]
    if settings.retention_days is not None:
        tasks.append(asyncio.create_task(writer.retention_loop(settings.retention_days)))
    try:
        await stop.wait()
    finally:
        log.warning("guardstream writer stopping")
        await runner.cleanup()  # stop taking batches; the one in flight finishes on the DB thread
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await writer.producer.stop()
        writer.db_thread.shutdown(wait=True)


def run_writer(settings: Settings) -> None:
    """Blocks until SIGINT/SIGTERM: own the DuckDB file and apply the workers' batches."""
    from streams.broker import free_port
    from streams.worker import service_file, warn_if_raw_user_ids

    warn_if_raw_user_ids(settings)  # a missing or weak pseudonym key stops it here, before the store or Kafka
    check_serving(settings)  # before the store is opened: beyond loopback only over TLS with credentials
    if settings.web_port == 0:
        settings = settings.with_overrides(web_port=free_port(settings.web_host))
    store = open_store(settings)
    announce_path = service_file(settings.db)

    def announce(url: str) -> None:
        announce_path.write_text(
            json.dumps({"pid": os.getpid(), "url": url, "db": str(settings.db.resolve()), "role": "writer"})
        )

    try:
        asyncio.run(serve(settings, store, announce))
    finally:
        with contextlib.suppress(OSError):
            announce_path.unlink()
        store.close()
