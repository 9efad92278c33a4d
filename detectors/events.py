"""The guardrail decision event, v1: the input contract (``../shared/event-schema.md``).

One typed decoder, used by the stream and by every offline path, so that what the pipeline accepts is
exactly what the contract says. Anything it rejects comes back as a :class:`Rejection` with a bounded
reason code (for metrics) and a human-readable detail (for the dead-letter topic).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
from datetime import datetime
from typing import Annotated, Literal

import msgspec

SCHEMA_V1 = "guardrail.decision/v1"
MAX_EVENT_BYTES = 1_048_576  # larger payloads are rejected before parsing: no legitimate decision is that big
# The contract says "integer >= 0"; the store keeps turn as INTEGER and the sizes as BIGINT. A larger number is
# rejected here with a reason instead of failing the batch's insert (which stops the worker on every restart).
MAX_TURN = 2**31 - 1
MAX_CHARS = 2**63 - 1

Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Threshold = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
NonEmpty128 = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
NonEmpty256 = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Stage = Literal["input", "output", "tool", "judge"]
Verdict = Literal["allow", "block", "redact", "escalate"]


# gc=False on the decision's types: frozen, holding only strings, numbers and containers of them, they can never be
# part of a reference cycle, so the cyclic collector need not track them (a worker has thousands in flight).
class Guardrail(msgspec.Struct, frozen=True, gc=False):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    version: Annotated[str, msgspec.Meta(max_length=128)]


class Judge(msgspec.Struct, frozen=True, gc=False):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    verdict: Literal["safe", "unsafe"]
    score: Score | None = None


class Decision(msgspec.Struct, frozen=True, gc=False):
    """A decoded, validated decision. ``text`` is accepted for validation and then dropped by :func:`decode`."""

    event_id: NonEmpty128
    ts: datetime
    user_id: NonEmpty256
    stage: Stage
    guardrail: Guardrail
    scores: dict[str, Score]
    thresholds: dict[str, Threshold]
    decision: Verdict
    schema: str = SCHEMA_V1
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "default"
    session_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    turn: Annotated[int, msgspec.Meta(ge=0, le=MAX_TURN)] | None = None  # the store's INTEGER
    request_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    policy_version: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    categories: list[str] | None = None
    judge: Judge | None = None
    model: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    input_chars: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHARS)] | None = None  # the store's BIGINT
    output_chars: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHARS)] | None = None
    text: str | None = None


class Rejection(msgspec.Struct, frozen=True):
    """Why an event was refused. ``code`` is a small fixed vocabulary; ``detail`` names the field."""

    code: str
    detail: str


REJECTION_CODES = (
    "too_large",
    "invalid_encoding",
    "invalid_json",
    "schema_violation",
    "unsupported_schema",
    "naive_timestamp",
    "non_finite_number",
    "future_timestamp",
    "detector_error",
)

_decoder = msgspec.json.Decoder(Decision)


def decode(raw: bytes | None, *, pseudonym_key: bytes | None = None) -> Decision | Rejection:
    """Decode and validate one message value; never raises on input."""
    if raw is None:
        return Rejection("schema_violation", "empty message (tombstone or null value)")
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection("too_large", f"message of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        event = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return Rejection("schema_violation", str(exc))
    except UnicodeDecodeError:
        return Rejection("invalid_encoding", "message is not valid UTF-8")
    except msgspec.DecodeError as exc:
        if not _is_utf8(raw):
            return Rejection("invalid_encoding", "message is not valid UTF-8")
        if _utf16_or_32(raw):
            return Rejection("invalid_encoding", "message looks UTF-16 or UTF-32 encoded (NUL bytes); JSON is UTF-8")
        return Rejection("invalid_json", str(exc))
    except RecursionError:  # msgspec recurses per nesting level, also to skip an unknown field
        return Rejection("invalid_json", "JSON nested too deeply to decode")
    except Exception as exc:  # the decoder must never take the worker down, whatever the bytes
        return Rejection("invalid_json", f"undecodable message: {type(exc).__name__}: {exc}")
    if not raw.isascii() and not _is_utf8(raw):
        # msgspec checks the strings it decodes, not the ones it skips (unknown fields): the whole message must be
        # UTF-8 all the same (RFC 8259), or a latin-1 producer passes as long as only its extra fields are accented
        return Rejection("invalid_encoding", "message is not valid UTF-8")
    if event.schema != SCHEMA_V1:
        return Rejection("unsupported_schema", f"schema {event.schema!r} is not {SCHEMA_V1!r}")
    if event.ts.tzinfo is None:
        return Rejection("naive_timestamp", "ts has no time zone; RFC 3339 requires one (e.g. 'Z')")
    if event.latency_ms is not None and not math.isfinite(event.latency_ms):
        return Rejection("non_finite_number", "latency_ms is not finite")
    replace: dict[str, object] = {}
    if event.text is not None:
        replace["text"] = None  # raw text never travels past the decoder
    if pseudonym_key is not None:
        replace["user_id"] = pseudonymize(event.user_id, pseudonym_key)
    return msgspec.structs.replace(event, **replace) if replace else event


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _utf16_or_32(raw: bytes) -> bool:
    """UTF-16/32 JSON: a byte order mark, or NUL bytes among the first four (RFC 4627's detection; JSON text
    never contains a raw NUL)."""
    return raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4]


PSEUDONYMS_KEPT = 65_536  # recent raw id -> pseudonym pairs remembered (least recently used go first)


@functools.lru_cache(maxsize=PSEUDONYMS_KEPT)
def pseudonymize(raw_user_id: str, key: bytes) -> str:
    """Keyed, stable pseudonym: the same raw id and key always give the same value; without the key
    the raw id cannot be recovered or confirmed by guessing.

    The stream sees the same users again and again, and an HMAC per event cost 2.5 µs (a quarter of decoding), so
    the most recent :data:`PSEUDONYMS_KEPT` are remembered (no raw id is kept that the decoded events in memory do
    not already hold)."""
    digest = hmac.new(key, raw_user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return "p-" + digest[:24]


def json_schema() -> dict[str, object]:
    """The published JSON Schema of the contract (``schema/guardrail-decision-v1.json``)."""
    schema: dict[str, object] = msgspec.json.schema(Decision)
    schema["$id"] = "https://guardstream.dev/schema/guardrail-decision-v1.json"
    schema["title"] = "Guardrail decision event, v1"
    decision = schema["$defs"]["Decision"]  # type: ignore[index]
    decision["description"] = (
        "One guardrail decision (input, output, tool or judge stage). Unknown extra fields are accepted and "
        "ignored; `text` is accepted but never stored. See docs in the guardstream repository."
    )
    decision["properties"]["ts"]["format"] = "date-time"
    decision["properties"]["schema"]["const"] = SCHEMA_V1
    return schema
