"""Compare what the pipeline flagged with the simulator's ground truth: recall per planted attacker
kind, benign users flagged, precision, and time to detect in event time."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

# The attacker kinds the current detectors are built to catch; others are reported but not expected yet.
TARGETED_KINDS = {"boundary_hugger", "slow_burn_hugger"}


@dataclass
class KindRow:
    kind: str
    users: int = 0
    flagged: int = 0
    detect_hours: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.flagged / self.users if self.users else 0.0

    @property
    def median_detect_hours(self) -> float | None:
        return statistics.median(self.detect_hours) if self.detect_hours else None


@dataclass
class Comparison:
    kinds: list[KindRow]
    benign_users: int
    benign_flagged: int
    flagged_users: int
    flagged_attackers: int
    alerts_by_detector: dict[str, int]
    targeted_recall: float
    precision: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "targeted_recall": self.targeted_recall,
            "benign_users": self.benign_users,
            "benign_flagged": self.benign_flagged,
            "benign_flagged_rate": self.benign_flagged / self.benign_users if self.benign_users else 0.0,
            "flagged_users": self.flagged_users,
            "alerts_by_detector": self.alerts_by_detector,
            "kinds": [
                {
                    "kind": k.kind,
                    "users": k.users,
                    "flagged": k.flagged,
                    "recall": k.recall,
                    "median_hours_to_detect": k.median_detect_hours,
                }
                for k in self.kinds
            ],
        }


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def compare(labels: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> Comparison:
    """``labels``: rows with tenant, user_id (as stored), kind, first_attack_ts. ``alerts``: alert rows."""
    first_alert: dict[tuple[str, str], datetime] = {}
    by_detector: dict[str, int] = defaultdict(int)
    for alert in alerts:
        key = (alert["tenant"], alert["user_id"])
        ts = _ts(alert["ts"])
        assert ts is not None
        if key not in first_alert or ts < first_alert[key]:
            first_alert[key] = ts
        by_detector[alert["detector"]] += 1
    rows: dict[str, KindRow] = {}
    benign_users = benign_flagged = flagged_attackers = 0
    labelled: set[tuple[str, str]] = set()
    for label in labels:
        key = (label["tenant"], label["user_id"])
        labelled.add(key)
        kind = label["kind"]
        flagged = key in first_alert
        if kind.startswith("benign"):
            benign_users += 1
            benign_flagged += flagged
            continue
        row = rows.setdefault(kind, KindRow(kind))
        row.users += 1
        if flagged:
            row.flagged += 1
            flagged_attackers += 1
            start = _ts(label.get("first_attack_ts"))
            if start is not None:
                row.detect_hours.append(max(0.0, (first_alert[key] - start).total_seconds() / 3600))
    flagged_users = sum(1 for key in first_alert if key in labelled)
    targeted = [r for r in rows.values() if r.kind in TARGETED_KINDS]
    targeted_users = sum(r.users for r in targeted)
    return Comparison(
        kinds=sorted(rows.values(), key=lambda r: (r.kind not in TARGETED_KINDS, r.kind)),
        benign_users=benign_users,
        benign_flagged=benign_flagged,
        flagged_users=flagged_users,
        flagged_attackers=flagged_attackers,
        alerts_by_detector=dict(by_detector),
        targeted_recall=sum(r.flagged for r in targeted) / targeted_users if targeted_users else 0.0,
        precision=flagged_attackers / flagged_users if flagged_users else 0.0,
    )


def print_comparison(c: Comparison, console: Console) -> None:
    table = Table(title="Planted attackers vs what the pipeline flagged")
    for col in ("attacker kind", "planted", "flagged", "recall", "median time to detect"):
        table.add_column(col, justify="left" if col == "attacker kind" else "right")
    for row in c.kinds:
        ttd = row.median_detect_hours
        note = "" if row.kind in TARGETED_KINDS else " (no detector yet)"
        table.add_row(
            row.kind + note,
            str(row.users),
            str(row.flagged),
            f"{row.recall:.0%}",
            "-" if ttd is None else f"{ttd:.1f} h",
        )
    table.add_row(
        "benign users",
        str(c.benign_users),
        str(c.benign_flagged),
        f"{c.benign_flagged / c.benign_users:.2%} flagged" if c.benign_users else "-",
        "",
    )
    console.print(table)
    console.print(
        f"boundary-hugging recall (kinds it targets): [bold]{c.targeted_recall:.0%}[/bold]   "
        f"precision over flagged users: [bold]{c.precision:.0%}[/bold] "
        f"({c.flagged_attackers} of {c.flagged_users} flagged users are planted attackers)"
    )
