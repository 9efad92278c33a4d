"""``guardstream``: the command-line front door."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
import orjson
import typer
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from streams.settings import PrivacySettingsError, Settings

if TYPE_CHECKING:
    from streams.store import Store

app = typer.Typer(
    help="guardstream: streaming abuse monitoring for LLM guardrail decisions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    from rich.markup import escape

    # escaped: a message quotes what the caller sent (SQL, ids), and "[/x]" there is not markup
    console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)  # one line, whatever the width
    return typer.Exit(code)


Bootstrap = Annotated[str | None, typer.Option(help="Kafka bootstrap HOST:PORT (env GUARDSTREAM_BOOTSTRAP)")]
DbPath = Annotated[Path | None, typer.Option(help="DuckDB file (env GUARDSTREAM_DB)")]
AllowRawUserIds = Annotated[
    bool,
    typer.Option(
        "--allow-raw-user-ids",
        help="start without GUARDSTREAM_PSEUDONYM_KEY and store, publish and show raw user ids, on purpose "
        "(the log, /status and guardstream_privacy_raw_ids say so; env GUARDSTREAM_ALLOW_RAW_USER_IDS)",
    ),
]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="port to listen on (loopback)")] = 9092,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-protocol broker (tansu, in-memory storage) until Ctrl-C."""
    from streams.broker import BrokerError, EmbeddedBroker

    try:
        embedded = EmbeddedBroker(host=host, port=port).start()
    except BrokerError as exc:
        raise fail(str(exc)) from exc
    console.print(f"embedded broker listening on [bold]{embedded.bootstrap}[/bold] (memory storage); Ctrl-C stops it")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop and embedded.process is not None and embedded.process.poll() is None:
            time.sleep(0.2)
    finally:
        code = embedded.process.poll() if embedded.process else None
        embedded.stop()
    if code not in (None, 0) and not stop:
        raise fail(f"the broker exited with code {code}")


@app.command()
def run(
    bootstrap: Bootstrap = None,
    db: DbPath = None,
    web_port: Annotated[int | None, typer.Option(help="port for /metrics, /status, /query; 0 picks a free one")] = None,
    decisions_topic: Annotated[str | None, typer.Option(help="input topic")] = None,
    anomaly_model: Annotated[Path | None, typer.Option(help="model file from `guardstream train`")] = None,
    writer: Annotated[
        str | None,
        typer.Option(help="commit to `guardstream writer` at this URL instead of --db (env GUARDSTREAM_WRITER_URL)"),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="log level: debug, info, warning, error")] = "warning",
    allow_raw_user_ids: AllowRawUserIds = False,
) -> None:
    """Run the pipeline: consume decisions, detect, persist to DuckDB, publish alerts, serve metrics.

    Needs GUARDSTREAM_PSEUDONYM_KEY (at least 32 random bytes) unless started with --allow-raw-user-ids.

    With --writer, several workers share one store: each takes a share of the partitions and commits its
    batches to the writer process, which owns the DuckDB file."""
    from streams.broker import BrokerError
    from streams.sandbox import StoreLocked
    from streams.web_security import ServingRefused
    from streams.worker import run_worker

    settings = Settings().with_overrides(
        bootstrap=bootstrap,
        db=db,
        web_port=web_port,
        decisions_topic=decisions_topic,
        anomaly_model=anomaly_model,
        writer_url=writer,
        allow_raw_user_ids=allow_raw_user_ids or None,
    )
    try:
        run_worker(settings, loglevel=loglevel)
    except (StoreLocked, BrokerError, ServingRefused, PrivacySettingsError) as exc:
        raise fail(str(exc)) from exc
    except (ValueError, OSError) as exc:
        if settings.anomaly_model is not None and str(settings.anomaly_model) in str(exc):
            raise fail(f"cannot use the anomaly model: {exc}") from exc
        raise


@app.command("writer")
def writer_command(
    bootstrap: Bootstrap = None,
    db: DbPath = None,
    host: Annotated[str | None, typer.Option(help="interface to listen on (env GUARDSTREAM_WEB_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port; 0 picks a free one (env GUARDSTREAM_WEB_PORT)")] = None,
    loglevel: Annotated[str, typer.Option(help="log level: debug, info, warning, error")] = "warning",
    allow_raw_user_ids: AllowRawUserIds = False,
) -> None:
    """Own the DuckDB file for several workers (`guardstream run --writer URL`): apply their batches, serve
    /query, /verdict, /forget, /status and /metrics, publish alerts and apply retention.

    Needs GUARDSTREAM_PSEUDONYM_KEY, as the workers do, unless started with --allow-raw-user-ids."""
    import logging

    from streams.broker import BrokerError
    from streams.sandbox import StoreLocked
    from streams.web_security import ServingRefused
    from streams.writer import run_writer

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings().with_overrides(
        bootstrap=bootstrap, db=db, web_host=host, web_port=port, allow_raw_user_ids=allow_raw_user_ids or None
    )
    try:
        run_writer(settings)
    except (StoreLocked, BrokerError, ServingRefused, PrivacySettingsError) as exc:
        raise fail(str(exc)) from exc


@app.command()
def simulate(
    bootstrap: Bootstrap = None,
    users: Annotated[int, typer.Option(min=1, help="users, attackers included")] = 1000,
    days: Annotated[float, typer.Option(min=0.01, help="days of event time the traffic spans")] = 7.0,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same traffic")] = 7,
    labels: Annotated[Path, typer.Option(help="where to write the ground-truth labels (JSON lines)")] = Path(
        "labels.jsonl"
    ),
    bad_events: Annotated[int, typer.Option(min=0, help="also send this many invalid events (for the DLQ)")] = 0,
    offsets_file: Annotated[
        Path | None, typer.Option(help="write {partition: offset after the last message sent} here (JSON)")
    ] = None,
) -> None:
    """Produce seeded synthetic guardrail decisions with planted attackers; labels go to a file, never the events."""
    from streams.broker import BrokerError, ensure_topics
    from streams.produce import bad_events as make_bad
    from streams.produce import produce, simulated_past_days
    from streams.simulator import SimConfig, labels_to_rows
    from streams.simulator import simulate as generate

    settings = Settings().with_overrides(bootstrap=bootstrap)
    started = time.monotonic()
    sim = generate(SimConfig(users=users, days=days, seed=seed))
    labels.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in labels_to_rows(sim.labels)))
    broken = make_bad(bad_events, seed)
    console.print(f"generated {len(sim.events):,} decisions in {time.monotonic() - started:.1f}s; labels in {labels}")
    needed = simulated_past_days(SimConfig().start)
    if needed > settings.max_past_days:
        console.print(
            f"[yellow]the simulated events are dated from {SimConfig().start.date()}: a worker dead-letters them "
            f"(stale_timestamp) unless started with GUARDSTREAM_MAX_PAST_DAYS={needed}[/yellow]"
        )
    try:
        asyncio.run(ensure_topics(settings))
        from streams.output import progress_bar

        with progress_bar(console, description="producing") as progress:
            task = progress.add_task("produce", total=len(sim.events) + len(broken))
            offsets = asyncio.run(produce(settings, sim.events, broken, lambda n: progress.advance(task, n), seed))
    except (BrokerError, OSError) as exc:
        raise fail(f"cannot produce to {settings.bootstrap}: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("aiokafka"):
            raise fail(f"cannot produce to {settings.bootstrap}: {exc!r}") from exc
        raise
    console.print(
        f"sent {len(sim.events) + len(broken):,} messages to {settings.decisions_topic} on {settings.bootstrap}"
    )
    if offsets_file is not None:
        offsets_file.write_text(json.dumps({str(p): o for p, o in sorted(offsets.items())}))


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(help="one query: SELECT/FROM/WITH, SHOW, DESCRIBE, SUMMARIZE, or EXPLAIN (no ANALYZE)")
    ],
    db: DbPath = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table for people; csv or json for scripts")] = (
        Format.table
    ),
    url: Annotated[str | None, typer.Option(help="query a running pipeline at this URL instead of finding it")] = None,
) -> None:
    """Ad-hoc SQL over the store, in a sandbox: read-only, no files, no extensions, no settings changes, with a
    time and a row limit (GUARDSTREAM_QUERY_TIMEOUT_SECONDS, GUARDSTREAM_QUERY_MAX_ROWS). Works while
    `guardstream run` holds the database."""
    from streams.query import query as run_query

    settings = Settings().with_overrides(db=db)
    table = _reading(run_query, settings.db, query, url=url)
    _render(table, format)


def _render(table: Any, format: Format) -> None:
    from streams.output import print_table, to_csv, to_json
    from streams.sandbox import truncated_at

    if format is Format.table:
        print_table(table, Console())
    elif format is Format.csv:
        sys.stdout.write(to_csv(table))
    else:
        sys.stdout.write(to_json(table) + "\n")
    if (limit := truncated_at(table)) is not None:
        console.print(
            f"[yellow]warning:[/yellow] the result was cut at {limit:,} rows (GUARDSTREAM_QUERY_MAX_ROWS where the "
            "store is served): narrow the query or add LIMIT"
        )


def _reading(read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``read(*args, **kwargs)``, a read of the store: a refusal, an unreachable holder or an unusable file is one
    error line."""
    try:
        return read(*args, **kwargs)
    except Exception as exc:
        error = _store_errors(exc)
        if error is None:
            raise
        raise error from exc


def _store_errors(exc: Exception) -> typer.Exit | None:
    """The one-line error for a failed read of the store, or None when it is not one of ours."""
    import duckdb

    from streams.query import QueryFailed
    from streams.sandbox import NotAStore, QueryRefused, StoreLocked

    if isinstance(exc, QueryRefused):
        return fail(f"refused: {' '.join(str(exc).split())}")
    if isinstance(exc, QueryFailed | StoreLocked | NotAStore | FileNotFoundError):
        return fail(" ".join(str(exc).split()))
    if isinstance(exc, duckdb.Error):
        return fail(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    return None


@app.command(name="query")
def named_query_command(
    name: Annotated[str | None, typer.Argument(help="a named query from sql/queries (see --list)")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="a parameter as key=value (repeatable)")
    ] = None,
    db: DbPath = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table for people; csv or json for scripts")] = (
        Format.table
    ),
    url: Annotated[str | None, typer.Option(help="query a running pipeline at this URL instead of finding it")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the named queries and their parameters")] = False,
) -> None:
    """Run a named, parameterized query (user_timeline, top_huggers, ...); works while `guardstream run` runs."""
    from streams.investigate import (
        REQUIRED,
        BadParams,
        UnknownQuery,
        available,
        declared_params,
        description,
        parse_pairs,
        run_named,
    )
    from streams.investigate import named_query as load
    from streams.query import query as run_query

    if list_:
        for known in available():
            text = load(known)
            params = ", ".join(
                n if d is REQUIRED else f"{n}={'null' if d is None else d}" for n, d in declared_params(text).items()
            )
            sys.stdout.write(f"{known}  ({params})\n    {description(text)}\n")
        return
    if name is None:
        raise fail("name a query, or use --list to see them")
    settings = Settings().with_overrides(db=db)
    try:
        table = _reading(
            run_named, lambda q, p: run_query(settings.db, q, url=url, params=p), name, parse_pairs(param or [])
        )
    except (UnknownQuery, BadParams) as exc:
        raise fail(str(exc.args[0])) from exc
    _render(table, format)


def _resolve_user(user: str, raw: bool, settings: Settings) -> str:
    from detectors.events import pseudonymize

    if not raw:
        return user
    key = settings.pseudonym_key_bytes()
    if key is None:
        raise fail("--raw needs the pseudonym key: set GUARDSTREAM_PSEUDONYM_KEY to the key the pipeline uses")
    return pseudonymize(user, key)


@app.command()
def investigate(
    user: Annotated[str, typer.Argument(help="user id as stored (a pseudonym when a key is set), or raw with --raw")],
    db: DbPath = None,
    raw: Annotated[bool, typer.Option(help="USER is a raw id: pseudonymize it with GUARDSTREAM_PSEUDONYM_KEY")] = False,
    limit: Annotated[int, typer.Option(min=1, help="how many of the latest decisions to show")] = 50,
    url: Annotated[str | None, typer.Option(help="query a running pipeline at this URL instead of finding it")] = None,
) -> None:
    """A user's alerts (with reasons and suggested actions), latest decisions and per-category totals."""
    from streams.investigate import investigate as build
    from streams.investigate import print_report
    from streams.output import report_console
    from streams.query import query as run_query

    settings = Settings().with_overrides(db=db)
    user_id = _resolve_user(user, raw, settings)
    report = _reading(build, lambda q, p: run_query(settings.db, q, url=url, params=p), user_id, limit=limit)
    if report.empty:
        shown = f"{user} (pseudonym {user_id})" if raw else user
        raise fail(f"no decisions, alerts or daily totals for user {shown} in {settings.db}")
    print_report(report, report_console())


@app.command()
def pseudonym(raw_id: Annotated[str, typer.Argument(help="a raw user id")]) -> None:
    """Print the pseudonym the pipeline stores for a raw user id (with GUARDSTREAM_PSEUDONYM_KEY)."""
    sys.stdout.write(_resolve_user(raw_id, True, Settings()) + "\n")


class ExportFormat(StrEnum):
    parquet = "parquet"


EXPORT_TABLES = ["decisions", "alerts", "alert_changes", "user_category_daily", "dead_letters"]


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="directory to write one file per table into (created if missing)")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="file format")] = ExportFormat.parquet,
    db: DbPath = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", "-t", help=f"table to export (repeatable); default: {EXPORT_TABLES}")
    ] = None,
    url: Annotated[str | None, typer.Option(help="query a running pipeline at this URL instead of finding it")] = None,
) -> None:
    """Export store tables to Parquet, one file per table; works while `guardstream run` holds the database."""
    import re

    import pyarrow.parquet as pq

    from streams.query import query as run_query
    from streams.sandbox import truncated_at

    settings = Settings().with_overrides(db=db)
    tables = table or EXPORT_TABLES
    bad = [t for t in tables if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t)]
    if bad:
        raise fail(f"not a table name: {', '.join(bad)}")
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name in tables:
        console.print(f"exporting {name} ...")
        data = _reading(run_query, settings.db, f'SELECT * FROM "{name}"', url=url)
        if (limit := truncated_at(data)) is not None:
            raise fail(
                f"{name} has more than {limit:,} rows, the query row limit: raise GUARDSTREAM_QUERY_MAX_ROWS where the "
                "store is served (and GUARDSTREAM_QUERY_TIMEOUT_SECONDS if needed) to export it whole"
            )
        path = out / f"{name}.{format.value}"
        pq.write_table(data, path)
        counts[name] = data.num_rows
        console.print(f"  {name}: {data.num_rows:,} rows -> {path}")
    for name, n in counts.items():
        sys.stdout.write(f"{name}\t{n}\n")


@app.command()
def rebuild(
    bootstrap: Bootstrap = None,
    db: Annotated[Path | None, typer.Option(help="the new DuckDB file to write (must not exist)")] = None,
    idle_seconds: Annotated[
        float, typer.Option(min=0.5, help="stop once the topic has had nothing new for this long")
    ] = 5.0,
    allow_raw_user_ids: AllowRawUserIds = False,
) -> None:
    """Recompute a store from the decisions topic (from offset 0, while Kafka retains it).

    Same batch path as `guardstream run`, same settings (detector config, anomaly model, pseudonym key),
    so the result equals the store the workers built. Uses no consumer group; publishes nothing."""
    from streams.rebuild import RebuildError, RebuildResult
    from streams.rebuild import rebuild as run_rebuild

    settings = Settings().with_overrides(bootstrap=bootstrap, db=db, allow_raw_user_ids=allow_raw_user_ids or None)
    try:
        settings.checked_pseudonym_key()  # rebuild checks it too; here the error comes before the progress bar
    except PrivacySettingsError as exc:
        raise fail(str(exc)) from exc
    with Progress(
        TextColumn("rebuilding {task.description}"),
        TextColumn("{task.completed:,} messages"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(str(settings.db), total=None)

        def show(result: RebuildResult) -> None:
            bar.update(task, completed=result.messages)

        try:
            result = asyncio.run(run_rebuild(settings, idle_seconds=idle_seconds, progress=show))
        except RebuildError as exc:
            raise fail(str(exc)) from exc
        except Exception as exc:
            raise fail(f"{type(exc).__name__}: {exc}") from exc
    console.print(
        f"rebuilt {settings.db}: {result.messages:,} messages, {result.decisions:,} decisions, "
        f"{result.duplicates:,} duplicates, {result.dead_letters:,} dead letters, "
        f"{result.alert_changes:,} alert changes in {result.seconds:.1f}s; offsets {result.partitions}"
    )


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=50, help="simulated users")] = 1000,
    days: Annotated[float, typer.Option(min=0.5, help="days of event time")] = 7.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    db: Annotated[Path, typer.Option(help="DuckDB file the demo leaves behind (replaced each run)")] = Path(
        "guardstream-demo.duckdb"
    ),
    labels: Annotated[Path, typer.Option(help="ground-truth labels file")] = Path("guardstream-demo.labels.jsonl"),
    bad_events: Annotated[int, typer.Option(min=0, help="invalid events mixed in, to show the dead-letter path")] = 25,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON here")] = None,
) -> None:
    """Everything, embedded: broker, pipeline, simulated traffic with planted attackers, and a report."""
    from streams.broker import BrokerError
    from streams.demo import DemoError, run_demo
    from streams.output import report_console
    from streams.query import QueryFailed

    out = report_console()
    try:
        result = run_demo(users=users, days=days, seed=seed, db=db, labels_path=labels, bad=bad_events, console=out)
    except KeyboardInterrupt:
        raise fail("interrupted; broker and pipeline stopped", 130) from None
    except (DemoError, BrokerError, QueryFailed) as exc:
        raise fail(str(exc)) from exc
    if json_out is not None:
        payload = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.__dict__.items()}
        json_out.write_text(json.dumps(payload, indent=2))
    out.print(
        f"\nthe store is in [bold]{db}[/bold]; try: guardstream sql --db {db} "
        '"SELECT detector, severity, count(*) FROM alerts GROUP BY ALL"',
        highlight=False,
    )
    if result.flagged_user is not None:
        # user ids in the store are pseudonyms under the key the demo made (beside the store): --raw maps with it
        out.print(f"  guardstream investigate {result.flagged_user} --db {db}", highlight=False, soft_wrap=True)
        out.print(
            f'  GUARDSTREAM_PSEUDONYM_KEY="$(cat {result.key_file})" '
            f"guardstream investigate {result.flagged_raw_user} --raw --db {db}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def train(
    db: DbPath = None,
    out: Annotated[Path, typer.Option(help="where to write the model file")] = Path("models/anomaly.joblib"),
    contamination: Annotated[float, typer.Option(min=0.0001, max=0.2, help="share of users to flag")] = 0.002,
    seed: Annotated[int, typer.Option(help="random seed of the IsolationForest")] = 7,
    min_decisions: Annotated[int, typer.Option(min=1, help="train only on users with this many decisions")] = 100,
) -> None:
    """Fit the multivariate anomaly model (IsolationForest) on per-user features from the store."""
    import polars as pl

    from streams.query import query as run_query
    from streams.sandbox import truncated_at
    from streams.train import counters_sql, fit, frame_counters, save

    settings = Settings().with_overrides(db=db)
    table = _reading(run_query, settings.db, counters_sql(settings.hugging_band))
    if (limit := truncated_at(table)) is not None:
        raise fail(f"the store has more than {limit:,} users, the query row limit: raise GUARDSTREAM_QUERY_MAX_ROWS")
    counters = frame_counters(pl.from_arrow(table))  # type: ignore[arg-type]
    try:
        model = fit(counters, contamination=contamination, seed=seed, min_decisions=min_decisions)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    save(model, out)
    console.print(
        f"trained {model.version} on {model.trained_users:,} users (of {len(counters):,}); flag at anomaly score "
        f"{model.threshold:.4f}, critical at {model.critical_threshold:.4f}; written to {out}\n"
        f"use it with: guardstream run --anomaly-model {out}   (or GUARDSTREAM_ANOMALY_MODEL)"
    )


@app.command(name="eval")
def evaluate_command(
    scenario: Annotated[
        list[str] | None, typer.Option("--scenario", "-s", help="scenario name (repeatable); default: all")
    ] = None,
    scale: Annotated[float, typer.Option(min=0.05, max=1.0, help="shrink every scenario's user count")] = 1.0,
    partitions: Annotated[int, typer.Option(min=1, help="partitions to key users into, as the stream does")] = 4,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results as JSON here")] = None,
    detector_config: Annotated[
        Path | None, typer.Option(help="TOML of detector thresholds to evaluate (as GUARDSTREAM_DETECTOR_CONFIG)")
    ] = None,
) -> None:
    """Detection quality on the simulator's labelled scenarios: precision, recall, benign users flagged and
    time to detect per attack family, through the same detector code as the stream (no broker needed)."""
    import dataclasses

    from streams.detector_config import load_detector_config
    from streams.evaluate import evaluate, print_results
    from streams.output import report_console
    from streams.simulator import SCENARIOS

    chosen = scenario or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        raise fail(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    configs = {
        name: dataclasses.replace(SCENARIOS[name], users=max(60, int(SCENARIOS[name].users * scale))) for name in chosen
    }
    out = report_console()
    from streams.output import progress_bar

    with progress_bar(console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(configs))
        results = evaluate(
            configs,
            config=load_detector_config(detector_config or Settings().detector_config),
            partitions=partitions,
            progress=lambda name: progress.advance(task),
        )
    print_results(results, out)
    if json_out is not None:
        json_out.write_text(json.dumps([r.as_dict() for r in results], indent=2))
        out.print(f"results written to {json_out}")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the guardrail decision event contract (v1)."""
    from detectors.events import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def detectors() -> None:
    """Every detector threshold with its default and meaning; override them in a TOML file named by
    GUARDSTREAM_DETECTOR_CONFIG (sections as in the first column, e.g. [hugging] index_level = 6.0)."""
    from rich.table import Table

    from streams.detector_config import describe

    table = Table(title="detector settings (GUARDSTREAM_DETECTOR_CONFIG=path.toml overrides them)")
    for col in ("setting", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for name, default, meaning in describe():
        table.add_row(name, default, meaning)
    Console().print(table)


def _holder_url(settings: Settings, url: str | None) -> str | None:
    """The URL of the process that holds the store: ``url`` if given, else the one ``<db>.service.json`` names."""
    from streams.worker import running_service

    if url is not None:
        return url
    service = running_service(settings.db)
    return str(service["url"]) if service else None


def _post_json(target: str, path: str, payload: dict[str, Any], timeout: float) -> bytes:
    """POST to the process that holds the store; its refusal, or its absence, is one error line."""
    import urllib.error

    from streams.query import open_service, service_request

    request = service_request(target.rstrip("/") + path, orjson.dumps(payload), {"Content-Type": "application/json"})
    try:
        with open_service(request, timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        raise fail(f"{target} refused: {exc.code} {exc.read().decode('utf-8', 'replace')}") from exc
    except urllib.error.URLError as exc:
        raise fail(f"cannot reach the pipeline at {target}: {exc.reason}") from exc
    except OSError as exc:  # e.g. TLS 1.3: a refused client certificate shows when the answer is read
        raise fail(f"cannot reach the pipeline at {target}: {exc}") from exc


def _open_store_file(settings: Settings, hint: str) -> Store:
    """The store file for writing when no process holds it (an offline verdict or erasure)."""
    from streams.sandbox import StoreLocked
    from streams.store import open_store

    if not settings.db.exists():
        raise fail(f"no database at {settings.db}: {hint}")
    try:
        return open_store(settings)
    except StoreLocked as exc:
        raise fail(str(exc)) from exc


@app.command()
def verdict(
    alert_id: Annotated[str, typer.Argument(help="the alert's alert_id (see `guardstream investigate`)")],
    value: Annotated[str, typer.Argument(metavar="confirmed|false_positive", help="the analyst's verdict")],
    note: Annotated[str | None, typer.Option(help="free text kept with the verdict")] = None,
    analyst: Annotated[str | None, typer.Option(help="who decided")] = None,
    db: DbPath = None,
    url: Annotated[str | None, typer.Option(help="a running pipeline's URL instead of finding it")] = None,
) -> None:
    """Record an analyst's verdict on an alert; verdicts feed guardstream_detector_precision_ratio
    (MEASURE 3.3 / 4.3). Works while the pipeline runs (through it) and when it does not (directly)."""
    settings = Settings().with_overrides(db=db)
    target = _holder_url(settings, url)
    if target is not None:
        answer = _post_json(
            target, "/verdict", {"alert_id": alert_id, "verdict": value, "note": note, "analyst": analyst}, 30
        )
        detector = json.loads(answer)["detector"]
    else:
        store = _open_store_file(settings, "pass --db")
        try:
            detector = store.record_verdict(alert_id, value, analyst, note)
        except (ValueError, LookupError) as exc:
            raise fail(str(exc)) from exc
        finally:
            store.close()
    console.print(f"recorded {value} on alert {alert_id} ({detector})")


@app.command()
def forget(
    user: Annotated[str, typer.Argument(help="user id as stored (a pseudonym when a key is set), or raw with --raw")],
    raw: Annotated[bool, typer.Option(help="USER is a raw id: pseudonymize it with GUARDSTREAM_PSEUDONYM_KEY")] = False,
    tenant: Annotated[str | None, typer.Option(help="erase the user in this tenant only (default: every tenant)")] = (
        None
    ),
    db: DbPath = None,
    url: Annotated[
        str | None, typer.Option(help="the running worker or writer that holds the store, instead of finding it")
    ] = None,
) -> None:
    """Erase one user everywhere in the store, for an erasure request: decisions, daily aggregates, alerts, alert
    changes (unpublished ones too), verdicts on those alerts and detector state, and the user's state in the memory
    of the running pipeline. Prints the rows erased per table; running it again erases nothing more.

    Works while the pipeline runs (through it, or the writer) and when it does not (on the file). Kafka topics keep
    the raw events until their retention, and `guardstream rebuild` from them would bring the user back."""
    from streams.store import Erasure

    settings = Settings().with_overrides(db=db)
    user_id = _resolve_user(user, raw, settings)
    target = _holder_url(settings, url)
    if target is not None:
        answer = _post_json(target, "/forget", {"user_id": user_id, "tenant": tenant}, 300)
        erasure = msgspec.json.decode(answer, type=Erasure)
        where = target
    else:
        store = _open_store_file(settings, "pass --db (or --url of the running pipeline or writer)")
        try:
            erasure = store.forget(user_id, tenant)
        finally:
            store.close()
        where = str(settings.db)
    for table, rows in erasure.deleted.items():
        sys.stdout.write(f"{table}\t{rows}\n")
    total = sum(erasure.deleted.values())
    shown = f"{user} (pseudonym {user_id})" if raw else user
    scope = f" in tenant {tenant}" if tenant else ""
    if not total and not erasure.in_memory:
        console.print(
            f"nothing stored for user {shown}{scope} in {where}: erased already, or never seen",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    notes = []
    if erasure.unpublished:
        notes.append(f"{erasure.unpublished} alert changes not yet published are withdrawn")
    if erasure.in_memory:
        notes.append("dropped from the running worker's memory")
    elif erasure.epochs:
        notes.append("a worker still holding the user in memory reloads those partitions before it commits there")
    console.print(
        f"erased user {shown}{scope} from {where}: {total:,} rows; partitions {sorted(erasure.epochs) or '-'}"
        + "".join(f"; {n}" for n in notes),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


dashboards_app = typer.Typer(help="Grafana dashboards (built from dashboards/build.py).", no_args_is_help=True)
app.add_typer(dashboards_app, name="dashboards")


@dashboards_app.command("push")
def dashboards_push(
    url: Annotated[str, typer.Option(help="Grafana base URL, e.g. https://grafana.example.com")],
    token: Annotated[
        str, typer.Option(help="Grafana service account token (env GRAFANA_TOKEN)", envvar="GRAFANA_TOKEN")
    ],
    folder_uid: Annotated[str | None, typer.Option(help="folder to put the dashboards in")] = None,
) -> None:
    """Provision the committed dashboards into Grafana with grafana-client (overwrites by uid)."""
    from streams.grafana import DashboardPushError, push_dashboards

    try:
        pushed = push_dashboards(url, token, folder_uid=folder_uid)
    except DashboardPushError as exc:
        raise fail(str(exc)) from exc
    for uid, version in pushed:
        console.print(f"pushed {uid} (version {version})")


bench_app = typer.Typer(invoke_without_command=True)
app.add_typer(bench_app, name="bench")


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{option} takes comma-separated whole numbers, e.g. 1000000,10000000") from None
    if any(v < 0 for v in values):
        raise fail(f"{option}: sizes must not be negative")
    return values


def _write_results(result: Any, json_out: Path | None) -> None:
    """A benchmark's results as JSON to ``--json PATH``, when given."""
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"results written to {json_out}")


@bench_app.callback()
def bench(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(min=100, help="events to simulate and produce (once, for every variant)")] = (
        200_000
    ),
    partitions: Annotated[int, typer.Option(min=1, help="partitions of the benchmark topics")] = 4,
    only: Annotated[str, typer.Option(help="comma-separated subset of the variants a, b, b2, c, c0")] = "a,b,b2,c",
    floor: Annotated[
        bool,
        typer.Option(
            help="also run c0: the pipeline with every detector disabled, side by side with c (what the detectors "
            "cost live, and what the rest of the pipeline does without them)"
        ),
    ] = False,
    skip_latency: Annotated[bool, typer.Option(help="skip the detection latency phase")] = False,
    latency_rate: Annotated[
        float | None, typer.Option(min=1, help="events/s for the latency phase (default: 50% of c's throughput)")
    ] = None,
    latency_events: Annotated[
        int | None, typer.Option(min=1, help="events sent in the latency phase (default: all of them)")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="also run the pipeline as N workers in one group and report the scaling")
    ] = 1,
    bootstrap: Annotated[
        str | None, typer.Option(help="use this Kafka (HOST:PORT) instead of starting the embedded broker")
    ] = None,
    seed: Annotated[int, typer.Option(help="simulator seed")] = 7,
    workdir: Annotated[
        Path | None, typer.Option(help="keep logs and DuckDB files here (default: a temporary directory)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results as JSON here")] = None,
    markdown: Annotated[bool, typer.Option(help="also print the results as a Markdown table (for the README)")] = (
        False
    ),
    rounds: Annotated[
        int,
        typer.Option(
            min=1,
            help="run the variants this many times, in alternating order, and report each one's median run and the "
            "median of each round's ratios (the machine's speed drifts over minutes)",
        ),
    ] = 1,
) -> None:
    """Benchmarks: the pipeline against the raw client and Faust; `bench store` for the store.

    Without a subcommand: the real pipeline's throughput (c) against the raw client (a), a naive Faust app with
    a Table (b) and a decode-only Faust agent (b2), all on the same freshly produced data, with peak RSS and
    the detection latency at a fixed rate, as ratios measured side by side in one run."""
    if ctx.invoked_subcommand is not None:
        return
    from streams.bench import BenchError, BenchOptions, markdown_report, print_report, run_bench
    from streams.broker import BrokerError
    from streams.output import report_console

    chosen = [v.strip() for v in only.split(",") if v.strip()]
    if floor and "c0" not in chosen:
        chosen.append("c0")
    options = BenchOptions(
        events=events,
        partitions=partitions,
        only=tuple(chosen),
        latency=not skip_latency,
        latency_rate=latency_rate,
        latency_events=latency_events,
        workers=workers,
        bootstrap=bootstrap,
        seed=seed,
        workdir=workdir,
        rounds=rounds,
    )
    try:
        result = run_bench(options, console)
    except KeyboardInterrupt:
        raise fail("interrupted; every process the bench started was stopped", 130) from None
    except (BenchError, BrokerError) as exc:
        raise fail(str(exc)) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("aiokafka"):
            raise fail(f"Kafka at {bootstrap or 'the embedded broker'}: {exc!r}") from exc
        raise
    print_report(result, report_console())
    _write_results(result, json_out)
    if markdown:
        sys.stdout.write("\n" + markdown_report(result))


@bench_app.command("store")
def bench_store(
    decisions: Annotated[
        str | None, typer.Option(help="decision counts for ingest and investigation latency (default 1000000,10000000)")
    ] = None,
    users: Annotated[
        str | None, typer.Option(help="tracked users for the detector state size (default 100000,1000000)")
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="smoke-test sizes (100k decisions, 10k users) unless sizes given")
    ] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="keep the DuckDB files here (several GB at 10M decisions)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results as JSON here")] = None,
) -> None:
    """DuckDB sink ingest, investigation query latency and detector state per tracked user, at scale."""
    from streams.bench_store import DEFAULT_DECISIONS, DEFAULT_USERS, QUICK, print_store_report, run_store_bench
    from streams.output import report_console

    sizes = {"decisions": list(DEFAULT_DECISIONS), "users": list(DEFAULT_USERS)}
    if quick:
        sizes = {k: list(v) for k, v in QUICK.items()}
    if decisions is not None:
        sizes["decisions"] = _int_list(decisions, "--decisions")
    if users is not None:
        sizes["users"] = _int_list(users, "--users")
    try:
        result = run_store_bench(decisions=sizes["decisions"], users=sizes["users"], workdir=workdir, progress=True)
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    print_store_report(result, report_console())
    _write_results(result, json_out)


@bench_app.command("commit")
def bench_commit(
    events: Annotated[int, typer.Option(min=100, help="simulated events to run through the commit path")] = 100_000,
    batch: Annotated[str, typer.Option(help="comma-separated batch sizes, one run each")] = "1000,10000",
    partitions: Annotated[int, typer.Option(min=1, help="partitions the events are keyed onto")] = 4,
    seed: Annotated[int, typer.Option(help="simulator seed")] = 7,
    model: Annotated[bool, typer.Option(help="train an anomaly model on another seed first, as `bench` does")] = True,
    workdir: Annotated[Path | None, typer.Option(help="put the temporary DuckDB files here")] = None,
    floor: Annotated[
        bool,
        typer.Option(
            help="also run each batch size through an engine without detectors, right after the plain pass: "
            "the floor that decoding, the batch's tables and the sink set, and the detectors' share"
        ),
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results as JSON here")] = None,
) -> None:
    """Where the worker's commit path spends its time, in one thread, without Kafka: per phase (prepare, detect,
    sink, settle), per detector, per table builder and per DuckDB statement, in µs per event."""
    from streams.bench_commit import print_commit_report, run_commit_bench
    from streams.output import report_console

    sizes = _int_list(batch, "--batch")
    if not sizes or min(sizes) < 1:
        raise fail("--batch: give one or more batch sizes of at least 1, e.g. 1000,10000")
    try:
        result = run_commit_bench(
            events=events,
            batches=sizes,
            partitions=partitions,
            seed=seed,
            model=model,
            workdir=workdir,
            floor=floor,
            console=console,
        )
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    print_commit_report(result, report_console())
    _write_results(result, json_out)


@app.command(name="settings")
def show_settings() -> None:
    """Show every setting with its current value (secrets hidden) and its environment variable."""
    from rich.table import Table

    current = Settings()
    table = Table(title="guardstream settings")
    for col in ("setting", "environment variable", "value", "meaning"):
        table.add_column(col, overflow="fold")
    for name, field in Settings.model_fields.items():
        table.add_row(name, f"GUARDSTREAM_{name.upper()}", str(getattr(current, name)), field.description or "")
    Console().print(table)


def settings_error(exc: Any) -> str:
    """A pydantic ValidationError of the settings as one line naming the variables (never the values given)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(str(loc) for loc in error["loc"])
        parts.append(f"{prefix}{where.upper()}: {message}" if where else message)
    return "settings: " + "; ".join(parts)


def main() -> None:
    from pydantic import ValidationError
    from rich.markup import escape

    from streams.detector_config import DetectorConfigError

    try:
        app()
    except DetectorConfigError as exc:  # from any command that builds the detectors (run, eval, rebuild, bench)
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        sys.exit(2)
    except ValidationError as exc:  # GUARDSTREAM_* settings: a bad value, or half-set credentials
        if exc.title != Settings.__name__:
            raise
        console.print(f"[bold red]error:[/bold red] {escape(settings_error(exc))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
