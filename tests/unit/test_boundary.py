"""Boundary hugging: the detector's behaviour on hand-built streams (pure, no I/O)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from detectors import boundary
from detectors.base import DAY_MS, THRESHOLD_STAGES, Observation, category_outcomes, policy_key
from detectors.boundary import (
    BoundaryHugging,
    CategoryStats,
    HuggingConfig,
    HuggingPopulation,
    HuggingUser,
    PopulationStats,
    QuietGroup,
    all_category_stats,
    category_stats,
    hugging_index,
)
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


def reference_update(
    detector: BoundaryHugging, user: dict[str, CategoryStats], population: HuggingPopulation, obs: Observation
) -> list[Finding]:
    """The detector as it was before quiet groups (commit 5391055): a CategoryStats per scored category."""
    cfg, event, ts_ms = detector.cfg, obs.event, obs.ts_ms
    if event.stage not in THRESHOLD_STAGES:
        return []
    found = []
    for category, score, hugging, blocked in category_outcomes(event, cfg.band):
        threshold = event.thresholds[category]
        pop = population.baselines.setdefault(category + "|" + policy_key(event, category), PopulationStats())
        pop.decisions += 1
        pop.hugs += hugging
        stats = user.setdefault(category, CategoryStats(first_ts=ts_ms, last_ts=ts_ms))
        stats.decisions += 1
        if hugging:
            stats.hugs += 1
            if stats.hugs == 1:
                stats.first_hug_ts = ts_ms
        if blocked:
            stats.blocks += 1
        elapsed = ts_ms - stats.last_ts
        decay = 0.5 ** (elapsed / (cfg.half_life_days * DAY_MS)) if elapsed > 0 else 1.0
        stats.ewma_decisions = stats.ewma_decisions * decay + 1.0
        stats.ewma_hugs = stats.ewma_hugs * decay + hugging
        if ts_ms > stats.last_ts:
            stats.last_ts = ts_ms
        if not hugging and not blocked and score >= (1.0 - 3.0 * cfg.band) * threshold:
            stats.near += 1
        if pop.decisions < cfg.min_population:
            continue
        p0 = max(cfg.population_floor, (pop.hugs + 0.5) / (pop.decisions + 1.0))
        p1 = min(0.5, max(cfg.cusum_shift * p0, cfg.cusum_min_alternative))
        if p1 > p0:
            llr = math.log(p1 / p0) if hugging else math.log((1.0 - p1) / (1.0 - p0))
            stats.cusum = max(0.0, stats.cusum + llr)
        if hugging:
            finding = detector._decide(event, category, stats, p0, ts_ms)
            if finding is not None:
                found.append(finding)
    return found


def test_quiet_groups_keep_every_count_a_record_per_category_would() -> None:
    """Decisions scoring changing sets of categories (subsets, new ones, another policy), mostly low scores with
    some near, hugging and blocked ones, a few out of order, a few at the judge stage; state round-tripped
    through msgpack now and then: the counters and findings equal those of a CategoryStats per category."""
    rng = random.Random(11)
    detector = BoundaryHugging(HuggingConfig(min_population=30, min_hugs=3, min_significance=1.0))
    taxonomy = [f"S{i}" for i in range(1, 9)]
    users = {f"u{i}": HuggingUser() for i in range(8)}
    reference: dict[str, dict[str, CategoryStats]] = {u: {} for u in users}
    population, reference_population = HuggingPopulation(), HuggingPopulation()
    found, expected = [], []
    ts = START
    for n in range(3000):
        ts += timedelta(seconds=rng.choice((1, 30, 600, 7200)) if rng.random() > 0.05 else -rng.randrange(1, 600))
        user = rng.choice(sorted(users))
        if rng.random() < 0.7:
            categories = taxonomy[: 6 if n < 1000 else 8]  # two categories join the taxonomy later
        else:
            categories = rng.sample(taxonomy, rng.randrange(1, len(taxonomy)))
        scores = {}
        for c in categories:
            roll = rng.random()
            scores[c] = (
                rng.uniform(0.41, 0.49) if roll < 0.03 else rng.uniform(0.2, 0.4) if roll < 0.06 else rng.random() * 0.2
            )
            scores[c] = rng.uniform(0.5, 0.9) if roll > 0.99 else scores[c]
        if user == "u0" and "S1" in scores and rng.random() < 0.5:
            scores["S1"] = 0.46  # a hugger, for findings
        e = Decision(
            event_id=f"e{n}",
            ts=ts,
            user_id=user,
            stage="judge" if rng.random() < 0.05 else "input",
            guardrail=GUARD,
            scores=scores,
            thresholds=dict.fromkeys(categories, 0.5 if n < 2000 else 0.45),
            decision="allow",
            policy_version="p1" if n < 2000 else "p2",
        )
        obs = Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, 0.2), 0.2)
        found += detector.update(users[user], population, obs)
        expected += reference_update(detector, reference[user], reference_population, obs)
        assert all_category_stats(users[user]) == reference[user]
        if n % 97 == 0:
            users[user] = msgspec.msgpack.decode(msgspec.msgpack.encode(users[user]), type=HuggingUser)
    assert found == expected and len(found) > 10
    assert population == reference_population
    for user, state in users.items():
        assert all_category_stats(state) == reference[user]
        assert {c for g in state.quiet for c in g.categories}.isdisjoint(state.categories)
        for category, stats in reference[user].items():
            assert category_stats(state, category) == stats
        assert category_stats(state, "nope") is None


def test_a_user_with_only_low_scores_keeps_one_group() -> None:
    detector = BoundaryHugging()
    user, population = HuggingUser(), HuggingPopulation()
    categories = [f"S{i}" for i in range(1, 15)]
    for i in range(3):
        e = Decision(
            event_id=f"e{i}",
            ts=START + timedelta(seconds=i),
            user_id="u",
            stage="output",
            guardrail=GUARD,
            scores=dict.fromkeys(categories, 0.01),
            thresholds=dict.fromkeys(categories, 0.5),
            decision="allow",
        )
        detector.update(user, population, Observation(e, i * 1000, category_outcomes(e, 0.2), 0.2))
    assert user.categories == {} and len(user.quiet) == 1 and user.quiet[0].categories == categories
    assert len(msgspec.msgpack.encode(user)) < 100  # a 10-field record per category was ~700 bytes


def test_state_written_with_a_record_per_category_regroups_on_decode() -> None:
    quiet = CategoryStats(decisions=3, ewma_decisions=2.9, first_ts=1000, last_ts=5000)
    hugged = CategoryStats(decisions=3, hugs=1, ewma_decisions=2.9, ewma_hugs=1.0, first_ts=1000, last_ts=5000)
    later = CategoryStats(decisions=1, ewma_decisions=1.0, first_ts=4000, last_ts=4000)
    old = {"categories": {"S1": quiet, "S2": hugged, "S3": quiet, "S4": later}}  # the layout before quiet groups
    user = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=HuggingUser)
    assert user.categories == {"S2": hugged}
    assert sorted(user.quiet, key=lambda g: g.categories) == [
        QuietGroup(["S1", "S3"], 3, 2.9, 5000, 4000),
        QuietGroup(["S4"], 1, 1.0, 4000, 0),
    ]
    assert all_category_stats(user) == old["categories"]


@pytest.mark.parametrize("cap", [boundary.MAX_PENDING, 8])
def test_quiet_decisions_left_pending_settle_to_what_folding_each_one_gives(
    cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet decision waits in the user's state and a run of them is folded at once (``settle_user``): before the
    detector reads the user (their next decision that is not quiet) and before the engine stores them. Folded
    either way, the counters, CUSUMs, quiet groups, population and findings must be the same to the bit: here with
    two layouts of the same categories (another policy's thresholds), a third with fewer categories, event time
    that steps back, and hugging runs that push CUSUMs up between the quiet ones."""
    monkeypatch.setattr(boundary, "MAX_PENDING", cap)  # 8: runs folded in early, as a path that never encodes does
    rng = random.Random(11)
    cfg = HuggingConfig(min_population=50)
    fast, slow = BoundaryHugging(cfg), BoundaryHugging(cfg)
    fast_users: dict[str, HuggingUser] = {}
    slow_users: dict[str, HuggingUser] = {}
    fast_pop, slow_pop = HuggingPopulation(), HuggingPopulation()
    categories = [f"S{i}" for i in range(1, 8)]
    found_fast: list[Finding] = []
    found_slow: list[Finding] = []
    waited = 0
    for n in range(6000):
        user = f"u{rng.randrange(12)}"
        layout = rng.random()
        scored = categories[:3] if layout < 0.2 else categories
        threshold = 0.45 if 0.2 <= layout < 0.35 else 0.5
        scores = {c: rng.random() * 0.15 for c in scored}
        roll = rng.random()
        if user == "u0" and roll < 0.3:  # a hugger, for findings
            scores["S1"] = rng.uniform(0.41, 0.44)
        elif roll < 0.06:  # near: categories of the user's own
            scores[rng.choice(scored)] = rng.uniform(0.2, 0.35)
        elif roll < 0.075:  # an occasional hug: CUSUMs above 0
            scores[rng.choice(scored)] = rng.uniform(0.41, 0.44)
        step_back = rng.random() < 0.05
        e = Decision(
            event_id=f"q{n}",
            ts=START + timedelta(seconds=n * 30 - (600 if step_back else 0)),
            user_id=user,
            stage="input",
            guardrail=GUARD,
            scores=scores,
            thresholds=dict.fromkeys(scored, threshold),
            decision="allow",
            policy_version="p1" if threshold == 0.5 else "p2",
        )
        ts_ms = int(e.ts.timestamp() * 1000)
        user_fast = fast_users.setdefault(user, HuggingUser())
        found_fast += fast.update(user_fast, fast_pop, Engine([fast]).observe(e, ts_ms))
        waited = max(waited, len(user_fast.pending) // 2)
        slow_obs = Observation(e, ts_ms, category_outcomes(e, cfg.band), cfg.band)
        found_slow += slow.update(slow_users.setdefault(user, HuggingUser()), slow_pop, slow_obs)
        if n % 500 == 499 or n == 5999:  # a checkpoint: what the engine stores
            for name, state in fast_users.items():
                fast.settle_user(state)
                assert msgspec.msgpack.encode(state) == msgspec.msgpack.encode(slow_users[name]), (n, name)
            fast.settle(fast_pop)
            slow.settle(slow_pop)
            assert fast_pop == slow_pop
    assert found_fast == found_slow and len(found_fast) > 3
    assert waited >= min(10, cap // 2 - 1), "runs of quiet decisions must have waited for this test to mean anything"
    assert waited < cap // 2
    assert any(s.cusum for u in fast_users.values() for s in u.categories.values())
