"""The alert outbox against a real broker (issue 25): one alert change too large for the broker is dead-lettered by
itself while the rest flows, and a retry never sends again what the alerts topic acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa
import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import ensure_topics, free_port, producer
from streams.outbox import ALERT_DEAD_LETTER_SCHEMA, ALERT_TOO_LARGE, OutboxError, publish_outbox
from streams.settings import Settings
from streams.store import Store
from tests.integration.test_poison import read_all, running_worker
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, stop

pytestmark = pytest.mark.integration
T = TypeVar("T")
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def insert_changes(store: Store, evidence_bytes: dict[str, int], count: int) -> list[str]:
    """``count`` committed, unpublished alert changes (oldest first); those named in ``evidence_bytes`` carry
    evidence of about that many bytes. Returns their change ids in outbox order."""
    ids = [f"chg-{i:03d}" for i in range(count)]
    rows = pa.table(
        {
            "change_id": ids,
            "alert_id": [f"alert-{i % 3}" for i in range(count)],
            "change": ["opened" if i < 3 else "updated" for i in range(count)],
            "ts": pa.array([START + timedelta(minutes=i) for i in range(count)], pa.timestamp("ms", tz="UTC")),
            "tenant": ["acme"] * count,
            "user_id": [f"p-user-{i % 3}" for i in range(count)],
            "detector": ["boundary_hugging"] * count,
            "category": ["S1"] * count,
            "status": ["open"] * count,
            "severity": ["warning"] * count,
            "score": [3.5] * count,
            "reason": ["hugs the S1 threshold"] * count,
            "evidence": [orjson.dumps({"blob": "e" * evidence_bytes.get(i, 10)}).decode() for i in ids],
            "action": ["{}"] * count,
            "episode": pa.array([1] * count, pa.int32()),
            "created_at": pa.array([datetime.now(UTC)] * count, pa.timestamp("us", tz="UTC")),
            "published": [False] * count,
        }
    )
    store.conn.register("new_changes", rows)
    store.conn.execute("INSERT INTO alert_changes BY NAME SELECT * FROM new_changes")
    store.conn.unregister("new_changes")
    return ids


async def on_this_thread(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def outbox_state(store: Store) -> dict[str, tuple[bool, str | None]]:
    rows = store.conn.execute("SELECT change_id, published, dead_letter FROM alert_changes ORDER BY 1").fetchall()
    return {change_id: (published, dead_letter) for change_id, published, dead_letter in rows}


def change_ids(records: list[Any]) -> list[str]:
    return sorted(orjson.loads(r.value)["change_id"] for r in records)


def test_a_change_too_large_for_the_producer_is_dead_lettered_by_itself(settings: Settings, tmp_path: Path) -> None:
    """Five changes, the third with ~200 KB of evidence, a producer that allows 64 KiB (as the writer's, but
    smaller): the four others reach the alerts topic once, the big one the DLQ topic as a summary naming it, the
    store marks each, and publishing again sends nothing."""
    store = Store(tmp_path / "store.duckdb")
    ids = insert_changes(store, {"chg-002": 200_000}, 5)

    async def run() -> tuple[Any, Any]:
        await ensure_topics(settings)
        async with producer(settings, max_request_size=64 * 1024) as prod:

            def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
                return prod.send(settings.alerts_topic, value, key=key, headers=headers)

            def dead_letter(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
                return prod.send(settings.dlq_topic, value, key=key, headers=headers)

            first = await publish_outbox(store, on_this_thread, send, dead_letter, settings.alerts_topic)
            again = await publish_outbox(store, on_this_thread, send, dead_letter, settings.alerts_topic)
            return first, again

    first, again = asyncio.run(run())
    assert (first.published, first.dead_lettered) == (4, 1)
    assert (again.published, again.dead_lettered) == (0, 0)
    alerts = asyncio.run(read_all(settings, settings.alerts_topic))
    assert change_ids(alerts) == [i for i in ids if i != "chg-002"]  # each once, none twice
    (letter,) = asyncio.run(read_all(settings, settings.dlq_topic))
    headers = dict(letter.headers)
    assert headers["guardstream.reason_code"] == ALERT_TOO_LARGE.encode()
    assert headers["guardstream.change_id"] == b"chg-002" and headers["guardstream.alert_id"] == b"alert-2"
    assert headers["guardstream.source_topic"] == settings.alerts_topic.encode()
    assert int(headers["guardstream.original_size"]) > 200_000
    summary = orjson.loads(letter.value)
    assert summary["schema"] == ALERT_DEAD_LETTER_SCHEMA and summary["change_id"] == "chg-002"
    assert "evidence" not in summary and summary["size_bytes"] > 200_000 and len(letter.value) < 4096
    assert letter.key == b"p-user-2"
    state = outbox_state(store)
    assert state["chg-002"][0] is False and (state["chg-002"][1] or "").startswith(ALERT_TOO_LARGE)
    assert all(state[i] == (True, None) for i in ids if i != "chg-002")
    assert store.unpublished_changes() == []
    store.close()
    # a restart reads the outbox from the file: the dead-lettered change is not offered again
    reopened = Store(tmp_path / "store.duckdb")
    assert reopened.unpublished_changes() == []
    # and retention deletes it with the published ones, once it is old enough
    assert reopened.apply_retention(START + timedelta(days=1))["alert_changes"] == 5
    reopened.close()


def test_a_retry_after_a_partial_failure_sends_only_what_was_not_acknowledged(
    settings: Settings, tmp_path: Path
) -> None:
    """The broker acknowledges some changes and times out on others: the acknowledged ones are marked published at
    once, the call fails, and the retry sends only the others, so each change is on the topic exactly once."""
    store = Store(tmp_path / "store.duckdb")
    ids = insert_changes(store, {}, 6)
    lost = {"chg-001", "chg-004"}

    async def run() -> None:
        await ensure_topics(settings)
        async with producer(settings) as prod:

            def dead_letter(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
                return prod.send(settings.dlq_topic, value, key=key, headers=headers)

            async def flaky(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
                if orjson.loads(value)["change_id"] in lost:
                    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                    future.set_exception(KafkaTimeoutError("no acknowledgement in time"))
                    return future
                return await prod.send(settings.alerts_topic, value, key=key, headers=headers)

            async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
                return await prod.send(settings.alerts_topic, value, key=key, headers=headers)

            with pytest.raises(OutboxError, match="2 alert change") as failed:
                await publish_outbox(store, on_this_thread, flaky, dead_letter, settings.alerts_topic)
            assert failed.value.done.published == 4
            assert {c["change_id"] for c in store.unpublished_changes()} == lost
            done = await publish_outbox(store, on_this_thread, send, dead_letter, settings.alerts_topic)
            assert done.published == 2

    asyncio.run(run())
    assert change_ids(asyncio.run(read_all(settings, settings.alerts_topic))) == ids
    assert all(published for published, _ in outbox_state(store).values())
    store.close()


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        exposition = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    )


def test_the_worker_dead_letters_an_alert_over_its_producer_limit_and_publishes_the_rest(
    settings: Settings, tmp_path: Path
) -> None:
    """A worker starting on a store whose outbox holds a 3 MB alert change (past its producer's 2 MiB request
    limit, which Faust reports as its own ProducerSendError) among small ones: it stays up, the small ones reach
    the alerts topic, the big one the DLQ topic, and guardstream_outbox_dead_letters_total counts it."""
    store = Store(settings.db)
    ids = insert_changes(store, {"chg-001": 3 * 1024 * 1024}, 4)
    store.close()
    with running_worker(settings, tmp_path) as (proc, url, log_path):
        deadline = time.monotonic() + 60
        while metric(url, "guardstream_outbox_dead_letters_total") < 1:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-5000:]
            assert time.monotonic() < deadline, "the big alert change was not dead-lettered in 60 s"
            time.sleep(0.5)
        assert metric(url, "guardstream_outbox_dead_letters_total") == 1
        assert get_json(url + "/status")["pid"] == proc.pid
        alerts = asyncio.run(read_all(settings, settings.alerts_topic))
        assert change_ids(alerts) == [i for i in ids if i != "chg-001"]
        (letter,) = asyncio.run(read_all(settings, settings.dlq_topic))
        assert dict(letter.headers)["guardstream.change_id"] == b"chg-001"
        assert "too large" in log_path.read_text(errors="replace")


def test_the_writer_dead_letters_an_alert_over_its_producer_limit_and_publishes_the_rest(
    settings: Settings, tmp_path: Path
) -> None:
    """The same through `guardstream writer`, whose own aiokafka producer (2 MiB requests) publishes the outbox when
    several workers share one store."""
    store = Store(settings.db)
    ids = insert_changes(store, {"chg-003": 3 * 1024 * 1024}, 5)
    store.close()
    port = free_port()
    log_path = tmp_path / "writer.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*GUARDSTREAM, "writer", "--port", str(port)], env=env_for(settings), stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-5000:]
            assert time.monotonic() < deadline, "the big alert change was not dead-lettered in 60 s"
            with contextlib.suppress(OSError):
                if metric(url, "guardstream_outbox_dead_letters_total") >= 1:
                    break
            time.sleep(0.5)
        assert metric(url, "guardstream_outbox_dead_letters_total") == 1
        assert metric(url, "guardstream_writer_alerts_published_total") == 4
        alerts = asyncio.run(read_all(settings, settings.alerts_topic))
        assert change_ids(alerts) == [i for i in ids if i != "chg-003"]
        (letter,) = asyncio.run(read_all(settings, settings.dlq_topic))
        assert dict(letter.headers)["guardstream.change_id"] == b"chg-003"
    finally:
        stop(proc)
