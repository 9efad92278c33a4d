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
import re
from datetime import datetime
from typing import Annotated, Literal

import msgspec

SCHEMA_V1 = "guardrail.decision/v1"
MAX_EVENT_BYTES = 1_048_576  # larger payloads are rejected before parsing: no legitimate decision is that big
# The contract says "integer >= 0"; the store keeps turn as INTEGER and the sizes as BIGINT. A larger number is
# rejected here with a reason instead of failing the batch's insert (which stops the worker on every restart).
MAX_TURN = 2**31 - 1
MAX_CHARS = 2**63 - 1
# Category names become detector state keys, rows of user_category_daily and (up to a cap) metric label values,
# per user: their length and number per event are bounded like the ids are. The longest name in the taxonomies
# the mapping knows is 22 characters (OpenAI's "self-harm/instructions"; Google's HARM_CATEGORY_DANGEROUS_CONTENT
# is 31): 64 leaves room for namespaced custom names. Llama Guard 3 scores 14 categories and OpenAI's moderation
# 13: 64 per event is several taxonomies at once, and keeps a hostile event from carrying thousands.
MAX_CATEGORY_CHARS = 64
MAX_CATEGORIES = 64

# Characters no identifier may contain (ids, tenant, category names, guardrail, judge, model, policy version):
# - C0 and C1 controls and DEL (Unicode category Cc): a newline or ESC in an id forges log lines and drives the
#   terminal of an analyst reading `guardstream sql` or `investigate` output; NUL truncates in C tools;
# - the line and paragraph separators U+2028/U+2029: line breaks to JavaScript and many log viewers;
# - the bidirectional formatting controls (U+061C, U+200E/F, U+202A-E, U+2066-9): they reorder what is shown,
#   so an id displays as another id ("Trojan Source", CVE-2021-42574).
# Zero-width joiners and non-joiners (U+200C/D) stay allowed: Persian, Indic scripts and emoji need them, and they
# neither break lines nor reorder text. Confusable look-alikes (NFKC) are out of scope. One character class, used
# both by the decoder (a regex search over all identifiers at once) and as the published schema's `pattern`.
FORBIDDEN_IN_IDENTIFIERS = r"\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_FORBIDDEN = re.compile(f"[{FORBIDDEN_IN_IDENTIFIERS}]")
_IDENTIFIER = {"pattern": f"^[^{FORBIDDEN_IN_IDENTIFIERS}]*$"}  # documented in the schema; checked by decode()


def _identifier(max_length: int, min_length: int = 0) -> msgspec.Meta:
    return msgspec.Meta(min_length=min_length or None, max_length=max_length, extra_json_schema=_IDENTIFIER)


Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Threshold = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
NonEmpty128 = Annotated[str, _identifier(128, 1)]
NonEmpty256 = Annotated[str, _identifier(256, 1)]
Id128 = Annotated[str, _identifier(128)]
Id256 = Annotated[str, _identifier(256)]
# A constrained key costs msgspec its cache of short key strings: +0.6 us to decode a simulated event (14 categories
# scored, 14 thresholds), still half of what checking the key lengths in Python afterwards cost.
Category = Annotated[str, _identifier(MAX_CATEGORY_CHARS, 1)]
Scores = Annotated[dict[Category, Score], msgspec.Meta(min_length=1, max_length=MAX_CATEGORIES)]
Thresholds = Annotated[dict[Category, Threshold], msgspec.Meta(max_length=MAX_CATEGORIES)]
Categories = Annotated[list[Category], msgspec.Meta(max_length=MAX_CATEGORIES)]
Stage = Literal["input", "output", "tool", "judge"]
Verdict = Literal["allow", "block", "redact", "escalate"]


# gc=False on the decision's types: frozen, holding only strings, numbers and containers of them, they can never be
# part of a reference cycle, so the cyclic collector need not track them (a worker has thousands in flight).
class Guardrail(msgspec.Struct, frozen=True, gc=False):
    name: NonEmpty128
    version: Id128


class Judge(msgspec.Struct, frozen=True, gc=False):
    name: NonEmpty128
    verdict: Literal["safe", "unsafe"]
    score: Score | None = None


class Decision(msgspec.Struct, frozen=True, gc=False):
    """A decoded, validated decision. ``text`` is accepted for validation and then dropped by :func:`decode`."""

    event_id: NonEmpty128
    ts: datetime
    user_id: NonEmpty256
    stage: Stage
    guardrail: Guardrail
    scores: Scores  # at least one: a decision that scored nothing carries no evidence for any detector
    thresholds: Thresholds
    decision: Verdict
    schema: Annotated[str, msgspec.Meta(max_length=64)] = SCHEMA_V1
    tenant: NonEmpty128 = "default"
    session_id: Id256 | None = None
    turn: Annotated[int, msgspec.Meta(ge=0, le=MAX_TURN)] | None = None  # the store's INTEGER
    request_id: Id256 | None = None
    policy_version: Id128 | None = None
    categories: Categories | None = None
    judge: Judge | None = None
    model: Id256 | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    input_chars: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHARS)] | None = None  # the store's BIGINT
    output_chars: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHARS)] | None = None
    text: Annotated[str, msgspec.Meta(max_length=MAX_EVENT_BYTES)] | None = None  # never past the decoder


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
    "stale_timestamp",
    "invalid_identifier",
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
    ascii_only = raw.isascii()
    if not ascii_only and not _is_utf8(raw):
        # msgspec checks the strings it decodes, not the ones it skips (unknown fields): the whole message must be
        # UTF-8 all the same (RFC 8259), or a latin-1 producer passes as long as only its extra fields are accented
        return Rejection("invalid_encoding", "message is not valid UTF-8")
    if event.schema != SCHEMA_V1:
        return Rejection("unsupported_schema", f"schema {event.schema!r} is not {SCHEMA_V1!r}")
    if event.ts.tzinfo is None:
        return Rejection("naive_timestamp", "ts has no time zone; RFC 3339 requires one (e.g. 'Z')")
    if event.latency_ms is not None and not math.isfinite(event.latency_ms):
        return Rejection("non_finite_number", "latency_ms is not finite")
    # A forbidden character reaches a string only escaped (JSON allows no raw control character in a string,
    # DEL excepted) or as non-ASCII UTF-8: an ASCII message with neither a backslash nor DEL, the usual one, skips
    # the check. ``92 in raw`` is one memchr; ``b"\\" in raw`` first tries the operand as an int (~0.1 us more).
    if not ascii_only or 92 in raw or 127 in raw:
        fault = identifier_fault(event)
        if fault is not None:
            return Rejection("invalid_identifier", fault)
    replace: dict[str, object] = {}
    if event.text is not None:
        replace["text"] = None  # raw text never travels past the decoder
    if pseudonym_key is not None:
        replace["user_id"] = pseudonymize(event.user_id, pseudonym_key)
    return msgspec.structs.replace(event, **replace) if replace else event


def _identifiers(event: Decision) -> list[tuple[str, str]]:
    """Every identifier of the event with the field it came from (category names included)."""
    found = [
        ("event_id", event.event_id),
        ("user_id", event.user_id),
        ("tenant", event.tenant),
        ("guardrail.name", event.guardrail.name),
        ("guardrail.version", event.guardrail.version),
        *(("a category name in scores", c) for c in event.scores),
        *(("a category name in thresholds", c) for c in event.thresholds),
        *(("a category name in categories", c) for c in event.categories or ()),
    ]
    for name in ("session_id", "request_id", "policy_version", "model"):
        value = getattr(event, name)
        if value is not None:
            found.append((name, value))
    if event.judge is not None:
        found.append(("judge.name", event.judge.name))
    return found


def identifier_fault(event: Decision) -> str | None:
    """Where an identifier holds a character of :data:`FORBIDDEN_IN_IDENTIFIERS`, as a detail naming the field
    and the code point (never the value: ids are personal data); ``None`` when none does.

    Every identifier is joined into one string and checked at once (a search per field cost 4x more); ASCII text,
    the usual case, needs no regex: among ASCII characters the forbidden ones are exactly the unprintable ones."""
    g, judge = event.guardrail, event.judge
    joined = "".join(
        (
            event.event_id,
            event.user_id,
            event.tenant,
            g.name,
            g.version,
            event.session_id or "",
            event.request_id or "",
            event.policy_version or "",
            event.model or "",
            judge.name if judge is not None else "",
            *event.scores,
            *event.thresholds,
            *(event.categories or ()),
        )
    )
    if joined.isprintable() if joined.isascii() else _FORBIDDEN.search(joined) is None:
        return None
    for name, value in _identifiers(event):
        hit = _FORBIDDEN.search(value)
        if hit is not None:
            return (
                f"{name} contains U+{ord(hit.group()):04X}, a control, line separator or bidi character: "
                "identifiers must be printable text"
            )
    return None  # not reached: the joined search found one


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
