"""kill -9 at random points: the store after the restarts equals the store of one clean offline pass.

The worker is the DuckDB writer, so killing it mid-batch kills the writer mid-transaction too (DuckDB
recovers from its WAL on the next open). The ground truth is the same pipeline code run offline over
exactly the messages the topic holds, read back from the broker with their partitions and offsets.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from detectors.registry import build_engine
from streams.broker import free_port
from streams.pipeline import Message, Pipeline
from streams.produce import bad_events, produce
from streams.rebuild import rebuild
from streams.sandbox import open_sandboxed
from streams.settings import Settings
from streams.simulator import SimConfig, simulate
from streams.store import Store
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, read_topic, wait_until
from tests.integration.test_store_pipeline import row_group_sizes

pytestmark = pytest.mark.integration

TABLES = {
    "decisions": "SELECT * EXCLUDE (ingested_at) FROM decisions ORDER BY event_id",
    "daily": "SELECT * EXCLUDE (score_sum), round(score_sum, 9) FROM user_category_daily ORDER BY ALL",
    "alerts": "SELECT * EXCLUDE (updated_at) FROM alerts ORDER BY alert_id",
    "changes": "SELECT * EXCLUDE (created_at, published) FROM alert_changes ORDER BY change_id",
    "dead_letters": "SELECT * EXCLUDE (ingested_at) FROM dead_letters ORDER BY ALL",
    "detector_state": "SELECT * FROM detector_state ORDER BY ALL",
    "population_state": "SELECT * FROM population_state ORDER BY ALL",
    "offsets": "SELECT kafka_partition, next_offset FROM consumer_offsets ORDER BY ALL",
}


def snapshot(db: Path) -> dict[str, list[Any]]:
    conn = open_sandboxed(db)
    try:
        return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        conn.close()


def offline_truth(settings: Settings, records: list[Any], db: Path) -> None:
    messages = [Message(r.partition, r.offset, r.key, r.value, r.timestamp) for r in records]
    # the workers' pseudonym key (tests/conftest.py), so the truth stores the same pseudonyms
    pipeline = Pipeline(
        Store(db), build_engine(), topic=settings.decisions_topic, pseudonym_key=settings.pseudonym_key_bytes()
    )
    pipeline.assign({m.partition for m in messages})
    for i in range(0, len(messages), 1000):
        pipeline.commit(pipeline.prepare(messages[i : i + 1000]))
    pipeline.store.close()


def run_worker(env: dict[str, str], log: Path, kill_at: float | None, total: int = 0, read_all: bool = False) -> None:
    """Start a worker; SIGKILL it once ``kill_at`` messages are committed, or stop it cleanly at the end
    (with ``read_all``, once it has read every message, whether or not it was new)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([*GUARDSTREAM, "run", "--web-port", str(port)], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get_json(url + "/status")["partitions"], 90, "the worker to serve /status")
        if kill_at is None:
            done = (lambda: get_json(url + "/status")["counts"]["messages"] >= total) if read_all else None
            wait_until(done or (lambda: committed(url) >= total), 120, "the worker to reach the end")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
        else:
            wait_until(lambda: committed(url) >= kill_at or proc.poll() is not None, 120, "progress")
            assert proc.poll() is None, log.read_text()[-3000:]
            assert committed(url) < total, "the kill must land mid-stream"
            proc.kill()  # SIGKILL: no clean-up, possibly mid-transaction
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def committed(url: str) -> int:
    return sum(p["next_offset"] for p in get_json(url + "/status")["partitions"].values())


@pytest.mark.parametrize(
    ("batch", "row_group"),
    [
        pytest.param("700", None, id="default-row-groups"),
        # every full batch is written to the file past the WAL (an optimistic write) when the kill lands mid-commit
        pytest.param("2100", "2048", id="2048-row-groups"),
    ],
)
def test_kill_9_mid_stream_then_restart_equals_one_clean_pass(
    settings: Settings, tmp_path: Path, batch: str, row_group: str | None
) -> None:
    rng = random.Random(2026)
    sim = simulate(SimConfig(users=250, days=3, seed=11))
    events = sim.events + [dict(e) for e in sim.events[::53]]  # copies of event_ids at new offsets
    targets = asyncio.run(produce(settings, events, extra=bad_events(40, seed=11), seed=11))
    total = sum(targets.values())

    records = asyncio.run(read_topic(settings, settings.decisions_topic))
    assert len(records) == total
    truth_db = tmp_path / "truth.duckdb"
    offline_truth(settings, records, truth_db)

    env = env_for(settings)
    env["GUARDSTREAM_BATCH_MAX_EVENTS"] = batch  # many batches, so kills land mid-stream and mid-batch
    if row_group is not None:
        env["GUARDSTREAM_DUCKDB_ROW_GROUP_SIZE"] = row_group
    for i, fraction in enumerate(sorted(rng.uniform(0.1, 0.9) for _ in range(3))):
        run_worker(env, tmp_path / f"worker-{i}.log", kill_at=fraction * total, total=total)
    run_worker(env, tmp_path / "worker-last.log", kill_at=None, total=total)

    streamed, truth = snapshot(settings.db), snapshot(truth_db)
    assert len(streamed["decisions"]) == len(sim.events), "every event_id once, copies not counted"
    assert len(streamed["dead_letters"]) == 40
    assert streamed["changes"], "the simulated attackers raise alerts"
    for table in TABLES:
        assert streamed[table] == truth[table], f"{table} differs from the offline ground truth"
    if row_group is not None:  # the workers wrote row groups of that size: the setting took effect
        assert int(row_group) in row_group_sizes(settings.db)

    # Replay idempotence: a worker in a new consumer group re-reads the whole topic from offset 0 into
    # the existing store: nothing changes.
    replay = {**env, "GUARDSTREAM_CONSUMER_GROUP": settings.consumer_group + "-replay"}
    run_worker(replay, tmp_path / "worker-replay.log", kill_at=None, total=total, read_all=True)
    assert snapshot(settings.db) == truth

    # Rebuild: a new store recomputed from the topic equals the one the workers built.
    rebuilt = settings.with_overrides(
        db=tmp_path / "rebuilt.duckdb", duckdb_row_group_size=int(row_group) if row_group else None
    )
    result = asyncio.run(rebuild(rebuilt, idle_seconds=2.0))
    assert result.messages == total and result.decisions == len(sim.events)
    assert snapshot(rebuilt.db) == truth
