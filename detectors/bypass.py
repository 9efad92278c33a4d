"""Output bypass: requests whose prompt passed the input screen and whose answer was blocked at output.

The input and output decisions of one request are joined by ``request_id``. Each user keeps a small map
of their recent requests (at most ``max_pending``, none older than ``join_window_minutes`` of event
time); the output normally arrives seconds after the input, and an output that arrives first waits
there for its input. A *bypass* in category C is a request whose input was allowed and whose output
was blocked or redacted in C (score at or over C's threshold). A user's bypass rate in C is their
bypasses in C per allowed input; it is shrunk towards the population's rate in C (per tenant and
policy, see :func:`detectors.base.policy_key`) with a Beta prior worth ``prior_strength`` requests, so
that three unlucky requests cannot outrank three thousand, and compared with that rate (itself shrunk
towards, and never below, ``population_floor``). Ordinary users see an output blocked behind an allowed
prompt in well under 1 % of requests, spread over categories; a user who has found a prompt pattern the
input screen misses keeps hitting the output screen in one. Tool and judge decisions are not joined: a
judge repeats the output's verdict, and a tool call is not the answer to the prompt.

A user feeds the population's bypass count in C only with their first ``population_user_cap`` bypasses
there, so a few attackers (dozens a week each) cannot raise the baseline they are measured against. A
plain count on purpose: a gate on the user's own index would be circular.

Pure: state in, findings out. No clock: every time is the event's own (milliseconds since the epoch).
Memory per user: at most ``max_pending`` pending requests plus one small counter per category the user
had a bypass in (bounded by the taxonomy).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from detectors.base import DAY_MS, LAYOUTS, MINUTE_MS, Observation, policy_key, policy_key_of
from detectors.events import Decision
from detectors.findings import Finding

__all__ = [
    "BypassConfig",
    "BypassPopulation",
    "BypassStats",
    "BypassUser",
    "OutputBypass",
    "PendingRequest",
    "bypass_index",
]

ALL_CATEGORIES = "*"  # population key prefix for "any category" counts


class BypassConfig(msgspec.Struct, frozen=True, kw_only=True):
    join_window_minutes: float = 10.0
    """An input and an output decision are joined only when they are this close in event time; a
    pending request older than this (relative to the user's newest decision) is forgotten."""
    max_pending: int = 64
    """At most this many recent requests are kept per user for the join; the oldest goes first."""
    min_bypasses: int = 3
    """Alert only once the user has at least this many bypasses in the category ..."""
    index_level: float = 10.0
    """... and their shrunk bypass rate there is this many times the population's ..."""
    critical_index: float = 25.0
    """... and call it critical from this index on, with at least ``2 * min_bypasses`` bypasses."""
    population_prior_strength: float = 2000.0
    """Pseudo-requests at ``population_floor`` that a category's population rate is shrunk towards, so the
    first few bypasses seen in a fresh population (often an attacker's own) do not set its baseline."""
    population_user_cap: int = 3
    """A user's bypasses in a category feed the population only while they have fewer than this there
    (and in the any-category count only while they have fewer in all)."""
    prior_strength: float = 30.0
    """Pseudo-requests at the population rate that every user's bypass rate is shrunk towards."""
    min_population: int = 200
    """Warm-up: no verdicts in a tenant, category and policy until the population has this many allowed
    inputs there."""
    population_floor: float = 0.002
    """Lower bound on the population's rate in one category. Ordinary traffic sees an output blocked
    behind an allowed prompt in ~0.3 % of requests over all categories; a category's own rate is a
    fraction of that and too noisy to divide by."""


class PendingRequest(msgspec.Struct, array_like=True):
    """One recent request awaiting (or done with) its join. Kept until it expires, so a replayed
    duplicate of either decision is recognised and not counted twice."""

    ts: int  # event time of the first of its decisions seen
    input: int  # 1: input allowed, 0: input blocked, -1: input not seen yet
    output_blocked: dict[str, float] | None = None  # category -> output score where blocked; None: no output yet
    counted: bool = False


class BypassStats(msgspec.Struct, array_like=True):
    bypasses: int = 0
    first_ts: int = 0
    last_ts: int = 0
    last_score: float = 0.0
    last_threshold: float = 0.0


class BypassUser(msgspec.Struct, omit_defaults=True):
    requests: int = 0  # requests whose input was allowed (and carried a request_id)
    bypassed: int = 0  # of those, requests whose output was blocked (in any category)
    first_ts: int = 0
    pending: dict[str, PendingRequest] = msgspec.field(default_factory=dict)  # request_id -> request
    categories: dict[str, BypassStats] = msgspec.field(default_factory=dict)


class BypassPopulationStats(msgspec.Struct, array_like=True):
    requests: int = 0
    bypasses: int = 0


class BypassPopulation(msgspec.Struct, omit_defaults=True):
    """Per ``category|policy_key`` (a threshold change starts a new baseline), plus ``*|policy_version``
    counting requests with a bypass in any category, for the reader of an alert."""

    baselines: dict[str, BypassPopulationStats] = msgspec.field(default_factory=dict)
    pending: dict[int, int] = msgspec.field(default_factory=dict)
    """Allowed requests not yet in ``baselines``, per :class:`detectors.base.Layout` index whose baselines exist.
    In memory only: :meth:`OutputBypass.settle` folds them in and empties it before the state is stored."""


def bypass_index(stats: BypassStats, requests: int, p0: float, cfg: BypassConfig) -> tuple[float, float]:
    """(shrunk bypass rate, that rate as a multiple of the population rate ``p0``)."""
    rate = (stats.bypasses + cfg.prior_strength * p0) / (requests + cfg.prior_strength)
    return rate, rate / p0


class OutputBypass:
    """Per-user, per-category rate of allowed prompts whose answer was blocked, against the population."""

    name: ClassVar[str] = "output_bypass"
    state_key: ClassVar[str] = "b"
    emits: ClassVar[tuple[str, ...]] = (name,)
    user_state: ClassVar[type[msgspec.Struct]] = BypassUser
    population_state: ClassVar[type[msgspec.Struct]] = BypassPopulation

    def __init__(self, cfg: BypassConfig | None = None) -> None:
        self.cfg = cfg or BypassConfig()
        self._window_ms = int(self.cfg.join_window_minutes * MINUTE_MS)
        self.hot_floor = 1.0  # it reads blocked categories only (and counts requests over every threshold)
        self._layout_keys: dict[int, list[str]] = {}  # a layout's request baselines, in the order they are made

    def update(self, user: BypassUser, population: BypassPopulation, obs: Observation) -> list[Finding]:
        event, ts_ms = obs.event, obs.ts_ms
        request_id = event.request_id
        if request_id is None or event.stage not in ("input", "output"):
            return []
        self._expire(user, ts_ms)
        pending = user.pending.get(request_id)
        if event.stage == "input":
            if pending is not None and pending.input != -1:
                return []  # a replayed input
            allowed = event.decision == "allow"
            if pending is None:
                pending = self._remember(user, request_id, PendingRequest(ts_ms, int(allowed)))
            else:
                pending.input = int(allowed)
            if not allowed:
                return []
            self._count_request(user, population, obs)
        else:
            if pending is not None and pending.output_blocked is not None:
                return []  # a replayed output
            blocked = (
                {category: score for category, score, _h, hit in obs.hot_outcomes if hit}
                if obs.blocked and event.decision != "allow"
                else {}
            )
            if pending is None:
                if not blocked:
                    return []  # an allowed output whose input was not seen: nothing to join it with
                pending = self._remember(user, request_id, PendingRequest(ts_ms, -1))
            pending.output_blocked = blocked
        if pending.input != 1 or not pending.output_blocked or pending.counted:
            return []
        pending.counted = True
        return self._count_bypass(user, population, event, pending.output_blocked, ts_ms)

    # -- the join --------------------------------------------------------------------------------------
    def _expire(self, user: BypassUser, ts_ms: int) -> None:
        """Forget requests older than the join window (insertion order is time order, near enough)."""
        pending = user.pending
        cutoff = ts_ms - self._window_ms
        while pending:
            request_id = next(iter(pending))
            if pending[request_id].ts >= cutoff:
                break
            del pending[request_id]

    def _remember(self, user: BypassUser, request_id: str, request: PendingRequest) -> PendingRequest:
        pending = user.pending
        if len(pending) >= self.cfg.max_pending:
            del pending[next(iter(pending))]
        pending[request_id] = request
        return request

    # -- counting --------------------------------------------------------------------------------------
    def _count_request(self, user: BypassUser, population: BypassPopulation, obs: Observation) -> None:
        event = obs.event
        if user.requests == 0:
            user.first_ts = obs.ts_ms
        user.requests += 1
        layout = obs.layout
        index = -1 if layout is None else layout.index
        if index in population.pending:
            population.pending[index] += 1  # nothing reads the request counts before the next bypass: count later
            return
        self._flush(population)
        for category in event.thresholds:
            self._baseline(population, category + "|" + policy_key(event, category)).requests += 1
        self._baseline(population, ALL_CATEGORIES + "|" + (event.policy_version or "-")).requests += 1
        if index >= 0:
            population.pending[index] = 0  # its baselines exist now

    def settle(self, population: BypassPopulation) -> None:
        self._flush(population)
        population.pending.clear()

    def _flush(self, population: BypassPopulation) -> None:
        baselines = population.baselines
        pending = population.pending
        for index, count in pending.items():
            if count:
                for key in self._request_keys(index):
                    baselines[key].requests += count
                pending[index] = 0

    def _request_keys(self, index: int) -> list[str]:
        keys = self._layout_keys.get(index)
        if keys is None:
            layout = LAYOUTS[index]
            policy = layout.policy_version
            keys = self._layout_keys[index] = [
                *(category + "|" + policy_key_of(policy, threshold) for category, threshold in layout.all_thresholds),
                ALL_CATEGORIES + "|" + (policy or "-"),
            ]
        return keys

    def _count_bypass(
        self, user: BypassUser, population: BypassPopulation, event: Decision, blocked: dict[str, float], ts_ms: int
    ) -> list[Finding]:
        self._flush(population)
        findings: list[Finding] = []
        if user.bypassed < self.cfg.population_user_cap:
            self._baseline(population, ALL_CATEGORIES + "|" + (event.policy_version or "-")).bypasses += 1
        user.bypassed += 1
        for category, score in blocked.items():
            stats = user.categories.get(category)
            if stats is None:
                stats = user.categories[category] = BypassStats(first_ts=ts_ms)
            pop = self._baseline(population, category + "|" + policy_key(event, category))
            if stats.bypasses < self.cfg.population_user_cap:
                pop.bypasses += 1
            stats.bypasses += 1
            stats.last_ts = max(stats.last_ts, ts_ms)
            stats.last_score = score
            stats.last_threshold = event.thresholds.get(category, 0.0)
            finding = self._decide(event, category, stats, user, pop, population, ts_ms)
            if finding is not None:
                findings.append(finding)
        return findings

    @staticmethod
    def _baseline(population: BypassPopulation, key: str) -> BypassPopulationStats:
        pop = population.baselines.get(key)
        if pop is None:
            pop = population.baselines[key] = BypassPopulationStats()
        return pop

    def _population_rate(self, pop: BypassPopulationStats) -> float:
        cfg = self.cfg
        prior = cfg.population_prior_strength
        return max(cfg.population_floor, (pop.bypasses + prior * cfg.population_floor) / (pop.requests + prior))

    # -- deciding --------------------------------------------------------------------------------------
    def _decide(
        self,
        event: Decision,
        category: str,
        stats: BypassStats,
        user: BypassUser,
        pop: BypassPopulationStats,
        population: BypassPopulation,
        ts_ms: int,
    ) -> Finding | None:
        cfg = self.cfg
        if stats.bypasses < cfg.min_bypasses or pop.requests < cfg.min_population:
            return None
        p0 = self._population_rate(pop)
        rate, index = bypass_index(stats, user.requests, p0, cfg)
        if index < cfg.index_level:
            return None
        critical = index >= cfg.critical_index and stats.bypasses >= 2 * cfg.min_bypasses
        overall = population.baselines.get(ALL_CATEGORIES + "|" + (event.policy_version or "-"))
        p_any = overall.bypasses / overall.requests if overall is not None and overall.requests else 0.0
        days = max(0, ts_ms - user.first_ts) / DAY_MS
        reason = (
            f"{stats.bypasses} of {user.requests} requests passed the input screen and were blocked at output "
            f"({category}) over {days:.1f} days ({stats.bypasses / user.requests:.1%}; last output "
            f"{stats.last_score:.2f} vs {stats.last_threshold:.2f}); population rate {p_any:.1%} in any "
            f"category, {category} baseline {p0:.2%}; index {index:.1f}x"
        )
        return Finding(
            detector=self.name,
            tenant=event.tenant,
            user_id=event.user_id,
            category=category,
            severity="critical" if critical else "warning",
            score=round(index, 4),
            reason=reason,
            ts_ms=ts_ms,
            evidence={
                "bypasses": stats.bypasses,
                "requests": user.requests,
                "bypass_rate": round(rate, 6),
                "population_rate": round(p0, 6),
                "population_rate_any_category": round(p_any, 6),
                "first_bypass_ts_ms": stats.first_ts,
                "last_output_score": stats.last_score,
                "threshold": stats.last_threshold,
            },
            action={
                "type": "tighten_input_screen",
                "category": category,
                "summary": (
                    f"screen this user's prompts for {category} with a lower input threshold (or a second-pass "
                    f"judge on input): their answers keep being blocked at output"
                ),
            },
        )
