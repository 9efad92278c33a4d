"""Boundary hugging: users whose decisions keep landing just under a block threshold.

Vocabulary (``event-schema.md``): the margin of a category is ``threshold - score``; a decision *hugs*
a category when ``0 < margin <= band * threshold``. A user's boundary-hugging index is their hugging
share in a category divided by the population's share in the same tenant and category, with the
user's share shrunk towards the population's (a Beta prior worth ``prior_strength`` decisions) so that
three lucky events cannot outrank three thousand. The slow-burn trend is a Bernoulli CUSUM of hugging
versus the population rate over the user's stream, which accumulates evidence however thinly it is
spread in time, plus an event-time EWMA of the share for the human reading the alert.

Pure: state in, findings out. No clock: every time is the event's own (milliseconds since the epoch).
"""

from __future__ import annotations

import math
from typing import ClassVar

import msgspec

from detectors.base import (
    DAY_MS,
    LAYOUTS,
    THRESHOLD_STAGES,
    CategoryOutcome,
    Observation,
    category_outcomes,
    policy_key,
    policy_key_of,
)
from detectors.events import Decision
from detectors.findings import Finding
from detectors.stats import binomial_tail_log10

__all__ = [
    "BoundaryHugging",
    "CategoryOutcome",
    "CategoryStats",
    "HuggingConfig",
    "QuietGroup",
    "all_category_stats",
    "category_outcomes",
    "category_stats",
]


class HuggingConfig(msgspec.Struct, frozen=True, kw_only=True):
    band: float = 0.2
    """A decision hugs a category when its margin is within ``band * threshold`` on the allowed side."""
    prior_strength: float = 20.0
    """Pseudo-decisions at the population share that every user's share is shrunk towards."""
    index_level: float = 5.0
    """Alert when the shrunk share is this many times the population share ..."""
    critical_index: float = 10.0
    """... and call it critical from this level on."""
    min_hugs: int = 6
    """... and the user has at least this many hugging decisions in the category ..."""
    min_concentration: float = 0.5
    """... and their near-threshold mass is piled up against the threshold: of their decisions scored in
    ``[threshold*(1-3*band), threshold)``, the share in the top third (the hugging band), shrunk towards
    1/3 (what a flat score density gives). A legitimate user of a sensitive topic has a score density
    that falls off towards the threshold (share below 1/3); somebody tuning prompts to pass has one
    that rises into it."""
    min_significance: float = 6.0
    """... and that many hugs are this unlikely at the population share: ``-log10 P(X >= hugs)`` for X
    binomial(decisions, population share) (6: one in a million). Over weeks, thousands of user and
    category pairs each get many chances; this keeps chance runs of a few hugs from becoming alerts."""
    concentration_prior: float = 8.0
    """Pseudo-decisions at a share of 1/3 that the concentration is shrunk towards."""
    slow_burn_index: float = 3.0
    """The slow-burn path needs a smaller index (the CUSUM supplies the persistence evidence)."""
    min_population: int = 500
    """Warm-up: no verdicts in a tenant/category until the population has this many decisions."""
    population_floor: float = 0.002
    """Lower bound on the population share, so a category nobody hugs does not divide by ~0."""
    cusum_shift: float = 6.0
    """Slow burn: the CUSUM tests the population share against ``cusum_shift`` times it ..."""
    cusum_min_alternative: float = 0.12
    """... but never against less than this share, so mildly elevated benign users drift down."""
    cusum_level: float = 9.0
    """Alert when the CUSUM statistic (a log-likelihood ratio) reaches this."""
    half_life_days: float = 3.0
    """Event-time half-life of the EWMA share shown in alerts."""


class CategoryStats(msgspec.Struct, array_like=True):
    """One user's counters in one category (serialized as a compact array)."""

    decisions: int = 0
    hugs: int = 0
    blocks: int = 0
    ewma_decisions: float = 0.0
    ewma_hugs: float = 0.0
    cusum: float = 0.0
    near: int = 0  # allowed, with score in [threshold*(1-3*band), threshold*(1-band)): just below the band
    first_ts: int = 0
    last_ts: int = 0
    first_hug_ts: int = 0


class PopulationStats(msgspec.Struct, array_like=True):
    decisions: int = 0
    hugs: int = 0


class QuietGroup(msgspec.Struct, array_like=True):
    """Categories a user was scored in, always well under the threshold (never hugging, blocked or near), in
    exactly the same decisions. Their CategoryStats would be identical and hold nothing but the decision
    count, its EWMA and the first and last time, so the group keeps those once for all of them (most users
    never come near any threshold: one group instead of a record per category of the taxonomy)."""

    categories: list[str]
    decisions: int = 0
    ewma_decisions: float = 0.0
    last_ts: int = 0
    span: int = 0  # last_ts - first_ts (a few bytes where first_ts takes nine)

    def stats(self) -> CategoryStats:
        """What one member's own counters would be."""
        return CategoryStats(
            decisions=self.decisions,
            ewma_decisions=self.ewma_decisions,
            first_ts=self.last_ts - self.span,
            last_ts=self.last_ts,
        )


class HuggingUser(msgspec.Struct, omit_defaults=True):
    """A user's counters: their own in ``categories`` for every category they ever hugged, were blocked or came
    near in; the rest shared in ``quiet`` groups. A category leaves its group, with the group's counters, at
    the first decision that hugs, blocks or comes near it there, so every count equals one kept per category
    from the start (:func:`category_stats` gives either).

    ``pending`` holds the decisions not yet folded into those counters: quiet ones (every category quiet), as
    ``[ts_ms, layout index, ts_ms, layout index, ...]``. In memory only: :meth:`BoundaryHugging.settle_user` folds
    them in before anything reads the counters, and the engine before it encodes the state."""

    categories: dict[str, CategoryStats] = msgspec.field(default_factory=dict)
    quiet: list[QuietGroup] = msgspec.field(default_factory=list, name="q")
    pending: list[int] = msgspec.field(default_factory=list, name="w")

    def __post_init__(self) -> None:
        if self.categories:  # e.g. decoded from a blob written before quiet groups: a record per category
            _regroup(self)


def _is_quiet(stats: CategoryStats) -> bool:
    return not (stats.hugs or stats.blocks or stats.near or stats.first_hug_ts or stats.cusum or stats.ewma_hugs)


def _regroup(user: HuggingUser) -> None:
    """Move categories whose own counters are a quiet group's (all but the four a group keeps at their
    defaults) into groups of equal counters. Their future is the same either way."""
    groups: dict[tuple[int, float, int, int], QuietGroup] = {}
    for category, stats in list(user.categories.items()):
        if _is_quiet(stats):
            key = (stats.decisions, stats.ewma_decisions, stats.first_ts, stats.last_ts)
            group = groups.get(key)
            if group is None:
                span = stats.last_ts - stats.first_ts
                group = groups[key] = QuietGroup([], stats.decisions, stats.ewma_decisions, stats.last_ts, span)
            group.categories.append(category)
            del user.categories[category]
    user.quiet.extend(groups.values())


def _settled(user: HuggingUser) -> None:
    if user.pending:
        raise ValueError("the user has decisions not yet folded in: BoundaryHugging.settle_user(user) first")


def category_stats(user: HuggingUser, category: str) -> CategoryStats | None:
    """The user's counters in a category (a copy when the category is in a quiet group); ``None``: never scored."""
    _settled(user)
    stats = user.categories.get(category)
    if stats is not None:
        return stats
    for group in user.quiet:
        if category in group.categories:
            return group.stats()
    return None


def all_category_stats(user: HuggingUser) -> dict[str, CategoryStats]:
    """Every category the user was scored in, with their counters (copies for those in quiet groups)."""
    _settled(user)
    out = {category: group.stats() for group in user.quiet for category in group.categories}
    out.update(user.categories)
    return out


class HuggingPopulation(msgspec.Struct, omit_defaults=True):
    """Per category *and policy* (see :func:`detectors.base.policy_key`): a threshold change starts a
    new baseline (with its own warm-up) instead of making everybody look like a hugger."""

    baselines: dict[str, PopulationStats] = msgspec.field(default_factory=dict)
    pending: dict[int, int] = msgspec.field(default_factory=dict)
    """Quiet decisions not yet in ``baselines``, per :class:`detectors.base.Layout` index (a layout is in here once
    a decision of it created its baselines). In memory only: :meth:`BoundaryHugging.settle` folds them in and
    empties it before the state is stored."""


def population_share(pop: PopulationStats, cfg: HuggingConfig) -> float:
    return max(cfg.population_floor, (pop.hugs + 0.5) / (pop.decisions + 1.0))


def hugging_index(stats: CategoryStats, pop_share: float, cfg: HuggingConfig) -> float:
    """The user's shrunk hugging share as a multiple of the population share."""
    shrunk = (stats.hugs + cfg.prior_strength * pop_share) / (stats.decisions + cfg.prior_strength)
    return shrunk / pop_share


def concentration(stats: CategoryStats, cfg: HuggingConfig) -> float:
    """Share of the user's near-threshold decisions that sit in the hugging band, shrunk towards 1/3."""
    k = cfg.concentration_prior
    return (stats.hugs + k / 3.0) / (stats.hugs + stats.near + k)


def _own_stats(user: HuggingUser, category: str, ts_ms: int) -> CategoryStats:
    """Counters of its own for a category leaving its quiet group (or scored for the first time)."""
    for i, group in enumerate(user.quiet):
        if category in group.categories:
            group.categories.remove(category)
            if not group.categories:
                del user.quiet[i]
            return group.stats()
    return CategoryStats(first_ts=ts_ms, last_ts=ts_ms)


MAX_PENDING = 512
"""Entries of ``HuggingUser.pending`` (two per decision) after which the run is folded in at once, whoever reads."""


class BoundaryHugging:
    """Per-user, per-category hugging index and slow-burn CUSUM against the population."""

    name: ClassVar[str] = "boundary_hugging"
    state_key: ClassVar[str] = "h"
    slow_burn_name: ClassVar[str] = "boundary_hugging_slow_burn"
    emits: ClassVar[tuple[str, ...]] = (name, slow_burn_name)
    user_state: ClassVar[type[msgspec.Struct]] = HuggingUser
    population_state: ClassVar[type[msgspec.Struct]] = HuggingPopulation

    def __init__(self, cfg: HuggingConfig | None = None) -> None:
        self.cfg = cfg or HuggingConfig()
        self._half_life_ms = self.cfg.half_life_days * DAY_MS
        self._keys: dict[tuple[str, str | None, float], str] = {}  # baseline keys, built once per policy
        self._layout_keys: dict[int, list[str]] = {}  # the baseline keys of a layout's categories, in order
        self._key_maps: dict[int, dict[str, str]] = {}
        self._layouts_with: dict[str, list[int]] = {}  # baseline key -> the layouts with that key
        self.hot_floor = max(0.0, 1.0 - 3.0 * self.cfg.band)  # below: not hugging, blocked nor near

    def update(self, user: HuggingUser, population: HuggingPopulation, obs: Observation) -> list[Finding]:
        """Fold one decision into the user's and the population's counters; return findings while the
        user is over a level (the alert book turns repeats into updates)."""
        event, ts_ms = obs.event, obs.ts_ms
        if event.stage not in THRESHOLD_STAGES:
            return []
        layout = obs.layout
        pending = population.pending
        if (
            layout is not None
            and obs.hot is not None
            and layout.index in pending
            and obs.band == self.cfg.band
            and (not obs.hot or self._quiet(obs.hot, event.thresholds))
        ):
            # Every category quiet (not hugging, blocked or near): the population counts the decision per layout,
            # and the user's counters take it later, with the other quiet decisions of theirs in the batch
            # (settle_user: one pass per category instead of one per decision). Exactly what the loop in _fold does
            # for such a decision. Only the CUSUMs read the population, which later decisions of other users
            # change: a category's is stepped now (it is apart from every counter settle_user folds).
            pending[layout.index] += 1
            if user.categories:
                self._lower_cusums(user.categories, population, layout.index)
            waiting = user.pending
            waiting += (ts_ms, layout.index)
            if len(waiting) >= MAX_PENDING:  # a path that never encodes (guardstream eval) must not grow without end
                self.settle_user(user)
            return []
        self._flush(population)
        findings = self._fold(user, population, obs)
        if layout is not None and layout.index >= 0 and obs.band == self.cfg.band and layout.index not in pending:
            self._baseline_keys(layout.index)  # known in _layouts_with before any count of it is read
            pending[layout.index] = 0  # its baselines exist now
        return findings

    def _quiet(self, hot: list[CategoryOutcome], thresholds: dict[str, float]) -> bool:
        near_floor = 1.0 - 3.0 * self.cfg.band
        return all(not (h or b or s >= near_floor * thresholds[c]) for c, s, h, b in hot)

    def _lower_cusums(self, own: dict[str, CategoryStats], population: HuggingPopulation, index: int) -> None:
        """A quiet decision's step of the CUSUM, in the categories of the user's own that it scored and that have
        one above 0 (a decision that does not hug only lowers a CUSUM, which stops at 0)."""
        keys = None
        for category, stats in own.items():
            if stats.cusum == 0.0:
                continue
            if keys is None:
                keys = self._key_map(index)
            key = keys.get(category)
            if key is None:
                continue  # not scored in this decision
            pop = population.baselines[key]
            decisions = pop.decisions
            for layout in self._layouts_with[key]:
                decisions += population.pending.get(layout, 0)
            if decisions < self.cfg.min_population:
                continue
            p0, p1 = self._shares(pop.hugs, decisions)
            if p1 > p0:
                stats.cusum = max(0.0, stats.cusum + math.log((1.0 - p1) / (1.0 - p0)))

    def _shares(self, hugs: int, decisions: int) -> tuple[float, float]:
        """The CUSUM's two hypotheses: the population's hugging share (:func:`population_share` of these counts) and
        the share it is tested against."""
        cfg = self.cfg
        p0 = (hugs + 0.5) / (decisions + 1.0)
        if p0 < cfg.population_floor:
            p0 = cfg.population_floor
        return p0, min(0.5, max(cfg.cusum_shift * p0, cfg.cusum_min_alternative))

    def settle_user(self, user: HuggingUser) -> None:
        """Fold the user's pending quiet decisions into their counters, in order: each own category in one pass
        over the decisions that scored it, then the quiet groups. Every value comes out as _fold's would, one
        decision at a time (the same operations on each counter, in the same order)."""
        pending = user.pending
        if not pending:
            return
        user.pending = []
        times = pending[0::2]
        indices = pending[1::2]
        one_layout = indices.count(indices[0]) == len(indices)
        own = user.categories
        if own:
            if one_layout:
                keys = self._key_map(indices[0])
                steps, _ = self._decays(times[0], times[1:])
                for category, stats in own.items():
                    if category in keys:
                        self._replay(stats, times, steps)
            else:
                maps = [self._key_map(index) for index in indices]
                for category, stats in own.items():
                    scored = [ts for ts, keys in zip(times, maps, strict=True) if category in keys]
                    if scored:
                        self._replay(stats, scored, self._decays(scored[0], scored[1:])[0])
        quiet_of: dict[int, list[str]] = {}
        for i, (ts_ms, index) in enumerate(zip(times, indices, strict=True)):
            quiet = quiet_of.get(index)
            if quiet is None:
                categories = LAYOUTS[index].categories
                quiet = quiet_of[index] = [c for c in categories if c not in own] if own else categories
            if quiet:
                groups = user.quiet
                if len(groups) == 1 and groups[0].categories == quiet:
                    if one_layout:  # the usual case: the same group for every decision left
                        self._replay_group(groups[0], times[i:])
                        break
                    self._fold_group(groups[0], ts_ms)
                else:
                    self._fold_groups(user, quiet, ts_ms)

    def _decays(self, last_ts: int, times: list[int]) -> tuple[list[float], int]:
        """The decay at each of a run's decisions for counters last updated at ``last_ts`` (1 where event time did
        not move on: ``last_ts`` only grows), and the ``last_ts`` they end with. _fold's expression, step by step."""
        half_life_ms = self._half_life_ms
        decays = []
        for ts_ms in times:
            if ts_ms > last_ts:
                decays.append(0.5 ** ((ts_ms - last_ts) / half_life_ms))
                last_ts = ts_ms
            else:
                decays.append(1.0)
        return decays, last_ts

    def _replay(self, stats: CategoryStats, times: list[int], steps: list[float]) -> None:
        """_fold's arithmetic for a run of quiet decisions in one category of the user's own. ``steps``: the decays
        after the run's first decision, shared by every category last updated no later than it (the usual case)."""
        if stats.last_ts <= times[0]:
            decays, _ = self._decays(stats.last_ts, times[:1])
            decays += steps
            last_ts = max(times)
        else:  # counters ahead of the run's first decision (event time out of order)
            decays, last_ts = self._decays(stats.last_ts, times)
        ewma_decisions = stats.ewma_decisions
        for decay in decays:
            ewma_decisions = ewma_decisions * decay + 1.0
        ewma_hugs = stats.ewma_hugs
        if ewma_hugs:  # 0 * decay + 0 stays 0
            for decay in decays:
                ewma_hugs = ewma_hugs * decay + 0.0
        stats.decisions += len(times)
        stats.ewma_decisions, stats.ewma_hugs, stats.last_ts = ewma_decisions, ewma_hugs, last_ts

    def _replay_group(self, group: QuietGroup, times: list[int]) -> None:
        """_fold_group for a run of quiet decisions (its span grows by what its ``last_ts`` moves)."""
        decays, last_ts = self._decays(group.last_ts, times)
        ewma_decisions = group.ewma_decisions
        for decay in decays:
            ewma_decisions = ewma_decisions * decay + 1.0
        group.decisions += len(times)
        group.span += last_ts - group.last_ts
        group.ewma_decisions, group.last_ts = ewma_decisions, last_ts

    def settle(self, population: HuggingPopulation) -> None:
        self._flush(population)
        population.pending.clear()

    def _flush(self, population: HuggingPopulation) -> None:
        baselines = population.baselines
        pending = population.pending
        for index, count in pending.items():
            if count:
                for key in self._baseline_keys(index):
                    baselines[key].decisions += count
                pending[index] = 0

    def _baseline_keys(self, index: int) -> list[str]:
        keys = self._layout_keys.get(index)
        if keys is None:
            layout = LAYOUTS[index]
            keys = self._layout_keys[index] = [
                category + "|" + policy_key_of(layout.policy_version, threshold)
                for category, threshold in zip(layout.categories, layout.thresholds, strict=True)
            ]
            self._key_maps[index] = dict(zip(layout.categories, keys, strict=True))
            for key in keys:
                self._layouts_with.setdefault(key, []).append(index)
        return keys

    def _key_map(self, index: int) -> dict[str, str]:
        """category -> baseline key, for one layout"""
        keys = self._key_maps.get(index)
        if keys is None:
            self._baseline_keys(index)
            keys = self._key_maps[index]
        return keys

    def _fold(self, user: HuggingUser, population: HuggingPopulation, obs: Observation) -> list[Finding]:
        """Every category of the decision, one by one."""
        if user.pending:
            self.settle_user(user)
        event, ts_ms = obs.event, obs.ts_ms
        findings: list[Finding] = []
        cfg = self.cfg
        outcomes = obs.outcomes if obs.band == cfg.band else category_outcomes(event, cfg.band)
        thresholds = event.thresholds
        near_floor = 1.0 - 3.0 * cfg.band
        baselines = population.baselines
        user_categories = user.categories
        min_population = cfg.min_population
        half_life_ms = self._half_life_ms
        keys = self._keys
        policy_version = event.policy_version
        quiet: list[str] = []
        for category, score, hugging, blocked in outcomes:
            threshold = thresholds[category]
            memo = (category, policy_version, threshold)
            key = keys.get(memo)
            if key is None:
                if len(keys) >= 4096:
                    keys.clear()
                key = keys[memo] = category + "|" + policy_key(event, category)
            pop = baselines.get(key)
            if pop is None:
                pop = baselines[key] = PopulationStats()
            pop.decisions += 1
            pop.hugs += hugging
            near = not hugging and not blocked and score >= near_floor * threshold
            stats = user_categories.get(category)
            if stats is None:
                if not (hugging or blocked or near):
                    # Still quiet: its counters are its group's, folded once for the group below. Its CUSUM
                    # stays 0 (a decision that does not hug can only lower it, and it is floored at 0).
                    quiet.append(category)
                    continue
                stats = user_categories[category] = _own_stats(user, category, ts_ms)
            # the fold, inlined (this loop runs once per category of every decision)
            stats.decisions += 1
            if hugging:
                stats.hugs += 1
                if stats.hugs == 1:
                    stats.first_hug_ts = ts_ms
            if blocked:
                stats.blocks += 1
            elapsed = ts_ms - stats.last_ts
            decay = 0.5 ** (elapsed / half_life_ms) if elapsed > 0 else 1.0
            stats.ewma_decisions = stats.ewma_decisions * decay + 1.0
            stats.ewma_hugs = stats.ewma_hugs * decay + hugging
            if ts_ms > stats.last_ts:
                stats.last_ts = ts_ms
            if near:
                stats.near += 1
            if not hugging and stats.cusum == 0.0:
                continue  # the CUSUM can only fall, and stops at 0; only a hugging decision changes a verdict
            if pop.decisions < min_population:
                continue  # warm-up: the population share is not yet worth comparing against
            p0, p1 = self._shares(pop.hugs, pop.decisions)
            if p1 > p0:
                llr = math.log(p1 / p0) if hugging else math.log((1.0 - p1) / (1.0 - p0))
                stats.cusum = max(0.0, stats.cusum + llr)
            if not hugging:
                continue  # verdicts can only change on a hugging decision
            finding = self._decide(event, category, stats, p0, ts_ms)
            if finding is not None:
                findings.append(finding)
        if quiet:
            groups = user.quiet
            if len(groups) == 1 and groups[0].categories == quiet:  # the usual case: the same taxonomy again
                self._fold_group(groups[0], ts_ms)
            else:
                self._fold_groups(user, quiet, ts_ms)
        return findings

    def _fold_group(self, group: QuietGroup, ts_ms: int) -> None:
        """The fold of a quiet category (a decision that does not hug, block or come near), once for the group."""
        elapsed = ts_ms - group.last_ts
        decay = 0.5 ** (elapsed / self._half_life_ms) if elapsed > 0 else 1.0
        group.ewma_decisions = group.ewma_decisions * decay + 1.0
        group.decisions += 1
        if ts_ms > group.last_ts:
            group.span += elapsed
            group.last_ts = ts_ms

    def _fold_groups(self, user: HuggingUser, quiet: list[str], ts_ms: int) -> None:
        """Fold a decision into the groups of its quiet categories: a group only some of whose categories it
        scored splits in two, and categories never scored before start a group of their own."""
        scored = set(quiet)
        groups: list[QuietGroup] = []
        for group in user.quiet:
            inside = [c for c in group.categories if c in scored]
            if inside:
                if len(inside) < len(group.categories):
                    rest = [c for c in group.categories if c not in scored]
                    groups.append(QuietGroup(rest, group.decisions, group.ewma_decisions, group.last_ts, group.span))
                    group.categories = inside
                self._fold_group(group, ts_ms)
                scored.difference_update(inside)
            groups.append(group)
        if scored:
            group = QuietGroup([c for c in quiet if c in scored], last_ts=ts_ms)
            self._fold_group(group, ts_ms)
            groups.append(group)
        user.quiet = groups

    def _decide(self, event: Decision, category: str, stats: CategoryStats, p0: float, ts_ms: int) -> Finding | None:
        cfg = self.cfg
        if stats.hugs < cfg.min_hugs or concentration(stats, cfg) < cfg.min_concentration:
            return None
        if binomial_tail_log10(stats.hugs, stats.decisions, p0) < cfg.min_significance:
            return None
        index = hugging_index(stats, p0, cfg)
        if index >= cfg.index_level:
            severity = "critical" if index >= cfg.critical_index else "warning"
            return self._finding(self.name, severity, index, event, category, stats, p0, ts_ms)
        if stats.cusum >= cfg.cusum_level and index >= cfg.slow_burn_index:
            severity = "critical" if stats.cusum >= 2 * cfg.cusum_level else "warning"
            return self._finding(self.slow_burn_name, severity, stats.cusum, event, category, stats, p0, ts_ms)
        return None

    def _finding(
        self,
        detector: str,
        severity: str,
        score: float,
        event: Decision,
        category: str,
        stats: CategoryStats,
        p0: float,
        ts_ms: int,
    ) -> Finding:
        cfg = self.cfg
        days = max(0.0, (ts_ms - stats.first_hug_ts) / DAY_MS)
        threshold = event.thresholds[category]
        share = stats.hugs / stats.decisions
        trend = stats.ewma_hugs / stats.ewma_decisions if stats.ewma_decisions else 0.0
        reason = (
            f"{stats.hugs} of {stats.decisions} {category} decisions landed within "
            f"{cfg.band:.0%} under the {threshold:.2f} threshold over {days:.1f} days "
            f"({share:.1%}; recent {trend:.1%}); population share {p0:.1%}; "
            f"{stats.hugs} in the band vs {stats.near} just below it; "
            + (f"index {score:.1f}x" if detector == self.name else f"slow-burn CUSUM {score:.1f}")
        )
        return Finding(
            detector=detector,
            tenant=event.tenant,
            user_id=event.user_id,
            category=category,
            severity=severity,
            score=round(score, 4),
            reason=reason,
            ts_ms=ts_ms,
            evidence={
                "decisions": stats.decisions,
                "hugs": stats.hugs,
                "blocks": stats.blocks,
                "share": round(share, 6),
                "recent_share": round(trend, 6),
                "population_share": round(p0, 6),
                "cusum": round(stats.cusum, 4),
                "near": stats.near,
                "concentration": round(concentration(stats, cfg), 4),
                "significance_log10": round(binomial_tail_log10(stats.hugs, stats.decisions, p0), 2),
                "first_hug_ts_ms": stats.first_hug_ts,
                "threshold": threshold,
                "band": cfg.band,
            },
            action={
                "type": "throttle",
                "category": category,
                "second_pass_judge": True,
                "summary": f"rate-limit this user's {category} requests and send them to a second-pass judge",
            },
        )
