"""What a detector hands back: plain data, turned into alerts by the stream."""

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

    @property
    def alert_id(self) -> str:
        """Deterministic, so a replay re-derives the same id and storage or consumers can dedupe."""
        key = "\x1f".join((self.detector, self.tenant, self.user_id, self.category or ""))
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
