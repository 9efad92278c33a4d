"""The batch hot path, free of Kafka: decode once, dedupe, run the detectors, write one checkpoint.

The Faust agent (``streams/app.py``) hands each batch of raw messages here. ``prepare`` decides what is
valid; ``commit`` stores it together with detector state and the offsets it covers in one DuckDB
transaction. The database, not the consumer group, is the source of truth for what has been processed:
a message whose offset is below the stored ``next_offset`` is skipped, and an ``event_id`` already stored
is counted as a duplicate, so a crash, a restart or a full replay never loses or double-counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import md5
from itertools import accumulate, chain
from math import inf
from time import perf_counter, time
from typing import Protocol

import msgspec
import numpy as np
import orjson
import pyarrow as pa
from msgspec.structs import astuple

from detectors.alerts import AlertChange, AlertState
from detectors.base import Observation, layout_of
from detectors.engine import Engine
from detectors.events import Decision, Rejection, decode
from streams.privacy import redact_detail
from streams.store import Applied, Checkpoint, PartitionCheckpoint, UserKey

log = logging.getLogger("guardstream.pipeline")

DAY_MS = 86_400_000
TS_MS = pa.timestamp("ms", tz="UTC")
SCORE_MAP = pa.map_(pa.string(), pa.float64())


# The per-event records below are msgspec Structs, not frozen dataclasses: a frozen dataclass sets each field
# through object.__setattr__ (1.88 us to build a Message against 0.07 us for the Struct), and one of each is built
# for every event. gc=False: they never hold a reference cycle, so the collector need not track them.
class Message(msgspec.Struct, frozen=True, gc=False):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # the broker's record timestamp (produce time), for ingest latency


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    message: Message
    code: str
    detail: str
    event_id: str | None = None


_NO_PEAK = (None, 0.0)  # no category scored against a threshold


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """A decision that passed decoding and checks, with its message and what :func:`observe` made of it (its
    hugging and blocked categories, peak and smallest margin: the columns ``decision_rows`` adds to the event)."""

    message: Message
    obs: Observation

    @property
    def event(self) -> Decision:
        return self.obs.event

    @property
    def ts_ms(self) -> int:
        return self.obs.ts_ms


@dataclass(slots=True)
class Prepared:
    accepted: list[Accepted] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)
    already_committed: int = 0  # below the stored offset: processed before a restart
    not_assigned: int = 0  # partition revoked while the batch was in flight: the new owner reads it
    repeated: int = 0  # copies of an event_id already in this batch (duplicates never sent to the store)


@dataclass(slots=True)
class Outcome:
    new: list[Accepted] = field(default_factory=list)
    duplicates: int = 0
    changes: list[AlertChange] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)  # detector errors, dead-lettered before commit
    retry: dict[str, DeadLetter] = field(default_factory=dict)  # not committed: publish these, then commit again
    fenced: dict[int, int] = field(default_factory=dict)  # not committed: prepare the messages again, then commit
    category_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # stage, category, outcome
    # stage, guardrail, decision, peak category (whose AI 600-1 risk labels the decision)
    decision_counts: Counter[tuple[str, str, str, str | None]] = field(default_factory=Counter)
    # where this commit call's time went, over every attempt (the detectors start over after a refusal)
    detect_seconds: float = 0.0  # detectors, sweep and the batch's tables
    sink_seconds: float = 0.0  # the sink: fetching users' states and the transaction (DuckDB, or the writer over HTTP)
    # memory (detectors/engine.py StateLimits): what the caps folded in the committed attempt, by kind (category,
    # tenant); users whose state was fetched back from the sink for it; users evicted after it as idle
    folded: dict[str, int] = field(default_factory=dict)
    loaded_users: int = 0
    evicted_users: int = 0


class Sink(Protocol):
    """Where batches commit: the local DuckDB :class:`Store`, or the writer process over HTTP
    (:class:`streams.writer.RemoteSink`). Both refuse a batch instead of committing it twice."""

    def checkpoint(self, topic: str, partitions: Iterable[int]) -> dict[int, PartitionCheckpoint]: ...

    def user_states_for(self, keys: Mapping[int, Iterable[UserKey]]) -> dict[int, list[tuple[str, str, bytes]]]: ...

    def apply(self, cp: Checkpoint) -> Applied: ...

    def close(self) -> None: ...


class Pipeline:
    def __init__(
        self,
        store: Sink,
        engine: Engine,
        *,
        topic: str,
        pseudonym_key: bytes | None = None,
        max_future_ms: int = 86_400_000,
        max_past_ms: int | None = None,
        idle_user_ms: int | None = None,
        max_resident_users: int | None = None,
    ) -> None:
        """``max_future_ms`` / ``max_past_ms``: how far an event's ``ts`` may lie after / before the time its record
        was produced (``Settings.max_future_seconds`` and ``max_past_days``; no past horizon when ``None``). After
        each commit, users idle for ``idle_user_ms`` of event time leave memory, and the longest idle ones beyond
        ``max_resident_users`` (None: neither)."""
        self.max_future_ms = max_future_ms
        self.max_past_ms = max_past_ms
        self.idle_user_ms = idle_user_ms
        self.max_resident_users = max_resident_users
        self.store = store
        self.engine = engine
        self.band = engine.band  # one band for stored columns and detectors
        self.topic = topic
        self.pseudonym_key = pseudonym_key
        self.next_offsets: dict[int, int] = {}
        self.epochs: dict[int, int] = {}  # each partition's erasure epoch as loaded (see Store.forget)
        self.assigned: set[int] = set()
        self._layouts = Layouts()

    # -- partitions ------------------------------------------------------------------------------------
    def assign(self, partitions: set[int]) -> None:
        """Load the checkpoint of partitions this worker now owns."""
        new = partitions - self.assigned
        if new:
            self._load(new, "assigned")
            self.assigned |= new

    def _load(self, partitions: set[int], what: str) -> None:
        """Each partition's detector state and resume offset from the sink's checkpoint, swapped in whole. No user's
        state: each is fetched with the first batch that has a decision of theirs (see :meth:`_fetch_users`), so
        taking a partition over costs the same with a thousand users stored or a million."""
        for partition, cp in sorted(self.store.checkpoint(self.topic, partitions).items()):
            alerts = [_alert_state(row) for row in cp.alerts]
            self.engine.load_partition(partition, cp.population, (), alerts, cp.watermark_ms)
            self.next_offsets[partition] = cp.next_offset
            self.epochs[partition] = cp.epoch
            log.info("partition %d %s: resuming after offset %d", partition, what, cp.next_offset)

    def revoke(self, partitions: set[int]) -> None:
        for partition in partitions & self.assigned:
            self.engine.drop_partition(partition)
            self.next_offsets.pop(partition, None)
            self.epochs.pop(partition, None)
            self.assigned.discard(partition)

    def forget(self, user_id: str, tenant: str | None, epochs: Mapping[int, int]) -> int:
        """Drop a user the store has just erased (``Store.forget``, by this process: it holds the store) from the
        detectors' memory, and take the partitions' new epochs so the next batch there is not refused for it.
        Between batches only. Returns the users dropped from memory."""
        dropped = self.engine.forget_user(user_id, tenant)
        self.epochs.update((p, e) for p, e in epochs.items() if p in self.assigned)
        return dropped

    # -- the batch -------------------------------------------------------------------------------------
    def prepare(self, messages: list[Message], now_ms: int | None = None) -> Prepared:
        """Decode and check a batch. ``now_ms`` is the wall-clock time the batch arrived (default: now): the
        reference for event times of records without a Kafka timestamp, and the latest time any record can have
        been produced at (a producer sets its records' CreateTime, and one stamped in 9999 must not carry an
        event dated 9999 past the future check)."""
        out = Prepared()
        seen: set[str] = set()
        accepted = out.accepted
        observe = self.engine.observe
        if now_ms is None:
            now_ms = int(time() * 1000)
        max_future_ms = self.max_future_ms
        max_past_ms = inf if self.max_past_ms is None else self.max_past_ms
        for msg in messages:
            if msg.partition not in self.assigned:
                out.not_assigned += 1
                continue
            if msg.offset < self.next_offsets[msg.partition]:
                out.already_committed += 1
                continue
            out.offsets[msg.partition] = max(out.offsets.get(msg.partition, 0), msg.offset + 1)
            result = decode(msg.value, pseudonym_key=self.pseudonym_key)
            if isinstance(result, Rejection):
                out.dead_letters.append(DeadLetter(msg, result.code, result.detail))
                continue
            if result.event_id in seen:
                out.repeated += 1  # a duplicate inside one batch; counted with the stored duplicates
                continue
            seen.add(result.event_id)
            ts_ms = int(result.ts.timestamp() * 1000)
            # No Kafka timestamp: Kafka reports -1 (aiokafka passes it on; Faust makes it -0.001 s), old
            # message formats none at all. The arrival time stands in: the checks are never skipped.
            produced_ms = msg.timestamp_ms if msg.timestamp_ms > 0 else now_ms
            latest_ms = produced_ms if produced_ms < now_ms else now_ms
            if ts_ms - latest_ms > max_future_ms or produced_ms - ts_ms > max_past_ms:
                out.dead_letters.append(self._out_of_range(msg, result, ts_ms, now_ms))
                continue
            accepted.append(Accepted(msg, observe(result, ts_ms)))
        return out

    def _out_of_range(self, msg: Message, event: Decision, ts_ms: int, now_ms: int) -> DeadLetter:
        """The dead letter of an event whose ``ts`` is past the future limit or before the past horizon."""
        stamped = msg.timestamp_ms > 0
        produced_ms = msg.timestamp_ms if stamped else now_ms
        produced = "the record was produced" if stamped else "the record arrived (it has no Kafka timestamp)"
        ts = event.ts.isoformat()
        if ts_ms - min(produced_ms, now_ms) > self.max_future_ms:
            if produced_ms > now_ms:
                ahead = (ts_ms - now_ms) / 1000
                detail = f"ts {ts} is {ahead:,.0f}s after the record arrived (its Kafka timestamp is ahead too)"
            else:
                detail = f"ts {ts} is {(ts_ms - produced_ms) / 1000:,.0f}s after {produced}"
            return DeadLetter(msg, "future_timestamp", detail, event.event_id)
        age, limit = (produced_ms - ts_ms) / DAY_MS, (self.max_past_ms or 0) / DAY_MS
        detail = (
            f"ts {ts} is {age:,.1f} days before {produced}, past the {limit:g}-day horizon (GUARDSTREAM_MAX_PAST_DAYS)"
        )
        return DeadLetter(msg, "stale_timestamp", detail, event.event_id)

    def commit(self, prepared: Prepared, failed: Mapping[str, DeadLetter] | None = None) -> Outcome:
        """Run the detectors over the batch and commit it with its state and offsets in one sink transaction.

        The sink refuses a batch rather than commit it wrongly, and every refusal starts the batch over from
        the partitions' last checkpoint (the detectors' in-memory state already saw the batch):
        - an event already stored (a duplicate across batches or workers): again without it;
        - a partition another worker committed since this one loaded it (a rebalance; this worker may be the
          zombie): ``Outcome.fenced`` -- the caller prepares the messages again against the reloaded offsets.
        A detector that raises on an event must neither stop the stream nor let the event pass unnoticed, and
        its dead letter must be on the topic before the batch commits: ``Outcome.retry`` holds the failing
        events; the caller publishes them and calls again with them in ``failed``. They are then stored but
        kept from the detectors."""
        failed = failed or {}
        touched = {item.message.partition for item in prepared.accepted} | set(prepared.offsets)
        known: set[str] = set()  # event ids the sink reported stored already
        spent = [0.0, 0.0]  # detect, sink: over every attempt
        while True:
            outcome = Outcome(duplicates=prepared.repeated)
            batch = prepared.accepted
            if known:
                batch = [item for item in batch if item.obs.event.event_id not in known]
                outcome.duplicates += len(prepared.accepted) - len(batch)
            # An exception from the sink leaves the detectors' state ahead of the store: the caller must
            # stop (the worker exits; a restart resumes from the checkpoint) or reload these partitions.
            applied = self._attempt(batch, prepared, failed, touched, outcome)
            spent[0] += outcome.detect_seconds
            spent[1] += outcome.sink_seconds
            if applied is None:  # a detector raised
                self.reload(touched)
                return Outcome(retry=outcome.retry, detect_seconds=spent[0], sink_seconds=spent[1])
            if applied.duplicates:
                log.info("%d events of the batch were stored already: duplicates", len(applied.duplicates))
                known.update(applied.duplicates)
                self.reload(touched)
                continue
            if applied.fenced:
                log.warning(
                    "partitions %s were committed by another worker, or had a user erased (guardstream forget), "
                    "since this one loaded them: reloading",
                    ", ".join(f"{p} (stored offset {o})" for p, o in sorted(applied.fenced.items())),
                )
                self.reload(touched)
                return Outcome(fenced=applied.fenced, detect_seconds=spent[0], sink_seconds=spent[1])
            for partition, next_offset in prepared.offsets.items():
                self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), next_offset)
            # every user in memory is stored as it is now: idle ones may go
            if self.idle_user_ms is not None:
                outcome.evicted_users = self.engine.evict_idle(self.idle_user_ms)
            if self.max_resident_users is not None:
                outcome.evicted_users += self.engine.evict_over(self.max_resident_users)
            # A user erased in a partition this batch did not touch: reload it now (its state here equals the
            # store's, less the erased user) instead of holding the user until the next batch there.
            erased = {p for p in self.assigned - touched if applied.epochs.get(p, 0) != self.epochs.get(p, 0)}
            if erased:
                log.warning("a user was erased in partitions %s: reloading them", sorted(erased))
                self.reload(erased)
            outcome.detect_seconds, outcome.sink_seconds = spent
            return outcome

    def _attempt(
        self,
        batch: list[Accepted],
        prepared: Prepared,
        failed: Mapping[str, DeadLetter],
        touched: set[int],
        outcome: Outcome,
    ) -> Applied | None:
        started = perf_counter()
        outcome.loaded_users = self._fetch_users(batch, failed)
        fetched = perf_counter()
        folded = dict(self.engine.folded)
        process = self.engine.process
        for item in batch:
            event = item.obs.event
            outcome.new.append(item)
            peak = item.obs.peak
            outcome.decision_counts[(event.stage, event.guardrail.name, event.decision, peak[0] if peak else None)] += 1
            letter = failed.get(event.event_id)
            if letter is not None:
                outcome.dead_letters.append(letter)
                continue
            try:
                outcome.changes.extend(process(item.message.partition, item.obs))
            except Exception as exc:  # collect every failing event of the batch, then start over
                log.exception("detector failed on event %s; it goes to the dead-letter topic", event.event_id)
                outcome.retry[event.event_id] = DeadLetter(
                    item.message, "detector_error", f"{type(exc).__name__}: {exc}", event.event_id
                )
        if outcome.retry:
            outcome.detect_seconds = perf_counter() - fetched
            outcome.sink_seconds = fetched - started
            return None
        outcome.folded = {kind: n - folded[kind] for kind, n in self.engine.folded.items() if n > folded[kind]}
        daily = _daily_table(batch, outcome.category_counts)
        outcome.changes.extend(self.engine.sweep())
        dirty = self.engine.take_dirty()
        watermarks = {p: s.watermark_ms for p, s in self.engine.partitions.items()}
        touched.update(p for p, *_ in dirty.users)
        touched.update(p for p, _ in dirty.populations)
        touched.update(p for p, _ in dirty.alerts)
        decisions, layouts = self._decisions_table(batch) if batch else (None, None)
        checkpoint = Checkpoint(
            topic=self.topic,
            decisions=decisions,
            layouts=layouts,
            daily=daily,
            expected={p: self.next_offsets.get(p, 0) for p in touched},
            alerts=_alerts_table(dirty.alerts),
            alert_changes=_changes_table(outcome.changes),
            dead_letters=_dead_letters_table(
                self.topic, prepared.dead_letters + outcome.dead_letters, self.pseudonym_key
            ),
            users=dirty.users,
            populations=[(p, blob, watermarks.get(p, 0)) for p, blob in dirty.populations],
            offsets=prepared.offsets,
            epochs={p: self.epochs.get(p, 0) for p in touched},
        )
        applying = perf_counter()
        outcome.detect_seconds = applying - fetched
        try:
            return self.store.apply(checkpoint)
        finally:
            outcome.sink_seconds = perf_counter() - applying + fetched - started

    def _fetch_users(self, batch: list[Accepted], failed: Mapping[str, DeadLetter]) -> int:
        """Bring the batch's users whose state is not in memory back from the sink, in one request: users evicted
        while idle, not seen since this worker took their partition, or new (only the sink knows which). Returns
        how many the sink had."""
        missing = self.engine.missing_users(
            (item.message.partition, item.obs.event.tenant, item.obs.event.user_id)
            for item in batch
            if item.obs.event.event_id not in failed
        )
        if not missing:
            return 0
        loaded = 0
        for partition, users in self.store.user_states_for(missing).items():
            loaded += self.engine.load_users(partition, users)
        return loaded

    def reload(self, partitions: set[int]) -> None:
        """Back to the last committed checkpoint: the detectors' in-memory state of these partitions was
        changed by a batch that did not commit.

        The partitions stay assigned throughout: the worker prepares its next batch on another thread while
        this runs, and a partition missing from ``assigned`` for a moment would make that batch skip its
        messages as not ours (and its later offsets would then cover them). Each partition's state and resume
        offset are swapped in whole once loaded."""
        self.engine.discard_pending()
        if partitions & self.assigned:
            self._load(partitions & self.assigned, "reloaded")

    def _decisions_table(self, accepted: list[Accepted]) -> tuple[pa.Table, pa.Table]:
        """The batch's ``decision_rows`` and the ``score_layouts`` they use, column by column from the decoded
        structs: one C-level tuple per event, transposed with zip. Each row's scores are a list in the order
        of its layout's categories; the layout (categories and thresholds) goes to the store once per batch."""
        n = len(accepted)
        # one pass over the batch's objects for what is not in the decoded struct (each pass is a walk over
        # thousands of objects no longer in the CPU's caches)
        observations, ts_ms, min_margin, peaks, hugging, blocked, partitions, offsets_ = zip(
            *[
                (o, o.ts_ms, o.min_margin, o.peak or _NO_PEAK, o.hugging, o.blocked, m.partition, m.offset)
                for a in accepted
                for o, m in ((a.obs, a.message),)
            ],
            strict=True,
        )
        peak_category, peak_ratio = zip(*peaks, strict=True)
        events = [o.event for o in observations]
        columns = dict(zip(DECISION_FIELDS, zip(*map(astuple, events), strict=True), strict=True))
        guardrails = columns["guardrail"]
        judges = columns["judge"]
        scores = columns["scores"]
        layout_keys, batch_layouts = self._layouts.keys_of(observations)
        sizes = np.fromiter(map(len, scores), np.int64, n)
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(sizes, out=offsets[1:])
        values = np.fromiter(chain.from_iterable(m.values() for m in scores), np.float64, int(offsets[-1]))
        scored = sizes > 0
        highest = np.zeros(n, np.float64)
        if values.size:
            highest[scored] = np.maximum.reduceat(values, offsets[:-1][scored])
        now = datetime.now(UTC)
        decisions = pa.table(
            {
                "event_id": pa.array(columns["event_id"], pa.string()),
                "ts": pa.array(ts_ms, TS_MS),
                "tenant": pa.array(columns["tenant"], pa.string()),
                "user_id": pa.array(columns["user_id"], pa.string()),
                "session_id": pa.array(columns["session_id"], pa.string()),
                "turn": pa.array(columns["turn"], pa.int32()),
                "request_id": pa.array(columns["request_id"], pa.string()),
                "stage": pa.array(columns["stage"], pa.string()),
                "guardrail": pa.array([g.name for g in guardrails], pa.string()),
                "guardrail_version": pa.array([g.version for g in guardrails], pa.string()),
                "policy_version": pa.array(columns["policy_version"], pa.string()),
                "decision": pa.array(columns["decision"], pa.string()),
                "categories": pa.array(columns["categories"], pa.list_(pa.string())),
                "layout_key": pa.array(layout_keys, pa.uint64()),
                "scores": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                "max_score": pa.array(highest, mask=~scored),
                "min_margin": pa.array(min_margin, pa.float64()),
                "peak_ratio": pa.array(peak_ratio, pa.float64()),
                "peak_category": pa.array(peak_category, pa.string()),
                "hugging_categories": pa.array(hugging, pa.list_(pa.string())),
                "blocked_categories": pa.array(blocked, pa.list_(pa.string())),
                "judge_name": pa.array([j.name if j else None for j in judges], pa.string()),
                "judge_verdict": pa.array([j.verdict if j else None for j in judges], pa.string()),
                "judge_score": pa.array([j.score if j else None for j in judges], pa.float64()),
                "model": pa.array(columns["model"], pa.string()),
                "latency_ms": pa.array(columns["latency_ms"], pa.float64()),
                "input_chars": pa.array(columns["input_chars"], pa.int64()),
                "output_chars": pa.array(columns["output_chars"], pa.int64()),
                "kafka_partition": pa.array(partitions, pa.int32()),
                "kafka_offset": pa.array(offsets_, pa.int64()),
                "ingested_at": pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n),
            }
        )
        return decisions, layouts_table(batch_layouts)


DECISION_FIELDS = Decision.__struct_fields__


def event_key(event_id: str) -> int:
    """The dedup key stored in ``event_keys``: the first 8 bytes of the event id's md5, little-endian, which
    is what DuckDB's ``md5_number_upper`` computes (migration 003 derives the keys of older rows with it)."""
    return int.from_bytes(md5(event_id.encode()).digest()[:8], "little")


Layout = tuple[tuple[str, ...], tuple[tuple[str, float], ...]]


class Layouts:
    """The ``score_layouts`` key of each decision: its scored categories (in order) and its thresholds. A
    guardrail version under one policy has one layout, so each is keyed once and remembered (up to a bound,
    against producers that vary them per event)."""

    MAX = 65_536

    def __init__(self) -> None:
        self.known: dict[Layout, int] = {}
        self.by_index: dict[int, tuple[int, Layout]] = {}  # detectors.base.Layout index -> key, layout

    def keys_of(self, observations: Sequence[Observation]) -> tuple[list[int], dict[int, Layout]]:
        """:meth:`keys` of a batch's decisions, once per :class:`detectors.base.Layout` they were observed with."""
        by_index = self.by_index
        keys: list[int] = []
        used: dict[int, Layout] = {}
        for obs in observations:
            index = -1 if obs.layout is None else obs.layout.index
            found = by_index.get(index)
            if found is None:
                event = obs.event
                (key,), layouts = self.keys([event.scores], [event.thresholds])
                found = (key, layouts[key])
                if index >= 0:
                    by_index[index] = found
            keys.append(found[0])
            used[found[0]] = found[1]
        return keys, used

    def keys(
        self, scores: Sequence[dict[str, float]], thresholds: Sequence[dict[str, float]]
    ) -> tuple[list[int], dict[int, Layout]]:
        known = self.known
        keys: list[int] = []
        used: dict[int, Layout] = {}
        for score_map, threshold_map in zip(scores, thresholds, strict=True):
            layout = (tuple(score_map), tuple(threshold_map.items()))
            key = known.get(layout)
            if key is None:
                if len(known) >= self.MAX:
                    known.clear()
                key = known[layout] = int.from_bytes(md5(msgspec.msgpack.encode(layout)).digest()[:8], "little")
            keys.append(key)
            used[key] = layout
        return keys, used


def _score_map(maps: Sequence[dict[str, float]]) -> pa.MapArray:
    offsets = [0, *accumulate(map(len, maps))]
    keys = pa.array(list(chain.from_iterable(maps)), pa.string())
    values = pa.array(list(chain.from_iterable(m.values() for m in maps)), pa.float64())
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), keys, values, type=SCORE_MAP)


def layouts_table(layouts: Mapping[int, Layout]) -> pa.Table:
    entries = list(layouts.items())
    thresholds = [dict(t) for _k, (_c, t) in entries]
    return pa.table(
        {
            "layout_key": pa.array([k for k, _l in entries], pa.uint64()),
            "score_categories": pa.array([list(c) for _k, (c, _t) in entries], pa.list_(pa.string())),
            "thresholds": _score_map(thresholds),
        }
    )


def _daily_table(batch: list[Accepted], counts: Counter[tuple[str, str, str]]) -> pa.Table | None:
    """The batch's rows for ``user_category_daily`` (one per user, category and UTC day of event time, over the
    categories a decision has both a score and a threshold for), and the per-category outcome counts for the
    metrics. Decisions and score sums come from every score of the batch at once (numpy, in event order, so each
    sum adds up exactly as one score after another would); blocks and hugs from the categories ``observe`` found
    blocked and hugging."""
    groups: dict[tuple[str, str, int], int] = {}  # (tenant, user_id, day) -> row group
    columns: dict[str, int] = {}  # category -> column
    layout_columns: dict[int, list[int]] = {}  # id(layout) -> its categories' columns
    stage_codes = {"input": 0, "output": 1, "tool": 2, "judge": 3}
    owners: list[int] = []
    stages: list[int] = []
    sizes: list[int] = []
    cells: list[list[int]] = []
    values: list[Iterable[float]] = []
    hot: list[tuple[int, str, str, bool]] = []  # row group, stage, category, blocked (else hugging)
    for item in batch:
        obs = item.obs
        event = obs.event
        layout = obs.layout or layout_of(event)
        if not layout.categories:
            continue
        key = (event.tenant, event.user_id, obs.ts_ms // DAY_MS)
        group = groups.get(key)
        if group is None:
            group = groups[key] = len(groups)
        cats = layout_columns.get(id(layout))
        if cats is None:
            cats = layout_columns[id(layout)] = [columns.setdefault(c, len(columns)) for c in layout.categories]
        owners.append(group)
        stages.append(stage_codes[event.stage])
        sizes.append(len(cats))
        cells.append(cats)
        scores = event.scores
        values.append(scores.values() if layout.all_scored else [scores[c] for c in layout.categories])
        for category in obs.hugging:
            hot.append((group, event.stage, category, False))
        for category in obs.blocked:
            hot.append((group, event.stage, category, True))
    if not owners:
        return None
    width = len(columns)
    n_cells = sum(sizes)
    owner_of = np.repeat(np.asarray(owners, np.int64), sizes)
    column_of = np.fromiter(chain.from_iterable(cells), np.int64, n_cells)
    cell = owner_of * width + column_of
    size = len(groups) * width
    decisions = np.bincount(cell, minlength=size)
    score_sum = np.bincount(cell, weights=np.fromiter(chain.from_iterable(values), np.float64, n_cells), minlength=size)
    blocks = np.zeros(size, np.int64)
    hugs = np.zeros(size, np.int64)
    names = list(columns)
    stage_names = list(stage_codes)
    per_stage = np.bincount(np.repeat(np.asarray(stages, np.int64), sizes) * width + column_of, minlength=4 * width)
    moved: Counter[tuple[str, str, str]] = Counter()
    for group, stage, category, blocked in hot:
        index = group * width + columns[category]
        if blocked:
            blocks[index] += 1
            moved[(stage, category, "blocked")] += 1
        else:
            hugs[index] += 1
            moved[(stage, category, "hugging")] += 1
    for index in np.flatnonzero(per_stage).tolist():
        stage, category = stage_names[index // width], names[index % width]
        allowed = int(per_stage[index]) - moved[(stage, category, "blocked")] - moved[(stage, category, "hugging")]
        if allowed:
            counts[(stage, category, "allowed")] += allowed
    counts.update(moved)
    rows = np.flatnonzero(decisions)
    keys = list(groups)
    row_groups = (rows // width).tolist()
    return pa.table(
        {
            "tenant": pa.array([keys[g][0] for g in row_groups], pa.string()),
            "user_id": pa.array([keys[g][1] for g in row_groups], pa.string()),
            "category": pa.array(names, pa.string()).take(pa.array(rows % width)),
            "day": pa.array([keys[g][2] for g in row_groups], pa.int32()).cast(pa.date32()),
            "decisions": pa.array(decisions[rows], pa.int64()),
            "blocks": pa.array(blocks[rows], pa.int64()),
            "hugs": pa.array(hugs[rows], pa.int64()),
            "score_sum": pa.array(score_sum[rows], pa.float64()),
        }
    )


def _alert_state(row: dict[str, object]) -> AlertState:
    fields = dict(row)
    for name in ("evidence", "action"):
        value = fields[name]
        fields[name] = orjson.loads(value) if isinstance(value, str | bytes) else (value or {})
    return msgspec.convert(fields, AlertState)


def _alerts_table(alerts: list[tuple[int, AlertState]]) -> pa.Table | None:
    if not alerts:
        return None
    now = datetime.now(UTC)
    states = [a for _p, a in alerts]
    return pa.table(
        {
            "alert_id": [a.alert_id for a in states],
            "ts": pa.array([a.first_ts_ms for a in states], TS_MS),  # kept from the first insert on conflict
            "tenant": [a.tenant for a in states],
            "user_id": [a.user_id for a in states],
            "detector": [a.detector for a in states],
            "category": pa.array([a.category for a in states], pa.string()),
            "status": [a.status for a in states],
            "severity": [a.severity for a in states],
            "score": pa.array([a.score for a in states], pa.float64()),
            "reason": [a.reason for a in states],
            "evidence": [orjson.dumps(a.evidence).decode() for a in states],
            "action": [orjson.dumps(a.action).decode() for a in states],
            "first_ts": pa.array([a.first_ts_ms for a in states], TS_MS),
            "last_ts": pa.array([a.last_ts_ms for a in states], TS_MS),
            "changed_ts": pa.array([a.changed_ts_ms for a in states], TS_MS),
            "updates": pa.array([a.updates for a in states], pa.int32()),
            "episode": pa.array([a.episode for a in states], pa.int32()),
            "published_score": pa.array([a.published_score for a in states], pa.float64()),
            "kafka_partition": pa.array([p for p, _a in alerts], pa.int32()),
            "updated_at": pa.array([now] * len(states), pa.timestamp("us", tz="UTC")),
        }
    )


def _changes_table(changes: list[AlertChange]) -> pa.Table | None:
    if not changes:
        return None
    now = datetime.now(UTC)
    alerts = [c.alert for c in changes]
    return pa.table(
        {
            "change_id": [c.change_id for c in changes],
            "alert_id": [a.alert_id for a in alerts],
            "change": [c.change for c in changes],
            "ts": pa.array([c.ts_ms for c in changes], TS_MS),
            "tenant": [a.tenant for a in alerts],
            "user_id": [a.user_id for a in alerts],
            "detector": [a.detector for a in alerts],
            "category": pa.array([a.category for a in alerts], pa.string()),
            "status": [a.status for a in alerts],
            "severity": [a.severity for a in alerts],
            "score": pa.array([a.score for a in alerts], pa.float64()),
            "reason": [a.reason for a in alerts],
            "evidence": [orjson.dumps(a.evidence).decode() for a in alerts],
            "action": [orjson.dumps(a.action).decode() for a in alerts],
            "episode": pa.array([a.episode for a in alerts], pa.int32()),
            "created_at": pa.array([now] * len(changes), pa.timestamp("us", tz="UTC")),
            "published": [False] * len(changes),
        }
    )


def _dead_letters_table(topic: str, letters: list[DeadLetter], pseudonym_key: bytes | None = None) -> pa.Table | None:
    """The batch's ``dead_letters`` rows: where each rejected message was and why, never its bytes; the reason is
    scrubbed of the event's raw user id and text, should a check have quoted them (streams/privacy.py)."""
    if not letters:
        return None
    now = datetime.now(UTC)
    return pa.table(
        {
            "source_topic": [topic] * len(letters),
            "kafka_partition": pa.array([d.message.partition for d in letters], pa.int32()),
            "kafka_offset": pa.array([d.message.offset for d in letters], pa.int64()),
            "reason_code": [d.code for d in letters],
            "reason": [redact_detail(d.detail, d.message.value, pseudonym_key)[:2000] for d in letters],
            "size_bytes": pa.array([len(d.message.value or b"") for d in letters], pa.int64()),
            "event_id": pa.array([d.event_id for d in letters], pa.string()),
            "ingested_at": pa.array([now] * len(letters), pa.timestamp("us", tz="UTC")),
        }
    )
