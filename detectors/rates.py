"""Category rate anomaly: rate limits by output category, not only by request count.

A gateway's request-count limit does not see a user who keeps a plausible total volume but pours it into
one category (say, getting S12 answers out of the model forty times an hour). This detector keeps, per
user, per screening stage and per category, event-time daily counts of *elevated* decisions (score at
least ``elevated_fraction`` of the block threshold, blocked ones included) and of blocked ones, and two
verdicts:

(a) **volume**: the elevated count over the last 24 h of event time is far above the user's own history,
    an event-time EWMA of daily counts (half-life ``half_life_days``) divided by the EWMA of days observed.
    Scored as ``-log10`` of a Poisson tail probability; needs ``min_elevated`` decisions and a ratio of
    ``volume_ratio`` so small numbers never trigger, and ``min_history_days`` of the user's own history
    (warm-up, said so in the evidence).
(b) **block rate**: the user's block rate in the category over the last 24 h is far above the population's
    (per tenant, stage, category and policy, see :func:`detectors.base.policy_key`; binomial tail) *and*
    shifted against the user's own history: their daily blocks against their own block EWMA under the same
    policy, or, when the policy changed under them, their elevated volume against their own. A brand-new
    user has no history to shift from, so for them the population comparison alone decides: somebody who
    floods one category on their first day is still caught.

"The last 24 h" is a sliding-window estimate from two calendar-day buckets (UTC days of event time): today's
count plus yesterday's weighted by the part of yesterday still inside the window. Two buckets instead of a
ring of hours keep the state small and do not reset to zero at midnight.

Memory per user is bounded: at most three stage volumes and ``max_categories`` (stage, category) entries,
an entry existing only while the user has elevated decisions in it (entries whose history has decayed away
are dropped; at the cap, the one with the least history makes room). Per tenant at most ``max_baselines``
population baselines (the least recently seen is evicted).

Pure: state in, findings out. No clock: every time is the event's own (milliseconds since the epoch).
Events for a day before yesterday (by the user's latest event) are late: they count in the population
baseline but not in the user's daily buckets, which are already folded into the history.
"""

from __future__ import annotations

import math
from typing import ClassVar

import msgspec

from detectors.base import DAY_MS, LAYOUTS, THRESHOLD_STAGES, CategoryOutcome, Observation, policy_key, policy_key_of
from detectors.events import Decision
from detectors.findings import Finding
from detectors.stats import binomial_tail_log10, poisson_tail_log10

__all__ = [
    "CategoryRateAnomaly",
    "CategoryWindow",
    "RateConfig",
    "RatePopulation",
    "RateUser",
    "binomial_tail_log10",
    "poisson_tail_log10",
]


class RateConfig(msgspec.Struct, frozen=True, kw_only=True):
    elevated_fraction: float = 0.4
    """A decision is elevated in a category when its score is at least this share of the threshold (blocked
    ones included). Benign background scores almost never reach it (~0.1 % per category)."""
    half_life_days: float = 3.0
    """Event-time half-life of a user's daily-count history."""
    min_history_days: float = 0.5
    """Warm-up of the volume verdict (a): days of the user's own history (the first, partial day counts for
    the part after the user's first event) before today's count is compared with it. Half a day is enough
    with the other guards (``min_elevated``, ``volume_ratio``, ``dispersion``): on the simulator, a whole
    day of warm-up missed flooders that start on their second day, without removing any false alarm."""
    min_elevated: float = 12.0
    """(a) needs at least this many elevated decisions in the category in the last 24 h ..."""
    volume_ratio: float = 5.0
    """... at least this multiple of the user's own daily rate (also the shift (b) needs against history) ..."""
    volume_level: float = 6.0
    """... and a Poisson tail probability of at most ``10**-volume_level`` under that rate."""
    min_expected_per_day: float = 0.5
    """Floor on a user's own expected elevated (and blocked) decisions a day: an empty history is not zero."""
    dispersion: float = 2.0
    """Decisions come in sessions, so daily counts vary more than a Poisson count would: every tail
    probability is taken on the counts divided by this (the quasi-Poisson scale), which keeps a user
    with a few long sessions on a busy day from looking like a flood."""
    min_blocks: float = 5.0
    """(b) needs at least this many blocked decisions in the category in the last 24 h ..."""
    block_ratio: float = 5.0
    """... a block rate at least this multiple of the population's ..."""
    block_level: float = 6.0
    """... and binomial (against the population) and Poisson (against the user's own history) tail
    probabilities of at most ``10**-block_level``."""
    min_population: int = 1000
    """Warm-up of (b): a population baseline needs this many decisions before it is compared against."""
    population_floor: float = 0.001
    """Lower bound on the population block rate, so a category nobody trips does not divide by ~0."""
    critical_level: float = 12.0
    """A finding is critical from this score on (``-log10`` p), or when (a) and (b) both fire."""
    max_categories: int = 48
    """Per user, at most this many (stage, category) entries; beyond it the one with the least history is
    evicted (its history then reads as zero, so the cap is set above a full taxonomy's input and output)."""
    max_baselines: int = 512
    """Per tenant, at most this many population baselines; the least recently seen is evicted."""
    allowance_factor: float = 2.0
    """Suggested rate limit: this multiple of the user's own hourly elevated rate in the category ..."""
    min_allowance_per_hour: int = 2
    """... and never below this many an hour."""


class CategoryWindow(msgspec.Struct, array_like=True):
    """One user's counters in one (stage, category), serialized as a compact array."""

    policy: str = ""  # the policy_key the block counters belong to
    today_elevated: int = 0
    today_blocks: int = 0
    prev_elevated: int = 0  # yesterday's counts (0 when yesterday had no events at all)
    prev_blocks: int = 0
    ewma_elevated: float = 0.0  # EWMA-weighted daily counts of completed days
    ewma_blocks: float = 0.0
    block_exposure: float = 0.0  # EWMA-weighted days of block history under ``policy``
    last_ts: int = 0


class StageVolume(msgspec.Struct, array_like=True):
    """A user's decisions at one stage today and yesterday (block rates are per decision at that stage)."""

    today: int = 0
    prev: int = 0


class RateUser(msgspec.Struct, omit_defaults=True):
    day: int = 0  # the event-time day (ts // DAY_MS) the ``today`` buckets belong to
    first_ts: int = 0  # 0: no event yet
    exposure: float = 0.0  # EWMA-weighted days of history (completed days only)
    stages: dict[str, StageVolume] = msgspec.field(default_factory=dict)
    windows: dict[str, CategoryWindow] = msgspec.field(default_factory=dict)  # "stage|category"
    checked: list[int] = msgspec.field(default_factory=list, name="c")
    """The (layout, stage) slots that ``windows`` agree with: quiet decisions of these slots found no window under
    another policy since ``windows`` last changed (a decision that is not quiet, or a quiet one that moved a
    window to its slot's policy), so the next one need not look. In memory only:
    :meth:`CategoryRateAnomaly.settle_user` empties it before the state is stored."""


class Baseline(msgspec.Struct, array_like=True):
    decisions: int = 0
    blocks: int = 0
    last_ts: int = 0


class RatePopulation(msgspec.Struct, omit_defaults=True):
    """Keyed ``stage|category|policy_key``: a threshold change starts a new baseline with its own warm-up."""

    baselines: dict[str, Baseline] = msgspec.field(default_factory=dict)
    pending: dict[int, list[int]] = msgspec.field(default_factory=dict)
    """Quiet decisions not yet in ``baselines``: [count, latest ts] per (layout, stage) slot whose baselines exist.
    In memory only: :meth:`CategoryRateAnomaly.settle` folds them in and empties it before the state is stored."""


_STAGE_SLOTS = {"input": 0, "output": 1, "tool": 2}


def _history(window: CategoryWindow) -> float:
    return window.ewma_elevated + window.today_elevated + window.prev_elevated


def _per_day(rate: float) -> str:
    return f"{rate:.2f}" if rate < 1.0 else f"{rate:.1f}"


class CategoryRateAnomaly:
    """Per user and (stage, category): a daily volume jump against the user's own history, and a block-rate
    shift against the population's and the user's own."""

    name: ClassVar[str] = "category_rate"
    state_key: ClassVar[str] = "r"
    emits: ClassVar[tuple[str, ...]] = (name,)
    user_state: ClassVar[type[msgspec.Struct]] = RateUser
    population_state: ClassVar[type[msgspec.Struct]] = RatePopulation

    def __init__(self, cfg: RateConfig | None = None) -> None:
        self.cfg = cfg or RateConfig()
        self._decay = 0.5 ** (1.0 / self.cfg.half_life_days)
        # (stage, category, policy_version, threshold) -> (policy, baseline key, window key): built once
        self._keys: dict[tuple[str, str, str | None, float], tuple[str, str, str]] = {}
        self._slot_keys: dict[int, list[str]] = {}  # a (layout, stage) slot's baseline keys, in order
        self._slot_policies: dict[int, dict[str, str]] = {}  # a slot's window key -> policy key
        self.hot_floor = min(1.0, self.cfg.elevated_fraction)  # below: neither elevated nor blocked

    def update(self, user: RateUser, population: RatePopulation, obs: Observation) -> list[Finding]:
        """Fold one decision into the user's daily buckets and the population baselines; return a finding
        for every category where the user is over a level (the alert book turns repeats into updates)."""
        event, ts_ms = obs.event, obs.ts_ms
        findings: list[Finding] = []
        stage = event.stage
        if stage not in THRESHOLD_STAGES:
            return findings
        day = ts_ms // DAY_MS
        if user.first_ts == 0:
            user.first_ts, user.day = ts_ms, day
        elif day > user.day:
            self._roll(user, day)
        # 0: today, 1: yesterday (counts in the prev buckets), 2+: too late for the buckets
        lag = user.day - day
        volume = user.stages.get(stage)
        if volume is None:
            volume = user.stages[stage] = StageVolume()
        if lag == 0:
            volume.today += 1
        elif lag == 1:
            volume.prev += 1
        layout = obs.layout
        slot = -1 if layout is None or layout.index < 0 else layout.index * 4 + _STAGE_SLOTS[stage]
        if obs.hot is not None and slot >= 0:
            counts = population.pending.get(slot)
            if counts is not None and (not obs.hot or self._quiet(obs.hot, event.thresholds)):
                # No category elevated or blocked: all the loop in _fold does is add the decision to each category's
                # baseline (counted per (layout, stage) until settled) and restart the block counts of a window
                # kept under another policy.
                counts[0] += 1
                if ts_ms > counts[1]:
                    counts[1] = ts_ms
                if user.windows and slot not in user.checked:
                    if self._reset_moved_policies(user.windows, slot):
                        user.checked = [slot]  # windows the other slots were checked against may have moved
                    else:
                        user.checked.append(slot)
                return findings
        self._flush(population)
        if user.checked:
            user.checked = []
        findings = self._fold(user, population, obs, volume, lag)
        if slot >= 0 and slot not in population.pending:
            baselines = population.baselines
            if all(key in baselines for key in self._baseline_keys(slot)):
                population.pending[slot] = [0, 0]
        return findings

    def settle_user(self, user: RateUser) -> None:
        """Before the state is stored: nothing is pending, only the in-memory ``checked`` goes back to its default."""
        if user.checked:
            user.checked = []

    def _reset_moved_policies(self, windows: dict[str, CategoryWindow], slot: int) -> bool:
        """Restart the block counts of windows kept under a policy other than the slot's; whether any was."""
        policies = self._slot_policies[slot]  # window key -> policy key, for the slot's stage and categories
        moved = False
        for window_key, window in windows.items():
            policy = policies.get(window_key)
            if policy is not None and window.policy != policy:
                window.policy = policy
                window.today_blocks = window.prev_blocks = 0
                window.ewma_blocks = window.block_exposure = 0.0
                moved = True
        return moved

    def _quiet(self, hot: list[CategoryOutcome], thresholds: dict[str, float]) -> bool:
        fraction = self.cfg.elevated_fraction
        return all(s < fraction * thresholds[c] and s < thresholds[c] for c, s, _h, _b in hot)

    def settle(self, population: RatePopulation) -> None:
        self._flush(population)
        population.pending.clear()

    def _flush(self, population: RatePopulation) -> None:
        baselines = population.baselines
        for slot, counts in population.pending.items():
            count, latest = counts
            if count:
                for key in self._baseline_keys(slot):
                    pop = baselines[key]
                    pop.decisions += count
                    if latest > pop.last_ts:
                        pop.last_ts = latest
                counts[0] = counts[1] = 0

    def _baseline_keys(self, slot: int) -> list[str]:
        keys = self._slot_keys.get(slot)
        if keys is None:
            layout = LAYOUTS[slot // 4]
            stage = next(name for name, code in _STAGE_SLOTS.items() if code == slot % 4)
            policies = [policy_key_of(layout.policy_version, threshold) for threshold in layout.thresholds]
            keys = self._slot_keys[slot] = [
                f"{stage}|{category}|{policy}" for category, policy in zip(layout.categories, policies, strict=True)
            ]
            self._slot_policies[slot] = {
                f"{stage}|{category}": policy for category, policy in zip(layout.categories, policies, strict=True)
            }
        return keys

    def _fold(
        self, user: RateUser, population: RatePopulation, obs: Observation, volume: StageVolume, lag: int
    ) -> list[Finding]:
        """Every category of the decision, one by one."""
        event, ts_ms = obs.event, obs.ts_ms
        findings: list[Finding] = []
        stage = event.stage
        cfg = self.cfg
        baselines = population.baselines
        windows = user.windows
        thresholds = event.thresholds
        keys = self._keys
        for category, score in event.scores.items():
            threshold = thresholds.get(category)
            if threshold is None:
                continue
            blocked = score >= threshold
            memo = (stage, category, event.policy_version, threshold)
            cached = keys.get(memo)
            if cached is None:
                if len(keys) >= 4096:
                    keys.clear()
                policy = policy_key(event, category)
                cached = keys[memo] = (policy, f"{stage}|{category}|{policy}", f"{stage}|{category}")
            policy, key, window_key = cached
            pop = baselines.get(key)
            if pop is None:
                if len(baselines) >= cfg.max_baselines:
                    del baselines[min(baselines, key=lambda k: (baselines[k].last_ts, k))]
                    population.pending.clear()  # (flushed) a layout may have lost a baseline: count it again
                pop = baselines[key] = Baseline()
            pop.decisions += 1
            pop.blocks += blocked
            pop.last_ts = max(pop.last_ts, ts_ms)
            window = windows.get(window_key)
            if window is not None and window.policy != policy:
                # Blocks under another threshold say nothing about blocks under this one: start again.
                window.policy = policy
                window.today_blocks = window.prev_blocks = 0
                window.ewma_blocks = window.block_exposure = 0.0
            if score < cfg.elevated_fraction * threshold or lag > 1:
                continue
            if window is None:
                if len(windows) >= cfg.max_categories:
                    del windows[min(windows, key=lambda k: (_history(windows[k]), windows[k].last_ts, k))]
                # No entry means no elevated decision in this category over the user's whole history so far.
                window = windows[window_key] = CategoryWindow(policy=policy, block_exposure=user.exposure)
            window.last_ts = max(window.last_ts, ts_ms)
            if lag == 0:
                window.today_elevated += 1
                window.today_blocks += blocked
            else:
                window.prev_elevated += 1
                window.prev_blocks += blocked
                continue  # yesterday's events do not move today's verdict
            finding = self._decide(event, category, user, window, volume, pop, ts_ms)
            if finding is not None:
                findings.append(finding)
        return findings

    def _roll(self, user: RateUser, day: int) -> None:
        """Close the day in the ``today`` buckets (and any empty days after it) into the history."""
        decay = self._decay
        gap = day - user.day
        day_start = user.day * DAY_MS
        observed = min(1.0, (day_start + DAY_MS - user.first_ts) / DAY_MS) if user.first_ts > day_start else 1.0
        skip = decay ** (gap - 1)
        empty_days = (1.0 - skip) / (1.0 - decay)  # exposure of the days without a single event
        user.exposure = (user.exposure * decay + observed) * skip + empty_days
        for volume in user.stages.values():
            volume.prev = volume.today if gap == 1 else 0
            volume.today = 0
        stale: list[str] = []
        for key, window in user.windows.items():
            window.ewma_elevated = (window.ewma_elevated * decay + window.today_elevated) * skip
            window.ewma_blocks = (window.ewma_blocks * decay + window.today_blocks) * skip
            window.block_exposure = (window.block_exposure * decay + observed) * skip + empty_days
            if gap == 1:
                window.prev_elevated, window.prev_blocks = window.today_elevated, window.today_blocks
            else:
                window.prev_elevated = window.prev_blocks = 0
            window.today_elevated = window.today_blocks = 0
            if window.ewma_elevated < 0.05 and window.prev_elevated == 0:
                stale.append(key)  # indistinguishable from no entry at all
        for key in stale:
            del user.windows[key]
        user.day = day

    def _poisson(self, count: float, expected: float) -> float:
        phi = self.cfg.dispersion
        return poisson_tail_log10(count / phi, expected / phi)

    def _decide(
        self,
        event: Decision,
        category: str,
        user: RateUser,
        window: CategoryWindow,
        volume: StageVolume,
        base: Baseline | None,
        ts_ms: int,
    ) -> Finding | None:
        cfg = self.cfg
        phi = cfg.dispersion
        carry = 1.0 - (ts_ms - user.day * DAY_MS) / DAY_MS  # the part of yesterday still in the last 24 h
        elevated = window.today_elevated + carry * window.prev_elevated
        blocks = window.today_blocks + carry * window.prev_blocks
        decisions = volume.today + carry * volume.prev
        warm = user.exposure >= cfg.min_history_days
        own_rate = window.ewma_elevated / user.exposure if user.exposure > 0.0 else 0.0
        expected = max(cfg.min_expected_per_day, own_rate)

        volume_score = 0.0
        if warm and elevated >= cfg.min_elevated and elevated >= cfg.volume_ratio * expected:
            volume_score = self._poisson(elevated, expected)

        block_score, pop_rate, shift = 0.0, None, "new"
        own_blocks = None
        if base is not None and base.decisions >= cfg.min_population:
            pop_rate = max(cfg.population_floor, (base.blocks + 0.5) / (base.decisions + 1.0))
        if (
            pop_rate is not None
            and blocks >= cfg.min_blocks
            and decisions > 0
            and blocks / decisions >= cfg.block_ratio * pop_rate
        ):
            against_population = binomial_tail_log10(blocks / phi, decisions / phi, pop_rate)
            if window.block_exposure >= cfg.min_history_days:
                shift = "blocks"
                own_blocks = max(cfg.min_expected_per_day, window.ewma_blocks / window.block_exposure)
                against_own = self._poisson(blocks, own_blocks) if blocks >= cfg.volume_ratio * own_blocks else 0.0
            elif warm:
                # The policy changed under this user: their block history is void, their volume is not.
                shift = "volume"
                against_own = self._poisson(elevated, expected) if elevated >= cfg.volume_ratio * expected else 0.0
            else:
                against_own = math.inf  # a brand-new user: the population is the only yardstick
            block_score = min(against_population, against_own)

        volume_hit = volume_score >= cfg.volume_level
        block_hit = block_score >= cfg.block_level
        if not (volume_hit or block_hit):
            return None
        score = min(99.0, max(volume_score, block_score))
        severity = "critical" if score >= cfg.critical_level or (volume_hit and block_hit) else "warning"
        stage = event.stage
        history_days = max(0.0, (user.day * DAY_MS - user.first_ts) / DAY_MS)  # completed days, as a person counts
        verdicts = [v for v, hit in (("volume", volume_hit), ("block_rate", block_hit)) if hit]
        reason = f"{elevated:.0f} elevated {category} {stage} decisions ({blocks:.0f} blocked) in the last 24h"
        if warm:
            reason += f" vs {_per_day(own_rate)}/day over the last {history_days:.1f} days"
        else:
            reason += f"; own history warming up ({user.exposure:.1f} of {cfg.min_history_days:.1f} days)"
        if pop_rate is not None and decisions > 0:
            reason += f"; block rate {blocks / decisions:.1%} of {decisions:.0f} vs population {pop_rate:.2%}"
            if own_blocks is not None:
                reason += f", own {_per_day(own_blocks)} blocks/day"
            elif shift == "volume" and block_hit:
                reason += " (policy changed: own volume as the yardstick)"
        labels = {"volume": "volume jump", "block_rate": "block-rate shift"}
        reason += f"; {' and '.join(labels[v] for v in verdicts)}, p<=1e-{math.floor(score):d}"
        hourly = (own_rate if warm else 0.0) / 24.0
        max_per_hour = max(cfg.min_allowance_per_hour, math.ceil(cfg.allowance_factor * hourly))
        return Finding(
            detector=self.name,
            tenant=event.tenant,
            user_id=event.user_id,
            category=category,
            severity=severity,
            score=round(score, 4),
            reason=reason,
            ts_ms=ts_ms,
            evidence={
                "stage": stage,
                "verdicts": verdicts,
                "elevated_24h": round(elevated, 3),
                "blocks_24h": round(blocks, 3),
                "decisions_24h": round(decisions, 3),
                "own_elevated_per_day": round(own_rate, 4),
                "own_blocks_per_day": None if own_blocks is None else round(own_blocks, 4),
                "history_days": round(history_days, 4),
                "history_weight_days": round(user.exposure, 4),
                "warm_up": not warm,
                "block_shift_against": shift,
                "population_block_rate": None if pop_rate is None else round(pop_rate, 6),
                "volume_score": round(min(99.0, volume_score), 4),
                "block_score": round(min(99.0, block_score), 4),
                "policy": window.policy,
                "elevated_fraction": cfg.elevated_fraction,
            },
            action={
                "type": "rate_limit",
                "category": category,
                "max_per_hour": max_per_hour,
                "summary": (
                    f"limit this user's {category} requests to {max_per_hour} an hour "
                    f"(they sent {elevated:.0f} elevated {stage} decisions in 24h)"
                ),
            },
        )
