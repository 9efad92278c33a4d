"""Judge disagreement: the detector's behaviour on hand-built streams (pure, no I/O)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from detectors.base import Observation, category_outcomes
from detectors.engine import Engine
from detectors.events import Decision, Guardrail, Judge
from detectors.findings import Finding
from detectors.judge import (
    JudgeBaseline,
    JudgeConfig,
    JudgeDisagreement,
    JudgePopulation,
    JudgeUser,
    Screened,
    _top,
    disagreement_rates,
    screened_records,
)
from tests.restart import restart

START = datetime(2026, 11, 1, tzinfo=UTC)
GUARD = Guardrail("llama-guard-3", "8b")
JUDGE = Guardrail("llm-judge", "gpt-judge-1")
NAME = "judge_disagreement"


class Stream:
    """Builds requests: an output decision and, when asked, the judge's verdict on it 2 s later."""

    def __init__(self) -> None:
        self.n = 0
        self.events: list[Decision] = []

    def answer(
        self,
        user: str,
        minutes: float,
        s2: float,
        verdict: str | None,
        *,
        threshold: float = 0.5,
        policy: str = "p1",
        judge_scores_over: bool = True,
    ) -> None:
        self.n += 1
        ts = START + timedelta(minutes=minutes)
        request = f"r{self.n}"
        common = {"user_id": user, "request_id": request, "session_id": f"s-{user}", "policy_version": policy}
        scores, thresholds = {"S1": 0.01, "S2": s2}, {"S1": threshold, "S2": threshold}
        self.events.append(
            Decision(
                event_id=f"o{self.n}",
                ts=ts,
                stage="output",
                guardrail=GUARD,
                scores=scores,
                thresholds=thresholds,
                decision="allow" if s2 < threshold else "block",
                **common,  # type: ignore[arg-type]
            )
        )
        if verdict is None:
            return
        # like the simulator: a judge that calls an answer unsafe scores the category over its threshold
        judged = dict(scores, S2=0.6) if verdict == "unsafe" and judge_scores_over else scores
        self.events.append(
            Decision(
                event_id=f"j{self.n}",
                ts=ts + timedelta(seconds=2),
                stage="judge",
                guardrail=JUDGE,
                scores=judged,
                thresholds=thresholds,
                decision="escalate" if verdict == "unsafe" else "allow",
                judge=Judge("llm-judge", verdict, 0.9 if verdict == "unsafe" else 0.1),  # type: ignore[arg-type]
                **common,  # type: ignore[arg-type]
            )
        )


def background(stream: Stream, rng: random.Random, n: int, *, start: float = 0.0, **kw: object) -> None:
    """Benign users: every answer allowed, one in three judged, the judge disagreeing ~1 % of the time."""
    for i in range(n):
        verdict = ("unsafe" if rng.random() < 0.01 else "safe") if rng.random() < 0.33 else None
        stream.answer(f"b{rng.randrange(100)}", start + i, rng.random() * 0.2, verdict, **kw)  # type: ignore[arg-type]


def observe(e: Decision) -> Observation:
    return Observation(e, int(e.ts.timestamp() * 1000), category_outcomes(e, 0.2), 0.2)


def run(events: list[Decision], detector: JudgeDisagreement | None = None) -> tuple[list[Finding], JudgePopulation]:
    detector = detector or JudgeDisagreement()
    users: dict[str, JudgeUser] = {}
    population = JudgePopulation()
    out: list[Finding] = []
    for e in sorted(events, key=lambda e: e.ts):
        out += detector.update(users.setdefault(e.user_id, JudgeUser()), population, observe(e))
    return out, population


def opened(engine: Engine, events: list[Decision]) -> list[tuple[str, str]]:
    found = []
    for e in events:
        for change in engine.process(0, engine.observe(e, int(e.ts.timestamp() * 1000))):
            if change.change in ("opened", "reopened", "escalated"):
                found.append((change.alert.user_id, change.change))
    return found


def evader(stream: Stream, rng: random.Random, start: float, n: int = 12, unsafe: int = 9) -> None:
    """``n`` judged answers 37 minutes apart, ``unsafe`` of them (the first among them) called unsafe."""
    verdicts = ["unsafe", *rng.sample(["unsafe"] * (unsafe - 1) + ["safe"] * (n - unsafe), n - 1)]
    for i, verdict in enumerate(verdicts):
        stream.answer("evader", start + 37 * i, round(rng.uniform(0.2, 0.38), 4), verdict)


def test_a_judge_evader_is_flagged_with_a_readable_reason_and_an_action() -> None:
    stream, rng = Stream(), random.Random(1)
    background(stream, rng, 3000)
    evader(stream, rng, 1000)
    found, _ = run(stream.events)
    assert found and all(f.user_id == "evader" for f in found), "benign background users must not be flagged"
    last = found[-1]
    assert last.detector == NAME and last.category is None
    assert re.match(
        r"the judge called 9 of 12 judged answers unsafe that llama-guard-3 allowed over 6\.\d hours "
        r"\(9 in S2, highest guardrail score there 0\.3\d under the 0\.50 threshold\); population \d\.\d%; ",
        last.reason,
    ), last.reason
    assert last.action["type"] == "route_to_judge" and last.action["category"] == "S2"
    assert last.evidence["disagreements"] == 9 and last.evidence["judged"] == 12
    assert last.severity == "critical"  # CUSUM far past twice the level
    assert found[0].severity == "warning"


def test_benign_users_are_not_flagged() -> None:
    stream, rng = Stream(), random.Random(2)
    background(stream, rng, 3000)
    # a heavy user: 300 judged answers, the judge disagreeing 4 times, spread out (a ~1 % rate)
    for i in range(300):
        stream.answer("heavy", 5 + 10 * i, rng.random() * 0.3, "unsafe" if i in (10, 90, 170, 250) else "safe")
    # the judge calling unsafe what the guardrail already blocked is agreement, not a miss
    for i in range(20):
        stream.answer("blocked", 7 + 10 * i, 0.7, "unsafe")
    # two disagreements in a row are not enough evidence on their own
    stream.answer("unlucky", 500, 0.1, "unsafe")
    stream.answer("unlucky", 501, 0.1, "unsafe")
    found, population = run(stream.events)
    assert found == []
    judged = sum(1 for e in stream.events if e.stage == "judge" and e.user_id != "blocked")
    assert disagreement_rates(population)["llama-guard-3"][1] == judged, "judgements of blocked content don't count"


def test_evidence_weighting_needs_more_than_a_few_lucky_judgements() -> None:
    cfg = JudgeConfig()
    detector = JudgeDisagreement(cfg)
    p0 = 0.01
    few = JudgeUser(run_judged=3, run_disagreements=3)
    many = JudgeUser(run_judged=30, run_disagreements=25)
    one = JudgeUser(run_judged=1, run_disagreements=1)
    assert detector.index(many, p0) > detector.index(few, p0) > detector.index(one, p0)
    assert detector.index(few, p0) < 30 < detector.index(many, p0)  # 100 % of 3 weighs less than 83 % of 30
    assert JudgeUser(cusum=50.0, run_judged=2, run_disagreements=2).run_disagreements < cfg.min_disagreements


def test_no_verdict_during_warm_up() -> None:
    stream, rng = Stream(), random.Random(3)
    background(stream, rng, 15)  # a handful of judged answers
    evader(stream, rng, 30, n=12, unsafe=12)
    found, population = run(stream.events)
    assert found == []
    assert population.baselines["llama-guard-3|p1"].judged < JudgeConfig().min_population
    found, _ = run(stream.events, JudgeDisagreement(JudgeConfig(min_population=5)))
    assert found, "the same stream past the warm-up is flagged"


def test_the_judged_content_is_the_matching_screening_decision() -> None:
    """The judge's own scores put S2 over the threshold; what counts is what the guardrail did with the
    answer of the same request. Without a matching request, the judge event's scores decide."""
    detector = JudgeDisagreement()
    population = JudgePopulation()
    stream = Stream()
    stream.answer("u", 0, 0.3, "unsafe")
    user = JudgeUser()
    for e in stream.events:
        detector.update(user, population, observe(e))
    assert (user.judged, user.disagreements) == (1, 1)
    orphan = msgspec.structs.replace(stream.events[1], request_id="elsewhere", event_id="j-orphan")
    detector.update(user, population, observe(orphan))
    assert (user.judged, user.disagreements) == (1, 1), "unmatched: the judge's scores say the content was over"


def test_disagreement_rates_per_guardrail() -> None:
    population = JudgePopulation(
        baselines={
            "llama-guard-3|p1": JudgeBaseline(judged=90, disagreements=1, all_judged=100, all_disagreements=9),
            "llama-guard-3|p2": JudgeBaseline(judged=50, disagreements=0, all_judged=50, all_disagreements=1),
            "openai-moderation|p1": JudgeBaseline(judged=10, disagreements=0, all_judged=10, all_disagreements=0),
        }
    )
    assert disagreement_rates(population) == {"llama-guard-3": (10, 150), "openai-moderation": (0, 10)}
    stream, rng = Stream(), random.Random(4)
    background(stream, rng, 600)
    evader(stream, rng, 300)
    _, measured = run(stream.events)
    disagreements, judged = disagreement_rates(measured)["llama-guard-3"]
    judged_events = [e for e in stream.events if e.stage == "judge"]
    assert judged == len(judged_events)
    assert disagreements == sum(1 for e in judged_events if e.judge and e.judge.verdict == "unsafe")
    assert measured.baselines["llama-guard-3|p1"].disagreements < disagreements, "the evader stays out of it"


def test_state_round_trips_and_replaying_from_a_snapshot_gives_the_same_answer() -> None:
    stream, rng = Stream(), random.Random(5)
    background(stream, rng, 2000)
    evader(stream, rng, 900, n=20, unsafe=16)
    events = sorted(stream.events, key=lambda e: e.ts)
    straight = opened(Engine([JudgeDisagreement()]), events)
    assert straight, "the planted evader must be found for this test to mean anything"
    cut = next(i for i, e in enumerate(events) if e.user_id == "evader") + 13  # mid-way through the evidence
    engine = Engine([JudgeDisagreement()])
    found = opened(engine, events[:cut])
    restored = restart(engine, Engine([JudgeDisagreement()]))
    assert restored.partitions[0].users == engine.partitions[0].users
    found += opened(restored, events[cut:])
    assert found == straight


def test_memory_per_user_stays_bounded_on_a_long_stream() -> None:
    cfg = JudgeConfig()
    detector = JudgeDisagreement(cfg)
    population = JudgePopulation(baselines={"llama-guard-3|p1": JudgeBaseline(judged=1000, disagreements=10)})
    user = JudgeUser()
    rng = random.Random(6)
    categories = [f"S{i}" for i in range(1, 15)]
    for i in range(3000):
        ts = START + timedelta(minutes=i)
        scores = {c: rng.random() * 0.45 for c in categories}
        common = {"user_id": "u", "request_id": f"request-{i:08d}", "policy_version": "p1"}
        output = Decision(
            event_id=f"o{i}", ts=ts, stage="output", guardrail=GUARD, scores=scores,
            thresholds=dict.fromkeys(categories, 0.5), decision="allow", **common,  # type: ignore[arg-type]
        )  # fmt: skip
        verdict: Literal["safe", "unsafe"] = "unsafe" if rng.random() < 0.8 else "safe"
        judge = msgspec.structs.replace(
            output, event_id=f"j{i}", stage="judge", guardrail=JUDGE, judge=Judge("llm-judge", verdict, 0.5)
        )
        for e in (output, judge):
            detector.update(user, population, observe(e))
    blob = msgspec.msgpack.encode(user)
    assert msgspec.msgpack.decode(blob, type=JudgeUser) == user
    assert len(user.recent) == cfg.max_recent and len(user.run_categories) == len(categories)
    assert user.run_disagreements > 2000
    assert len(blob) < 1_000  # 4 recent decisions and 14 category counters


def test_a_policy_change_alone_produces_no_findings() -> None:
    stream, rng = Stream(), random.Random(7)
    background(stream, rng, 2000, policy="p1", threshold=0.5)
    # new thresholds and policy version: the same benign traffic, the judge disagreeing as rarely as before
    background(stream, rng, 2000, start=2000.0, policy="p2", threshold=0.4)
    found, population = run(stream.events)
    assert found == []
    assert set(population.baselines) == {"llama-guard-3|p1", "llama-guard-3|p2"}


def test_recent_records_hold_what_a_full_record_each_would() -> None:
    """Shared ids, guardrails, policies and thresholds left out and times as offsets: what comes back out is what
    a full record each (the layout before, commit 5391055) holds, through changes of all four, requests whose
    decisions interleave, times out of order and a round trip through msgpack now and then."""
    rng = random.Random(8)
    cfg = JudgeConfig()
    detector = JudgeDisagreement(cfg)
    user, population = JudgeUser(), JudgePopulation()
    reference: list[Screened] = []
    ts = START
    shared = 0
    for i in range(2000):
        ts += timedelta(seconds=rng.choice((-30, 1, 2, 60, 3600)))
        categories = ["S1", "S2", "S3"] if rng.random() < 0.8 else ["hate", "violence"]
        thresholds = {c: rng.choice((0.5, 0.5, 0.45, 0.7)) for c in categories}
        e = Decision(
            event_id=f"e{i}",
            ts=ts,
            user_id="u",
            stage=rng.choice(("input", "output", "tool")),
            guardrail=GUARD if rng.random() < 0.9 else Guardrail("openai-moderation", "1"),
            scores={c: round(rng.random() * 0.8, 3) for c in categories},
            thresholds=thresholds,
            decision=rng.choice(("allow", "allow", "block")),
            request_id=rng.choice((f"r{i // 2}", f"r{i // 2 - 1}", f"r{i}")) if rng.random() < 0.95 else None,
            policy_version=rng.choice(("p1", "p1", "p1", "p2", None)),
        )
        obs = observe(e)
        detector.update(user, population, obs)
        if e.request_id:
            category, score, threshold = _top(obs.outcomes, e.thresholds)
            allowed = e.decision == "allow" and not any(blocked for *_, blocked in obs.outcomes)
            reference.append(
                Screened(
                    e.request_id,
                    obs.ts_ms,
                    e.stage,
                    allowed,
                    e.guardrail.name,
                    e.policy_version or "-",
                    category,
                    score,
                    threshold,
                )
            )
            del reference[: -cfg.max_recent]
        assert screened_records(user.recent) == reference
        if i % 7 == 0:
            user = msgspec.msgpack.decode(msgspec.msgpack.encode(user), type=JudgeUser)
        shared += sum(not r.request_id for r in user.recent) + sum(r.threshold is None for r in user.recent)
    assert shared > 1000, "the stream must make records share values for this test to mean anything"


def test_judge_state_written_with_full_records_is_read() -> None:
    """A blob of the layout before (``recent``: every value in every record) decodes to the same records."""
    records = [
        Screened("r1", 1_000, "input", True, "llama-guard-3", "p1", "S2", 0.3, 0.5),
        Screened("r1", 4_000, "output", False, "llama-guard-3", "p1", "S2", 0.6, 0.5),
        Screened("r2", 3_000, "input", True, "llama-guard-3", "p2", "S1", 0.1, 0.45),
    ]
    old = {"recent": records, "judged": 2, "disagreements": 1, "cusum": 1.5, "run_categories": {}}
    user = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=JudgeUser)
    assert screened_records(user.recent) == records
    assert (user.judged, user.disagreements, user.cusum) == (2, 1, 1.5)
    assert not user.legacy_recent
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(user), type=JudgeUser) == user
    assert len(msgspec.msgpack.encode(user)) < len(msgspec.msgpack.encode(old))
