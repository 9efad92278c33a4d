"""The alerts topic's records, built from the ``alert_changes`` outbox (by a worker that holds the store, or by
the writer process when several workers share one)."""

from __future__ import annotations

from typing import Any

import orjson

from streams.nist import NistMapping

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
