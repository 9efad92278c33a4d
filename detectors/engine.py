"""Runs every detector over a stream of decoded decisions, keyed the way the stream is partitioned.

State lives per Kafka partition, so that a partition's results depend only on that partition's events
(the same answer on a replay, a restart or after a rebalance moved it) and so state moves with the
partition. The engine tracks which keys changed, so the sink writes one state row per changed key per
batch instead of one per event. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from detectors.boundary import BoundaryHugging, CategoryOutcome, CategoryStats, HuggingConfig, PopulationStats
from detectors.events import Decision
from detectors.findings import Finding

UserKey = tuple[str, str]  # (tenant, user_id)
UserState = dict[str, CategoryStats]  # category -> counters
Population = dict[str, dict[str, PopulationStats]]  # tenant -> category -> counters

_user_encoder = msgspec.msgpack.Encoder()
_user_decoder = msgspec.msgpack.Decoder(dict[str, CategoryStats])
_population_decoder = msgspec.msgpack.Decoder(dict[str, dict[str, PopulationStats]])


def encode_user(state: UserState) -> bytes:
    return _user_encoder.encode(state)


def decode_user(blob: bytes) -> UserState:
    return _user_decoder.decode(blob)


def encode_population(population: Population) -> bytes:
    return _user_encoder.encode(population)


def decode_population(blob: bytes) -> Population:
    return _population_decoder.decode(blob)


@dataclass(slots=True)
class PartitionState:
    population: Population = field(default_factory=dict)
    users: dict[UserKey, UserState] = field(default_factory=dict)
    dirty_users: set[UserKey] = field(default_factory=set)
    population_dirty: bool = False


@dataclass(frozen=True, slots=True)
class DirtyState:
    """What changed since the last checkpoint: the rows the sink must upsert."""

    users: list[tuple[int, str, str, bytes]]  # partition, tenant, user_id, encoded state
    populations: list[tuple[int, bytes]]  # partition, encoded population


class Engine:
    def __init__(self, hugging: HuggingConfig | None = None) -> None:
        self.hugging = BoundaryHugging(hugging)
        self.band = self.hugging.cfg.band
        self.partitions: dict[int, PartitionState] = {}

    def load_partition(self, partition: int, population: bytes | None, users: Iterable[tuple[str, str, bytes]]) -> None:
        state = PartitionState(population=decode_population(population) if population else {})
        for tenant, user_id, blob in users:
            state.users[(tenant, user_id)] = decode_user(blob)
        self.partitions[partition] = state

    def drop_partition(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def process(
        self, partition: int, event: Decision, ts_ms: int, outcomes: list[CategoryOutcome] | None = None
    ) -> list[Finding]:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState()
        key = (event.tenant, event.user_id)
        user = state.users.get(key)
        if user is None:
            user = state.users[key] = {}
        population = state.population.get(event.tenant)
        if population is None:
            population = state.population[event.tenant] = {}
        state.dirty_users.add(key)
        state.population_dirty = True
        return self.hugging.update(user, population, event, ts_ms, outcomes)

    def take_dirty(self) -> DirtyState:
        users: list[tuple[int, str, str, bytes]] = []
        populations: list[tuple[int, bytes]] = []
        for partition, state in self.partitions.items():
            for key in state.dirty_users:
                users.append((partition, key[0], key[1], encode_user(state.users[key])))
            state.dirty_users.clear()
            if state.population_dirty:
                populations.append((partition, encode_population(state.population)))
                state.population_dirty = False
        return DirtyState(users=users, populations=populations)

    def tracked_users(self) -> int:
        return sum(len(s.users) for s in self.partitions.values())
