"""Poison fuzz (issue 7): thousands of invalid messages of every kind, interleaved with valid decisions, through
the real embedded broker and a real `guardstream run` worker. Every invalid message is dead-lettered exactly
once (topic, table and metric agree, each DLQ message with its reason headers and its bytes: without text and with
the pseudonym of user_id when they parse as a JSON object, as they came otherwise), every valid decision is stored
exactly once, and the worker never dies or restarts.

The invalid kinds are generated deterministically (seeded). The huge ones are few (200 KB user_ids, text fields
past the 1 MiB limit, 3 MB keys and one 5 MB message) so the test stays well under a minute; every other kind
has several hundred messages. What each component does with the 5 MB message:

* the producer refuses it unless ``max_request_size`` is raised (aiokafka's default is 1 MiB; a real Kafka
  broker would refuse it too unless ``message.max.bytes`` / the topic's ``max.message.bytes`` were raised);
* tansu accepts it and returns it whole to a fetch whose ``max_partition_fetch_bytes`` (Faust's
  ``consumer_max_fetch_size``, 1 MiB by default) is smaller: a record larger than the limit is still returned
  when it is the first one (KIP-74), so the worker needs no bigger fetch size;
* the decoder rejects it as ``too_large`` without parsing it;
* the worker publishes its first 512 KiB to the DLQ with ``guardstream.truncated: true`` (its producer
  allows 2 MiB requests); a key over 64 KiB is cut the same way (``guardstream.key_truncated``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from detectors.events import MAX_EVENT_BYTES, pseudonymize
from streams.app import DLQ_MAX_KEY_BYTES, DLQ_MAX_VALUE_BYTES
from streams.broker import client_kwargs, free_port, producer
from streams.privacy import CONTRACT_FIELDS, KEY_HEADER, REDACTED_HEADER, pseudonymize_key
from streams.query import query_service
from streams.settings import Settings
from streams.simulator import SimConfig, simulate
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, stop

pytestmark = pytest.mark.integration

SEED = 7
PER_KIND = 300  # every cheap kind; the huge ones are counted below
HUGE_USER_IDS = 20  # 200 KB each
OVER_LIMIT_TEXTS = 8  # a text field just past 1 MiB in total
BIG_TEXT_VALID = 4  # a ~1 MB text field inside the limit: valid, the text is dropped
NESTING = 10_000
FIVE_MB = 5 * 1024 * 1024
REQUIRED = ("event_id", "ts", "user_id", "stage", "guardrail", "scores", "thresholds", "decision")


@dataclass(frozen=True)
class Injected:
    kind: str
    key: bytes | None
    value: bytes | None
    codes: frozenset[str]  # reason codes acceptable for this message (usually one)
    mentions: str = ""  # the reason has to name this (the field), when it is a schema violation
    event_id: str | None = None  # valid messages only


def base_event(rng: random.Random, i: int) -> dict[str, Any]:
    """A valid decision per the v1 contract (../shared/event-schema.md)."""
    return {
        "event_id": f"poison-{i}",
        "ts": f"2026-11-{rng.randint(1, 20):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00.{i % 1000:03d}Z",
        "user_id": f"u-poison-{rng.randrange(50)}",
        "stage": rng.choice(["input", "output", "tool", "judge"]),
        "guardrail": {"name": "llama-guard-3", "version": "8b"},
        "scores": {"S1": round(rng.random(), 3), "S9": round(rng.random(), 3)},
        "thresholds": {"S1": 0.5, "S9": 0.5},
        "decision": rng.choice(["allow", "block"]),
    }


def as_object(value: bytes) -> dict[str, Any] | None:
    """The message as a JSON object, when it is one within the decoder's limit (the standard library's reading,
    NaN and huge integers included), else None."""
    if not value or len(value) > MAX_EVENT_BYTES:
        return None
    try:
        parsed = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def with_raw(event: dict[str, Any], field: str, literal: bytes) -> bytes:
    """The event with ``field`` set to a raw JSON literal (NaN, 1e999, a big integer, ... that orjson won't write)."""
    marker = "\x01marker\x01"
    return dumps({**event, field: marker}).replace(orjson.dumps(marker), literal)


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def invalid_messages(rng: random.Random) -> list[Injected]:
    out: list[Injected] = []
    counter = iter(range(10**9))

    def add(kind: str, value: bytes | None, *codes: str, mentions: str = "", key: bytes | None = b"") -> None:
        n = next(counter)
        out.append(Injected(kind, f"poison-{n}".encode() if key == b"" else key, value, frozenset(codes), mentions))

    def ev() -> dict[str, Any]:
        return base_event(rng, 1_000_000 + len(out))

    # not JSON at all (each template is invalid whatever the random filler)
    letters = "abcdefghijklmnopqrstuvwxyz"
    templates: list[Callable[[str], bytes]] = [
        lambda s: f"{{not json {s}".encode(),
        lambda s: f"<decision id='{s}'/>".encode(),
        lambda s: f"{{'event_id': '{s}'}}".encode(),
        lambda s: f'{{"event_id": "{s}",}}'.encode(),
        lambda s: f"event_id={s}&user_id=u".encode(),
        lambda s: f'{{"event_id" "{s}"}}'.encode(),
        lambda s: f"undefined{s}".encode(),
    ]
    for _ in range(PER_KIND):
        filler = "".join(rng.choice(letters) for _ in range(rng.randint(1, 40)))
        add("not_json", rng.choice(templates)(filler), "invalid_json")
    # truncated JSON: any proper prefix of an (ASCII) object; msgspec validates as it parses, so a prefix that
    # ends in a number that breaks a rule first ("thresholds": {"S1": 0) is a schema violation
    for _ in range(PER_KIND):
        body = dumps(ev())
        add("truncated_json", body[: rng.randrange(1, len(body))], "invalid_json", "schema_violation")
    # JSON, but not an object
    for _ in range(PER_KIND):
        value = rng.choice(
            [
                b"[]",
                dumps([ev()]),
                str(rng.randint(-(10**6), 10**6)).encode(),
                b'"a decision"',
                b"null",
                b"true",
                b"3.5",
            ]
        )
        add("not_an_object", value, "schema_violation", mentions="object")
    # every required field missing in turn
    for i in range(PER_KIND):
        field = REQUIRED[i % len(REQUIRED)]
        add("missing_field", dumps({k: v for k, v in ev().items() if k != field}), "schema_violation", mentions=field)
    # wrong types
    wrong: list[tuple[str, Any]] = [
        ("scores", {"S1": "0.3"}),
        ("scores", {"S1": None}),
        ("scores", {"S1": True}),
        ("scores", [0.1]),
        ("user_id", ["u-1"]),
        ("user_id", 42),
        ("ts", 1_795_000_000),
        ("ts", "yesterday"),
        ("event_id", 5),
        ("stage", 1),
        ("guardrail", "llama-guard-3"),
        ("guardrail", {"name": 3, "version": "8b"}),
        ("thresholds", {"S1": "0.5"}),
        ("decision", True),
        ("turn", "3"),
        ("turn", 1.5),
        ("categories", "S1"),
        ("latency_ms", "fast"),
        ("judge", "unsafe"),
        ("tenant", 5),
        ("session_id", []),
        ("input_chars", 1.5),
        ("schema", 1),
    ]
    for i in range(PER_KIND):
        field, value = wrong[i % len(wrong)]
        add("wrong_type", dumps({**ev(), field: value}), "schema_violation", mentions=field)
    # scores outside [0, 1], negative ones included (and a judge score)
    for _ in range(PER_KIND):
        score = rng.choice([rng.uniform(1.0001, 100.0), -rng.uniform(0.0001, 100.0)])
        if rng.random() < 0.1:
            add(
                "score_out_of_range",
                dumps({**ev(), "judge": {"name": "j", "verdict": "unsafe", "score": score}}),
                "schema_violation",
                mentions="judge",
            )
        else:
            add("score_out_of_range", dumps({**ev(), "scores": {"S1": score}}), "schema_violation", mentions="scores")
    # NaN / Infinity literals (not JSON) and 1e999 (JSON, but out of a double's range)
    for _ in range(PER_KIND):
        literal = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
        field = rng.choice(["scores", "thresholds", "latency_ms", "judge"])
        event = ev()
        if field == "latency_ms":
            value = with_raw(event, "latency_ms", literal)
        elif field == "judge":
            value = with_raw(event, "judge", b'{"name": "j", "verdict": "safe", "score": ' + literal + b"}")
        else:
            value = with_raw(event, field, b'{"S1": ' + literal + b"}")
        code = "schema_violation" if literal.endswith(b"e999") else "invalid_json"
        add("non_finite", value, code, mentions=field if code == "schema_violation" else "")
    # thresholds outside (0, 1]
    for _ in range(PER_KIND):
        threshold = rng.choice([0, 0.0, -rng.uniform(0.0001, 10.0), rng.uniform(1.0001, 10.0)])
        add(
            "threshold_out_of_range",
            dumps({**ev(), "thresholds": {"S1": threshold}}),
            "schema_violation",
            mentions="thresholds",
        )
    # timestamps without a zone
    for _ in range(PER_KIND):
        ts = f"2026-11-{rng.randint(1, 20):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        if rng.random() < 0.5:
            ts += f".{rng.randint(0, 999):03d}"
        add("naive_timestamp", dumps({**ev(), "ts": ts}), "naive_timestamp")
    # values outside the enums
    enums: list[tuple[str, Any]] = [
        ("stage", "elsewhere"),
        ("stage", "INPUT"),
        ("stage", ""),
        ("decision", "maybe"),
        ("decision", "deny"),
        ("decision", "ALLOW"),
        ("judge", {"name": "j", "verdict": "unknown"}),
    ]
    for i in range(PER_KIND):
        field, value = enums[i % len(enums)]
        add("bad_enum", dumps({**ev(), field: value}), "schema_violation", mentions=field)
    # another schema version
    for _ in range(PER_KIND):
        schema = rng.choice(["guardrail.decision/v2", "guardrail.decision/v0", "v1", "", "guardrail.decision/V1"])
        add("unsupported_schema", dumps({**ev(), "schema": schema}), "unsupported_schema")
    # invalid UTF-8: in a stored field, in a category name, in an unknown (skipped) field, and in `text`
    for _ in range(PER_KIND):
        bad = rng.choice(
            [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc3"]
        )
        where = rng.choice(["user_id", "scores", "extra", "text"])
        event = {**ev(), "extra": "@@", "text": "@@"}
        if where == "user_id":
            event["user_id"] = "u-@@"
        elif where == "scores":
            event["scores"] = {"S@@": 0.2}
            event["thresholds"] = {"S@@": 0.5}
        field = "extra" if where == "extra" else "text" if where == "text" else where
        body = dumps(event)
        placeholder_at = body.index(b"@@", body.index(f'"{field}"'.encode()) if where != "scores" else 0)
        add("invalid_utf8", body[:placeholder_at] + bad + body[placeholder_at + 2 :], "invalid_encoding")
    # UTF-16 / UTF-32 encoded JSON (with and without a byte order mark)
    for _ in range(PER_KIND):
        encoding = rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
        add("utf16_or_32", json.dumps(ev()).encode(encoding), "invalid_encoding")
    # latin-1 bytes (a producer that never heard of UTF-8)
    for _ in range(PER_KIND):
        name = rng.choice(["Jörg", "Zoë", "Ñandú", "café", "Åsa", "Müller"])
        field = rng.choice(["user_id", "tenant", "model", "extra"])
        add("latin1", json.dumps({**ev(), field: name}, ensure_ascii=False).encode("latin-1"), "invalid_encoding")
    # an empty value and a null value (tombstone)
    for _ in range(PER_KIND // 2):
        add("empty_value", b"", "invalid_json")
    for _ in range(PER_KIND // 2):
        add("tombstone", None, "schema_violation", mentions="tombstone")
    # deeply nested JSON: top-level arrays, arrays in an unknown field, objects, arrays where strings belong
    for i in range(PER_KIND):
        form = i % 4
        if form == 0:
            add("deep_nesting", nested_arrays(NESTING), "schema_violation", mentions="object")
        elif form == 1:  # skipping an unknown field recurses: msgspec raises RecursionError
            add("deep_nesting", with_raw(ev(), "extra", nested_arrays(NESTING)), "invalid_json")
        elif form == 2:
            add("deep_nesting", b'{"a":' * NESTING + b"1" + b"}" * NESTING, "invalid_json")
        else:
            add("deep_nesting", with_raw(ev(), "categories", nested_arrays(NESTING)), "schema_violation")
    # integers the contract allows (integer >= 0) but the store's columns cannot hold
    for i in range(PER_KIND):
        field, number = [
            ("turn", 2**31),
            ("turn", 2**40),
            ("turn", 2**64 + 1),
            ("input_chars", 2**63),
            ("output_chars", 10**30),
        ][i % 5]
        add("int_out_of_range", with_raw(ev(), field, str(number).encode()), "schema_violation", mentions=field)
    # bounds on category names (issue 25): an empty scores map, more than 64 categories, names past 64 characters
    many = {f"c{i}": 0.1 for i in range(65)}
    for i in range(PER_KIND // 2):
        field, value = [
            ("scores", {}),
            ("scores", many),
            ("thresholds", dict.fromkeys(many, 0.5)),
            ("categories", list(many)),
            ("scores", {"S" * 65: 0.1}),
            ("categories", ["c" * 200]),
        ][i % 6]
        add("category_bounds", dumps({**ev(), field: value}), "schema_violation", mentions=field)
    # control, line-separator and bidi characters in identifiers (issue 25), raw and \u-escaped
    forbidden = ["\n", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u202e", "\u2066"]
    for i in range(PER_KIND // 2):
        char = forbidden[i % len(forbidden)]
        field = ["event_id", "user_id", "tenant", "session_id", "model", "policy_version"][i % 6]
        event = {**ev(), field: f"x{char}y"}
        value = dumps(event) if rng.random() < 0.5 else json.dumps(event).encode()
        add("control_in_identifier", value, "invalid_identifier", mentions=field)
    for i in range(PER_KIND // 2):
        char = forbidden[i % len(forbidden)]
        event = ev()
        where = ["scores", "thresholds", "categories", "guardrail", "judge"][i % 5]
        if where == "guardrail":
            event["guardrail"] = {"name": f"lg{char}", "version": "8b"}
        elif where == "judge":
            event["judge"] = {"name": f"j{char}", "verdict": "safe"}
        elif where == "categories":
            event["categories"] = [f"S{char}1"]
        else:
            event[where] = {**event[where], f"S{char}9": 0.5}
        add("control_in_category_or_name", dumps(event), "invalid_identifier", mentions=where)
    # huge strings: a 200 KB user_id (limit 256 chars), a text field that takes the message past 1 MiB
    for _ in range(HUGE_USER_IDS):
        add("huge_user_id", dumps({**ev(), "user_id": "u" * 200_000}), "schema_violation", mentions="user_id")
    for _ in range(OVER_LIMIT_TEXTS):
        add("text_over_limit", dumps({**ev(), "text": "t" * MAX_EVENT_BYTES}), "too_large")
    # and one 5 MB message, keyed like a real event
    add("five_mb", dumps({**ev(), "text": "x" * FIVE_MB}), "too_large", key=b"u-poison-1")
    # a 3 MB key on a small invalid value (the DLQ keeps the key) and on an oversized one
    add("huge_key", b"{not json", "invalid_json", key=b"k" * (3 * 1024 * 1024))
    add("huge_key", b"x" * (MAX_EVENT_BYTES + 1), "too_large", key=b"k" * (3 * 1024 * 1024))
    # keyless poison too (a tombstone needs a key: aiokafka refuses a record with neither)
    for i in range(0, len(out), 11):
        if out[i].value is not None:
            out[i] = Injected(out[i].kind, None, out[i].value, out[i].codes, out[i].mentions)
    return out


def valid_messages(rng: random.Random) -> list[Injected]:
    events = simulate(SimConfig(users=150, days=1, seed=SEED)).events
    out = [Injected("valid", e["user_id"].encode(), dumps(e), frozenset(), event_id=e["event_id"]) for e in events]
    # valid but unusual: a ~1 MB text (inside the limit; validated, then dropped), unknown fields, nesting
    extras: list[dict[str, Any]] = []
    for i in range(BIG_TEXT_VALID):
        extras.append({**base_event(rng, 2_000_000 + i), "text": "p" * 1_000_000})
    for i in range(50):
        event = {**base_event(rng, 2_100_000 + i), "something_new": {"deep": [[[[{"x": i}]]]]}, "user_id": "Jörg-✓"}
        extras.append(event)
    out += [Injected("valid", e["user_id"].encode(), dumps(e), frozenset(), event_id=e["event_id"]) for e in extras]
    # a valid value under a 3 MB key: the key plays no part in a stored decision
    event = base_event(rng, 2_200_000)
    out.append(Injected("valid", b"k" * (3 * 1024 * 1024), dumps(event), frozenset(), event_id=event["event_id"]))
    return out


async def produce_all(settings: Settings, messages: list[Injected]) -> list[tuple[int, int]]:
    """Send in order; returns each message's (partition, offset) from the broker's acknowledgements."""
    coords: list[tuple[int, int]] = []
    async with producer(settings, max_request_size=8 * 1024 * 1024) as prod:
        for start in range(0, len(messages), 2000):
            futures = [
                await prod.send(settings.decisions_topic, key=m.key, value=m.value)
                for m in messages[start : start + 2000]
            ]
            coords.extend((md.partition, md.offset) for md in await asyncio.gather(*futures))
    return coords


async def read_all(settings: Settings, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record on the topic (up to its end offsets at the time of the call)."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        assert topic in await consumer.topics()  # fetches the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                break
            for part in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


@pytest.fixture
def worker_with_log(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    with running_worker(settings, tmp_path) as worker:
        yield worker


@contextlib.contextmanager
def running_worker(
    settings: Settings, tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """A `guardstream run` worker on the settings' topics and store (with ``env`` on top), serving /status."""
    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*GUARDSTREAM, "run", "--web-port", str(port), "--loglevel", "info"],
            env={**env_for(settings), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-5000:]
            try:
                if get_json(url + "/status")["partitions"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the worker did not serve /status in 90 s"
            time.sleep(0.3)
        yield proc, url, log_path
    finally:
        stop(proc)


def dead_letter_metric(url: str) -> Counter[str]:
    """``guardstream_ingest_dead_letters_total`` from /metrics, summed per reason code."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        exposition = response.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "guardstream_ingest_dead_letters_total":
                counts[sample.labels["reason"]] += int(sample.value)
    return +counts  # drops the pre-created zero series


def test_poison_is_dead_lettered_exactly_once_and_never_stops_the_worker(
    settings: Settings, worker_with_log: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    proc, url, log_path = worker_with_log
    rng = random.Random(SEED)
    invalid = invalid_messages(rng)
    valid = valid_messages(rng)
    messages = invalid + valid
    rng.shuffle(messages)
    kinds = Counter(m.kind for m in invalid)
    assert len(invalid) >= 5000 and sum(1 for n in kinds.values() if n >= PER_KIND // 2) == 21, kinds

    started = time.monotonic()
    coords = asyncio.run(produce_all(settings, messages))
    by_coord = dict(zip(coords, messages, strict=True))
    assert len(by_coord) == len(messages)
    ends: dict[int, int] = {}
    for partition, offset in coords:
        ends[partition] = max(ends.get(partition, 0), offset + 1)

    # wait for the worker to commit every offset, watching that it is the same process all along
    pids: set[int] = set()
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the worker died:\n" + log_path.read_text(errors="replace")[-5000:]
        status = get_json(url + "/status")
        pids.add(status["pid"])
        parts = status["partitions"]
        if all(parts.get(str(p), {}).get("next_offset", 0) >= end for p, end in ends.items()):
            break
        assert time.monotonic() < deadline, f"not caught up: {parts} vs {ends}"
        time.sleep(0.3)
    processed = time.monotonic() - started
    assert {p: parts[str(p)]["next_offset"] for p in ends} == ends

    injected_at = {c: m for c, m in by_coord.items() if m.kind != "valid"}

    # every valid decision stored once
    valid_ids = sorted(m.event_id for m in valid if m.event_id)
    stored = query_service(url, "SELECT event_id FROM decisions ORDER BY event_id").column("event_id").to_pylist()
    assert len(stored) == len(valid) and stored == valid_ids

    # every invalid message in the dead_letters table once, at its coordinates, with the expected code
    table = query_service(
        url, "SELECT kafka_partition, kafka_offset, reason_code, reason, size_bytes FROM dead_letters"
    ).to_pylist()
    assert len(table) == len(invalid)
    rows = {(r["kafka_partition"], r["kafka_offset"]): r for r in table}
    assert rows.keys() == injected_at.keys()
    for coord, row in rows.items():
        m = injected_at[coord]
        assert row["reason_code"] in m.codes, (m.kind, row, (m.value or b"")[:200])
        assert m.mentions in row["reason"], (m.kind, row)
        assert row["size_bytes"] == len(m.value or b"")
    table_codes = Counter(r["reason_code"] for r in table)

    # the metric counts the same, per reason code
    metric = dead_letter_metric(url)
    assert sum(metric.values()) == len(invalid) and metric == table_codes

    status = get_json(url + "/status")
    pids.add(status["pid"])
    assert status["counts"]["dead_letters"] == len(invalid) and status["counts"]["decisions"] == len(valid)
    assert status["counts"]["duplicates"] == 0 and status["counts"]["messages"] == len(messages)

    # the DLQ topic: one message per invalid one, with its key, reason headers and original bytes
    records = asyncio.run(read_all(settings, settings.dlq_topic))
    assert len(records) == len(invalid)
    seen: set[tuple[int, int]] = set()
    topic_codes: Counter[str] = Counter()
    truncated = redacted = 0
    key = settings.pseudonym_key_bytes()
    assert key is not None
    for record in records:
        headers = {k: v for k, v in record.headers}
        coord = (int(headers["guardstream.source_partition"]), int(headers["guardstream.source_offset"]))
        assert coord not in seen
        seen.add(coord)
        m = injected_at[coord]
        original = m.value or b""
        assert headers["guardstream.source_topic"] == settings.decisions_topic.encode()
        assert headers["guardstream.reason_code"].decode() == rows[coord]["reason_code"]
        topic_codes[rows[coord]["reason_code"]] += 1
        assert headers["guardstream.reason"] and m.mentions in headers["guardstream.reason"].decode()
        assert int(headers["guardstream.original_size"]) == len(original)
        assert datetime.fromisoformat(headers["guardstream.rejected_at"].decode()).tzinfo is not None
        # the key (producers key by the raw user id) is its pseudonym, however long it was
        if m.key:
            assert record.key == pseudonymize_key(m.key, key) and headers[KEY_HEADER] == b"true"
            assert len(record.key) < DLQ_MAX_KEY_BYTES and "guardstream.key_truncated" not in headers
        else:
            assert record.key == m.key and KEY_HEADER not in headers
        # an event that parses as a JSON object travels without its text and with its user id's pseudonym; every
        # other value as it came (cut at the DLQ's limit)
        event = as_object(original)
        unknown = [] if event is None else [k for k, v in event.items() if k not in CONTRACT_FIELDS and v is not None]
        if event is not None and ("text" in event or "user_id" in event or unknown):
            copy = json.loads(record.value)
            assert "text" not in copy, m.kind
            if isinstance(event.get("user_id"), str):
                assert copy["user_id"] == pseudonymize(event["user_id"], key), m.kind
            elif "user_id" in event:
                assert copy["user_id"].startswith("p-") and copy["user_id"] != event["user_id"], m.kind
            assert all(copy[k] is None for k in unknown), m.kind  # names kept, values not
            rest = {k: v for k, v in copy.items() if k != "user_id" and k not in unknown}
            expected = {k: v for k, v in event.items() if k not in ("text", "user_id") and k not in unknown}
            assert json.dumps(rest, sort_keys=True) == json.dumps(expected, sort_keys=True), m.kind  # NaN-safe
            fields = [f for f in ("text", "user_id") if f in event] + (["unknown_fields"] if unknown else [])
            assert headers[REDACTED_HEADER] == ",".join(fields).encode()
            redacted += 1
        elif len(original) > DLQ_MAX_VALUE_BYTES:
            truncated += 1
            assert headers.get("guardstream.truncated") == b"true"
            assert record.value == original[:DLQ_MAX_VALUE_BYTES]
        else:
            assert "guardstream.truncated" not in headers and REDACTED_HEADER not in headers
            assert record.value == original
    assert seen == injected_at.keys()
    assert topic_codes == table_codes
    assert truncated == OVER_LIMIT_TEXTS + 2  # the 5 MB one and one with a huge key among them
    assert redacted > 2000, "most poison parses: it leaves without its raw user id"

    # the same worker process from start to finish, still running, and it never gave up
    assert pids == {proc.pid}
    assert proc.poll() is None
    log = log_path.read_text(errors="replace")
    assert "exiting" not in log and "CRITICAL" not in log and "Traceback" not in log, log[-5000:]
    print(f"\n{len(invalid)} invalid + {len(valid)} valid messages, produced and committed in {processed:.1f} s")
    print("injected:", dict(sorted(kinds.items())))


def test_event_times_are_checked_against_arrival_without_a_kafka_timestamp(settings: Settings, tmp_path: Path) -> None:
    """Issue 25: records Kafka reports without a timestamp (-1) are checked against their arrival, a record stamped
    ahead of the clock cannot carry a future event, and events before the past horizon are dead-lettered: each on
    the DLQ topic, in the dead_letters table and in the metric, with its reason. The worker runs with the real
    limits (a day ahead, here 30 days back), and the events are dated from the test's own clock."""
    now = datetime.now(UTC)

    def at(delta: timedelta) -> str:
        return (now + delta).isoformat().replace("+00:00", "Z")

    rng = random.Random(SEED)
    old_ms = int((now - timedelta(days=60)).timestamp() * 1000)
    ahead_ms = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
    cases: list[tuple[str, str, int | None, str | None]] = [
        # (event_id, ts, the record's timestamp: None = the producer's clock, expected code or None: stored)
        ("t-now", at(-timedelta(hours=1)), None, None),
        ("t-no-ts-now", at(-timedelta(hours=1)), -1, None),
        ("t-replayed", at(-timedelta(days=60, hours=1)), old_ms, None),  # a replay keeps its record time
        ("t-no-ts-future", at(timedelta(days=3)), -1, "future_timestamp"),
        ("t-stamped-ahead", "2100-01-01T00:00:00Z", ahead_ms, "future_timestamp"),
        ("t-epoch", "1970-01-01T00:00:00Z", None, "stale_timestamp"),
        ("t-year-one", "0001-01-01T00:00:00Z", None, "stale_timestamp"),
        ("t-no-ts-stale", at(-timedelta(days=40)), -1, "stale_timestamp"),
    ]
    env = {"GUARDSTREAM_MAX_FUTURE_SECONDS": "86400", "GUARDSTREAM_MAX_PAST_DAYS": "30"}
    with running_worker(settings, tmp_path, env) as (proc, url, log_path):

        async def send_all() -> dict[tuple[int, int], tuple[str, str | None]]:
            sent: dict[tuple[int, int], tuple[str, str | None]] = {}
            async with producer(settings) as prod:
                for event_id, ts, record_ms, code in cases:
                    event = {**base_event(rng, 0), "event_id": event_id, "ts": ts}
                    topic, value = settings.decisions_topic, dumps(event)
                    md = await (await prod.send(topic, key=b"u-t", value=value, timestamp_ms=record_ms))
                    assert record_ms is None or md.timestamp == record_ms  # the broker keeps -1 as -1
                    sent[(md.partition, md.offset)] = (event_id, code)
            return sent

        sent = asyncio.run(send_all())
        ends: dict[int, int] = {}
        for partition, offset in sent:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-5000:]
            parts = get_json(url + "/status")["partitions"]
            if all(parts.get(str(p), {}).get("next_offset", 0) >= end for p, end in ends.items()):
                break
            assert time.monotonic() < deadline, f"not caught up: {parts} vs {ends}"
            time.sleep(0.3)

        stored = query_service(url, "SELECT event_id FROM decisions ORDER BY event_id").column("event_id").to_pylist()
        assert stored == sorted(e for e, code in sent.values() if code is None)
        table = query_service(
            url, "SELECT kafka_partition, kafka_offset, reason_code, reason, event_id FROM dead_letters"
        )
        rows = {(r["kafka_partition"], r["kafka_offset"]): r for r in table.to_pylist()}
        expected = {coord: (e, code) for coord, (e, code) in sent.items() if code is not None}
        assert {c: (r["event_id"], r["reason_code"]) for c, r in rows.items()} == expected
        for row in rows.values():
            if row["event_id"].startswith("t-no-ts"):
                assert "no Kafka timestamp" in row["reason"], row
        assert "horizon" in rows[next(c for c, v in expected.items() if v[0] == "t-epoch")]["reason"]
        metric = dead_letter_metric(url)
        assert metric == Counter(code for _e, code in expected.values())

        records = asyncio.run(read_all(settings, settings.dlq_topic))
        on_topic = {}
        for record in records:
            headers = dict(record.headers)
            coord = (int(headers["guardstream.source_partition"]), int(headers["guardstream.source_offset"]))
            on_topic[coord] = headers["guardstream.reason_code"].decode()
        assert on_topic == {coord: code for coord, (_e, code) in expected.items()}
