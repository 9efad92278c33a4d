"""Investigations: named, parameterized queries from ``sql/queries/`` and the per-user report.

Every named query is one read-only statement with DuckDB named parameters (``$user_id``), declared in its
header as ``-- param NAME: required | null | DEFAULT``. Values are always bound, never spliced into the SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streams.output import rows
from streams.sandbox import QueryParams
from streams.store import sql_dir

REQUIRED = object()
_PARAM = re.compile(r"^--\s*param\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*?)\s*$")

Runner = Callable[[str, QueryParams], pa.Table]


class UnknownQuery(LookupError):
    pass


class BadParams(ValueError):
    pass


def queries_dir() -> Path:
    return sql_dir() / "queries"


def available() -> list[str]:
    folder = queries_dir()
    return sorted(p.stem for p in folder.glob("*.sql")) if folder.is_dir() else []


def named_query(name: str) -> str:
    """The SQL text of a named query; the error lists the names there are."""
    path = queries_dir() / f"{name}.sql"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not path.is_file():
        raise UnknownQuery(f"no named query {name!r}; available: {', '.join(available()) or 'none'}")
    return path.read_text()


def description(sql: str) -> str:
    """The first comment line of a query file."""
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            return line.strip()[2:].strip()
    return ""


def declared_params(sql: str) -> dict[str, Any]:
    """The ``-- param`` header: name -> default (``REQUIRED`` or ``None`` for null)."""
    found: dict[str, Any] = {}
    for line in sql.splitlines():
        match = _PARAM.match(line.strip())
        if match:
            name, default = match.groups()
            found[name] = REQUIRED if default == "required" else None if default in ("null", "") else default
    return found


def bind(sql: str, given: dict[str, str]) -> QueryParams:
    """The declared parameters with the given values and the defaults; unknown or missing ones are errors."""
    declared = declared_params(sql)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise BadParams(f"unknown parameter(s) {', '.join(unknown)}; this query takes {', '.join(declared) or 'none'}")
    params = {**declared, **given}
    missing = [name for name, value in params.items() if value is REQUIRED]
    if missing:
        raise BadParams(f"missing parameter(s): {', '.join(f'-p {m}=...' for m in missing)}")
    return params


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadParams(f"parameter {pair!r} is not key=value")
        out[key.strip()] = value
    return out


def run_named(run: Runner, name: str, given: dict[str, str]) -> pa.Table:
    sql = named_query(name)
    return run(sql, bind(sql, given))


# -- the investigation report -------------------------------------------------------------------------
@dataclass(slots=True)
class Investigation:
    user_id: str
    alerts: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    totals: list[dict[str, Any]]

    @property
    def empty(self) -> bool:
        return not (self.alerts or self.timeline or self.totals)


def investigate(run: Runner, user_id: str, limit: int = 50) -> Investigation:
    return Investigation(
        user_id=user_id,
        alerts=rows(run_named(run, "user_alerts", {"user_id": user_id})),
        timeline=rows(run_named(run, "user_timeline", {"user_id": user_id, "limit": str(limit)})),
        totals=rows(run_named(run, "user_category_totals", {"user_id": user_id})),
    )


def _action(value: Any) -> str:
    if value in (None, ""):
        return ""
    try:
        action = orjson.loads(value) if isinstance(value, str | bytes) else value
    except orjson.JSONDecodeError:
        return str(value)
    if isinstance(action, dict):
        return str(action.get("summary") or action.get("type") or orjson.dumps(action).decode())
    return str(action)


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value or "")


def _cats(value: Any) -> str:
    return ",".join(value) if value else ""


def _num(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_report(report: Investigation, console: Console) -> None:
    console.print(f"[bold]investigation of {report.user_id}[/bold]")
    console.print(f"[bold]alerts ({len(report.alerts)})[/bold]" if report.alerts else "[dim]no alerts[/dim]")
    for a in report.alerts:
        changes = " -> ".join(c["change"] for c in a.get("history") or [])
        colour = "red" if a["severity"] == "critical" else "yellow"
        console.print(
            f"  [{colour}]{a['severity']}[/{colour}] {a['status']}  [bold]{escape(a['detector'])}[/bold]"
            f" / {escape(a['category'] or '-')}  opened {_time(a['ts'])}, last evidence {_time(a['last_ts'])},"
            f" score {_num(a['score'])}, episode {a['episode']}  ({escape(changes)})",
            soft_wrap=True,
        )
        console.print(f"    reason: {escape(a['reason'])}", soft_wrap=True)
        console.print(f"    suggested action: {escape(_action(a['action']) or '-')}", soft_wrap=True)
    console.print()

    timeline = Table(title=f"latest {len(report.timeline)} decisions (oldest first)")
    for col in ("ts", "session", "turn", "stage", "decision", "hugging", "blocked", "min margin", "peak"):
        timeline.add_column(col, overflow="fold")
    for d in report.timeline:
        peak = f"{d['peak_category']} {_num(d['peak_ratio'], 2)}" if d["peak_category"] else ""
        timeline.add_row(
            _time(d["ts"]),
            d["session_id"] or "",
            "" if d["turn"] is None else str(d["turn"]),
            d["stage"],
            d["decision"],
            _cats(d["hugging_categories"]),
            _cats(d["blocked_categories"]),
            _num(d["min_margin"]),
            peak,
        )
    console.print(timeline if report.timeline else "[dim]no decisions[/dim]")

    totals = Table(title="per-category totals (user_category_daily)")
    for col in ("tenant", "category", "days", "decisions", "blocks", "hugs", "hug share", "mean score"):
        totals.add_column(col, overflow="fold")
    for t in report.totals:
        totals.add_row(
            t["tenant"],
            t["category"],
            f"{t['first_day']} .. {t['last_day']}",
            str(t["decisions"]),
            str(t["blocks"]),
            str(t["hugs"]),
            _num(t["hug_share"]),
            _num(t["mean_score"]),
        )
    console.print(totals if report.totals else "[dim]no daily totals[/dim]")
