"""Judge disagreement: users whose answers the guardrail lets through and the LLM-as-judge calls unsafe.

A judge-stage decision carries the second-pass verdict ``judge: {name, verdict, score?}`` on content a
guardrail already screened. A *disagreement* is an ``unsafe`` verdict on content the guardrail allowed
(decision ``allow``, every category under its threshold). Somebody who has found phrasings the guardrail
misses produces them far more often than the population does (~1 % of judged benign answers).

Which content a judgement is about: the user's latest screening decision with the same ``request_id``
(preferring the output stage, then tool, then input), from a short list of recent ones; without a
match, the judge event's own scores and thresholds. The guardrail whose miss it is, and the policy in
force, come from that decision too.

Per user, a Bernoulli CUSUM of disagreement against the population rate of the same tenant, guardrail
and policy version accumulates evidence over the user's judged answers however they are spread in
time, and falls back to zero while the judge keeps agreeing. The counts behind the current run of
evidence (since the CUSUM last stood at zero) make the reason. A verdict needs the CUSUM over its level,
enough disagreements, and a rate far above the population's once shrunk towards it (a Beta prior worth
``prior_strength`` judged answers), so three unlucky answers cannot outrank thirty.

The population rate starts from a deliberately pessimistic prior (``population_prior_rate`` worth
``population_prior_weight`` answers) so that evidence gathered during warm-up is not overstated, and no
verdict is given before ``min_population`` judged answers. Users over the level, and disagreements that
repeat a user's recent ones, are kept out of the baseline they are judged against (a few attackers in a
small population would otherwise raise the rate they are compared with); :func:`disagreement_rates`
reports everybody's, for the measurement-quality metric (NIST AI RMF MEASURE 2.13).

Memory per user is bounded: ``max_recent`` screening decisions (~25-75 bytes each encoded, see :class:`Recent`)
and at most ``max_categories`` per-category counters for the current run (~20 bytes each); 0.1-0.2 KB for a
typical user, under 1.2 KB with every slot full.
Pure: state in, findings out. No clock: every time is the event's own (milliseconds since the epoch).
"""

from __future__ import annotations

import math
from typing import ClassVar

import msgspec

from detectors.base import DAY_MS, HOUR_MS, MINUTE_MS, THRESHOLD_STAGES, Observation, top_of, top_outcome
from detectors.events import Decision
from detectors.findings import Finding

__all__ = [
    "JudgeBaseline",
    "JudgeConfig",
    "JudgeDisagreement",
    "JudgePopulation",
    "JudgeUser",
    "Recent",
    "Screened",
    "disagreement_rates",
]

_STAGE_PREFERENCE = {"output": 0, "tool": 1, "input": 2}
_STAGES = ("input", "output", "tool")  # the screening stages (THRESHOLD_STAGES), as Recent.stage numbers them
_STAGE_CODES = {stage: code for code, stage in enumerate(_STAGES)}


class JudgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    population_prior_rate: float = 0.02
    """Disagreement rate the population is assumed to have before it has data (pessimistic: twice the
    ~1 % of benign traffic, so early evidence against a user is understated, not overstated) ..."""
    population_prior_weight: float = 20.0
    """... worth this many judged answers."""
    population_floor: float = 0.005
    """Lower bound on the population rate, so a guardrail the judge never contradicts does not divide by ~0."""
    min_population: int = 20
    """Warm-up: no verdicts until the tenant's guardrail and policy have this many judged allowed answers
    (the pessimistic prior above carries the rest of the caution while the baseline is young)."""
    cusum_shift: float = 8.0
    """The CUSUM tests the population rate against this many times it ..."""
    cusum_min_alternative: float = 0.5
    """... but never against less than this rate: what is looked for is a user the judge contradicts often
    (an agreement then costs ~0.7 nats, so a benign user's rare disagreement is soon forgotten)."""
    cusum_max_alternative: float = 0.9
    """... nor more than this one."""
    cusum_level: float = 7.0
    """Alert when the CUSUM statistic (a log-likelihood ratio, nats) reaches this (at a 1-2 % population
    rate: three disagreements with at most one agreement between them) ..."""
    min_disagreements: int = 3
    """... with at least this many disagreements in the current run of evidence ..."""
    prior_strength: float = 10.0
    """... and the run's disagreement rate, shrunk towards the population's with a prior worth this many
    judged answers, ..."""
    min_index: float = 5.0
    """... at least this many times the population rate."""
    critical_level: float = 14.0
    """The finding is critical from this CUSUM on ..."""
    critical_disagreements: int = 10
    """... or from this many disagreements in the run."""
    max_recent: int = 4
    """Recent screening decisions kept per user to find what a judge judged (a judge follows its content
    within seconds, so a handful suffices)."""
    max_categories: int = 32
    """Categories counted per user in the current run (the taxonomies have 6 to 14)."""


class Screened(msgspec.Struct, array_like=True):
    """A screening decision a later judgement may be about."""

    request_id: str
    ts: int
    stage: str
    allowed: bool
    guardrail: str
    policy: str
    category: str  # the category closest to (or furthest over) its threshold
    score: float
    threshold: float


class Recent(msgspec.Struct, array_like=True):
    """A :class:`Screened` as a user's state keeps it. The newest record holds every value; an older one leaves
    out what equals the next newer record's (``request_id``, ``guardrail`` and ``policy`` as "", which none of
    them can be, ``threshold`` as None) and holds its time as an offset back from that record's. So a request's
    input and output share one id, the guardrail and policy are written once, and dropping the oldest record
    changes no other."""

    request_id: str
    ts: int  # the newest record: its event time; an older one: the next record's time minus its own
    stage: int  # index in _STAGES
    allowed: bool
    guardrail: str
    policy: str
    category: str
    score: float
    threshold: float | None


def _append_recent(recent: list[Recent], record: Recent, max_recent: int) -> None:
    """Append a record given with every value, leaving out of the one before it what they share."""
    if recent:
        last = recent[-1]  # the newest so far: every value is there
        if last.request_id == record.request_id:
            last.request_id = ""
        if last.guardrail == record.guardrail:
            last.guardrail = ""
        if last.policy == record.policy:
            last.policy = ""
        if last.threshold == record.threshold:
            last.threshold = None
        last.ts = record.ts - last.ts
    recent.append(record)
    if len(recent) > max_recent:
        del recent[0]


def screened_records(recent: list[Recent]) -> list[Screened]:
    """The records with every value filled in, oldest first."""
    out: list[Screened] = []
    request_id = guardrail = policy = ""
    threshold = 0.0
    ts = 0
    for i in range(len(recent) - 1, -1, -1):
        r = recent[i]
        ts = r.ts if i == len(recent) - 1 else ts - r.ts
        request_id = r.request_id or request_id
        guardrail = r.guardrail or guardrail
        policy = r.policy or policy
        if r.threshold is not None:
            threshold = r.threshold
        out.append(
            Screened(request_id, ts, _STAGES[r.stage], r.allowed, guardrail, policy, r.category, r.score, threshold)
        )
    out.reverse()
    return out


class RunCategory(msgspec.Struct, array_like=True):
    disagreements: int = 0
    max_score: float = 0.0  # the guardrail's highest score in the category among them
    threshold: float = 0.0


class JudgeUser(msgspec.Struct, omit_defaults=True):
    recent: list[Recent] = msgspec.field(default_factory=list, name="r")
    judged: int = 0  # judged answers the guardrail allowed, all time
    disagreements: int = 0  # of which the judge called unsafe
    cusum: float = 0.0
    run_judged: int = 0  # the same, since the CUSUM last stood at zero
    run_disagreements: int = 0
    run_start_ts: int = 0
    run_categories: dict[str, RunCategory] = msgspec.field(default_factory=dict)
    last_judge_score: float | None = None
    legacy_recent: list[Screened] = msgspec.field(default_factory=list, name="recent")
    """Only read: how blobs written before :class:`Recent` hold the records (moved into ``recent`` on decode)."""

    def __post_init__(self) -> None:
        if self.legacy_recent:
            for s in self.legacy_recent:
                record = Recent(
                    s.request_id,
                    s.ts,
                    _STAGE_CODES[s.stage],
                    s.allowed,
                    s.guardrail,
                    s.policy,
                    s.category,
                    s.score,
                    s.threshold,
                )
                _append_recent(self.recent, record, len(self.legacy_recent))
            self.legacy_recent = []


class JudgeBaseline(msgspec.Struct, array_like=True):
    judged: int = 0  # baseline: users under the level only
    disagreements: int = 0
    all_judged: int = 0  # everybody: the measurement-quality metric
    all_disagreements: int = 0


class JudgePopulation(msgspec.Struct):
    """Per guardrail *and policy version* (``name|policy``): a policy change starts a new baseline."""

    baselines: dict[str, JudgeBaseline] = msgspec.field(default_factory=dict)


def disagreement_rates(population: JudgePopulation) -> dict[str, tuple[int, int]]:
    """(disagreements, judged) per guardrail name, over every policy version and every user: how often
    the LLM judge called unsafe what the guardrail allowed (NIST AI RMF MEASURE 2.13)."""
    out: dict[str, tuple[int, int]] = {}
    for key, baseline in population.baselines.items():
        name = key.rsplit("|", 1)[0]
        disagreements, judged = out.get(name, (0, 0))
        out[name] = (disagreements + baseline.all_disagreements, judged + baseline.all_judged)
    return out


_top = top_of  # (category, score, threshold) of the highest score/threshold ratio, ties to the smaller name


def _span(ms: int) -> str:
    if ms < HOUR_MS:
        return f"within {max(1, round(ms / MINUTE_MS))} minutes"
    if ms < 2 * DAY_MS:
        return f"over {ms / HOUR_MS:.1f} hours"
    return f"over {ms / DAY_MS:.1f} days"


class JudgeDisagreement:
    """Per-user CUSUM of LLM-judge disagreements with the guardrail, against the population rate."""

    name: ClassVar[str] = "judge_disagreement"
    state_key: ClassVar[str] = "j"
    emits: ClassVar[tuple[str, ...]] = (name,)
    user_state: ClassVar[type[msgspec.Struct]] = JudgeUser
    population_state: ClassVar[type[msgspec.Struct]] = JudgePopulation

    def __init__(self, cfg: JudgeConfig | None = None) -> None:
        self.cfg = cfg or JudgeConfig()
        self.hot_floor = 1.0  # it reads blocked categories and the top one (which observe works out)

    def update(self, user: JudgeUser, population: JudgePopulation, obs: Observation) -> list[Finding]:
        event = obs.event
        if event.stage in THRESHOLD_STAGES:
            self._remember(user, obs)
            return []
        if event.stage != "judge" or event.judge is None:
            return []
        screened = self._judged_content(user, obs)
        if not screened.allowed:
            return []  # the guardrail already stopped it: the judge can only agree or be stricter
        cfg = self.cfg
        disagreement = event.judge.verdict == "unsafe"
        key = f"{screened.guardrail}|{screened.policy}"
        baseline = population.baselines.get(key)
        if baseline is None:
            baseline = population.baselines[key] = JudgeBaseline()
        baseline.all_judged += 1
        baseline.all_disagreements += disagreement
        # The baseline learns what ordinary users do: a user over the level adds nothing, and a
        # disagreement only counts when the user had no running evidence against them (repeated
        # disagreements are exactly what the baseline must not learn as normal; a benign user's are
        # isolated, so this leaves its rate nearly untouched).
        if user.cusum < cfg.cusum_level:
            baseline.judged += 1
            baseline.disagreements += disagreement and user.cusum <= 0.0
        p0 = self.population_rate(baseline)
        user.judged += 1
        user.disagreements += disagreement
        user.last_judge_score = event.judge.score
        if user.cusum <= 0.0:
            user.run_judged = user.run_disagreements = 0
            user.run_categories = {}
            user.run_start_ts = obs.ts_ms
        p1 = min(cfg.cusum_max_alternative, max(cfg.cusum_shift * p0, cfg.cusum_min_alternative))
        if p1 > p0:
            llr = math.log(p1 / p0) if disagreement else math.log((1.0 - p1) / (1.0 - p0))
            user.cusum = max(0.0, user.cusum + llr)
        user.run_judged += 1
        if disagreement:
            user.run_disagreements += 1
            self._count_category(user, screened)
        if baseline.judged < cfg.min_population:
            return []  # warm-up: the population rate is not yet worth comparing against
        finding = self._decide(event, user, screened, p0, obs.ts_ms)
        return [finding] if finding is not None else []

    def population_rate(self, baseline: JudgeBaseline) -> float:
        cfg = self.cfg
        prior = cfg.population_prior_weight
        rate = (baseline.disagreements + cfg.population_prior_rate * prior) / (baseline.judged + prior)
        return max(cfg.population_floor, rate)

    def index(self, user: JudgeUser, p0: float) -> float:
        """The run's disagreement rate shrunk towards the population's, as a multiple of it."""
        k = self.cfg.prior_strength
        return (user.run_disagreements + k * p0) / (user.run_judged + k) / p0

    # -- what was judged -----------------------------------------------------------------------------
    def _remember(self, user: JudgeUser, obs: Observation) -> None:
        event = obs.event
        if not event.request_id:
            return
        category, score, threshold = top_outcome(obs)
        hot = obs.hot_outcomes  # most have none: no generator for them
        allowed = event.decision == "allow" and not (hot and any(blocked for *_, blocked in hot))
        record = Recent(
            event.request_id,
            obs.ts_ms,
            _STAGE_CODES[event.stage],
            allowed,
            event.guardrail.name,
            event.policy_version or "-",
            category,
            score,
            threshold,
        )
        _append_recent(user.recent, record, self.cfg.max_recent)

    def _judged_content(self, user: JudgeUser, obs: Observation) -> Screened:
        event = obs.event
        if event.request_id:
            matches = [s for s in screened_records(user.recent) if s.request_id == event.request_id]
            if matches:
                return min(matches, key=lambda s: (_STAGE_PREFERENCE.get(s.stage, 9), -s.ts))
        category, score, threshold = top_outcome(obs)
        return Screened(
            event.request_id or event.event_id,
            obs.ts_ms,
            event.stage,
            not obs.blocked,
            event.guardrail.name,
            event.policy_version or "-",
            category,
            score,
            threshold,
        )

    def _count_category(self, user: JudgeUser, screened: Screened) -> None:
        if not screened.category:
            return
        stats = user.run_categories.get(screened.category)
        if stats is None:
            if len(user.run_categories) >= self.cfg.max_categories:
                return
            stats = user.run_categories[screened.category] = RunCategory()
        stats.disagreements += 1
        if screened.score >= stats.max_score:
            stats.max_score, stats.threshold = screened.score, screened.threshold

    # -- deciding ------------------------------------------------------------------------------------
    def _decide(self, event: Decision, user: JudgeUser, screened: Screened, p0: float, ts_ms: int) -> Finding | None:
        cfg = self.cfg
        if user.cusum < cfg.cusum_level or user.run_disagreements < cfg.min_disagreements:
            return None
        index = self.index(user, p0)
        if index < cfg.min_index:
            return None
        critical = user.cusum >= cfg.critical_level or user.run_disagreements >= cfg.critical_disagreements
        top = ""
        if user.run_categories:
            top = min(user.run_categories, key=lambda c: (-user.run_categories[c].disagreements, c))
        where = ""
        if top:
            stats = user.run_categories[top]
            where = (
                f" ({stats.disagreements} in {top}, highest guardrail score there {stats.max_score:.2f} "
                f"under the {stats.threshold:.2f} threshold)"
            )
        reason = (
            f"the judge called {user.run_disagreements} of {user.run_judged} judged answers unsafe that "
            f"{screened.guardrail} allowed {_span(ts_ms - user.run_start_ts)}{where}; population {p0:.1%}; "
            f"{index:.0f}x the population rate, CUSUM {user.cusum:.1f}"
        )
        return Finding(
            detector=self.name,
            tenant=event.tenant,
            user_id=event.user_id,
            category=None,
            severity="critical" if critical else "warning",
            score=round(user.cusum, 4),
            reason=reason,
            ts_ms=ts_ms,
            evidence={
                "judged": user.run_judged,
                "disagreements": user.run_disagreements,
                "judged_total": user.judged,
                "disagreements_total": user.disagreements,
                "population_rate": round(p0, 6),
                "index": round(index, 4),
                "cusum": round(user.cusum, 4),
                "run_start_ts_ms": user.run_start_ts,
                "guardrail": screened.guardrail,
                "policy_version": screened.policy,
                "judge": event.judge.name if event.judge else None,
                "last_judge_score": user.last_judge_score,
                "categories": {c: s.disagreements for c, s in sorted(user.run_categories.items())},
                "top_category": top or None,
            },
            action={
                "type": "route_to_judge",
                "category": top or None,
                "summary": "hold this user's allowed answers for the LLM judge before they are released: "
                f"the guardrail alone let {user.run_disagreements} unsafe ones through",
            },
        )
