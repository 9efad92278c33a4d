"""The synthetic event generator: deterministic, contract-valid, and realistic enough to test detectors on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from detectors.events import Rejection, decode
from streams.simulator import (
    ATTACK_KINDS,
    BENIGN_PERSONAS,
    EXTRA_KINDS,
    SCENARIOS,
    Label,
    SimConfig,
    Simulation,
    format_ts,
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


# ---- opt-in variations ---------------------------------------------------------------------------

# sha256 of json.dumps(...) of SimConfig(users=200, days=2) output, computed before the opt-in options
# existed: every new option's default must leave the output byte-identical.
DEFAULT_EVENTS_SHA256 = "7fa33c564221d4234ea5c57ceb269c85b44c71e020d9efe321d68476694a3c1f"
DEFAULT_LABELS_SHA256 = "6d3f99bdee043d6020a7bcd5c6bdbdc575e7ce5fb90a3c0dd12904e9390f31ba"
FLOOD = SimConfig(users=200, days=4.0, seed=5, attackers_per_kind=2, extra_kinds=("category_flooder",))


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def events_by_user(sim: Simulation) -> dict[str, list[dict[str, Any]]]:
    mine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in sim.events:
        mine[event["user_id"]].append(event)
    return mine


def test_default_options_leave_the_output_unchanged() -> None:
    cfg = SimConfig(users=200, days=2)
    explicit = SimConfig(
        users=200,
        days=2,
        extra_kinds=(),
        slow_burn_per_day=(1.0, 3.0),
        policy_change_day=None,
        mixing=1.0,
        sensitive_share=None,
        heavy_share=None,
    )
    assert explicit == cfg
    result = simulate(cfg)
    assert sha256_json(result.events) == DEFAULT_EVENTS_SHA256
    assert sha256_json(labels_to_rows(result.labels)) == DEFAULT_LABELS_SHA256


@pytest.fixture(scope="module")
def flood() -> Simulation:
    return simulate(FLOOD)


def test_extra_kinds_are_planted_without_touching_anyone_else(flood: Simulation) -> None:
    assert EXTRA_KINDS == ("category_flooder",)
    kinds = Counter(label.kind for label in flood.labels)
    for kind in (*ATTACK_KINDS, "category_flooder"):
        assert kinds[kind] == 2, kind
    flooders = [label for label in flood.labels if label.kind == "category_flooder"]
    assert all(label.is_attacker and label.category and label.first_attack_ts for label in flooders)
    assert {label.tenant for label in flooders} == {"acme", "globex"}
    assert labels_to_rows([flooders[0]])[0]["attacker"] is True

    plain = simulate(dataclasses.replace(FLOOD, extra_kinds=()))
    plain_labels = {label.user_id: label for label in plain.labels}
    plain_events = events_by_user(plain)
    flood_events = events_by_user(flood)
    converted = 0
    for label in flood.labels:
        if label.kind == "category_flooder":
            assert plain_labels[label.user_id].kind.startswith("benign:")
            converted += 1
            continue
        assert plain_labels[label.user_id] == label
        # same events apart from the global sequence number in event_id
        strip = [{**e, "event_id": ""} for e in flood_events[label.user_id]]
        assert strip == [{**e, "event_id": ""} for e in plain_events[label.user_id]]
    assert converted == 2


def test_category_flooders_jump_in_volume_and_blocks_in_their_category(flood: Simulation) -> None:
    mine = events_by_user(flood)
    labels = {label.user_id: label for label in flood.labels}
    benign_outputs = [e for e in flood.events if e["stage"] == "output" and not labels[e["user_id"]].is_attacker]
    population_block = sum(e["decision"] != "allow" for e in benign_outputs) / len(benign_outputs)
    assert population_block < 0.02
    heavy_daily = [len(events) / FLOOD.days for user, events in mine.items() if labels[user].kind == "benign:heavy"]
    for label in labels.values():
        if label.kind != "category_flooder":
            continue
        assert label.first_attack_ts is not None
        start_day = format_ts(label.first_attack_ts)[:10]
        first_day = format_ts(FLOOD.start)[:10]
        assert start_day > first_day  # the flood starts on a day >= 1
        per_day = Counter(e["ts"][:10] for e in mine[label.user_id])
        before = [n for day, n in per_day.items() if day < start_day]
        after = [n for day, n in per_day.items() if day >= start_day]
        assert sum(after) / len(after) >= 3 * sum(before) / len(before), per_day
        # at the volume of a heavy benign user, not far beyond it
        if heavy_daily:
            assert sum(after) / len(after) < 3 * max(heavy_daily)

        def block_rate(events: list[dict[str, Any]], category: str) -> float:
            outputs = [e for e in events if e["stage"] == "output"]
            return sum(category in e["categories"] for e in outputs) / max(1, len(outputs))

        category = label.category
        assert category is not None
        early = [e for e in mine[label.user_id] if e["ts"][:10] < start_day]
        late = [e for e in mine[label.user_id] if e["ts"][:10] >= start_day]
        assert block_rate(late, category) > 0.05
        assert block_rate(late, category) > 5 * population_block
        assert block_rate(late, category) > block_rate(early, category) + 0.04
        # most of the flood's outputs are elevated in the category, and most of those still allowed
        late_outputs = [e for e in late if e["stage"] == "output"]
        elevated = [e for e in late_outputs if e["scores"][category] >= 0.3 * e["thresholds"][category]]
        assert len(elevated) > 0.6 * len(late_outputs)
        assert sum(e["decision"] == "allow" for e in elevated) > 0.7 * len(elevated)


def planted_slow_burn(sim: Simulation) -> dict[str, int]:
    """Slow burners' inputs hugging their target, per user: their planted requests (ordinary traffic adds ~0)."""
    labels = {label.user_id: label for label in sim.labels if label.kind == "slow_burn_hugger"}
    counts = dict.fromkeys(labels, 0)
    for e in sim.events:
        label = labels.get(e["user_id"])
        if label is not None and e["stage"] == "input" and label.category in hugging(e, SMALL.band):
            counts[label.user_id] += 1
    return counts


def test_slow_burn_rate_below_one_a_day() -> None:
    base = SimConfig(users=100, days=7.0, seed=13, attackers_per_kind=4)
    default = planted_slow_burn(simulate(base))
    slow_sim = simulate(dataclasses.replace(base, slow_burn_per_day=(0.3, 0.7)))
    slow = planted_slow_burn(slow_sim)
    assert sum(default.values()) / (len(default) * base.days) >= 1.0
    per_day = sum(slow.values()) / (len(slow) * base.days)
    assert 0.1 <= per_day <= 1.0, slow
    assert sum(slow.values()) < 0.5 * sum(default.values())
    # even a quiet one has planted at least one request, so its label has a first attack
    assert all(label.first_attack_ts is not None for label in slow_sim.labels if label.kind == "slow_burn_hugger")


POLICY = SimConfig(users=160, days=3.0, seed=3, attackers_per_kind=2, policy_change_day=1.5)


def test_policy_change_switches_thresholds_and_version_for_everyone() -> None:
    result = simulate(POLICY)
    change = format_ts(POLICY.start + timedelta(days=1.5))
    labels = {label.user_id: label for label in result.labels}
    seen: Counter[tuple[str, str]] = Counter()
    for e in result.events:
        after = e["ts"] >= change
        seen[(e["tenant"], e["policy_version"])] += 1
        assert e["policy_version"] == ("2026-11-15" if after else "2026-11-01")
        thresholds = e["thresholds"]
        if e["tenant"] == "acme":
            assert set(thresholds.values()) == ({0.4} if after else {0.5})
        else:
            old = {"harassment": 0.5, "hate": 0.45, "self-harm": 0.4, "sexual": 0.6, "violence": 0.55, "illicit": 0.7}
            assert thresholds == ({c: round(t - 0.1, 4) for c, t in old.items()} if after else old)
        assert sorted(e["categories"]) == sorted(over_threshold(e))
        if e["stage"] != "judge":
            assert (e["decision"] == "allow") == (not e["categories"])
    assert set(seen) == {(t, v) for t in ("acme", "globex") for v in ("2026-11-01", "2026-11-15")}

    # benign score distributions stay put, so the lower thresholds block more benign traffic
    def benign_block_rate(after: bool) -> float:
        mine = [
            e
            for e in result.events
            if not labels[e["user_id"]].is_attacker and e["stage"] != "judge" and (e["ts"] >= change) == after
        ]
        return sum(1 for e in mine if e["decision"] != "allow") / len(mine)

    assert benign_block_rate(True) > 1.3 * benign_block_rate(False)
    # attackers re-aim: boundary huggers still hug the new boundary
    for label in labels.values():
        if label.kind == "boundary_hugger":
            late = [e for e in result.events if e["user_id"] == label.user_id and e["ts"] >= change]
            assert sum(label.category in hugging(e, POLICY.band) for e in late) >= 0.1 * len(late), label


def test_mixing_dilutes_the_attack_share() -> None:
    def elevated_share_by_kind(mixing: float) -> tuple[float, dict[str, float]]:
        """Share of each attacker kind's events elevated in its target: a proxy for its attack share."""
        result = simulate(SimConfig(users=200, days=3.0, seed=11, mixing=mixing))
        labels = {label.user_id: label for label in result.labels}
        total: Counter[str] = Counter()
        elevated: Counter[str] = Counter()
        for e in result.events:
            label = labels[e["user_id"]]
            if label.is_attacker and label.category is not None:
                total[label.kind] += 1
                elevated[label.kind] += e["scores"][label.category] >= 0.2 * e["thresholds"][label.category]
        return sum(elevated.values()) / sum(total.values()), {k: elevated[k] / total[k] for k in total}

    plain, plain_kinds = elevated_share_by_kind(1.0)
    mixed, mixed_kinds = elevated_share_by_kind(4.0)
    assert mixed < 0.5 * plain
    for kind in ATTACK_KINDS:
        assert mixed_kinds[kind] < 0.75 * plain_kinds[kind], kind


def test_persona_shares_can_be_raised() -> None:
    cfg = SimConfig(users=2000, days=0.05, seed=9, sensitive_share=0.10, heavy_share=0.08)
    kinds = Counter(label.kind for label in simulate(cfg).labels)
    benign = sum(n for kind, n in kinds.items() if kind.startswith("benign:"))
    assert 0.08 <= kinds["benign:sensitive"] / benign <= 0.12
    assert 0.06 <= kinds["benign:heavy"] / benign <= 0.10
    default = Counter(
        label.kind for label in simulate(dataclasses.replace(cfg, sensitive_share=None, heavy_share=None)).labels
    )
    assert default["benign:sensitive"] < 0.05 * benign and default["benign:heavy"] < 0.05 * benign


def test_new_options_are_validated() -> None:
    with pytest.raises(ValueError, match="extra_kinds"):
        simulate(SimConfig(users=50, extra_kinds=("nope",)))
    with pytest.raises(ValueError, match="attackers"):
        simulate(SimConfig(users=13, attackers_per_kind=2, extra_kinds=("category_flooder",)))
    with pytest.raises(ValueError, match="slow_burn_per_day"):
        simulate(SimConfig(users=50, slow_burn_per_day=(2.0, 1.0)))
    with pytest.raises(ValueError, match="policy_change_day"):
        simulate(SimConfig(users=50, policy_change_day=float("nan")))
    with pytest.raises(ValueError, match="mixing"):
        simulate(SimConfig(users=50, mixing=0.0))
    with pytest.raises(ValueError, match="heavy_share"):
        simulate(SimConfig(users=50, heavy_share=1.5))
    with pytest.raises(ValueError, match="exceed"):
        simulate(SimConfig(users=50, heavy_share=0.6, sensitive_share=0.6))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_generate_decodable_events(name: str) -> None:
    cfg = SCENARIOS[name]
    assert cfg.days * cfg.users <= 10_000  # all of them stay a few seconds / ~250k events at full size
    # the full population takes seconds; a scaled-down one with every option intact keeps this quick
    kinds = len(ATTACK_KINDS) + len(cfg.extra_kinds)
    small = dataclasses.replace(cfg, users=max(cfg.users // 10, kinds * cfg.resolved_attackers_per_kind() + 20))
    if cfg.attackers_per_kind is None:
        small = dataclasses.replace(small, attackers_per_kind=2)
    result = simulate(small)
    assert result.events
    for event in result.events[::41] + result.events[-1:]:
        decoded = decode(json.dumps(event).encode())
        assert not isinstance(decoded, Rejection), (decoded, event)
    assert {label.kind for label in result.labels if label.is_attacker} == {*ATTACK_KINDS, *cfg.extra_kinds}
    if cfg.policy_change_day is not None:
        assert {e["policy_version"] for e in result.events} == {"2026-11-01", "2026-11-15"}


def test_scenarios_are_the_documented_ones() -> None:
    assert set(SCENARIOS) == {"baseline", "hard_negatives", "slow_30d", "mixed", "policy_change", "flooders"}
    assert dataclasses.replace(SCENARIOS["baseline"], seed=SimConfig().seed) == SimConfig(users=1000, days=7.0)
    assert SCENARIOS["slow_30d"].days == 30.0 and SCENARIOS["slow_30d"].slow_burn_per_day == (0.3, 0.8)
    assert SCENARIOS["mixed"].mixing == 4.0
    assert SCENARIOS["policy_change"].policy_change_day == 5.0
    assert SCENARIOS["flooders"].extra_kinds == ("category_flooder",)
    assert SCENARIOS["hard_negatives"].sensitive_share == 0.10 and SCENARIOS["hard_negatives"].heavy_share == 0.08
    assert len({cfg.seed for cfg in SCENARIOS.values()}) == len(SCENARIOS)


def test_the_demo_horizon_reaches_the_simulated_start_however_late_it_runs() -> None:
    """The simulator dates its traffic from a fixed start; the demo and the bench give their workers a past horizon
    (GUARDSTREAM_MAX_PAST_DAYS) that still reaches it years later, and never less than the default."""
    from streams.produce import simulated_past_days
    from streams.settings import Settings

    start = SimConfig().start
    default = Settings.model_fields["max_past_days"].default
    assert simulated_past_days(start, now=start + timedelta(days=10)) == default
    for years in (1, 3, 10):
        now = start + timedelta(days=365 * years, hours=5)
        horizon = simulated_past_days(start, now=now)
        assert timedelta(days=horizon) > now - start + timedelta(days=1)  # a day of slack for a long run
