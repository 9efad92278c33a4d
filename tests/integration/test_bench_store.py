"""``guardstream bench store`` at a tiny size: every part runs on real DuckDB files and its numbers make sense.

No timing assertions: these check the benchmark measures what it says (rows stored once, sampled users found,
state encoded), and that the rows it writes are consistent the way the pipeline's own rows are.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from rich.console import Console

from detectors.base import category_outcomes, peak
from detectors.events import Decision, Guardrail
from streams import bench_store
from streams.bench_store import print_store_report, run_store_bench

pytestmark = pytest.mark.integration
DECISIONS = 20_000
USERS = 2_000


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-store")


@pytest.fixture(scope="module")
def result(workdir: Path) -> dict[str, Any]:
    return run_store_bench(decisions=[DECISIONS], users=[USERS], workdir=workdir, progress=False, latency_users=20)


def test_ingest_stores_every_decision_once_and_a_replay_adds_none(result: dict[str, Any], workdir: Path) -> None:
    (ingest,) = result["ingest"]
    assert ingest["inserted"] == ingest["stored"] == DECISIONS
    assert ingest["replay_new"] == 0
    assert ingest["batches"] == DECISIONS // bench_store.SINK_BATCH
    assert ingest["rows_per_second"] > 0 and ingest["replay_rows_per_second"] > 0
    assert ingest["legacy_rows_per_second"] > 0  # the layout before migration 003, side by side
    assert 0 < ingest["batch_ms"]["p50"] <= ingest["batch_ms"]["p95"]
    conn = duckdb.connect(str(workdir / f"ingest-{DECISIONS}.duckdb"), read_only=True)
    try:
        offsets = dict(conn.execute("SELECT kafka_partition, next_offset FROM consumer_offsets").fetchall())
        stored = dict(
            conn.execute("SELECT kafka_partition, max(kafka_offset) + 1 FROM decisions GROUP BY ALL").fetchall()
        )
    finally:
        conn.close()
    assert offsets == stored  # each batch's checkpoint covered exactly the offsets it wrote
    grouped = ingest["row_groups"]  # the same rows, side by side, into a store with smaller row groups
    assert grouped["rows"] == bench_store.ROW_GROUP_ROWS and grouped["rows_per_second"] > 0
    assert grouped["file_bytes"] > 0 and grouped["batch_ms"]["max"] > 0 and grouped["batch_ms"]["p50"] > 0


def test_batches_span_the_generated_chunks(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than what is left of a generated chunk takes the rest from the next: every batch but the
    last is full, every row comes once and in order, and each batch's offsets are its own rows' (+1)."""
    schema = bench_store._reference_schema(workdir)
    generator = bench_store._DecisionGenerator(DECISIONS, schema)
    monkeypatch.setattr(bench_store, "GENERATE_CHUNK", 7_000)
    chunks = [
        generator.chunk(i, first, min(7_000, DECISIONS - first))[0]
        for i, first in enumerate(range(0, DECISIONS, 7_000))
    ]
    generator.reset()
    batches = list(bench_store._batches(generator, 3_000, bench_store._Written(), legacy=False))
    assert [b.num_rows for b, _ in batches] == [3_000] * 6 + [2_000]
    ids = [i for b, _ in batches for i in b.column("event_id").to_pylist()]
    assert ids == [i for c in chunks for i in c.column("event_id").to_pylist()]
    for batch, offsets in batches:
        parts = batch.column("kafka_partition").to_pylist()
        offs = batch.column("kafka_offset").to_pylist()
        assert offsets == {p: max(o for q, o in zip(parts, offs, strict=True) if q == p) + 1 for p in set(parts)}


def _consistent(row: dict[str, Any]) -> None:
    """The derived columns agree with scores and thresholds, as the pipeline derives them."""
    event = Decision(
        event_id=row["event_id"],
        ts=datetime.now(UTC),
        user_id=row["user_id"],
        stage=row["stage"],
        guardrail=Guardrail(row["guardrail"], row["guardrail_version"]),
        scores=dict(row["scores"]),
        thresholds=dict(row["thresholds"]),
        decision=row["decision"],
    )
    outcomes = category_outcomes(event, 0.2)
    assert row["hugging_categories"] == [c for c, _s, hug, _b in outcomes if hug]
    assert row["blocked_categories"] == [c for c, _s, _h, blk in outcomes if blk]
    assert (row["decision"] == "allow") == (not row["blocked_categories"])
    category, ratio = peak(outcomes, event.thresholds)
    assert row["peak_category"] == category
    assert row["peak_ratio"] == pytest.approx(ratio)
    assert row["max_score"] == max(event.scores.values())
    assert row["min_margin"] == pytest.approx(min(event.thresholds[c] - s for c, s in event.scores.items()))


def test_generated_decisions_are_consistent_like_the_pipelines(workdir: Path) -> None:
    schema = bench_store._reference_schema(workdir)
    generator = bench_store._DecisionGenerator(DECISIONS, schema)
    rows = generator.chunk(0, 0, 5_000, legacy=True)[0].to_pylist()
    assert any(r["hugging_categories"] for r in rows) and any(r["blocked_categories"] for r in rows)
    for row in rows:
        _consistent(row)
    # the sink's layout holds the same rows: scores in the order of their layout's categories
    table = generator.chunk(0, 0, 5_000)[0]
    assert table.schema == schema
    layouts = {r["layout_key"]: r for r in generator.layouts.to_pylist()}
    for new, old in zip(table.to_pylist(), rows, strict=True):
        layout = layouts[new["layout_key"]]
        assert dict(zip(layout["score_categories"], new["scores"], strict=True)) == dict(old["scores"])
        assert dict(layout["thresholds"]) == dict(old["thresholds"])
        assert new["event_id"] == old["event_id"]


def test_investigations_find_every_sampled_user(result: dict[str, Any], workdir: Path) -> None:
    (inv,) = result["investigate"]
    assert inv["rows"]["decisions"] == DECISIONS
    assert inv["rows"]["user_category_daily"] > 0 and inv["rows"]["alerts"] > 0
    assert [lay["layout"] for lay in inv["layouts"]] == [
        "time order (as ingested)",
        "+ index decisions(user_id, ts)",
        "ordered by (user_id, ts)",
    ]
    for lay in inv["layouts"]:
        assert lay["timeline_rows"]["zero"] == 0
        assert 0 < lay["timeline_rows"]["mean"] <= 500  # user_timeline's default limit
        assert lay["empty_investigations"] == 0
        for stats in (lay["query_user_timeline"], lay["investigate"], lay["open_connection"]["user_timeline"]):
            assert 0 < stats["p50"] <= stats["p95"] <= stats["max"]
        assert lay["file_bytes"] >= lay["used_bytes"] > 0
    conn = duckdb.connect(str(workdir / f"investigate-{DECISIONS}.duckdb"), read_only=True)
    try:
        cursor = conn.execute("SELECT * FROM decisions USING SAMPLE 300 ROWS (reservoir, 1)")
        names = [d[0] for d in cursor.description or []]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        daily = conn.execute("SELECT sum(decisions) FROM user_category_daily").fetchone()
        scored = conn.execute("SELECT sum(cardinality(scores)) FROM decisions").fetchone()
    finally:
        conn.close()
    for row in rows:
        _consistent(row)
    assert daily == scored  # one daily count per scored category, as the pipeline aggregates


def test_state_is_measured_for_every_tracked_user(result: dict[str, Any]) -> None:
    (state,) = result["state"]
    assert state["users"] == USERS
    assert state["events"] >= USERS
    encoded = state["encoded_bytes"]
    assert 0 < encoded["p50"] <= encoded["p95"] <= encoded["max"]
    assert encoded["total"] == pytest.approx(encoded["mean"] * USERS)
    assert sum(b["users"] for b in state["encoded_bytes_by_events"]) == USERS
    assert set(state["encoded_bytes_by_detector"]) == {
        "boundary_hugging",
        "category_rate",
        "retry_probing",
        "output_bypass",
        "multi_turn_decomposition",
        "judge_disagreement",
        "multivariate_anomaly",
    }
    assert state["memory"]["traced_bytes_per_user"] > encoded["mean"] > 0
    assert len(state["population_bytes"]["per_partition"]) == bench_store.PARTITIONS
    assert state["within_target"] == (encoded["mean"] <= bench_store.STATE_TARGET_BYTES)
    assert state["p95_within_target"] == (encoded["p95"] <= bench_store.STATE_TARGET_BYTES)


def test_result_is_json_and_prints(result: dict[str, Any]) -> None:
    assert json.loads(json.dumps(result)) == result
    assert result["machine"]["cpu_count"] and result["machine"]["duckdb"] == duckdb.__version__
    out = io.StringIO()
    print_store_report(result, Console(file=out, width=200))
    text = out.getvalue()
    for heading in ("sink ingest", "investigation latency", "detector state per tracked user"):
        assert heading in text
