"""Rendering query results: a rich table for people, exact CSV and JSON for scripts."""

from __future__ import annotations

import base64
import csv
import io
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def progress_bar(
    console: Console, *, description: str = "{task.description}", transient: bool = False, disable: bool = False
) -> Progress:
    """Every command's progress bar: what, the bar, done/total, elapsed."""
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


def rows(table: pa.Table) -> list[dict[str, Any]]:
    """Plain Python rows; MAP columns become dicts (Arrow gives them as lists of pairs)."""
    map_columns = [f.name for f in table.schema if pa.types.is_map(f.type)]
    out: list[dict[str, Any]] = table.to_pylist()
    if map_columns:
        for row in out:
            for name in map_columns:
                if row[name] is not None:
                    row[name] = dict(row[name])
    return out


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(table: pa.Table) -> str:
    return orjson.dumps(rows(table), default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def to_csv(table: pa.Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in rows(table):
        writer.writerow([_cell(v) for v in row.values()])
    return buf.getvalue()


def report_console() -> Console:
    """A console for reports: the terminal's width, or 120 columns when the output is piped or logged."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def print_table(table: pa.Table, console: Console | None = None, title: str | None = None) -> None:
    console = console or Console()
    view = Table(title=title, show_lines=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in rows(table):
        view.add_row(*[_cell(v) for v in row.values()])
    console.print(view)
    console.print(f"[dim]{table.num_rows} row{'s' if table.num_rows != 1 else ''}[/dim]")
