"""Retry probing: the detector's behaviour on hand-built streams (pure, no I/O)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec

from detectors.base import Observation, category_outcomes
from detectors.engine import Engine
from detectors.events import Decision, Guardrail
from detectors.findings import Finding
from detectors.probing import ProbingConfig, ProbingPopulation, ProbingUser, RetryProbing
from tests.restart import restart

START = datetime(2026, 11, 1, tzinfo=UTC)
GUARD = Guardrail("llama-guard-3", "8b")
HOUR = 3600


def decision(
    user: str,
    seconds: float,
    s2: float,
    *,
    stage: str = "input",
    threshold: float = 0.5,
    policy: str = "2026-11-01",
    s1: float = 0.01,
) -> Decision:
    blocked = s2 >= threshold or s1 >= 0.5
    return Decision(
        event_id=f"{user}@{seconds:.3f}/{stage}",
        ts=START + timedelta(seconds=seconds),
        user_id=user,
        stage=stage,  # type: ignore[arg-type]
        guardrail=GUARD,
        tenant="acme",
        scores={"S1": s1, "S2": s2},
        thresholds={"S1": 0.5, "S2": threshold},
        decision="block" if blocked else "allow",
        policy_version=policy,
        session_id=f"{user}-s{int(seconds) // HOUR}",
    )


def background(rng: random.Random, n: int, users: int = 200, days: float = 4.0) -> list[Decision]:
    """Benign population: ~2 % of requests blocked in S2, ~2 % allowed just under it, 3 % moderately
    elevated, at random times, so a block is followed by a near pass within minutes only by rare chance."""
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.02:
            s2 = rng.uniform(0.55, 0.8)
        elif roll < 0.04:
            s2 = rng.uniform(0.41, 0.49)
        elif roll < 0.07:
            s2 = rng.uniform(0.2, 0.4)
        else:
            s2 = rng.random() * 0.2
        out.append(decision(f"b{rng.randrange(users)}", rng.uniform(0, days * 24 * HOUR), s2))
    return out


def probe_chain(
    user: str, start_s: float, scores: tuple[float, ...] = (0.62, 0.56, 0.47), gap_s: float = 48
) -> list[Decision]:
    """Blocked, rephrased ``gap_s`` seconds later with a lower score, until the last one passes."""
    return [decision(user, start_s + i * gap_s, s) for i, s in enumerate(scores)]


def prober(user: str, chains: int, *, every_hours: float = 5.0, offset_h: float = 20.0) -> list[Decision]:
    out = []
    for i in range(chains):
        out += probe_chain(user, (offset_h + i * every_hours) * HOUR)
    return out


def update(detector: RetryProbing, user: ProbingUser, population: ProbingPopulation, e: Decision) -> list[Finding]:
    band = detector.cfg.band
    return detector.update(
        user, population, Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, band), band)
    )


def findings(detector: RetryProbing, events: list[Decision]) -> list[Finding]:
    users: dict[str, ProbingUser] = {}
    population = ProbingPopulation()
    out = []
    for e in sorted(events, key=lambda e: e.ts):
        out += update(detector, users.setdefault(e.user_id, ProbingUser()), population, e)
    return out


def opened(engine: Engine, events: list[Decision]) -> list[tuple[str, str, str | None, str]]:
    """(user, detector, category, severity) of every alert opened, in order."""
    found = []
    for e in events:
        for change in engine.process(0, engine.observe(e, int(e.ts.timestamp() * 1000))):
            if change.change in ("opened", "reopened"):
                a = change.alert
                found.append((a.user_id, a.detector, a.category, a.severity))
    return found


def test_a_rephrase_prober_is_flagged_with_a_readable_reason_and_an_action() -> None:
    events = background(random.Random(1), 4000) + prober("attacker", 5)
    found = findings(RetryProbing(), events)
    assert found and all(f.user_id == "attacker" for f in found), "benign background users must not be flagged"
    first, last = found[0], found[-1]
    assert first.detector == "retry_probing" and first.category == "S2"
    assert first.evidence["chains"] == ProbingConfig().min_chains  # the chain that reaches min_chains tips it
    assert last.reason.startswith("5 block→rephrase→pass chains in S2 over 0.8 days")
    assert "(median 3 attempts, 48 s apart; last pass 0.47 vs 0.50)" in last.reason
    assert "of blocks followed by a near pass" in last.reason and "population: " in last.reason
    assert last.evidence["population_rate"] < 0.05 and last.score >= ProbingConfig().index_level
    assert last.action["type"] == "require_second_pass_judge" and last.action["category"] == "S2"
    assert last.action["summary"]


def test_a_chain_may_cross_sessions_and_stages_are_kept_apart() -> None:
    events = background(random.Random(2), 4000)
    for i in range(4):  # output-stage probing: blocked answers, regenerated until one passes just under
        t = (20 + 6 * i) * HOUR
        events += [decision("o", t, 0.7, stage="output"), decision("o", t + 30, 0.46, stage="output")]
        # an input block followed by an *output* near pass is two different screens, not a chain
        events += [decision("x", t, 0.7), decision("x", t + 30, 0.46, stage="output")]
    found = findings(RetryProbing(), events)
    assert {f.user_id for f in found} == {"o"}


def test_benign_look_alikes_are_not_flagged() -> None:
    rng = random.Random(3)
    events = background(rng, 4000)
    for i in range(8):
        t = (20 + 5 * i) * HOUR
        # gives up after a block: the next request is far below the threshold
        events += [decision("gives-up", t, 0.7), decision("gives-up", t + 60, 0.05)]
        # comes back to the topic much later: the near pass is not a retry of the block
        events += [decision("later", t, 0.7), decision("later", t + 40 * 60, 0.46)]
        # the near pass is in another category than the block
        events += [decision("other", t, 0.7), decision("other", t + 60, 0.02, s1=0.46)]
    # a sensitive-topic user: blocked often, a few blocks by chance followed by a near pass (4 of 24)
    for i in range(24):
        t = (20 + 3 * i) * HOUR
        events.append(decision("researcher", t, 0.6))
        if i % 6 == 0:
            events.append(decision("researcher", t + 120, 0.45))
    found = findings(RetryProbing(), events)
    assert found == []


def test_judge_decisions_never_count() -> None:
    events = background(random.Random(4), 4000)
    for i in range(6):
        t = (20 + 5 * i) * HOUR
        events += [decision("j", t, 0.7, stage="judge"), decision("j", t + 40, 0.46, stage="judge")]
    assert findings(RetryProbing(), events) == []


def test_no_verdict_during_warm_up() -> None:
    # alone, a prober's own episodes are no population to compare with
    assert findings(RetryProbing(), prober("attacker", 8)) == []
    events = background(random.Random(5), 4000) + prober("attacker", 8)
    assert findings(RetryProbing(ProbingConfig(min_population=100_000)), events) == []


def test_evidence_weighting_more_chains_give_a_higher_index() -> None:
    events = background(random.Random(6), 4000) + prober("few", 4) + prober("many", 12, every_hours=2)
    found = findings(RetryProbing(), events)
    few = max(f.score for f in found if f.user_id == "few")
    many = max(f.score for f in found if f.user_id == "many")
    assert many > few
    assert any(f.severity == "critical" for f in found if f.user_id == "many")


def test_a_replayed_duplicate_event_changes_nothing() -> None:
    events = sorted(background(random.Random(7), 3000) + prober("attacker", 5), key=lambda e: e.ts)
    doubled = [e for e in events for _ in range(2)]
    assert findings(RetryProbing(), doubled) == findings(RetryProbing(), events)


def test_a_policy_change_does_not_by_itself_produce_findings() -> None:
    cfg = ProbingConfig(min_chains=1, min_chain_share=0.0, min_population=0, index_level=1.0)
    # blocked at 0.55 under the old threshold, the same prompt passes minutes later only because the
    # threshold moved to 0.6: not a near miss the user found
    moved = []
    for i in range(30):
        moved.append(decision(f"u{i}", 10 * HOUR - 60 + i, 0.55))
        moved.append(decision(f"u{i}", 10 * HOUR + 60 + i, 0.55, threshold=0.6, policy="2026-11-15"))
    assert findings(RetryProbing(cfg), moved) == []
    # the same pattern under one policy is a chain (the test can fail)
    same = [decision("u", 100, 0.55), decision("u", 200, 0.45)]
    assert [f.user_id for f in findings(RetryProbing(cfg), same)] == ["u"]

    # a whole population under a lowered threshold: more blocks, more near passes, no alerts
    rng = random.Random(8)
    events = []
    for e in background(rng, 6000):
        if e.ts >= START + timedelta(days=2):
            s2 = e.scores["S2"]
            e = decision(e.user_id, (e.ts - START).total_seconds(), s2, threshold=0.4, policy="2026-11-15")
        events.append(e)
    detector = RetryProbing()
    population = ProbingPopulation()
    users: dict[str, ProbingUser] = {}
    for e in sorted(events, key=lambda e: e.ts):
        assert update(detector, users.setdefault(e.user_id, ProbingUser()), population, e) == []
    assert {"S2|2026-11-01|0.5", "S2|2026-11-15|0.4"} <= set(population.baselines)


def test_state_round_trips_and_replaying_from_a_snapshot_gives_the_same_answer() -> None:
    events = sorted(background(random.Random(9), 4000) + prober("attacker", 6), key=lambda e: e.ts)
    straight = opened(Engine([RetryProbing()]), events)
    assert ("attacker", "retry_probing", "S2", "warning") in straight

    cut = next(i for i, e in enumerate(events) if e.user_id == "attacker") + 4  # mid-way through a chain
    engine = Engine([RetryProbing()])
    found = opened(engine, events[:cut])
    restored = restart(engine, Engine([RetryProbing()]))
    found += opened(restored, events[cut:])
    assert found == straight


def test_memory_per_user_stays_bounded_on_a_long_stream() -> None:
    detector = RetryProbing()
    user, population = ProbingUser(), ProbingPopulation()
    encoder = msgspec.msgpack.Encoder()
    sizes = []
    for day in range(60):  # two months of a prober at every stage and in two categories, 12 chains a day
        for k in range(12):
            t = (day * 24 + 2 * k) * HOUR
            stage = ("input", "output", "tool")[k % 3]
            for i, (s2, s1) in enumerate([(0.7, 0.6), (0.6, 0.55), (0.47, 0.45)]):
                e = decision("p", t + 30 * i, s2, s1=s1, stage=stage)
                update(detector, user, population, e)
            # a block never followed up leaves an open chain behind until it goes stale
            e = decision("p", t + HOUR, 0.8, stage=stage)
            update(detector, user, population, e)
        sizes.append(len(encoder.encode(user)))
    assert sizes[-1] <= sizes[1] + 16, f"state keeps growing with the stream: {sizes}"  # counters' varints only
    assert sizes[-1] < 1600, sizes  # two categories with 16 recent chains each
    assert msgspec.msgpack.decode(encoder.encode(user), type=ProbingUser) == user
