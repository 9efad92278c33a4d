"""What a detector hands back: plain data, turned into alerts by the alert book."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    detector: str
    tenant: str
    user_id: str
    category: str | None
    severity: str  # "warning" | "critical"
    score: float
    reason: str
    ts_ms: int  # event time of the decision that tipped the verdict
    evidence: dict[str, Any] = msgspec.field(default_factory=dict)
    action: dict[str, Any] = msgspec.field(default_factory=dict)
    """What a gateway could do about it, e.g. {"type": "throttle", "category": "S2", "max_per_hour": 5}."""

    @property
    def alert_id(self) -> str:
        return alert_id(self.detector, self.tenant, self.user_id, self.category)


def alert_id(detector: str, tenant: str, user_id: str, category: str | None) -> str:
    """Deterministic: one alert per user, detector and category, so a replay re-derives the same id."""
    key = "\x1f".join((detector, tenant, user_id, category or ""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
