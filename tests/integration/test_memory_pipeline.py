"""Bounded memory through the real pipeline and DuckDB store, locally and through the writer (issue 25): users
evicted after every commit come back from the store with their next batch and the store ends up exactly as with
every user kept in memory; a partition is taken over without loading any user; the caps' folds reach the metrics."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from detectors.engine import StateLimits
from detectors.registry import build_engine
from streams.broker import free_port
from streams.metrics import Metrics
from streams.pipeline import Message, Outcome, Pipeline, Sink
from streams.settings import Settings
from streams.simulator import SimConfig, simulate
from streams.store import Checkpoint, Store, user_key
from streams.writer import RemoteSink, UsersRequest, Writer, build_web_app
from tests.integration.test_crash_recovery import snapshot
from tests.integration.test_store_pipeline import TOPIC, messages

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stream() -> list[Message]:
    return messages(simulate(SimConfig(users=120, days=3, seed=11)).events)


def run(pipeline: Pipeline, msgs: list[Message], batch: int = 500) -> Outcome:
    """Every message, ``batch`` at a time; the outcomes' memory counts summed up."""
    total = Outcome()
    for i in range(0, len(msgs), batch):
        outcome = pipeline.commit(pipeline.prepare(msgs[i : i + batch]))
        assert not (outcome.retry or outcome.fenced)
        total.loaded_users += outcome.loaded_users
        total.evicted_users += outcome.evicted_users
        for kind, n in outcome.folded.items():
            total.folded[kind] = total.folded.get(kind, 0) + n
        total.changes += outcome.changes
    return total


def reference(db: Path, msgs: list[Message], limits: StateLimits | None = None) -> Outcome:
    """The stream through a pipeline that keeps every user in memory."""
    pipeline = Pipeline(Store(db), build_engine(limits=limits), topic=TOPIC)
    pipeline.assign({0, 1})
    outcome = run(pipeline, msgs)
    pipeline.store.close()
    assert outcome.evicted_users == 0
    return outcome


def evicting(sink: Sink, limits: StateLimits | None = None) -> Pipeline:
    """A pipeline that evicts every user idle at all (behind the partition's newest decision) after each commit,
    and keeps at most 10 users in memory."""
    pipeline = Pipeline(sink, build_engine(limits=limits), topic=TOPIC, idle_user_ms=0, max_resident_users=10)
    pipeline.assign({0, 1})
    return pipeline


def test_evicted_users_come_back_from_the_store_and_the_store_ends_up_the_same(
    tmp_path: Path, stream: list[Message]
) -> None:
    kept = reference(tmp_path / "kept.duckdb", stream)
    pipeline = evicting(Store(tmp_path / "evicted.duckdb"))
    outcome = run(pipeline, stream)
    assert pipeline.engine.tracked_users() <= 10
    pipeline.store.close()
    assert outcome.evicted_users > 500 and outcome.loaded_users > 500, outcome
    evicted, expected = snapshot(tmp_path / "evicted.duckdb"), snapshot(tmp_path / "kept.duckdb")
    assert evicted["changes"], "the simulated attackers raise alerts"
    assert evicted == expected, "alerts, changes, detector state and everything else as with every user kept"
    assert len(outcome.changes) == len(kept.changes)


def test_taking_a_partition_over_loads_no_user_until_their_next_decision(tmp_path: Path, stream: list[Message]) -> None:
    db = tmp_path / "takeover.duckdb"
    first = Pipeline(Store(db), build_engine(), topic=TOPIC)
    first.assign({0, 1})
    cut = len(stream) // 2
    run(first, stream[:cut])
    first.store.close()

    second = Pipeline(Store(db), build_engine(), topic=TOPIC)
    second.assign({0, 1})
    assert second.engine.tracked_users() == 0, "assignment loads the population and alerts, no user"
    batch = stream[cut : cut + 300]
    outcome = second.commit(second.prepare(batch))
    users = {m.key for m in batch}
    assert second.engine.tracked_users() == len(users)
    row = second.store.conn.execute("SELECT count(*) FROM detector_state").fetchone()
    assert row is not None and row[0] > second.engine.tracked_users(), "the rest stay in the store"
    assert 0 < outcome.loaded_users <= len(users)
    second.store.close()


def test_a_store_from_before_migration_005_finds_its_users_by_key(tmp_path: Path) -> None:
    db = tmp_path / "legacy.duckdb"
    legacy = Store(db, upto=4)
    users = [(p, "acme", f"user-{i}", f"state {i}".encode()) for i in range(50) for p in (0, 1)]
    legacy.apply(Checkpoint(topic=TOPIC, users=users, offsets={0: 1}))
    legacy.close()
    store = Store(db)
    rows = store.conn.execute("SELECT tenant, user_id, user_key FROM detector_state").fetchall()
    assert len(rows) == 100 and all(key == user_key(t, u) for t, u, key in rows)
    indexes = store.conn.execute("SELECT index_name FROM duckdb_indexes() WHERE table_name = 'detector_state'")
    assert ("detector_state_user_key",) in indexes.fetchall()
    found = store.user_states_for({1: [("acme", "user-7"), ("acme", "nobody")], 0: [("acme", "user-49")]})
    assert found == {1: [("acme", "user-7", b"state 7")], 0: [("acme", "user-49", b"state 49")]}
    store.close()


def test_what_the_caps_fold_is_counted_in_the_metrics(tmp_path: Path, stream: list[Message]) -> None:
    small = StateLimits(max_categories_per_user=5, max_categories_per_partition=8, max_tenants_per_partition=1)
    kept = reference(tmp_path / "kept.duckdb", stream, small)
    assert kept.folded["category"] > 0 and kept.folded["tenant"] > 0, "acme (14 categories) and globex fold"
    metrics = Metrics()
    fresh = {s.labels["kind"]: s.value for s in samples(metrics, "guardstream_detector_state_folded_total")}
    assert fresh == {"category": 0.0, "tenant": 0.0}, "both series exist from the start"
    pipeline = evicting(Store(tmp_path / "evicted.duckdb"), small)
    outcome = run(pipeline, stream)
    pipeline.store.close()
    assert outcome.folded == kept.folded, "the caps fold the same with users evicted and reloaded"
    assert snapshot(tmp_path / "evicted.duckdb") == snapshot(tmp_path / "kept.duckdb")
    metrics.observe_memory(outcome.folded, outcome.loaded_users, outcome.evicted_users)
    folded = {s.labels["kind"]: s.value for s in samples(metrics, "guardstream_detector_state_folded_total")}
    assert folded == {kind: float(n) for kind, n in outcome.folded.items()}
    [loaded] = samples(metrics, "guardstream_detector_users_loaded_total")
    assert loaded.value == outcome.loaded_users > 0


def samples(metrics: Metrics, name: str) -> list[object]:
    return [
        s
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
        if s.name == name
    ]


# -- the writer topology ---------------------------------------------------------------------------------------
CREDENTIALS = {"web_username": "worker", "web_password": "a long enough test password"}


@contextmanager
def serving(store: Store, settings: Settings) -> Iterator[tuple[str, Writer]]:
    """The writer's HTTP endpoints (``guardstream writer`` without its Kafka producer) on a loopback port."""
    loop = asyncio.new_event_loop()
    writer = Writer(settings, store, Metrics())
    runner = web.AppRunner(build_web_app(writer, settings), access_log=None)
    port = free_port()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield f"http://127.0.0.1:{port}", writer
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        writer.db_thread.shutdown(wait=True)
        loop.close()


def test_workers_fetch_evicted_users_from_the_writer(tmp_path: Path, stream: list[Message]) -> None:
    reference(tmp_path / "kept.duckdb", stream)
    settings = Settings(db=tmp_path / "written.duckdb", **CREDENTIALS)  # type: ignore[arg-type]
    store = Store(settings.db)
    with serving(store, settings) as (url, writer):
        sink = RemoteSink(url, authorization=settings.web_authorization())
        pipeline = evicting(sink)
        outcome = run(pipeline, stream)
        sink.close()
        assert outcome.loaded_users > 500
        loads = writer.own.user_loads._value.get()  # type: ignore[attr-defined]
        assert loads == outcome.loaded_users, "every returning user's state came through /v1/users"
    store.close()
    assert snapshot(settings.db) == snapshot(tmp_path / "kept.duckdb")


def test_the_users_endpoint_answers_only_with_credentials(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "auth.duckdb", **CREDENTIALS)  # type: ignore[arg-type]
    store = Store(settings.db)
    store.apply(Checkpoint(topic=TOPIC, users=[(0, "acme", "u1", b"secret state")], offsets={0: 1}))
    body = msgspec.msgpack.encode(UsersRequest([(0, "acme", "u1")]))
    with serving(store, settings) as (url, _writer):
        request = urllib.request.Request(url + "/v1/users", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        sink = RemoteSink(url, authorization=settings.web_authorization())
        assert sink.user_states_for({0: [("acme", "u1"), ("acme", "u2")]}) == {0: [("acme", "u1", b"secret state")]}
        sink.close()
    store.close()
