"""The alerts topic's records, built from the ``alert_changes`` outbox (by a worker that holds the store, or by
the writer process when several workers share one)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from streams.nist import NistMapping, load_mapping
from streams.store import Store

Send = Callable[[bytes, bytes, list[tuple[str, bytes]]], Awaitable[Awaitable[Any]]]

ALERT_SCHEMA = "guardstream.alert/v1"


def alert_record(change: dict[str, Any], mapping: NistMapping) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
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


async def publish_outbox(store: Store, db: Callable[..., Awaitable[Any]], send: Send) -> int:
    """Publish every alert change the alerts topic has not acknowledged yet, then mark them published.
    ``db`` runs a store call on the thread that owns the store; ``send(key, value, headers)`` returns the
    producer's delivery future. Returns how many were published."""
    pending = await db(store.unpublished_changes)
    if not pending:
        return 0
    mapping = load_mapping()
    futures = [await send(*alert_record(change, mapping)) for change in pending]
    await asyncio.gather(*futures)
    await db(store.mark_published, [c["change_id"] for c in pending])
    return len(pending)
