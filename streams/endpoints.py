"""The store's HTTP endpoints apart from the web framework that serves them: a worker that holds the store
answers through Faust's web server, the writer process through aiohttp. Each answer is (status, body, type)."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import orjson
import pyarrow as pa

from detectors.events import pseudonymize
from streams.metrics import Metrics
from streams.sandbox import QueryParams, QueryRefused
from streams.store import Erasure, Store

ARROW_STREAM = "application/vnd.apache.arrow.stream"
TEXT = "text/plain"
JSON = "application/json"
AUTH_CHALLENGE = {"WWW-Authenticate": 'Basic realm="guardstream"'}

Reply = tuple[int, bytes, str]
OnStoreThread = Callable[..., Awaitable[Any]]  # runs fn(*args) on the thread that owns the store


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def authorized(given: str | None, expected: str | None) -> bool:
    """Basic auth, compared in constant time; every request passes when none is configured."""
    return expected is None or hmac.compare_digest((given or "").encode(), expected.encode())


def parse_query_body(body: bytes, content_type: str | None = None) -> tuple[str, QueryParams | None]:
    """The ``/query`` request body: plain SQL text, or JSON ``{"sql": "...", "params": {...}}``.

    JSON is recognised by its content type or by a leading ``{`` (no SQL statement starts with one).
    Parameter values must be scalars (string, number, boolean or null); they are bound, never spliced.
    """
    text = body.decode("utf-8", "replace")
    if not ((content_type and "json" in content_type.lower()) or text.lstrip().startswith("{")):
        return text, None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"query body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("sql"), str):
        raise ValueError('a JSON query body must be an object with a "sql" string')
    params = payload.get("params")
    if params is None:
        return payload["sql"], None
    if not isinstance(params, dict):
        raise ValueError('"params" must be an object of name: value')
    for name, value in params.items():
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ValueError(f"parameter {name!r} must be a string, number, boolean or null")
    return payload["sql"], params


async def answer_query(store: Store, body: bytes, content_type: str | None) -> Reply:
    """``POST /query``: a caller's SQL in the sandbox (streams/sandbox.py) on a separate cursor (committed
    snapshots), answered as Arrow IPC; refused (403) with one line when the sandbox refuses it."""
    try:
        sql, params = parse_query_body(body, content_type)
    except ValueError as exc:
        return 400, str(exc).encode(), TEXT
    try:
        table = await asyncio.to_thread(store.query, sql, params)
    except QueryRefused as exc:
        return 403, str(exc).encode(), TEXT
    except Exception as exc:  # a bad query is the caller's problem, not the process's
        return 400, f"{type(exc).__name__}: {exc}".encode(), TEXT
    return 200, to_ipc(table), ARROW_STREAM


async def record_verdict(store: Store, db: OnStoreThread, metrics: Metrics, body: bytes) -> Reply:
    """``POST /verdict``: an analyst's verdict on an alert; the precision gauges follow."""
    try:
        request = orjson.loads(body)
        alert_id, verdict = str(request["alert_id"]), str(request["verdict"])
        analyst, note = request.get("analyst"), request.get("note")
    except (ValueError, KeyError, TypeError) as exc:
        return 400, f"bad verdict request: {exc}".encode(), TEXT
    try:
        detector = await db(store.record_verdict, alert_id, verdict, analyst, note)
    except (ValueError, LookupError) as exc:
        return 400, str(exc).encode(), TEXT
    metrics.observe_verdicts(await db(store.verdict_counts))
    return 200, orjson.dumps({"alert_id": alert_id, "verdict": verdict, "detector": detector}), JSON


class ForgetRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /forget``: the user id as stored (the pseudonym; ``guardstream forget --raw`` maps a raw one), in
    every tenant unless ``tenant`` names one."""

    user_id: Annotated[str, msgspec.Meta(min_length=1)]
    tenant: Annotated[str, msgspec.Meta(min_length=1)] | None = None


_forget_request = msgspec.json.Decoder(ForgetRequest)
InMemory = Callable[[str, str | None, Erasure], int]  # drops the erased user from a running worker's memory


async def forget_user(store: Store, db: OnStoreThread, body: bytes, in_memory: InMemory | None = None) -> Reply:
    """``POST /forget``: erase one user from the store (``Store.forget``) and, in a worker that holds the store,
    from its detectors' memory, in the same call on the store's thread. Answers what was erased, as JSON."""
    try:
        request = _forget_request.decode(body)
    except msgspec.DecodeError as exc:
        return 400, f"bad forget request: {exc}".encode(), TEXT

    def erase() -> Erasure:
        erasure = store.forget(request.user_id, request.tenant)
        if in_memory is not None:
            erasure = msgspec.structs.replace(erasure, in_memory=in_memory(request.user_id, request.tenant, erasure))
        pseudonymize.cache_clear()  # raw id -> pseudonym pairs remembered for decoding: the erased one among them
        return erasure

    return 200, msgspec.json.encode(await db(erase)), JSON
