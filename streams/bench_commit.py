"""``guardstream bench commit``: where a worker's commit path spends its time, without Kafka and its noise.

The live benchmark (``guardstream bench``) measures the whole worker against a broker on the same cores, and on a
shared 2-core machine one run of it varies by ±15%: too much to see a change of a few µs per event. This runs
the code a worker runs per batch -- :meth:`Pipeline.prepare` (decode, dedup, observe), :meth:`Pipeline.commit`
(every detector, the batch's Arrow tables, the DuckDB transaction) and the heap settle after it -- in one thread,
on simulated events already in memory, batch after batch into a fresh store, at each batch size asked for. A
plain pass gives the totals; an instrumented pass then times each detector, each table builder and each DuckDB
call (the timers add ~1 µs per event to that pass only). ``--floor`` adds a plain pass through an engine without
detectors right after the plain one: what decoding, the batch's tables and the sink cost on their own, and the
detectors' share of the rest, measured side by side. Quieter than the live bench, not quiet: on the shared
machine three back-to-back runs at batch 5,000 gave 17.2k-19.0k events/s, so compare changes interleaved.

Single-threaded: it leaves out the broker, Faust's consumer and the event loop, and the contention for the GIL
between the worker's two threads, so its events/s is an upper bound on what the same code does live.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import SecretStr

from streams.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from detectors.multivariate import AnomalyModel
    from streams.pipeline import Message, Pipeline

DEFAULT_EVENTS = 100_000
DEFAULT_BATCHES = (1000, 10_000)  # the second is the worker's batch_max_events
PHASES = ("prepare", "detect", "sink", "settle")


@dataclass
class Timings:
    """Seconds spent per phase, and per item inside the phases (instrumented pass only)."""

    phases: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    items: defaultdict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))  # (phase, item)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    batches: int = 0
    events: int = 0
    seconds: float = 0.0


class _TimedConnection:
    """A DuckDB connection whose calls are timed, each under the first words of its statement."""

    def __init__(self, conn: Any, timings: Timings) -> None:
        self._conn = conn
        self._t = timings

    def _timed(self, label: str, call: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self._t.items[("sink", label)] += time.perf_counter() - started
            self._t.calls[("sink", label)] += 1

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(statement_label(sql), self._conn.execute, sql, *args)

    def sql(self, sql: str, *args: Any) -> Any:
        return self._timed(statement_label(sql), self._conn.sql, sql, *args)

    def register(self, *args: Any) -> Any:
        return self._timed("register an Arrow table", self._conn.register, *args)

    def unregister(self, *args: Any) -> Any:
        return self._timed("unregister an Arrow table", self._conn.unregister, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def statement_label(sql: str) -> str:
    """``INSERT INTO alerts``, ``SELECT ... FROM decisions_batch, event_keys``, ``COMMIT``: a statement, briefly."""
    words = sql.replace("(", " ( ").replace(")", " ) ").split()
    if not words:
        return "(empty)"
    verb = words[0].upper()
    if verb == "INSERT" and len(words) > 2:
        return f"INSERT INTO {words[2]}"
    if verb == "UPDATE" and len(words) > 1:
        return f"UPDATE {words[1]}"
    if verb == "SELECT":
        sources = [
            following
            for word, following in pairwise(words)
            if word.upper() in ("FROM", "JOIN") and following not in ("(", ")") and following.upper() != "SELECT"
        ]
        return "SELECT ... FROM " + ", ".join(dict.fromkeys(sources)) if sources else "SELECT"
    return " ".join(words[:2]).upper() if verb == "BEGIN" else verb


class _TimedDetector:
    def __init__(self, detector: Any, timings: Timings) -> None:
        self._detector = detector
        self._items = timings.items
        self._key = ("detect", f"detector {detector.name}")

    def update(self, user: Any, population: Any, obs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._detector.update(user, population, obs)
        finally:
            self._items[self._key] += time.perf_counter() - started


@contextlib.contextmanager
def _instrumented(pipeline: Pipeline, timings: Timings) -> Iterator[None]:
    """Time the detectors, the batch's tables, the end-of-batch sweep and the dirty state, and every DuckDB call."""
    import streams.pipeline as pipeline_module

    engine = pipeline.engine
    store: Any = pipeline.store

    def timed(phase: str, label: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                timings.items[(phase, label)] += time.perf_counter() - started

        return run

    parts = engine._parts
    daily_table = pipeline_module._daily_table
    conn = store.conn
    engine._parts = [(name, _TimedDetector(d, timings), u, p) for name, d, u, p in parts]  # type: ignore[misc]
    engine.sweep = timed("detect", "sweep (batch scoring, alert resolution)", engine.sweep)  # type: ignore[method-assign]
    engine.take_dirty = timed("detect", "take the dirty state (encode blobs)", engine.take_dirty)  # type: ignore[method-assign]
    pipeline._decisions_table = timed("detect", "decisions table (Arrow)", pipeline._decisions_table)  # type: ignore[method-assign]
    pipeline_module._daily_table = timed("detect", "daily rows table (Arrow)", daily_table)
    store.conn = _TimedConnection(conn, timings)
    try:
        yield
    finally:
        engine._parts = parts
        del engine.sweep, engine.take_dirty, pipeline._decisions_table
        pipeline_module._daily_table = daily_table
        store.conn = conn


def messages_of(events: Sequence[dict[str, Any]], partitions: int) -> list[Message]:
    """The events as the worker receives them: JSON values keyed by user, on the partition Kafka would pick."""
    from streams.evaluate import kafka_partition
    from streams.pipeline import Message

    offsets = [0] * partitions
    out = []
    for event in events:
        key = str(event["user_id"]).encode()
        partition = kafka_partition(key, partitions)
        out.append(Message(partition, offsets[partition], key, orjson.dumps(event), 0))
        offsets[partition] += 1
    return out


def run_pass(
    messages: Sequence[Message],
    batch: int,
    partitions: int,
    workdir: Path,
    model: Path | None,
    *,
    instrument: bool,
    detectors: bool = True,
) -> Timings:
    """Every message through a fresh pipeline and store, ``batch`` at a time, as a worker would commit them.
    ``detectors=False``: an engine without any detector (the floor that decoding, the tables and the sink set)."""
    from detectors.engine import Engine
    from streams.heap import Heap
    from streams.store import Store
    from streams.worker import build_pipeline

    settings = Settings().with_overrides(  # a throwaway pseudonym key, as the worker must have one
        anomaly_model=model,
        decisions_topic="bench.commit",
        pseudonym_key=SecretStr(secrets.token_urlsafe(32)),
        allow_raw_user_ids=False,
    )
    name = f"commit-{batch}-{int(instrument)}{'' if detectors else '-floor'}.duckdb"
    store = Store(workdir / name, checkpoint_threshold="256MB")
    pipeline = build_pipeline(settings, store)  # the worker's detector config, model and pseudonym key
    if not detectors:
        pipeline.engine = Engine([], band=pipeline.engine.band, alert_policy=pipeline.engine.alert_policy)
    pipeline.assign(set(range(partitions)))
    heap = Heap(reclaim_seconds=0)
    heap.take_over()
    timings = Timings()
    clock = time.perf_counter
    try:
        with _instrumented(pipeline, timings) if instrument else contextlib.nullcontext():
            started = clock()
            for start in range(0, len(messages), batch):
                a = clock()
                prepared = pipeline.prepare(list(messages[start : start + batch]))
                b = clock()
                outcome = pipeline.commit(prepared)
                if outcome.retry or outcome.fenced:
                    raise RuntimeError("the benchmark's batch was refused: " + repr(outcome.retry or outcome.fenced))
                c = clock()
                timings.phases["detect"] += outcome.detect_seconds
                timings.phases["sink"] += outcome.sink_seconds
                del prepared, outcome
                heap.settle()
                d = clock()
                timings.phases["prepare"] += b - a
                timings.phases["settle"] += d - c
                timings.batches += 1
            timings.seconds = clock() - started
            timings.events = len(messages)
    finally:
        heap.reclaim()
        import gc

        gc.enable()
        store.close()
    return timings


def summarize(plain: Timings, instrumented: Timings, batch: int, floor: Timings | None = None) -> dict[str, Any]:
    n = plain.events or 1
    items = []
    for (phase, item), seconds in sorted(instrumented.items.items(), key=lambda kv: -kv[1]):
        items.append(
            {
                "phase": phase,
                "item": item,
                "us_per_event": seconds / n * 1e6,
                "ms_per_batch": seconds / max(instrumented.batches, 1) * 1e3,
                "calls": instrumented.calls.get((phase, item)),
            }
        )
    return {
        "batch": batch,
        "events": plain.events,
        "batches": plain.batches,
        # the plain pass: prepare (decode, dedup, observe), detect (detectors, sweep, the batch's tables),
        # sink (the store's transaction), settle (the young collection after the batch)
        **_rates(plain),
        "items": items,  # the instrumented pass
        # --floor: the same messages through an engine without detectors, right after the plain pass, and what the
        # detectors add to the commit path as a share of the plain pass's time
        "floor": None
        if floor is None
        else {**_rates(floor), "detectors_share": 1.0 - floor.seconds / plain.seconds if plain.seconds else None},
    }


def _rates(timings: Timings) -> dict[str, Any]:
    """A plain pass's events/s and µs per event in each phase."""
    n = timings.events or 1
    return {
        "events_per_second": timings.events / timings.seconds if timings.seconds else None,
        "us_per_event": {phase: timings.phases[phase] / n * 1e6 for phase in PHASES},
    }


def _phases_text(us_per_event: dict[str, float]) -> str:
    return " + ".join(f"{phase} {us_per_event[phase]:.1f}" for phase in PHASES)


def run_commit_bench(
    *,
    events: int = DEFAULT_EVENTS,
    batches: Sequence[int] = DEFAULT_BATCHES,
    partitions: int = 4,
    seed: int = 7,
    model: bool = True,
    workdir: Path | None = None,
    floor: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    from streams.bench import machine_info, simulated_events

    say = console.print if console is not None else (lambda *_a, **_k: None)
    simulated, users = simulated_events(events, seed)
    messages = messages_of(simulated, partitions)
    say(f"[dim]{len(messages):,} simulated decisions from {users:,} users, {partitions} partitions[/dim]")
    anomaly_model: AnomalyModel | None = None
    model_path: Path | None = None
    if model:
        from streams.evaluate import train_model
        from streams.simulator import SimConfig

        started = time.perf_counter()
        try:
            anomaly_model = train_model(SimConfig(users=users, days=7.0, seed=seed + 1), partitions=partitions)
        except ValueError as exc:
            say(f"[yellow]no anomaly model ({exc}); the multivariate detector only counts[/yellow]")
        else:
            say(f"[dim]anomaly model trained on another seed in {time.perf_counter() - started:.1f}s[/dim]")
    result: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"events": len(messages), "users": users, "partitions": partitions, "seed": seed, "model": model},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="guardstream-bench-commit-", dir=workdir) as tmp:
        if anomaly_model is not None:
            from streams.train import save

            model_path = Path(tmp) / "anomaly.joblib"
            save(anomaly_model, model_path)
        for batch in batches:
            plain = run_pass(messages, batch, partitions, Path(tmp), model_path, instrument=False)
            bare = None
            if floor:
                bare = run_pass(messages, batch, partitions, Path(tmp), model_path, instrument=False, detectors=False)
            timed = run_pass(messages, batch, partitions, Path(tmp), model_path, instrument=True)
            run = summarize(plain, timed, batch, bare)
            result["runs"].append(run)
            say(f"batch {batch:,}: {run['events_per_second']:,.0f} events/s in one thread")
    return result


def print_commit_report(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    for run in result["runs"]:
        title = (
            f"commit path, batches of {run['batch']:,}: {run['events_per_second']:,.0f} events/s in one thread "
            f"({_phases_text(run['us_per_event'])} µs per event); where it goes, from a second, instrumented pass:"
        )
        table = Table(title=title, title_justify="left")
        for column in ("phase", "what", "µs/event", "ms/batch", "calls"):
            table.add_column(column, justify="left" if column in ("phase", "what") else "right")
        for item in run["items"]:
            calls = item["calls"]
            table.add_row(
                item["phase"],
                item["item"],
                f"{item['us_per_event']:.2f}",
                f"{item['ms_per_batch']:.2f}",
                "" if calls is None else f"{calls:,}",
            )
        console.print(table)
        bare = run.get("floor")
        if bare is not None:
            console.print(
                f"without detectors (the same messages, right after): {bare['events_per_second']:,.0f} events/s "
                f"({_phases_text(bare['us_per_event'])} µs per event); the detectors take "
                f"{bare['detectors_share']:.0%} of the commit path"
            )
