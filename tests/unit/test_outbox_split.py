"""The outbox's handling of size refusals that only a broker with a limit produces (the embedded one has none):
a record batch over the broker's limit fails every record in it, the big change's neighbours included."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from streams.outbox import ALERT_TOO_LARGE, OutboxError, publish_outbox, too_large

START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def change(i: int, evidence_bytes: int = 10) -> dict[str, Any]:
    return {
        "change_id": f"chg-{i}",
        "alert_id": f"alert-{i}",
        "change": "opened",
        "ts": START + timedelta(minutes=i),
        "tenant": "acme",
        "user_id": f"p-{i}",
        "detector": "boundary_hugging",
        "category": "S1",
        "status": "open",
        "severity": "warning",
        "score": 3.0,
        "reason": "hugs the S1 threshold",
        "evidence": orjson.dumps({"blob": "e" * evidence_bytes}).decode(),
        "action": "{}",
        "episode": 1,
    }


class Outbox:
    """The three store calls publish_outbox makes, in memory."""

    def __init__(self, changes: list[dict[str, Any]]) -> None:
        self.pending = {c["change_id"]: c for c in changes}
        self.published: list[str] = []
        self.dead: dict[str, str] = {}

    def unpublished_changes(self) -> list[dict[str, Any]]:
        return sorted(self.pending.values(), key=lambda c: (c["ts"], c["change_id"]))

    def mark_published(self, ids: list[str]) -> None:
        for i in ids:
            self.pending.pop(i)
            self.published.append(i)

    def mark_dead_lettered(self, change_id: str, reason: str) -> None:
        self.pending.pop(change_id)
        self.dead[change_id] = reason


class Broker:
    """Records sent before the event loop next runs share one batch (as a producer's accumulator has them); a
    batch over ``limit`` bytes is refused whole with MESSAGE_TOO_LARGE, as Kafka's message.max.bytes does."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.topics: dict[str, list[str]] = {"alerts": [], "dlq": []}
        self.batch: list[tuple[str, bytes, asyncio.Future[Any]]] = []

    def sender(self, topic: str) -> Any:
        async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
            future = asyncio.get_running_loop().create_future()
            if not self.batch:
                asyncio.get_running_loop().call_soon(self.flush)
            self.batch.append((topic, value, future))
            return future

        return send

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if sum(len(value) for _t, value, _f in batch) > self.limit:
            for _t, _v, future in batch:
                future.set_exception(MessageSizeTooLargeError())
            return
        for topic, value, future in batch:
            self.topics[topic].append(orjson.loads(value)["change_id"])
            future.set_result(None)


async def on_this_thread(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_a_batch_the_broker_refuses_is_split_and_only_the_big_change_is_dead_lettered() -> None:
    store = Outbox([change(0), change(1), change(2, evidence_bytes=5000), change(3), change(4)])
    broker = Broker(limit=3000)  # one small record fits, the five together do not, the big one alone does not
    done = asyncio.run(publish_outbox(store, on_this_thread, broker.sender("alerts"), broker.sender("dlq"), "alerts"))
    assert (done.published, done.dead_lettered) == (4, 1)
    assert sorted(broker.topics["alerts"]) == ["chg-0", "chg-1", "chg-3", "chg-4"]  # each once
    assert broker.topics["dlq"] == ["chg-2"]
    assert list(store.dead) == ["chg-2"] and store.dead["chg-2"].startswith(ALERT_TOO_LARGE)
    assert not store.pending


def test_acknowledged_changes_are_marked_even_when_others_fail() -> None:
    """Not all-or-nothing: what the topic acknowledged is marked published before the failure is raised."""
    store = Outbox([change(i) for i in range(4)])
    broker = Broker(limit=1 << 20)
    alerts = broker.sender("alerts")

    async def flaky(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        if orjson.loads(value)["change_id"] == "chg-2":
            future = asyncio.get_running_loop().create_future()
            future.set_exception(KafkaTimeoutError())
            return future
        result: asyncio.Future[Any] = await alerts(key, value, headers)
        return result

    with pytest.raises(OutboxError) as failed:
        asyncio.run(publish_outbox(store, on_this_thread, flaky, broker.sender("dlq"), "alerts"))
    assert failed.value.done.published == 3 and store.published == ["chg-0", "chg-1", "chg-3"]
    assert list(store.pending) == ["chg-2"] and not store.dead
    asyncio.run(publish_outbox(store, on_this_thread, alerts, broker.sender("dlq"), "alerts"))
    assert sorted(broker.topics["alerts"]) == ["chg-0", "chg-1", "chg-2", "chg-3"]


def test_size_refusals_are_recognised_however_they_are_wrapped() -> None:
    assert too_large(MessageSizeTooLargeError())
    try:
        try:
            raise MessageSizeTooLargeError("over max_request_size")
        except MessageSizeTooLargeError as exc:
            raise ProducerSendError(f"Error while sending: {exc!r}") from exc  # what Faust's producer raises
    except ProducerSendError as wrapped:
        assert too_large(wrapped)
    assert not too_large(KafkaTimeoutError())
    assert not too_large(ProducerSendError("no transaction producer"))
