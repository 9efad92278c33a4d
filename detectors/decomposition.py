"""Multi-turn decomposition: a harmful task split across the turns of one conversation, no turn blocked.

Every turn of such a session stays under its block threshold, so no per-decision detector sees it; what
gives it away is the sum. Per session and category we add up the *level* (``score / threshold``) of every
allowed turn that is elevated (level >= ``floor``) -- the session's cumulative risk -- and count those
turns. A session is flagged in a category when

* it has at least ``min_elevated_turns`` elevated turns there, none of its turns was blocked there and
  every one stayed clearly under the threshold (level < ``max_turn_level``), and
* its cumulative risk reaches ``max(min_risk, population_multiplier * q)``, where ``q`` is the
  population's ``population_quantile`` of cumulative risk for a session of the same number of turns in
  the same tenant, category and policy (:func:`detectors.base.policy_key`), so a category where
  everybody's long conversations run warm raises its own bar, and a long session is held to what long
  sessions accumulate.

The population's distribution of per-session cumulative risk is modelled from its turns: the mean and
variance of a turn's contribution (its level if elevated and allowed, else 0) give, for an ``n``-turn
session, ``q(n) = n*mean + z*sqrt(n*variance)`` (normal approximation of a sum of ``n`` turns). An
empirical quantile of whole sessions would be set by a handful of sessions per partition -- early on,
the attackers' own -- while the per-turn moments are estimated from every turn, have no lag (a session
need not close to count) and warm up in hours. The turns of a flagged session are taken back out, so a
few busy attackers do not raise the bar they are judged against.

Legitimate users of a sensitive topic have long conversations too, but mostly at low scores with a few
isolated elevated turns, and when they do run warm their scores spread up to and over the threshold: a
near miss (a turn in the hugging band) or a block rules a session out here. Near misses are the boundary
detectors' business, and in benign traffic they are the sign of one hard question rather than a task cut
into innocuous-looking pieces. The same holds across a user's sessions: a user whose turns in the
category reach the threshold band a noticeable share of the time (``topic_near_share``, decayed over
``history_days``) is using the topic openly, and a run of moderate turns from them is read as more of
the same. Set ``max_turn_level`` to 1.0 to count near misses as ordinary elevated turns instead.

Sessions are keyed by ``session_id`` within the user's state; decisions without one are not multi-turn
evidence and are skipped, as are judge-stage decisions (a judge repeats the scores of the output it
judged). A turn is a ``request_id`` (its input, output and tool decisions count once, at their highest
level), else the ``turn`` number, else the single decision.

Memory per user is bounded: at most ``max_open_sessions`` open sessions (the least recently active, by
event time, is closed to make room; a session idle for ``session_idle_hours`` is closed and forgotten),
at most ``max_session_categories`` categories tracked per session (only categories with an elevated or
blocked turn are tracked at all), the last ``max_flagged_sessions`` flagged sessions and a turn history
for at most ``max_topics`` categories. Measured on the simulator: under 400 bytes per user on average and
under 3 KB for the busiest; the ceiling with every slot full (and ids of ~20 characters) is about 20 KB.

Pure: state in, findings out. No clock: every time is the event's own (milliseconds since the epoch).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import msgspec

from detectors.base import DAY_MS, HOUR_MS, THRESHOLD_STAGES, Observation, policy_key
from detectors.events import Decision
from detectors.findings import Finding

__all__ = [
    "DecompositionConfig",
    "DecompositionPopulation",
    "DecompositionUser",
    "FlaggedSession",
    "MultiTurnDecomposition",
    "Session",
    "SessionCategory",
    "Topic",
    "TurnMoments",
    "session_quantile",
]


class DecompositionConfig(msgspec.Struct, frozen=True, kw_only=True):
    floor: float = 0.3
    """A turn is elevated in a category when its score is at least this share of the threshold; only
    elevated, allowed turns add to a session's cumulative risk (the rest of a long chat is noise)."""
    max_turn_level: float = 0.8
    """A session qualifies only while every turn stayed under this share of the threshold in the category
    (0.8 = below the default hugging band). 1.0 lets near misses in; blocks always rule a session out."""
    min_elevated_turns: int = 6
    """A session needs at least this many elevated turns in the category ("several", not one or two)."""
    min_risk: float = 2.4
    """Absolute floor of the bar: cumulative risk (sum of score/threshold over the elevated turns) a
    session must reach, whatever the population does (six turns at 0.4 of the threshold)."""
    population_quantile: float = 0.99
    """The bar is also ``population_multiplier`` times this quantile of the population's cumulative risk
    for a session with as many turns, in the tenant, category and policy ..."""
    population_multiplier: float = 1.5
    """... times this factor (a margin for benign turns clustering in sessions, which the model of
    independent turns does not see)."""
    min_population_turns: int = 100
    """Warm-up: no verdicts in a tenant until this many session turns (besides the session's own) have
    been seen under the policy version. Enough to see a category where typical turns run warm (the case
    the population bar is for); the bar never drops below ``min_risk`` however thin the baseline."""
    session_idle_hours: float = 2.0
    """A session with no decision for this much event time is closed (a later decision starts a new one)."""
    max_open_sessions: int = 8
    """Open sessions kept per user; the least recently active is closed to make room for a new one."""
    max_session_categories: int = 16
    """Categories tracked per session (only those with an elevated or blocked turn are tracked)."""
    max_flagged_sessions: int = 16
    """Flagged sessions remembered per user (oldest forgotten first), for counting repeats."""
    history_days: float = 7.0
    """Flagged sessions older than this (event time) no longer count towards severity."""
    critical_sessions: int = 3
    """This many flagged sessions in a category within ``history_days`` make the finding critical."""
    topic_near_share: float = 0.05
    """Open use of a topic: a user whose turns in the category reached ``max_turn_level`` (near misses and
    blocks) at least this share of the time, over the last ``history_days`` (decayed), ..."""
    topic_min_near_misses: float = 1.0
    """... with at least this many such turns, is not flagged in that category: a sensitive-topic user's
    scores spread up to and over the threshold, a decomposer keeps every piece well under it."""
    max_topics: int = 32
    """Categories whose turn history is kept per user (the least recently seen is forgotten first)."""


class SessionCategory(msgspec.Struct, array_like=True):
    """One open session's evidence in one category."""

    baseline: str  # population key of the last elevated turn: category|policy_key
    threshold: float
    turns: int = 0  # elevated, allowed turns
    risk: float = 0.0  # sum of their levels (score / threshold)
    risk_sq: float = 0.0  # sum of their squares (to take them back out of the population when flagged)
    peak: float = 0.0  # highest level of any tracked turn
    peak_score: float = 0.0
    blocked: bool = False
    last_turn: str = ""  # the turn counted last, so a request's output does not count again ...
    last_level: float = 0.0  # ... only its rise over the input's level
    near_turn: str = ""  # the turn counted last as a near miss
    flagged: bool = False


class Session(msgspec.Struct, array_like=True):
    session_id: str
    first_ts: int
    last_ts: int
    policy: str  # policy_version in force at the last decision ('-' when absent)
    turns: int = 0
    last_turn: str = ""
    categories: dict[str, SessionCategory] = msgspec.field(default_factory=dict)


class FlaggedSession(msgspec.Struct, array_like=True):
    session_id: str
    category: str
    first_ts: int  # when it was first flagged
    last_ts: int
    risk: float
    excess: float  # risk / bar at the last update
    turns: int


class Topic(msgspec.Struct, array_like=True):
    """A user's turns in one category across sessions, decayed with a half-life of ``history_days``."""

    elevated: float = 0.0  # elevated turns that stayed under ``max_turn_level``
    near: float = 0.0  # turns at or over it (near misses and blocks)
    last_ts: int = 0


class DecompositionUser(msgspec.Struct, omit_defaults=True):
    sessions: list[Session] = msgspec.field(default_factory=list)
    flagged: list[FlaggedSession] = msgspec.field(default_factory=list)
    topics: dict[str, Topic] = msgspec.field(default_factory=dict)


class TurnMoments(msgspec.Struct, array_like=True):
    risk: float = 0.0  # sum over the population's turns of their contribution in the category
    risk_sq: float = 0.0  # sum of the squares


class DecompositionPopulation(msgspec.Struct):
    """Session turns seen per policy version, and per category *and policy* the first two moments of a
    turn's contribution to cumulative risk (turns without an elevated, allowed level there add 0)."""

    turns: dict[str, int] = msgspec.field(default_factory=dict)
    moments: dict[str, TurnMoments] = msgspec.field(default_factory=dict)


def session_quantile(moments: TurnMoments | None, turns: int, session_turns: int, z: float) -> float:
    """The population's quantile (``z`` standard deviations) of cumulative risk over ``session_turns``
    turns, from the per-turn moments of ``turns`` population turns (normal approximation of the sum)."""
    if moments is None or turns <= 0 or session_turns <= 0:
        return 0.0
    mean = max(0.0, moments.risk) / turns
    variance = max(0.0, moments.risk_sq / turns - mean * mean)
    return session_turns * mean + z * math.sqrt(session_turns * variance)


def _turn_key(event: Decision) -> str:
    if event.request_id:
        return "r:" + event.request_id
    if event.turn is not None:
        return f"t:{event.turn}"
    return "e:" + event.event_id


class MultiTurnDecomposition:
    """Per-session cumulative risk of allowed, elevated turns, against the population's sessions."""

    name: ClassVar[str] = "multi_turn_decomposition"
    state_key: ClassVar[str] = "d"
    emits: ClassVar[tuple[str, ...]] = (name,)
    user_state: ClassVar[type[msgspec.Struct]] = DecompositionUser
    population_state: ClassVar[type[msgspec.Struct]] = DecompositionPopulation

    def __init__(self, cfg: DecompositionConfig | None = None) -> None:
        self.cfg = cfg or DecompositionConfig()
        self._idle_ms = int(self.cfg.session_idle_hours * HOUR_MS)
        self._history_ms = int(self.cfg.history_days * DAY_MS)
        self._z = NormalDist().inv_cdf(self.cfg.population_quantile)
        # Under ``floor`` (and ``max_turn_level``) a category only moves the peak of a session that has counters for it
        self.hot_floor = max(0.0, min(self.cfg.floor, self.cfg.max_turn_level))

    def update(self, user: DecompositionUser, population: DecompositionPopulation, obs: Observation) -> list[Finding]:
        """Fold one decision into its session and the population; return findings for the session's
        categories that are over the bar (on every elevated turn while they stay there)."""
        event, ts_ms = obs.event, obs.ts_ms
        if event.stage not in THRESHOLD_STAGES or not event.session_id:
            return []
        cfg = self.cfg
        self._close_idle(user, ts_ms)
        session = self._session(user, event, ts_ms)
        turn = _turn_key(event)
        policy = event.policy_version or "-"
        session.policy = policy
        if turn != session.last_turn:
            session.turns += 1
            session.last_turn = turn
            population.turns[policy] = population.turns.get(policy, 0) + 1
        thresholds = event.thresholds
        touched: list[tuple[str, SessionCategory]] = []
        outcomes = obs.hot_outcomes
        if session.categories:
            if obs.hot is None:
                outcomes = obs.outcomes
            else:
                self._raise_peaks(session, event, {o[0] for o in outcomes})
        for category, score, _hugging, blocked in outcomes:
            threshold = thresholds[category]
            level = score / threshold
            stats = session.categories.get(category)
            if stats is None:
                if level < cfg.floor or len(session.categories) >= cfg.max_session_categories:
                    continue
                stats = session.categories[category] = SessionCategory(baseline="", threshold=threshold)
            if level > stats.peak:
                stats.peak, stats.peak_score = level, score
            if (blocked or level >= cfg.max_turn_level) and turn != stats.near_turn:
                stats.near_turn = turn
                self._topic(user, category, ts_ms).near += 1.0
            if blocked:
                stats.blocked = True
                continue
            if level < cfg.floor:
                continue
            if turn != stats.last_turn:
                added, added_sq = level, level * level
                stats.turns += 1
                if level < cfg.max_turn_level:
                    self._topic(user, category, ts_ms).elevated += 1.0
                stats.last_turn, stats.last_level = turn, level
            elif level > stats.last_level:
                added, added_sq = level - stats.last_level, level * level - stats.last_level**2
                stats.last_level = level
            else:
                continue
            stats.risk += added
            stats.risk_sq += added_sq
            stats.threshold = threshold
            stats.baseline = category + "|" + policy_key(event, category)
            if not stats.flagged:
                moments = population.moments.get(stats.baseline)
                if moments is None:
                    moments = population.moments[stats.baseline] = TurnMoments()
                moments.risk += added
                moments.risk_sq += added_sq
            touched.append((category, stats))
        findings: list[Finding] = []
        for category, stats in touched:
            finding = self._decide(user, population, event, session, category, stats, ts_ms)
            if finding is not None:
                findings.append(finding)
        return findings

    @staticmethod
    def _raise_peaks(session: Session, event: Decision, hot: set[str]) -> None:
        """What the loop in update does for a category the session has counters for and the decision scored
        below the hot floor (not elevated, not near, not blocked): keep the session's peak level there."""
        scores, thresholds = event.scores, event.thresholds
        for category, stats in session.categories.items():
            if category in hot:
                continue
            score = scores.get(category)
            threshold = thresholds.get(category)
            if score is None or threshold is None:
                continue
            level = score / threshold
            if level > stats.peak:
                stats.peak, stats.peak_score = level, score

    # -- sessions ------------------------------------------------------------------------------------
    def _session(self, user: DecompositionUser, event: Decision, ts_ms: int) -> Session:
        session_id = event.session_id or ""
        sessions = user.sessions
        # session ids are unique in the list: the newest (last) first, as a user's next turn is mostly in it
        if sessions and sessions[-1].session_id == session_id:
            session = sessions[-1]
            if ts_ms > session.last_ts:
                session.last_ts = ts_ms
            return session
        for session in sessions:
            if session.session_id == session_id:
                if ts_ms > session.last_ts:
                    session.last_ts = ts_ms
                return session
        while len(user.sessions) >= self.cfg.max_open_sessions:
            user.sessions.remove(min(user.sessions, key=lambda s: (s.last_ts, s.session_id)))
        session = Session(session_id=session_id, first_ts=ts_ms, last_ts=ts_ms, policy="-")
        user.sessions.append(session)
        return session

    def _close_idle(self, user: DecompositionUser, ts_ms: int) -> None:
        cutoff = ts_ms - self._idle_ms
        for session in user.sessions:  # a plain loop: any() over a generator costs twice as much, every decision
            if session.last_ts < cutoff:
                user.sessions = [s for s in user.sessions if s.last_ts >= cutoff]
                return

    def _topic(self, user: DecompositionUser, category: str, ts_ms: int) -> Topic:
        topic = user.topics.get(category)
        if topic is None:
            if len(user.topics) >= self.cfg.max_topics:
                del user.topics[min(user.topics, key=lambda c: (user.topics[c].last_ts, c))]
            topic = user.topics[category] = Topic(last_ts=ts_ms)
        elif ts_ms > topic.last_ts:
            decay = 0.5 ** ((ts_ms - topic.last_ts) / self._history_ms)
            topic.elevated *= decay
            topic.near *= decay
            topic.last_ts = ts_ms
        return topic

    def open_topic(self, user: DecompositionUser, category: str) -> bool:
        """Whether the user's turns in ``category`` spread up to the threshold often enough to read as
        open use of a sensitive topic rather than a task cut into innocuous pieces."""
        cfg = self.cfg
        topic = user.topics.get(category)
        if topic is None or topic.near < cfg.topic_min_near_misses:
            return False
        return topic.near >= cfg.topic_near_share * (topic.near + topic.elevated)

    # -- deciding ------------------------------------------------------------------------------------
    def bar(self, population: DecompositionPopulation, stats: SessionCategory, session: Session) -> tuple[float, float]:
        """(bar, population quantile): the cumulative risk this session must reach in the category, and
        the population's quantile for a session of as many turns. The session's own turns are left out
        of the population it is compared with (early on they would be a good part of it)."""
        cfg = self.cfg
        moments = population.moments.get(stats.baseline)
        if moments is not None and not stats.flagged:
            moments = TurnMoments(moments.risk - stats.risk, moments.risk_sq - stats.risk_sq)
        turns = population.turns.get(session.policy, 0) - session.turns
        q = session_quantile(moments, turns, session.turns, self._z)
        return max(cfg.min_risk, cfg.population_multiplier * q), q

    def _decide(
        self,
        user: DecompositionUser,
        population: DecompositionPopulation,
        event: Decision,
        session: Session,
        category: str,
        stats: SessionCategory,
        ts_ms: int,
    ) -> Finding | None:
        cfg = self.cfg
        if stats.blocked or stats.peak >= cfg.max_turn_level or stats.turns < cfg.min_elevated_turns:
            return None
        if stats.risk < cfg.min_risk:
            return None
        if population.turns.get(session.policy, 0) - session.turns < cfg.min_population_turns:
            return None  # warm-up: the population's turns are not yet worth comparing against
        if self.open_topic(user, category):
            return None
        bar, q = self.bar(population, stats, session)
        if not stats.flagged:
            if stats.risk < bar:
                return None
            # Out of the baseline it is judged against: take the session's turns back out.
            stats.flagged = True
            moments = population.moments.get(stats.baseline)
            if moments is not None:
                moments.risk = max(0.0, moments.risk - stats.risk)
                moments.risk_sq = max(0.0, moments.risk_sq - stats.risk_sq)
        self._record(user, session, category, stats, bar, ts_ms)
        horizon = ts_ms - self._history_ms
        repeats = [f for f in user.flagged if f.category == category and f.last_ts >= horizon]
        severity = "critical" if len(repeats) >= cfg.critical_sessions else "warning"
        since = min(f.first_ts for f in repeats)
        days = max(0.0, (ts_ms - since) / DAY_MS)
        threshold = stats.threshold
        reason = (
            f"session {session.session_id}: {stats.turns} of {session.turns} turns elevated in {category}, "
            f"each under the {threshold:.2f} threshold (max {stats.peak_score:.2f}), cumulative risk "
            f"{stats.risk:.1f} vs population p{cfg.population_quantile * 100:g} {q:.1f} for "
            f"{session.turns} turns (bar {bar:.1f}); {len(repeats)} such "
            f"session{'s' if len(repeats) != 1 else ''} in {days:.1f} days"
        )
        return Finding(
            detector=self.name,
            tenant=event.tenant,
            user_id=event.user_id,
            category=category,
            severity=severity,
            score=round(sum(f.excess for f in repeats), 4),
            reason=reason,
            ts_ms=ts_ms,
            evidence={
                "session_id": session.session_id,
                "session_turns": session.turns,
                "elevated_turns": stats.turns,
                "cumulative_risk": round(stats.risk, 4),
                "bar": round(bar, 4),
                "population_quantile": round(q, 4),
                "population_turns": population.turns.get(session.policy, 0),
                "max_level": round(stats.peak, 4),
                "max_score": stats.peak_score,
                "threshold": threshold,
                "floor": cfg.floor,
                "flagged_sessions": len(repeats),
                "flagged_session_ids": [f.session_id for f in repeats[-5:]],
                "first_flagged_ts_ms": since,
                "session_first_ts_ms": session.first_ts,
            },
            action={
                "type": "review_session",
                "session_id": session.session_id,
                "category": category,
                "summary": f"review session {session.session_id} as a whole: its {category} turns may add up "
                f"to a request the guardrail would block",
            },
        )

    def _record(
        self,
        user: DecompositionUser,
        session: Session,
        category: str,
        stats: SessionCategory,
        bar: float,
        ts_ms: int,
    ) -> None:
        for record in user.flagged:
            if record.session_id == session.session_id and record.category == category:
                break
        else:
            record = FlaggedSession(session.session_id, category, ts_ms, ts_ms, 0.0, 0.0, 0)
            user.flagged.append(record)
            if len(user.flagged) > self.cfg.max_flagged_sessions:
                user.flagged.remove(min(user.flagged, key=lambda f: (f.last_ts, f.session_id)))
        record.last_ts = max(record.last_ts, ts_ms)
        record.risk = stats.risk
        record.excess = stats.risk / bar
        record.turns = stats.turns
