"""Metrics never grow with the number of users: 1k users through the real pipeline, then 1M distinct
users' worth of alerts and a flood of made-up category names, and the series count stays flat."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from detectors.alerts import AlertState
from detectors.registry import build_engine
from streams.app import record_batch
from streams.evaluate import kafka_partition
from streams.metrics import TOP_K, Metrics
from streams.pipeline import Message, Outcome, Pipeline
from streams.simulator import SimConfig, simulate
from streams.store import Store

pytestmark = pytest.mark.integration


def series(registry: CollectorRegistry) -> int:
    """Time series exposed (``_created`` timestamps are companions of counters, not series of their own)."""
    return sum(1 for metric in registry.collect() for sample in metric.samples if not sample.name.endswith("_created"))


def many_users_alerts(n: int) -> Iterator[AlertState]:
    for i in range(n):
        yield AlertState(
            alert_id=f"a{i}",
            detector="boundary_hugging",
            tenant="acme",
            user_id=f"p-{i:012d}",
            category="S2",
            status="open",
            severity="warning",
            score=5.0 + (i % 997) / 10,
            reason="",
            evidence={},
            action={},
            first_ts_ms=0,
            last_ts_ms=0,
            changed_ts_ms=0,
            published_score=5.0,
        )


def test_series_count_is_flat_in_the_number_of_users(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pipeline = Pipeline(Store(tmp_path / "m.duckdb"), build_engine(), topic="t")
    pipeline.assign({0, 1, 2, 3})
    offsets = dict.fromkeys(range(4), 0)
    messages = []
    for event in simulate(SimConfig(users=1000, days=1, seed=4)).events:
        partition = kafka_partition(event["user_id"].encode(), 4)
        messages.append(Message(partition, offsets[partition], None, orjson.dumps(event), 0))
        offsets[partition] += 1
    for i in range(0, len(messages), 5000):
        batch = messages[i : i + 5000]
        prepared = pipeline.prepare(batch)
        outcome = pipeline.commit(prepared)
        phases = {"wait": 0.001, "detect": outcome.detect_seconds, "sink": outcome.sink_seconds, "publish": 0.001}
        record_batch(metrics, batch, prepared.dead_letters, outcome, time.perf_counter(), time.time(), phases)
    top = metrics.observe_open_alerts(pipeline.engine.alerts())
    pipeline.store.close()
    with_1k_users = series(registry)
    exposition = metrics.exposition().decode()
    assert "u-0" not in exposition and "p-" not in exposition

    top = metrics.observe_open_alerts(many_users_alerts(1_000_000))
    assert len(top) == TOP_K and top[0].score == max(5.0 + (i % 997) / 10 for i in range(997))
    assert series(registry) == with_1k_users, "a million users' alerts add no series"
    record_batch(
        metrics,
        [],
        [],
        Outcome(category_counts=Counter({("input", f"made-up-category-{i}", "hugging"): 1 for i in range(100_000)})),
        time.perf_counter(),
        time.time(),
        {"wait": 0.0},
    )
    with_1m_users = series(registry)
    # 100k made-up category names fold into `other` once the cap (64 categories) is reached
    assert with_1m_users - with_1k_users <= 64
    assert "p-000000999999" not in metrics.exposition().decode()

    again = metrics.observe_open_alerts(many_users_alerts(1_000_000))
    assert [a.alert_id for a in again] == [a.alert_id for a in top]
    assert series(registry) == with_1m_users
