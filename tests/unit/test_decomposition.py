"""Multi-turn decomposition: the detector's behaviour on hand-built conversations (pure, no I/O)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import msgspec

from detectors.base import Observation, category_outcomes
from detectors.decomposition import (
    DecompositionConfig,
    DecompositionPopulation,
    DecompositionUser,
    MultiTurnDecomposition,
    TurnMoments,
    session_quantile,
)
from detectors.engine import Engine
from detectors.events import Decision, Guardrail
from detectors.findings import Finding
from tests.restart import restart

START = datetime(2026, 11, 1, tzinfo=UTC)
GUARD = Guardrail("llama-guard-3", "8b")
NAME = "multi_turn_decomposition"


class Clock:
    """Hands out increasing event ids; times are given explicitly in seconds from START."""

    def __init__(self) -> None:
        self.n = 0

    def turn(
        self,
        user: str,
        session: str,
        request: str,
        seconds: float,
        s9: float,
        *,
        s1: float = 0.01,
        threshold: float = 0.5,
        policy: str = "p1",
        output: bool = True,
    ) -> list[Decision]:
        """One request: an input decision and (if allowed) an output decision 2 s later, both scoring S9."""
        out = []
        stages = ("input", "output") if output and s9 < threshold else ("input",)
        for k, stage in enumerate(stages):
            self.n += 1
            out.append(
                Decision(
                    event_id=f"e{self.n}",
                    ts=START + timedelta(seconds=seconds + 2 * k),
                    user_id=user,
                    stage=stage,  # type: ignore[arg-type]
                    guardrail=GUARD,
                    session_id=session,
                    request_id=request,
                    policy_version=policy,
                    scores={"S1": s1, "S9": s9},
                    thresholds={"S1": threshold, "S9": threshold},
                    decision="allow" if s9 < threshold else "block",
                )
            )
        return out


def background(clock: Clock, rng: random.Random, sessions: int, *, start: float = 0.0, **kw: object) -> list[Decision]:
    """Ordinary users: short sessions at low scores, an occasional elevated turn."""
    out: list[Decision] = []
    for i in range(sessions):
        user = f"b{rng.randrange(40)}"
        t0 = start + i * 120.0
        for j in range(rng.randint(1, 5)):
            s9 = rng.uniform(0.15, 0.3) if rng.random() < 0.05 else rng.random() * 0.05
            out += clock.turn(user, f"bs{i}", f"br{i}-{j}", t0 + 30 * j, s9, **kw)  # type: ignore[arg-type]
    return out


def session(clock: Clock, user: str, sid: str, start: float, levels: list[float], **kw: object) -> list[Decision]:
    """A conversation whose turns score ``level * 0.5`` in S9, a minute apart."""
    out: list[Decision] = []
    for j, level in enumerate(levels):
        out += clock.turn(user, sid, f"{sid}-r{j}", start + 60 * j, round(level * 0.5, 4), **kw)  # type: ignore[arg-type]
    return out


def decomposed(rng: random.Random, turns: int = 11) -> list[float]:
    return [rng.uniform(0.62, 0.88) / 2 for _ in range(turns)]  # 0.31-0.44 of the threshold


def run(events: list[Decision], detector: MultiTurnDecomposition | None = None) -> list[Finding]:
    detector = detector or MultiTurnDecomposition()
    users: dict[str, DecompositionUser] = {}
    population = DecompositionPopulation()
    out: list[Finding] = []
    for e in sorted(events, key=lambda e: e.ts):
        obs = Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, 0.2), 0.2)
        out += detector.update(users.setdefault(e.user_id, DecompositionUser()), population, obs)
    return out


def opened(engine: Engine, events: list[Decision]) -> list[tuple[str, str | None, str]]:
    found = []
    for e in events:
        for change in engine.process(0, engine.observe(e, int(e.ts.timestamp() * 1000))):
            if change.change in ("opened", "reopened", "escalated"):
                found.append((change.alert.user_id, change.alert.category, change.change))
    return found


def test_a_decomposed_session_is_flagged_with_a_readable_reason_and_an_action() -> None:
    clock, rng = Clock(), random.Random(1)
    events = background(clock, rng, 200) + session(clock, "attacker", "s-77", 30_000, decomposed(rng))
    found = run(events)
    assert found and all(f.user_id == "attacker" for f in found), "benign background users must not be flagged"
    first = found[0]
    assert first.detector == NAME and first.category == "S9" and first.severity == "warning"
    assert re.fullmatch(
        r"session s-77: (\d+) of \1 turns elevated in S9, each under the 0\.50 threshold \(max 0\.\d\d\), "
        r"cumulative risk \d\.\d vs population p99 \d\.\d for \1 turns \(bar 2\.4\); 1 such session in 0\.0 days",
        first.reason,
    ), first.reason
    assert first.action == {
        "type": "review_session",
        "session_id": "s-77",
        "category": "S9",
        "summary": first.action["summary"],
    }
    assert first.evidence["elevated_turns"] >= 6 and first.evidence["cumulative_risk"] >= 2.4
    assert len({f.evidence["elevated_turns"] for f in found}) >= 3, "findings go on while the session is over the bar"


def test_repeated_decomposed_sessions_escalate_to_critical() -> None:
    clock, rng = Clock(), random.Random(2)
    events = background(clock, rng, 200)
    for k in range(3):
        events += session(clock, "attacker", f"s-{k}", 30_000 + k * 10_800, decomposed(rng))
    engine = Engine([MultiTurnDecomposition()])
    changes = opened(engine, sorted(events, key=lambda e: e.ts))
    assert changes == [("attacker", "S9", "opened"), ("attacker", "S9", "escalated")]
    alert = next(iter(engine.partitions[0].book.alerts.values()))
    assert alert.severity == "critical" and re.search(r"; 3 such sessions in 0\.\d days$", alert.reason)


def test_benign_look_alikes_are_not_flagged() -> None:
    clock, rng = Clock(), random.Random(3)
    events = background(clock, rng, 200)
    t = 30_000.0
    # a long chat, mostly at low scores with a few isolated elevated turns
    events += session(clock, "chatty", "long", t, [0.05] * 4 + [0.7] + [0.1] * 6 + [0.75] + [0.05] * 8)
    # the same moderate run, but one turn was blocked
    events += session(clock, "blocked", "blk", t, [*decomposed(rng, 5), 1.2, *decomposed(rng, 6)])
    # the same moderate run with a near miss in it (the boundary detectors' case)
    events += session(clock, "near", "near", t, [*decomposed(rng, 5), 0.95, *decomposed(rng, 6)])
    # moderate turns spread over many short sessions: nothing adds up within one conversation
    for k in range(6):
        events += session(clock, "spread", f"sp{k}", t + k * 3 * 3600, decomposed(rng, 3))
    assert run(events) == []


def test_a_sensitive_topic_user_whose_scores_spread_to_the_threshold_is_not_flagged() -> None:
    clock, rng = Clock(), random.Random(4)
    events = background(clock, rng, 200)
    # earlier conversations on the topic regularly came close to (or over) the threshold ...
    for k in range(4):
        levels = [rng.uniform(0.3, 0.7) for _ in range(5)] + [0.9]
        events += session(clock, "clinician", f"c{k}", 30_000 + k * 9000, levels)
    # ... so a run of moderate turns from them reads as more of the same
    later = session(clock, "clinician", "c-run", 80_000, decomposed(rng))
    assert run(events + later) == []
    # while the very same run from somebody without that history is flagged
    assert {f.user_id for f in run(events + session(clock, "new", "n-run", 80_000, decomposed(rng)))} == {"new"}


def test_no_verdict_during_warm_up() -> None:
    clock, rng = Clock(), random.Random(5)
    events = background(clock, rng, 10) + session(clock, "attacker", "s-1", 3_000, decomposed(rng, 15))
    assert run(events) == []
    # the same stream with the warm-up lowered below the population seen: flagged
    assert run(events, MultiTurnDecomposition(DecompositionConfig(min_population_turns=5)))


def test_a_category_where_every_session_runs_warm_raises_the_bar() -> None:
    clock, rng = Clock(), random.Random(6)
    warm: list[Decision] = []
    for i in range(150):  # everybody's S9 turns sit around 0.35-0.45 of the threshold
        levels = [rng.uniform(0.7, 0.9) / 2 if rng.random() < 0.8 else 0.05 for _ in range(rng.randint(2, 8))]
        warm += session(clock, f"w{i % 30}", f"ws{i}", i * 400.0, levels)
    run_events = session(clock, "attacker", "s-1", 70_000, decomposed(rng))
    assert run(warm + run_events) == []
    detector = MultiTurnDecomposition()
    population = DecompositionPopulation()
    users: dict[str, DecompositionUser] = {}
    for e in sorted(warm, key=lambda e: e.ts):
        obs = Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, 0.2), 0.2)
        detector.update(users.setdefault(e.user_id, DecompositionUser()), population, obs)
    moments = population.moments["S9|p1|0.5"]
    q = session_quantile(moments, population.turns["p1"], 11, 2.326)
    assert q > 4.0, "an 11-turn session in this tenant's S9 traffic is expected to accumulate a lot"


def test_session_quantile_is_a_normal_approximation_of_a_sum_of_turns() -> None:
    moments = TurnMoments(risk=10.0, risk_sq=5.0)  # 100 turns: mean 0.1, variance 0.04
    assert session_quantile(moments, 100, 9, 2.0) == 9 * 0.1 + 2.0 * (9 * 0.04) ** 0.5
    assert session_quantile(None, 100, 9, 2.0) == 0.0


def test_an_input_and_its_output_count_as_one_turn_at_the_higher_level() -> None:
    detector = MultiTurnDecomposition()
    user, population = DecompositionUser(), DecompositionPopulation()
    clock = Clock()
    for e in clock.turn("u", "s", "r1", 0, 0.2) + clock.turn("u", "s", "r1", 0, 0.22)[1:]:
        detector.update(user, population, Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, 0.2), 0.2))
    stats = user.sessions[0].categories["S9"]
    assert user.sessions[0].turns == 1 and stats.turns == 1
    assert abs(stats.risk - 0.44) < 1e-9 and population.turns["p1"] == 1


def test_state_round_trips_and_replaying_from_a_snapshot_gives_the_same_answer() -> None:
    clock, rng = Clock(), random.Random(7)
    events = background(clock, rng, 200)
    for k in range(3):
        events += session(clock, "attacker", f"s-{k}", 20_000 + k * 5_000, decomposed(rng))
    events.sort(key=lambda e: e.ts)
    straight = opened(Engine([MultiTurnDecomposition()]), events)
    assert straight, "the planted decomposer must be found for this test to mean anything"

    cut = next(i for i, e in enumerate(events) if e.session_id == "s-1")  # between two flagged sessions
    engine = Engine([MultiTurnDecomposition()])
    found = opened(engine, events[:cut])
    restored = restart(engine, Engine([MultiTurnDecomposition()]))
    assert restored.partitions[0].users == engine.partitions[0].users
    found += opened(restored, events[cut:])
    assert found == straight


def test_memory_per_user_stays_bounded_on_a_long_stream() -> None:
    cfg = DecompositionConfig()
    detector = MultiTurnDecomposition(cfg)
    user, population = DecompositionUser(), DecompositionPopulation()
    population.turns["p1"] = 10_000  # past warm-up, so sessions get flagged and remembered too
    rng = random.Random(8)
    n = 0
    categories = [f"S{i}" for i in range(1, 15)]
    for k in range(300):  # 300 sessions of 12 turns, a new one every 7 minutes: ~17 overlap at any time
        for j in range(12):
            n += 1
            scores = {c: rng.uniform(0.15, 0.22) if rng.random() < 0.6 else 0.01 for c in categories}
            e = Decision(
                event_id=f"e{n}",
                ts=START + timedelta(minutes=7 * k + j),
                user_id="u",
                stage="input",
                guardrail=GUARD,
                session_id=f"session-{k:06d}",
                request_id=f"request-{n:08d}",
                policy_version="p1",
                scores=scores,
                thresholds=dict.fromkeys(categories, 0.5),
                decision="allow",
            )
            obs = Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, 0.2), 0.2)
            detector.update(user, population, obs)
    blob = msgspec.msgpack.encode(user)
    assert msgspec.msgpack.decode(blob, type=DecompositionUser) == user
    assert len(user.sessions) == cfg.max_open_sessions and len(user.flagged) == cfg.max_flagged_sessions
    assert len(user.topics) == len(categories)
    assert len(blob) < 16_000  # 8 open sessions x 14 categories (~12 KB); ~20 KB with every slot full


def test_a_policy_change_alone_produces_no_findings() -> None:
    """The same traffic before and after every threshold drops from 0.5 to 0.4 under a new policy
    version: every level rises by a quarter, which must not read as sessions suddenly running warm."""
    clock, rng = Clock(), random.Random(9)
    events: list[Decision] = []
    t = 0.0
    for policy, threshold in (("p1", 0.5), ("p2", 0.4)):
        for i in range(200):
            user, sid = f"w{i % 30}", f"{policy}-ws{i}"
            for j in range(rng.randint(2, 10)):
                s9 = rng.uniform(0.14, 0.2) if rng.random() < 0.8 else 0.02  # absolute: policy-independent
                events += clock.turn(user, sid, f"{sid}-{j}", t + 60 * j, s9, policy=policy, threshold=threshold)
            t += 400.0
    found = run(events)
    assert found == []
    assert run(events, MultiTurnDecomposition(DecompositionConfig(population_multiplier=0.0))), (
        "without the per-policy population bar the raised levels would be flagged: the test must bite"
    )
