"""The alerts topic's records, built from the ``alert_changes`` outbox (by a worker that holds the store, or by
the writer process when several workers share one).

Each change the alerts topic acknowledges is marked published as such, whatever becomes of the others, so a
retry never sends an acknowledged one again. A change the broker (or the producer's ``max_request_size``) refuses
for its size would be refused on every retry and, failing the whole outbox, keep every later alert off the topic:
it is dead-lettered by itself instead (:func:`alert_dead_letter`) and the rest flows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from streams.nist import NistMapping, load_mapping
from streams.store import Store

log = logging.getLogger("guardstream.outbox")

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]
Send = Callable[[bytes, bytes, list[tuple[str, bytes]]], Awaitable[Awaitable[Any]]]

ALERT_SCHEMA = "guardstream.alert/v1"
ALERT_DEAD_LETTER_SCHEMA = "guardstream.alert-dead-letter/v1"
ALERT_TOO_LARGE = "alert_too_large"  # the DLQ reason code of a refused alert change (decisions have theirs)
SUMMARY_TEXT_CHARS = 1000  # of the reason and the error in a dead-letter summary, which must itself fit


@dataclass(slots=True)
class Published:
    published: int = 0  # acknowledged by the alerts topic and marked so
    dead_lettered: int = 0  # refused for their size, summarized on the dead-letter topic and marked so


class OutboxError(RuntimeError):
    """Some changes were neither acknowledged nor refused for their size (broker down, timeout): they stay in the
    outbox for the next try. ``done`` counts what was published and dead-lettered (and marked so) meanwhile."""

    def __init__(self, message: str, done: Published) -> None:
        super().__init__(message)
        self.done = done


def alert_record(change: dict[str, Any], mapping: NistMapping) -> Record:
    """Key, value and headers of one alert change (a row of ``Store.unpublished_changes``)."""
    body = {
        "schema": ALERT_SCHEMA,
        **change,
        "ts": change["ts"].isoformat(),
        "evidence": orjson.loads(change["evidence"]) if change["evidence"] else {},
        "action": orjson.loads(change["action"]) if change["action"] else {},
        "nist_measure": mapping.signals.get(change["detector"], []),
        "ai600_risk": mapping.signal_risk(change["detector"], change["category"]),
        "category_ai600_risk": mapping.risk(change["category"]),
    }
    return change["user_id"].encode(), orjson.dumps(body), [("guardstream.change", change["change"].encode())]


def too_large(exc: BaseException) -> bool:
    """Whether the record was refused for its size: by the producer before sending (over ``max_request_size``;
    Faust wraps that in its ProducerSendError) or by the broker (over ``message.max.bytes``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MessageSizeTooLargeError | RecordListTooLargeError):
            return True
        seen = seen.__cause__
    return False


def alert_dead_letter(change: dict[str, Any], record: Record, error: BaseException, alerts_topic: str) -> Record:
    """The dead-letter topic's record of an alert change refused for its size: a summary that fits (the change
    without its evidence and action, the reason cut), keyed like the alert, with headers naming the change. The
    whole change stays in the store's ``alert_changes`` (``dead_letter`` says why)."""
    key, value, _headers = record
    cause = f"{type(error).__name__}: {error}"[:SUMMARY_TEXT_CHARS]
    summary = {
        "schema": ALERT_DEAD_LETTER_SCHEMA,
        **{k: v for k, v in change.items() if k not in ("evidence", "action", "reason")},
        "ts": change["ts"].isoformat(),
        "reason": change["reason"][:SUMMARY_TEXT_CHARS],
        "size_bytes": len(value),
        "error": cause,
    }
    headers = [
        ("guardstream.reason_code", ALERT_TOO_LARGE.encode()),
        ("guardstream.reason", f"alert change of {len(value):,} bytes refused by {alerts_topic}: {cause}".encode()),
        ("guardstream.source_topic", alerts_topic.encode()),
        ("guardstream.change_id", change["change_id"].encode()),
        ("guardstream.alert_id", change["alert_id"].encode()),
        ("guardstream.change", change["change"].encode()),
        ("guardstream.original_size", str(len(value)).encode()),
        ("guardstream.rejected_at", datetime.now(UTC).isoformat().encode()),
    ]
    return key, orjson.dumps(summary), headers


async def publish_outbox(
    store: Store, db: Callable[..., Awaitable[Any]], send: Send, dead_letter: Send, alerts_topic: str
) -> Published:
    """Publish every alert change the alerts topic has not acknowledged yet, marking each one published as it is
    acknowledged. ``db`` runs a store call on the thread that owns the store; ``send(key, value, headers)`` (to
    the alerts topic) and ``dead_letter(...)`` (to the dead-letter topic) return the producer's delivery future.

    A change refused for its size is dead-lettered by itself. The broker refuses a whole batch that is over its
    limit, so the changes that shared a batch with a big one fail with it: each of those is sent again alone (its
    acknowledgement awaited before the next is sent, so its batch holds it only), and only what is refused alone
    is dead-lettered. Any other failure raises :class:`OutboxError` once the rest is done."""
    pending = await db(store.unpublished_changes)
    if not pending:
        return Published()
    mapping = load_mapping()
    done = Published()
    refused: list[tuple[dict[str, Any], Record, BaseException]] = []
    failures: list[BaseException] = []
    sent: list[tuple[dict[str, Any], Record, Awaitable[Any]]] = []
    for change in pending:
        record = alert_record(change, mapping)
        try:
            sent.append((change, record, await send(*record)))
        except Exception as exc:
            if not too_large(exc):
                failures.append(exc)
                break  # the producer is unusable: the rest waits in the outbox for the next try
            refused.append((change, record, exc))
    results = await asyncio.gather(*(future for _c, _r, future in sent), return_exceptions=True)
    acknowledged = [c["change_id"] for (c, _r, _f), result in zip(sent, results, strict=True) if not _failed(result)]
    await db(store.mark_published, acknowledged)
    done.published += len(acknowledged)
    for (change, record, _f), result in zip(sent, results, strict=True):
        if not _failed(result):
            continue
        if not too_large(result):
            failures.append(result)
            continue
        try:
            await (await send(*record))
        except Exception as exc:
            if too_large(exc):
                refused.append((change, record, exc))
            else:
                failures.append(exc)
        else:
            await db(store.mark_published, [change["change_id"]])
            done.published += 1
    for change, record, error in refused:
        await (await dead_letter(*alert_dead_letter(change, record, error, alerts_topic)))
        reason = f"{ALERT_TOO_LARGE}: {len(record[1]):,} bytes; {type(error).__name__}: {error}"[:SUMMARY_TEXT_CHARS]
        await db(store.mark_dead_lettered, change["change_id"], reason)
        done.dead_lettered += 1
        log.error(
            "alert change %s (%s of alert %s, %d bytes) is too large for %s: dead-lettered as a summary; the whole "
            "change stays in alert_changes",
            change["change_id"],
            change["change"],
            change["alert_id"],
            len(record[1]),
            alerts_topic,
        )
    if failures:
        raise OutboxError(
            f"{len(failures)} alert change(s) not acknowledged ({failures[0]!r}); they stay in the outbox "
            f"({done.published} published, {done.dead_lettered} dead-lettered meanwhile)",
            done,
        ) from failures[0]
    return done


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)
