"""The batch path against a real DuckDB file: exactly-once effects from offsets and event_ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from detectors.boundary import HuggingConfig
from detectors.engine import Engine
from detectors.registry import DetectorConfig, build_engine
from streams.pipeline import DeadLetter, Message, Pipeline, event_key
from streams.produce import bad_events
from streams.sandbox import QueryRefused, open_sandboxed
from streams.simulator import SimConfig, simulate
from streams.store import Checkpoint, Store

pytestmark = pytest.mark.integration
TOPIC = "guardrail.decisions"


def messages(events: list[dict], partitions: int = 2, start: int = 0) -> list[Message]:
    offsets = dict.fromkeys(range(partitions), start)
    out = []
    for event in events:
        partition = sum(event["user_id"].encode()) % partitions
        out.append(Message(partition, offsets[partition], event["user_id"].encode(), orjson.dumps(event), 0))
        offsets[partition] += 1
    return out


def pipeline(db: Path) -> Pipeline:
    p = Pipeline(Store(db), build_engine(DetectorConfig(hugging=HuggingConfig(min_population=200))), topic=TOPIC)
    p.assign({0, 1})
    return p


def process(p: Pipeline, msgs: list[Message], batch: int = 700) -> None:
    for i in range(0, len(msgs), batch):
        p.commit(p.prepare(msgs[i : i + batch]))


def row_group_sizes(db: Path) -> list[int]:
    """The rows of each of ``decision_rows``' row groups."""
    conn = open_sandboxed(db)
    try:
        rows = conn.execute(
            "SELECT sum(count) FROM pragma_storage_info('decision_rows') "
            "WHERE column_name = 'ts' AND segment_type <> 'VALIDITY' GROUP BY row_group_id ORDER BY row_group_id"
        ).fetchall()
    finally:
        conn.close()
    return [int(n) for (n,) in rows]


def snapshot(db: Path) -> dict[str, object]:
    conn = open_sandboxed(db)
    try:
        return {
            "decisions": conn.execute("SELECT count(*), count(DISTINCT event_id) FROM decisions").fetchall(),
            "daily": conn.execute(
                "SELECT tenant, user_id, category, day, decisions, blocks, hugs, round(score_sum, 9) "
                "FROM user_category_daily ORDER BY ALL"
            ).fetchall(),
            "alerts": conn.execute(
                "SELECT alert_id, detector, user_id, category, status, severity, score, reason, first_ts, last_ts, "
                "updates, episode FROM alerts ORDER BY alert_id"
            ).fetchall(),
            "changes": conn.execute(
                "SELECT change_id, change, ts, severity, score FROM alert_changes ORDER BY change_id"
            ).fetchall(),
            "dead_letters": conn.execute("SELECT count(*) FROM dead_letters").fetchall(),
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def stream() -> list[Message]:
    sim = simulate(SimConfig(users=150, days=2, seed=3))
    msgs = messages(sim.events)
    # broken events spread through the stream
    broken = bad_events(40, seed=3)
    extra = [Message(0, 10_000_000 + i, k, v, 0) for i, (k, v) in enumerate(broken)]
    return msgs + extra


def test_every_decision_is_stored_once_and_bad_input_is_dead_lettered(tmp_path: Path, stream: list[Message]) -> None:
    p = pipeline(tmp_path / "a.duckdb")
    process(p, stream)
    p.store.close()
    snap = snapshot(tmp_path / "a.duckdb")
    valid = len(stream) - 40
    assert snap["decisions"] == [(valid, valid)]
    assert snap["dead_letters"] == [(40,)]
    assert snap["alerts"], "the simulated boundary huggers should raise alerts"


def test_replaying_the_same_messages_changes_nothing(tmp_path: Path, stream: list[Message]) -> None:
    db = tmp_path / "b.duckdb"
    p = pipeline(db)
    process(p, stream)
    p.store.close()
    before = snapshot(db)
    p = pipeline(db)  # a restart reads the stored offsets ...
    process(p, stream)  # ... and a full replay from offset 0 is a no-op
    p.store.close()
    assert snapshot(db) == before


def test_duplicate_event_ids_at_new_offsets_count_once(tmp_path: Path, stream: list[Message]) -> None:
    db = tmp_path / "c.duckdb"
    p = pipeline(db)
    process(p, stream)
    p.store.close()
    before = snapshot(db)
    p = pipeline(db)
    copies = [Message(m.partition, m.offset + 20_000_000, m.key, m.value, 0) for m in stream[:500]]
    prepared = p.prepare(copies)
    outcome = p.commit(prepared)
    p.store.close()
    assert len(prepared.accepted) == 500
    assert outcome.duplicates == 500 and outcome.new == []
    assert snapshot(db) == before


def test_a_commit_reports_its_detector_and_sink_time_over_every_attempt(
    tmp_path: Path, stream: list[Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What guardstream_sink_batch_phase_seconds shows: a batch refused once (its events stored already) and
    committed again counts both attempts. A clock that ticks one second per reading keeps this untimed."""
    import streams.pipeline

    db = tmp_path / "t.duckdb"
    p = pipeline(db)
    process(p, stream[:500])
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(streams.pipeline, "perf_counter", lambda: float(next(ticks)))
    fresh = p.commit(p.prepare(stream[500:1000]))
    # one attempt reads the clock four times: started, users fetched, applying, applied (the fetch is the sink's)
    assert (fresh.detect_seconds, fresh.sink_seconds) == (1.0, 2.0)
    copies = [Message(m.partition, m.offset + 20_000_000, m.key, m.value, 0) for m in stream[:100]]
    again = p.commit(p.prepare(copies))
    p.store.close()
    assert again.duplicates == 100
    assert (again.detect_seconds, again.sink_seconds) == (2.0, 4.0)  # refused, then committed without them


def test_a_restart_mid_stream_gives_the_same_result_as_one_run(tmp_path: Path, stream: list[Message]) -> None:
    one = tmp_path / "one.duckdb"
    p = pipeline(one)
    process(p, stream)
    p.store.close()

    two = tmp_path / "two.duckdb"
    for cut in (len(stream) // 3, 2 * len(stream) // 3, len(stream)):
        p = pipeline(two)  # a fresh process each time: state and offsets come from the store
        process(p, stream[:cut], batch=333)
        p.store.close()
    assert snapshot(two) == snapshot(one)


def test_a_store_with_a_row_group_size_stores_the_same_in_row_groups_that_size(
    tmp_path: Path, stream: list[Message]
) -> None:
    """GUARDSTREAM_DUCKDB_ROW_GROUP_SIZE: the file is attached with the option; every table, query and restart
    works as with the default, and a commit of more decisions than a row group writes row groups of that size."""
    plain = tmp_path / "plain.duckdb"
    p = pipeline(plain)
    process(p, stream, batch=5000)
    p.store.close()

    grouped = tmp_path / "grouped.duckdb"
    for cut in (len(stream) // 2, len(stream)):  # a restart halfway: state and offsets from the attached file
        store = Store(grouped, row_group_size=2048)
        p = Pipeline(store, build_engine(DetectorConfig(hugging=HuggingConfig(min_population=200))), topic=TOPIC)
        p.assign({0, 1})
        process(p, stream[:cut], batch=5000)
        written = store.conn.execute("SELECT count(*) FROM decision_rows").fetchone()
        assert written is not None and written[0] > 0
        # a query runs on a cursor of its own, which starts in the attached file too
        assert store.query("SELECT count(*) AS n FROM decisions").to_pylist() == [{"n": written[0]}]
        store.close()
    assert snapshot(grouped) == snapshot(plain)
    sizes = row_group_sizes(grouped)
    assert max(sizes) == 2048 and len(sizes) > 1


def test_the_query_path_is_read_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.duckdb")
    assert store.query("SELECT count(*) AS n FROM decisions").to_pylist() == [{"n": 0}]
    # the writer's connection is sealed: no statement can read a file or change a setting (streams/sandbox.py)
    setting = store.query("SELECT current_setting('enable_external_access') AS on").to_pylist()
    assert setting == [{"on": False}]
    for sql in (
        "INSERT INTO alerts VALUES (1)",
        "DROP TABLE decisions",
        "DELETE FROM decisions",
        "ATTACH 'x.db'",
        "COPY decisions TO 'x.csv'",
        "SELECT 1; DROP TABLE decisions",
    ):
        with pytest.raises(QueryRefused):
            store.query(sql)
    assert store.conn.execute("SELECT count(*) FROM decisions").fetchone() == (0,)
    store.close()


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    Store(tmp_path / "m.duckdb").close()
    store = Store(tmp_path / "m.duckdb")
    rows = store.conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    store.close()
    assert sorted(rows) == [
        (1, "001_init"),
        (2, "002_verdicts"),
        (3, "003_decision_rows"),
        (4, "004_alert_dead_letters"),
        (5, "005_user_state_key"),
        (6, "006_erasure"),
    ]


def test_a_store_from_before_migration_003_keeps_its_decisions_and_their_dedup(
    tmp_path: Path, stream: list[Message]
) -> None:
    """A store written by an earlier version (decisions as a table with MAP columns and an event_id key) opens
    with migration 003: `decisions` reads the same rows, and its events still count as stored."""
    msgs = stream[:1500]
    current = pipeline(tmp_path / "current.duckdb")
    process(current, msgs)
    rows = current.store.conn.sql("SELECT * FROM decisions ORDER BY event_id").to_arrow_table()
    current.store.close()

    legacy = Store(tmp_path / "legacy.duckdb", upto=2)
    legacy.conn.register("old_rows", rows)
    legacy.conn.execute("INSERT INTO decisions SELECT * FROM old_rows")
    legacy.close()

    migrated = pipeline(tmp_path / "legacy.duckdb")
    conn = migrated.store.conn
    assert conn.sql("SELECT * FROM decisions ORDER BY event_id").to_arrow_table() == rows
    assert conn.execute("SELECT count(*) FROM score_layouts").fetchone()[0] < 10  # type: ignore[index]
    keys = conn.execute("SELECT event_key FROM event_keys ORDER BY event_key").fetchall()
    assert keys == sorted((event_key(i),) for i in rows.column("event_id").to_pylist())
    # the same events again at new offsets (a producer's retry): all duplicates, nothing stored twice
    again = [Message(m.partition, m.offset + 100_000, m.key, m.value, 0) for m in msgs]
    outcome = migrated.commit(migrated.prepare(again))
    assert outcome.duplicates == rows.num_rows and not outcome.new
    assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (rows.num_rows,)
    migrated.store.close()


def test_a_64_bit_key_collision_stores_both_events(tmp_path: Path, stream: list[Message]) -> None:
    """event_keys holds a hash: two different event ids with one key are both stored (the key only narrows
    the lookup; the event id decides)."""
    p = pipeline(tmp_path / "collide.duckdb")
    process(p, stream[:300])
    first = p.store.conn.execute("SELECT event_id, ts FROM decisions LIMIT 1").fetchone()
    assert first is not None
    hour = int(first[1].timestamp()) // 3600
    # plant the key of an event about to arrive in that hour, as if another event had hashed to it
    late = next(m for m in stream[300:] if int(orjson.loads(m.value)["ts"][11:13]) == first[1].hour)
    event = orjson.loads(late.value)
    event["ts"] = first[1].isoformat()
    p.store.conn.execute("INSERT INTO event_keys VALUES (?, ?)", [hour, event_key(event["event_id"])])
    msg = Message(late.partition, 10_000_000, late.key, orjson.dumps(event), 0)
    outcome = p.commit(p.prepare([msg]))
    assert outcome.duplicates == 0 and len(outcome.new) == 1
    assert p.store.conn.execute(
        "SELECT count(*) FROM decisions WHERE event_id = ?", [event["event_id"]]
    ).fetchone() == (1,)
    p.store.close()


def test_training_counters_from_sql_equal_the_stream_detectors_counters(tmp_path: Path, stream: list[Message]) -> None:
    """`guardstream train` reads features with SQL; the stream scores features from detector state. Same numbers."""
    import polars as pl

    from detectors.multivariate import MultivariateAnomaly
    from streams.train import counters_sql, frame_counters

    p = pipeline(tmp_path / "t.duckdb")
    process(p, stream)
    table = p.store.query(counters_sql(0.2))
    from_sql = frame_counters(pl.from_arrow(table))
    keys = list(zip(table.column("tenant").to_pylist(), table.column("user_id").to_pylist(), strict=True))
    p.store.close()
    from_state = {
        key: user[MultivariateAnomaly.name].counters
        for state in p.engine.partitions.values()
        for key, user in state.users.items()
    }
    assert len(from_sql) == len(from_state) > 100
    for key, counters in zip(keys, from_sql, strict=True):
        expected = from_state[key]
        assert counters.peak_ratio_sum == pytest.approx(expected.peak_ratio_sum, rel=1e-9)
        assert msgspec.structs.replace(counters, peak_ratio_sum=0.0) == msgspec.structs.replace(
            expected, peak_ratio_sum=0.0
        ), key


class Nothing(msgspec.Struct):
    pass


class Flaky:
    """A detector with a bug: it raises on chosen events (after the real detectors ran on them)."""

    name = "flaky"
    emits = ()
    user_state = Nothing
    population_state = Nothing

    def __init__(self, boom: set[str]) -> None:
        self.boom = boom

    def update(self, user: Nothing, population: Nothing, obs: Any) -> list[Any]:
        if obs.event.event_id in self.boom:
            raise ZeroDivisionError(f"bug on {obs.event.event_id}")
        return []


def flaky_pipeline(db: Path, boom: set[str]) -> Pipeline:
    cfg = DetectorConfig(hugging=HuggingConfig(min_population=200))
    engine = build_engine(cfg)
    engine = Engine([*engine.detectors, Flaky(boom)], band=engine.band, alert_policy=engine.alert_policy)
    p = Pipeline(Store(db), engine, topic=TOPIC)
    p.assign({0, 1})
    return p


def test_a_detector_error_dead_letters_the_event_before_the_batch_commits(
    tmp_path: Path, stream: list[Message]
) -> None:
    valid = [m for m in stream if m.offset < 10_000_000]
    boom = {orjson.loads(m.value)["event_id"] for m in valid[300::457]}  # a few, in different batches
    p = flaky_pipeline(tmp_path / "flaky.duckdb", boom)
    retried: list[str] = []
    dead_lettered: list[str] = []
    for i in range(0, len(stream), 700):
        prepared = p.prepare(stream[i : i + 700])
        failed: dict[str, DeadLetter] = {}
        while (outcome := p.commit(prepared, failed)).retry:
            assert not outcome.new and not outcome.changes, "nothing of a failed attempt is reported as done"
            retried += list(outcome.retry)
            failed.update(outcome.retry)
        dead_lettered += [d.event_id for d in outcome.dead_letters if d.event_id]
        assert all(d.code == "detector_error" and "ZeroDivisionError" in d.detail for d in outcome.dead_letters)
    p.store.close()
    assert sorted(retried) == sorted(dead_lettered) == sorted(boom)

    # The same stream where those events never reached the detectors at all: the rolled-back attempts
    # must leave no trace in detector state, alerts or aggregates.
    q = flaky_pipeline(tmp_path / "reference.duckdb", set())
    by_id = {orjson.loads(m.value)["event_id"]: m for m in valid}
    letters = {e: DeadLetter(by_id[e], "detector_error", "x", e) for e in boom}
    for i in range(0, len(stream), 700):
        q.commit(q.prepare(stream[i : i + 700]), letters)
    q.store.close()
    flaky, reference = snapshot(tmp_path / "flaky.duckdb"), snapshot(tmp_path / "reference.duckdb")
    assert flaky == reference
    assert flaky["dead_letters"] == [(40 + len(boom),)]
    conn = open_sandboxed(tmp_path / "flaky.duckdb")
    states = conn.execute("SELECT * FROM detector_state ORDER BY ALL").fetchall()
    stored = conn.execute(
        "SELECT count(*) FROM decisions WHERE event_id IN (SELECT unnest(?))", [sorted(boom)]
    ).fetchone()
    reasons = conn.execute("SELECT DISTINCT reason_code FROM dead_letters WHERE event_id IS NOT NULL").fetchall()
    conn.close()
    conn = open_sandboxed(tmp_path / "reference.duckdb")
    assert states == conn.execute("SELECT * FROM detector_state ORDER BY ALL").fetchall()
    conn.close()
    assert stored == (len(boom),), "the events themselves are valid and stored"
    assert reasons == [("detector_error",)]


def test_batches_merged_into_one_commit_equal_separate_commits(tmp_path: Path, stream: list[Message]) -> None:
    """The worker's committer merges batches that queued up (their messages, prepared as one); copies of an
    event_id across them count once."""
    valid = [m for m in stream if m.offset < 10_000_000][:3000]
    copies = [Message(m.partition, m.offset + 30_000_000, m.key, m.value, 0) for m in valid[1000:1200]]
    chunks = [valid[:1500], valid[1500:] + copies]

    one = pipeline(tmp_path / "separate.duckdb")
    for chunk in chunks:
        one.commit(one.prepare(chunk))
    one.store.close()

    two = pipeline(tmp_path / "merged.duckdb")
    outcome = two.commit(two.prepare(chunks[0] + chunks[1]))
    two.store.close()
    assert outcome.duplicates == 200
    assert snapshot(tmp_path / "merged.duckdb") == snapshot(tmp_path / "separate.duckdb")


def test_retention_deletes_only_what_is_older_than_the_cutoff(tmp_path: Path, stream: list[Message]) -> None:
    db = tmp_path / "retention.duckdb"
    p = pipeline(db)
    process(p, stream)
    conn = p.store.conn
    low, high = conn.execute("SELECT min(ts), max(ts) FROM decisions").fetchone()  # type: ignore[misc]
    cutoff = low + (high - low) / 2
    older = conn.execute("SELECT count(*) FROM decisions WHERE ts < ?", [cutoff]).fetchone()
    total = conn.execute("SELECT count(*) FROM decisions").fetchone()
    open_alerts = conn.execute("SELECT count(*) FROM alerts WHERE status = 'open'").fetchone()
    deleted = p.store.apply_retention(cutoff)
    assert deleted["decisions"] == older[0] > 0  # type: ignore[index]
    assert conn.execute("SELECT count(*) FROM decisions").fetchone() == (total[0] - older[0],)  # type: ignore[index]
    assert conn.execute("SELECT count(*) FROM decisions WHERE ts < ?", [cutoff]).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM user_category_daily WHERE day < ?", [cutoff.date()]).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM alerts WHERE status = 'open'").fetchone() == open_alerts
    p.store.close()


def test_an_event_dated_far_past_its_record_time_is_dead_lettered(tmp_path: Path, stream: list[Message]) -> None:
    """Event time moves the partition's watermark (alerts resolve by it): one event from the year 9999 must
    not resolve everything, so it goes to the dead-letter topic instead."""
    p = pipeline(tmp_path / "future.duckdb")
    first = next(m for m in stream if m.offset < 10_000_000)
    event = orjson.loads(first.value)
    produced_ms = 1_800_000_000_000
    late = {**event, "event_id": "e-future", "ts": "9999-01-01T00:00:00Z"}
    soon = {**event, "event_id": "e-soon", "ts": "2027-01-15T08:30:00Z"}  # 30 min after the record time
    msgs = [
        Message(first.partition, 50_000_000, first.key, orjson.dumps(late), produced_ms),
        Message(first.partition, 50_000_001, first.key, orjson.dumps(soon), produced_ms),
    ]
    prepared = p.prepare(msgs, now_ms=produced_ms)
    assert [(d.code, d.event_id) for d in prepared.dead_letters] == [("future_timestamp", "e-future")]
    assert [a.obs.event.event_id for a in prepared.accepted] == ["e-soon"]
    p.store.close()


def _timed(first: Message, offset: int, event_id: str, ts: str, record_ms: int) -> Message:
    event = {**orjson.loads(first.value), "event_id": event_id, "ts": ts}  # type: ignore[arg-type]
    return Message(first.partition, offset, first.key, orjson.dumps(event), record_ms)


def test_a_record_without_a_kafka_timestamp_is_checked_against_its_arrival(
    tmp_path: Path, stream: list[Message]
) -> None:
    """Kafka reports a record without a timestamp as -1 (0 from some clients): the event time is then checked
    against the batch's arrival, never waved through, and the reason says why."""
    p = pipeline(tmp_path / "no-ts.duckdb")
    first = next(m for m in stream if m.offset < 10_000_000)
    arrived_ms = 1_800_000_000_000  # 2027-01-15T08:00:00Z
    msgs = [
        _timed(first, 60_000_000, "e-no-ts-future", "2027-01-17T08:00:00Z", -1),  # two days after arrival
        _timed(first, 60_000_001, "e-zero-ts-future", "2027-01-16T09:00:00Z", 0),  # 25 hours after
        _timed(first, 60_000_002, "e-no-ts-ok", "2027-01-15T07:00:00Z", -1),  # an hour before: fine
        _timed(first, 60_000_003, "e-zero-ts-ok", "2027-01-16T07:00:00Z", 0),  # 23 hours after: inside the day
    ]
    prepared = p.prepare(msgs, now_ms=arrived_ms)
    assert [(d.code, d.event_id) for d in prepared.dead_letters] == [
        ("future_timestamp", "e-no-ts-future"),
        ("future_timestamp", "e-zero-ts-future"),
    ]
    assert all("no Kafka timestamp" in d.detail for d in prepared.dead_letters)
    assert [a.obs.event.event_id for a in prepared.accepted] == ["e-no-ts-ok", "e-zero-ts-ok"]
    p.store.close()


def test_a_record_stamped_ahead_of_the_clock_cannot_carry_a_future_event(tmp_path: Path, stream: list[Message]) -> None:
    """The producer sets a record's CreateTime: one stamped in 9999 with an event of 9999 is still in the future
    of the worker's clock, and goes to the dead-letter topic."""
    p = pipeline(tmp_path / "ahead.duckdb")
    first = next(m for m in stream if m.offset < 10_000_000)
    now_ms = 1_800_000_000_000
    far = 253_370_764_800_000  # 9999-01-01
    msgs = [
        _timed(first, 70_000_000, "e-9999", "9999-01-01T00:00:00Z", far),
        _timed(first, 70_000_001, "e-skewed", "2027-01-15T09:00:00Z", now_ms + 7_200_000),  # clock skew: fine
    ]
    prepared = p.prepare(msgs, now_ms=now_ms)
    assert [(d.code, d.event_id) for d in prepared.dead_letters] == [("future_timestamp", "e-9999")]
    assert "Kafka timestamp is ahead too" in prepared.dead_letters[0].detail
    assert [a.obs.event.event_id for a in prepared.accepted] == ["e-skewed"]
    p.store.close()


def test_an_event_before_the_past_horizon_is_dead_lettered(tmp_path: Path, stream: list[Message]) -> None:
    """ts before the horizon (days before its record was produced, or arrived) is stale_timestamp; a replay of
    old records keeps their old record timestamps, so their events pass whenever the replay runs."""
    store = Store(tmp_path / "stale.duckdb")
    p = Pipeline(store, build_engine(), topic=TOPIC, max_past_ms=30 * 86_400_000)
    p.assign({0, 1})
    first = next(m for m in stream if m.offset < 10_000_000)
    now_ms = 1_800_000_000_000  # 2027-01-15T08:00:00Z
    old_record_ms = 1_700_000_000_000  # 2023-11-14T22:13:20Z
    msgs = [
        _timed(first, 80_000_000, "e-epoch", "1970-01-01T00:00:00Z", now_ms),
        _timed(first, 80_000_001, "e-year-one", "0001-01-01T00:00:00Z", now_ms),  # Go's zero time
        _timed(first, 80_000_002, "e-31-days", "2026-12-15T07:59:00Z", now_ms),
        _timed(first, 80_000_003, "e-no-ts-stale", "2026-11-01T00:00:00Z", -1),
        _timed(first, 80_000_004, "e-29-days", "2026-12-17T08:00:00Z", now_ms),
        _timed(first, 80_000_005, "e-replayed", "2023-11-14T22:00:00Z", old_record_ms),
    ]
    prepared = p.prepare(msgs, now_ms=now_ms)
    assert [(d.code, d.event_id) for d in prepared.dead_letters] == [
        ("stale_timestamp", "e-epoch"),
        ("stale_timestamp", "e-year-one"),
        ("stale_timestamp", "e-31-days"),
        ("stale_timestamp", "e-no-ts-stale"),
    ]
    assert "30-day horizon" in prepared.dead_letters[0].detail
    assert "no Kafka timestamp" in prepared.dead_letters[3].detail
    assert [a.obs.event.event_id for a in prepared.accepted] == ["e-29-days", "e-replayed"]
    outcome = p.commit(prepared)  # the dead letters are stored with the batch, like every rejection
    assert len(outcome.new) == 2
    rows = store.conn.execute("SELECT reason_code, event_id FROM dead_letters ORDER BY kafka_offset").fetchall()
    assert rows == [("stale_timestamp", d.event_id) for d in prepared.dead_letters]
    store.close()


def test_a_zombie_is_fenced_and_both_owners_equal_one_clean_pass(tmp_path: Path, stream: list[Message]) -> None:
    """Two workers believe they own the same partitions (the old owner has not yet learned of the rebalance).
    Each batch commits only on top of the checkpoint it started from; the one that lost the race reloads and
    goes on after the other's commit. Together they equal one worker, whatever the interleaving."""
    valid = [m for m in stream if m.offset < 10_000_000]
    copies = [Message(m.partition, m.offset + 20_000_000, m.key, m.value, 0) for m in valid[:3000:7]]
    msgs = valid + copies
    reference = pipeline(tmp_path / "reference.duckdb")
    process(reference, msgs)
    reference.store.close()

    store = Store(tmp_path / "shared.duckdb")
    engine_config = DetectorConfig(hugging=HuggingConfig(min_population=200))
    zombie, owner = (Pipeline(store, build_engine(engine_config), topic=TOPIC) for _ in range(2))
    zombie.assign({0, 1})
    chunks = [msgs[i : i + 700] for i in range(0, len(msgs), 700)]
    fenced = 0
    for i, chunk in enumerate(chunks):
        first, second = (zombie, owner) if i % 2 else (owner, zombie)
        if i == 1:
            owner.assign({0, 1})  # the new owner loads the checkpoint while the zombie still works
        for worker in (first, second) if i else (zombie,):
            # both read the same records from the broker: the first to commit wins, the other is fenced
            # and, re-prepared against the reloaded offsets, finds nothing left to do
            prepared = worker.prepare(chunk)
            while worker.commit(prepared).fenced:
                fenced += 1
                prepared = worker.prepare(chunk)
    store.close()
    assert fenced >= len(chunks) - 1, "every batch after the take-over raced once"
    assert snapshot(tmp_path / "shared.duckdb") == snapshot(tmp_path / "reference.duckdb")


def test_reload_keeps_partitions_assigned_while_it_loads(tmp_path: Path, stream: list[Message]) -> None:
    """The worker prepares the next batch on its event loop while the commit thread reloads a partition (after a
    detector error or a refused batch). A partition missing from ``assigned`` meanwhile made that batch drop its
    messages as not ours, and later offsets then covered them: lost. Found by test_worker_faults, 2 runs in 8."""
    p = pipeline(tmp_path / "reload.duckdb")
    process(p, [m for m in stream if m.offset < 10_000_000][:1400])
    store = p.store
    assert isinstance(store, Store)
    original = store.checkpoint
    assigned_during: list[set[int]] = []

    def checkpoint(topic: str, partitions: Any) -> Any:
        assigned_during.append(set(p.assigned))
        return original(topic, partitions)

    store.checkpoint = checkpoint  # type: ignore[method-assign]
    before = dict(p.next_offsets)
    p.reload({0, 1})
    assert assigned_during == [{0, 1}] and p.assigned == {0, 1}
    assert p.next_offsets == before
    store.close()


def test_a_layout_inserted_by_a_rolled_back_batch_is_inserted_again(tmp_path: Path, stream: list[Message]) -> None:
    """The store remembers which score layouts it holds, to skip inserting them per batch; a batch that rolls
    back must not leave one remembered but missing."""
    p = pipeline(tmp_path / "layouts.duckdb")
    decisions, layouts = p._decisions_table(p.prepare(stream[:200]).accepted)
    store = p.store
    assert isinstance(store, Store)
    store.begin()
    assert store.insert_decisions(decisions, layouts) == set()
    store.rollback()
    assert store.conn.execute("SELECT count(*) FROM score_layouts").fetchone() == (0,)
    store.begin()
    assert store.insert_decisions(decisions, layouts) == set()
    store.finish(Checkpoint(topic=TOPIC))
    stored = store.conn.execute("SELECT count(*) FROM score_layouts").fetchone()
    assert stored == (layouts.num_rows,) and layouts.num_rows > 0
    # the decisions view joins every row to its layout
    assert store.conn.execute("SELECT count(*) FROM decisions").fetchone() == (decisions.num_rows,)
    store.close()


def test_the_outbox_and_offsets_the_store_keeps_equal_what_it_stored(tmp_path: Path, stream: list[Message]) -> None:
    """The store keeps its unpublished alert changes and the offsets it committed instead of querying them per
    commit: at every step they must equal what a fresh store reads from the file."""
    db = tmp_path / "outbox.duckdb"
    p = pipeline(db)
    store = p.store
    assert isinstance(store, Store)
    assert store.unpublished_changes() == []  # read once, then kept
    valid = [m for m in stream if m.offset < 10_000_000]
    published: list[str] = []
    for i in range(0, len(valid), 700):
        p.commit(p.prepare(valid[i : i + 700]))
        pending = store.unpublished_changes()
        store.mark_published([c["change_id"] for c in pending[::2]])  # half of them, as if the rest were not acked
        published += [c["change_id"] for c in pending[::2]]
    kept, offsets = store.unpublished_changes(), store.offsets(TOPIC)
    store.close()
    assert published and kept
    fresh = Store(db)
    assert fresh.unpublished_changes() == kept
    assert fresh.offsets(TOPIC) == offsets
    flags = dict(fresh.conn.execute("SELECT change_id, published FROM alert_changes").fetchall())
    assert {i for i, done in flags.items() if done} == set(published)
    fresh.close()


def test_a_batch_of_stored_and_new_alerts_updates_the_one_and_inserts_the_other(tmp_path: Path) -> None:
    """Alerts already stored take an UPDATE and the rest an INSERT (the sink tells them apart by the UPDATE's
    count): each row must end up as the latest state, with ``ts`` from its first insert, and populations and
    offsets likewise take their UPDATE once stored."""
    from detectors.alerts import AlertState
    from streams.pipeline import _alerts_table

    def alert(user: str, score: float, first_ts_ms: int, updates: int) -> AlertState:
        return AlertState(
            alert_id=f"boundary_hugging:acme:{user}:violence", detector="boundary_hugging", tenant="acme",
            user_id=user, category="violence", status="open", severity="warning", score=score,
            reason=f"score {score}", evidence={"n": updates}, action={"type": "review"}, first_ts_ms=first_ts_ms,
            last_ts_ms=first_ts_ms + updates, changed_ts_ms=first_ts_ms, published_score=score, updates=updates,
        )  # fmt: skip

    store = Store(tmp_path / "alerts.duckdb")
    rows = "SELECT alert_id, epoch_ms(ts), score, reason, evidence, epoch_ms(last_ts), updates FROM alerts ORDER BY 1"
    store.apply(
        Checkpoint(
            topic=TOPIC,
            alerts=_alerts_table([(0, alert("u-1", 1.0, 1_000, 0))]),
            populations=[(0, b"p0", 5), (1, b"p1", 6)],
            offsets={0: 10, 1: 20},
        )
    )
    before = store.conn.execute(rows).fetchall()
    # u-1 again, its first_ts moved (a new episode would): ts keeps the first insert's; u-2 and u-3 are new
    batch = [(0, alert("u-1", 2.5, 9_000, 3)), (1, alert("u-2", 1.5, 2_000, 0)), (0, alert("u-3", 1.2, 3_000, 1))]
    store.apply(Checkpoint(topic=TOPIC, alerts=_alerts_table(batch), populations=[(0, b"q0", 7)], offsets={1: 25}))
    after = store.conn.execute(rows).fetchall()
    assert [r[0] for r in after] == [a.alert_id for _p, a in batch]
    assert after[0][1] == before[0][1] == 1_000
    assert after[1:] == [
        (batch[1][1].alert_id, 2_000, 1.5, "score 1.5", '{"n":0}', 2_000, 0),
        (batch[2][1].alert_id, 3_000, 1.2, "score 1.2", '{"n":1}', 3_001, 1),
    ]
    assert after[0][2:] == (2.5, "score 2.5", '{"n":3}', 9_003, 3)
    assert store.conn.execute("SELECT count(*) FROM alerts").fetchone() == (3,)
    populations = store.conn.execute(
        "SELECT kafka_partition, state, watermark_ms FROM population_state ORDER BY 1"
    ).fetchall()
    assert populations == [(0, b"q0", 7), (1, b"p1", 6)]
    offsets = store.conn.execute(
        "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE topic = ? ORDER BY 1", [TOPIC]
    ).fetchall()
    assert offsets == [(0, 10), (1, 25)]
    store.close()
