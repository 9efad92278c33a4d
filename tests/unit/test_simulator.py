"""The synthetic event generator: deterministic, contract-valid, and realistic enough to test detectors on."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.simulator import (
    ATTACK_KINDS,
    BENIGN_PERSONAS,
    Label,
    SimConfig,
    Simulation,
    labels_to_rows,
    simulate,
)

SMALL = SimConfig(users=300, days=3.0, seed=11)
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
REQUIRED = ("event_id", "ts", "user_id", "stage", "guardrail", "scores", "thresholds", "decision")
TENANT_GUARDRAIL = {"acme": ("llama-guard-3", "8b"), "globex": ("openai-moderation", "omni-2024-09-26")}


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def label_of(sim: Simulation) -> dict[str, Label]:
    return {label.user_id: label for label in sim.labels}


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def hugging(event: dict[str, Any], band: float) -> list[str]:
    """Categories the decision hugs, per event-schema.md: allowed there and 0 < margin <= band * threshold."""
    thresholds = event["thresholds"]
    return [c for c, s in event["scores"].items() if 0 < thresholds[c] - s <= band * thresholds[c]]


def over_threshold(event: dict[str, Any]) -> list[str]:
    return [c for c, s in event["scores"].items() if s >= event["thresholds"][c]]


# ---- determinism --------------------------------------------------------------------------------


def test_same_config_gives_byte_identical_output(sim: Simulation) -> None:
    again = simulate(SMALL)
    assert json.dumps(again.events) == json.dumps(sim.events)
    assert labels_to_rows(again.labels) == labels_to_rows(sim.labels)


def test_different_seed_gives_different_output(sim: Simulation) -> None:
    other = simulate(SimConfig(users=SMALL.users, days=SMALL.days, seed=SMALL.seed + 1))
    assert json.dumps(other.events[:200]) != json.dumps(sim.events[:200])
    assert [label.kind for label in other.labels] != [label.kind for label in sim.labels]


# ---- the contract -----------------------------------------------------------------------------


def test_every_event_satisfies_the_contract(sim: Simulation) -> None:
    assert len(sim.events) > 10_000
    seen_ids: set[str] = set()
    for event in sim.events:
        for name in REQUIRED:
            assert name in event, (name, event)
        assert "text" not in event
        assert event["schema"] == "guardrail.decision/v1"
        assert isinstance(event["event_id"], str) and 1 <= len(event["event_id"]) <= 128
        assert event["event_id"] not in seen_ids
        seen_ids.add(event["event_id"])
        assert TS_RE.match(event["ts"]), event["ts"]
        assert parse_ts(event["ts"]).tzinfo is not None
        assert isinstance(event["user_id"], str) and 1 <= len(event["user_id"]) <= 256
        assert event["stage"] in ("input", "output", "judge")
        assert event["decision"] in ("allow", "block", "redact", "escalate")
        assert set(event["guardrail"]) == {"name", "version"}
        assert event["policy_version"] == "2026-11-01"
        assert isinstance(event["turn"], int) and event["turn"] >= 0
        assert event["scores"].keys() == event["thresholds"].keys() and event["scores"]
        for category, score in event["scores"].items():
            assert isinstance(score, float) and 0.0 <= score <= 1.0, (category, score)
            threshold = event["thresholds"][category]
            assert isinstance(threshold, float) and 0.0 < threshold <= 1.0
        assert isinstance(event["latency_ms"], float) and event["latency_ms"] >= 0
        assert isinstance(event["input_chars"], int) and event["input_chars"] >= 0
        assert event["stage"] == "input" or (isinstance(event["output_chars"], int) and event["output_chars"] >= 0)


def test_events_pass_the_project_decoder(sim: Simulation) -> None:
    events_module = pytest.importorskip("detectors.events")
    for event in sim.events[::97]:
        decoded = events_module.decode(json.dumps(event).encode())
        assert not isinstance(decoded, events_module.Rejection), (decoded, event)


def test_decisions_follow_the_scores_and_the_tenant_guardrail(sim: Simulation) -> None:
    for event in sim.events:
        hits = over_threshold(event)
        if event["stage"] == "judge":
            assert event["guardrail"] == {"name": "llm-judge", "version": "gpt-judge-1"}
            judge = event["judge"]
            assert judge["name"] == "llm-judge" and 0.0 <= judge["score"] <= 1.0
            assert event["decision"] == ("allow" if judge["verdict"] == "safe" else "escalate")
        else:
            name, version = TENANT_GUARDRAIL[event["tenant"]]
            assert event["guardrail"] == {"name": name, "version": version}
            assert "judge" not in event
            if hits:
                assert event["decision"] == "block" or (event["stage"] == "output" and event["decision"] == "redact")
            else:
                assert event["decision"] == "allow"
        assert sorted(event["categories"]) == sorted(hits)
        if event["tenant"] == "acme":
            assert list(event["thresholds"]) == [f"S{i}" for i in range(1, 15)]
            assert set(event["thresholds"].values()) == {0.5}
        else:
            assert set(event["thresholds"]) == {"harassment", "hate", "self-harm", "sexual", "violence", "illicit"}
            assert all(0.4 <= t <= 0.7 for t in event["thresholds"].values())


def test_events_are_sorted_and_inside_the_window(sim: Simulation) -> None:
    times = [parse_ts(event["ts"]) for event in sim.events]
    assert times == sorted(times)
    assert times[0] >= SMALL.start
    assert times[-1] < SMALL.start + timedelta(days=SMALL.days)
    # the day/night cycle shows up: the busiest UTC hour has clearly more traffic than the quietest
    by_hour = Counter(t.hour for t in times)
    assert max(by_hour.values()) > 1.5 * min(by_hour.values())


def test_requests_chain_input_output_judge(sim: Simulation) -> None:
    by_request: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for event in sim.events:
        stages = by_request[event["request_id"]]
        assert event["stage"] not in stages
        stages[event["stage"]] = event
    outputs = judged = 0
    for stages in by_request.values():
        first = stages.get("input")
        if first is None:  # cannot happen: the input is always the earliest event of a request
            pytest.fail(f"request without input decision: {stages}")
        if first["decision"] != "allow":
            assert set(stages) == {"input"}
        if "output" in stages:
            outputs += 1
            delay = parse_ts(stages["output"]["ts"]) - parse_ts(first["ts"])
            assert timedelta(seconds=0.5) <= delay <= timedelta(seconds=8)
            assert stages["output"]["session_id"] == first["session_id"]
        if "judge" in stages:
            judged += 1
            assert stages["output"]["decision"] == "allow"
            delay = parse_ts(stages["judge"]["ts"]) - parse_ts(stages["output"]["ts"])
            assert timedelta(seconds=1) <= delay <= timedelta(seconds=3)
    assert 0.07 < judged / outputs < 0.2


def test_turns_number_each_session_from_zero(sim: Simulation) -> None:
    turns: dict[str, list[int]] = defaultdict(list)
    owner: dict[str, str] = {}
    for event in sim.events:
        if event["stage"] == "input":
            turns[event["session_id"]].append(event["turn"])
            assert owner.setdefault(event["session_id"], event["user_id"]) == event["user_id"]
    for session_id, seen in turns.items():
        # a session cut by the end of the window may lose its last turns, never its first ones
        assert seen == list(range(len(seen))), session_id
    assert max(len(seen) for seen in turns.values()) >= 8


# ---- ground truth -----------------------------------------------------------------------------


def test_labels_one_per_user_with_the_planted_attackers(sim: Simulation, label_of: dict[str, Label]) -> None:
    assert len(sim.labels) == SMALL.users == len(label_of)
    per_kind = SMALL.resolved_attackers_per_kind()
    kinds = Counter(label.kind for label in sim.labels)
    for kind in ATTACK_KINDS:
        assert kinds[kind] == per_kind
        assert {label.tenant for label in sim.labels if label.kind == kind} == {"acme", "globex"}
    assert {kind for kind in kinds if kind not in ATTACK_KINDS} <= {f"benign:{p}" for p in BENIGN_PERSONAS}
    tenants = Counter(label.tenant for label in sim.labels)
    assert 0.6 < tenants["acme"] / SMALL.users < 0.8
    assert {event["user_id"] for event in sim.events} <= set(label_of)

    first_ts: dict[str, str] = {}
    event_times: dict[str, set[str]] = defaultdict(set)
    for event in sim.events:
        first_ts.setdefault(event["user_id"], event["ts"])
        event_times[event["user_id"]].add(event["ts"])
        assert event["tenant"] == label_of[event["user_id"]].tenant
    for label in sim.labels:
        if label.kind in ATTACK_KINDS:
            assert label.is_attacker and label.category is not None and label.first_attack_ts is not None
            attack_ts = labels_to_rows([label])[0]["first_attack_ts"]
            assert attack_ts in event_times[label.user_id]
            assert attack_ts >= first_ts[label.user_id]
            assert label.category in next(e for e in sim.events if e["user_id"] == label.user_id)["scores"]
        else:
            assert not label.is_attacker and label.category is None and label.first_attack_ts is None


def test_labels_to_rows_is_json_ready(sim: Simulation) -> None:
    rows = labels_to_rows(sim.labels)
    assert len(rows) == len(sim.labels)
    decoded = json.loads(json.dumps(rows))
    attacker = next(row for row in decoded if row["attacker"])
    assert TS_RE.match(attacker["first_attack_ts"])
    assert set(attacker) == {"user_id", "tenant", "kind", "attacker", "category", "first_attack_ts"}


# ---- statistical sanity --------------------------------------------------------------------------


def test_benign_population_hugs_and_blocks_a_little(sim: Simulation, label_of: dict[str, Label]) -> None:
    benign = [e for e in sim.events if not label_of[e["user_id"]].is_attacker]
    hug_share = sum(1 for e in benign if hugging(e, SMALL.band)) / len(benign)
    block_rate = sum(1 for e in benign if e["decision"] in ("block", "redact")) / len(benign)
    assert 0.005 <= hug_share <= 0.05
    assert 0.002 <= block_rate < 0.05
    judged = [e for e in benign if e["stage"] == "judge"]
    assert sum(e["judge"]["verdict"] == "unsafe" for e in judged) / len(judged) < 0.05


def test_boundary_huggers_hug_their_target_category(sim: Simulation) -> None:
    hugs = decisions = 0
    for label in sim.labels:
        if label.kind != "boundary_hugger":
            continue
        mine = [e for e in sim.events if e["user_id"] == label.user_id]
        mine_hugging = sum(1 for e in mine if label.category in hugging(e, SMALL.band))
        # each one, even with little traffic, is far above the population's ~0.1 % per category
        assert mine_hugging / len(mine) >= 0.1, (label, mine_hugging, len(mine))
        hugs += mine_hugging
        decisions += len(mine)
    assert hugs / decisions >= 0.25


def test_slow_burn_hugs_every_day_but_rarely(sim: Simulation) -> None:
    for label in sim.labels:
        if label.kind != "slow_burn_hugger":
            continue
        mine = [e for e in sim.events if e["user_id"] == label.user_id]
        hug_days = {e["ts"][:10] for e in mine if label.category in hugging(e, SMALL.band)}
        assert len(hug_days) == int(SMALL.days)
        inputs = [e for e in mine if e["stage"] == "input"]
        per_day = sum(1 for e in inputs if label.category in hugging(e, SMALL.band)) / SMALL.days
        assert per_day <= 6  # 1-3 planted a day, plus what ordinary traffic brings


def test_rephrase_probers_retry_blocked_prompts_quickly(sim: Simulation) -> None:
    """A quick rephrase: a blocked input, then the session's next input within 10-120 s scoring lower
    in a category that blocked it."""
    previous: dict[str, dict[str, Any]] = {}
    rephrases: Counter[str] = Counter()
    for event in sim.events:
        if event["stage"] != "input":
            continue
        before = previous.get(event["session_id"])
        previous[event["session_id"]] = event
        if before is None or before["decision"] == "allow":
            continue
        gap = parse_ts(event["ts"]) - parse_ts(before["ts"])
        lower = any(event["scores"][c] < before["scores"][c] for c in before["categories"])
        if timedelta(seconds=10) <= gap <= timedelta(seconds=120) and lower:
            rephrases[event["user_id"]] += 1
    benign_users = [label.user_id for label in sim.labels if not label.is_attacker]
    for label in sim.labels:
        if label.kind == "rephrase_prober":
            assert rephrases[label.user_id] >= 2 * SMALL.days, label
    assert sum(rephrases[user] for user in benign_users) / len(benign_users) < 0.5


def test_decomposers_spread_one_category_over_long_unblocked_sessions(sim: Simulation) -> None:
    for label in sim.labels:
        if label.kind != "decomposer":
            continue
        sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in sim.events:
            if e["user_id"] == label.user_id and e["stage"] == "input":
                sessions[e["session_id"]].append(e)
        long_moderate = [
            s
            for s in sessions.values()
            if len(s) >= 8
            and all(0.2 <= e["scores"][label.category] / e["thresholds"][label.category] <= 0.5 for e in s)
            and all(e["decision"] == "allow" for e in s)
        ]
        assert len(long_moderate) >= int(SMALL.days)


def test_output_bypass_and_judge_evasion_stand_out(sim: Simulation, label_of: dict[str, Label]) -> None:
    inputs = {e["request_id"]: e for e in sim.events if e["stage"] == "input"}
    bypasses: Counter[str] = Counter()
    outputs: Counter[str] = Counter()
    judged: Counter[str] = Counter()
    unsafe: Counter[str] = Counter()
    for e in sim.events:
        kind = label_of[e["user_id"]].kind
        if e["stage"] == "output":
            outputs[kind] += 1
            if e["decision"] != "allow" and inputs[e["request_id"]]["decision"] == "allow":
                bypasses[kind] += 1
        elif e["stage"] == "judge":
            judged[kind] += 1
            unsafe[kind] += e["judge"]["verdict"] == "unsafe"
    assert bypasses["output_bypass"] / outputs["output_bypass"] > 0.1
    assert bypasses["benign:normal"] / outputs["benign:normal"] < 0.01
    assert judged["judge_evader"] / outputs["judge_evader"] > 0.4
    assert unsafe["judge_evader"] / judged["judge_evader"] > 0.6


# ---- configuration -------------------------------------------------------------------------------


def test_partial_days_and_other_starts_stay_inside_the_window() -> None:
    start = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # not midnight
    cfg = SimConfig(users=60, days=0.5, seed=3, start=start, attackers_per_kind=1)
    result = simulate(cfg)
    assert result.events
    assert parse_ts(result.events[0]["ts"]) >= start
    assert parse_ts(result.events[-1]["ts"]) < start + timedelta(days=0.5)
    assert all(label.first_attack_ts is not None for label in result.labels if label.is_attacker)


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        simulate(SimConfig(users=50, start=datetime(2026, 11, 1)))  # naive on purpose
    with pytest.raises(ValueError, match="attackers"):
        simulate(SimConfig(users=10, attackers_per_kind=2))
    with pytest.raises(ValueError, match="band"):
        simulate(SimConfig(users=50, band=0.0))
