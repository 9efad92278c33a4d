"""Category rate anomaly: the detector's behaviour on hand-built streams (pure, no I/O)."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime, timedelta

import msgspec

from detectors.base import Observation, category_outcomes
from detectors.engine import Engine
from detectors.events import Decision, Guardrail
from detectors.findings import Finding
from detectors.rates import (
    CategoryRateAnomaly,
    RateConfig,
    RatePopulation,
    RateUser,
    binomial_tail_log10,
    poisson_tail_log10,
)
from tests.restart import restart

START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
GUARD = Guardrail("llama-guard-3", "8b")
CATEGORIES = ("S1", "S2", "S12")
_ids = itertools.count()


def decision(
    minutes: float,
    user: str,
    elevated: dict[str, float] | None = None,
    *,
    stage: str = "output",
    threshold: float = 0.5,
    policy: str = "p1",
    rng: random.Random | None = None,
) -> Decision:
    rng = rng or random.Random(0)
    scores = {c: round(rng.random() * 0.05, 4) for c in CATEGORIES}
    scores.update(elevated or {})
    return Decision(
        event_id=f"e{next(_ids)}",
        ts=START + timedelta(minutes=minutes),
        user_id=user,
        stage=stage,  # type: ignore[arg-type]
        guardrail=GUARD,
        tenant="acme",
        policy_version=policy,
        scores=scores,
        thresholds=dict.fromkeys(CATEGORIES, threshold),
        decision="block" if any(s >= threshold for s in scores.values()) else "allow",
    )


def ordinary(rng: random.Random, minutes: float, user: str, **kw: object) -> Decision:
    """A benign request: now and then one category moderately elevated, rarely blocked (~0.3 %)."""
    roll = rng.random()
    elevated = None
    if roll < 0.003:
        elevated = {rng.choice(CATEGORIES): rng.uniform(0.5, 0.6)}
    elif roll < 0.04:
        elevated = {rng.choice(CATEGORIES): rng.uniform(0.2, 0.45)}
    return decision(minutes, user, elevated, rng=rng, **kw)  # type: ignore[arg-type]


def daily(rng: random.Random, user: str, per_day: int, days: range, **kw: object) -> list[Decision]:
    """``per_day`` ordinary requests a day at random times of day."""
    return [ordinary(rng, day * 1440 + rng.uniform(0, 1440), user, **kw) for day in days for _ in range(per_day)]


def background(rng: random.Random, days: int, users: int = 60, per_day: int = 15) -> list[Decision]:
    return [e for u in range(users) for e in daily(rng, f"b{u}", per_day, range(days))]


def flood(
    rng: random.Random, user: str, start_minutes: float, count: int, *, category: str = "S12", blocked: float = 0.12
) -> list[Decision]:
    """One output every 3 minutes concentrated in ``category``: elevated, ``blocked`` of them blocked."""
    out = []
    for i in range(count):
        level = rng.uniform(0.5, 0.65) if rng.random() < blocked else rng.uniform(0.2, 0.49)
        out.append(decision(start_minutes + 3 * i, user, {category: level}, rng=rng))
    return out


def ts_ms(e: Decision) -> int:
    return int(e.ts.timestamp() * 1000)


def run(detector: CategoryRateAnomaly, events: list[Decision]) -> list[Finding]:
    events = sorted(events, key=lambda e: e.ts)
    users: dict[str, RateUser] = {}
    population = RatePopulation()
    out: list[Finding] = []
    for e in events:
        obs = Observation(e, ts_ms(e), category_outcomes(e, 0.2), 0.2)
        out += detector.update(users.setdefault(e.user_id, RateUser()), population, obs)
    return out


def opened(engine: Engine, events: list[Decision]) -> list[tuple[str, str | None, str]]:
    found = []
    for e in events:
        for change in engine.process(0, engine.observe(e, ts_ms(e))):
            if change.change in ("opened", "reopened", "escalated"):
                found.append((change.alert.user_id, change.alert.category, change.change))
    return found


def test_tail_bounds_are_close_to_exact_and_never_overstate() -> None:
    def exact_poisson(k: int, mu: float) -> float:
        return 1.0 - sum(math.exp(-mu) * mu**j / math.factorial(j) for j in range(k))

    def exact_binomial(k: int, n: int, p: float) -> float:
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))

    for k, mu in [(5, 1.0), (12, 0.5), (30, 10.0), (3, 2.5)]:
        exact = -math.log10(exact_poisson(k, mu))
        assert exact - 0.5 <= poisson_tail_log10(k, mu) <= exact + 1e-9
    for k, n, p in [(5, 40, 0.01), (10, 50, 0.05), (3, 100, 0.02), (7, 7, 0.3)]:
        exact = -math.log10(exact_binomial(k, n, p))
        assert exact - 0.5 <= binomial_tail_log10(k, n, p) <= exact + 1e-9
    assert poisson_tail_log10(2, 3.0) == 0.0 and binomial_tail_log10(1, 100, 0.05) == 0.0


def test_a_category_flood_is_flagged_with_a_readable_reason_and_a_rate_limit() -> None:
    rng = random.Random(1)
    events = background(rng, 4)
    events += daily(rng, "flooder", 20, range(3))  # three ordinary days: the user's own history
    events += daily(rng, "flooder", 20, range(3, 4)) + flood(rng, "flooder", 3 * 1440 + 480, 150)
    found = run(CategoryRateAnomaly(), events)
    assert found and {f.user_id for f in found} == {"flooder"}, "background users must not be flagged"
    first = found[0]
    assert first.detector == "category_rate" and first.category == "S12"
    assert first.ts_ms < (START + timedelta(days=3, hours=8 + 2)).timestamp() * 1000  # within two hours
    assert "elevated S12 output decisions" in first.reason and "/day over the last 2.9 days" in first.reason
    assert "volume jump" in first.reason
    assert first.evidence["warm_up"] is False and "volume" in first.evidence["verdicts"]
    assert first.action["type"] == "rate_limit" and first.action["category"] == "S12"
    assert first.action["max_per_hour"] >= 1 and "S12" in first.action["summary"]
    last = found[-1]
    assert "block rate" in last.reason and "population" in last.reason
    assert "block_rate" in last.evidence["verdicts"] and last.severity == "critical"


def test_heavy_steady_users_and_a_steady_sensitive_user_are_not_flagged() -> None:
    rng = random.Random(2)
    events = background(rng, 6)
    for u in range(5):  # 100-300 requests a day, every day
        events += daily(rng, f"heavy{u}", 100 + 50 * u, range(6))
    for day in range(6):  # a researcher: ~25 elevated S2 prompts a day, a blocked one now and then
        for _ in range(rng.randint(30, 45)):
            level = rng.uniform(0.5, 0.55) if rng.random() < 0.03 else rng.uniform(0.2, 0.49)
            events.append(decision(day * 1440 + rng.uniform(0, 1440), "researcher", {"S2": level}, rng=rng))
    assert run(CategoryRateAnomaly(), events) == []


def test_volume_warm_up_gives_no_verdict_on_a_new_user_without_blocks() -> None:
    rng = random.Random(3)
    events = background(rng, 2)
    # a brand-new user with 100 elevated, never-blocked S12 answers in their first hours
    events += [decision(1440 + 60 + 2 * i, "newbie", {"S12": rng.uniform(0.2, 0.45)}, rng=rng) for i in range(100)]
    assert [f for f in run(CategoryRateAnomaly(), events) if f.user_id == "newbie"] == []


def test_a_brand_new_user_flooding_a_category_is_caught_against_the_population() -> None:
    rng = random.Random(4)
    events = background(rng, 2) + flood(rng, "newcomer", 1440 + 60, 120, blocked=0.25)
    found = run(CategoryRateAnomaly(), events)
    assert found and {f.user_id for f in found} == {"newcomer"}
    first = found[0]
    assert first.category == "S12" and first.evidence["verdicts"] == ["block_rate"]
    assert first.evidence["warm_up"] is True and first.evidence["block_shift_against"] == "new"
    assert "own history warming up" in first.reason and "vs population" in first.reason


def test_no_verdict_before_the_population_baseline_is_warm() -> None:
    rng = random.Random(5)
    assert run(CategoryRateAnomaly(RateConfig(min_population=10**6)), flood(rng, "newcomer", 60, 120)) == []


def test_a_policy_change_alone_does_not_produce_findings() -> None:
    """Thresholds drop from 0.5 to 0.4 on day 3. Scores keep their distribution, so everybody blocks more,
    most of all a researcher whose S2 scores sit at 0.4-0.5: blocked now, allowed before. Their volume
    did not change, so it is not a flood; the same post-change traffic from somebody new would be one."""
    rng = random.Random(6)
    events: list[Decision] = []
    for day in range(6):
        kw: dict[str, object] = {"threshold": 0.5, "policy": "p1"} if day < 3 else {"threshold": 0.4, "policy": "p2"}
        events += [e for u in range(60) for e in daily(rng, f"b{u}", 15, range(day, day + 1), **kw)]
        for _ in range(80):
            s2 = rng.uniform(0.4, 0.49) if rng.random() < 0.3 else rng.uniform(0.2, 0.39)
            minutes = day * 1440 + rng.uniform(0, 1440)
            events.append(decision(minutes, "researcher", {"S2": s2}, rng=rng, **kw))  # type: ignore[arg-type]
    detector = CategoryRateAnomaly(RateConfig(min_population=300))  # the new policy's baseline warms up fast
    assert run(detector, events) == []
    change = START + timedelta(days=3)
    newcomer = [
        msgspec.structs.replace(e, user_id="newcomer") if e.user_id == "researcher" and e.ts >= change else e
        for e in events
    ]
    assert {f.user_id for f in run(detector, newcomer)} == {"newcomer"}


def test_state_round_trips_and_replaying_from_a_snapshot_gives_the_same_answer() -> None:
    rng = random.Random(7)
    events = background(rng, 4) + daily(rng, "flooder", 20, range(4)) + flood(rng, "flooder", 3 * 1440 + 300, 150)
    events.sort(key=lambda e: e.ts)
    straight = opened(Engine([CategoryRateAnomaly()]), events)
    assert straight, "the planted flooder must be found for this test to mean anything"

    cut = next(i for i, e in enumerate(events) if e.ts >= START + timedelta(days=3, hours=5, minutes=20))
    first = Engine([CategoryRateAnomaly()])
    found = opened(first, events[:cut])
    restored = restart(first, Engine([CategoryRateAnomaly()]))
    found += opened(restored, events[cut:])
    assert found == straight


def test_user_state_stays_bounded_over_a_long_stream() -> None:
    rng = random.Random(8)
    categories = [f"c{i}" for i in range(80)]  # a taxonomy far larger than the cap
    detector = CategoryRateAnomaly()
    user, population = RateUser(), RatePopulation()
    for i in range(20_000):  # 60 days, every category elevated now and then, three stages
        scores = {c: round(rng.random() * 0.5, 4) for c in rng.sample(categories, 6)}
        e = Decision(
            event_id=f"m{i}",
            ts=START + timedelta(minutes=4.32 * i),
            user_id="u",
            stage=rng.choice(["input", "output", "tool"]),
            guardrail=GUARD,
            scores=scores,
            thresholds=dict.fromkeys(scores, 0.5),
            decision="allow",
        )
        detector.update(user, population, Observation(e, ts_ms(e), [], 0.2))
    blob = msgspec.msgpack.encode(user)
    assert msgspec.msgpack.decode(blob, type=RateUser) == user
    assert len(user.windows) <= detector.cfg.max_categories
    assert len(blob) < 5_000  # 48 windows of ~60-90 bytes and three stage volumes
    assert len(population.baselines) <= detector.cfg.max_baselines

    tight = CategoryRateAnomaly(RateConfig(max_categories=4, max_baselines=8))
    user, population = RateUser(), RatePopulation()
    for i, category in enumerate(categories[:20]):
        e = decision(i, "u", rng=rng)
        e = msgspec.structs.replace(e, scores={category: 0.45}, thresholds={category: 0.5})
        tight.update(user, population, Observation(e, ts_ms(e), [], 0.2))
    # at the caps, the newest entry is kept and counted (an older one makes room)
    assert len(user.windows) == 4 and user.windows["output|c19"].today_elevated == 1
    assert len(population.baselines) == 8 and population.baselines["output|c19|p1|0.5"].decisions == 1


def test_judge_decisions_and_late_events_do_not_count() -> None:
    detector = CategoryRateAnomaly()
    user, population = RateUser(), RatePopulation()
    rng = random.Random(9)
    for i in range(50):
        e = decision(i, "u", {"S12": 0.45}, stage="judge", rng=rng)
        detector.update(user, population, Observation(e, ts_ms(e), [], 0.2))
    assert user == RateUser() and population == RatePopulation()
    for minutes in (3 * 1440, 0.0):  # today, then an event from three days ago
        e = decision(minutes, "u", {"S12": 0.45}, rng=rng)
        detector.update(user, population, Observation(e, ts_ms(e), [], 0.2))
    assert user.windows["output|S12"].today_elevated == 1 and user.windows["output|S12"].prev_elevated == 0
