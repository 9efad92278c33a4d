"""Memory that stays bounded under hostile cardinality (detectors/engine.py ``StateLimits``, ``evict_idle``): idle
users leave memory and come back from the store exactly as they left, a user's categories and a partition's tenants
are capped (the rest folded and counted), and what a user with 10,000 categories or a partition with 20,000 tenants
leaves in memory and in the store stays bounded."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest

from detectors.base import Detector
from detectors.boundary import HuggingConfig
from detectors.engine import OTHER_CATEGORY, OVERFLOW_TENANT, Engine, StateLimits, fold_categories
from detectors.events import Decision, Guardrail, Judge, decode
from detectors.registry import DetectorConfig, build_detectors, build_engine
from streams.evaluate import kafka_partition, train_model
from streams.simulator import SimConfig, simulate

START = datetime(2026, 11, 1, tzinfo=UTC)
PARTITIONS = 2
Store = dict[tuple[int, str, str], bytes]  # what the sink keeps of users: (partition, tenant, user_id) -> blob


def ms(event: Decision) -> int:
    return int(event.ts.timestamp() * 1000)


@pytest.fixture(scope="module")
def detectors() -> list[Detector]:
    """Every detector, the multivariate one with a small trigger-happy model so its batch scoring runs too."""
    model = train_model(SimConfig(users=150, days=2, seed=99), min_decisions=30, contamination=0.05)
    return build_detectors(DetectorConfig(anomaly_model=model))


@pytest.fixture(scope="module")
def stream() -> list[Decision]:
    """Three days of simulated traffic with planted attackers, spread over many tenants (a cap of a few folds most),
    a quarter of the decisions scored in fewer categories (which categories a user is admitted first then differs
    from user to user, and a user reloaded without them would admit others)."""
    out = []
    for i, raw in enumerate(simulate(SimConfig(users=150, days=3, seed=21)).events):
        raw["tenant"] = f"{raw.get('tenant', 'default')}-{sum(raw['user_id'].encode()) % 7}"
        if i % 4 == 0:
            dropped = sorted(raw["thresholds"])[: min(i % 7, len(raw["thresholds"]) - 1)]  # scores stay non-empty
            raw["scores"] = {c: v for c, v in raw["scores"].items() if c not in dropped}
            raw["thresholds"] = {c: v for c, v in raw["thresholds"].items() if c not in dropped}
        event = decode(orjson.dumps(raw))
        assert isinstance(event, Decision)
        out.append(event)
    return out


def run(
    engine: Engine,
    events: list[Decision],
    *,
    batch: int = 400,
    idle_ms: int | None = None,
    max_users: int | None = None,
) -> tuple[list[tuple[object, ...]], Store, dict[str, int]]:
    """The pipeline's cycle without I/O: fetch the batch's users not in memory from the store, process, sweep, store
    what changed, then evict. Every alert change, what the store holds at the end, and what was moved."""
    store: Store = {}
    changes = []
    moved = {"loaded": 0, "evicted": 0}
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        keys = [(kafka_partition(e.user_id.encode(), PARTITIONS), e.tenant, e.user_id) for e in chunk]
        for partition, users in engine.missing_users(keys).items():
            found = [(t, u, store[(partition, t, u)]) for t, u in users if (partition, t, u) in store]
            moved["loaded"] += engine.load_users(partition, found)
        for (partition, _t, _u), event in zip(keys, chunk, strict=True):
            changes += engine.process(partition, engine.observe(event, ms(event)))
        changes += engine.sweep()
        dirty = engine.take_dirty()
        store.update({(p, t, u): blob for p, t, u, blob in dirty.users})
        if idle_ms is not None:
            moved["evicted"] += engine.evict_idle(idle_ms)
        if max_users is not None:
            moved["evicted"] += engine.evict_over(max_users)
    seen = [(c.alert.alert_id, c.change, c.ts_ms, c.alert.severity, c.alert.score, c.alert.reason) for c in changes]
    return seen, store, moved


SMALL = StateLimits(max_categories_per_user=4, max_categories_per_partition=9, max_tenants_per_partition=3)
EVICTIONS = {"every stored user": (0, None), "all but one": (None, 1), "an hour idle or over 40": (3_600_000, 40)}


@pytest.mark.parametrize(
    ("limits", "evictions"),
    [(StateLimits(), list(EVICTIONS)), (SMALL, ["every stored user"])],
    ids=["default caps", "small caps"],
)
def test_evicting_users_as_soon_as_they_are_stored_changes_no_alert(
    detectors: list[Detector], stream: list[Decision], limits: StateLimits, evictions: list[str]
) -> None:
    """The same stream, batch after batch, with every user kept in memory and with users evicted after each commit
    and fetched back from the store with their next batch: the same alert changes, and the same state stored."""
    never = Engine(detectors, limits=limits)
    kept, kept_store, kept_moved = run(never, stream)
    assert kept_moved == {"loaded": 0, "evicted": 0}
    assert len({c[0].split(":")[0] for c in kept}) >= 4, "the stream must raise several detectors' alerts"
    for name in evictions:
        idle_ms, max_users = EVICTIONS[name]
        engine = Engine(detectors, limits=limits)
        seen, store, moved = run(engine, stream, idle_ms=idle_ms, max_users=max_users)
        assert moved["evicted"] > 500 and moved["loaded"] > 500, moved
        assert seen == kept, f"eviction ({name}) changed the alerts"
        assert store == kept_store, f"eviction ({name}) changed the state stored"
        assert engine.folded == never.folded
        assert engine.tracked_users() < never.tracked_users() // 2


def test_idle_users_leave_memory_by_event_time() -> None:
    engine = build_engine()
    for user, hours in (("a", 0), ("b", 3), ("c", 5)):
        decide(engine, user, START + timedelta(hours=hours))
    engine.take_dirty()
    assert engine.evict_idle(4 * HOUR) == 1  # a: 5 h behind the partition's newest decision
    assert set(engine.partitions[0].users) == {("default", "b"), ("default", "c")}
    decide(engine, "d", START + timedelta(hours=7, minutes=30))
    engine.take_dirty()
    assert engine.evict_idle(4 * HOUR) == 1  # b: 4.5 h behind
    assert engine.tracked_users() == 2


def test_only_users_whose_state_is_stored_leave_memory() -> None:
    engine = build_engine()
    decide(engine, "old", START)
    decide(engine, "new", START + timedelta(hours=5))
    assert engine.evict_idle(4 * HOUR) == 0, "old is idle, but its state is not stored yet"
    engine.take_dirty()
    # the watermark moved less than a quarter of the idle time since the last look: no look yet
    assert engine.evict_idle(4 * HOUR) == 0
    decide(engine, "newer", START + timedelta(hours=6))
    engine.take_dirty()
    assert engine.evict_idle(4 * HOUR) == 1
    assert set(engine.partitions[0].users) == {("default", "new"), ("default", "newer")}


def test_over_the_resident_cap_the_longest_idle_users_leave_first() -> None:
    engine = build_engine()
    for i in range(20):
        decide(engine, f"u{i:02d}", START + timedelta(minutes=i), partition=i % 2)
    engine.take_dirty()
    assert engine.evict_over(20) == 0
    assert engine.evict_over(10) == 11  # down to nine tenths of the cap, the longest behind their watermark first
    left = sorted(u for state in engine.partitions.values() for _t, u in state.users)
    assert left == [f"u{i:02d}" for i in range(11, 20)]


HOUR = 3_600_000


def decide(engine: Engine, user: str, ts: datetime, partition: int = 0) -> None:
    event = decision(user, ts, {"S1": 0.1})
    engine.process(partition, engine.observe(event, ms(event)))


def decision(user: str, ts: datetime, scores: dict[str, float], **fields: object) -> Decision:
    return Decision(
        event_id=f"{user}-{ts.timestamp()}-{len(scores)}",
        ts=ts,
        user_id=user,
        stage=str(fields.pop("stage", "input")),  # type: ignore[arg-type]
        guardrail=Guardrail("custom", "1"),
        scores=scores,
        thresholds=dict.fromkeys(scores, 0.5),
        decision="block" if max(scores.values(), default=0.0) >= 0.5 else "allow",
        **fields,  # type: ignore[arg-type]
    )


def sprayer(events: int = 400, per_event: int = 25) -> Iterator[Decision]:
    """One user scored in 10,000 distinct categories (25 new ones per decision), many of them hugging or blocked,
    over inputs, outputs and judgements of requests in sessions: every detector's per-category state is exercised."""
    rng = random.Random(3)
    for i in range(events):
        categories = [f"cat-{i * per_event + j:05d}" for j in range(per_event)]
        scores = {c: round(rng.choice([rng.random() * 0.3, 0.42 + rng.random() * 0.1]), 3) for c in categories}
        stage = ("input", "output", "judge")[i % 3]
        yield decision(
            "sprayer",
            START + timedelta(minutes=3 * i),
            scores,
            stage=stage,
            session_id=f"s{i // 9}",
            turn=i % 9,
            request_id=f"r{i // 3}",
            judge=Judge("second-pass", "unsafe") if stage == "judge" else None,
        )


def spray(limits: StateLimits) -> tuple[Engine, int, int, int]:
    """The sprayer through an engine: its state blob, the population blob, and the memory traced (current) after."""
    events = list(sprayer())
    tracemalloc.start()
    try:
        engine = build_engine(limits=limits)
        for event in events:
            engine.process(0, engine.observe(event, ms(event)))
        dirty = engine.take_dirty()
        traced, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [(_p, _t, _u, blob)] = dirty.users
    [(_p, population)] = dirty.populations
    return engine, len(blob), len(population), traced


def test_a_user_with_10000_categories_keeps_a_bounded_state() -> None:
    engine, blob, population, traced = spray(StateLimits())
    assert sorted(engine.partitions[0].categories) == sorted(f"cat-{i:05d}" for i in range(64))
    assert engine.folded["category"] == 10_000 - 64
    assert blob <= 12_000, "a user at the category cap (64, and __other__) stays within ~8 KB"
    assert population <= 8_000
    uncapped = StateLimits(max_categories_per_user=10**6, max_categories_per_partition=10**6)
    _engine, blob_uncapped, population_uncapped, traced_uncapped = spray(uncapped)
    assert blob_uncapped > 20 * blob and population_uncapped > 20 * population, "what the cap saves"
    assert traced_uncapped > 4 * traced


def test_categories_a_partition_has_no_room_for_fold_for_every_user() -> None:
    engine = build_engine(limits=StateLimits(max_categories_per_user=3, max_categories_per_partition=4))
    first = decision("a", START, {"S1": 0.1, "S2": 0.1, "S3": 0.1})
    second = decision("b", START, {"S3": 0.1, "S4": 0.1, "S5": 0.45})
    for event in (first, second):
        engine.process(0, engine.observe(event, ms(event)))
    assert engine.partitions[0].categories == ["S1", "S2", "S3", "S4"]
    assert engine.folded == {"category": 1, "tenant": 0}  # S5: the partition is full
    blob = engine.take_dirty().users
    assert all(len(b) < 1200 for *_key, b in blob)


def test_folded_categories_count_as_their_worst() -> None:
    event = decision("u", START, {"S1": 0.2, "x": 0.3, "y": 0.45, "z": 0.45})
    event = msgspec.structs.replace(event, thresholds={"S1": 0.5, "x": 0.3, "y": 0.5, "z": 0.9})
    folded = fold_categories(event, ["x", "y", "z"])
    assert folded.scores == {"S1": 0.2, OTHER_CATEGORY: 0.3}  # x: blocked (0.3 of 0.3), the worst of the three
    assert folded.thresholds == {"S1": 0.5, OTHER_CATEGORY: 0.3}
    assert fold_categories(event, ["y", "z"]).scores[OTHER_CATEGORY] == 0.45  # y: 0.9 of its threshold, z: 0.5


def test_a_user_over_the_category_cap_still_raises_alerts_in_other() -> None:
    """Somebody hugging the threshold of a category beyond their 64 is folded, not forgotten: boundary hugging sees
    the hugs in __other__, against the population's __other__ baseline (everybody's 65th and 66th categories)."""
    engine = build_engine(DetectorConfig(hugging=HuggingConfig(min_population=200)))
    rng = random.Random(5)
    changes = []
    for i in range(2400):
        user = "prober" if i % 20 == 0 else f"user{i % 60}"
        scores = {f"c{j:02d}": round(rng.random() * 0.2, 3) for j in range(66)}
        if user == "prober":
            scores["secret"] = round(0.44 + rng.random() * 0.05, 3)
        event = decision(user, START + timedelta(minutes=i), scores)
        changes += engine.process(0, engine.observe(event, ms(event)))
    assert engine.partitions[0].categories == [f"c{j:02d}" for j in range(64)]
    alerts = {(c.alert.user_id, c.alert.category) for c in changes}
    assert ("prober", OTHER_CATEGORY) in alerts
    assert all(user == "prober" for user, _category in alerts)
    assert engine.folded["category"] == 2 * 2400 + 120


def test_20000_tenants_in_one_partition_share_a_bounded_population() -> None:
    """20,000 tenants, one user each, one decision a minute: the population keeps 256 tenants and the overflow, users
    an hour idle leave memory, and once that is so, memory stops growing with more tenants (traced from the
    10,000th: what the next 7,500 add)."""
    limits = StateLimits()
    engine = build_engine(limits=limits)
    rng = random.Random(9)
    tenants, batch = 20_000, 500
    sizes = []
    traced_at = {}
    for start in range(0, tenants, batch):
        if start == 10_000:
            tracemalloc.start()
        for t in range(start, start + batch):
            scores = {f"S{c}": round(rng.random() * 0.3, 3) for c in range(1, 15)}
            event = decision(f"u{t}", START + timedelta(seconds=60 * t), scores, tenant=f"tenant-{t:05d}")
            engine.process(0, engine.observe(event, ms(event)))
        engine.sweep()
        sizes.append(len(engine.take_dirty().populations[0][1]))
        engine.evict_idle(HOUR)
        if start in (12_000, tenants - batch):
            traced_at[start] = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    state = engine.partitions[0]
    assert len(state.population) == limits.max_tenants_per_partition + 1 and OVERFLOW_TENANT in state.population
    assert engine.folded["tenant"] == tenants - limits.max_tenants_per_partition
    assert max(sizes) <= 1.05 * sizes[len(sizes) // 4], "the population blob stops growing at the cap"
    assert engine.tracked_users() <= 80, "users an hour idle left memory"
    growth = traced_at[tenants - batch] - traced_at[12_000]
    assert growth < 100_000, f"7,500 more tenants added {growth:,} bytes to memory"


def test_tenants_over_the_cap_keep_their_own_users_and_alerts(
    detectors: list[Detector], stream: list[Decision]
) -> None:
    engine = Engine(detectors, limits=SMALL)
    seen, _store, _moved = run(engine, stream)
    assert seen and engine.folded["tenant"] > 0
    overflowed = 0
    for state in engine.partitions.values():
        assert len(state.population) == SMALL.max_tenants_per_partition + 1
        own = set(state.population) - {OVERFLOW_TENANT}
        assert {t for t, _u in state.users} > own, "users of the tenants over the cap keep their tenant"
        tenants = {a.tenant for a in state.book.alerts.values()}
        assert OVERFLOW_TENANT not in tenants
        overflowed += len(tenants - own)
    assert overflowed, "the stream must alert on a tenant over the cap to test anything"
