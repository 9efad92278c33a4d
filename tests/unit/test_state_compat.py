"""State written before the compact layout (detectors/engine.py ``COMPACT``) still loads and carries on exactly.

``fixtures/detector_state_v1.msgpack.gz`` was made at commit 5391055, the last commit with the old layout (every
detector's state in a map keyed by detector name; boundary hugging with a CategoryStats record per scored
category; judge records with every value in each): the default engine (boundary hugging's warm-up lowered to
100 decisions, so it has something to say on a small stream) ran over the first 60 % of
``simulate(SimConfig(users=24, days=4, seed=29, attackers_per_kind=1))`` keyed into two partitions, sweeping every
250 events, and was checkpointed as the pipeline does (``take_dirty``). The fixture holds those blobs, the rest
of the events (trimmed to the fields detectors read), every finding and alert change the old code produced on
them, and every user's state blob and the populations at the end.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import msgspec
import pytest

from detectors.alerts import AlertChange, AlertState
from detectors.boundary import HuggingUser, all_category_stats
from detectors.engine import COMPACT, Engine
from detectors.events import Decision, decode
from detectors.findings import Finding
from detectors.registry import DetectorConfig, build_engine
from streams.evaluate import kafka_partition

FIXTURE = Path(__file__).parent / "fixtures" / "detector_state_v1.msgpack.gz"


@pytest.fixture(scope="module")
def fixture() -> dict[str, Any]:
    data: dict[str, Any] = msgspec.msgpack.decode(gzip.decompress(FIXTURE.read_bytes()))
    return data


def engine_for(fixture: dict[str, Any]) -> Engine:
    hugging = msgspec.structs.replace(DetectorConfig().hugging, min_population=fixture["hugging_min_population"])
    return build_engine(DetectorConfig(hugging=hugging))


def load(engine: Engine, fixture: dict[str, Any]) -> None:
    for partition, part in fixture["before"].items():
        engine.load_partition(
            int(partition),
            part["population"],
            [(t, u, blob) for t, u, blob in part["users"]],
            [msgspec.msgpack.decode(a, type=AlertState) for a in part["alerts"]],
            part["watermark_ms"],
        )


def carry_on(engine: Engine, fixture: dict[str, Any]) -> tuple[list[Finding], list[AlertChange]]:
    """The rest of the stream, fed as the fixture's maker fed it; every finding and alert change."""
    found: list[Finding] = []
    for detector in engine.detectors:

        def update(user: Any, population: Any, obs: Any, _update: Any = detector.update) -> list[Finding]:
            out: list[Finding] = _update(user, population, obs)
            found.extend(out)
            return out

        detector.update = update  # type: ignore[method-assign]
    changes: list[AlertChange] = []
    for i, raw in enumerate(fixture["events"]):
        event = decode(raw)
        assert isinstance(event, Decision)
        partition = kafka_partition(event.user_id.encode(), fixture["partitions"])
        changes += engine.process(partition, engine.observe(event, int(event.ts.timestamp() * 1000)))
        if i % 250 == 249:
            changes += engine.sweep()
    changes += engine.sweep()
    return found, changes


def test_old_blobs_decode_and_shrink_when_written_again(fixture: dict[str, Any]) -> None:
    engine = engine_for(fixture)
    old = new = 0
    for part in fixture["before"].values():
        for _t, _u, blob in part["users"]:
            assert blob[:1] != COMPACT
            state = engine.decode_user(blob)
            again = engine.encode_user(state)
            assert again[:1] == COMPACT
            assert engine.decode_user(again) == state
            assert engine.encode_user(engine.decode_user(again)) == again
            old, new = old + len(blob), new + len(again)
    assert new < 0.7 * old, (old, new)  # heavy users here (~60 decisions each); ~0.4 for typical ones


def test_a_store_written_by_the_old_layout_carries_on_exactly(fixture: dict[str, Any]) -> None:
    engine = engine_for(fixture)
    load(engine, fixture)
    found, changes = carry_on(engine, fixture)
    expected = [msgspec.msgpack.decode(f, type=Finding) for f in fixture["findings"]]
    assert found == expected
    assert len({f.detector for f in found}) >= 5, "the fixture must exercise most detectors to mean anything"
    assert changes == [msgspec.msgpack.decode(c, type=AlertChange) for c in fixture["changes"]]

    # Every user's state at the end is the old code's, read through the new layout.
    for partition, part in fixture["final"].items():
        state = engine.partitions[int(partition)]
        engine.settle_populations(state.population)  # what detectors counted per layout, folded in (as when stored)
        assert engine.decode_population(part["population"]) == state.population
        assert len(part["users"]) == len(state.users)
        for tenant, user_id, blob in part["users"]:
            theirs, ours = engine.decode_user(blob), engine.settle_user(state.users[(tenant, user_id)])
            hugging_theirs: HuggingUser = theirs.pop("boundary_hugging")
            hugging_ours: HuggingUser = ours["boundary_hugging"]
            assert all_category_stats(hugging_theirs) == all_category_stats(hugging_ours)
            assert theirs == {name: value for name, value in ours.items() if name != "boundary_hugging"}


def test_a_restart_from_the_old_layout_equals_one_from_the_new(fixture: dict[str, Any]) -> None:
    """Loaded from the old blobs, checkpointed in the new layout, loaded again: nothing changes."""
    first = engine_for(fixture)
    load(first, fixture)
    dirty = first.take_dirty()
    second = engine_for(fixture)
    for partition, part in fixture["before"].items():
        p = int(partition)
        second.load_partition(
            p,
            second.encode_population(first.partitions[p].population),
            [(t, u, second.encode_user(s)) for (t, u), s in first.partitions[p].users.items()],
            [msgspec.msgpack.decode(a, type=AlertState) for a in part["alerts"]],
            part["watermark_ms"],
        )
    assert not dirty.users  # loading marks nothing dirty
    expected = [msgspec.msgpack.decode(f, type=Finding) for f in fixture["findings"]]
    assert carry_on(second, fixture)[0] == expected


def test_the_compact_layout_leaves_out_default_states_and_reads_them_back() -> None:
    engine = build_engine()
    event = decode(
        b'{"event_id":"e1","ts":"2026-11-01T00:00:00.000Z","user_id":"u","stage":"input","request_id":"r1",'
        b'"guardrail":{"name":"llama-guard-3","version":"8b"},"scores":{"S1":0.01,"S2":0.02},'
        b'"thresholds":{"S1":0.5,"S2":0.5},"decision":"allow"}'
    )
    assert isinstance(event, Decision)
    engine.process(0, engine.observe(event, int(event.ts.timestamp() * 1000)))
    state = engine.partitions[0].users[("default", "u")]
    blob = engine.encode_user(state)
    assert blob[:1] == COMPACT
    keys = set(msgspec.msgpack.decode(blob[1:], type=dict[str, msgspec.Raw]))
    # no block: retry probing has nothing; "c" is the engine's own, the categories admitted to the user's state
    assert "p" not in keys and keys <= {"h", "r", "p", "b", "d", "j", "m", "c"}
    assert engine.decode_user(blob) == state
    old = msgspec.msgpack.encode(state)  # keyed by detector name, every detector: how blobs were laid out before
    assert engine.decode_user(old) == state
    assert len(blob) < len(old)
