"""Read-only SQL over the store, whether or not a pipeline is running on it.

While ``guardstream run`` holds the DuckDB file, queries go to its loopback ``/query`` endpoint (found
through the ``<db>.service.json`` file it writes); otherwise the file is opened read-only directly.
Both paths accept only read-only statements and return an Arrow table.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa

from streams.store import QueryRefused, open_read_only, run_read_only
from streams.worker import running_service


class QueryFailed(RuntimeError):
    pass


def query_service(url: str, sql: str, timeout: float = 60.0) -> pa.Table:
    request = urllib.request.Request(
        url.rstrip("/") + "/query",
        data=sql.encode("utf-8"),
        method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        if exc.code == 403:
            raise QueryRefused(detail) from exc
        raise QueryFailed(detail) from exc
    except urllib.error.URLError as exc:
        raise QueryFailed(f"cannot reach the pipeline at {url}: {exc.reason}") from exc
    return pa.ipc.open_stream(body).read_all()


def query(db: Path, sql: str, url: str | None = None) -> pa.Table:
    if url is None:
        service = running_service(db)
        url = service["url"] if service else None
    if url is not None:
        return query_service(url, sql)
    conn = open_read_only(db)
    try:
        return run_read_only(conn, sql)
    finally:
        conn.close()
