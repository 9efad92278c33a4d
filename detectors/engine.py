"""Runs every detector over a stream of decoded decisions, keyed the way the stream is partitioned.

State lives per Kafka partition (users, population baselines and the alert book), so a partition's
results depend only on that partition's events: the same answer on a replay, a restart, after a
rebalance moved it, or offline in ``guardstream eval``. The engine tracks which keys changed, so the sink
writes one state row per changed key per batch instead of one per event. Pure: no I/O, no clock.

Memory stays bounded whatever the producers send (:class:`StateLimits`): a user idle for a while in event time
leaves memory once their state is stored (:meth:`Engine.evict_idle`) and is loaded back on their next event
(:meth:`Engine.load_users`); a user's detector state keeps at most so many categories and a partition at most so
many, the rest folded into :data:`OTHER_CATEGORY`; a partition keeps population baselines for at most so many
tenants, the rest sharing :data:`OVERFLOW_TENANT`'s. No detector reads another user's state, and a user's state is
settled before it is stored (:class:`detectors.base.SettlesUsers`), so an evicted user reloaded from the store
carries on exactly as if they had stayed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from detectors.alerts import AlertBook, AlertChange, AlertPolicy, AlertState
from detectors.base import BatchScoring, Detector, Observation, SettlesPopulation, SettlesUsers, observe
from detectors.events import Decision

UserKey = tuple[str, str]  # (tenant, user_id)

_encoder = msgspec.msgpack.Encoder()
_raw_map = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
_raw_population = msgspec.msgpack.Decoder(dict[str, dict[str, msgspec.Raw]])
_bytes = msgspec.msgpack.Decoder(bytes)

# A user's state blob: COMPACT, then a msgpack map from each detector's short ``state_key`` to its state, leaving
# out detectors whose state is all defaults (their user structs omit default fields, so that state encodes as
# an empty map). 0xc1 is the one byte msgpack never uses, so it cannot start a blob written before this layout:
# a map keyed by detector name, which is still read.
COMPACT = b"\xc1"
_EMPTY = b"\x80"
# The key of the user's admitted categories (see UserState.categories) in a compact blob: no detector's state_key.
_CATEGORIES_KEY = "c"
# A partition's population blob: COMPACT, then a msgpack array of [the partition's admitted categories, the map
# from tenant to detector to state]. Written so only once a category is admitted; a bare map (the layout before) is
# still read.
_raw_partition_population = msgspec.msgpack.Decoder(tuple[list[str], dict[str, dict[str, msgspec.Raw]]])

OTHER_CATEGORY = "__other__"
"""The category a user's or partition's categories beyond their cap are folded into (see :class:`StateLimits`)."""
OVERFLOW_TENANT = "__other__"
"""The population that tenants beyond a partition's cap share (see :class:`StateLimits`); never a real tenant's."""


class StateLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Caps that keep a partition's detector state bounded against hostile or runaway cardinality. The defaults are
    far above what real taxonomies and tenants need; ``streams/settings.py`` sets them from the environment."""

    max_categories_per_user: int = 64
    """Distinct categories one user's detector state keeps. A decision's categories beyond the first this many
    the user was scored in are folded into one ``__other__`` category for the detectors (scored as the folded
    category with the highest score/threshold ratio, with its threshold): hugging or blocks there still count,
    against the population's ``__other__`` baseline. The decision is stored with its real categories."""
    max_categories_per_partition: int = 256
    """Distinct categories a partition's detector state keeps (users and population baselines alike): a category
    first seen once this many are known is folded into ``__other__`` for every user of the partition."""
    max_tenants_per_partition: int = 256
    """Tenants with population baselines of their own in a partition; the decisions of tenants first seen after
    that share the ``__other__`` population's baselines (their users' state, alerts and stored decisions keep
    their real tenant). The whole population blob is written with every batch, so this bounds that write too."""


class UserState(dict[str, Any]):
    """A user's state: detector name -> that detector's state (a dict, as detectors and tests read it), plus what
    the engine keeps beside it. ``categories`` is the user's admitted categories, as a bit set over the
    partition's admitted categories (bit i: ``PartitionState.categories[i]``), stored in the user's blob.
    ``last_ts_ms`` is the latest event time of the user's decisions since they were loaded (in memory only: it
    decides when they are idle)."""

    __slots__ = ("categories", "last_ts_ms")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.categories = 0
        self.last_ts_ms = 0


@dataclass(slots=True)
class PartitionState:
    book: AlertBook
    population: dict[str, dict[str, Any]] = field(default_factory=dict)  # tenant -> detector -> state
    users: dict[UserKey, UserState] = field(default_factory=dict)  # user -> detector -> state (those in memory)
    dirty_users: set[UserKey] = field(default_factory=set)
    population_dirty: bool = False
    watermark_ms: int = 0  # the largest event time seen in this partition
    # the categories admitted to detector state, in order of admission (a user's UserState.categories are bits
    # over it; stored with the population): append-only, at most StateLimits.max_categories_per_partition
    categories: list[str] = field(default_factory=list)
    category_index: dict[str, int] = field(default_factory=dict)  # category -> its bit
    # Layout.index -> the bits of the layout's threshold categories, once all are admitted to the partition: a
    # decision of that layout needs no look at its categories when the user has every one of those bits
    layout_masks: dict[int, int] = field(default_factory=dict)
    tenants: int = 0  # tenants with a population of their own (every key of ``population`` but OVERFLOW_TENANT)
    idle_checked_ms: int | None = None  # the watermark at the last look for idle users


@dataclass(frozen=True, slots=True)
class DirtyState:
    """What changed since the last checkpoint: the rows the sink must upsert."""

    users: list[tuple[int, str, str, bytes]]  # partition, tenant, user_id, encoded state
    populations: list[tuple[int, bytes]]  # partition, encoded population
    alerts: list[tuple[int, AlertState]]  # partition, current alert state


class Engine:
    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        band: float = 0.2,
        alert_policy: AlertPolicy | None = None,
        limits: StateLimits | None = None,
    ) -> None:
        self.detectors = list(detectors)
        self.band = band
        self.alert_policy = alert_policy or AlertPolicy()
        self.limits = limits or StateLimits()
        # What the caps folded since this engine started, by kind: decision categories folded into OTHER_CATEGORY,
        # and decisions whose tenant shares OVERFLOW_TENANT's population (the pipeline turns them into a metric).
        self.folded = {"category": 0, "tenant": 0}
        self.partitions: dict[int, PartitionState] = {}
        self._user_decoders = {d.name: msgspec.msgpack.Decoder(d.user_state) for d in self.detectors}
        # (name, short key, user state type, a default user state to compare with), in detector order
        self._user_keys = [
            (d.name, str(getattr(d, "state_key", d.name)), d.user_state, d.user_state()) for d in self.detectors
        ]
        if len({key for _n, key, _t, _d in self._user_keys} | {_CATEGORIES_KEY}) != len(self._user_keys) + 1:
            raise ValueError(f"two detectors share a state_key (or one uses the engine's {_CATEGORIES_KEY!r})")
        self._population_decoders = {d.name: msgspec.msgpack.Decoder(d.population_state) for d in self.detectors}
        # Detectors that score in batches hand their findings over in sweep(); they must go to the alert
        # book of the partition the user is in.
        self._collectors = [d for d in self.detectors if isinstance(d, BatchScoring)]
        self._user_partition: dict[UserKey, int] = {}
        # Categories scored under this share of their threshold are quiet for every detector here (each says how
        # low it looks: ``hot_floor``; hugging starts at 1 - band). The margin keeps a rounding step in a
        # detector's own comparison (score / threshold >= f, say) from ever falling outside what is hot.
        floors = [float(getattr(d, "hot_floor", 0.0)) for d in self.detectors]
        self.hot_floor = max(0.0, min([*floors, 1.0 - band])) * (1.0 - 1e-9)
        self._settlers = [d for d in self.detectors if isinstance(d, SettlesPopulation)]
        self._user_settlers = [(d.name, d) for d in self.detectors if isinstance(d, SettlesUsers)]
        self._parts = [(d.name, d, d.user_state, d.population_state) for d in self.detectors]

    # -- state in and out ----------------------------------------------------------------------------
    def encode_user(self, state: dict[str, Any]) -> bytes:
        """The user's state blob; folds in what detectors left pending in ``state`` first (it changes ``state``)."""
        self.settle_user(state)
        parts: dict[str, Any] = {}
        for name, key, _type, default in self._user_keys:
            part = state.get(name)
            if part is not None and (part != default or _encoder.encode(part) != _EMPTY):
                parts[key] = part
        admitted = getattr(state, "categories", 0)
        if admitted:
            parts[_CATEGORIES_KEY] = admitted.to_bytes((admitted.bit_length() + 7) // 8, "little")
        return COMPACT + _encoder.encode(parts)

    def settle_user(self, state: dict[str, Any]) -> dict[str, Any]:
        """Fold in what detectors left pending in a user's state (see :class:`SettlesUsers`); before it is read."""
        for name, detector in self._user_settlers:
            part = state.get(name)
            if part is not None:
                detector.settle_user(part)
        return state

    def decode_user(self, blob: bytes) -> UserState:
        """Every detector's state (a default one where the blob has none); reads both layouts."""
        compact = blob[:1] == COMPACT
        raw = _raw_map.decode(memoryview(blob)[1:] if compact else blob)
        out = UserState()
        for name, key, user_state, _default in self._user_keys:
            value = raw.get(key if compact else name)
            out[name] = user_state() if value is None else self._user_decoders[name].decode(value)
        admitted = raw.get(_CATEGORIES_KEY) if compact else None
        if admitted is not None:
            out.categories = int.from_bytes(_bytes.decode(admitted), "little")
        return out

    def encode_population(self, population: dict[str, dict[str, Any]], categories: Sequence[str] = ()) -> bytes:
        """A partition's population blob, with the categories admitted to its detector state (if any yet)."""
        self.settle_populations(population)
        if not categories:
            return _encoder.encode(population)
        return COMPACT + _encoder.encode((categories, population))

    def settle_populations(self, population: dict[str, dict[str, Any]]) -> None:
        """Fold what detectors counted per layout into their per-category baselines (before they are read out)."""
        for per in population.values():
            for detector in self._settlers:
                part = per.get(detector.name)
                if part is not None:
                    detector.settle(part)

    def decode_population(self, blob: bytes) -> dict[str, dict[str, Any]]:
        return self.decode_partition_population(blob)[0]

    def decode_partition_population(self, blob: bytes) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """A population blob's populations by tenant, and the categories admitted to the partition's state."""
        if blob[:1] == COMPACT:
            categories, raw = _raw_partition_population.decode(memoryview(blob)[1:])
        else:
            categories, raw = [], _raw_population.decode(blob)
        population = {
            tenant: {
                name: self._population_decoders[name].decode(v)
                for name, v in per.items()
                if name in self._population_decoders
            }
            for tenant, per in raw.items()
        }
        return population, categories

    def load_partition(
        self,
        partition: int,
        population: bytes | None,
        users: Iterable[tuple[str, str, bytes]],
        alerts: Iterable[AlertState] = (),
        watermark_ms: int = 0,
    ) -> None:
        """A partition's state as stored: population (and admitted categories), alerts, watermark, and the users
        given (the pipeline gives none: it loads each user on their next event, :meth:`load_users`)."""
        book = AlertBook(self.alert_policy, {a.alert_id: a for a in alerts})
        state = PartitionState(book=book, watermark_ms=watermark_ms)
        if population:
            state.population, state.categories = self.decode_partition_population(population)
            state.category_index = {c: i for i, c in enumerate(state.categories)}
            state.tenants = len(state.population) - (OVERFLOW_TENANT in state.population)
        for tenant, user_id, blob in users:
            state.users[(tenant, user_id)] = self.decode_user(blob)
        self.partitions[partition] = state

    def drop_partition(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    # -- users in and out of memory ------------------------------------------------------------------
    def missing_users(self, keys: Iterable[tuple[int, str, str]]) -> dict[int, set[UserKey]]:
        """Of (partition, tenant, user_id), those whose state is not in memory, by partition: the users to fetch
        from the store before their decisions are processed (new users too: only the store knows)."""
        missing: dict[int, set[UserKey]] = {}
        partitions = self.partitions
        for partition, tenant, user_id in keys:
            state = partitions.get(partition)
            key = (tenant, user_id)
            if state is None or key not in state.users:
                missing.setdefault(partition, set()).add(key)
        return missing

    def load_users(self, partition: int, users: Iterable[tuple[str, str, bytes]]) -> int:
        """Bring stored users back into memory (their next decisions are being processed); returns how many. A
        user already in memory is kept as it is: what is in memory is never older than what is stored."""
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState(book=AlertBook(self.alert_policy))
        loaded = 0
        for tenant, user_id, blob in users:
            key = (tenant, user_id)
            if key not in state.users:
                state.users[key] = self.decode_user(blob)
                loaded += 1
        return loaded

    def evict_idle(self, idle_ms: int) -> int:
        """Drop from memory every user whose latest decision is more than ``idle_ms`` of event time behind their
        partition's watermark, and whose state is stored (not changed since the last :meth:`take_dirty`: call
        this once the sink committed what that returned). Returns how many. Event time, so a replay evicts the
        same users at the same point; a partition is looked over once its watermark moved a quarter of
        ``idle_ms`` since the last look, so the cost does not grow with the number of batches."""
        evicted = 0
        for state in self.partitions.values():
            watermark = state.watermark_ms
            if state.idle_checked_ms is not None and watermark - state.idle_checked_ms < idle_ms // 4:
                continue
            state.idle_checked_ms = watermark
            cutoff = watermark - idle_ms
            dirty = state.dirty_users
            idle = [key for key, user in state.users.items() if user.last_ts_ms < cutoff and key not in dirty]
            users = state.users
            for key in idle:
                del users[key]
            evicted += len(idle)
        return evicted

    def evict_over(self, max_users: int) -> int:
        """With more than ``max_users`` users in memory, drop the longest idle (behind their partition's watermark)
        whose state is stored, down to nine tenths of it, so that a flood of new user ids within the idle time is
        bounded too and the look over every user is not repeated with every batch. Returns how many."""
        total = self.tracked_users()
        if total <= max_users:
            return 0
        excess = total - max_users * 9 // 10
        candidates = [
            (user.last_ts_ms - state.watermark_ms, partition, key)
            for partition, state in self.partitions.items()
            for key, user in state.users.items()
            if key not in state.dirty_users
        ]
        oldest = heapq.nsmallest(excess, candidates)
        for _behind, partition, key in oldest:
            del self.partitions[partition].users[key]
        return len(oldest)

    def forget_user(self, user_id: str, tenant: str | None = None) -> int:
        """Drop a user (in every tenant unless ``tenant``) from every partition: detector state, alerts and what
        is marked to be written, so no later checkpoint writes them back (an erasure request, after the store
        erased them). The population baselines keep what the user's decisions added: aggregates, not per-user
        data. Call it between batches; returns the users dropped."""
        dropped = 0
        for state in self.partitions.values():
            for key in [k for k in state.users if k[1] == user_id and (tenant is None or k[0] == tenant)]:
                del state.users[key]
                state.dirty_users.discard(key)
                self._user_partition.pop(key, None)
                dropped += 1
            book = state.book
            for alert_id in [
                a.alert_id
                for a in book.alerts.values()
                if a.user_id == user_id and (tenant is None or a.tenant == tenant)
            ]:
                del book.alerts[alert_id]
                book.dirty.discard(alert_id)
        return dropped

    # -- the stream ----------------------------------------------------------------------------------
    def observe(self, event: Decision, ts_ms: int) -> Observation:
        return observe(event, ts_ms, self.band, self.hot_floor)

    def process(self, partition: int, obs: Observation) -> list[AlertChange]:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState(book=AlertBook(self.alert_policy))
        event = obs.event
        key = (event.tenant, event.user_id)
        user = state.users.get(key)
        if user is None:
            user = state.users[key] = UserState()
        ts_ms = obs.ts_ms
        if ts_ms > user.last_ts_ms:
            user.last_ts_ms = ts_ms
        layout = obs.layout
        mask = None if layout is None else state.layout_masks.get(layout.index)
        if mask is None or user.categories & mask != mask:
            obs = self._admit_categories(state, user, obs)
        population = state.population.get(event.tenant)
        if population is None:
            population = self._population_of(state, event.tenant)
        state.dirty_users.add(key)
        state.population_dirty = True
        if self._collectors:
            self._user_partition[key] = partition
        if ts_ms > state.watermark_ms:
            state.watermark_ms = ts_ms
        changes: list[AlertChange] = []
        for name, detector, user_state, population_state in self._parts:
            user_part = user.get(name)
            if user_part is None:
                user_part = user[name] = user_state()
            population_part = population.get(name)
            if population_part is None:
                population_part = population[name] = population_state()
            findings = detector.update(user_part, population_part, obs)
            if findings:
                for finding in findings:
                    changes.extend(state.book.observe(finding))
        return changes

    def _admit_categories(self, state: PartitionState, user: UserState, obs: Observation) -> Observation:
        """Admit the decision's threshold categories to the user's state (and the partition's) while the caps allow;
        the decision as the detectors see it, its categories beyond the caps folded (:func:`fold_categories`)."""
        event = obs.event
        limits = self.limits
        index = state.category_index
        names = state.categories
        admitted = user.categories
        count = admitted.bit_count()
        per_user = limits.max_categories_per_user
        mask = 0
        known = True  # every category of the decision is admitted to the partition
        folded: list[str] = []
        for category in event.thresholds:
            bit_index = index.get(category)
            if bit_index is None:
                known = False
                if count >= per_user or len(names) >= limits.max_categories_per_partition:
                    folded.append(category)
                    continue
                bit_index = index[category] = len(names)
                names.append(category)
            bit = 1 << bit_index
            mask |= bit
            if not admitted & bit:
                if count >= per_user:
                    folded.append(category)
                    continue
                admitted |= bit
                count += 1
        user.categories = admitted
        layout = obs.layout
        if layout is not None and layout.index >= 0 and (known or all(c in index for c in event.thresholds)):
            state.layout_masks[layout.index] = mask  # every category of the layout has its bit in ``mask``
        if not folded:
            return obs
        self.folded["category"] += len(folded)
        return self.observe(fold_categories(event, folded), obs.ts_ms)

    def _population_of(self, state: PartitionState, tenant: str) -> dict[str, Any]:
        """A tenant's population, made on their first decision while the partition has room for one more; beyond
        that (and for OVERFLOW_TENANT itself) the overflow population the rest share."""
        if tenant != OVERFLOW_TENANT and state.tenants < self.limits.max_tenants_per_partition:
            state.tenants += 1
            population: dict[str, Any] = {}
            state.population[tenant] = population
            return population
        self.folded["tenant"] += 1
        shared = state.population.get(OVERFLOW_TENANT)
        if shared is None:
            shared = state.population[OVERFLOW_TENANT] = {}
        return shared

    def sweep(self) -> list[AlertChange]:
        """End of a batch: score what batch-scoring detectors collected, then resolve alerts whose quiet
        period has passed, by each partition's own event time."""
        changes: list[AlertChange] = []
        for detector in self._collectors:
            for finding in detector.collect():
                partition = self._user_partition.get((finding.tenant, finding.user_id))
                if partition is not None and partition in self.partitions:
                    changes.extend(self.partitions[partition].book.observe(finding))
        self._user_partition.clear()
        for state in self.partitions.values():
            changes.extend(state.book.sweep(state.watermark_ms))
        return changes

    def discard_pending(self) -> None:
        """Forget what batch-scoring detectors collected (the batch it came from was rolled back)."""
        for detector in self._collectors:
            detector.discard()
        self._user_partition.clear()

    def take_dirty(self) -> DirtyState:
        users: list[tuple[int, str, str, bytes]] = []
        populations: list[tuple[int, bytes]] = []
        alerts: list[tuple[int, AlertState]] = []
        for partition, state in self.partitions.items():
            for key in state.dirty_users:
                users.append((partition, key[0], key[1], self.encode_user(state.users[key])))
            state.dirty_users.clear()
            if state.population_dirty:
                populations.append((partition, self.encode_population(state.population, state.categories)))
                state.population_dirty = False
            alerts.extend((partition, alert) for alert in state.book.take_dirty())
        return DirtyState(users=users, populations=populations, alerts=alerts)

    def alerts(self) -> Iterable[AlertState]:
        for state in self.partitions.values():
            yield from state.book.alerts.values()

    def populations(self, detector: str) -> list[Any]:
        """Every tenant's population state of one detector, across the partitions this engine holds."""
        for state in self.partitions.values():
            self.settle_populations(state.population)
        return [
            per[detector] for state in self.partitions.values() for per in state.population.values() if detector in per
        ]

    def tracked_users(self) -> int:
        """Users whose state is in memory (not those evicted while idle: their state is in the store)."""
        return sum(len(s.users) for s in self.partitions.values())


def fold_categories(event: Decision, folded: Sequence[str]) -> Decision:
    """The decision with the ``folded`` categories taken out of its scores and thresholds and replaced by one
    OTHER_CATEGORY: the folded category with the highest score/threshold ratio (ties to the smallest name), with its
    score and threshold, so the decision is blocked, hugging or elevated in ``__other__`` as it was in the worst of
    them. (A decision that already scored ``__other__`` keeps whichever of the two has the higher ratio.)"""
    drop = set(folded)
    scores = {c: s for c, s in event.scores.items() if c not in drop}
    thresholds = {c: t for c, t in event.thresholds.items() if c not in drop}
    worst: tuple[float, str, float, float] | None = None  # (-ratio, category, score, threshold): the smallest wins
    for category in folded:
        score = event.scores.get(category)
        if score is None:
            continue
        threshold = event.thresholds[category]
        candidate = (-score / threshold, category, score, threshold)
        if worst is None or candidate < worst:
            worst = candidate
    if worst is not None:
        _ratio, _category, score, threshold = worst
        own = thresholds.get(OTHER_CATEGORY)
        if own is None or scores.get(OTHER_CATEGORY, 0.0) / own < score / threshold:
            scores[OTHER_CATEGORY] = score
            thresholds[OTHER_CATEGORY] = threshold
    return msgspec.structs.replace(event, scores=scores, thresholds=thresholds)
