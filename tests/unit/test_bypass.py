"""Output bypass: the detector's behaviour on hand-built streams (pure, no I/O)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import msgspec

from detectors.base import Observation, category_outcomes
from detectors.bypass import BypassConfig, BypassPopulation, BypassUser, OutputBypass
from detectors.engine import Engine
from detectors.events import Decision, Guardrail
from detectors.findings import Finding
from tests.restart import restart

START = datetime(2026, 11, 1, tzinfo=UTC)
GUARD = Guardrail("llama-guard-3", "8b")
CATEGORIES = tuple(f"S{i}" for i in range(1, 15))
HOUR = 3600


def scored(
    user: str,
    request: str,
    seconds: float,
    stage: str,
    elevated: dict[str, float],
    *,
    threshold: float = 0.5,
    policy: str = "2026-11-01",
) -> Decision:
    scores = {c: elevated.get(c, 0.01) for c in CATEGORIES}
    blocked = any(s >= threshold for s in scores.values())
    return Decision(
        event_id=f"{request}/{stage}",
        ts=START + timedelta(seconds=seconds),
        user_id=user,
        stage=stage,  # type: ignore[arg-type]
        guardrail=GUARD,
        tenant="acme",
        scores=scores,
        thresholds=dict.fromkeys(CATEGORIES, threshold),
        decision="block" if blocked else "allow",
        policy_version=policy,
        request_id=request,
    )


def request(
    user: str,
    n: int,
    seconds: float,
    *,
    out: dict[str, float] | None = None,
    prompt: dict[str, float] | None = None,
    delay: float = 3.0,
    **kw: object,
) -> list[Decision]:
    """One request: its input decision and, when the input was allowed, the output ``delay`` seconds later."""
    rid = f"{user}-r{n}"
    first = scored(user, rid, seconds, "input", prompt or {}, **kw)  # type: ignore[arg-type]
    if first.decision != "allow":
        return [first]
    return [first, scored(user, rid, seconds + delay, "output", out or {}, **kw)]  # type: ignore[arg-type]


def background(rng: random.Random, n: int, users: int = 200, days: float = 4.0) -> list[Decision]:
    """Benign population: an answer blocked behind an allowed prompt in ~0.3 % of requests, any category."""
    out: list[Decision] = []
    for i in range(n):
        out_scores = {rng.choice(CATEGORIES): rng.uniform(0.5, 0.7)} if rng.random() < 0.003 else {}
        out += request(f"b{rng.randrange(users)}", i, rng.uniform(0, days * 24 * HOUR), out=out_scores)
    return out


def attacker(
    user: str, requests: int, bypass_every: int, *, start_h: float = 20.0, every_min: float = 30.0
) -> list[Decision]:
    """Ordinary requests, and every ``bypass_every``-th one an innocuous prompt whose answer is blocked in S9."""
    out: list[Decision] = []
    for i in range(requests):
        bypass = (i + 1) % bypass_every == 0
        out += request(user, i, (start_h * 60 + i * every_min) * 60, out={"S9": 0.66} if bypass else {})
    return out


def update(detector: OutputBypass, user: BypassUser, population: BypassPopulation, e: Decision) -> list[Finding]:
    return detector.update(
        user, population, Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, 0.2), 0.2)
    )


def findings(detector: OutputBypass, events: list[Decision], *, ordered: bool = True) -> list[Finding]:
    users: dict[str, BypassUser] = {}
    population = BypassPopulation()
    out = []
    for e in sorted(events, key=lambda e: e.ts) if ordered else events:
        out += update(detector, users.setdefault(e.user_id, BypassUser()), population, e)
    return out


def opened(engine: Engine, events: list[Decision]) -> list[tuple[str, str, str | None, str]]:
    found = []
    for e in events:
        for change in engine.process(0, engine.observe(e, int(e.ts.timestamp() * 1000))):
            if change.change in ("opened", "reopened"):
                a = change.alert
                found.append((a.user_id, a.detector, a.category, a.severity))
    return found


def test_an_output_bypasser_is_flagged_with_a_readable_reason_and_an_action() -> None:
    events = background(random.Random(1), 6000) + attacker("attacker", 52, 7)
    found = findings(OutputBypass(), events)
    assert found and all(f.user_id == "attacker" for f in found), "benign background users must not be flagged"
    first, last = found[0], found[-1]
    assert first.detector == "output_bypass" and first.category == "S9"
    assert first.evidence["bypasses"] == 3  # the third one tips it (BypassConfig.min_bypasses)
    assert last.reason.startswith(
        "7 of 49 requests passed the input screen and were blocked at output (S9) over 1.0 days"
    )
    assert re.search(r"population rate 0\.\d% in any category, S9 baseline 0\.\d\d%", last.reason), last.reason
    assert last.evidence["population_rate_any_category"] < 0.01
    assert last.action["type"] == "tighten_input_screen" and last.action["category"] == "S9"
    assert last.action["summary"]
    assert last.evidence["requests"] == 49 and last.evidence["population_rate"] >= BypassConfig().population_floor


def test_the_join_is_by_request_id_within_the_window_in_either_order() -> None:
    rng = random.Random(2)
    base = background(rng, 6000)
    # answers blocked far too late after their prompt (a retried job, say): not joined
    late = [e for i in range(12) for e in request("late", i, (20 + i) * HOUR, out={"S9": 0.7}, delay=20 * 60)]
    # outputs whose request_id matches no input: nothing to join
    orphan = []
    for i in range(12):
        t = (20 + i) * HOUR
        orphan += [*request("orphan", i, t), scored("orphan", f"elsewhere-{i}", t + 5, "output", {"S9": 0.7})]
    assert findings(OutputBypass(), base + late + orphan) == []
    # the output stage's event arriving before its input's still joins
    swapped = []
    for i in range(12):
        pair = request("swapped", i, (20 + i) * HOUR, out={"S9": 0.7} if i % 2 else {})
        swapped += pair[::-1]
    found = findings(OutputBypass(), sorted(base, key=lambda e: e.ts) + swapped, ordered=False)
    assert {f.user_id for f in found} == {"swapped"}


def test_benign_look_alikes_are_not_flagged() -> None:
    rng = random.Random(3)
    events = background(rng, 6000)
    # a heavy user: 3 blocked answers in one category among 2,000 requests is the population's rate
    events += [
        e
        for i in range(2000)
        for e in request("heavy", i, 20 * HOUR + i * 90, out={"S9": 0.7} if i in (100, 900, 1700) else {})
    ]
    # several blocked answers, each in another category: bad luck, not a pattern the input screen misses
    events += [
        e for i, c in enumerate(("S1", "S5", "S9", "S12")) for e in request("spread", i, (20 + i) * HOUR, out={c: 0.7})
    ]
    # the input screen does its job: the prompts are blocked, there is no answer to block
    events += [e for i in range(10) for e in request("blocked", i, (20 + i) * HOUR, prompt={"S9": 0.8})]
    assert findings(OutputBypass(), events) == []


def test_no_verdict_during_warm_up() -> None:
    # alone, the attacker's own requests are no population to compare with
    assert findings(OutputBypass(), attacker("attacker", 60, 3)) == []
    events = background(random.Random(4), 6000) + attacker("attacker", 60, 3)
    assert findings(OutputBypass(BypassConfig(min_population=1_000_000)), events) == []


def test_evidence_weighting_a_higher_rate_gives_a_higher_index() -> None:
    events = background(random.Random(5), 6000) + attacker("often", 40, 2) + attacker("rarely", 40, 8)
    found = findings(OutputBypass(), events)
    often = max(f.score for f in found if f.user_id == "often")
    rarely = max((f.score for f in found if f.user_id == "rarely"), default=0.0)
    assert often > rarely
    assert any(f.severity == "critical" for f in found if f.user_id == "often")


def test_a_replayed_duplicate_event_changes_nothing() -> None:
    events = sorted(background(random.Random(6), 4000) + attacker("attacker", 40, 4), key=lambda e: e.ts)
    doubled = [e for e in events for _ in range(2)]
    assert findings(OutputBypass(), doubled) == findings(OutputBypass(), events)


def test_a_policy_change_does_not_by_itself_produce_findings() -> None:
    """Lowering the threshold to 0.4 blocks a tenth of everybody's answers in S2 from then on: the new
    policy has its own baseline, so nobody stands out."""
    rng = random.Random(7)
    events: list[Decision] = []
    for i in range(12_000):
        user, t = f"b{rng.randrange(200)}", rng.uniform(0, 4 * 24 * HOUR)
        after = t >= 2 * 24 * HOUR
        out = {"S2": 0.45} if after and rng.random() < 0.1 else {}
        policy = {"threshold": 0.4, "policy": "2026-11-15"} if after else {}
        events += request(user, i, t, out=out, **policy)
    users: dict[str, BypassUser] = {}
    population = BypassPopulation()
    detector = OutputBypass()
    for e in sorted(events, key=lambda e: e.ts):
        assert update(detector, users.setdefault(e.user_id, BypassUser()), population, e) == []
    assert population.baselines["S2|2026-11-15|0.4"].bypasses > 100
    assert population.baselines["S2|2026-11-01|0.5"].bypasses == 0


def test_state_round_trips_and_replaying_from_a_snapshot_gives_the_same_answer() -> None:
    events = sorted(background(random.Random(8), 6000) + attacker("attacker", 40, 4), key=lambda e: e.ts)
    straight = opened(Engine([OutputBypass()]), events)
    assert ("attacker", "output_bypass", "S9", "warning") in straight

    # cut between an attacker's input and its blocked output, so the join spans the restart
    cut = next(i for i, e in enumerate(events) if e.user_id == "attacker" and e.request_id == "attacker-r7") + 1
    engine = Engine([OutputBypass()])
    found = opened(engine, events[:cut])
    restored = restart(engine, Engine([OutputBypass()]))
    found += opened(restored, events[cut:])
    assert found == straight


def test_memory_per_user_stays_bounded() -> None:
    detector = OutputBypass()
    population = BypassPopulation()
    encoder = msgspec.msgpack.Encoder()
    # a burst of prompts whose answers never arrive: the pending map is capped
    burst = BypassUser()
    for i in range(5000):
        update(detector, burst, population, scored("burst", f"r{i}", 100 + i * 0.01, "input", {}))
    assert len(burst.pending) == BypassConfig().max_pending
    assert len(encoder.encode(burst)) < 2500
    # two months of a busy user with bypasses in every category: the state stops growing
    user = BypassUser()
    sizes = []
    for day in range(60):
        for i in range(50):
            n = day * 50 + i
            for e in request("busy", n, day * 24 * HOUR + i * 600, out={CATEGORIES[n % 14]: 0.7} if i % 5 == 0 else {}):
                update(detector, user, population, e)
        sizes.append(len(encoder.encode(user)))
    assert sizes[-1] <= sizes[10] + 16, f"state keeps growing with the stream: {sizes}"  # counters' varints only
    assert sizes[-1] < 1000, sizes
    assert msgspec.msgpack.decode(encoder.encode(user), type=BypassUser) == user
