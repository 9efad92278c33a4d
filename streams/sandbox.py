"""The read path's sandbox: how a caller's SQL reaches the store (``guardstream sql``, ``query``,
``investigate``, ``export`` and the ``/query`` endpoint) without reaching anything else.

Three layers, each enforced by DuckDB itself rather than by looking at the text:

1. **The database instance** has external access off (no files, no network, no Python objects of this
   process), extension auto-install and auto-load off, and its configuration locked, so no statement can turn
   any of that back on. The writer seals its own connection the same way once its migrations ran (it reads its
   batches through registered Arrow views, which need no external access); a reader opening the file directly
   gets a read-only connection sealed at open.
2. **The statement** is classified with DuckDB's own parser: exactly one statement, a query (``SELECT``,
   ``FROM``, ``WITH``, ``VALUES``, ``SHOW``, ``DESCRIBE``, ``SUMMARIZE``) whose syntax tree holds no
   data-changing node (DuckDB accepts ``WITH x AS (DELETE ... RETURNING *) SELECT ...``), or ``EXPLAIN`` of
   such a query (``EXPLAIN ANALYZE`` runs the statement inside it, so it is refused). Everything else is
   refused with one line before anything runs.
3. **The transaction** the query runs in is ``READ ONLY`` and always rolled back, on a cursor of its own; it
   is interrupted after :attr:`QueryLimits.timeout_seconds` and returns at most :attr:`QueryLimits.max_rows`
   rows (a cut result says so in its schema metadata, :data:`TRUNCATED_AT`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

QueryParams = dict[str, Any]

# Applied in this order: lock_configuration last, since nothing can be set after it.
SANDBOX_SETTINGS: dict[str, bool] = {
    "enable_external_access": False,  # files, network, ATTACH, COPY, EXPORT, INSTALL/LOAD, Python replacement scans
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,  # no SET/RESET/PRAGMA can undo the above (or change threads, memory, paths)
}

# Query nodes a read-only query is made of; any other (INSERT_QUERY_NODE, UPDATE_QUERY_NODE, DELETE_QUERY_NODE,
# and whatever DuckDB adds later) changes data or is not understood here: refused.
_QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
ALLOWED = "a query (SELECT, FROM, WITH, VALUES, SHOW, DESCRIBE, SUMMARIZE) or EXPLAIN of one"

TRUNCATED_AT = b"guardstream.truncated_at"  # schema metadata of a result cut at max_rows: the limit, as text


class QueryRefused(ValueError):
    """The caller's SQL is not allowed here, or went past a limit. The message is one line for the caller."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """Per request. Defaults are the settings' (``GUARDSTREAM_QUERY_TIMEOUT_SECONDS``, ``..._MAX_ROWS``)."""

    timeout_seconds: float = 60.0
    max_rows: int = 1_000_000


def seal(conn: duckdb.DuckDBPyConnection) -> None:
    """Put a connection's whole database instance in the sandbox; irreversible for the instance's lifetime."""
    for name, value in SANDBOX_SETTINGS.items():
        conn.execute(f"SET {name} = {str(value).lower()}")


def open_sandboxed(path: Path | str) -> duckdb.DuckDBPyConnection:
    """A sealed, read-only connection to a store file that no process holds (see :class:`StoreLocked`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}: run the pipeline first, or pass --db")
    try:
        return duckdb.connect(str(path), read_only=True, config=dict(SANDBOX_SETTINGS))
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreLocked(path, exc) from exc
        raise NotAStore(path, exc) from exc
    except duckdb.Error as exc:
        raise NotAStore(path, exc) from exc


class StoreLocked(RuntimeError):
    def __init__(self, path: Path, cause: Exception) -> None:
        super().__init__(
            f"{path} is held by another process (DuckDB allows one writer). Stop the other guardstream "
            f"process, or query it through its /query endpoint with `guardstream sql`. ({cause})"
        )


class NotAStore(RuntimeError):
    def __init__(self, path: Path, cause: Exception) -> None:
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        super().__init__(f"{path} cannot be opened as a DuckDB store: {first}")


# -- classification ---------------------------------------------------------------------------------------------
_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _syntax_tree(query: str) -> dict[str, Any]:
    """DuckDB's own syntax tree of one SELECT statement (``json_serialize_sql``), from a sealed in-memory
    connection: parsing binds nothing, so it reads no table and no file."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config=dict(SANDBOX_SETTINGS))
        row = _parser.execute("SELECT json_serialize_sql(?)", [query]).fetchone()
    tree: dict[str, Any] = json.loads(row[0]) if row else {"error": True}
    return tree


def _node_types(node: Any, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "type" and isinstance(value, str) and value.endswith("_NODE"):
                found.add(value)
            else:
                _node_types(value, found)
    elif isinstance(node, list):
        for value in node:
            _node_types(value, found)
    return found


def _one_statement(sql: str) -> Any:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse the query: {_first_line(exc)}") from exc
    except ValueError as exc:  # a statement type this duckdb's Python API does not name
        raise QueryRefused(f"not {ALLOWED}: {exc}") from exc
    if not statements:
        raise QueryRefused("empty query")
    if len(statements) > 1:
        raise QueryRefused(f"one statement at a time, not {len(statements)}")
    return statements[0]


def _check_query(statement: Any) -> str:
    kind = statement.type.name
    if kind != "SELECT":
        raise QueryRefused(f"this read-only path takes only {ALLOWED}, not {kind}")
    tree = _syntax_tree(statement.query)
    if tree.get("error"):
        raise QueryRefused(f"not {ALLOWED}: {tree.get('error_message', 'DuckDB cannot serialize it')}")
    writes = sorted(_node_types(tree.get("statements"), set()) - _QUERY_NODES)
    if writes:
        what = ", ".join(w.removesuffix("_QUERY_NODE").removesuffix("_NODE") for w in writes)
        raise QueryRefused(f"a query here cannot change data: it holds {what}")
    return str(statement.query)


def checked(sql: str) -> str:
    """The statement to run for ``sql``, or :class:`QueryRefused` with the reason in one line."""
    statement = _one_statement(sql)
    if statement.type.name != "EXPLAIN":
        return _check_query(statement)
    text = str(statement.query)
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(text) if kind.name != "comment"]
    # the first token is EXPLAIN (the parser said so); what follows must be a plain query
    if len(tokens) < 2:
        raise QueryRefused("EXPLAIN of what? Use EXPLAIN SELECT ...")
    after = tokens[1][0]
    end = tokens[2][0] if len(tokens) > 2 else len(text)
    if text[after:end].strip().lower() in ("analyze", "analyse"):
        raise QueryRefused("EXPLAIN ANALYZE runs the statement it explains: use EXPLAIN without ANALYZE")
    try:
        inner = _one_statement(text[after:])
    except QueryRefused as exc:
        raise QueryRefused(f"EXPLAIN takes one plain query (EXPLAIN SELECT ...): {exc}") from exc
    return "EXPLAIN " + _check_query(inner)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n\n")[0].split())
    return text or type(exc).__name__


# -- running ----------------------------------------------------------------------------------------------------
def run_query(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    params: QueryParams | None = None,
    *,
    limits: QueryLimits | None = None,
    catalog: str | None = None,
) -> pa.Table:
    """Run a caller's query on a new cursor of ``conn`` (a sealed instance) in a read-only transaction that is
    always rolled back. ``params`` binds DuckDB named parameters (``$name``); values are never spliced.
    ``catalog``: the database the cursor starts in when it is not the connection's first (a store attached with
    a row group size). A result longer than ``limits.max_rows`` is cut there and says so (:data:`TRUNCATED_AT`)."""
    limits = limits or QueryLimits()
    statement = checked(sql)
    cursor = conn.cursor()
    timer = threading.Timer(limits.timeout_seconds, cursor.interrupt)
    timer.daemon = True
    try:
        if catalog is not None:
            cursor.execute(f"USE {catalog}")
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        timer.start()
        try:
            relation = cursor.sql(statement, params=params or None)
            if relation is None:
                return pa.table({})
            table = relation.limit(limits.max_rows + 1).to_arrow_table()
        except duckdb.InterruptException as exc:
            raise QueryRefused(
                f"the query ran past its {limits.timeout_seconds:g} s limit (GUARDSTREAM_QUERY_TIMEOUT_SECONDS "
                "where the store is served)"
            ) from exc
        finally:
            timer.cancel()
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
    finally:
        cursor.close()
    if table.num_rows > limits.max_rows:
        table = table.slice(0, limits.max_rows)
        metadata = {**(table.schema.metadata or {}), TRUNCATED_AT: str(limits.max_rows).encode()}
        table = table.replace_schema_metadata(metadata)
    return table


def truncated_at(table: pa.Table) -> int | None:
    """The row limit a result was cut at, or None when it is whole."""
    value = (table.schema.metadata or {}).get(TRUNCATED_AT)
    return int(value) if value is not None else None
