"""The store's HTTP endpoints apart from the web framework that serves them: a worker that holds the store
answers through Faust's web server, the writer process through aiohttp. Each answer is (status, body, type)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import orjson
import pyarrow as pa

from detectors.events import pseudonymize
from streams.metrics import Metrics
from streams.store import Erasure, QueryRefused, Store, parse_query_body

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


async def answer_query(store: Store, body: bytes, content_type: str | None) -> Reply:
    """``POST /query``: read-only SQL over a separate cursor (committed snapshots), answered as Arrow IPC."""
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
