"""Read-only SQL over the store, whether or not a pipeline is running on it.

While ``guardstream run`` (or ``guardstream writer``) holds the DuckDB file, queries go to its ``/query``
endpoint (found through the ``<db>.service.json`` file it writes); otherwise the file is opened read-only
directly. Either way the query runs in the sandbox of :mod:`streams.sandbox` and comes back as an Arrow table.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa

from streams.sandbox import QueryLimits, QueryParams, QueryRefused, open_sandboxed, run_query
from streams.settings import Settings
from streams.worker import running_service


class QueryFailed(RuntimeError):
    pass


def service_request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> urllib.request.Request:
    """A request to a worker's endpoint, with basic auth when GUARDSTREAM_WEB_USERNAME/PASSWORD are set."""
    headers = dict(headers or {})
    authorization = Settings().web_authorization()
    if authorization is not None:
        headers["Authorization"] = authorization
    return urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers)


def open_service(request: urllib.request.Request, timeout: float) -> Any:
    """urlopen with the worker's TLS trust (GUARDSTREAM_WEB_TLS_CAFILE or its own certificate) for https, presenting
    GUARDSTREAM_WEB_TLS_CLIENT_CERT/KEY to a server that requires a client certificate (mutual TLS)."""
    context = Settings().web_client_context() if request.full_url.startswith("https:") else None
    return urllib.request.urlopen(request, timeout=timeout, context=context)


def query_service(url: str, sql: str, timeout: float | None = None, params: QueryParams | None = None) -> pa.Table:
    """Ask a running pipeline. Without params the body is the SQL text; with them, JSON ``{"sql", "params"}``.
    The serving process applies its own time limit; ``timeout`` (default: this side's limit and a margin) only
    bounds a connection that hangs."""
    if timeout is None:
        timeout = Settings().query_timeout_seconds + 30
    if params:
        data = json.dumps({"sql": sql, "params": params}).encode("utf-8")
        content_type = "application/json"
    else:
        data, content_type = sql.encode("utf-8"), "text/plain; charset=utf-8"
    request = service_request(url.rstrip("/") + "/query", data, {"Content-Type": content_type})
    try:
        with open_service(request, timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        if exc.code == 403:
            raise QueryRefused(detail) from exc
        raise QueryFailed(detail) from exc
    except urllib.error.URLError as exc:
        raise QueryFailed(f"cannot reach the pipeline at {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:  # e.g. TLS 1.3: a refused client certificate shows here
        raise QueryFailed(f"cannot reach the pipeline at {url}: {exc}") from exc
    return pa.ipc.open_stream(body).read_all()


def query(
    db: Path,
    sql: str,
    url: str | None = None,
    params: QueryParams | None = None,
    limits: QueryLimits | None = None,
) -> pa.Table:
    """``limits`` applies when this process reads the file itself (default: the settings'); a serving process
    applies its own."""
    if url is None:
        service = running_service(db)
        url = service["url"] if service else None
    if url is not None:
        return query_service(url, sql, params=params)
    conn = open_sandboxed(db)
    try:
        return run_query(conn, sql, params, limits=limits or Settings().query_limits())
    finally:
        conn.close()
