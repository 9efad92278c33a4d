"""``guardstream demo``: the whole pipeline on the embedded broker, one process tree.

Starts tansu, starts ``guardstream run`` as a child process, produces seeded synthetic traffic (with a
few deliberately broken events), waits until the pipeline has committed everything, prints who was
flagged against the planted attackers, then stops everything in order. Ctrl-C stops it cleanly too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress

from detectors.events import pseudonymize
from streams.broker import EmbeddedBroker, ensure_topics, free_port
from streams.evaluate import Opened, print_results, score, train_model
from streams.produce import bad_events, produce, simulated_past_days
from streams.query import query_service
from streams.settings import Settings, pseudonym_key_problem
from streams.simulator import SimConfig, labels_to_rows, simulate
from streams.train import save


def demo_key_file(db: Path) -> Path:
    """Where the demo keeps its pseudonym key: beside its store, so `investigate --raw` can use it afterwards."""
    return db.with_name(db.name + ".pseudonym-key")


def demo_pseudonym_key(db: Path) -> str:
    """The demo's pseudonym key: random, made once, kept beside the store (mode 0600) and reused, so the ids in a
    kept store stay the same pseudonyms. The pipeline refuses to run without one, as in production."""
    path = demo_key_file(db)
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if pseudonym_key_problem(key.encode()) is None:
        return key
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.chmod(path, 0o600)  # also when it existed with a wider mode
    return key


class DemoError(RuntimeError):
    pass


@dataclass
class DemoResult:
    comparison: dict[str, Any]
    events: int
    bad_events: int
    dead_letters: int
    decisions: int
    alerts: int
    seconds: float
    events_per_second: float
    db: Path
    key_file: Path  # the pseudonym key the demo's pipeline used (investigate --raw needs it)
    flagged_raw_user: str | None = None  # a flagged user's raw id, for the printed hints
    flagged_user: str | None = None  # ... and its pseudonym, as stored


def _get_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    from streams.query import open_service, service_request

    with open_service(service_request(url), timeout) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def _wait_for_service(url: str, worker: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise DemoError(f"the pipeline exited with code {worker.returncode} while starting")
        try:
            status = _get_json(url + "/status")
            if status.get("partitions"):
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise DemoError(f"the pipeline did not start serving {url} within {timeout:.0f}s")


def run_demo(
    *,
    users: int,
    days: float,
    seed: int,
    db: Path,
    labels_path: Path,
    bad: int,
    console: Console,
    partitions: int = 4,
    keep_db: bool = False,
) -> DemoResult:
    if db.exists() and not keep_db:
        console.print(f"[dim]replacing the previous demo database {db}[/dim]")
        db.unlink()
        Path(str(db) + ".wal").unlink(missing_ok=True)
    broker = EmbeddedBroker().start()
    web_port = free_port()
    url = f"http://127.0.0.1:{web_port}"
    settings = Settings(bootstrap=broker.bootstrap, db=db, web_port=web_port, topic_partitions=partitions)
    demo_key = demo_pseudonym_key(db)
    env = {
        **os.environ,
        "GUARDSTREAM_PSEUDONYM_KEY": demo_key,
        "GUARDSTREAM_TOPIC_PARTITIONS": str(partitions),
    }
    env.setdefault("GUARDSTREAM_MAX_PAST_DAYS", str(simulated_past_days(SimConfig().start)))
    env.pop("GUARDSTREAM_ALLOW_RAW_USER_IDS", None)  # the demo shows pseudonyms, whatever the shell has set
    worker: subprocess.Popen[bytes] | None = None
    try:
        console.print(f"[bold]embedded broker[/bold] tansu on {broker.bootstrap}")
        asyncio.run(ensure_topics(settings))
        model_path = db.with_name(db.stem + ".anomaly.joblib")
        model_args: list[str] = []
        started = time.monotonic()
        try:
            model = train_model(SimConfig(users=users, days=days, seed=seed))
        except ValueError as exc:
            console.print(f"[yellow]anomaly model not trained ({exc}); the multivariate detector only counts[/yellow]")
        else:
            save(model, model_path)
            model_args = ["--anomaly-model", str(model_path)]
            console.print(
                f"[bold]anomaly model[/bold] {model.version} trained on {model.trained_users:,} users of a separate "
                f"simulated period (seed {seed + 1000}) in {time.monotonic() - started:.1f}s: {model_path}"
            )
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "run",
                "--bootstrap",
                broker.bootstrap,
                "--db",
                str(db),
                "--web-port",
                str(web_port),
                *model_args,
            ],
            env=env,
        )
        _wait_for_service(url, worker)
        console.print(f"[bold]pipeline[/bold] pid {worker.pid}, metrics at {url}/metrics")

        started = time.monotonic()
        sim = simulate(SimConfig(users=users, days=days, seed=seed))
        labels_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in labels_to_rows(sim.labels)))
        broken = bad_events(bad, seed)
        total = len(sim.events) + len(broken)
        console.print(
            f"[bold]simulator[/bold] {len(sim.events):,} decisions from {users:,} users over {days:g} days "
            f"(+{len(broken)} broken events); ground truth in {labels_path} "
            f"({time.monotonic() - started:.1f}s)"
        )
        from streams.output import progress_bar

        with progress_bar(console) as progress:
            produced = progress.add_task("produce ", total=total)
            processed = progress.add_task("pipeline", total=total)
            produce_task = asyncio.run(
                _produce_and_follow(settings, sim.events, broken, seed, url, progress, produced, processed, worker)
            )
        status = produce_task
        first = status.get("first_batch_at") or time.time()
        last = status.get("last_commit_at") or time.time()
        seconds = max(1e-9, last - first)

        alerts_rows = _rows(
            query_service(
                url, "SELECT tenant, user_id, detector, category, severity, ts, reason FROM alerts ORDER BY ts"
            )
        )
        opened = [
            Opened(r["tenant"], r["user_id"], r["detector"], int(r["ts_ms"]))
            for r in _rows(
                query_service(
                    url,
                    "SELECT tenant, user_id, detector, epoch_ms(ts) AS ts_ms FROM alert_changes "
                    "WHERE change IN ('opened', 'reopened')",
                )
            )
        ]
        counts = _rows(
            query_service(
                url,
                "SELECT (SELECT count(*) FROM decisions) AS decisions, "
                "(SELECT count(*) FROM dead_letters) AS dead_letters, "
                "(SELECT count(*) FROM alerts) AS alerts",
            )
        )[0]
        key = demo_key.encode()
        labels = [dataclasses.replace(label, user_id=pseudonymize(label.user_id, key)) for label in sim.labels]
        result = score(labels, opened, "demo", len(sim.events), seconds)
        raw_of = {label.user_id: raw.user_id for label, raw in zip(labels, sim.labels, strict=True)}
        flagged = next((r["user_id"] for r in alerts_rows if r["user_id"] in raw_of), None)
        _print_report(console, alerts_rows, counts, len(broken), total, seconds)
        print_results([result], console, title="Planted attackers vs what the pipeline flagged")
        return DemoResult(
            comparison=result.as_dict(),
            events=len(sim.events),
            bad_events=len(broken),
            dead_letters=int(counts["dead_letters"]),
            decisions=int(counts["decisions"]),
            alerts=int(counts["alerts"]),
            seconds=seconds,
            events_per_second=total / seconds,
            db=db,
            key_file=demo_key_file(db),
            flagged_raw_user=raw_of.get(flagged) if flagged else None,
            flagged_user=flagged,
        )
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        broker.stop()


async def _produce_and_follow(
    settings: Settings,
    events: list[dict[str, Any]],
    broken: list[tuple[bytes, bytes]],
    seed: int,
    url: str,
    progress: Progress,
    produced: Any,
    processed: Any,
    worker: subprocess.Popen[bytes],
) -> dict[str, Any]:
    targets = await produce(settings, events, broken, progress=lambda n: progress.advance(produced, n), seed=seed)
    total_target = sum(targets.values())
    progress.update(produced, completed=total_target, total=total_target)
    progress.update(processed, total=total_target)
    stalled_since = time.monotonic()
    last_done = -1
    while True:
        if worker.poll() is not None:
            raise DemoError(f"the pipeline exited with code {worker.returncode} while processing")
        status = await asyncio.to_thread(_get_json, url + "/status")
        parts = status["partitions"]
        done = sum(min(parts.get(str(p), {}).get("next_offset", 0), end) for p, end in targets.items())
        progress.update(processed, completed=done)
        if done >= total_target:
            return status
        if done != last_done:
            last_done, stalled_since = done, time.monotonic()
        elif time.monotonic() - stalled_since > 120:
            raise DemoError(f"the pipeline made no progress for 120s at {done}/{total_target} messages")
        await asyncio.sleep(0.3)


def _rows(table: Any) -> list[dict[str, Any]]:
    from streams.output import rows

    return rows(table)


def _print_report(
    console: Console,
    alerts: list[dict[str, Any]],
    counts: dict[str, Any],
    broken: int,
    total: int,
    seconds: float,
) -> None:
    console.rule("[bold]guardstream demo report")
    console.print(
        f"processed {total:,} messages in {seconds:.1f}s of pipeline time "
        f"([bold]{total / seconds:,.0f} events/s[/bold]); {counts['decisions']:,} decisions stored, "
        f"{counts['dead_letters']} dead letters (planted {broken}), {counts['alerts']} alerts"
    )
    console.print("[bold]flagged users[/bold] (first alert of each; user ids are pseudonyms)")
    seen: set[tuple[str, str]] = set()
    shown = 0
    for alert in alerts:
        key = (alert["tenant"], alert["user_id"])
        if key in seen:
            continue
        seen.add(key)
        shown += 1
        if shown <= 15:
            console.print(
                f"  [bold]{alert['user_id']}[/bold] {alert['tenant']}  {alert['detector']} "
                f"[{alert['category'] or '-'}] {alert['severity']} at {str(alert['ts'])[:16]}\n"
                f"      [dim]{alert['reason']}[/dim]",
                highlight=False,
            )
    if shown > 15:
        console.print(f'[dim]... and {shown - 15} more flagged users: guardstream sql "SELECT * FROM alerts"[/dim]')
