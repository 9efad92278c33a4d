from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from detectors.events import Decision, Rejection, decode, json_schema, pseudonymize

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
