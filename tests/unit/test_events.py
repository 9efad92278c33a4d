from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from detectors import events
from detectors.events import REJECTION_CODES, Decision, Rejection, decode, json_schema, pseudonymize

EXAMPLE = {
    "event_id": "9f1c2e",
    "ts": "2026-11-24T10:15:02.123Z",
    "tenant": "acme",
    "user_id": "u-4821",
    "session_id": "s-77",
    "turn": 3,
    "request_id": "r-991",
    "stage": "input",
    "guardrail": {"name": "llama-guard-3", "version": "8b"},
    "policy_version": "2026-11-01",
    "scores": {"S1": 0.41, "S9": 0.02},
    "thresholds": {"S1": 0.5, "S9": 0.5},
    "decision": "allow",
    "model": "acme-chat-v2",
    "latency_ms": 38.5,
}


def test_the_contract_example_decodes() -> None:
    event = decode(orjson.dumps(EXAMPLE))
    assert isinstance(event, Decision)
    assert event.user_id == "u-4821" and event.scores["S1"] == 0.41 and event.ts.tzinfo is not None


def test_unknown_fields_are_accepted_and_text_is_dropped() -> None:
    event = decode(orjson.dumps({**EXAMPLE, "text": "how do I ...", "something_new": [1, 2]}))
    assert isinstance(event, Decision)
    assert event.text is None


def test_defaults_apply() -> None:
    minimal = {
        k: EXAMPLE[k] for k in ("event_id", "ts", "user_id", "stage", "guardrail", "scores", "thresholds", "decision")
    }
    event = decode(orjson.dumps(minimal))
    assert isinstance(event, Decision)
    assert event.tenant == "default" and event.session_id is None


@pytest.mark.parametrize(
    ("raw", "code", "mentions"),
    [
        (b"{not json", "invalid_json", "malformed"),
        (b'{"event_id": "\xff"}', "invalid_encoding", "UTF-8"),
        (orjson.dumps({k: v for k, v in EXAMPLE.items() if k != "user_id"}), "schema_violation", "user_id"),
        (orjson.dumps({**EXAMPLE, "scores": {"S1": 1.5}}), "schema_violation", "scores"),
        (orjson.dumps({**EXAMPLE, "scores": {"S1": -0.1}}), "schema_violation", "scores"),
        (orjson.dumps({**EXAMPLE, "thresholds": {"S1": 0}}), "schema_violation", "thresholds"),
        (orjson.dumps({**EXAMPLE, "stage": "elsewhere"}), "schema_violation", "stage"),
        (orjson.dumps({**EXAMPLE, "decision": "maybe"}), "schema_violation", "decision"),
        (orjson.dumps({**EXAMPLE, "turn": -1}), "schema_violation", "turn"),
        (orjson.dumps({**EXAMPLE, "event_id": ""}), "schema_violation", "event_id"),
        (orjson.dumps({**EXAMPLE, "event_id": "x" * 129}), "schema_violation", "event_id"),
        (orjson.dumps({**EXAMPLE, "ts": "2026-11-24T10:15:02"}), "naive_timestamp", "zone"),
        (orjson.dumps({**EXAMPLE, "ts": "yesterday"}), "schema_violation", "ts"),
        (orjson.dumps({**EXAMPLE, "schema": "guardrail.decision/v2"}), "unsupported_schema", "v2"),
        (json.dumps({**EXAMPLE, "scores": {"S1": float("nan")}}).encode(), "invalid_json", ""),
        (b'{"scores": {"S1": 1e999}}', "schema_violation", ""),
        (b"x" * 2_000_000, "too_large", "bytes"),
        (None, "schema_violation", "empty"),
        (b"[]", "schema_violation", "object"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(raw: bytes | None, code: str, mentions: str) -> None:
    result = decode(raw)
    assert isinstance(result, Rejection)
    assert result.code == code
    assert mentions in result.detail


def test_remembered_pseudonyms_are_the_keyed_hash() -> None:
    """Pseudonyms are remembered (the stream sees the same users again and again); what comes back must be the
    HMAC itself, for every key, whether it was computed or remembered."""
    import hashlib
    import hmac

    pseudonymize.cache_clear()
    for round_ in range(3):
        for key in (b"key-a", b"key-b"):
            for i in range(12):
                raw = f"u-{i}"
                expected = "p-" + hmac.new(key, raw.encode(), hashlib.sha256).hexdigest()[:24]
                assert pseudonymize(raw, key) == expected, (round_, key, raw)
    info = pseudonymize.cache_info()
    assert info.misses == 24 and info.hits == 48, info
    assert info.maxsize == events.PSEUDONYMS_KEPT


def test_pseudonyms_are_keyed_and_stable() -> None:
    a = pseudonymize("u-1", b"key-a")
    assert a == pseudonymize("u-1", b"key-a")
    assert a != pseudonymize("u-1", b"key-b")
    assert a != pseudonymize("u-2", b"key-a")
    assert "u-1" not in a
    event = decode(orjson.dumps(EXAMPLE), pseudonym_key=b"key-a")
    assert isinstance(event, Decision) and event.user_id == pseudonymize("u-4821", b"key-a")


def test_published_json_schema_is_current() -> None:
    published = json.loads((Path(__file__).parents[2] / "schema" / "guardrail-decision-v1.json").read_text())
    assert published == json_schema()


# -- poison (issue 7): one case per kind the broker-level fuzz test injects ----------------------------------


def _raw(field: str, literal: bytes, base: dict[str, object] = EXAMPLE) -> bytes:
    """The example with ``field`` set to a raw JSON literal orjson won't write (NaN, 1e999, 2**64, ...)."""
    return orjson.dumps({**base, field: "\x01"}).replace(b'"\\u0001"', literal)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_obj(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


POISON: list[tuple[str, bytes | None, str, str]] = [
    # (id, raw, code, the reason mentions)
    ("not-json-xml", b"<decision id='1'/>", "invalid_json", "malformed"),
    ("not-json-single-quotes", b"{'event_id': '1'}", "invalid_json", "malformed"),
    ("not-json-trailing-comma", b'{"event_id": "1",}', "invalid_json", "malformed"),
    ("not-json-two-objects", orjson.dumps(EXAMPLE) * 2, "invalid_json", "trailing"),
    ("truncated-json", orjson.dumps(EXAMPLE)[:-1], "invalid_json", "truncated"),
    ("truncated-json-mid-string", orjson.dumps(EXAMPLE)[:20], "invalid_json", "truncated"),
    ("empty-value", b"", "invalid_json", "truncated"),
    ("whitespace-only", b"  \n ", "invalid_json", "truncated"),
    ("tombstone", None, "schema_violation", "tombstone"),
    ("array", orjson.dumps([EXAMPLE]), "schema_violation", "got `array`"),
    ("number", b"42", "schema_violation", "got `int`"),
    ("float", b"3.5", "schema_violation", "got `float`"),
    ("string", b'"a decision"', "schema_violation", "got `str`"),
    ("null", b"null", "schema_violation", "got `null`"),
    ("bool", b"true", "schema_violation", "got `bool`"),
    *[
        (f"missing-{f}", orjson.dumps({k: v for k, v in EXAMPLE.items() if k != f}), "schema_violation", f"`{f}`")
        for f in ("event_id", "ts", "user_id", "stage", "guardrail", "scores", "thresholds", "decision")
    ],
    ("string-score", orjson.dumps({**EXAMPLE, "scores": {"S1": "0.3"}}), "schema_violation", "$.scores"),
    ("null-score", orjson.dumps({**EXAMPLE, "scores": {"S1": None}}), "schema_violation", "$.scores"),
    ("bool-score", orjson.dumps({**EXAMPLE, "scores": {"S1": True}}), "schema_violation", "$.scores"),
    ("scores-array", orjson.dumps({**EXAMPLE, "scores": [0.1]}), "schema_violation", "$.scores"),
    ("list-user-id", orjson.dumps({**EXAMPLE, "user_id": ["u-1"]}), "schema_violation", "$.user_id"),
    ("number-ts", orjson.dumps({**EXAMPLE, "ts": 1_795_000_000}), "schema_violation", "$.ts"),
    ("number-event-id", orjson.dumps({**EXAMPLE, "event_id": 5}), "schema_violation", "$.event_id"),
    ("string-guardrail", orjson.dumps({**EXAMPLE, "guardrail": "lg3"}), "schema_violation", "$.guardrail"),
    ("guardrail-no-version", orjson.dumps({**EXAMPLE, "guardrail": {"name": "g"}}), "schema_violation", "version"),
    ("string-threshold", orjson.dumps({**EXAMPLE, "thresholds": {"S1": "0.5"}}), "schema_violation", "$.thresholds"),
    ("bool-decision", orjson.dumps({**EXAMPLE, "decision": True}), "schema_violation", "$.decision"),
    ("string-turn", orjson.dumps({**EXAMPLE, "turn": "3"}), "schema_violation", "$.turn"),
    ("float-turn", orjson.dumps({**EXAMPLE, "turn": 1.5}), "schema_violation", "$.turn"),
    ("string-categories", orjson.dumps({**EXAMPLE, "categories": "S1"}), "schema_violation", "$.categories"),
    ("string-latency", orjson.dumps({**EXAMPLE, "latency_ms": "fast"}), "schema_violation", "$.latency_ms"),
    ("string-judge", orjson.dumps({**EXAMPLE, "judge": "unsafe"}), "schema_violation", "$.judge"),
    ("number-tenant", orjson.dumps({**EXAMPLE, "tenant": 5}), "schema_violation", "$.tenant"),
    ("number-schema", orjson.dumps({**EXAMPLE, "schema": 1}), "schema_violation", "$.schema"),
    ("score-above-1", orjson.dumps({**EXAMPLE, "scores": {"S1": 1.0001}}), "schema_violation", "$.scores"),
    ("score-negative", orjson.dumps({**EXAMPLE, "scores": {"S1": -50.0}}), "schema_violation", "$.scores"),
    (
        "judge-score-above-1",
        orjson.dumps({**EXAMPLE, "judge": {"name": "j", "verdict": "safe", "score": 1.5}}),
        "schema_violation",
        "$.judge.score",
    ),
    ("threshold-negative", orjson.dumps({**EXAMPLE, "thresholds": {"S1": -0.5}}), "schema_violation", "$.thresholds"),
    ("threshold-above-1", orjson.dumps({**EXAMPLE, "thresholds": {"S1": 1.5}}), "schema_violation", "$.thresholds"),
    ("NaN-score", _raw("scores", b'{"S1": NaN}'), "invalid_json", "malformed"),
    ("Infinity-threshold", _raw("thresholds", b'{"S1": Infinity}'), "invalid_json", "malformed"),
    ("-Infinity-latency", _raw("latency_ms", b"-Infinity"), "invalid_json", "malformed"),
    ("1e999-score", _raw("scores", b'{"S1": 1e999}'), "schema_violation", "out of range"),
    ("1e999-latency", _raw("latency_ms", b"1e999"), "schema_violation", "$.latency_ms"),
    ("-1e999-judge-score", _raw("judge", b'{"name": "j", "verdict": "safe", "score": -1e999}'), "schema_violation", ""),
    ("naive-ts-millis", orjson.dumps({**EXAMPLE, "ts": "2026-11-24T10:15:02.123"}), "naive_timestamp", "zone"),
    ("date-only-ts", orjson.dumps({**EXAMPLE, "ts": "2026-11-24"}), "schema_violation", "$.ts"),
    ("leap-second-ts", orjson.dumps({**EXAMPLE, "ts": "2026-12-31T23:59:60Z"}), "schema_violation", "$.ts"),
    ("stage-case", orjson.dumps({**EXAMPLE, "stage": "INPUT"}), "schema_violation", "$.stage"),
    ("stage-empty", orjson.dumps({**EXAMPLE, "stage": ""}), "schema_violation", "$.stage"),
    ("decision-deny", orjson.dumps({**EXAMPLE, "decision": "deny"}), "schema_violation", "$.decision"),
    (
        "judge-verdict",
        orjson.dumps({**EXAMPLE, "judge": {"name": "j", "verdict": "unknown"}}),
        "schema_violation",
        "$.judge.verdict",
    ),
    ("schema-v0", orjson.dumps({**EXAMPLE, "schema": "guardrail.decision/v0"}), "unsupported_schema", "v0"),
    ("schema-empty", orjson.dumps({**EXAMPLE, "schema": ""}), "unsupported_schema", "is not"),
    ("schema-case", orjson.dumps({**EXAMPLE, "schema": "guardrail.decision/V1"}), "unsupported_schema", "V1"),
    ("invalid-utf8-user-id", orjson.dumps(EXAMPLE).replace(b"u-4821", b"u-\xc3\x28"), "invalid_encoding", "UTF-8"),
    ("overlong-utf8", orjson.dumps(EXAMPLE).replace(b"u-4821", b"u-\xc0\xaf"), "invalid_encoding", "UTF-8"),
    ("utf8-surrogate", orjson.dumps(EXAMPLE).replace(b"u-4821", b"u-\xed\xa0\x80"), "invalid_encoding", "UTF-8"),
    ("invalid-utf8-category", orjson.dumps(EXAMPLE).replace(b'"S9"', b'"S\xff"', 1), "invalid_encoding", "UTF-8"),
    ("invalid-utf8-text", _raw("text", b'"how do I \xff"'), "invalid_encoding", "UTF-8"),
    # msgspec does not look inside the unknown fields it skips; the decoder checks the whole message
    ("invalid-utf8-unknown-field", _raw("extra", b'"\xfe\xff"'), "invalid_encoding", "UTF-8"),
    ("invalid-utf8-unknown-key", orjson.dumps(EXAMPLE)[:-1] + b',"ex\xfftra":1}', "invalid_encoding", "UTF-8"),
    ("lone-surrogate-escape", orjson.dumps(EXAMPLE).replace(b"u-4821", b"\\ud800"), "invalid_json", "surrogate"),
    *[
        (f"{enc}-json", json.dumps(EXAMPLE).encode(enc), "invalid_encoding", "UTF")
        for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")
    ],
    ("utf8-bom", b"\xef\xbb\xbf" + orjson.dumps(EXAMPLE), "invalid_json", "malformed"),
    (
        "latin1-user-id",
        json.dumps({**EXAMPLE, "user_id": "Jörg"}, ensure_ascii=False).encode("latin-1"),
        "invalid_encoding",
        "UTF-8",
    ),
    (
        "latin1-unknown-field",
        json.dumps({**EXAMPLE, "note": "café"}, ensure_ascii=False).encode("latin-1"),
        "invalid_encoding",
        "UTF-8",
    ),
    ("200KB-user-id", orjson.dumps({**EXAMPLE, "user_id": "u" * 200_000}), "schema_violation", "$.user_id"),
    ("text-past-1MiB", orjson.dumps({**EXAMPLE, "text": "t" * 1_048_576}), "too_large", "exceeds"),
    ("5MB", orjson.dumps({**EXAMPLE, "text": "x" * 5 * 1024 * 1024}), "too_large", "exceeds"),
    ("10k-nested-arrays", _nested(10_000), "schema_violation", "got `array`"),
    ("10k-nested-arrays-unknown-field", _raw("extra", _nested(10_000)), "invalid_json", "nested too deeply"),
    ("10k-nested-objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "invalid_json", "nested too deeply"),
    ("10k-unclosed-arrays", _raw("extra", b"[" * 10_000), "invalid_json", ""),
    ("10k-nested-categories", _raw("categories", _nested(10_000)), "schema_violation", "$.categories"),
    # "integer >= 0" in the contract, but more than the store's INTEGER / BIGINT columns hold
    ("turn-2^31", _raw("turn", str(2**31).encode()), "schema_violation", "$.turn"),
    ("turn-2^64", _raw("turn", str(2**64 + 1).encode()), "schema_violation", "$.turn"),
    ("input-chars-2^63", _raw("input_chars", str(2**63).encode()), "schema_violation", "$.input_chars"),
    ("output-chars-1e30", _raw("output_chars", str(10**30).encode()), "schema_violation", "$.output_chars"),
]


@pytest.mark.parametrize(("raw", "code", "mentions"), [p[1:] for p in POISON], ids=[p[0] for p in POISON])
def test_every_poison_kind_is_rejected_with_its_reason(raw: bytes | None, code: str, mentions: str) -> None:
    result = decode(raw)
    assert isinstance(result, Rejection), result
    assert result.code == code and result.code in REJECTION_CODES
    assert mentions in result.detail


def test_deep_nesting_is_rejected_however_little_stack_is_left() -> None:
    """msgspec raises RecursionError near the interpreter's limit; the decoder turns it into a Rejection."""
    raw = _raw("extra", _nested(10_000))

    def at_depth(n: int) -> Decision | Rejection:
        return decode(raw) if n == 0 else at_depth(n - 1)

    for depth in (0, 200, sys.getrecursionlimit() - 60):
        result = at_depth(depth)
        assert isinstance(result, Rejection) and result.code == "invalid_json", depth


@pytest.mark.parametrize(
    "event",
    [
        {**EXAMPLE, "text": "p" * 1_000_000},  # a ~1 MB text inside the 1 MiB limit: validated, then dropped
        {**EXAMPLE, "user_id": "Jörg-✓", "tenant": "Zürich", "extra": "café"},  # non-ASCII, valid UTF-8
        {**EXAMPLE, "something_new": {"deep": _nested_obj(100)}},  # unknown, nested, skipped
        {**EXAMPLE, "turn": 2**31 - 1, "input_chars": 2**63 - 1, "output_chars": 0},  # the largest storable
        {**EXAMPLE, "scores": {"S1": 0.0, "S9": 1.0}, "thresholds": {"S1": 1.0, "S9": 1e-9}},  # the range edges
    ],
    ids=["1MB-text", "non-ascii", "nested-unknown-field", "largest-integers", "range-edges"],
)
def test_unusual_but_valid_events_are_accepted(event: dict[str, object]) -> None:
    result = decode(orjson.dumps(event))
    assert isinstance(result, Decision), result
    assert result.text is None


def test_the_decoder_never_raises_on_mutated_bytes() -> None:
    """A seeded fuzz: flipped, inserted, deleted and truncated bytes of valid events."""
    rng = random.Random(7)
    seeds = [orjson.dumps(EXAMPLE), orjson.dumps({**EXAMPLE, "judge": {"name": "j", "verdict": "safe", "score": 0.5}})]
    codes: Counter[str] = Counter()
    for _ in range(3000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            op = rng.randrange(4)
            if op == 0:
                raw[at] = rng.randrange(256)
            elif op == 1:
                raw.insert(at, rng.choice(b'{}[]",:\\0e-.\x00\xff\xc3 '))
            elif op == 2:
                del raw[at]
            else:
                del raw[at:]
            if not raw:
                break
        result = decode(bytes(raw))
        if isinstance(result, Rejection):
            assert result.code in REJECTION_CODES and result.detail
            codes[result.code] += 1
        else:
            assert isinstance(result, Decision)
    assert {"invalid_json", "invalid_encoding", "schema_violation"} <= codes.keys()


# -- bad input that got in before issue 25: bounds, identifiers, empty scores -------------------------------

MANY = {f"c{i}": 0.1 for i in range(events.MAX_CATEGORIES + 1)}
LONG = "x" * (events.MAX_CATEGORY_CHARS + 1)

BOUNDED: list[tuple[str, dict[str, object], str]] = [
    # (id, fields replaced in the example, where the reason points)
    ("empty-scores", {"scores": {}}, "$.scores"),
    ("65-scores", {"scores": MANY, "thresholds": {"c0": 0.5}}, "$.scores"),
    ("65-thresholds", {"thresholds": dict.fromkeys(MANY, 0.5)}, "$.thresholds"),
    ("65-categories", {"categories": list(MANY)}, "$.categories"),
    ("long-category-in-scores", {"scores": {LONG: 0.1}}, "`key` in `$.scores`"),
    ("long-category-in-thresholds", {"thresholds": {LONG: 0.5}}, "`key` in `$.thresholds`"),
    ("long-category-in-categories", {"categories": ["S1", LONG]}, "$.categories[1]"),
    ("empty-category-name", {"scores": {"": 0.1}}, "`key` in `$.scores`"),
    ("long-schema", {"schema": "v" * 65}, "$.schema"),
    ("long-guardrail-version", {"guardrail": {"name": "g", "version": "v" * 129}}, "$.guardrail.version"),
    ("long-model", {"model": "m" * 257}, "$.model"),
]


@pytest.mark.parametrize(("fields", "mentions"), [b[1:] for b in BOUNDED], ids=[b[0] for b in BOUNDED])
def test_category_names_their_number_and_every_string_are_bounded(fields: dict[str, object], mentions: str) -> None:
    result = decode(orjson.dumps({**EXAMPLE, **fields}))
    assert isinstance(result, Rejection), result
    assert result.code == "schema_violation" and mentions in result.detail


def test_the_bounds_themselves_are_accepted() -> None:
    """64 categories of 64 characters each, in scores, thresholds and categories: the largest valid event."""
    names = [f"{i:02d}" + "c" * (events.MAX_CATEGORY_CHARS - 2) for i in range(events.MAX_CATEGORIES)]
    event = {
        **EXAMPLE,
        "scores": dict.fromkeys(names, 0.1),
        "thresholds": dict.fromkeys(names, 0.5),
        "categories": names,
    }
    result = decode(orjson.dumps(event))
    assert isinstance(result, Decision), result
    assert len(result.scores) == events.MAX_CATEGORIES


def test_every_string_of_the_contract_has_a_published_bound() -> None:
    """No string, map or list in the schema is unbounded (a producer can check the limits before sending)."""
    unbounded: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string" and not {"maxLength", "format"} & node.keys():  # a date-time is bounded
                unbounded.append(where)
            if node.get("type") == "object" and "additionalProperties" in node and "maxProperties" not in node:
                unbounded.append(where)
            if node.get("type") == "array" and "maxItems" not in node:
                unbounded.append(where)
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(json_schema(), "$")
    assert unbounded == [], unbounded


# The forbidden characters, one of each kind: C0 controls (escaped in JSON), DEL (raw in JSON), C1 controls,
# the Unicode line and paragraph separators, and the bidi embedding, override, isolate and mark characters.
FORBIDDEN = ["\n", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029", "\u202e", "\u2066", "\u061c"]
FORBIDDEN += ["\u200e", "\u200f", "\u202a"]
IDENTIFIER_FIELDS: list[tuple[str, Callable[[str], dict[str, object]], str]] = [
    ("event_id", lambda v: {"event_id": f"e{v}1"}, "event_id"),
    ("user_id", lambda v: {"user_id": f"u{v}1"}, "user_id"),
    ("tenant", lambda v: {"tenant": f"acme{v}"}, "tenant"),
    ("session_id", lambda v: {"session_id": f"s{v}"}, "session_id"),
    ("request_id", lambda v: {"request_id": f"r{v}"}, "request_id"),
    ("policy_version", lambda v: {"policy_version": f"2026{v}"}, "policy_version"),
    ("model", lambda v: {"model": f"m{v}"}, "model"),
    ("guardrail.name", lambda v: {"guardrail": {"name": f"lg{v}", "version": "8b"}}, "guardrail.name"),
    ("guardrail.version", lambda v: {"guardrail": {"name": "lg", "version": f"8b{v}"}}, "guardrail.version"),
    ("judge.name", lambda v: {"judge": {"name": f"j{v}", "verdict": "safe"}}, "judge.name"),
    ("scores-key", lambda v: {"scores": {"S1": 0.4, f"S{v}9": 0.1}}, "a category name in scores"),
    ("thresholds-key", lambda v: {"thresholds": {"S1": 0.5, f"S{v}9": 0.5}}, "a category name in thresholds"),
    ("categories", lambda v: {"categories": [f"S{v}1"]}, "a category name in categories"),
]


@pytest.mark.parametrize("char", FORBIDDEN, ids=[f"U+{ord(c):04X}" for c in FORBIDDEN])
@pytest.mark.parametrize(("make", "field"), [f[1:] for f in IDENTIFIER_FIELDS], ids=[f[0] for f in IDENTIFIER_FIELDS])
def test_control_and_bidi_characters_in_identifiers_are_rejected(
    char: str, make: Callable[[str], dict[str, object]], field: str
) -> None:
    # both spellings a producer may send: the character itself (orjson escapes only C0 and DEL stays raw) and
    # a \uXXXX escape of it
    for raw in (
        orjson.dumps({**EXAMPLE, **make(char)}),
        json.dumps({**EXAMPLE, **make(char)}).encode(),  # ensure_ascii: every non-ASCII one escaped
    ):
        result = decode(raw)
        assert isinstance(result, Rejection), (field, raw)
        assert result.code == "invalid_identifier" and result.code in REJECTION_CODES
        assert result.detail.startswith(f"{field} contains U+{ord(char):04X}"), result.detail
        assert "u1" not in result.detail and "acme" not in result.detail  # the value itself is never echoed


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": "Jörg-✓", "tenant": "Zürich", "model": "模型-v2"},  # letters and symbols of any script
        {"user_id": "مستخدم\u200c۱", "session_id": "👩\u200d💻"},  # ZWNJ (Persian) and ZWJ (emoji) stay allowed
        {"text": "line one\nline two\t\u202e\x7f"},  # text is not an identifier: anything goes (and is dropped)
        {"user_id": 'u-"quoted"\\back'},  # escapes that are not control characters
    ],
    ids=["non-ascii", "joiners", "controls-in-text", "escaped-quotes"],
)
def test_printable_identifiers_of_any_script_are_accepted(fields: dict[str, object]) -> None:
    result = decode(orjson.dumps({**EXAMPLE, **fields}))
    assert isinstance(result, Decision), result


def test_the_identifier_rule_is_published_in_the_schema() -> None:
    """The schema's pattern and the decoder agree on every forbidden character and on the allowed joiners."""
    properties = json_schema()["$defs"]["Decision"]["properties"]  # type: ignore[index]
    pattern = re.compile(properties["user_id"]["pattern"])
    assert properties["scores"]["propertyNames"]["pattern"] == pattern.pattern
    for char in FORBIDDEN:
        assert pattern.search(f"u{char}1") is None, repr(char)
    assert pattern.search("u\u200d1") and pattern.search("Jörg")
