"""``guardstream bench``: the pipeline's throughput against the client and the framework, side by side.

The data is produced once into one topic; every variant then reads all of it from offset 0 with its own fresh
consumer group, in its own process (so its peak RSS is its own), one variant at a time:

* ``a``  the raw client ceiling: aiokafka ``getmany`` + guardstream's typed decoder, nothing else;
* ``b``  what a typical Faust user writes: one event at a time, JSON values, ``table[user] += 1`` on a Faust
  Table (memory store, so every update is one changelog record);
* ``b2`` a stock Faust agent that only decodes (typed decoder): the framework's floor;
* ``c``  the real pipeline, ``guardstream run``, on a fresh DuckDB file: every detector (with an anomaly model
  trained on another seed, as the demo does), persistence, outbox and metrics; timed from its first batch to
  the commit of the last offset;
* ``c0`` (``--floor``) the same pipeline with every detector disabled in its detector config: what Kafka, Faust,
  decoding, DuckDB and the metrics cost without the detectors, side by side with ``c``.

Then, optionally, ``--workers N``: the scale-out topology, N ``guardstream run --writer`` processes in one
consumer group sharing one store through a ``guardstream writer`` process, against one worker with a writer
measured the same way; each group is started on an empty topic and waits until the partitions are assigned,
disjoint and stable before the data is produced, so the figure is steady-state throughput, not a rebalance.

Last, detection latency: the same events produced at a fixed rate (half of ``c``'s throughput unless given)
with ``ts`` rewritten to the wall-clock send time, so event time is produce time; an alert change carries the
event time of the evidence that raised it and its Kafka record timestamp is when it was published, so their
difference is the end-to-end detection latency.

Nothing here is a test: the numbers are ratios measured in one run on one machine.

The module is also the child processes' entry point: ``python -m streams.bench raw|faust-naive|faust-decode``
(internal; they report to a JSON file the parent names). Its top-level imports are kept light so the raw
client child's RSS is the client's, not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

VARIANTS: dict[str, str] = {
    "a": "raw aiokafka getmany + typed decode",
    "b": "naive Faust: per event, JSON, table[user] += 1",
    "b2": "stock Faust agent, typed decode only",
    "c": "guardstream run: all detectors, DuckDB, metrics",
    "c0": "guardstream run, every detector disabled: DuckDB, metrics",
}
DEFAULT_VARIANTS = ("a", "b", "b2", "c")  # c0 with --floor
DEFAULT_EVENTS = 200_000
SIM_DAYS = 7.0
EVENTS_PER_USER_WEEK = 170  # the simulator gives ~179 decisions per user in 7 days; ask for a few more users
STALL_SECONDS = 120.0  # a variant that makes no progress this long has failed
SETTLE_SECONDS = 3.0  # a group's assignment must stay unchanged this long to count as settled
MIN_WINDOW_SHARE = 0.2  # scaling runs measure after the group settled if at least this share of the events is left
LOG_TAIL_LINES = 15
PROGRESS_EVERY = 2000  # children report their count every this many events
PRODUCE_TICK_SECONDS = 0.02  # the latency phase's producer sends what is due once per tick (the producer's linger)


class BenchError(RuntimeError):
    """An expected failure: one line for the user (with a log tail when a process died)."""


@dataclass(frozen=True)
class BenchOptions:
    events: int = DEFAULT_EVENTS
    partitions: int = 4
    only: tuple[str, ...] = DEFAULT_VARIANTS
    latency: bool = True
    latency_rate: float | None = None
    latency_events: int | None = None
    workers: int = 1
    bootstrap: str | None = None
    seed: int = 7
    workdir: Path | None = None
    rounds: int = 1  # every throughput variant this many times, in alternating order (see run_bench)


# -- shared helpers ------------------------------------------------------------------------------------
def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """VmHWM (peak resident set) of a live process, from /proc; None where /proc has no such field."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU time a live process has used so far, from /proc; None where /proc has no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # the parent never sees half a result


class _Finish:
    """Counts what a child consumed, knows when every partition reached its target, reports progress."""

    def __init__(self, targets: dict[int, int], progress_path: Path) -> None:
        self.targets = targets
        self.progress_path = progress_path
        self.done: set[int] = {p for p, end in targets.items() if end <= 0}
        self.count = 0
        self.rejected = 0
        self.first: float | None = None
        self.last: float | None = None

    def seen(self, partition: int, offset: int, n: int = 1) -> bool:
        if self.first is None:
            self.first = time.perf_counter()
        self.count += n
        if self.count % PROGRESS_EVERY < n:
            self.progress_path.write_text(str(self.count))
        if partition not in self.done and offset + 1 >= self.targets.get(partition, 0):
            self.done.add(partition)
        if len(self.done) >= len(self.targets):
            self.last = time.perf_counter()
            return True
        return False

    def result(self, **extra: Any) -> dict[str, Any]:
        seconds = max(1e-9, (self.last or time.perf_counter()) - (self.first or 0.0))
        return {
            "events": self.count,
            "rejected": self.rejected,
            "seconds": seconds,
            "events_per_second": self.count / seconds,
            "peak_rss_bytes": peak_rss_bytes(),
            "pid": os.getpid(),
            **extra,
        }


# -- child (a): the raw client ceiling ------------------------------------------------------------------
async def _raw_client(settings: Settings, topic: str, group: str, finish: _Finish) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    from detectors.events import Rejection, decode
    from streams.broker import client_kwargs

    consumer = AIOKafkaConsumer(
        topic, **client_kwargs(settings), group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        complete = False
        while not complete:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batch and finish.first is None:
                finish.first = time.perf_counter()  # timed from the first fetch, decoding included
            for tp, records in batch.items():
                for record in records:
                    if isinstance(decode(record.value), Rejection):
                        finish.rejected += 1
                complete = finish.seen(tp.partition, records[-1].offset, len(records)) or complete
        return finish.result()
    finally:
        await consumer.stop()


# -- children (b) and (b2): Faust apps --------------------------------------------------------------------
def _faust_child(kind: str, settings: Settings, args: argparse.Namespace, finish: _Finish) -> None:
    import faust

    from detectors.events import Rejection, decode
    from streams.app import faust_broker_credentials

    app = faust.App(
        args.group,
        broker=[f"kafka://{hp.strip()}" for hp in settings.bootstrap.split(",")],
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",
        autodiscover=False,
        datadir=args.datadir,
        topic_partitions=args.partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # Not stock, as in guardstream's app: a new group's first join waits for the rebalance timeout (30 s
        # of the default 60 s on tansu). Group membership only; nothing on the consuming path changes.
        broker_session_timeout=settings.session_timeout_seconds,
        broker_rebalance_timeout=settings.rebalance_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        version=1,
    )
    result_path = Path(args.result)

    async def report(**extra: Any) -> None:
        if kind == "faust-naive":
            await app.producer.flush()  # the table's changelog is part of the work
            finish.last = time.perf_counter()
        _write_json(result_path, finish.result(**extra))

    if kind == "faust-naive":
        topic = app.topic(args.topic, key_serializer="raw", value_serializer="json")
        user_events = app.Table("user_events", default=int)

        @app.agent(topic)
        async def naive(stream: Any) -> None:
            async for event in stream:
                user_events[event["user_id"]] += 1
                message = stream.current_event.message
                if finish.seen(message.partition, message.offset):
                    await report(changelog_records=finish.count, table_keys=len(user_events))

    else:
        topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")

        @app.agent(topic)
        async def decode_only(stream: Any) -> None:
            async for value in stream:
                if isinstance(decode(value), Rejection):
                    finish.rejected += 1
                message = stream.current_event.message
                if finish.seen(message.partition, message.offset):
                    await report()

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def child_main(argv: Sequence[str] | None = None) -> None:
    """``python -m streams.bench raw|faust-naive|faust-decode ...``: one variant, until the parent stops it."""
    parser = argparse.ArgumentParser(prog="python -m streams.bench", description="guardstream bench child process")
    parser.add_argument("kind", choices=["raw", "faust-naive", "faust-decode"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--targets", required=True, help="JSON {partition: offset after the last message}")
    parser.add_argument("--result", required=True)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--datadir", default=None)
    args = parser.parse_args(argv)
    settings = Settings().with_overrides(bootstrap=args.bootstrap)
    targets = {int(p): int(o) for p, o in json.loads(args.targets).items()}
    finish = _Finish(targets, Path(args.progress))
    if args.kind == "raw":
        _write_json(Path(args.result), asyncio.run(_raw_client(settings, args.topic, args.group, finish)))
    else:
        _faust_child(args.kind, settings, args, finish)


# -- the parent ---------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """Names, files and processes of one bench invocation (cleaned up in ``close``)."""

    settings: Settings
    workdir: Path
    run_id: str
    console: Console
    model_args: list[str] = field(default_factory=list)
    # every pipeline of the run pseudonymizes with one throwaway key, as a deployment must (the data is simulated)
    pseudonym_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    broker_pid: int | None = None  # the embedded broker's, for its CPU in the latency phase
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    def name(self, what: str) -> str:
        return f"guardstream-bench-{self.run_id}-{what}"

    def log(self, what: str) -> Path:
        return self.workdir / f"{what}.log"

    def spawn(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
            )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        stop_process(proc, timeout)
        with contextlib.suppress(ValueError):
            self.processes.remove(proc)

    def close(self) -> None:
        for proc in list(self.processes):
            self.stop(proc)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "(empty log)"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _died(what: str, proc: subprocess.Popen[bytes], log: Path) -> BenchError:
    return BenchError(f"{what} exited with code {proc.returncode}; the end of {log}:\n{log_tail(log)}")


def simulated_events(events: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """About ``events`` simulated decisions (exactly that many: the earliest of a week's traffic) and the users."""
    from streams.simulator import SimConfig, simulate

    users = max(50, -(-events // EVENTS_PER_USER_WEEK))
    while True:
        sim = simulate(SimConfig(users=users, days=SIM_DAYS, seed=seed))
        if len(sim.events) >= events:
            return sim.events[:events], users
        users = int(users * 1.2) + 1


def _bar(console: Console) -> Progress:
    from streams.output import progress_bar

    return progress_bar(console, description="{task.description:<34}")


def _produce_all(run: _Run, topic: str, events: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
    from streams.broker import ensure_topics
    from streams.produce import produce

    settings = run.settings.with_overrides(decisions_topic=topic)
    asyncio.run(ensure_topics(settings, [topic]))
    run.topics.append(topic)
    with _bar(run.console) as progress:
        task = progress.add_task(label, total=len(events))
        started = time.perf_counter()
        targets = asyncio.run(produce(settings, events, progress=lambda n: progress.advance(task, n)))
        seconds = time.perf_counter() - started
    if sum(targets.values()) != len(events):
        raise BenchError(
            f"the broker acknowledged {sum(targets.values()):,} offsets for {len(events):,} events on a fresh topic"
        )
    return {"targets": targets, "seconds": seconds, "events_per_second": len(events) / seconds}


# -- variants a, b, b2 ----------------------------------------------------------------------------------------
def _run_child(run: _Run, variant: str, topic: str, targets: dict[int, int], tag: str | None = None) -> dict[str, Any]:
    """Variant a, b or b2 in its own process; ``tag`` (default: the variant) names its group, files and log."""
    from rich.markup import escape

    kind = {"a": "raw", "b": "faust-naive", "b2": "faust-decode"}[variant]
    tag = tag or variant
    group = run.name(f"group-{tag}")
    result = run.workdir / f"{tag}.result.json"
    progress_file = run.workdir / f"{tag}.progress"
    datadir = run.workdir / f"{tag}-faust-data"
    log = run.log(tag)
    total = sum(targets.values())
    proc = run.spawn(
        [
            sys.executable,
            "-m",
            "streams.bench",
            kind,
            "--bootstrap",
            run.settings.bootstrap,
            "--topic",
            topic,
            "--group",
            group,
            "--partitions",
            str(run.settings.topic_partitions),
            "--targets",
            json.dumps(targets),
            "--result",
            str(result),
            "--progress",
            str(progress_file),
            "--datadir",
            str(datadir),
        ],
        log,
    )
    if variant == "b":
        run.topics.append(f"{group}-user_events-changelog")
    try:
        with _bar(run.console) as progress:
            task = progress.add_task(escape(f"{tag:<3} {VARIANTS[variant]}"), total=total)
            last, stalled_since = -1, time.monotonic()
            while not result.exists():
                if proc.poll() is not None:
                    raise _died(f"variant {variant} ({kind})", proc, log)
                with contextlib.suppress(OSError, ValueError):
                    done = int(progress_file.read_text() or 0)
                    progress.update(task, completed=done)
                    if done != last:
                        last, stalled_since = done, time.monotonic()
                if time.monotonic() - stalled_since > STALL_SECONDS:
                    raise BenchError(
                        f"variant {variant} made no progress for {STALL_SECONDS:.0f}s at {max(last, 0):,}/{total:,}; "
                        f"the end of {log}:\n{log_tail(log)}"
                    )
                time.sleep(0.2)
            progress.update(task, completed=total)
        data: dict[str, Any] = json.loads(result.read_text())
    finally:
        run.stop(proc)
    return {"variant": variant, "what": VARIANTS[variant], "workers": 1, **data}


# -- variant c and the pipeline groups ---------------------------------------------------------------------------
@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path


class PipelineGroup:
    """``workers`` ``guardstream run`` processes in one fresh consumer group: one standalone worker with its own
    DuckDB file, or (``writer``) workers committing to one ``guardstream writer`` process that owns the file."""

    def __init__(
        self, run: _Run, label: str, topic: str, workers: int, writer: bool = False, detectors: bool = True
    ) -> None:
        from streams.broker import free_port
        from streams.produce import simulated_past_days
        from streams.simulator import SimConfig

        self.run = run
        self.label = label
        self.topic = topic
        self.alerts_topic = run.name(f"{label}-alerts")
        run.topics += [self.alerts_topic, run.name(f"{label}-dlq")]
        env = {
            **os.environ,
            "GUARDSTREAM_BOOTSTRAP": run.settings.bootstrap,
            "GUARDSTREAM_DECISIONS_TOPIC": topic,
            "GUARDSTREAM_ALERTS_TOPIC": self.alerts_topic,
            "GUARDSTREAM_DLQ_TOPIC": run.name(f"{label}-dlq"),
            "GUARDSTREAM_CONSUMER_GROUP": run.name(f"{label}-group"),
            "GUARDSTREAM_TOPIC_PARTITIONS": str(run.settings.topic_partitions),
            "GUARDSTREAM_PSEUDONYM_KEY": run.pseudonym_key,
        }
        env.setdefault("GUARDSTREAM_MAX_PAST_DAYS", str(simulated_past_days(SimConfig().start)))
        env.pop("GUARDSTREAM_ALLOW_RAW_USER_IDS", None)
        if not detectors:
            env["GUARDSTREAM_DETECTOR_CONFIG"] = str(_no_detectors_config(run.workdir))
        cli = [sys.executable, "-m", "streams.cli"]
        self.writer: _Worker | None = None
        if writer:
            port, db, log = free_port(), run.workdir / f"{label}-writer.duckdb", run.log(f"{label}-writer")
            proc = run.spawn([*cli, "writer", "--db", str(db), "--port", str(port)], log, env)
            self.writer = _Worker(proc, f"http://127.0.0.1:{port}", db, log)
        self.settled: tuple[float, int] | None = None
        self.workers: list[_Worker] = []
        for i in range(workers):
            port = free_port()
            db = run.workdir / f"{label}-{i}.duckdb"
            log = run.log(f"{label}-worker-{i}")
            store = ["--writer", self.writer.url] if self.writer is not None else ["--db", str(db)]
            proc = run.spawn([*cli, "run", *store, "--web-port", str(port), *run.model_args], log, env)
            self.workers.append(_Worker(proc, f"http://127.0.0.1:{port}", db, log))

    def check_alive(self, doing: str) -> None:
        for i, w in enumerate(self.workers):
            if w.proc.poll() is not None:
                raise _died(f"pipeline worker {i} ({self.label}) {doing}", w.proc, w.log)
        if self.writer is not None and self.writer.proc.poll() is not None:
            raise _died(f"the writer ({self.label}) {doing}", self.writer.proc, self.writer.log)

    def statuses(self) -> list[dict[str, Any]]:
        from streams.demo import _get_json

        self.check_alive("while running")
        return [_get_json(w.url + "/status", timeout=10) for w in self.workers]

    def wait_started(self, timeout: float = 120.0) -> None:
        from streams.demo import DemoError, _get_json, _wait_for_service

        if self.writer is not None:
            deadline = time.monotonic() + timeout
            while True:
                self.check_alive("while starting")
                with contextlib.suppress(OSError):
                    if _get_json(self.writer.url + "/status").get("role") == "writer":
                        break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the writer did not serve {self.writer.url}; the end of its log:\n" + log_tail(self.writer.log)
                    )
                time.sleep(0.25)

        for i, w in enumerate(self.workers):
            try:
                _wait_for_service(w.url, w.proc, timeout)
            except DemoError as exc:
                raise BenchError(
                    f"pipeline worker {i} ({self.label}): {exc}; the end of {w.log}:\n{log_tail(w.log)}"
                ) from None

    def wait_settled(self, partitions: int, timeout: float = 120.0) -> list[list[int]]:
        """Until every partition is owned by exactly one worker, every worker owns some, for SETTLE_SECONDS.
        ``settled`` keeps the wall time the final assignment began and how many events were counted then."""
        deadline = time.monotonic() + timeout
        last: list[frozenset[int]] | None = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            statuses = self.statuses()
            owned = [frozenset(int(p) for p in s["partitions"]) for s in statuses]
            settled = (
                all(owned)
                and sum(len(o) for o in owned) == partitions
                and frozenset().union(*owned) == frozenset(range(partitions))
            )
            if not settled or owned != last:
                last, stable_since = owned, time.monotonic()
                self.settled = (time.time(), sum(_counted(s) for s in statuses))
            elif time.monotonic() - stable_since >= SETTLE_SECONDS:
                return [sorted(o) for o in owned]
            time.sleep(0.25)
        raise BenchError(f"the {len(self.workers)} pipeline workers did not settle on {partitions} partitions: {last}")

    def wait_done(self, targets: dict[int, int], progress: Progress, task: Any) -> list[dict[str, Any]]:
        total = sum(targets.values())
        last, stalled_since = -1, time.monotonic()
        while True:
            statuses = self.statuses()
            reached: dict[int, int] = {}
            for status in statuses:
                for p, part in status["partitions"].items():
                    reached[int(p)] = max(reached.get(int(p), 0), int(part.get("next_offset", 0)))
            done = sum(min(reached.get(p, 0), end) for p, end in targets.items())
            recorded = sum(s["counts"].get("decisions", 0) + s["counts"].get("dead_letters", 0) for s in statuses)
            progress.update(task, completed=done)
            if done >= total and recorded >= total and all(s.get("last_commit_at") for s in statuses):
                return statuses
            if done != last:
                last, stalled_since = done, time.monotonic()
            elif time.monotonic() - stalled_since > STALL_SECONDS:
                logs = "\n".join(f"  {w.log}:\n{log_tail(w.log, 5)}" for w in self.workers)
                raise BenchError(
                    f"the pipeline made no progress for {STALL_SECONDS:.0f}s at {done:,}/{total:,}:\n{logs}"
                )
            time.sleep(0.25)

    def result(self, statuses: list[dict[str, Any]], variant: str, since_settled: bool = False) -> dict[str, Any]:
        """Events per second from the first batch to the last commit; ``since_settled``: from the moment the group's
        final assignment began (the events counted before it left out), if enough were left to measure."""
        active = [s for s in statuses if s.get("first_batch_at")]
        first = min(s["first_batch_at"] for s in active)
        last = max(s["last_commit_at"] for s in active)
        seconds = max(1e-9, last - first)
        events = sum(_counted(s) for s in statuses)
        window = "whole run"
        if since_settled and self.settled is not None:
            settled_at, before = self.settled
            if events - before >= MIN_WINDOW_SHARE * events and last > settled_at:
                events, seconds, window = events - before, last - settled_at, "after the group settled"
        rss = [peak_rss_bytes(w.proc.pid) for w in self.workers]
        writer_rss = peak_rss_bytes(self.writer.proc.pid) if self.writer is not None else None
        return {
            "variant": variant,
            "what": VARIANTS.get(variant, VARIANTS["c"]),
            "workers": len(self.workers),
            "events": events,
            "decisions": sum(s["counts"].get("decisions", 0) for s in statuses),
            "alert_changes": sum(s["counts"].get("alert_changes", 0) for s in statuses),
            "seconds": seconds,
            "events_per_second": events / seconds,
            "peak_rss_bytes": max((r for r in rss if r is not None), default=None),
            "peak_rss_bytes_per_worker": rss,
            "writer": self.writer is not None,
            "writer_peak_rss_bytes": writer_rss,
            "window": window,
        }

    def stop(self) -> None:
        """Stop every process, first keeping each one's final /metrics beside its log (batch and commit
        histograms explain a run's figures afterwards: ``--workdir`` keeps them)."""
        import urllib.request

        for w in [*self.workers, *([self.writer] if self.writer is not None else [])]:
            with contextlib.suppress(OSError), urllib.request.urlopen(w.url + "/metrics", timeout=10) as response:
                w.log.with_suffix(".metrics.txt").write_bytes(response.read())
        for w in self.workers:
            self.run.stop(w.proc, timeout=60)
        if self.writer is not None:
            self.run.stop(self.writer.proc, timeout=60)


def _run_pipeline(run: _Run, topic: str, targets: dict[int, int], tag: str = "c", variant: str = "c") -> dict[str, Any]:
    """Variant c (or c0, its detectors disabled): one worker reading the already produced topic from offset 0
    (``tag`` names its group and files)."""
    group = PipelineGroup(run, tag, topic, 1, detectors=variant != "c0")
    try:
        with _bar(run.console) as progress:
            task = progress.add_task(f"{tag:<3} {VARIANTS[variant]}", total=sum(targets.values()))
            group.wait_started()
            statuses = group.wait_done(targets, progress, task)
        return group.result(statuses, variant)
    finally:
        group.stop()


def _no_detectors_config(workdir: Path) -> Path:
    """A detector config that disables every detector: c0, the pipeline's floor without them."""
    from detectors.registry import DetectorConfig, build_detectors

    path = workdir / "no-detectors.toml"
    names = ", ".join(f'"{d.name}"' for d in build_detectors(DetectorConfig()))
    path.write_text(f"disabled = [{names}]\n")
    return path


def _run_scaling(run: _Run, events: Sequence[dict[str, Any]], workers: int) -> dict[str, Any]:
    """``workers`` processes sharing one store through a writer process (the scale-out topology; one worker runs
    the same way for the ratio), in one group over a topic produced beforehand. Throughput counts from the moment
    the group's final assignment began: what the workers did alone or during the rebalance is left out, and no
    producer shares the machine with them (once they outran the producer, feeding them live measured it)."""
    label = f"c{workers}"
    topic = run.name(f"{label}-decisions")
    from streams.broker import ensure_topics

    asyncio.run(ensure_topics(run.settings.with_overrides(decisions_topic=topic), [topic]))
    run.topics.append(topic)
    produced = _produce_all(run, topic, events, f"produce for {workers} worker(s)")
    group = PipelineGroup(run, label, topic, workers, writer=True)
    try:
        with _bar(run.console) as progress:
            task = progress.add_task(f"c×{workers}", total=len(events))
            group.wait_started()
            assignment = group.wait_settled(run.settings.topic_partitions)
            statuses = group.wait_done(produced["targets"], progress, task)
        run.console.print(f"[dim]{workers} worker(s) settled: partitions {assignment}[/dim]")
        result = group.result(statuses, label, since_settled=True)
        result["assignment"] = assignment
        result["what"] = f"guardstream run --writer × {workers} + guardstream writer, after the group settled"
        return result
    finally:
        group.stop()


def _counted(status: dict[str, Any]) -> int:
    counts = status["counts"]
    return int(counts.get("decisions", 0) + counts.get("dead_letters", 0))


# -- detection latency -----------------------------------------------------------------------------------------
async def _paced_produce(
    settings: Settings,
    topic: str,
    events: Sequence[dict[str, Any]],
    rate: float,
    advance: Callable[[int], None],
    max_batch_bytes: int = 1 << 20,
) -> dict[int, int]:
    """Send ``events`` at ``rate`` per second, each with ``ts`` = the wall clock when it is sent.

    The producer shares the machine's cores with the worker it measures, so it does as little per event as it
    can: every event is encoded once beforehand around a stand-in for ``ts`` and its partition is the one
    ``send()`` would pick for its key (murmur2, worked out once per user); each tick's events then go out as one
    record batch per partition, a tick every :data:`PRODUCE_TICK_SECONDS` (as a producer's linger would batch
    them; ``ts`` is still each event's send time). One ``send()`` and one ``orjson.dumps`` per event, in ticks as
    short as the next event's due time, took ~0.35 of a core at 9,000 events/s: CPU the worker under test did not
    get."""
    import orjson
    from aiokafka.partitioner import DefaultPartitioner

    from streams.broker import producer
    from streams.simulator import format_ts

    stand_in = b'"@@ts@@"'
    targets: dict[int, int] = {}
    pending: list[tuple[asyncio.Future[Any], int]] = []

    def settle(block: bool) -> None:
        while pending and (block or pending[0][0].done()):
            future, count = pending.pop(0)
            metadata = future.result()
            targets[metadata.partition] = max(targets.get(metadata.partition, 0), metadata.offset + count)

    async with producer(settings, linger_ms=2, max_batch_size=max_batch_bytes) as prod:
        partitions = sorted(await prod.partitions_for(topic))
        partition_of: dict[bytes, int] = {}
        encoded: list[tuple[int, bytes, bytes, bytes]] = []  # partition, key, value before ts, value after ts
        for event in events:
            key = event["user_id"].encode()
            partition = partition_of.get(key)
            if partition is None:
                partition = partition_of[key] = DefaultPartitioner()(key, partitions, partitions)
            head, tail = orjson.dumps({**event, "ts": "@@ts@@"}).split(stand_in)
            encoded.append((partition, key, head + b'"', b'"' + tail))
        started = time.perf_counter()
        sent = 0
        while sent < len(encoded):
            now = time.perf_counter() - started
            due = min(len(encoded), int(now * rate) + 1)
            if due <= sent:
                await asyncio.sleep(max(0.0, (sent + 1) / rate - now))
                continue
            ts = format_ts(datetime.now(UTC)).encode()
            batches: dict[int, tuple[Any, int]] = {}
            for partition, key, head, tail in encoded[sent:due]:
                value = head + ts + tail
                batch, count = batches.get(partition) or (prod.create_batch(), 0)
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                    pending.append((await prod.send_batch(batch, topic, partition=partition), count))
                    batch, count = prod.create_batch(), 0
                    batch.append(key=key, value=value, timestamp=None)
                batches[partition] = (batch, count + 1)
            for partition, (batch, count) in batches.items():
                pending.append((await prod.send_batch(batch, topic, partition=partition), count))
            advance(due - sent)
            sent = due
            settle(block=False)
            await asyncio.sleep(PRODUCE_TICK_SECONDS)  # what is due by then goes out together, as a linger would
        await prod.flush()
        await asyncio.gather(*(future for future, _count in pending))
        settle(block=True)
    return targets


async def _read_alerts(settings: Settings, topic: str, expected: int, idle_seconds: float = 3.0) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    from streams.broker import client_kwargs

    consumer = AIOKafkaConsumer(
        topic, **client_kwargs(settings), group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records: list[Any] = []
        idle_since = time.monotonic()
        while len(records) < expected and time.monotonic() - idle_since < idle_seconds:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
            if batch:
                idle_since = time.monotonic()
        return records
    finally:
        await consumer.stop()


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))]


def alert_latencies(records: Sequence[Any]) -> tuple[list[float], dict[str, int]]:
    """Milliseconds from the triggering event's time (the change's ``ts``) to the record's publish timestamp.

    ``resolved`` changes are left out: their ``ts`` is the end of a quiet period, not an event."""
    import orjson

    latencies: list[float] = []
    changes: dict[str, int] = {}
    for record in records:
        body = orjson.loads(record.value)
        change = str(body.get("change"))
        changes[change] = changes.get(change, 0) + 1
        if change == "resolved":
            continue
        ts = datetime.fromisoformat(body["ts"])
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        latencies.append(record.timestamp - ts.timestamp() * 1000)
    return sorted(latencies), changes


def _run_latency(run: _Run, events: Sequence[dict[str, Any]], rate: float, basis: str) -> dict[str, Any]:
    from streams.broker import ensure_topics

    topic = run.name("latency-decisions")
    asyncio.run(ensure_topics(run.settings.with_overrides(decisions_topic=topic), [topic]))
    run.topics.append(topic)
    group = PipelineGroup(run, "latency", topic, 1)
    try:
        group.wait_started()
        group.wait_settled(run.settings.topic_partitions)
        # who used the machine's cores while the events were produced and processed: the worker under test, the
        # benchmark's own producer (this process) and the embedded broker
        pids = {"worker": [w.proc.pid for w in group.workers], "producer": [os.getpid()]}
        if run.broker_pid is not None:
            pids["broker"] = [run.broker_pid]
        cpu_before = {who: [cpu_seconds(p) for p in ps] for who, ps in pids.items()}
        began = time.perf_counter()
        with _bar(run.console) as progress:
            sent = progress.add_task(f"produce at {rate:,.0f}/s, ts = now", total=len(events))
            targets = asyncio.run(
                _paced_produce(run.settings, topic, events, rate, lambda n: progress.advance(sent, n))
            )
            task = progress.add_task("pipeline", total=len(events))
            statuses = group.wait_done(targets, progress, task)
        elapsed = time.perf_counter() - began
        cores = {}
        for who, ps in pids.items():
            used = sum((cpu_seconds(p) or 0.0) - (b or 0.0) for p, b in zip(ps, cpu_before[who], strict=True))
            cores[who] = round(used / elapsed, 3)
        expected = sum(s["counts"].get("alert_changes", 0) for s in statuses)
        records = asyncio.run(_read_alerts(run.settings, group.alerts_topic, expected))
    finally:
        group.stop()
    latencies, changes = alert_latencies(records)
    result: dict[str, Any] = {
        "rate": rate,
        "rate_basis": basis,
        "events": len(events),
        "alert_changes": len(records),
        "changes": changes,
        "alerts": len(latencies),
        "cores": cores,  # CPU seconds per second while producing and processing, by process
    }
    if latencies:
        result.update(
            p50_ms=percentile(latencies, 50),
            p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99),
            max_ms=latencies[-1],
            min_ms=latencies[0],
        )
    return result


# -- orchestration --------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import aiokafka
    import duckdb
    import faust

    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "faust": faust.__version__,
        "aiokafka": aiokafka.__version__,
        "duckdb": duckdb.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": _commit(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # a shared machine: who else was busy
    }


def _commit() -> str | None:
    """The checkout's commit (with ``+`` when the working tree differs), when run from a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


@contextlib.contextmanager
def workspace(workdir: Path | None) -> Iterator[Path]:
    """``workdir`` (kept), or a temporary directory removed afterwards, except after a BenchError whose
    message names a log inside it."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    path = Path(tempfile.mkdtemp(prefix="guardstream-bench-"))
    try:
        yield path
    except BenchError:
        raise  # kept: the error names a log in it
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _broker(bootstrap: str | None, console: Console) -> Iterator[tuple[str, int | None]]:
    """The bootstrap address, and the broker's pid when the bench started it."""
    if bootstrap is not None:
        yield bootstrap, None
        return
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        console.print(f"[bold]embedded broker[/bold] tansu on {broker.bootstrap} (memory storage)")
        yield broker.bootstrap, broker.process.pid if broker.process is not None else None


def _delete_topics(settings: Settings, topics: list[str]) -> None:
    """Best effort, for a broker the bench did not start (the embedded one forgets everything anyway)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.broker import client_kwargs

    async def delete() -> None:
        admin = AIOKafkaAdminClient(**client_kwargs(settings))
        await admin.start()
        try:
            await admin.delete_topics(topics)
        finally:
            await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(delete())


def _train_model(run: _Run, users: int, seed: int) -> None:
    from streams.evaluate import train_model
    from streams.simulator import SimConfig
    from streams.train import save

    started = time.perf_counter()
    try:
        model = train_model(SimConfig(users=users, days=SIM_DAYS, seed=seed), partitions=run.settings.topic_partitions)
    except ValueError as exc:
        run.console.print(f"[yellow]no anomaly model ({exc}); the multivariate detector only counts[/yellow]")
        return
    path = run.workdir / "anomaly.joblib"
    save(model, path)
    run.model_args = ["--anomaly-model", str(path)]
    run.console.print(
        f"[dim]anomaly model trained on {model.trained_users:,} users of another seed in "
        f"{time.perf_counter() - started:.1f}s (the pipeline runs every detector)[/dim]"
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def run_bench(options: BenchOptions, console: Console) -> dict[str, Any]:
    """Run the selected variants on one freshly produced data set; returns the JSON-ready result."""
    unknown = [v for v in options.only if v not in VARIANTS]
    if unknown:
        raise BenchError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if options.workers > 1 and "c" not in options.only:
        raise BenchError("--workers needs variant c (the pipeline)")
    if options.workers > options.partitions:
        raise BenchError(f"--workers {options.workers} exceeds --partitions {options.partitions}: some would idle")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            "events": options.events,
            "partitions": options.partitions,
            "only": list(options.only),
            "workers": options.workers,
            "seed": options.seed,
            "broker": options.bootstrap or "embedded tansu (memory storage)",
        },
        "variants": {},
    }
    events, users = simulated_events(options.events, options.seed)
    result["settings"].update(users=users, days=SIM_DAYS, avg_event_bytes=_average_size(events))
    console.print(
        f"[bold]simulator[/bold] {len(events):,} decisions from {users:,} users (the first of {SIM_DAYS:g} days), "
        f"~{result['settings']['avg_event_bytes']} bytes each"
    )
    latency_wanted = options.latency and ("c" in options.only or options.latency_rate is not None)
    if options.latency and not latency_wanted:
        console.print("[dim]no latency phase: it runs at half of c's throughput (add c, or give --latency-rate)[/dim]")
    with workspace(options.workdir) as workdir, _broker(options.bootstrap, console) as (bootstrap, broker_pid):
        settings = Settings().with_overrides(bootstrap=bootstrap, topic_partitions=options.partitions)
        run = _Run(
            settings=settings, workdir=workdir, run_id=uuid.uuid4().hex[:8], console=console, broker_pid=broker_pid
        )
        try:
            if "c" in options.only or latency_wanted:
                _train_model(run, users, options.seed)
            produced = _produce_all(run, run.name("decisions"), events, "produce")
            targets = produced["targets"]
            result["produced"] = {
                "events": len(events),
                "targets": {str(p): o for p, o in sorted(targets.items())},
                "seconds": produced["seconds"],
                "events_per_second": produced["events_per_second"],
            }
            selected = [v for v in VARIANTS if v in options.only]
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in selected}
            for round_index in range(options.rounds):
                # The machine's speed drifts over minutes: alternating the order puts each variant early and late.
                order = selected if round_index % 2 == 0 else selected[::-1]
                for variant in order:
                    tag = variant if round_index == 0 else f"{variant}.r{round_index + 1}"
                    if variant in ("c", "c0"):
                        outcome = _run_pipeline(run, run.name("decisions"), targets, tag, variant)
                    else:
                        outcome = _run_child(run, variant, run.name("decisions"), targets, tag)
                    runs[variant].append(outcome)
                    console.print(
                        f"  {tag:<6}{outcome['events_per_second']:>10,.0f} events/s  ({outcome['events']:,} in "
                        f"{outcome['seconds']:.1f}s, peak RSS {_mib(outcome['peak_rss_bytes'])})",
                        highlight=False,
                    )
            result["settings"]["rounds"] = options.rounds
            result["variants"], result["ratios"], result["round_ratios"] = summarize_rounds(runs)
            rates = {v: r["events_per_second"] for v, r in result["variants"].items()}
            if options.workers > 1:
                one = _run_scaling(run, events, 1)
                many = _run_scaling(run, events, options.workers)
                result["scaling"] = {
                    "workers": options.workers,
                    "one": one,
                    "many": many,
                    "ratio": ratio(many["events_per_second"], one["events_per_second"]),
                    "ratio_vs_c": ratio(many["events_per_second"], rates.get("c")),
                }
            if latency_wanted:
                basis = "--latency-rate"
                rate = options.latency_rate
                if rate is None:
                    rate, basis = 0.5 * rates["c"], "50% of c"
                count = min(len(events), options.latency_events or len(events))
                result["latency"] = _run_latency(run, events[:count], rate, basis)
        finally:
            run.close()
            if options.bootstrap is not None:
                _delete_topics(settings, run.topics)
        if options.workdir is not None:
            result["workdir"] = str(workdir)
    result["seconds"] = time.perf_counter() - started
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def summarize_rounds(
    runs: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, float | None], list[dict[str, float | None]]]:
    """Each variant's median run (the lower middle one for an even count: a run that happened), with every round's
    events/s in ``rounds``; the ratios c/b, c/b2 and c/a of each round, whose runs were side by side, and their
    median. With one round these are that round's figures."""
    variants: dict[str, dict[str, Any]] = {}
    for variant, outcomes in runs.items():
        ordered = sorted(outcomes, key=lambda o: o["events_per_second"])
        variants[variant] = {**ordered[(len(ordered) - 1) // 2], "rounds": [o["events_per_second"] for o in outcomes]}
    per_round: list[dict[str, float | None]] = []
    if "c" in runs:
        for index, c in enumerate(runs["c"]):
            per_round.append(
                {
                    f"c/{v}": ratio(c["events_per_second"], runs[v][index]["events_per_second"])
                    for v in ("b", "b2", "a", "c0")
                    if v in runs
                }
            )
    ratios: dict[str, float | None] = {}
    for key in per_round[0] if per_round else ():
        values = [v for r in per_round if (v := r[key]) is not None]
        ratios[key] = statistics.median(values) if values else None
    return variants, ratios, per_round


def _average_size(events: Sequence[dict[str, Any]]) -> int:
    import orjson

    sample = events[:: max(1, len(events) // 1000)]
    return round(sum(len(orjson.dumps(e)) for e in sample) / max(1, len(sample)))


# -- reports ------------------------------------------------------------------------------------------------------
def _mib(n: int | None) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n else "-"


def _x(value: float | None) -> str:
    return f"{value:.2f}×" if value else "-"


def _rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(variant, what, events and seconds, events/s, c ÷ this, peak RSS) for every variant run."""
    c = result["variants"].get("c", {}).get("events_per_second")
    ratios = result.get("ratios") or {}
    rows = []
    for variant, r in result["variants"].items():
        times = "1.00×" if variant == "c" else _x(ratios.get(f"c/{variant}", ratio(c, r["events_per_second"])))
        rows.append(
            (
                variant,
                r["what"],
                f"{r['events']:,} in {r['seconds']:.1f} s",
                f"{r['events_per_second']:,.0f}",
                times,
                _mib(r["peak_rss_bytes"]),
            )
        )
    scaling = result.get("scaling")
    if scaling:
        for r in (scaling["one"], scaling["many"]):
            rows.append(
                (
                    r["variant"],
                    r["what"],
                    f"{r['events']:,} in {r['seconds']:.1f} s",
                    f"{r['events_per_second']:,.0f}",
                    _x(ratio(c, r["events_per_second"])),
                    _mib(r["peak_rss_bytes"]) + (" each (max)" if r["workers"] > 1 else ""),
                )
            )
    return rows


def print_report(result: dict[str, Any], console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    m, s = result["machine"], result["settings"]
    console.rule("[bold]guardstream bench")
    console.print(
        f"{s['events']:,} events (~{s['avg_event_bytes']} bytes, {s['users']:,} users), {s['partitions']} partitions, "
        f"{s['broker']}; {m['cpu_count']} CPUs, python {m['python']}, faust {m['faust']}, aiokafka {m['aiokafka']}, "
        f"duckdb {m['duckdb']}; {m['date']}, commit {m.get('commit') or '?'}; "
        f"produced at {result['produced']['events_per_second']:,.0f} events/s",
        highlight=False,
    )
    rounds = int(s.get("rounds", 1))
    how = "one run" if rounds == 1 else f"median of {rounds} rounds; c ÷ this: the median of the rounds' ratios"
    table = Table(title=f"throughput (same data, fresh consumer group each, {how})")
    for col, justify in (
        ("variant", "left"),
        ("what", "left"),
        ("events", "right"),
        ("events/s", "right"),
        ("c ÷ this", "right"),
        ("peak RSS", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in _rows(result):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    if rounds > 1:
        console.print(_rounds_line(result), highlight=False)
    if result.get("ratios"):
        console.print(
            "ratios: " + ", ".join(f"{k} = {_x(v)}" for k, v in result["ratios"].items()),
            highlight=False,
        )
    scaling = result.get("scaling")
    if scaling:
        console.print(
            f"scaling: {scaling['workers']} workers = {_x(scaling['ratio'])} one worker measured the same way "
            f"({_x(scaling['ratio_vs_c'])} c)",
            highlight=False,
        )
    latency = result.get("latency")
    if latency:
        console.print(_latency_line(latency), highlight=False)


def _rounds_line(result: dict[str, Any]) -> str:
    """Every round's events/s per variant and the ratios of each round (its runs were side by side)."""
    rates = "; ".join(
        f"{v} " + " / ".join(f"{r:,.0f}" for r in variant["rounds"]) for v, variant in result["variants"].items()
    )
    ratios = "; ".join(
        f"round {i}: " + ", ".join(f"{k} {_x(v)}" for k, v in round_ratios.items())
        for i, round_ratios in enumerate(result.get("round_ratios", []), 1)
        if round_ratios
    )
    return f"rounds (events/s in round order): {rates}" + (f"\nratios per round: {ratios}" if ratios else "")


def _latency_line(latency: dict[str, Any]) -> str:
    head = (
        f"detection latency (event produced -> alert published) at {latency['rate']:,.0f} events/s "
        f"({latency['rate_basis']}), {latency['events']:,} events: "
    )
    if not latency["alerts"]:
        return head + "no alerts were raised, so no latency to report"
    cores = latency.get("cores") or {}
    used = ", ".join(f"{who} {share:.2f}" for who, share in cores.items())
    return head + (
        f"p50 {latency['p50_ms']:,.0f} ms, p95 {latency['p95_ms']:,.0f} ms, p99 {latency['p99_ms']:,.0f} ms, "
        f"max {latency['max_ms']:,.0f} ms over {latency['alerts']:,} alert changes"
        + (f"; cores used meanwhile: {used}" if used else "")
    )


def markdown_report(result: dict[str, Any]) -> str:
    """The README's results table, regenerated by ``guardstream bench --markdown``."""
    m, s = result["machine"], result["settings"]
    lines = [
        f"{s['events']:,} events of ~{s['avg_event_bytes']} bytes from {s['users']:,} simulated users, "
        f"{s['partitions']} partitions, {s['broker']}; {m['cpu_count']} CPUs, python {m['python']}, "
        f"faust {m['faust']}, aiokafka {m['aiokafka']}, duckdb {m['duckdb']}; "
        f"{'one run' if s.get('rounds', 1) == 1 else 'median of ' + str(s['rounds']) + ' rounds'} on {m['date']} "
        f"(commit {m.get('commit') or '?'}, load average {m['load_average_at_start'][0]} at the start).",
        "",
        "| variant | what | events/s | c ÷ this | peak RSS |",
        "|---|---|---:|---:|---:|",
    ]
    for variant, what, _, rate, times, rss in _rows(result):
        lines.append(f"| {variant} | {what} | {rate} | {times} | {rss} |")
    if s.get("rounds", 1) > 1:
        lines += ["", _rounds_line(result).replace("\n", ".  \n") + "."]
    scaling = result.get("scaling")
    if scaling:
        lines += [
            "",
            f"{scaling['workers']} workers ÷ 1 worker (each from the moment its group settled): "
            f"{_x(scaling['ratio'])}.",
        ]
    latency = result.get("latency")
    if latency:
        lines += ["", _latency_line(latency) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main(sys.argv[1:])
