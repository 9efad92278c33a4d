"""The engine's shortcuts change nothing: decisions observed by the engine (hot categories only, counts per layout,
peaks without a loop) give exactly the findings, alert changes and stored state of the same decisions observed by
hand with every category's outcome (each detector's one-by-one loop), checkpoint after checkpoint."""

from __future__ import annotations

import random

import msgspec
import orjson
import pytest

from detectors.alerts import AlertChange
from detectors.base import Observation, category_outcomes, layout_of, observe, top_of
from detectors.engine import Engine
from detectors.events import Decision, decode
from detectors.rates import RateConfig
from detectors.registry import DetectorConfig, build_engine
from streams.evaluate import kafka_partition
from streams.simulator import SimConfig, simulate


def varied_stream(seed: int) -> list[Decision]:
    """Planted attackers and a policy change, and more than one layout per guardrail: a second tenant, a policy of
    its own with two lower thresholds, decisions without a threshold for one category, a few decisions whose
    top scores tie or sit within a rounding step of each other, and a few scored exactly at a threshold."""
    rng = random.Random(seed)
    raw = simulate(SimConfig(users=160, days=3, seed=seed, policy_change_day=2.0)).events
    for i, e in enumerate(raw):
        if i % 7 == 0:
            e["tenant"] = "globex"
        if i % 11 == 0:
            e["policy_version"] = "experiment"
            e["thresholds"] = {k: (0.35 if k in ("S1", "S2") else v) for k, v in e["thresholds"].items()}
        if i % 13 == 0:
            e["thresholds"] = {k: v for k, v in e["thresholds"].items() if k != "S3"}
        if i % 97 == 0 and len(e["scores"]) > 1:
            first, second = list(e["scores"])[:2]
            e["scores"][second] = e["scores"][first]  # a tie for the top
        if i % 89 == 0 and e["scores"]:
            top = max(e["scores"], key=e["scores"].get)
            e["scores"][top] = rng.choice([0.0, 0.1999999999, 0.2, 0.3999999999999999])
        if i % 83 == 0 and e["scores"]:
            scored = [c for c in e["scores"] if c in e["thresholds"]]
            if scored:  # a score right at the threshold: margin 0 is blocked, not hugging
                category = rng.choice(scored)
                e["scores"][category] = e["thresholds"][category]
    out = []
    for e in raw:
        d = decode(orjson.dumps(e))
        assert isinstance(d, Decision)
        out.append(d)
    return out


def by_hand(e: Decision, band: float) -> Observation:
    return Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, band), band)


def replay(engine: Engine, events: list[Decision], hand: bool) -> list[object]:
    """Every alert change, and every state the sink would store at a checkpoint every 97 events."""
    out: list[object] = []
    for i, e in enumerate(events):
        obs = by_hand(e, engine.band) if hand else engine.observe(e, int(e.ts.timestamp() * 1000))
        changes: list[AlertChange] = engine.process(kafka_partition(e.user_id.encode(), 3), obs)
        out += [msgspec.msgpack.encode(c) for c in changes]
        if i % 97 == 96:
            out += [msgspec.msgpack.encode(c) for c in engine.sweep()]
            dirty = engine.take_dirty()
            out += [
                sorted(dirty.users),
                sorted(dirty.populations),
                [msgspec.msgpack.encode(a) for _p, a in dirty.alerts],
            ]
    out += [msgspec.msgpack.encode(c) for c in engine.sweep()]
    return out


CONFIGS = {
    "defaults": DetectorConfig(),
    # a few rate baselines per tenant: they are evicted and made again all the time
    "rate baselines evicted": DetectorConfig(rates=RateConfig(max_baselines=12, max_categories=3)),
    "another band": DetectorConfig(band=0.35),
}


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_the_engine_shortcuts_give_what_every_outcome_one_by_one_gives(config: DetectorConfig) -> None:
    events = varied_stream(21)
    fast = replay(build_engine(config), events, hand=False)
    slow = replay(build_engine(config), events, hand=True)
    assert len(fast) == len(slow)
    assert fast == slow


def test_observe_agrees_with_the_loop_on_peak_top_margin_hot_hugging_and_blocked() -> None:
    engine = build_engine()
    for e in varied_stream(5):
        fast = engine.observe(e, 0)
        full = category_outcomes(e, engine.band)
        loop = observe(e, 0, engine.band)  # hot_floor 0: the loop over every category
        assert fast.peak == loop.peak
        assert fast.min_margin == loop.min_margin
        assert fast.top == top_of(full, e.thresholds) == loop.top
        hot = {c for c, s, h, b in full if h or b or s >= engine.hot_floor * e.thresholds[c]}
        assert {o[0] for o in fast.hot_outcomes} == hot
        assert [o for o in full if o[0] in hot] == fast.hot_outcomes
        assert fast.layout is layout_of(e)
        hand = by_hand(e, engine.band)
        assert list(fast.hugging) == list(loop.hugging) == list(hand.hugging) == [c for c, _s, h, _b in full if h]
        assert list(fast.blocked) == list(loop.blocked) == list(hand.blocked) == [c for c, _s, _h, b in full if b]
