"""Boundary hugging: the detector's behaviour on hand-built streams (pure, no I/O)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from detectors.base import Observation, category_outcomes
from detectors.boundary import BoundaryHugging, HuggingConfig, HuggingPopulation, HuggingUser, hugging_index
from detectors.engine import Engine
from detectors.events import Decision, Guardrail
from detectors.findings import Finding
from tests.restart import restart

START = datetime(2026, 11, 1, tzinfo=UTC)
GUARD = Guardrail("llama-guard-3", "8b")


def decision(n: int, user: str, s2: float, *, minutes: int | None = None, tenant: str = "acme") -> Decision:
    ts = START + timedelta(minutes=n if minutes is None else minutes)
    return Decision(
        event_id=f"e{n}",
        ts=ts,
        user_id=user,
        stage="input",
        guardrail=GUARD,
        tenant=tenant,
        scores={"S1": 0.01, "S2": s2},
        thresholds={"S1": 0.5, "S2": 0.5},
        decision="allow" if s2 < 0.5 else "block",
    )


def background(rng: random.Random, n: int, users: int = 200) -> list[Decision]:
    """Benign population: S2 hugs (0.4 < score < 0.5) about 2% of the time."""
    out = []
    for i in range(n):
        s2 = rng.uniform(0.41, 0.49) if rng.random() < 0.02 else rng.random() * 0.2
        out.append(decision(i, f"b{rng.randrange(users)}", s2))
    return out


def hugging_engine(**cfg: object) -> Engine:
    return Engine([BoundaryHugging(HuggingConfig(**cfg))])  # type: ignore[arg-type]


def opened(engine: Engine, events: list[Decision]) -> list[tuple[str, str, str | None]]:
    """(user, detector, category) of every alert opened, in order."""
    found = []
    for e in events:
        for change in engine.process(0, engine.observe(e, int(e.ts.timestamp() * 1000))):
            if change.change in ("opened", "reopened"):
                found.append((change.alert.user_id, change.alert.detector, change.alert.category))
    return found


def findings(detector: BoundaryHugging, events: list[Decision]) -> list[Finding]:
    users: dict[str, HuggingUser] = {}
    population = HuggingPopulation()
    out = []
    for e in events:
        obs = Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, detector.cfg.band), detector.cfg.band)
        out += detector.update(users.setdefault(e.user_id, HuggingUser()), population, obs)
    return out


def test_outcomes_follow_the_schema_vocabulary() -> None:
    e = decision(0, "u", 0.45)
    by_cat = {c: (hug, blk) for c, _s, hug, blk in category_outcomes(e, 0.2)}
    assert by_cat["S2"] == (True, False)  # margin 0.05 <= 0.2 * 0.5
    assert by_cat["S1"] == (False, False)
    assert {c: (h, b) for c, _s, h, b in category_outcomes(decision(1, "u", 0.5), 0.2)}["S2"] == (False, True)
    assert {c: (h, b) for c, _s, h, b in category_outcomes(decision(2, "u", 0.39), 0.2)}["S2"] == (False, False)


def test_a_boundary_hugger_is_flagged_with_a_readable_reason() -> None:
    rng = random.Random(1)
    events = background(rng, 3000)
    for i in range(40):  # every 30 minutes, just under the S2 threshold
        events.append(decision(10_000 + i, "attacker", 0.46, minutes=30 * i + 7))
    events.sort(key=lambda e: e.ts)
    found = findings(BoundaryHugging(), events)
    mine = [f for f in found if f.user_id == "attacker"]
    assert mine and mine[0].detector == "boundary_hugging" and mine[0].category == "S2"
    assert "S2 decisions landed within 20% under the 0.50 threshold" in mine[0].reason
    assert "population share" in mine[0].reason
    assert mine[0].action["type"] == "throttle" and mine[0].action["category"] == "S2"
    assert all(f.user_id == "attacker" for f in found), "benign background users must not be flagged"


def test_each_alert_is_opened_once_per_user_detector_and_category() -> None:
    engine = hugging_engine(min_population=10)
    events = background(random.Random(2), 500) + [
        decision(1000 + i, "attacker", 0.47, minutes=600 + i) for i in range(200)
    ]
    found = opened(engine, events)
    assert found.count(("attacker", "boundary_hugging", "S2")) == 1


def test_evidence_weighting_three_events_cannot_outrank_three_thousand() -> None:
    cfg = HuggingConfig()
    detector = BoundaryHugging(cfg)
    population = HuggingPopulation()
    small, big = HuggingUser(), HuggingUser()
    for i in range(3):
        e = decision(i, "small", 0.45)
        detector.update(small, population, Observation(e, i, category_outcomes(e, 0.2), 0.2))
    for i in range(3000):
        e = decision(i, "big", 0.45 if i % 2 else 0.1)
        detector.update(big, population, Observation(e, i, category_outcomes(e, 0.2), 0.2))
    p0 = 0.02
    assert hugging_index(big.categories["S2"], p0, cfg) > hugging_index(small.categories["S2"], p0, cfg)


def test_no_verdict_during_warm_up() -> None:
    engine = hugging_engine(min_population=10_000)
    found = opened(engine, [decision(i, "attacker", 0.46) for i in range(100)])
    assert found == []


def test_a_slow_burner_is_caught_by_the_trend_even_when_sparse() -> None:
    rng = random.Random(3)
    events = background(rng, 20_000, users=400)
    # one hugging decision per ~8 hours among the user's own benign traffic, for 7 days
    for i in range(21):
        events.append(decision(50_000 + i, "slow", 0.45, minutes=480 * i + 3))
        for j in range(4):
            events.append(decision(60_000 + 4 * i + j, "slow", rng.random() * 0.1, minutes=480 * i + 60 + 30 * j))
    events.sort(key=lambda e: e.ts)
    found = opened(hugging_engine(), events)
    assert any(u == "slow" for u, _d, _c in found)
    assert all(u == "slow" for u, _d, _c in found)


def test_state_round_trips_and_replaying_from_a_snapshot_gives_the_same_answer() -> None:
    rng = random.Random(4)
    events = background(rng, 2000) + [decision(5000 + i, "attacker", 0.46, minutes=2000 + 5 * i) for i in range(30)]
    events.sort(key=lambda e: e.ts)
    straight = opened(hugging_engine(), events)

    first, second = events[:1000], events[1000:]
    engine = hugging_engine()
    found = opened(engine, first)
    restored = restart(engine, hugging_engine())
    found += opened(restored, second)
    assert found == straight
    assert found, "the planted hugger must be found for this test to mean anything"


def test_user_state_is_small() -> None:
    engine = hugging_engine()
    opened(engine, [decision(i, "u", 0.3) for i in range(100)])
    state = engine.partitions[0].users[("acme", "u")]
    blob = engine.encode_user(state)
    assert engine.decode_user(blob) == state
    assert len(blob) < 200  # two categories: a compact array each


def test_a_sensitive_topic_user_with_a_smooth_score_density_is_not_flagged() -> None:
    """Many elevated-but-safe S2 scores whose density falls off towards the threshold: a researcher, not a
    prober, even though their share in the hugging band is far above the population's."""
    rng = random.Random(5)
    events = background(rng, 3000)
    for i in range(300):
        roll = rng.random()
        s2 = rng.uniform(0.2, 0.4) if roll < 0.7 else rng.uniform(0.4, 0.5) if roll < 0.85 else rng.random() * 0.2
        events.append(decision(20_000 + i, "researcher", s2, minutes=10 * i + 1))
    events.sort(key=lambda e: e.ts)
    assert [u for u, _d, _c in opened(hugging_engine(), events) if u == "researcher"] == []


def test_judge_decisions_do_not_count_towards_hugging() -> None:
    engine = hugging_engine(min_population=0)
    judged = [
        Decision(
            event_id=f"j{i}",
            ts=START + timedelta(minutes=i),
            user_id="u",
            stage="judge",
            guardrail=GUARD,
            scores={"S2": 0.45},
            thresholds={"S2": 0.5},
            decision="allow",
        )
        for i in range(50)
    ]
    assert opened(engine, judged) == []
    assert engine.partitions[0].users[("default", "u")]["boundary_hugging"] == HuggingUser()
