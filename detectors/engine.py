"""Runs every detector over a stream of decoded decisions, keyed the way the stream is partitioned.

State lives per Kafka partition (users, population baselines and the alert book), so a partition's
results depend only on that partition's events: the same answer on a replay, a restart, after a
rebalance moved it, or offline in ``guardstream eval``. The engine tracks which keys changed, so the sink
writes one state row per changed key per batch instead of one per event. Pure: no I/O, no clock.
"""

from __future__ import annotations

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

# A user's state blob: COMPACT, then a msgpack map from each detector's short ``state_key`` to its state, leaving
# out detectors whose state is all defaults (their user structs omit default fields, so that state encodes as
# an empty map). 0xc1 is the one byte msgpack never uses, so it cannot start a blob written before this layout:
# a map keyed by detector name, which is still read.
COMPACT = b"\xc1"
_EMPTY = b"\x80"


@dataclass(slots=True)
class PartitionState:
    book: AlertBook
    population: dict[str, dict[str, Any]] = field(default_factory=dict)  # tenant -> detector -> state
    users: dict[UserKey, dict[str, Any]] = field(default_factory=dict)  # user -> detector -> state
    dirty_users: set[UserKey] = field(default_factory=set)
    population_dirty: bool = False
    watermark_ms: int = 0  # the largest event time seen in this partition


@dataclass(frozen=True, slots=True)
class DirtyState:
    """What changed since the last checkpoint: the rows the sink must upsert."""

    users: list[tuple[int, str, str, bytes]]  # partition, tenant, user_id, encoded state
    populations: list[tuple[int, bytes]]  # partition, encoded population
    alerts: list[tuple[int, AlertState]]  # partition, current alert state


class Engine:
    def __init__(
        self, detectors: Sequence[Detector], *, band: float = 0.2, alert_policy: AlertPolicy | None = None
    ) -> None:
        self.detectors = list(detectors)
        self.band = band
        self.alert_policy = alert_policy or AlertPolicy()
        self.partitions: dict[int, PartitionState] = {}
        self._user_decoders = {d.name: msgspec.msgpack.Decoder(d.user_state) for d in self.detectors}
        # (name, short key, user state type, a default user state to compare with), in detector order
        self._user_keys = [
            (d.name, str(getattr(d, "state_key", d.name)), d.user_state, d.user_state()) for d in self.detectors
        ]
        if len({key for _n, key, _t, _d in self._user_keys}) != len(self._user_keys):
            raise ValueError("two detectors share a state_key")
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
        return COMPACT + _encoder.encode(parts)

    def settle_user(self, state: dict[str, Any]) -> dict[str, Any]:
        """Fold in what detectors left pending in a user's state (see :class:`SettlesUsers`); before it is read."""
        for name, detector in self._user_settlers:
            part = state.get(name)
            if part is not None:
                detector.settle_user(part)
        return state

    def decode_user(self, blob: bytes) -> dict[str, Any]:
        """Every detector's state (a default one where the blob has none); reads both layouts."""
        compact = blob[:1] == COMPACT
        raw = _raw_map.decode(memoryview(blob)[1:] if compact else blob)
        out: dict[str, Any] = {}
        for name, key, user_state, _default in self._user_keys:
            value = raw.get(key if compact else name)
            out[name] = user_state() if value is None else self._user_decoders[name].decode(value)
        return out

    def encode_population(self, population: dict[str, dict[str, Any]]) -> bytes:
        self.settle_populations(population)
        return _encoder.encode(population)

    def settle_populations(self, population: dict[str, dict[str, Any]]) -> None:
        """Fold what detectors counted per layout into their per-category baselines (before they are read out)."""
        for per in population.values():
            for detector in self._settlers:
                part = per.get(detector.name)
                if part is not None:
                    detector.settle(part)

    def decode_population(self, blob: bytes) -> dict[str, dict[str, Any]]:
        raw = _raw_population.decode(blob)
        return {
            tenant: {
                name: self._population_decoders[name].decode(v)
                for name, v in per.items()
                if name in self._population_decoders
            }
            for tenant, per in raw.items()
        }

    def load_partition(
        self,
        partition: int,
        population: bytes | None,
        users: Iterable[tuple[str, str, bytes]],
        alerts: Iterable[AlertState] = (),
        watermark_ms: int = 0,
    ) -> None:
        book = AlertBook(self.alert_policy, {a.alert_id: a for a in alerts})
        state = PartitionState(book=book, watermark_ms=watermark_ms)
        if population:
            state.population = self.decode_population(population)
        for tenant, user_id, blob in users:
            state.users[(tenant, user_id)] = self.decode_user(blob)
        self.partitions[partition] = state

    def drop_partition(self, partition: int) -> None:
        self.partitions.pop(partition, None)

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
            user = state.users[key] = {}
        population = state.population.get(event.tenant)
        if population is None:
            population = state.population[event.tenant] = {}
        state.dirty_users.add(key)
        state.population_dirty = True
        if self._collectors:
            self._user_partition[key] = partition
        if obs.ts_ms > state.watermark_ms:
            state.watermark_ms = obs.ts_ms
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
                populations.append((partition, self.encode_population(state.population)))
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
        return sum(len(s.users) for s in self.partitions.values())
