"""Hostile SQL against both read paths: the ``/query`` of the process that holds the store (a worker, or the
writer of several workers) while the pipeline runs, and the file itself with nothing running. Each statement
goes through ``guardstream sql`` as a user would type it. Every one must be refused with one line, write no
file, change nothing in the store, and never return the canary secrets in the serving process's environment."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from streams.bench import stop_process
from streams.broker import free_port
from streams.cli import app
from streams.query import query
from streams.sandbox import QueryLimits, QueryRefused, open_sandboxed, run_query
from streams.settings import Settings
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, wait_until

pytestmark = pytest.mark.integration

CANARY = f"canary-{uuid.uuid4().hex}"

# {out}: a directory that must stay empty; {db}: the store's path
HOSTILE = [
    # reading the host's files and the process environment
    "SELECT content FROM read_text('/etc/hostname')",
    "SELECT content FROM read_text('/proc/self/environ')",
    "sElEcT * FrOm ReAd_BlOb('/proc/self/environ')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_json_auto('/proc/self/environ')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM parquet_metadata('{db}')",
    "SELECT * FROM read_text('file:///etc/hostname')",
    "SELECT * FROM read_text('http://127.0.0.1:9/x')",
    "SELECT * FROM query('SELECT content FROM read_text(''/proc/self/environ'')')",
    # writing files
    "COPY (SELECT 42) TO '{out}/a.csv'",
    "COPY decisions TO '{out}/b.parquet' (FORMAT parquet)",
    "COPY (SELECT content FROM read_text('/proc/self/environ')) TO '{out}/env.csv'",
    "EXPORT DATABASE '{out}/export'",
    # EXPLAIN ANALYZE runs what it explains, whatever the comments and casing around it
    "EXPLAIN ANALYZE COPY (SELECT 42) TO '{out}/c.csv'",
    "explain analyze copy (select 42) to '{out}/d.csv'",
    "/* hi */ EXPLAIN /* there */ ANALYZE UPDATE consumer_offsets SET next_offset = 1000000",
    "EXPLAIN\n-- a comment\nANALYSE DELETE FROM alerts",
    "EXPLAIN (ANALYZE) DELETE FROM alerts",
    "EXPLAIN ANALYZE COMMIT",
    "EXPLAIN UPDATE consumer_offsets SET next_offset = 1000000",
    # changing the store
    "UPDATE consumer_offsets SET next_offset = 1000000",
    "DELETE FROM alerts",
    "INSERT INTO verdicts VALUES ('x', 'confirmed', NULL, NULL, now())",
    "DROP TABLE alerts",
    "CREATE TABLE planted AS SELECT 1 AS x",
    "CREATE MACRO planted() AS 1",
    "CREATE SECRET planted (TYPE s3, KEY_ID 'k', SECRET 's')",
    "PREPARE planted AS DELETE FROM alerts",
    "BEGIN TRANSACTION",
    "COMMIT",
    "CHECKPOINT",
    "VACUUM",
    # DML inside a query
    "WITH x AS (DELETE FROM alerts RETURNING *) SELECT count(*) FROM x",
    "WITH x AS (UPDATE consumer_offsets SET next_offset = 1000000 RETURNING *) SELECT * FROM x",
    "SELECT * FROM (WITH y AS (INSERT INTO verdicts VALUES ('x', 'confirmed', NULL, NULL, now()) RETURNING *) "
    "SELECT * FROM y)",
    "SELECT * FROM query('WITH x AS (DELETE FROM alerts RETURNING *) SELECT count(*) FROM x')",
    # several statements in one string
    "SELECT 1; UPDATE consumer_offsets SET next_offset = 1000000",
    "SELECT 1; COPY (SELECT 1) TO '{out}/f.csv'",
    "SELECT 1;\n/* */ DROP TABLE alerts",
    # other databases, extensions, settings
    "ATTACH '{out}/planted.duckdb' AS planted",
    "ATTACH ':memory:' AS planted",
    "DETACH memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{out}/x.duckdb_extension'",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET enable_external_access",
    "SET threads = 1",
    "PRAGMA enable_profiling",
    "PRAGMA database_list",
    "CALL pragma_table_info('alerts')",
    # markup and nonsense in the error line
    "SELECT [1][/x] FROM nowhere",
    "",
]

TABLES = (
    "decisions",
    "alerts",
    "alert_changes",
    "verdicts",
    "detector_state",
    "user_category_daily",
    "dead_letters",
    "population_state",
)


def state_of(db: Path) -> dict[str, Any]:
    """Row counts and stored offsets, read through the legitimate path (served or the file)."""
    counts = {t: query(db, f"SELECT count(*) AS n FROM {t}").to_pylist()[0]["n"] for t in TABLES}
    offsets = query(db, "SELECT kafka_partition, next_offset FROM consumer_offsets ORDER BY ALL").to_pylist()
    return {"counts": counts, "offsets": offsets}


def assert_all_refused(db: Path, out: Path, env: dict[str, str]) -> None:
    before = state_of(db)
    runner = CliRunner()
    for template in HOSTILE:
        sql = template.format(out=out, db=db)
        result = runner.invoke(app, ["sql", "--db", str(db), "-f", "csv", sql], env=env)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, f"{sql!r} was not refused: {result.output}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{sql!r}: {result.output}"
        assert CANARY not in result.output
    assert list(out.iterdir()) == [], "a hostile statement wrote a file"
    assert state_of(db) == before, "a hostile statement changed the store"


@pytest.fixture
def canary_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = env_for(settings)
    env["GUARDSTREAM_SASL_PASSWORD"] = CANARY  # unused on PLAINTEXT, but in the serving process's environment
    env["GUARDSTREAM_CANARY"] = CANARY
    return env


@pytest.fixture
def out(tmp_path: Path) -> Path:
    target = tmp_path / "out"
    target.mkdir()
    return target


def simulate_into(env: dict[str, str], tmp_path: Path) -> int:
    offsets = tmp_path / "offsets.json"
    sim = subprocess.run(
        [*GUARDSTREAM, "simulate", "--users", "60", "--days", "1", "--seed", "3", "--offsets-file", str(offsets)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert sim.returncode == 0, sim.stderr
    return sum(int(o) for o in json.loads(offsets.read_text()).values())


def committed(url: str) -> int:
    return sum(p["next_offset"] for p in get_json(url + "/status")["partitions"].values())


@pytest.fixture(params=["worker", "writer"])
def serving(request: Any, settings: Settings, canary_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The pipeline running on a simulated day, everything committed: a worker holding the store, or a writer
    holding it for a worker. Yields the URL of the process that serves /query."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen([*GUARDSTREAM, *args], env=canary_env, stdout=log, stderr=log)
        procs.append(proc)
        return proc

    try:
        port = free_port()
        holder = f"http://127.0.0.1:{port}"
        if request.param == "writer":
            start("writer", "writer", "--port", str(port))
            wait_until(lambda: get_json(holder + "/status")["role"], 60, "the writer to serve")
            start("worker", "run", "--writer", holder, "--web-port", str(free_port()))
        else:
            start("worker", "run", "--web-port", str(port))
            wait_until(lambda: get_json(holder + "/status")["partitions"], 90, "the worker to serve /status")
        total = simulate_into(canary_env, tmp_path)
        wait_until(lambda: committed(holder) >= total, 120, "the simulated day to be committed")
        yield holder
    finally:
        for proc in procs:
            stop_process(proc)


def test_hostile_sql_is_refused_by_the_served_path_and_by_the_file(
    settings: Settings, serving: str, canary_env: dict[str, str], out: Path, tmp_path: Path
) -> None:
    db = settings.db
    assert query(db, "SELECT count(*) AS n FROM decisions").to_pylist()[0]["n"] > 0
    assert_all_refused(db, out, canary_env)  # served: <db>.service.json names the process holding the store

    # legitimate use through the same path is unchanged
    runner = CliRunner()
    explain = runner.invoke(app, ["sql", "EXPLAIN SELECT count(*) FROM decisions", "-f", "csv"], env=canary_env)
    assert explain.exit_code == 0 and "physical_plan" in explain.output
    named = runner.invoke(app, ["query", "top_huggers", "-f", "json"], env=canary_env)
    assert named.exit_code == 0, named.output
    export = runner.invoke(app, ["export", "--out", str(tmp_path / "export"), "--table", "decisions"], env=canary_env)
    assert export.exit_code == 0, export.output
    assert pq.read_metadata(tmp_path / "export" / "decisions.parquet").num_rows == state_of(db)["counts"]["decisions"]


def test_hostile_sql_is_refused_on_a_file_with_nothing_running(
    settings: Settings, canary_env: dict[str, str], out: Path, tmp_path: Path
) -> None:
    from streams.store import Store

    Store(settings.db).close()  # an empty store, nothing holding it
    assert_all_refused(settings.db, out, canary_env)
    # the CLI's own process environment (the tests above run the CLI in this process, whose /proc/self/environ
    # does not hold the canary): a real `guardstream sql` with the canary in its environment
    for sql in ("SELECT content FROM read_text('/proc/self/environ')", "SELECT * FROM read_blob('/proc/self/environ')"):
        result = subprocess.run([*GUARDSTREAM, "sql", sql], env=canary_env, capture_output=True, text=True)
        assert result.returncode == 2 and CANARY not in result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_the_sandbox_holds_without_the_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers 1 and 3 on their own: what DuckDB itself refuses on the writer's sealed connection, in the read-only
    transaction, with the statement classifier taken out of the way."""
    from streams import sandbox
    from streams.store import Store

    store = Store(tmp_path / "s.duckdb")
    monkeypatch.setattr(sandbox, "checked", lambda sql: sql)
    try:
        for sql in (
            "SELECT content FROM read_text('/proc/self/environ')",
            "COPY (SELECT 1) TO '{}'".format(tmp_path / "x.csv"),
            "UPDATE consumer_offsets SET next_offset = 1000000",
            "WITH x AS (DELETE FROM alerts RETURNING *) SELECT count(*) FROM x",
            "SELECT * FROM query('WITH x AS (DELETE FROM alerts RETURNING *) SELECT count(*) FROM x')",
            "SET enable_external_access = true",
            "SET lock_configuration = false",
            "ATTACH '{}' AS other".format(tmp_path / "other.duckdb"),
        ):
            with pytest.raises(Exception, match=r"(?i)permission|read-only|data-modifying|locked|disabled"):
                store.query(sql)
        assert not (tmp_path / "x.csv").exists() and not (tmp_path / "other.duckdb").exists()
    finally:
        store.close()


def test_limits_cut_long_results_and_stop_long_queries(tmp_path: Path) -> None:
    from streams.sandbox import truncated_at
    from streams.store import Store

    store = Store(tmp_path / "l.duckdb", limits=QueryLimits(timeout_seconds=0.5, max_rows=10))
    try:
        cut = store.query("SELECT * FROM range(100) r(i) ORDER BY i DESC")
        assert cut.num_rows == 10 and truncated_at(cut) == 10
        assert cut.column("i").to_pylist() == list(range(99, 89, -1))
        whole = store.query("SELECT * FROM range(10)")
        assert whole.num_rows == 10 and truncated_at(whole) is None
        with pytest.raises(QueryRefused, match="limit"):
            store.query("SELECT count(*) FROM range(1000000000) a, range(1000) b")
        # the writer's own connection is untouched by the interrupted cursor
        assert store.conn.execute("SELECT count(*) FROM decisions").fetchone() == (0,)
    finally:
        store.close()


def test_the_cli_warns_when_a_result_is_cut_and_export_refuses_a_partial_table(
    tmp_path: Path, canary_env: dict[str, str]
) -> None:
    from streams.store import Store

    db = tmp_path / "w.duckdb"
    Store(db).close()
    env = {**canary_env, "GUARDSTREAM_QUERY_MAX_ROWS": "5"}
    runner = CliRunner()
    shown = runner.invoke(app, ["sql", "--db", str(db), "-f", "csv", "SELECT * FROM range(20)"], env=env)
    assert shown.exit_code == 0
    assert "cut at 5 rows" in shown.output and shown.output.count("\n") >= 6
    env["GUARDSTREAM_QUERY_MAX_ROWS"] = "1"
    store = Store(db)
    try:
        store.conn.execute("INSERT INTO verdicts SELECT 'a' || i, 'confirmed', NULL, NULL, now() FROM range(3) r(i)")
    finally:
        store.close()
    export = runner.invoke(app, ["export", "--db", str(db), "--out", str(tmp_path / "e"), "-t", "verdicts"], env=env)
    assert export.exit_code == 2 and "GUARDSTREAM_QUERY_MAX_ROWS" in export.output
    assert not (tmp_path / "e" / "verdicts.parquet").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "FROM decisions",
        "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
        "SHOW TABLES",
        "DESCRIBE alerts",
        "SUMMARIZE alerts",
        "VALUES (1), (2)",
        "SELECT 1 UNION ALL SELECT 2",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
        "  -- a comment\nSELECT * FROM pragma_table_info('alerts');",
        "EXPLAIN SELECT count(*) FROM decisions",
        "/* plan */ explain select 1",
    ],
)
def test_queries_an_analyst_writes_still_run(sql: str, tmp_path: Path) -> None:
    from streams.store import Store

    db = tmp_path / "ok.duckdb"
    Store(db).close()
    conn = open_sandboxed(db)
    try:
        run_query(conn, sql)
    finally:
        conn.close()
