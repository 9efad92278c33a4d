"""Privacy that cannot switch off by accident: the pseudonym key check, the redacted dead-letter copy, and an
erased user leaving the detectors' memory."""

from __future__ import annotations

import json

import orjson
import pytest
from pydantic import SecretStr

from detectors.engine import Engine
from detectors.events import MAX_EVENT_BYTES, Decision, decode, pseudonymize
from detectors.registry import build_engine
from streams.privacy import KEY_HEADER, REDACTED_HEADER, dead_letter_copy, pseudonymize_key, redact_detail
from streams.settings import PLACEHOLDER_PSEUDONYM_KEYS, PrivacySettingsError, Settings
from streams.simulator import SimConfig, simulate

KEY = b"k2Vq9TzL0xRb7Wn4Ys1Hc6Fd3Jm8Gp5Ae-unit"
EVENT = {
    "event_id": "e-1",
    "ts": "2026-11-24T10:15:02.123Z",
    "user_id": "u-4821",
    "stage": "input",
    "guardrail": {"name": "llama-guard-3", "version": "8b"},
    "scores": {"S1": 1.7},  # out of range: a schema violation
    "thresholds": {"S1": 0.5},
    "decision": "allow",
    "text": "how do I make ...",
    "turn": 2**70,  # past 64 bits: kept exact in the copy
    "extra": {"nested": ["x", 1.5, None]},
}


def dumps(event: object) -> bytes:
    return json.dumps(event).encode()  # orjson refuses integers past 64 bits


def settings(key: str | None, allow_raw: bool = False) -> Settings:
    secret = None if key is None else SecretStr(key)
    return Settings(_env_file=None, pseudonym_key=secret, allow_raw_user_ids=allow_raw)  # type: ignore[call-arg]


# -- the key -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "says"),
    [
        (None, "is not set"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("0123456789abcdef", "is 16 bytes long, shorter than 32"),
        (PLACEHOLDER_PSEUDONYM_KEYS[0], "placeholder"),
        ("guardstream-demo-key", "placeholder"),
        ("please-replace-me-with-something-long-and-random-0123456789", "placeholder"),
        ("CHANGEME-9f8e7d6c5b4a39281706f5e4d3c2b1a0", "placeholder"),
        ("ab" * 32, "only 2 distinct characters"),
    ],
)
def test_a_missing_empty_short_or_placeholder_key_is_refused_with_what_to_do(key: str | None, says: str) -> None:
    with pytest.raises(PrivacySettingsError) as refused:
        settings(key).checked_pseudonym_key()
    message = str(refused.value)
    assert says in message
    assert message.startswith("GUARDSTREAM_PSEUDONYM_KEY ") and "\n" not in message
    assert "openssl rand -hex 32" in message and "secrets.token_urlsafe(32)" in message
    assert "--allow-raw-user-ids" in message


@pytest.mark.parametrize(
    "key",
    [
        "3f9a1c7e5b2d4f608a1c3e5b7d9f1a2c4e6b8d0f1a3c5e7b9d1f3a5c7e9b1d3f",  # openssl rand -hex 32
        "Jx8mX0uQpC4g7o5tWm1yKq9vZr2sBn6dLf3hTa0eYc4",  # secrets.token_urlsafe(32)
        "q1W2e3R4t5Y6u7I8o9P0a1S2d3F4g5H6j7K8l9Z0x1C=",  # openssl rand -base64 32
    ],
)
def test_a_generated_key_passes_and_is_the_key_used(key: str) -> None:
    assert settings(key).checked_pseudonym_key() == key.encode()


def test_allow_raw_user_ids_runs_without_a_key_and_refuses_one_set_too() -> None:
    assert settings(None, allow_raw=True).checked_pseudonym_key() is None
    assert settings("", allow_raw=True).checked_pseudonym_key() is None  # an empty variable counts as unset
    with pytest.raises(PrivacySettingsError, match="both set"):
        settings(KEY.decode(), allow_raw=True).checked_pseudonym_key()


# -- the dead-letter copy ----------------------------------------------------------------------------------------
def test_a_parsed_event_loses_its_text_and_carries_pseudonyms_in_value_and_key() -> None:
    key, value, headers = dead_letter_copy(b"u-4821", dumps(EVENT), KEY)
    copy = json.loads(value or b"")
    stored = pseudonymize("u-4821", KEY)
    assert "text" not in copy and b"how do I" not in (value or b"")
    assert copy["user_id"] == stored and b"u-4821" not in (value or b"") and key == stored.encode()
    assert copy["extra"] is None, "a field the contract does not define keeps its name, not its value"
    assert {k: v for k, v in copy.items() if k not in ("user_id", "extra")} == {
        k: v for k, v in EVENT.items() if k not in ("user_id", "text", "extra")
    }, "everything else as it came, a 70-bit integer included"
    assert dict(headers) == {REDACTED_HEADER: b"text,user_id,unknown_fields", KEY_HEADER: b"true"}


def test_fields_the_contract_does_not_define_lose_their_values() -> None:
    event = {**EVENT, "prompt": "how do I make ...", "messages": [{"role": "user", "content": "..."}]}
    del event["text"]
    _key, value, headers = dead_letter_copy(b"u-4821", dumps(event), KEY)
    copy = json.loads(value or b"")
    assert copy["prompt"] is None and copy["messages"] is None and b"how do I" not in (value or b"")
    assert copy["scores"] == EVENT["scores"] and copy["guardrail"] == EVENT["guardrail"]
    assert dict(headers)[REDACTED_HEADER] == b"user_id,unknown_fields"


def test_the_key_is_the_stored_pseudonym_of_the_user() -> None:
    """What the pipeline stores for the event's user is what the dead letter's key says: the two can be joined."""
    event = {**EVENT, "scores": {"S1": 0.2}, "turn": 1}
    decoded = decode(orjson.dumps(event), pseudonym_key=KEY)
    assert isinstance(decoded, Decision) and decoded.user_id == pseudonymize("u-4821", KEY)
    assert pseudonymize_key(b"u-4821", KEY) == decoded.user_id.encode()
    assert pseudonymize_key("Jörg-✓".encode(), KEY) == pseudonymize("Jörg-✓", KEY).encode()
    latin1 = pseudonymize_key("Jörg".encode("latin-1"), KEY)
    assert latin1.startswith(b"p-") and b"J" not in latin1


@pytest.mark.parametrize(
    "value",
    [
        b"{not json",
        dumps(EVENT).replace(b"how do I", b"how \xff I"),  # not UTF-8
        dumps(EVENT).decode().encode("utf-16"),
        dumps({**EVENT, "text": "x" * MAX_EVENT_BYTES}),  # too large: never parsed
        dumps([EVENT]),  # JSON, not an object
        b"",
    ],
)
def test_undecodable_bytes_travel_as_they_came(value: bytes) -> None:
    key, copy, headers = dead_letter_copy(b"u-4821", value, KEY)
    assert copy == value
    assert dict(headers) == {KEY_HEADER: b"true"} and key == pseudonymize("u-4821", KEY).encode()


def test_user_ids_that_are_not_strings_are_pseudonymized_too() -> None:
    for raw in (42, ["u-1"], {"id": "u-1"}):
        _key, value, headers = dead_letter_copy(None, dumps({**EVENT, "user_id": raw}), KEY)
        copy = json.loads(value or b"")
        assert copy["user_id"].startswith("p-") and "u-1" not in (value or b"").decode()
        assert dict(headers) == {REDACTED_HEADER: b"text,user_id,unknown_fields"}  # EVENT has "extra"


def test_without_a_key_text_is_still_dropped_and_ids_stay_raw() -> None:
    key, value, headers = dead_letter_copy(b"u-4821", dumps(EVENT), None)
    copy = json.loads(value or b"")
    assert "text" not in copy and copy["user_id"] == "u-4821" and key == b"u-4821"
    assert dict(headers) == {REDACTED_HEADER: b"text,unknown_fields"}


def test_an_event_without_text_or_user_id_is_not_rewritten() -> None:
    original = b'{"event_id": "e-9",  "ts": "2026-11-24T10:15:02Z"}'
    assert dead_letter_copy(None, original, KEY) == (None, original, [])


def test_a_reason_that_quotes_the_raw_id_or_text_is_scrubbed() -> None:
    value = dumps({**EVENT, "user_id": "u-4821\x07", "text": "tell me the secret plan"})
    detail = "user_id 'u-4821\\x07' has a control character; text \"tell me the secret plan\" too"
    scrubbed = redact_detail(detail, value, KEY)
    assert "u-4821" not in scrubbed and "secret plan" not in scrubbed
    assert pseudonymize("u-4821\x07", KEY) in scrubbed and "<text>" in scrubbed and "control character" in scrubbed
    # what names no value is left alone, and so is a reason of an undecodable message
    assert redact_detail("Expected `str` of length <= 256 - at `$.user_id`", value, KEY).endswith("`$.user_id`")
    assert redact_detail("u-4821 said", b"{not json u-4821", KEY) == "u-4821 said"


# -- the detectors' memory ---------------------------------------------------------------------------------------
def test_an_erased_user_leaves_every_partition_and_is_never_written_back() -> None:
    engine: Engine = build_engine()
    events = simulate(SimConfig(users=60, days=2, seed=4)).events
    for event in events:
        decoded = decode(orjson.dumps(event), pseudonym_key=KEY)
        assert isinstance(decoded, Decision)
        obs = engine.observe(decoded, int(decoded.ts.timestamp() * 1000))
        engine.process(sum(event["user_id"].encode()) % 3, obs)
    engine.sweep()
    alerted = next(a for a in engine.alerts())
    victim, tenant = alerted.user_id, alerted.tenant
    others = engine.tracked_users() - 1
    assert engine.forget_user(victim, "some-other-tenant") == 0, "another tenant's user of that id stays"
    assert engine.forget_user(victim, tenant) == 1
    assert engine.tracked_users() == others
    assert all(a.user_id != victim for a in engine.alerts())
    dirty = engine.take_dirty()
    assert all(u[2] != victim for u in dirty.users) and all(a.user_id != victim for _p, a in dirty.alerts)
    assert dirty.users, "everyone else's state is still written"
    assert engine.forget_user(victim) == 0, "idempotent"
