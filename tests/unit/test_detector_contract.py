"""One contract every detector in the registry meets (the river/quixstreams habit): deterministic,
state that round-trips through serialization, a restart from a snapshot equal to a straight run, and
bounded memory per user."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from detectors.alerts import AlertChange
from detectors.base import Detector
from detectors.engine import Engine
from detectors.events import Decision, Guardrail, decode
from detectors.registry import DetectorConfig, build_detectors
from streams.evaluate import kafka_partition
from streams.simulator import SimConfig, simulate
from tests.restart import restart


def _with_trained_model() -> list[Detector]:
    """The registry's detectors, with the multivariate one given a small model so it scores too."""
    from streams.evaluate import train_model

    # a small, trigger-happy model, so the multivariate detector really scores and flags on a short stream
    model = train_model(SimConfig(users=150, days=2, seed=99), min_decisions=30, contamination=0.05)
    return build_detectors(DetectorConfig(anomaly_model=model))


DETECTORS = _with_trained_model()


@pytest.fixture(scope="module")
def stream() -> list[Decision]:
    sim = simulate(SimConfig(users=120, days=2, seed=13))
    out = []
    for e in sim.events:
        d = decode(orjson.dumps(e))
        assert isinstance(d, Decision)
        out.append(d)
    return out


def run(engine: Engine, events: list[Decision]) -> list[tuple[str, str, int, str, float]]:
    out: list[AlertChange] = []
    for e in events:
        part = kafka_partition(e.user_id.encode(), 2)
        out += engine.process(part, engine.observe(e, int(e.ts.timestamp() * 1000)))
    out += engine.sweep()
    return [(c.alert.alert_id, c.change, c.ts_ms, c.alert.severity, c.alert.score) for c in out]


def single(detector: Detector) -> Engine:
    return Engine([detector])


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_same_input_same_output(detector: Detector, stream: list[Decision]) -> None:
    assert run(single(detector), stream) == run(single(detector), stream)


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_state_round_trips_and_a_restart_equals_a_straight_run(detector: Detector, stream: list[Decision]) -> None:
    straight = run(single(detector), stream)
    cut = len(stream) // 2
    first = single(detector)
    found = run(first, stream[:cut])
    found = [f for f in found if f[1] != "resolved"]  # the end-of-run sweep is re-done by the second half
    second = restart(first, single(detector))
    found += run(second, stream[cut:])
    assert sorted(found) == sorted(straight)


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_memory_per_user_is_bounded(detector: Detector) -> None:
    rng = random.Random(1)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    guard = Guardrail("llama-guard-3", "8b")
    engine = single(detector)
    sizes = []
    for i in range(6000):  # 60 days of a very heavy user: many sessions, requests and categories
        scores = {f"S{c}": round(rng.random() * 0.6, 3) for c in range(1, 15)}
        thresholds = dict.fromkeys(scores, 0.5)
        stage = ("input", "output", "judge")[i % 3]
        event = Decision(
            event_id=f"e{i}",
            ts=start + timedelta(minutes=15 * i),
            user_id="heavy",
            stage=stage,
            guardrail=guard,
            scores=scores,
            thresholds=thresholds,
            decision="block" if max(scores.values()) >= 0.5 else "allow",
            session_id=f"s{i // 7}",
            turn=i % 7,
            request_id=f"r{i // 3}",
            judge=None,
        )
        engine.process(0, engine.observe(event, int(event.ts.timestamp() * 1000)))
        if i % 1000 == 999:
            sizes.append(len(engine.encode_user(engine.partitions[0].users[("default", "heavy")])))
    assert sizes[-1] < 8192, sizes
    assert sizes[-1] <= 2 * sizes[2] + 1024, f"state keeps growing with the stream: {sizes}"
