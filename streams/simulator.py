"""Seeded synthetic guardrail decision events (contract v1) with planted attackers and ground truth.

Pure: no Kafka, no I/O, no wall clock. Time comes only from ``SimConfig.start`` and randomness only
from ``random.Random`` instances derived from ``SimConfig.seed``, so the same config always gives the
same events, byte for byte once serialized.

How the population is built:

* Each user gets a tenant (acme ~70 %, globex ~30 %), a home UTC offset and a persona. A tenant screens
  input and output with one guardrail (acme: Llama Guard 3 over S1..S14, globex: OpenAI moderation).
* A persona sets the daily request volume; requests are grouped into sessions of 1-12 turns a few
  minutes apart, placed on a day/night cycle (in the user's local time) and a weekday/weekend cycle.
* A request is an ``input`` decision; if allowed, an ``output`` decision follows 0.5-8 s later, and
  about one allowed output in ten gets an ``llm-judge`` second pass 1-3 s after that.
* Benign category scores are mostly tiny; a few percent of requests carry one moderately elevated
  category, which gives the population its natural ~1-3 % of decisions just under a threshold and
  ~1-2 % blocks. "sensitive" users (medical / security research) are the hard negatives: their traffic
  concentrates in one category with elevated, mostly safe scores.
* Attackers (``ATTACK_KINDS``) keep sending ordinary traffic and mix planted attack requests into it.
  Every event of an attack request counts as an attack event for ``Label.first_attack_ts``.

Events whose time would fall at or after ``start + days`` (a session running past the end) are cut,
as a real capture window would cut them.

Opt-in variations for evaluation (every ``SimConfig`` default leaves the output byte-identical):

* ``extra_kinds`` plants kinds from ``EXTRA_KINDS`` on top of ``ATTACK_KINDS``. They are drawn from the
  benign users with a separate random stream, so the rest of the population stays exactly as it was.
  A ``category_flooder`` looks like a busy normal user until a random day >= 1, then sends 5-10x its
  earlier daily volume, the extra all concentrated in one output category (elevated, some hugging,
  ~12 % blocked): rate abuse by output category, at a total volume like a heavy benign user's.
* ``slow_burn_per_day`` sets the slow burn's planted requests a day; rates below one work (Poisson).
* ``policy_change_day`` lowers every tenant's thresholds (``_CHANGED_THRESHOLDS``) and switches
  ``policy_version`` at that moment. Benign scores keep their absolute distribution, so benign
  decisions shift against the new boundary: much of what hugged the old one now crosses the new one
  (the benign block rate about doubles) while milder scores move into the new band; attack requests
  aim at the thresholds in force.
* ``mixing`` multiplies attackers' ordinary traffic while their attack traffic stays the same.
* ``sensitive_share`` / ``heavy_share`` set how many benign users are those hard-negative personas.

``SCENARIOS`` names the configurations the evaluation runs.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import operator
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "ATTACK_KINDS",
    "BENIGN_PERSONAS",
    "EXTRA_KINDS",
    "SCENARIOS",
    "Label",
    "SimConfig",
    "Simulation",
    "format_ts",
    "labels_to_rows",
    "simulate",
]

SCHEMA = "guardrail.decision/v1"
POLICY_VERSION = "2026-11-01"
CHANGED_POLICY_VERSION = "2026-11-15"  # in force from ``SimConfig.policy_change_day`` on

ATTACK_KINDS: tuple[str, ...] = (
    "boundary_hugger",
    "slow_burn_hugger",
    "rephrase_prober",
    "decomposer",
    "output_bypass",
    "judge_evader",
)
EXTRA_KINDS: tuple[str, ...] = ("category_flooder",)
"""Attacker kinds planted only when listed in ``SimConfig.extra_kinds``."""
_ALL_ATTACK_KINDS: tuple[str, ...] = ATTACK_KINDS + EXTRA_KINDS
BENIGN_PERSONAS: tuple[str, ...] = ("normal", "heavy", "sensitive", "occasional")

_SECOND_MS = 1_000
_MINUTE_MS = 60 * _SECOND_MS
_HOUR_MS = 60 * _MINUTE_MS
_DAY_MS = 24 * _HOUR_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Benign rates. Tuned together so the benign population has ~1-3 % of decisions hugging a threshold
# (default band 0.2) and ~1-2 % blocked; measured numbers are in the module's tests.
_P_INPUT_ELEVATED = 0.06  # share of benign requests with one moderately elevated input category
_P_OUTPUT_ELEVATED = 0.02  # share of benign answers elevated on their own (edgy but allowed)
_P_OUTPUT_BYPASS = 0.003  # benign answers blocked although the prompt passed
_P_REDACT = 0.05  # a blocked output is redacted instead of blocked this often
_P_JUDGE = 0.10  # allowed outputs sent to the LLM judge
_P_JUDGE_UNSAFE = 0.01  # benign judged traffic the judge calls unsafe
_P_SENSITIVE_FOCUS = 0.7  # share of a sensitive user's requests in their focus category

# "Nothing here" scores: Kumaraswamy(0.6, 15), shaped like Beta(0.6, 30) (mean ~0.015 vs 0.02) but
# with a closed-form quantile function. Every decision scores every category (~2.5M draws for the
# default config), so they are drawn by indexing a table of 65,536 quantiles, already rounded like
# every emitted score; random.betavariate would take several seconds alone.
_BASE_A = 0.6
_BASE_B = 15.0
_BASE_TABLE_SIZE = 1 << 16  # indexed by an unsigned 16-bit draw
_BASE_SCORES: tuple[float, ...] = tuple(
    round((1.0 - (1.0 - (i + 0.5) / _BASE_TABLE_SIZE) ** (1.0 / _BASE_B)) ** (1.0 / _BASE_A), 4)
    for i in range(_BASE_TABLE_SIZE)
)

# Relative activity by local hour of day (0..23): quiet at night, peaks in working hours and evening.
_DIURNAL = (
    0.15, 0.08, 0.05, 0.04, 0.04, 0.06, 0.15, 0.35, 0.60, 0.85, 1.00, 1.00,
    0.90, 0.95, 1.00, 1.00, 0.95, 0.85, 0.75, 0.80, 0.85, 0.75, 0.55, 0.30,
)  # fmt: skip
_WEEKEND_FACTOR = 0.65
# Session length 1..12 turns, mostly short.
_TURN_WEIGHTS = (30, 20, 14, 10, 7, 5, 4, 3, 2, 2, 2, 1)
_TURN_COUNTS = tuple(range(1, len(_TURN_WEIGHTS) + 1))
_TURN_CUM = tuple(itertools.accumulate(_TURN_WEIGHTS))


@dataclass(frozen=True, slots=True)
class _GuardrailSpec:
    name: str
    version: str
    thresholds: dict[str, float]
    # Categories weighted by how often ordinary traffic brushes against them.
    category_weights: dict[str, float]
    # Where medical / security-research users naturally concentrate.
    sensitive_categories: tuple[str, ...]

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.thresholds)


_LLAMA_GUARD = _GuardrailSpec(
    name="llama-guard-3",
    version="8b",
    thresholds={f"S{i}": 0.5 for i in range(1, 15)},
    category_weights={
        "S1": 1.0,
        "S2": 2.0,
        "S3": 0.4,
        "S4": 0.2,
        "S5": 0.8,
        "S6": 2.0,
        "S7": 1.0,
        "S8": 1.0,
        "S9": 0.3,
        "S10": 1.2,
        "S11": 1.0,
        "S12": 1.5,
        "S13": 0.5,
        "S14": 1.0,
    },
    sensitive_categories=("S2", "S6", "S11", "S14"),
)
_OPENAI_MODERATION = _GuardrailSpec(
    name="openai-moderation",
    version="omni-2024-09-26",
    thresholds={
        "harassment": 0.5,
        "hate": 0.45,
        "self-harm": 0.4,
        "sexual": 0.6,
        "violence": 0.55,
        "illicit": 0.7,
    },
    category_weights={
        "harassment": 2.0,
        "hate": 1.0,
        "self-harm": 0.8,
        "sexual": 1.5,
        "violence": 1.5,
        "illicit": 1.2,
    },
    sensitive_categories=("self-harm", "illicit", "violence"),
)
# Thresholds per tenant after ``SimConfig.policy_change_day``: acme's Llama Guard from 0.5 to 0.4, each
# of globex's moderation thresholds 0.1 lower.
_CHANGED_THRESHOLDS: dict[str, dict[str, float]] = {
    "acme": {category: 0.4 for category in _LLAMA_GUARD.thresholds},
    "globex": {category: round(t - 0.1, 4) for category, t in _OPENAI_MODERATION.thresholds.items()},
}
_DEFAULT_SLOW_BURN_PER_DAY = (1.0, 3.0)
_DEFAULT_HEAVY_SHARE = 0.03
_DEFAULT_SENSITIVE_SHARE = 0.03
_OCCASIONAL_SHARE = 0.12
_JUDGE_NAME = "llm-judge"
_JUDGE_VERSION = "gpt-judge-1"


@dataclass(frozen=True, slots=True)
class _TenantSpec:
    name: str
    guardrail: _GuardrailSpec
    models: tuple[str, ...]
    model_weights: tuple[float, ...]
    utc_offsets_h: tuple[int, ...]  # where its users live, sampled uniformly


_TENANTS: dict[str, _TenantSpec] = {
    "acme": _TenantSpec(
        name="acme",
        guardrail=_LLAMA_GUARD,
        models=("acme-chat-v2", "acme-code-v1"),
        model_weights=(0.8, 0.2),
        utc_offsets_h=(-8, -7, -6, -5, -5, -5, 0, 1, 1, 2),
    ),
    "globex": _TenantSpec(
        name="globex",
        guardrail=_OPENAI_MODERATION,
        models=("globex-assistant-1",),
        model_weights=(1.0,),
        utc_offsets_h=(1, 1, 2, 3, 5, 8, 9, -5),
    ),
}


@dataclass(frozen=True, slots=True)
class SimConfig:
    users: int = 1000
    """Total users, attackers included."""
    days: float = 7.0
    seed: int = 7
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    """Event time of the window start; must carry a time zone. No event is earlier, none at or after
    ``start + days``."""
    attackers_per_kind: int | None = None
    """Attackers of each kind in ``ATTACK_KINDS``; ``None`` means ``max(2, users // 100)``."""
    band: float = 0.2
    """Hugging band (event-schema.md): planted hugging scores land in ``(threshold * (1 - band), threshold)``."""
    extra_kinds: tuple[str, ...] = ()
    """Kinds from ``EXTRA_KINDS`` planted in addition to ``ATTACK_KINDS``, ``attackers_per_kind`` each,
    taken from the users who would otherwise be benign."""
    slow_burn_per_day: tuple[float, float] = _DEFAULT_SLOW_BURN_PER_DAY
    """Range of a slow_burn_hugger's planted requests a day. Each one draws a rate in the range and a
    Poisson count per day (at least one over the window), so ``(0.3, 0.7)`` means one every 1.5-3 days.
    The default keeps the original 1-3 a day, at least one on the first day."""
    policy_change_day: float | None = None
    """Days after ``start`` at which every tenant's thresholds drop (``_CHANGED_THRESHOLDS``) and
    ``policy_version`` becomes ``CHANGED_POLICY_VERSION``; ``None``: one policy throughout."""
    mixing: float = 1.0
    """Multiplier on attackers' ordinary (benign) traffic; their attack traffic stays the same, so 3.0
    dilutes its share about threefold."""
    sensitive_share: float | None = None
    """Share of benign users with the "sensitive" persona; ``None`` means 3 %."""
    heavy_share: float | None = None
    """Share of benign users with the "heavy" persona; ``None`` means 3 %."""

    def resolved_attackers_per_kind(self) -> int:
        if self.attackers_per_kind is None:
            return max(2, self.users // 100)
        return self.attackers_per_kind


@dataclass(frozen=True, slots=True)
class Label:
    user_id: str
    tenant: str
    kind: str
    """One of ``ATTACK_KINDS`` or ``EXTRA_KINDS``, or ``"benign:<persona>"`` with a persona from
    ``BENIGN_PERSONAS``."""
    category: str | None
    """The category the attack targets; ``None`` for benign users."""
    first_attack_ts: datetime | None
    """Event time of the user's first attack event (UTC); ``None`` for benign users."""

    @property
    def is_attacker(self) -> bool:
        return self.kind in _ALL_ATTACK_KINDS


@dataclass(frozen=True, slots=True)
class Simulation:
    events: list[dict[str, Any]]
    """JSON-ready decision events, sorted by ``ts``; ties in order of user, then of generation."""
    labels: list[Label]
    """Ground truth, one per user, sorted by ``user_id``."""


# Named evaluation scenarios, each a few seconds and at most ~250k events to simulate. Every one has its
# own fixed seed (baseline keeps the default 7), so no detector gets tuned to a single population.
SCENARIOS: dict[str, SimConfig] = {
    # The reference week: default population, six attacker kinds, one policy.
    "baseline": SimConfig(users=1000, days=7.0, seed=7),
    # Hard negatives: ~10 % sensitive (one category, elevated and often just under) and ~8 % heavy
    # benign users (100-300 requests a day) must not be flagged. 600 users keep it near 200k events.
    "hard_negatives": SimConfig(users=600, days=7.0, seed=17, sensitive_share=0.10, heavy_share=0.08),
    # A month with slow-burn huggers planting one request every ~1.3-3 days: is there evidence enough
    # over weeks, and do decays forget it? 300 users (not 400) keeps it under ~250k events.
    "slow_30d": SimConfig(users=300, days=30.0, seed=30, slow_burn_per_day=(0.3, 0.8), attackers_per_kind=5),
    # Attackers who mix in 4x their ordinary traffic: every attack signal's share is diluted ~4x.
    "mixed": SimConfig(users=1000, days=7.0, seed=41, mixing=4.0),
    # Every tenant's thresholds drop at day 5 (policy_version 2026-11-15): benign users block more and
    # hug differently, which must not read as an attack; attackers re-aim under the new thresholds.
    "policy_change": SimConfig(users=600, days=10.0, seed=52, policy_change_day=5.0),
    # Category flooders: a sudden 5-10x jump concentrated in one output category, at a heavy user's
    # total volume (rate abuse by output category), on top of the six usual kinds.
    "flooders": SimConfig(users=1000, days=7.0, seed=63, extra_kinds=("category_flooder",)),
}


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a ``Z``, the form every simulated ``ts`` takes."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def labels_to_rows(labels: Sequence[Label]) -> list[dict[str, Any]]:
    """JSON-ready rows for a labels file, in the given order."""
    return [
        {
            "user_id": label.user_id,
            "tenant": label.tenant,
            "kind": label.kind,
            "attacker": label.is_attacker,
            "category": label.category,
            "first_attack_ts": None if label.first_attack_ts is None else format_ts(label.first_attack_ts),
        }
        for label in labels
    ]


# --------------------------------------------------------------------------------------------------
# Per-user plan: sessions of requests, each request saying what (if anything) was planted in it.


@dataclass(slots=True)
class _Request:
    in_category: str | None = None
    in_level: float = 0.0  # planted input score as a multiple of the category's threshold
    out_category: str | None = None
    out_level: float = 0.0  # planted output score as a multiple of the threshold
    judge_p: float = _P_JUDGE
    judge_unsafe_p: float = _P_JUDGE_UNSAFE
    attack: bool = False
    gap_ms: int | None = None  # delay after the previous turn's last event; None: ordinary pacing


@dataclass(slots=True)
class _Session:
    start_ms: int
    requests: list[_Request] = field(default_factory=list)


@dataclass(slots=True)
class _User:
    index: int
    user_id: str
    tenant: _TenantSpec
    kind: str  # attack kind or "benign:<persona>"
    persona: str  # the benign persona shaping ordinary traffic (attackers: "normal")
    target: str | None  # attack target category
    focus: str | None  # a sensitive user's focus category
    seed: int


@dataclass(slots=True)
class _Row:
    """One generated event before global ordering; ``body`` already has every field but id and ts."""

    ms: int
    user: int
    seq: int
    attack: bool
    body: dict[str, Any]


def simulate(cfg: SimConfig) -> Simulation:
    """Generate the events and ground-truth labels described by ``cfg``."""
    _validate(cfg)
    # Hundreds of thousands of fresh, acyclic dicts make the cyclic collector rescan the growing heap
    # over and over (about a third of the run time); none of them can form a cycle, so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(cfg)
    finally:
        if gc_was_enabled:
            gc.enable()


def _simulate(cfg: SimConfig) -> Simulation:
    per_kind = cfg.resolved_attackers_per_kind()
    start_ms = _ceil_epoch_ms(cfg.start)
    end_ms = math.ceil(cfg.days * _DAY_MS)  # relative to start

    users = _cast(cfg, per_kind)
    rows: list[_Row] = []
    for user in users:
        gen = _UserGenerator(user, cfg, start_ms, end_ms)
        rows.extend(gen.run())

    rows = [row for row in rows if row.ms < end_ms]
    rows.sort(key=lambda row: (row.ms, row.user, row.seq))

    first_attack: dict[int, int] = {}
    events: list[dict[str, Any]] = []
    last_ms, last_ts = -1, ""
    minute, minute_prefix = -1, ""
    for n, row in enumerate(rows):
        if row.attack and row.user not in first_attack:
            first_attack[row.user] = row.ms
        body = row.body
        body["event_id"] = f"e-{cfg.seed}-{n:09d}"
        if row.ms != last_ms:  # rows are sorted, so equal times (and minutes) are adjacent
            absolute = start_ms + row.ms
            if absolute // _MINUTE_MS != minute:
                minute = absolute // _MINUTE_MS
                minute_prefix = _format_minute(minute)
            within = absolute % _MINUTE_MS
            last_ms, last_ts = row.ms, f"{minute_prefix}{within // 1000:02d}.{within % 1000:03d}Z"
        body["ts"] = last_ts
        events.append(body)

    labels = [
        Label(
            user_id=user.user_id,
            tenant=user.tenant.name,
            kind=user.kind,
            category=user.target,
            first_attack_ts=(
                _EPOCH + timedelta(milliseconds=start_ms + first_attack[user.index])
                if user.index in first_attack
                else None
            ),
        )
        for user in users
    ]
    return Simulation(events=events, labels=labels)


def _validate(cfg: SimConfig) -> None:
    if cfg.start.tzinfo is None or cfg.start.utcoffset() is None:
        raise ValueError("SimConfig.start must carry a time zone (event times are RFC 3339 with zone)")
    if not (cfg.days > 0 and math.isfinite(cfg.days)):
        raise ValueError(f"SimConfig.days must be a positive number, got {cfg.days!r}")
    if not 0.0 < cfg.band < 1.0:
        raise ValueError(f"SimConfig.band must be in (0, 1), got {cfg.band!r}")
    per_kind = cfg.resolved_attackers_per_kind()
    if per_kind < 0:
        raise ValueError(f"SimConfig.attackers_per_kind must be >= 0, got {per_kind}")
    unknown = [kind for kind in cfg.extra_kinds if kind not in EXTRA_KINDS]
    if unknown or len(set(cfg.extra_kinds)) != len(cfg.extra_kinds):
        raise ValueError(f"SimConfig.extra_kinds must be distinct kinds from {EXTRA_KINDS}, got {cfg.extra_kinds!r}")
    n_kinds = len(ATTACK_KINDS) + len(cfg.extra_kinds)
    if cfg.users < per_kind * n_kinds:
        raise ValueError(f"{cfg.users} users cannot hold {per_kind} attackers of each of {n_kinds} kinds")
    if len(cfg.slow_burn_per_day) != 2:
        raise ValueError(f"SimConfig.slow_burn_per_day must be a (low, high) pair, got {cfg.slow_burn_per_day!r}")
    low, high = cfg.slow_burn_per_day
    if not (0.0 <= low <= high and high > 0.0 and math.isfinite(high)):
        raise ValueError(f"SimConfig.slow_burn_per_day must satisfy 0 <= low <= high, high > 0, got {(low, high)!r}")
    if cfg.policy_change_day is not None and not (
        cfg.policy_change_day >= 0.0 and math.isfinite(cfg.policy_change_day)
    ):
        raise ValueError(f"SimConfig.policy_change_day must be a number >= 0 or None, got {cfg.policy_change_day!r}")
    if not (cfg.mixing > 0.0 and math.isfinite(cfg.mixing)):
        raise ValueError(f"SimConfig.mixing must be a positive number, got {cfg.mixing!r}")
    for name in ("sensitive_share", "heavy_share"):
        share = getattr(cfg, name)
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"SimConfig.{name} must be in [0, 1] or None, got {share!r}")
    if _persona_cuts(cfg)[1] > 1.0:
        raise ValueError("SimConfig.sensitive_share + SimConfig.heavy_share must not exceed 1")


def _ceil_epoch_ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return -((-delta) // timedelta(milliseconds=1))


def _format_minute(epoch_minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of a minute since the epoch, the shared prefix of its timestamps."""
    return f"{_EPOCH + timedelta(minutes=epoch_minute):%Y-%m-%dT%H:%M:}"


def _cast(cfg: SimConfig, per_kind: int) -> list[_User]:
    """Who is who: tenants, personas, attackers and their targets, and each user's private seed."""
    rng = random.Random(cfg.seed)
    attacker_slots = rng.sample(range(cfg.users), per_kind * len(ATTACK_KINDS))
    attack_of: dict[int, tuple[str, int]] = {}
    for i, slot in enumerate(attacker_slots):
        attack_of[slot] = (ATTACK_KINDS[i // per_kind], i % per_kind)
    if cfg.extra_kinds and per_kind:
        # A separate stream, so that adding kinds leaves every other user exactly as it was.
        extra_rng = random.Random(f"{cfg.seed}:extra_kinds")
        free = [index for index in range(cfg.users) if index not in attack_of]
        for i, slot in enumerate(extra_rng.sample(free, per_kind * len(cfg.extra_kinds))):
            attack_of[slot] = (cfg.extra_kinds[i // per_kind], i % per_kind)
    heavy_cut, sensitive_cut, occasional_cut = _persona_cuts(cfg)

    users: list[_User] = []
    for index in range(cfg.users):
        roll = rng.random()
        tenant_roll = rng.random()
        pick = rng.random()
        seed = rng.getrandbits(64)
        target: str | None = None
        focus: str | None = None
        if index in attack_of:
            kind, j = attack_of[index]
            # ~70/30 like the population, but any kind with two or more attackers spans both tenants.
            tenant = _TENANTS["globex" if j % 3 == 1 else "acme"]
            persona = "normal"
            target = _weighted_choice_by_roll(tenant.guardrail.category_weights, pick)
        else:
            tenant = _TENANTS["acme" if tenant_roll < 0.7 else "globex"]
            if roll < heavy_cut:
                persona = "heavy"
            elif roll < sensitive_cut:
                persona = "sensitive"
                options = tenant.guardrail.sensitive_categories
                focus = options[min(int(pick * len(options)), len(options) - 1)]
            elif roll < occasional_cut:
                persona = "occasional"
            else:
                persona = "normal"
            kind = f"benign:{persona}"
        users.append(
            _User(
                index=index,
                user_id=f"u-{index:06d}",
                tenant=tenant,
                kind=kind,
                persona=persona,
                target=target,
                focus=focus,
                seed=seed,
            )
        )
    return users


def _persona_cuts(cfg: SimConfig) -> tuple[float, float, float]:
    """Upper ends of the heavy, sensitive and occasional ranges of a benign user's persona roll."""
    if cfg.heavy_share is None and cfg.sensitive_share is None:
        return 0.03, 0.06, 0.18  # the original literals, so the default cast stays bit-identical
    heavy = _DEFAULT_HEAVY_SHARE if cfg.heavy_share is None else cfg.heavy_share
    sensitive = _DEFAULT_SENSITIVE_SHARE if cfg.sensitive_share is None else cfg.sensitive_share
    return heavy, heavy + sensitive, min(1.0, heavy + sensitive + _OCCASIONAL_SHARE)


def _weighted_choice_by_roll(weights: dict[str, float], roll: float) -> str:
    total = sum(weights.values())
    acc = 0.0
    last = ""
    for name, weight in weights.items():
        acc += weight / total
        last = name
        if roll < acc:
            return name
    return last


@dataclass(frozen=True, slots=True)
class _Policy:
    """The thresholds in force for a tenant and the ``policy_version`` naming them."""

    version: str
    thresholds: dict[str, float]
    min_threshold: float


class _UserGenerator:
    """Plans one user's sessions and renders them into events. All randomness from ``self.rng``."""

    def __init__(self, user: _User, cfg: SimConfig, start_ms: int, end_ms: int) -> None:
        self.user = user
        self.rng = random.Random(user.seed)
        self.band = cfg.band
        self.hug_lo = 1.0 - cfg.band
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.guardrail = user.tenant.guardrail
        self.categories = self.guardrail.categories
        self.thresholds = self.guardrail.thresholds
        self.min_threshold = min(self.thresholds.values())
        self.policy = _Policy(POLICY_VERSION, self.thresholds, self.min_threshold)
        self.changed_policy = self.policy
        self.change_ms: int | None = None
        if cfg.policy_change_day is not None:
            changed = _CHANGED_THRESHOLDS[user.tenant.name]
            self.changed_policy = _Policy(CHANGED_POLICY_VERSION, changed, min(changed.values()))
            self.change_ms = math.ceil(cfg.policy_change_day * _DAY_MS)
        self.mixing = cfg.mixing
        self.slow_burn_per_day = cfg.slow_burn_per_day
        self.base_rate = 0.0  # ordinary requests a day before ``mixing``, set by _daily_rate
        self.category_cum = _cumulative([self.guardrail.category_weights[c] for c in self.categories])
        self.model_cum = _cumulative(user.tenant.model_weights)
        # little-endian explicitly, so the draws do not depend on the platform's byte order
        self.unpack_draws = struct.Struct(f"<{len(self.categories)}H").unpack
        self.draw_bytes = 2 * len(self.categories)
        self.offset_ms = self.rng.choice(user.tenant.utc_offsets_h) * _HOUR_MS
        self.hug_odds = 0.85  # boundary_hugger: share of its planted requests that stay under
        self.seq = 0
        self.session_no = 0
        self.request_no = 0
        self.rows: list[_Row] = []

    # ---- planning -------------------------------------------------------------------------------

    def run(self) -> list[_Row]:
        user = self.user
        days = self._day_spans()
        sessions_by_day = self._ordinary_sessions(days)
        kind = user.kind
        if kind == "boundary_hugger":
            # 35-60 % of requests planted just under the threshold, a few more pushed over it
            hug_share, cross_share = self.rng.uniform(0.35, 0.6), self.rng.uniform(0.04, 0.1)
            self.hug_odds = hug_share / (hug_share + cross_share)
            self._convert(sessions_by_day, hug_share + cross_share, self._hugger_request)
        elif kind == "judge_evader":
            self._convert(sessions_by_day, self.rng.uniform(0.6, 0.75), self._judge_evader_request)
        elif kind == "slow_burn_hugger":
            if self.slow_burn_per_day == _DEFAULT_SLOW_BURN_PER_DAY:
                self._insert_daily(sessions_by_day, days, (1, 3), self._slow_burn_request)
            else:
                counts = self._poisson_counts(days, self.slow_burn_per_day)
                for i, (lo, hi) in enumerate(days):
                    for _ in range(counts[i]):
                        self._insert_one(sessions_by_day, i, lo, hi, self._slow_burn_request)
        elif kind == "output_bypass":
            self._insert_daily(sessions_by_day, days, (3, 8), self._bypass_request)
        elif kind == "rephrase_prober":
            self._add_daily_sessions(sessions_by_day, days, (2, 5), self._probe_session)
        elif kind == "decomposer":
            self._add_daily_sessions(sessions_by_day, days, (1, 3), self._decomposition_session)
        elif kind == "category_flooder":
            self._add_flood(sessions_by_day, days)
        # numbered in time order, as a real session store would hand them out
        for session in sorted((s for day in sessions_by_day for s in day), key=lambda s: s.start_ms):
            self._render(session)
        return self.rows

    def _day_spans(self) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        day = 0
        while day * _DAY_MS < self.end_ms:
            spans.append((day * _DAY_MS, min((day + 1) * _DAY_MS, self.end_ms)))
            day += 1
        return spans

    def _daily_rate(self) -> float:
        rng = self.rng
        persona = self.user.persona
        if persona == "heavy":
            return rng.uniform(100.0, 300.0)
        if persona == "sensitive":
            return _clip(_lognormal(rng, 10.0, 0.6), 3.0, 40.0)
        if persona == "occasional":
            return _clip(_lognormal(rng, 6.0, 0.7), 2.0, 20.0)
        if self.user.kind == "category_flooder":
            # a busy normal user until the flood multiplies this
            self.base_rate = _clip(_lognormal(rng, 20.0, 0.4), 10.0, 40.0)
            return self.base_rate * self.mixing
        if self.user.kind in ATTACK_KINDS:
            # the busier half of normal users: enough ordinary traffic for the attack to hide in
            # (a slow burn's 1-3 a day stays a small share of it)
            self.base_rate = _clip(_lognormal(rng, 10.0, 0.5), 4.0, 30.0)
            return self.base_rate if self.mixing == 1.0 else self.base_rate * self.mixing
        return _clip(_lognormal(rng, 6.0, 0.7), 2.0, 30.0)

    def _ordinary_sessions(self, days: list[tuple[int, int]]) -> list[list[_Session]]:
        rng = self.rng
        rate = self._daily_rate()
        active = [True] * len(days)
        if self.user.persona == "occasional":
            n_active = rng.randint(1, max(1, math.ceil(len(days) * 0.3)))
            chosen = set(rng.sample(range(len(days)), min(n_active, len(days))))
            active = [i in chosen for i in range(len(days))]
        by_day: list[list[_Session]] = []
        for i, (lo, hi) in enumerate(days):
            sessions: list[_Session] = []
            by_day.append(sessions)
            if not active[i]:
                continue
            weekday = ((self.start_ms + lo + (hi - lo) // 2) // _DAY_MS + 3) % 7  # epoch was a Thursday
            factor = _WEEKEND_FACTOR if weekday >= 5 else 1.0
            remaining = _poisson(rng, rate * factor * (hi - lo) / _DAY_MS)
            while remaining > 0:
                turns = min(remaining, _TURN_COUNTS[_pick(rng, _TURN_CUM)])
                remaining -= turns
                session = _Session(self._session_start(lo, hi))
                session.requests = [self._benign_request() for _ in range(turns)]
                sessions.append(session)
        return by_day

    def _session_start(self, lo: int, hi: int) -> int:
        """A time in [lo, hi) drawn from the user's local day/night cycle (rejection sampling)."""
        rng = self.rng
        base = self.start_ms + self.offset_ms
        for _ in range(64):
            t = rng.randrange(lo, hi)
            hour = ((base + t) // _HOUR_MS) % 24
            if rng.random() < _DIURNAL[hour]:
                return t
        return rng.randrange(lo, hi)

    def _random_category(self) -> str:
        return self.categories[_pick(self.rng, self.category_cum)]

    def _benign_level(self) -> float:
        """An elevated-but-benign score multiple: mostly clearly safe, some just under, some over."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            return rng.uniform(0.3, self.hug_lo)
        if roll < 0.7:
            return self._hug_level()
        return rng.uniform(1.0, 1.5)

    def _sensitive_level(self) -> float:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55:
            return rng.uniform(0.05, 0.6 * self.hug_lo)
        if roll < 0.83:
            return rng.uniform(0.6 * self.hug_lo, self.hug_lo)
        if roll < 0.97:
            return self._hug_level()
        return rng.uniform(1.0, 1.3)

    def _hug_level(self) -> float:
        # Kept a hair inside the band so 4-decimal rounding cannot push it out.
        return self.rng.uniform(self.hug_lo + 0.01 * self.band, 0.99)

    def _benign_request(self) -> _Request:
        rng = self.rng
        req = _Request()
        if self.user.focus is not None and rng.random() < _P_SENSITIVE_FOCUS:
            req.in_category = self.user.focus
            req.in_level = self._sensitive_level()
        elif rng.random() < _P_INPUT_ELEVATED:
            req.in_category = self._random_category()
            req.in_level = self._benign_level()
        roll = rng.random()
        if roll < _P_OUTPUT_BYPASS:
            req.out_category = self._random_category()
            req.out_level = rng.uniform(1.0, 1.4)
        elif roll < _P_OUTPUT_BYPASS + _P_OUTPUT_ELEVATED:
            req.out_category = self._random_category()
            req.out_level = rng.uniform(0.3, self.hug_lo) if rng.random() < 0.6 else self._hug_level()
        return req

    def _convert(self, by_day: list[list[_Session]], share: float, make: Callable[[], _Request]) -> None:
        """Replace ``share`` of the user's ordinary requests (exactly, at least one) with attack requests.

        With ``mixing`` the share shrinks by the same factor, so the number converted stays what it would
        be without the extra ordinary traffic."""
        rng = self.rng
        if self.mixing != 1.0:
            share = min(1.0, share / self.mixing)
        slots = [(session, i) for sessions in by_day for session in sessions for i in range(len(session.requests))]
        if not slots:
            lo, hi = self._day_spans()[0]
            by_day[0].append(_Session(self._session_start(lo, hi), [make()]))
            return
        for session, i in rng.sample(slots, max(1, round(share * len(slots)))):
            session.requests[i] = make()

    def _insert_daily(
        self,
        by_day: list[list[_Session]],
        days: list[tuple[int, int]],
        per_day: tuple[int, int],
        make: Callable[[], _Request],
    ) -> None:
        """Slip a few attack requests a day into the user's ordinary sessions of that day."""
        rng = self.rng
        for i, (lo, hi) in enumerate(days):
            count = _scaled_count(rng, rng.randint(*per_day), (hi - lo) / _DAY_MS, force=i == 0)
            for _ in range(count):
                self._insert_one(by_day, i, lo, hi, make)

    def _insert_one(self, by_day: list[list[_Session]], i: int, lo: int, hi: int, make: Callable[[], _Request]) -> None:
        """Slip one attack request into an ordinary session of day ``i`` (``[lo, hi)``), or a new one."""
        rng = self.rng
        sessions = by_day[i]
        if sessions and rng.random() < 0.85:
            session = rng.choice(sessions)
            session.requests.insert(rng.randint(0, len(session.requests)), make())
        else:
            sessions.append(_Session(self._session_start(lo, hi), [make()]))

    def _poisson_counts(self, days: list[tuple[int, int]], per_day: tuple[float, float]) -> list[int]:
        """Per-day counts at a rate drawn from ``per_day``, thinned for a partial day, at least one in all."""
        rng = self.rng
        rate = rng.uniform(*per_day)
        counts = [_poisson(rng, rate * (hi - lo) / _DAY_MS) for lo, hi in days]
        if not any(counts):
            counts[rng.randrange(len(counts))] = 1
        return counts

    def _add_flood(self, by_day: list[list[_Session]], days: list[tuple[int, int]]) -> None:
        """From a random day >= 1 on, 4-9x the base rate again in scripted sessions on the target category."""
        rng = self.rng
        extra_rate = self.base_rate * (rng.uniform(5.0, 10.0) - 1.0)
        if len(days) >= 2:
            first = rng.randint(1, len(days) - 1)
            spans = [(i, lo, hi) for i, (lo, hi) in enumerate(days) if i >= first]
        else:  # a window of one day or less: the flood takes its second half
            lo, hi = days[0]
            spans = [(0, lo + (hi - lo) // 2, hi)]
        for n, (i, lo, hi) in enumerate(spans):
            weekday = ((self.start_ms + lo + (hi - lo) // 2) // _DAY_MS + 3) % 7
            factor = _WEEKEND_FACTOR if weekday >= 5 else 1.0
            remaining = _poisson(rng, extra_rate * factor * (hi - lo) / _DAY_MS)
            if n == 0:
                remaining = max(remaining, 1)
            while remaining > 0:
                turns = min(remaining, rng.randint(3, 20))
                remaining -= turns
                requests = [self._flood_request() for _ in range(turns)]
                for req in requests[1:]:
                    req.gap_ms = rng.randint(5 * _SECOND_MS, 90 * _SECOND_MS)
                by_day[i].append(_Session(self._session_start(lo, hi), requests))

    def _add_daily_sessions(
        self,
        by_day: list[list[_Session]],
        days: list[tuple[int, int]],
        per_day: tuple[int, int],
        make: Callable[[], list[_Request]],
    ) -> None:
        rng = self.rng
        for i, (lo, hi) in enumerate(days):
            count = _scaled_count(rng, rng.randint(*per_day), (hi - lo) / _DAY_MS, force=i == 0)
            for _ in range(count):
                by_day[i].append(_Session(self._session_start(lo, hi), make()))

    # ---- attack requests --------------------------------------------------------------------------

    def _hugger_request(self) -> _Request:
        rng = self.rng
        target = self.user.target
        in_level = self._hug_level() if rng.random() < self.hug_odds else rng.uniform(1.0, 1.25)
        out_level = self._hug_level() if rng.random() < 0.7 else rng.uniform(0.4, self.hug_lo)
        return _Request(target, in_level, target, out_level, attack=True)

    def _slow_burn_request(self) -> _Request:
        rng = self.rng
        target = self.user.target
        out_level = self._hug_level() if rng.random() < 0.3 else rng.uniform(0.3, self.hug_lo)
        return _Request(target, self._hug_level(), target, out_level, attack=True)

    def _bypass_request(self) -> _Request:
        rng = self.rng
        target = self.user.target
        return _Request(target, rng.uniform(0.02, 0.3), target, rng.uniform(1.0, 1.5), attack=True)

    def _flood_request(self) -> _Request:
        """Mildly elevated prompt; the answer elevated in the target, some hugging, ~12 % blocked."""
        rng = self.rng
        target = self.user.target
        roll = rng.random()
        if roll < 0.12:
            out_level = rng.uniform(1.0, 1.35)
        elif roll < 0.35:
            out_level = self._hug_level()
        else:
            out_level = rng.uniform(0.35, self.hug_lo)
        return _Request(target, rng.uniform(0.05, 0.45), target, out_level, attack=True)

    def _judge_evader_request(self) -> _Request:
        rng = self.rng
        target = self.user.target
        return _Request(
            target,
            rng.uniform(0.2, 0.7),
            target,
            rng.uniform(0.3, 0.75),
            judge_p=0.9,
            judge_unsafe_p=0.85,
            attack=True,
        )

    def _probe_session(self) -> list[_Request]:
        """Blocked, then rephrased 10-120 s later with a lower score, until one passes just under."""
        rng = self.rng
        target = self.user.target
        requests = [self._benign_request() for _ in range(rng.randint(0, 2))]
        level = rng.uniform(1.05, 1.5)
        for attempt in range(6):
            gap = rng.randint(10 * _SECOND_MS, 120 * _SECOND_MS) if attempt else None
            if level < 1.0 or attempt == 5:
                passing = _Request(target, self._hug_level(), target, rng.uniform(0.5, 1.1))
                passing.attack, passing.gap_ms = True, gap
                requests.append(passing)
                break
            requests.append(_Request(target, level, attack=True, gap_ms=gap))
            level *= rng.uniform(0.8, 0.93)
        requests.extend(self._benign_request() for _ in range(rng.randint(0, 2)))
        return requests

    def _decomposition_session(self) -> list[_Request]:
        """8-15 turns, each moderately elevated in the target category and none blocked."""
        rng = self.rng
        target = self.user.target
        return [
            _Request(
                target,
                rng.uniform(0.25, 0.45),
                target,
                rng.uniform(0.25, 0.5),
                attack=True,
                gap_ms=rng.randint(20 * _SECOND_MS, 180 * _SECOND_MS),
            )
            for _ in range(rng.randint(8, 15))
        ]

    # ---- rendering -----------------------------------------------------------------------------

    def _render(self, session: _Session) -> None:
        rng = self.rng
        user = self.user
        tenant = user.tenant
        self.session_no += 1
        session_id = f"s-{user.index:06d}-{self.session_no:05d}"
        model = tenant.models[_pick(rng, self.model_cum)]
        t = session.start_ms
        for turn, req in enumerate(session.requests):
            if turn > 0:
                t += req.gap_ms if req.gap_ms is not None else self._turn_gap()
            if t >= self.end_ms:
                return
            self.request_no += 1
            request_id = f"r-{user.index:06d}-{self.request_no:07d}"
            common = {"session_id": session_id, "turn": turn, "request_id": request_id}
            input_chars = int(_clip(_lognormal(rng, 280.0, 0.9), 1.0, 20_000.0))

            # Benign scores keep their absolute distribution whatever the policy; attacks aim at the one in force.
            policy = self._policy_at(t)
            aim = policy.thresholds if req.attack else self.thresholds
            scores = self._base_scores()
            if req.in_category is not None:
                scores[req.in_category] = _score(req.in_category, req.in_level, aim)
            hit = self._hits(scores, policy)
            verdict = "block" if hit else "allow"
            self._emit(t, req.attack, common, "input", scores, verdict, hit, model, input_chars, None, policy)
            if hit:
                continue

            t += _clip_int(_lognormal(rng, 2_500.0, 0.6), 500, 8_000)
            output_chars = int(_clip(_lognormal(rng, 1_100.0, 0.8), 1.0, 30_000.0))
            policy = self._policy_at(t)
            aim = policy.thresholds if req.attack else self.thresholds
            out_scores = self._base_scores()
            if req.out_category is not None:
                out_scores[req.out_category] = _score(req.out_category, req.out_level, aim)
            elif req.in_category is not None:
                # The answer mostly echoes the prompt's topic, usually a little milder.
                level = req.in_level * rng.uniform(0.4, 1.05)
                out_scores[req.in_category] = _score(req.in_category, level, aim)
            hit = self._hits(out_scores, policy)
            decision = ("redact" if rng.random() < _P_REDACT else "block") if hit else "allow"
            self._emit(
                t, req.attack, common, "output", out_scores, decision, hit, model, input_chars, output_chars, policy
            )
            if hit or rng.random() >= req.judge_p:
                continue

            t += rng.randint(1_000, 3_000)
            policy = self._policy_at(t)
            unsafe = rng.random() < req.judge_unsafe_p
            judge_scores = {c: round(s * rng.uniform(0.7, 1.0), 4) for c, s in out_scores.items()}
            if unsafe:
                category = req.out_category or req.in_category or self._random_category()
                judge_scores[category] = _score(category, rng.uniform(1.05, 1.5), policy.thresholds)
                judge_value = rng.uniform(0.65, 0.99)
            else:
                judge_value = rng.random() ** 2 * 0.35
            judge = {"name": _JUDGE_NAME, "verdict": "unsafe" if unsafe else "safe", "score": round(judge_value, 4)}
            self._emit(
                t,
                req.attack,
                common,
                "judge",
                judge_scores,
                "escalate" if unsafe else "allow",
                self._hits(judge_scores, policy),
                model,
                input_chars,
                output_chars,
                policy,
                judge,
            )

    def _turn_gap(self) -> int:
        return _clip_int(_lognormal(self.rng, 100_000.0, 0.8), 10_000, 20 * _MINUTE_MS)

    def _base_scores(self) -> dict[str, float]:
        # One randbytes call and C-level unpack/lookup per decision: the hot path of the whole simulation.
        draws = self.unpack_draws(self.rng.randbytes(self.draw_bytes))
        return dict(zip(self.categories, operator.itemgetter(*draws)(_BASE_SCORES), strict=True))

    def _policy_at(self, t: int) -> _Policy:
        return self.policy if self.change_ms is None or t < self.change_ms else self.changed_policy

    @staticmethod
    def _hits(scores: dict[str, float], policy: _Policy) -> list[str]:
        if max(scores.values()) < policy.min_threshold:
            return []  # the common case, decided without a per-category loop
        thresholds = policy.thresholds
        return [c for c, s in scores.items() if s >= thresholds[c]]

    def _emit(
        self,
        t: int,
        attack: bool,
        common: dict[str, Any],
        stage: str,
        scores: dict[str, float],
        decision: str,
        categories: list[str],
        model: str,
        input_chars: int,
        output_chars: int | None,
        policy: _Policy,
        judge: dict[str, Any] | None = None,
    ) -> None:
        rng = self.rng
        user = self.user
        if stage == "judge":
            guardrail = {"name": _JUDGE_NAME, "version": _JUDGE_VERSION}
            # an LLM judge is a model call, not a classifier: seconds, not milliseconds
            latency = _lognormal(rng, 1_400.0, 0.4)
        else:
            guardrail = {"name": self.guardrail.name, "version": self.guardrail.version}
            latency = _lognormal(rng, 38.0 if stage == "input" else 45.0, 0.35)
        # event_id and ts are filled in after global ordering; the keys are created here to fix the order
        body: dict[str, Any] = {
            "schema": SCHEMA,
            "event_id": "",
            "ts": "",
            "tenant": user.tenant.name,
            "user_id": user.user_id,
            **common,
            "stage": stage,
            "guardrail": guardrail,
            "policy_version": policy.version,
            "scores": scores,
            "thresholds": dict(policy.thresholds),
            "decision": decision,
            "categories": categories,
        }
        if judge is not None:
            body["judge"] = judge
        body["model"] = model
        body["latency_ms"] = round(latency, 1)
        body["input_chars"] = input_chars
        if output_chars is not None:
            body["output_chars"] = output_chars
        self.seq += 1
        self.rows.append(_Row(t, user.index, self.seq, attack, body))


def _score(category: str, level: float, thresholds: dict[str, float]) -> float:
    """A score ``level`` times the category's threshold, rounded like every emitted score."""
    return round(min(0.999, max(0.0, level * thresholds[category])), 4)


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _clip_int(x: float, lo: int, hi: int) -> int:
    return int(_clip(x, float(lo), float(hi)))


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(sigma * rng.gauss(0.0, 1.0))


def _cumulative(weights: Sequence[float]) -> tuple[float, ...]:
    return tuple(itertools.accumulate(weights))


def _pick(rng: random.Random, cumulative: Sequence[float]) -> int:
    """Index drawn with probability proportional to the weights behind ``cumulative``."""
    return min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0.0:
        return 0
    if lam > 30.0:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    k = 0
    p = rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _scaled_count(rng: random.Random, count: int, fraction: float, *, force: bool) -> int:
    """``count`` events a day, thinned for a partial day; ``force`` keeps at least one."""
    if fraction < 1.0:
        count = sum(1 for _ in range(count) if rng.random() < fraction)
    return max(count, 1) if force else count
