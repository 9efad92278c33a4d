"""Retry probing: users who answer a block by rephrasing until a request slips through just under it.

A *probe chain* is a decision blocked in a category, followed within a few minutes of event time by the
same user's further decisions in that category at the same screening stage (any session): more blocks
whose score does not rise (rephrasings), ending in an allowed decision that hugs the threshold (the
vocabulary of ``event-schema.md``: ``0 < threshold - score <= band * threshold``), a near miss turned
pass. A block that does not continue an open chain starts a new *episode*; the user's chain rate is
chains per episode. The population's rate (per tenant, category and policy, see
:func:`detectors.base.policy_key`, shrunk towards the tenant's rate over all categories under the same
``policy_version`` so a quiet category still has a baseline) says how often an ordinary block is followed
by a near pass. A user is flagged with several chains and a shrunk chain rate far above it.

A user feeds the population only until their first ``population_user_cap`` chains in the category (one,
by default), so a handful of probers
(twenty chains a week each) cannot raise the baseline they are measured against. The cap is a plain
count on purpose: a gate on the user's own index would be circular (fed probers raise the rate, which
lowers their index, which lets them feed more).

Pure: state in, findings out. No clock: every time is the event's own (milliseconds since the epoch).
Memory per user: one :class:`ProbeStats` per category the user was blocked in (bounded by the taxonomy),
each with at most ``keep_chains`` recent chains, plus at most ``max_open`` open chains.
"""

from __future__ import annotations

import statistics
from typing import ClassVar

import msgspec

from detectors.base import (
    DAY_MS,
    MINUTE_MS,
    THRESHOLD_STAGES,
    Observation,
    category_outcomes,
    policy_key,
)
from detectors.events import Decision
from detectors.findings import Finding

__all__ = [
    "OpenProbe",
    "ProbeChain",
    "ProbeStats",
    "ProbingConfig",
    "ProbingPopulation",
    "ProbingUser",
    "RetryProbing",
    "chain_index",
]


class ProbingConfig(msgspec.Struct, frozen=True, kw_only=True):
    band: float = 0.2
    """A pass is *near* the threshold when its margin is within ``band * threshold`` (the hugging band)."""
    max_gap_minutes: float = 10.0
    """A rephrasing or the final pass must come within this much event time of the chain's last block;
    the simulator's probers retry 10-120 s apart, ordinary follow-up turns are minutes apart."""
    min_chains: int = 4
    """Alert only once the user has at least this many chains in the category ..."""
    index_level: float = 5.0
    """... and their shrunk chain rate is this many times the population's ..."""
    min_chain_share: float = 0.3
    """... and at least this share of their episodes in the category ended in a near pass (raw, not
    shrunk): a sensitive-topic user with many blocks collects a few chains by chance, at a low share;
    a prober's blocks mostly end in a pass ..."""
    critical_index: float = 10.0
    """... and call it critical from this index on, with at least ``2 * min_chains`` chains."""
    prior_strength: float = 10.0
    """Pseudo-episodes at the population rate that every user's chain rate is shrunk towards, so that
    three chains in three episodes weigh less than thirty in thirty."""
    min_population: int = 10
    """Warm-up: no verdicts in a tenant and policy until its population has this many episodes (over all
    categories)."""
    category_prior: float = 100.0
    """Pseudo-episodes at the tenant's all-category rate that a category's population rate is shrunk
    towards: a category with few blocks borrows the tenant-wide rate."""
    population_floor: float = 0.005
    """Lower bound on the population rate, so a category where nobody retries does not divide by ~0."""
    population_user_cap: int = 1
    """A user's episodes and chains in a category feed the population only while they have fewer chains
    than this there: one chain is ordinary bad luck, a prober's twentieth is not a baseline."""
    population_prior_rate: float = 0.01
    """Prior chain rate of a tenant's population (ordinary users: well under 1 % of blocks are followed by
    a near pass in the same category within minutes) ..."""
    population_prior_strength: float = 200.0
    """... worth this many episodes, so the first few chains seen in a fresh population (often the probers'
    own) do not set its baseline."""
    keep_chains: int = 16
    """Recent chains kept per user and category for the alert's medians (attempts, spacing)."""
    max_open: int = 8
    """Open (unfinished) chains kept per user; the stalest is dropped first."""


class OpenProbe(msgspec.Struct, array_like=True):
    """An unfinished chain in one stage and category: blocks so far, waiting for a pass."""

    first_ts: int
    last_ts: int
    last_score: float
    policy: str  # policy_key of the blocks: a pass under another threshold is no near miss of theirs
    blocks: int = 1


class ProbeChain(msgspec.Struct, array_like=True):
    """A completed chain, kept for the human reading the alert."""

    ts: int  # the pass
    attempts: int  # blocks + the pass
    gap_ms: int  # mean spacing of the attempts
    score: float  # the passing score
    threshold: float


class ProbeStats(msgspec.Struct, array_like=True):
    episodes: int = 0  # blocks that did not continue an open chain
    chains: int = 0  # episodes that ended in a near pass
    first_chain_ts: int = 0
    last_ts: int = 0
    recent: list[ProbeChain] = msgspec.field(default_factory=list)


class ProbingUser(msgspec.Struct, omit_defaults=True):
    categories: dict[str, ProbeStats] = msgspec.field(default_factory=dict)
    open: dict[str, OpenProbe] = msgspec.field(default_factory=dict)  # "stage|category" -> open chain


class ProbePopulationStats(msgspec.Struct, array_like=True):
    episodes: int = 0
    chains: int = 0


class ProbingPopulation(msgspec.Struct):
    """Per category *and policy* (``category|policy_key``), plus ``*|policy_version`` over all categories
    (the prior a category's own rate is shrunk towards; a threshold moved without a new ``policy_version``
    only restarts the former)."""

    baselines: dict[str, ProbePopulationStats] = msgspec.field(default_factory=dict)


def chain_index(stats: ProbeStats, p0: float, cfg: ProbingConfig) -> tuple[float, float]:
    """(shrunk chain rate, that rate as a multiple of the population rate ``p0``)."""
    rate = (stats.chains + cfg.prior_strength * p0) / (stats.episodes + cfg.prior_strength)
    return rate, rate / p0


class RetryProbing:
    """Per-user, per-category block→rephrase→near-pass chains against the population's rate."""

    name: ClassVar[str] = "retry_probing"
    state_key: ClassVar[str] = "p"
    emits: ClassVar[tuple[str, ...]] = (name,)
    user_state: ClassVar[type[msgspec.Struct]] = ProbingUser
    population_state: ClassVar[type[msgspec.Struct]] = ProbingPopulation

    def __init__(self, cfg: ProbingConfig | None = None) -> None:
        self.cfg = cfg or ProbingConfig()
        self._gap_ms = int(self.cfg.max_gap_minutes * MINUTE_MS)
        self.hot_floor = max(0.0, 1.0 - self.cfg.band)  # below: neither hugging nor blocked

    def update(self, user: ProbingUser, population: ProbingPopulation, obs: Observation) -> list[Finding]:
        event, ts_ms = obs.event, obs.ts_ms
        findings: list[Finding] = []
        if event.stage not in THRESHOLD_STAGES:
            return findings
        cfg = self.cfg
        # only blocked or hugging categories matter, and every one of them is hot
        outcomes = obs.hot_outcomes if obs.band == cfg.band else category_outcomes(event, cfg.band)
        allowed = event.decision == "allow"
        for category, score, hugging, blocked in outcomes:
            if not blocked and not (hugging and allowed):
                continue
            open_key = event.stage + "|" + category
            policy = policy_key(event, category)
            chain = user.open.get(open_key)
            if chain is not None and (ts_ms - chain.last_ts > self._gap_ms or chain.policy != policy):
                del user.open[open_key]
                chain = None
            if blocked:
                if chain is not None and score <= chain.last_score:
                    if ts_ms == chain.last_ts and score == chain.last_score:
                        continue  # a replayed duplicate of the last attempt
                    chain.last_ts, chain.last_score = ts_ms, score
                    chain.blocks += 1
                    continue  # a rephrasing changes no count
                stats = self._stats(user, category)
                if stats.chains < cfg.population_user_cap:
                    for pop in self._baselines(population, event, category):
                        pop.episodes += 1
                stats.episodes += 1
                stats.last_ts = max(stats.last_ts, ts_ms)
                self._open(user, open_key, OpenProbe(ts_ms, ts_ms, score, policy), ts_ms)
            elif chain is not None:
                del user.open[open_key]
                stats = self._stats(user, category)
                if stats.chains < cfg.population_user_cap:
                    for pop in self._baselines(population, event, category):
                        pop.chains += 1
                stats.chains += 1
                stats.last_ts = max(stats.last_ts, ts_ms)
                if stats.chains == 1:
                    stats.first_chain_ts = chain.first_ts
                attempts = chain.blocks + 1
                gap = (ts_ms - chain.first_ts) // (attempts - 1)
                stats.recent.append(ProbeChain(ts_ms, attempts, gap, score, event.thresholds[category]))
                if len(stats.recent) > cfg.keep_chains:
                    del stats.recent[0]
            else:
                continue
            finding = self._decide(event, category, user.categories[category], population, ts_ms)
            if finding is not None:
                findings.append(finding)
        return findings

    def _open(self, user: ProbingUser, open_key: str, chain: OpenProbe, ts_ms: int) -> None:
        """Start a chain (replacing one whose score rose: a fresh attempt), dropping chains gone stale."""
        opened = user.open
        opened.pop(open_key, None)
        for key in [k for k, c in opened.items() if ts_ms - c.last_ts > self._gap_ms]:
            del opened[key]
        opened[open_key] = chain
        if len(opened) > self.cfg.max_open:
            del opened[min(opened, key=lambda k: opened[k].last_ts)]

    @staticmethod
    def _stats(user: ProbingUser, category: str) -> ProbeStats:
        stats = user.categories.get(category)
        if stats is None:
            stats = user.categories[category] = ProbeStats()
        return stats

    @staticmethod
    def _baselines(population: ProbingPopulation, event: Decision, category: str) -> list[ProbePopulationStats]:
        out = []
        for key in (category + "|" + policy_key(event, category), "*|" + (event.policy_version or "-")):
            pop = population.baselines.get(key)
            if pop is None:
                pop = population.baselines[key] = ProbePopulationStats()
            out.append(pop)
        return out

    def population_rate(self, population: ProbingPopulation, event: Decision, category: str) -> float | None:
        """Share of the population's episodes that end in a near pass, or ``None`` during warm-up."""
        own, pooled = self._baselines(population, event, category)
        if pooled.episodes < self.cfg.min_population:
            return None
        return self._rate(own, pooled)

    def _rate(self, own: ProbePopulationStats, pooled: ProbePopulationStats) -> float:
        cfg = self.cfg
        strength = cfg.population_prior_strength
        pooled_rate = (pooled.chains + strength * cfg.population_prior_rate) / (pooled.episodes + strength)
        rate = (own.chains + cfg.category_prior * pooled_rate) / (own.episodes + cfg.category_prior)
        return max(cfg.population_floor, rate)

    def _decide(
        self, event: Decision, category: str, stats: ProbeStats, population: ProbingPopulation, ts_ms: int
    ) -> Finding | None:
        cfg = self.cfg
        if stats.chains < cfg.min_chains or stats.chains < cfg.min_chain_share * stats.episodes:
            return None
        p0 = self.population_rate(population, event, category)
        if p0 is None:
            return None
        rate, index = chain_index(stats, p0, cfg)
        if index < cfg.index_level:
            return None
        critical = index >= cfg.critical_index and stats.chains >= 2 * cfg.min_chains
        return self._finding("critical" if critical else "warning", index, rate, p0, event, category, stats, ts_ms)

    def _finding(
        self,
        severity: str,
        index: float,
        rate: float,
        p0: float,
        event: Decision,
        category: str,
        stats: ProbeStats,
        ts_ms: int,
    ) -> Finding:
        cfg = self.cfg
        recent = stats.recent
        last = recent[-1]
        attempts = statistics.median(c.attempts for c in recent)
        gap_s = statistics.median(c.gap_ms for c in recent) / 1000.0
        days = max(0.0, (ts_ms - stats.first_chain_ts) / DAY_MS)
        reason = (
            f"{stats.chains} block→rephrase→pass chains in {category} over {days:.1f} days "
            f"(median {attempts:g} attempts, {gap_s:.0f} s apart; last pass {last.score:.2f} vs "
            f"{last.threshold:.2f}); {stats.chains} of {stats.episodes} blocks ended in a near pass; "
            f"population: {p0:.1%} of blocks followed by a near pass; index {index:.1f}x"
        )
        return Finding(
            detector=self.name,
            tenant=event.tenant,
            user_id=event.user_id,
            category=category,
            severity=severity,
            score=round(index, 4),
            reason=reason,
            ts_ms=ts_ms,
            evidence={
                "chains": stats.chains,
                "episodes": stats.episodes,
                "chain_rate": round(rate, 6),
                "population_rate": round(p0, 6),
                "median_attempts": attempts,
                "median_gap_s": round(gap_s, 1),
                "last_pass_score": last.score,
                "threshold": last.threshold,
                "first_chain_ts_ms": stats.first_chain_ts,
                "max_gap_minutes": cfg.max_gap_minutes,
                "band": cfg.band,
            },
            action={
                "type": "require_second_pass_judge",
                "category": category,
                "window_minutes": cfg.max_gap_minutes,
                "summary": (
                    f"send this user's {category} requests that pass within {cfg.max_gap_minutes:g} minutes "
                    f"of a {category} block to a second-pass judge"
                ),
            },
        )
