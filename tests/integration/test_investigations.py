"""Investigation tooling: named queries, investigate, pseudonym and export, against a store built without Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from detectors.events import pseudonymize
from detectors.registry import build_engine
from streams.endpoints import parse_query_body
from streams.evaluate import kafka_partition
from streams.investigate import available, bind, declared_params, named_query
from streams.pipeline import Message, Pipeline
from streams.sandbox import run_query
from streams.simulator import SimConfig, simulate
from streams.store import Store

pytestmark = pytest.mark.integration
GUARDSTREAM = [sys.executable, "-m", "streams.cli"]
KEY = "investigation-test-key"


@dataclass
class Built:
    db: Path
    raw_user: str  # a flagged user's raw id
    user: str  # ... and its pseudonym, as stored
    session: str  # one of that user's sessions
    reason: str  # one of that user's alert reasons
    category: str  # ... and its category


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    db = tmp_path_factory.mktemp("investigations") / "store.duckdb"
    pipeline = Pipeline(Store(db), build_engine(), topic="t", pseudonym_key=KEY.encode())
    pipeline.assign({0, 1, 2, 3})
    offsets = dict.fromkeys(range(4), 0)
    messages = []
    raw_ids: dict[str, str] = {}
    for event in simulate(SimConfig(users=200, days=3, seed=21)).events:
        raw_ids[pseudonymize(event["user_id"], KEY.encode())] = event["user_id"]
        partition = kafka_partition(event["user_id"].encode(), 4)
        messages.append(Message(partition, offsets[partition], None, orjson.dumps(event), 0))
        offsets[partition] += 1
    for i in range(0, len(messages), 5000):
        pipeline.commit(pipeline.prepare(messages[i : i + 5000]))
    pipeline.store.close()

    conn = duckdb.connect(str(db), read_only=True)
    try:
        row = conn.execute(
            "SELECT a.user_id, a.reason, a.category FROM alerts a "
            "WHERE a.category IS NOT NULL AND EXISTS (SELECT 1 FROM decisions d WHERE d.user_id = a.user_id "
            "AND d.session_id IS NOT NULL) ORDER BY a.score DESC LIMIT 1"
        ).fetchone()
        assert row is not None, "the simulated attackers should raise alerts"
        user, reason, category = row
        session = conn.execute(
            "SELECT session_id FROM decisions WHERE user_id = ? AND session_id IS NOT NULL LIMIT 1", [user]
        ).fetchone()
        assert session is not None
    finally:
        conn.close()
    return Built(db, raw_ids[user], user, session[0], reason, category)


def cli(built: Built, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDSTREAM_")}
    env.update({"GUARDSTREAM_DB": str(built.db), "COLUMNS": "250"})
    if key is not None:
        env["GUARDSTREAM_PSEUDONYM_KEY"] = key
    return subprocess.run([*GUARDSTREAM, *args], capture_output=True, text=True, timeout=300, env=env)


def json_rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert result.returncode == 0, result.stderr[-2000:]
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_every_named_query_returns_rows_for_a_flagged_user(built: Built) -> None:
    params = {
        "user_timeline": ["-p", f"user_id={built.user}"],
        "conversation_replay": ["-p", f"session_id={built.session}"],
        "top_huggers": ["-p", f"category={built.category}", "-p", "since=2000-01-01", "-p", "limit=500"],
        "user_alerts": ["-p", f"user_id={built.user}"],
        "population_baseline": ["-p", "since=2000-01-01"],
        "user_category_totals": ["-p", f"user_id={built.user}"],
    }
    assert set(available()) == set(params)
    for name, args in params.items():
        rows = json_rows(cli(built, "query", name, *args, "--format", "json"))
        assert rows, f"{name} returned nothing"
    timeline = json_rows(cli(built, "query", "user_timeline", "-p", f"user_id={built.user}", "-f", "json"))
    assert [r["ts"] for r in timeline] == sorted(str(r["ts"]) for r in timeline)
    limited = json_rows(
        cli(built, "query", "user_timeline", "-p", f"user_id={built.user}", "-p", "limit=3", "-f", "json")
    )
    assert len(limited) == 3 and limited == timeline[-3:]
    alerts = json_rows(cli(built, "query", "user_alerts", "-p", f"user_id={built.user}", "-f", "json"))
    assert built.reason in {a["reason"] for a in alerts}
    assert all(a["history"] and a["history"][0]["change"] == "opened" for a in alerts)  # type: ignore[index]
    huggers = json_rows(cli(built, "query", "top_huggers", "-p", "since=2000-01-01", "-p", "limit=5000", "-f", "json"))
    assert len({h["category"] for h in huggers}) > 1  # a null category means all of them
    csv_out = cli(built, "query", "top_huggers", "-f", "csv")
    assert csv_out.returncode == 0 and csv_out.stdout.startswith("category,tenant,user_id")


def test_query_list_and_errors(built: Built) -> None:
    listed = cli(built, "query", "--list")
    assert listed.returncode == 0, listed.stderr
    for name in available():
        assert name in listed.stdout
    assert "event-time order" in listed.stdout and "user_id" in listed.stdout

    unknown = cli(built, "query", "nope")
    assert unknown.returncode == 2 and "available:" in unknown.stderr and "user_timeline" in unknown.stderr
    missing = cli(built, "query", "user_timeline")
    assert missing.returncode == 2 and "user_id" in missing.stderr
    extra = cli(built, "query", "user_timeline", "-p", f"user_id={built.user}", "-p", "bogus=1")
    assert extra.returncode == 2 and "bogus" in extra.stderr
    malformed = cli(built, "query", "user_timeline", "-p", "user_id")
    assert malformed.returncode == 2 and "key=value" in malformed.stderr
    with pytest.raises(LookupError, match="available"):
        named_query("../001_init")


def test_parameters_are_bound_not_spliced(built: Built) -> None:
    for name, key in (("user_timeline", "user_id"), ("user_alerts", "user_id"), ("conversation_replay", "session_id")):
        for evil in ("x' OR 1=1 --", "x' OR '1'='1", "'; DROP TABLE decisions; --"):
            assert json_rows(cli(built, "query", name, "-p", f"{key}={evil}", "-f", "json")) == []
    assert json_rows(cli(built, "query", "top_huggers", "-p", "category=S1' OR 1=1 --", "-f", "json")) == []
    # and the store is intact
    conn = duckdb.connect(str(built.db), read_only=True)
    try:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] > 0  # type: ignore[index]
    finally:
        conn.close()


def test_investigate_shows_the_alert_reason(built: Built) -> None:
    result = cli(built, "investigate", built.user)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"reason: {built.reason}" in result.stdout
    assert "suggested action: " in result.stdout and "suggested action: -" not in result.stdout
    assert "latest 50 decisions" in result.stdout and "per-category totals" in result.stdout
    assert "latest 7 decisions" in cli(built, "investigate", built.user, "--limit", "7").stdout

    raw = cli(built, "investigate", "--raw", built.raw_user)
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert f"investigation of {built.user}" in raw.stdout

    no_key = cli(built, "investigate", "--raw", built.raw_user, key=None)
    assert no_key.returncode == 2 and "GUARDSTREAM_PSEUDONYM_KEY" in no_key.stderr
    nobody = cli(built, "investigate", "x' OR 1=1 --")
    assert nobody.returncode == 2 and "no decisions, alerts or daily totals" in nobody.stderr
    assert len(nobody.stderr.strip().splitlines()) == 1


def test_pseudonym_matches_the_pipeline(built: Built) -> None:
    result = cli(built, "pseudonym", built.raw_user)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pseudonymize(built.raw_user, KEY.encode()) == built.user
    no_key = cli(built, "pseudonym", built.raw_user, key=None)
    assert no_key.returncode == 2 and "GUARDSTREAM_PSEUDONYM_KEY" in no_key.stderr


def test_export_writes_parquet_with_the_tables_row_counts(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = cli(built, "export", "--format", "parquet", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    tables = ["decisions", "alerts", "alert_changes", "user_category_daily", "dead_letters"]
    conn = duckdb.connect(str(built.db), read_only=True)
    try:
        expected = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]
    finally:
        conn.close()
    for t in tables:
        assert pq.read_metadata(out / f"{t}.parquet").num_rows == expected[t]
        assert f"exporting {t}" in result.stderr
        assert f"{t}\t{expected[t]}" in result.stdout
    assert expected["decisions"] > 0 and expected["alerts"] > 0
    decisions = pq.read_table(out / "decisions.parquet")
    assert "scores" in decisions.column_names

    one = cli(built, "export", "--out", str(tmp_path / "one"), "--table", "alerts")
    assert one.returncode == 0 and sorted(p.name for p in (tmp_path / "one").iterdir()) == ["alerts.parquet"]
    bad = cli(built, "export", "--out", str(tmp_path / "bad"), "--table", "alerts; DROP TABLE x")
    assert bad.returncode == 2 and "not a table name" in bad.stderr
    missing = cli(built, "export", "--out", str(tmp_path / "bad"), "--table", "no_such_table")
    assert missing.returncode == 2 and "no_such_table" in missing.stderr


def test_query_body_parsing_for_the_service_path() -> None:
    assert parse_query_body(b"SELECT 1") == ("SELECT 1", None)
    assert parse_query_body(b"SELECT 1", "text/plain; charset=utf-8") == ("SELECT 1", None)
    body = json.dumps({"sql": "SELECT $a AS a", "params": {"a": "x' OR 1=1 --"}}).encode()
    assert parse_query_body(body, "application/json") == ("SELECT $a AS a", {"a": "x' OR 1=1 --"})
    assert parse_query_body(body) == ("SELECT $a AS a", {"a": "x' OR 1=1 --"})  # sniffed without a content type
    assert parse_query_body(b'{"sql": "SELECT 1"}') == ("SELECT 1", None)
    assert parse_query_body(b'{"sql": "SELECT $n", "params": {"n": null}}') == ("SELECT $n", {"n": None})
    for broken in (b"{not json", b'{"params": {}}', b'["SELECT 1"]', b'{"sql": "S", "params": [1]}'):
        with pytest.raises(ValueError):
            parse_query_body(broken, "application/json")
    with pytest.raises(ValueError, match="must be a string"):
        parse_query_body(b'{"sql": "SELECT $a", "params": {"a": {"nested": 1}}}')


def test_parsed_body_binds_on_a_read_only_cursor() -> None:
    conn = duckdb.connect()
    try:
        conn.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('u1', 1), ('u2', 2)) v(user_id, n)")
        sql = named_query("user_timeline")
        assert set(declared_params(sql)) == {"user_id", "limit"}
        body = json.dumps({"sql": "SELECT n FROM t WHERE user_id = $user_id", "params": {"user_id": "u2"}}).encode()
        text, params = parse_query_body(body, "application/json")
        assert run_query(conn, text, params).to_pylist() == [{"n": 2}]
        evil = {"user_id": "x' OR 1=1 --"}
        assert run_query(conn, text, evil).num_rows == 0
        assert bind(sql, {"user_id": "u"}) == {"user_id": "u", "limit": "500"}
    finally:
        conn.close()
