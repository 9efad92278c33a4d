"""The detector contract: what every detector in ``detectors/`` looks like to the engine.

A detector is a small object with typed, serializable state per user (and per tenant for population
baselines). ``update`` folds one decision into that state and returns findings: plain data saying the
user looks like an attacker of some kind, with a score, a reason a person can act on and a suggested
action. Deciding what becomes an alert, and when it is updated, escalated or resolved, is the
:class:`detectors.alerts.AlertBook`'s job, not the detector's. No I/O, no clock, no global randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgspec

from detectors.events import Decision
from detectors.findings import Finding

CategoryOutcome = tuple[str, float, bool, bool]  # category, score, hugging, blocked

# Stages whose decisions apply a block threshold a user could be tuning against. A judge's second
# opinion repeats the scores of the output it judged, so counting it there would count that output twice.
THRESHOLD_STAGES = frozenset({"input", "output", "tool"})
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


def category_outcomes(event: Decision, band: float) -> list[CategoryOutcome]:
    """(category, score, hugging, blocked) for every category that has both a score and a threshold.

    Vocabulary of ``event-schema.md``: margin = threshold - score; a decision hugs a category when
    ``0 < margin <= band * threshold``; it is blocked there when ``margin <= 0``."""
    thresholds = event.thresholds
    out: list[CategoryOutcome] = []
    for category, score in event.scores.items():
        threshold = thresholds.get(category)
        if threshold is None:
            continue
        margin = threshold - score
        out.append((category, score, 0.0 < margin <= band * threshold, margin <= 0.0))
    return out


def peak(outcomes: list[CategoryOutcome], thresholds: dict[str, float]) -> tuple[str | None, float]:
    """The category with the highest score/threshold ratio, and that ratio (first one wins a tie)."""
    best: str | None = None
    ratio = 0.0
    for category, score, _hug, _blk in outcomes:
        r = score / thresholds[category]
        if r > ratio:
            best, ratio = category, r
    return best, ratio


class Layout:
    """What decisions scored the same way share: the categories they score that have a threshold (in score
    order), those thresholds and the policy version. Interned by :func:`layout_of` (one object per distinct
    layout), so a detector can prepare per-layout work once (baseline keys) and count a whole layout at once.

    ``index`` is the layout's number in this process (-1 once :data:`MAX_LAYOUTS` are known: producers that vary
    thresholds per event get no per-layout shortcuts). ``uniform`` is the one threshold when every scored
    category has it, which lets :func:`observe` find the peak of a decision without a loop."""

    __slots__ = (
        "all_scored",
        "all_thresholds",
        "categories",
        "index",
        "min_threshold",
        "policy_version",
        "thresholds",
        "uniform",
    )

    def __init__(
        self, index: int, scored: tuple[str, ...], thresholds: tuple[tuple[str, float], ...], policy_version: str | None
    ) -> None:
        known = dict(thresholds)
        self.all_thresholds = thresholds  # every (category, threshold), scored or not, in the event's order
        self.index = index
        self.categories = [c for c in scored if c in known]  # a list: compared with lists on the hot path
        self.thresholds = [known[c] for c in self.categories]
        self.policy_version = policy_version
        self.all_scored = len(self.categories) == len(scored)
        self.min_threshold = min(self.thresholds, default=0.0)
        distinct = set(self.thresholds)
        self.uniform = self.thresholds[0] if self.all_scored and len(distinct) == 1 else None


MAX_LAYOUTS = 4096
_layouts: dict[tuple[tuple[str, ...], tuple[tuple[str, float], ...], str | None], Layout] = {}
LAYOUTS: list[Layout] = []  # by index
# (guardrail, version, policy_version) -> the layout its last decision had: the same one again, nearly always,
# which two comparisons in C confirm (cheaper than hashing a key built from every category and threshold)
_last: dict[tuple[str, str, str | None], tuple[tuple[str, ...], tuple[str, ...], dict[str, float], Layout]] = {}


def layout_of(event: Decision) -> Layout:
    guardrail = event.guardrail
    scored = tuple(event.scores)
    named = tuple(event.thresholds)
    last = _last.get((guardrail.name, guardrail.version, event.policy_version))
    if last is not None and last[0] == scored and last[1] == named and last[2] == event.thresholds:
        return last[3]
    key = (scored, tuple(event.thresholds.items()), event.policy_version)
    layout = _layouts.get(key)
    if layout is None:
        if len(LAYOUTS) >= MAX_LAYOUTS:
            return Layout(-1, *key)
        layout = _layouts[key] = Layout(len(LAYOUTS), *key)
        LAYOUTS.append(layout)
    if len(_last) >= MAX_LAYOUTS:
        _last.clear()
    _last[(guardrail.name, guardrail.version, event.policy_version)] = (scored, named, event.thresholds, layout)
    return layout


class Observation(msgspec.Struct, gc=False):
    """One decoded decision as every detector sees it (outcomes computed once, with the engine's band).

    ``outcomes`` has every scored category with a threshold. :func:`observe` (the engine's one look at the
    categories) fills ``hot`` instead: the outcomes of the categories scored at least the engine's ``hot_floor``
    of their threshold, a superset of every category any of its detectors can act on (hugging, blocked, near,
    elevated); ``outcomes`` is then worked out only if something asks for it. Most decisions have no hot category,
    and detectors count those per :class:`Layout` instead of per category. ``peak`` (first category with the
    highest score/threshold ratio) and ``min_margin`` are filled by :func:`observe`, ``top`` (the highest ratio,
    ties to the smallest category name) where it was cheap to; an Observation built by hand leaves them ``None``
    and readers compute them. :attr:`hugging` and :attr:`blocked` name the categories the decision hugs and is
    blocked in (every one is hot): :func:`observe` lists them as it goes, so neither the detectors nor the sink
    go through the outcomes again to find out.

    A Struct (one is built per event: 0.13 us against 0.54 for a class that sets nine slots in ``__init__``);
    gc=False, as it never holds a reference cycle. The third field is the outcomes if the caller has them."""

    event: Decision
    ts_ms: int
    known_outcomes: list[CategoryOutcome] | None
    band: float
    peak: tuple[str | None, float] | None = None
    min_margin: float | None = None
    hot: list[CategoryOutcome] | None = None
    layout: Layout | None = None
    top: tuple[str, float, float] | None = None
    hugs: Sequence[str] | None = None  # see hugging
    blocks: Sequence[str] | None = None  # see blocked

    @property
    def outcomes(self) -> list[CategoryOutcome]:
        if self.known_outcomes is None:
            self.known_outcomes = category_outcomes(self.event, self.band)
        return self.known_outcomes

    @property
    def hugging(self) -> Sequence[str]:
        """The categories the decision hugs (``0 < margin <= band * threshold``), in score order."""
        if self.hugs is None:
            self.hugs = [o[0] for o in self.hot_outcomes if o[2]]
        return self.hugs

    @property
    def blocked(self) -> Sequence[str]:
        """The categories the decision is blocked in (``margin <= 0``), in score order."""
        if self.blocks is None:
            self.blocks = [o[0] for o in self.hot_outcomes if o[3]]
        return self.blocks

    @property
    def hot_outcomes(self) -> list[CategoryOutcome]:
        """The outcomes a detector must look at: ``hot`` if :func:`observe` made it, every one otherwise."""
        return self.hot if self.hot is not None else self.outcomes


_NONE: tuple[str, ...] = ()  # no category hugs / is blocked: one shared, immutable empty sequence


def observe(event: Decision, ts_ms: int, band: float, hot_floor: float = 0.0) -> Observation:
    """Outcomes of the hot categories, peak and smallest margin of a decision (the hot path). A decision whose
    categories share one threshold and whose highest score is under ``hot_floor`` of it (most of them) is settled
    by a ``max`` and a sort in C; any other goes through the categories one by one."""
    layout = layout_of(event)
    threshold = layout.uniform
    if threshold is not None:
        values = list(event.scores.values())
        ordered = sorted(values)
        high = ordered[-1]
        if high < hot_floor * threshold:
            level = high / threshold
            # The top ratio is unique unless the runner-up's ratio rounds to it: then the loop below decides.
            if len(ordered) == 1 or ordered[-2] / threshold != level:
                category = layout.categories[values.index(high)]
                peak = (category, level) if level > 0.0 else (None, 0.0)
                top = (category, high, threshold)
                return Observation(event, ts_ms, None, band, peak, threshold - high, [], layout, top, _NONE, _NONE)
    thresholds = event.thresholds
    hot: list[CategoryOutcome] = []
    hugging: Sequence[str] = _NONE
    blocked: Sequence[str] = _NONE
    best: str | None = None
    ratio = 0.0
    min_margin: float | None = None
    top = ("", 0.0, 0.0)
    top_level = -1.0
    for category, score in event.scores.items():
        threshold = thresholds.get(category)
        if threshold is None:
            continue
        margin = threshold - score
        level = score / threshold
        if level > ratio:
            best, ratio = category, level
        if level > top_level or (level == top_level and category < top[0]):
            top, top_level = (category, score, threshold), level
        if min_margin is None or margin < min_margin:
            min_margin = margin
        if score >= hot_floor * threshold:
            hugs = 0.0 < margin <= band * threshold
            if hugs:
                hugging = [*hugging, category]
            elif margin <= 0.0:
                blocked = [*blocked, category]
            hot.append((category, score, hugs, margin <= 0.0))
    return Observation(event, ts_ms, None, band, (best, ratio), min_margin, hot, layout, top, hugging, blocked)


def top_outcome(obs: Observation) -> tuple[str, float, float]:
    """(category, score, threshold) with the highest score relative to its threshold, ties to the smallest
    category name (``("", 0.0, 0.0)`` when nothing is scored against a threshold)."""
    return obs.top if obs.top is not None else top_of(obs.outcomes, obs.event.thresholds)


def top_of(outcomes: list[CategoryOutcome], thresholds: dict[str, float]) -> tuple[str, float, float]:
    """:func:`top_outcome` of a list of outcomes."""
    best = ("", 0.0, 0.0)
    best_level = -1.0
    for category, score, _hugging, _blocked in outcomes:
        threshold = thresholds[category]
        level = score / threshold
        if level > best_level or (level == best_level and category < best[0]):
            best, best_level = (category, score, threshold), level
    return best


class Detector(Protocol):
    """``name`` keys the detector's state; ``emits`` lists the detector names its findings carry. A detector may
    also set ``state_key``, a short string unique among the engine's detectors, to key its user state in the
    stored blob instead of ``name`` (see :data:`detectors.engine.COMPACT`)."""

    name: ClassVar[str]
    emits: ClassVar[tuple[str, ...]]
    user_state: ClassVar[type[msgspec.Struct]]
    population_state: ClassVar[type[msgspec.Struct]]

    def update(self, user: Any, population: Any, obs: Observation) -> list[Finding]: ...


_policy_keys: dict[tuple[str | None, float | None], str] = {}


@runtime_checkable
class SettlesPopulation(Protocol):
    """A detector that counts decisions per :class:`Layout` while nothing reads its per-category baselines, and
    folds those counts in (``settle``) before anybody else does: the engine calls it before a population state
    is encoded or handed out, so what is stored is the same as counting per category all along."""

    name: ClassVar[str]

    def settle(self, population: Any) -> None: ...


@runtime_checkable
class SettlesUsers(Protocol):
    """A detector that leaves some decisions pending in a user's state and folds a user's run of them at once
    (``settle_user``): the engine calls it before a user's state is encoded (the end of every batch), and the
    detector itself before it reads the state, so what is stored and decided is the same as folding each
    decision as it came."""

    name: ClassVar[str]

    def settle_user(self, user: Any) -> None: ...


@runtime_checkable
class BatchScoring(Protocol):
    """A detector that snapshots users in ``update`` and scores the snapshots once per batch."""

    def collect(self) -> list[Finding]:
        """Score the snapshots taken since the last call; return the findings."""
        ...

    def discard(self) -> None:
        """Drop the snapshots taken since the last call (their batch was rolled back)."""
        ...


def policy_key(event: Decision, category: str) -> str:
    """Baselines are kept per policy: a new ``policy_version`` or a moved threshold starts a new one,
    so a policy change is not read as every user suddenly behaving differently."""
    return policy_key_of(event.policy_version, event.thresholds.get(category))


def policy_key_of(policy_version: str | None, threshold: float | None) -> str:
    memo = (policy_version, threshold)
    key = _policy_keys.get(memo)
    if key is None:  # a handful of distinct policies in practice: build each string once
        if len(_policy_keys) >= 4096:
            _policy_keys.clear()
        key = _policy_keys[memo] = f"{policy_version or '-'}|{threshold!r}"
    return key
