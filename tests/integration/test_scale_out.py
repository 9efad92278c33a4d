"""Several workers, one writer: rebalances and writer crashes leave exactly the store of one clean pass.

Workers split the partitions through the consumer group and commit to ``guardstream writer``, which owns
the DuckDB file. A partition that moves carries its state through the writer (the new owner loads the
checkpoint); a batch whose partition another worker committed since is refused (fenced), so a zombie's
late batch never lands. The ground truth is the offline pipeline over exactly the messages on the topic.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.broker import free_port
from streams.produce import bad_events, produce
from streams.settings import Settings
from streams.simulator import SimConfig, simulate
from tests.integration.test_crash_recovery import TABLES, offline_truth, snapshot
from tests.integration.test_run_against_broker import GUARDSTREAM, env_for, get_json, read_topic, wait_until

pytestmark = pytest.mark.integration


class Procs:
    """Child processes with their logs; every one still running is killed at the end."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([*GUARDSTREAM, *args], env=self.env, stdout=out, stderr=out)
        self.procs.append((proc, log))
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log.read_text(errors="replace")[-4000:] for p, log in self.procs if p is proc)

    def stop_all(self) -> None:
        for proc, _log in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    env = env_for(settings)
    env["GUARDSTREAM_BATCH_MAX_EVENTS"] = "500"  # many batches, so stops land mid-stream and mid-batch
    env["GUARDSTREAM_SESSION_TIMEOUT_SECONDS"] = "6"  # a killed worker's partitions move sooner
    env["GUARDSTREAM_REBALANCE_TIMEOUT_SECONDS"] = "6"
    running = Procs(tmp_path, env)
    try:
        yield running
    finally:
        running.stop_all()


class Stream:
    """A simulated stream (with copies of event_ids and some poison) produced in parts, so each step of a test
    lands while there is still work; the truth is computed from what the topic holds in the end."""

    def __init__(self, settings: Settings, users: int, seed: int, parts: int, poison: int = 30) -> None:
        sim = simulate(SimConfig(users=users, days=3, seed=seed))
        self.settings = settings
        self.seed = seed
        self.poison = poison
        self.events = len(sim.events)
        stream = sim.events + [dict(e) for e in sim.events[::47]]
        size = -(-len(stream) // parts)
        self.parts = [stream[i : i + size] for i in range(0, len(stream), size)]
        self.produced = 0

    def produce_next(self) -> int:
        """Produce the next part (the poison goes with the first); returns the messages on the topic now."""
        part = self.parts.pop(0)
        extra = bad_events(self.poison, seed=self.seed) if self.produced == 0 else []
        ends = asyncio.run(produce(self.settings, part, extra=extra, seed=self.seed))
        self.produced = sum(ends.values())  # each partition's end offset: the topic's total so far
        return self.produced

    def truth(self) -> Path:
        assert not self.parts, "produce every part first"
        records = asyncio.run(read_topic(self.settings, self.settings.decisions_topic))
        assert len(records) == self.produced
        truth = self.settings.db.with_name("truth.duckdb")
        offline_truth(self.settings, records, truth)
        return truth


def start_writer(procs: Procs, port: int) -> tuple[subprocess.Popen[bytes], str]:
    proc = procs.start("writer", "writer", "--port", str(port), "--loglevel", "info")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: proc.poll() is not None or get_json(url + "/status")["role"], 60, "the writer to serve")
    assert proc.poll() is None, procs.log_of(proc)
    return proc, url


def start_worker(procs: Procs, writer_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = procs.start("worker", "run", "--writer", writer_url, "--web-port", str(port), "--loglevel", "info")
    return proc, f"http://127.0.0.1:{port}"


def committed(writer_url: str) -> int:
    return sum(p["next_offset"] for p in get_json(writer_url + "/status")["partitions"].values())


def assigned(worker_url: str) -> set[int]:
    return {int(p) for p in get_json(worker_url + "/status")["partitions"]}


def assert_equal_to_truth(db: Path, truth: Path, events: int, poison: int) -> dict[str, list[Any]]:
    streamed, expected = snapshot(db), snapshot(truth)
    assert len(streamed["decisions"]) == events, "every event_id once, copies not counted"
    assert len(streamed["dead_letters"]) == poison
    assert streamed["changes"], "the simulated attackers raise alerts"
    for table in TABLES:
        assert streamed[table] == expected[table], f"{table} differs from the offline ground truth"
    return streamed


def test_rebalance_two_workers_one_stopped_the_other_takes_over(settings: Settings, procs: Procs) -> None:
    stream = Stream(settings, users=300, seed=21, parts=4)
    produced = stream.produce_next()
    writer, writer_url = start_writer(procs, free_port())
    a, a_url = start_worker(procs, writer_url)
    b, b_url = start_worker(procs, writer_url)
    wait_until(lambda: assigned(a_url) and assigned(b_url), 90, "both workers to get partitions")
    assert not assigned(a_url) & assigned(b_url), "the group splits the partitions"
    assert len(assigned(a_url) | assigned(b_url)) == 4
    wait_until(lambda: committed(writer_url) >= produced, 120, "the first part to be committed")

    # kill -9 one worker while it works: the survivor takes its partitions over from the writer's checkpoint
    produced = stream.produce_next()
    b.kill()
    b.wait(10)
    wait_until(lambda: assigned(a_url) == {0, 1, 2, 3}, 90, "the survivor to take over every partition")

    # a new worker joins: partitions move while batches are in flight (the old owner may be a zombie)
    produced = stream.produce_next()
    c, c_url = start_worker(procs, writer_url)
    wait_until(lambda: assigned(c_url), 90, "the new worker to get partitions")

    # a clean stop (SIGTERM) of the first worker: its queued batches commit, the other one continues
    produced = stream.produce_next()
    a.send_signal(signal.SIGTERM)
    assert a.wait(60) == 0, procs.log_of(a)
    wait_until(lambda: committed(writer_url) >= produced, 180, "the stream to be committed")
    assert assigned(c_url) == {0, 1, 2, 3}

    status = get_json(writer_url + "/status")
    c.send_signal(signal.SIGTERM)
    assert c.wait(60) == 0, procs.log_of(c)
    writer.send_signal(signal.SIGTERM)
    assert writer.wait(60) == 0, procs.log_of(writer)
    assert status["counts"]["checkpoints"] >= 8, "partitions were loaded from the writer on every move"
    assert_equal_to_truth(settings.db, stream.truth(), stream.events, stream.poison)


def test_kill_9_the_writer_mid_stream_workers_wait_and_nothing_is_lost(settings: Settings, procs: Procs) -> None:
    rng = random.Random(7)
    stream = Stream(settings, users=250, seed=5, parts=3)
    port = free_port()
    writer, writer_url = start_writer(procs, port)
    workers = [start_worker(procs, writer_url) for _ in range(2)]
    produced = stream.produce_next()
    while stream.parts:
        # kill the writer at a random point of this part's commits, then bring it back on the same address
        before, produced = produced, stream.produce_next()
        point = before + rng.uniform(0.1, 0.6) * (produced - before)
        wait_until(lambda p=point, url=writer_url: committed(url) >= p, 120, "progress")
        writer.kill()  # SIGKILL, possibly mid-transaction
        writer.wait(10)
        writer, writer_url = start_writer(procs, port)
    wait_until(lambda: committed(writer_url) >= produced, 180, "the stream to be committed")
    for proc, _url in workers:
        assert proc.poll() is None, "a worker waits for the writer instead of exiting: " + procs.log_of(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, procs.log_of(proc)
    writer.send_signal(signal.SIGTERM)
    assert writer.wait(60) == 0, procs.log_of(writer)
    assert_equal_to_truth(settings.db, stream.truth(), stream.events, stream.poison)
