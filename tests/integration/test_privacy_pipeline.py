"""Privacy that cannot switch off by accident (issue 25, part 3), with real processes, a real broker and DuckDB:

* run, writer and rebuild refuse to start without a usable pseudonym key, before the store or Kafka, unless
  started with --allow-raw-user-ids, which /status, the metric and the log then show;
* a dead-lettered event keeps neither its text nor its raw user id (topic copy, key and the store's row);
* `guardstream forget` erases a user from the store and from the running pipeline's memory, whether nothing
  runs, one worker holds the store, or workers commit to a writer, and the user does not come back when more
  events of other users arrive.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detectors.alerts import AlertPolicy
from detectors.boundary import HuggingConfig
from detectors.events import pseudonymize
from detectors.registry import DetectorConfig, build_engine
from streams.broker import free_port
from streams.evaluate import kafka_partition
from streams.pipeline import Message, Pipeline
from streams.privacy import KEY_HEADER, REDACTED_HEADER
from streams.produce import produce
from streams.query import query_service
from streams.sandbox import open_sandboxed
from streams.settings import PrivacySettingsError, Settings
from streams.simulator import SimConfig, simulate
from streams.store import Store
from tests.conftest import TEST_PSEUDONYM_KEY
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, read_topic, stop, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4  # the topics' partitions (Settings.topic_partitions)
# every table that holds a user's rows, and how to find them there
USER_TABLES = {
    "decisions": "SELECT count(*) FROM decisions WHERE user_id = $u",
    "user_category_daily": "SELECT count(*) FROM user_category_daily WHERE user_id = $u",
    "alerts": "SELECT count(*) FROM alerts WHERE user_id = $u",
    "alert_changes": "SELECT count(*) FROM alert_changes WHERE user_id = $u",
    "detector_state": "SELECT count(*) FROM detector_state WHERE user_id = $u",
}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GUARDSTREAM, *args], env=env, capture_output=True, text=True, timeout=300)


def rows_of(counts: dict[str, Any]) -> int:
    return sum(int(n) for n in counts.values())


def counts_on(conn: Any, user: str) -> dict[str, int]:
    return {t: int(conn.execute(q.replace("$u", "?"), [user]).fetchone()[0]) for t, q in USER_TABLES.items()}


def table_totals(conn: Any) -> dict[str, int]:
    return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in USER_TABLES}


def file_counts(db: Path, user: str) -> dict[str, int]:
    conn = open_sandboxed(db)
    try:
        return counts_on(conn, user)
    finally:
        conn.close()


def printed_counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """What `guardstream forget` printed: one ``table<TAB>rows`` line per table."""
    return {table: int(rows) for table, rows in (line.split("\t") for line in result.stdout.splitlines())}


def served_counts(url: str, user: str) -> dict[str, int]:
    return {t: int(query_service(url, q, params={"u": user}).column(0)[0].as_py()) for t, q in USER_TABLES.items()}


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        exposition = response.read().decode()
    return next(s.value for f in text_string_to_metric_families(exposition) for s in f.samples if s.name == name)


def later(events: list[dict[str, Any]], days: float, tag: str) -> list[dict[str, Any]]:
    """Copies of events, new ids, ``days`` later in event time: enough for the sweep to resolve every alert whose
    evidence stopped before (a quiet period of 72 h), and so write it, unless the user is gone from memory."""
    out = []
    for i, event in enumerate(events):
        ts = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")) + timedelta(days=days)
        out.append({**event, "event_id": f"{tag}-{i}", "ts": ts.isoformat().replace("+00:00", "Z")})
    return out


# -- the key is required -----------------------------------------------------------------------------------------
def example_placeholder() -> str:
    text = (ROOT / "deploy" / "kubernetes" / "secret.example.yaml").read_text()
    found = re.search(r'GUARDSTREAM_PSEUDONYM_KEY: "([^"]*)"', text)
    assert found, "secret.example.yaml names the key"
    return found.group(1)


def no_key_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    env.update({"GUARDSTREAM_BOOTSTRAP": "127.0.0.1:9", "GUARDSTREAM_DB": str(tmp_path / "store.duckdb")})
    env.update({"COLUMNS": "80", **extra})
    return env


@pytest.mark.parametrize(
    ("command", "key", "says"),
    [
        ("run", None, "is not set"),
        ("run", "", "is empty"),
        ("run", "short-key-0123456789", "shorter than 32"),
        ("run", "PLACEHOLDER", "placeholder"),
        ("writer", "PLACEHOLDER", "placeholder"),
        ("writer", None, "is not set"),
        ("rebuild", "", "is empty"),
    ],
)
def test_a_store_writer_refuses_to_start_without_a_usable_key(
    tmp_path: Path, command: str, key: str | None, says: str
) -> None:
    extra = {} if key is None else {"GUARDSTREAM_PSEUDONYM_KEY": example_placeholder() if key == "PLACEHOLDER" else key}
    result = cli(no_key_env(tmp_path, **extra), command)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: GUARDSTREAM_PSEUDONYM_KEY "), result.stderr
    assert says in lines[0] and "openssl rand -hex 32" in lines[0] and "--allow-raw-user-ids" in lines[0]
    assert not list(tmp_path.iterdir()), "refused before the store is created (and Kafka, at a dead address, reached)"


def test_every_deployed_worker_and_writer_takes_the_key_from_a_secret() -> None:
    """Compose and Kubernetes pass the key from outside git (Compose refuses to start without it; the Secret's
    reference is not optional), never set --allow-raw-user-ids, and the example Secret's placeholder is refused."""
    from tests.integration.test_deploy_manifests import compose_role, container_of, env_map, k8s_objects, named

    for command in ("writer", "run"):
        name, service = compose_role(command)
        env = env_map(service.get("environment"))
        assert re.fullmatch(r"\$\{GUARDSTREAM_PSEUDONYM_KEY:\?[^}]+\}", env["GUARDSTREAM_PSEUDONYM_KEY"]), name
        assert "GUARDSTREAM_ALLOW_RAW_USER_IDS" not in env and "--allow-raw-user-ids" not in service["command"]
    objects = k8s_objects()
    config = named(objects, "ConfigMap", "guardstream-config")["data"]
    assert "GUARDSTREAM_PSEUDONYM_KEY" not in config and "GUARDSTREAM_ALLOW_RAW_USER_IDS" not in config
    for role in ("writer", "worker"):
        container = container_of(objects, role)
        (item,) = [i for i in container["env"] if i["name"] == "GUARDSTREAM_PSEUDONYM_KEY"]
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "guardstream-secrets" and not ref.get("optional"), role
        assert "--allow-raw-user-ids" not in container["args"]
    placeholder = Settings(_env_file=None, pseudonym_key=example_placeholder())  # type: ignore[call-arg,arg-type]
    with pytest.raises(PrivacySettingsError, match="placeholder"):
        placeholder.checked_pseudonym_key()


def test_the_demo_makes_one_random_key_beside_its_store_and_keeps_it(tmp_path: Path) -> None:
    from streams.demo import demo_key_file, demo_pseudonym_key

    db = tmp_path / "demo.duckdb"
    key = demo_pseudonym_key(db)
    path = demo_key_file(db)
    assert path.parent == tmp_path and path.stat().st_mode & 0o777 == 0o600
    demo_settings = Settings(_env_file=None, pseudonym_key=key)  # type: ignore[call-arg,arg-type]
    assert demo_settings.checked_pseudonym_key() == key.encode()
    assert demo_pseudonym_key(db) == key, "reused: a kept store's pseudonyms stay valid"
    path.chmod(0o644)
    path.write_text("short\n")
    fresh = demo_pseudonym_key(db)
    assert fresh != key and path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() == fresh
    assert demo_pseudonym_key(tmp_path / "other.duckdb") != fresh, "random, not derived"


def test_the_flag_and_a_key_together_are_refused(tmp_path: Path) -> None:
    env = no_key_env(tmp_path, GUARDSTREAM_PSEUDONYM_KEY=TEST_PSEUDONYM_KEY.decode())
    result = cli(env, "run", "--allow-raw-user-ids")
    assert result.returncode == 2 and "both set" in result.stderr and not list(tmp_path.iterdir())


def test_allow_raw_user_ids_starts_and_says_so_everywhere(settings: Settings, tmp_path: Path) -> None:
    env = {k: v for k, v in env_for(settings).items() if k != "GUARDSTREAM_PSEUDONYM_KEY"}
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*GUARDSTREAM, "run", "--allow-raw-user-ids", "--web-port", str(port)], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get_json(url + "/status")["partitions"], 90, "the worker to serve /status")
        assert get_json(url + "/status")["raw_user_ids"] is True
        assert metric(url, "guardstream_privacy_raw_ids") == 1.0
        events = simulate(SimConfig(users=20, days=0.2, seed=31)).events[:200]
        bad = {**events[0], "event_id": "bad-raw", "scores": {"S1": 3.0}, "text": "a prompt never exported"}
        targets = asyncio.run(produce(settings, events, extra=[(b"u-raw", orjson.dumps({**bad, "user_id": "u-raw"}))]))
        wait_until(lambda: caught_up(url, targets), 120, "the commit")
        stored = query_service(url, "SELECT DISTINCT user_id FROM decisions").column(0).to_pylist()
        assert stored and all(u.startswith("u-") for u in stored), "raw ids, as asked for"
        (record,) = asyncio.run(read_topic(settings, settings.dlq_topic))
        copy = json.loads(record.value)
        assert "text" not in copy and copy["user_id"] == "u-raw" and record.key == b"u-raw", "text is dropped anyway"
        assert dict(record.headers)[REDACTED_HEADER] == b"text"
    finally:
        stop(proc)
    assert "--allow-raw-user-ids: no pseudonym key, so user ids are stored, published and served RAW" in (
        log.read_text()
    )


# -- dead letters and `forget` with one worker holding the store -------------------------------------------------
@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*GUARDSTREAM, "run", "--web-port", str(port), "--loglevel", "info"],
            env=env_for(settings),
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or get_json(url + "/status")["partitions"], 90, "the worker")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        stop(proc)


def caught_up(url: str, targets: dict[int, int]) -> bool:
    """Every partition produced to is committed up to the end offset ``produce`` returned for it."""
    parts = get_json(url + "/status")["partitions"]
    return all(int(parts.get(str(p), {}).get("next_offset", 0)) >= end for p, end in targets.items())


def flagged_victim(url: str, events: list[dict[str, Any]]) -> tuple[str, str, int]:
    """A user with an open alert: (raw id, pseudonym, partition)."""
    row = query_service(
        url, "SELECT user_id, kafka_partition FROM alerts WHERE status = 'open' ORDER BY score DESC LIMIT 1"
    ).to_pylist()
    assert row, "the simulated attackers raise alerts"
    user, partition = row[0]["user_id"], row[0]["kafka_partition"]
    raw = next(e["user_id"] for e in events if pseudonymize(e["user_id"], TEST_PSEUDONYM_KEY) == user)
    assert kafka_partition(raw.encode(), PARTITIONS) == partition
    return raw, user, partition


def last_alert_evidence(url: str, user: str) -> datetime:
    latest = query_service(url, "SELECT max(last_ts) FROM alerts WHERE user_id = $u", params={"u": user})
    value: datetime = latest.column(0)[0].as_py()
    return value


def would_resolve(events: list[dict[str, Any]], last_evidence: datetime) -> bool:
    """The events move the partition's event time past the user's alerts' quiet period (AlertPolicy, 72 h): a sweep
    still holding the user would resolve them and so write them back."""
    first = min(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")) for e in events)
    return first - last_evidence > timedelta(hours=AlertPolicy().quiet_period_hours)


def neighbours(events: list[dict[str, Any]], raw: str, partition: int) -> list[dict[str, Any]]:
    """Other users' events on the victim's partition, well after everything so far."""
    others = [
        e for e in events if e["user_id"] != raw and kafka_partition(e["user_id"].encode(), PARTITIONS) == partition
    ]
    assert others
    return later(others[:400], days=5, tag="after-forget")


def test_dead_letters_keep_no_text_and_no_raw_user_id(settings: Settings, worker: str) -> None:
    url = worker
    event = simulate(SimConfig(users=20, days=0.1, seed=32)).events[0]
    parsed = {**event, "event_id": "dlq-1", "user_id": "u-secret-7", "scores": {"S1": 2.0}, "text": "my prompt"}
    raw_bytes = b'{"user_id": "u-secret-7", "text": "my prompt", oops'
    targets = asyncio.run(
        produce(settings, [event], extra=[(b"u-secret-7", orjson.dumps(parsed)), (b"u-secret-7", raw_bytes)])
    )
    wait_until(lambda: caught_up(url, targets), 120, "the commit")
    records = {
        dict(r.headers)["guardstream.reason_code"]: r for r in asyncio.run(read_topic(settings, settings.dlq_topic))
    }
    pseudonym = pseudonymize("u-secret-7", TEST_PSEUDONYM_KEY)

    copy = records[b"schema_violation"]
    body = json.loads(copy.value)
    assert "text" not in body and body["user_id"] == pseudonym and body["event_id"] == "dlq-1"
    assert b"u-secret-7" not in copy.value and b"my prompt" not in copy.value
    assert copy.key == pseudonym.encode(), "the key is the user's stored pseudonym"
    headers = dict(copy.headers)
    assert headers[REDACTED_HEADER] == b"text,user_id" and headers[KEY_HEADER] == b"true"
    assert int(headers["guardstream.original_size"]) == len(orjson.dumps(parsed))

    undecodable = records[b"invalid_json"]
    assert undecodable.value == raw_bytes, "bytes that do not parse travel as they came"
    assert REDACTED_HEADER not in dict(undecodable.headers) and undecodable.key == pseudonym.encode()

    stored = query_service(url, "SELECT * FROM dead_letters").to_pylist()
    assert len(stored) == 2
    assert "u-secret-7" not in repr(stored) and "my prompt" not in repr(stored)


def test_forget_with_one_worker_erases_the_store_and_its_memory(settings: Settings, worker: str) -> None:
    url = worker
    assert get_json(url + "/status")["raw_user_ids"] is False
    assert metric(url, "guardstream_privacy_raw_ids") == 0.0
    events = simulate(SimConfig(users=150, days=2, seed=33)).events
    targets = asyncio.run(produce(settings, events))
    wait_until(lambda: caught_up(url, targets), 180, "the commit")
    raw, user, partition = flagged_victim(url, events)
    before = served_counts(url, user)
    assert before["decisions"] and before["alerts"] and before["detector_state"] == 1
    last_evidence = last_alert_evidence(url, user)

    env = env_for(settings)  # GUARDSTREAM_DB: the CLI finds the running worker by its service file
    result = cli(env, "forget", raw, "--raw")
    assert result.returncode == 0, result.stderr
    assert printed_counts(result) == {**before, "verdicts": 0}
    assert "dropped from the running worker's memory" in result.stderr
    assert rows_of(served_counts(url, user)) == 0
    assert all(h["user_id"] != user for h in get_json(url + "/status")["top_huggers"])

    # the worker's next batches on that partition (other users, days later: every old alert would resolve) commit
    # without writing the erased user back
    more = neighbours(events, raw, partition)
    assert would_resolve(more, last_evidence), "without the erasure in memory, the sweep would write the alert back"
    targets = asyncio.run(produce(settings, more))
    wait_until(lambda: caught_up(url, targets), 120, "the later events")
    assert rows_of(served_counts(url, user)) == 0

    again = cli(env, "forget", raw, "--raw")
    assert again.returncode == 0 and "nothing stored" in again.stderr and rows_of(printed_counts(again)) == 0


# -- `forget` with several workers committing to a writer --------------------------------------------------------
def test_forget_through_the_writer_fences_the_workers_that_hold_the_user(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings)
    writer_port, worker_port = free_port(), free_port()
    writer_url, worker_url = f"http://127.0.0.1:{writer_port}", f"http://127.0.0.1:{worker_port}"
    logs = [tmp_path / "writer.log", tmp_path / "worker.log"]
    with logs[0].open("wb") as w_out, logs[1].open("wb") as r_out:
        writer = subprocess.Popen(
            [*GUARDSTREAM, "writer", "--port", str(writer_port), "--loglevel", "info"],
            env=env,
            stdout=w_out,
            stderr=w_out,
        )
        worker = subprocess.Popen(
            [*GUARDSTREAM, "run", "--writer", writer_url, "--web-port", str(worker_port), "--loglevel", "info"],
            env=env,
            stdout=r_out,
            stderr=r_out,
        )
    try:
        wait_until(lambda: get_json(writer_url + "/status")["role"], 90, "the writer")
        wait_until(lambda: get_json(worker_url + "/status")["partitions"], 90, "the worker")
        assert get_json(writer_url + "/status")["raw_user_ids"] is False
        events = simulate(SimConfig(users=150, days=2, seed=34)).events
        targets = asyncio.run(produce(settings, events))
        wait_until(lambda: caught_up(writer_url, targets), 180, "the commit")
        raw, user, partition = flagged_victim(writer_url, events)
        last_evidence = last_alert_evidence(writer_url, user)
        before = served_counts(writer_url, user)
        assert before["alerts"] and before["detector_state"] == 1

        result = cli(env, "forget", raw, "--raw", "--url", writer_url)
        assert result.returncode == 0, result.stderr
        assert printed_counts(result) == {**before, "verdicts": 0}
        assert rows_of(served_counts(writer_url, user)) == 0

        # the worker still holds the user in memory: its next batch there is refused, it reloads the partition
        more = neighbours(events, raw, partition)
        assert would_resolve(more, last_evidence)
        targets = asyncio.run(produce(settings, more))
        wait_until(lambda: caught_up(writer_url, targets), 120, "the later events")
        status = get_json(writer_url + "/status")
        assert status["counts"]["erasures"] == 1
        assert status["counts"]["fenced"] >= 1, "the batch that would have written the user back was refused"
        assert rows_of(served_counts(writer_url, user)) == 0
        assert all(h["user_id"] != user for h in get_json(worker_url + "/status")["top_huggers"])
        assert "had a user erased" in logs[1].read_text()
    finally:
        stop(worker)
        stop(writer)


# -- `forget` with nothing running -------------------------------------------------------------------------------
def build_store(db: Path, events: list[dict[str, Any]], key: bytes) -> Pipeline:
    pipeline = Pipeline(
        Store(db), build_engine(DetectorConfig(hugging=HuggingConfig(min_population=200))), topic="t", pseudonym_key=key
    )
    pipeline.assign(set(range(PARTITIONS)))
    commit(pipeline, events)
    return pipeline


def commit(pipeline: Pipeline, events: list[dict[str, Any]]) -> int:
    """Commit the events as a worker would (in their partitions, after what is stored); returns the fenced tries."""
    offsets = dict(pipeline.next_offsets)
    messages = []
    for event in events:
        partition = kafka_partition(event["user_id"].encode(), PARTITIONS)
        messages.append(Message(partition, offsets[partition], event["user_id"].encode(), orjson.dumps(event), 0))
        offsets[partition] += 1
    fenced = 0
    for i in range(0, len(messages), 2000):
        prepared = pipeline.prepare(messages[i : i + 2000])
        while pipeline.commit(prepared).fenced:
            fenced += 1
            prepared = pipeline.prepare(messages[i : i + 2000])
    return fenced


def test_forget_on_the_file_erases_every_table_once(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    events = simulate(SimConfig(users=150, days=2, seed=35)).events
    pipeline = build_store(db, events, TEST_PSEUDONYM_KEY)
    store = pipeline.store
    assert isinstance(store, Store)
    change = store.unpublished_changes()[0]
    user, alert_id = change["user_id"], change["alert_id"]
    raw = next(e["user_id"] for e in events if pseudonymize(e["user_id"], TEST_PSEUDONYM_KEY) == user)
    store.record_verdict(alert_id, "confirmed", "analyst", "a note")
    before = counts_on(store.conn, user)
    assert all(before.values()), before
    totals = table_totals(store.conn)
    store.close()

    env = {**os.environ, "GUARDSTREAM_DB": str(db)}
    result = cli(env, "forget", raw, "--raw")
    assert result.returncode == 0, result.stderr
    assert printed_counts(result) == {**before, "verdicts": 1}
    assert "not yet published are withdrawn" in result.stderr
    conn = open_sandboxed(db)
    try:
        assert rows_of(counts_on(conn, user)) == 0
        assert conn.execute("SELECT count(*) FROM verdicts WHERE alert_id = ?", [alert_id]).fetchone() == (0,)
        after = table_totals(conn)
        assert conn.execute("SELECT count(*) FROM alert_changes WHERE NOT published").fetchone() != (0,)
    finally:
        conn.close()
    assert after == {t: totals[t] - before[t] for t in USER_TABLES}, "nobody else's rows"
    reopened = Store(db)
    outbox = reopened.unpublished_changes()
    reopened.close()
    assert outbox and all(c["user_id"] != user for c in outbox), "the rest of the outbox still goes out"

    again = cli(env, "forget", user)  # by the pseudonym, as stored
    assert again.returncode == 0 and "nothing stored" in again.stderr and rows_of(printed_counts(again)) == 0

    missing = cli({**env, "GUARDSTREAM_DB": str(tmp_path / "none.duckdb")}, "forget", user)
    assert missing.returncode == 2 and "no database" in missing.stderr


def test_a_worker_holding_an_erased_user_reloads_before_it_commits_there(tmp_path: Path) -> None:
    """The writer's side, in one process: the store erases a user a worker's pipeline holds in memory (as the writer
    does on `POST /forget`). The pipeline's next batch on that partition is refused and reloaded; a batch on another
    partition first reloads the erased one after it commits. Either way the user is not written back."""
    events = simulate(SimConfig(users=150, days=2, seed=36)).events
    pipeline = build_store(tmp_path / "shared.duckdb", events, TEST_PSEUDONYM_KEY)
    store = pipeline.store
    assert isinstance(store, Store)

    def victim_in(exclude: set[int]) -> tuple[str, str, int]:
        alert = next(a for a in pipeline.engine.alerts() if a.status == "open" and a.user_id not in exclude)
        raw = next(e["user_id"] for e in events if pseudonymize(e["user_id"], TEST_PSEUDONYM_KEY) == alert.user_id)
        return raw, alert.user_id, kafka_partition(raw.encode(), PARTITIONS)

    def held(user: str) -> bool:
        return any(key[1] == user for s in pipeline.engine.partitions.values() for key in s.users)

    # a batch on the erased user's partition: refused once, then committed without the user
    raw, user, partition = victim_in(set())
    erasure = store.forget(user)
    assert erasure.epochs == {partition: 1} and held(user)
    assert commit(pipeline, neighbours(events, raw, partition)) == 1
    assert not held(user) and rows_of(counts_on(store.conn, user)) == 0
    assert pipeline.epochs[partition] == 1

    # a batch elsewhere only: the erased partition is reloaded right after that commit
    raw2, user2, partition2 = victim_in({user})
    store.forget(user2)
    elsewhere = [
        e
        for e in later(events, days=6, tag="elsewhere")
        if e["user_id"] not in (raw, raw2) and kafka_partition(e["user_id"].encode(), PARTITIONS) != partition2
    ]
    assert commit(pipeline, elsewhere[:300]) == 0
    assert not held(user2) and rows_of(counts_on(store.conn, user2)) == 0
    store.close()
