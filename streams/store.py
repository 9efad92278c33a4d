"""The DuckDB store: schema migrations, the one writer's checkpoint transaction, and read-only queries.

DuckDB lets one process hold the file for writing, and no other process can open it meanwhile, not even
read-only. So the running pipeline answers queries itself (``/query``, through a separate cursor that
sees committed snapshots) and ``guardstream sql`` opens the file directly only when no pipeline holds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import md5
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from streams.sandbox import QueryLimits, QueryParams, StoreLocked, run_query, seal

if TYPE_CHECKING:
    from streams.settings import Settings

VERDICTS = ("confirmed", "false_positive")
STORE_CATALOG = "guardstream_store"  # the store's name on a connection that attached it (a row group size set)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_MS = 3_600_000
# a decision's event-time hour and dedup key (see pipeline.event_key), in SQL over a batch's decisions
_HOUR = f"(epoch_ms(ts) // {HOUR_MS})::INTEGER"
_KEY = "md5_number_upper(event_id)"
# decision_rows' columns, as the pipeline's Arrow batch names them
_ROW_COLUMNS = (
    "event_id, ts, tenant, user_id, session_id, turn, request_id, stage, guardrail, guardrail_version, "
    "policy_version, decision, categories, layout_key, scores, max_score, min_margin, peak_ratio, peak_category, "
    "hugging_categories, blocked_categories, judge_name, judge_verdict, judge_score, model, latency_ms, "
    "input_chars, output_chars, kafka_partition, kafka_offset, ingested_at"
)
# what the outbox publishes of an alert change (a row of Store.unpublished_changes)
_OUTBOX_COLUMNS = (
    "change_id, alert_id, change, ts, tenant, user_id, detector, category, status, severity, score, reason, "
    "evidence, action, episode"
)
# detector_state.user_key of a state row, in SQL over its columns (migration 005; user_key below in Python)
_USER_KEY = "md5_number_upper(tenant || chr(31) || user_id)"
UserKey = tuple[str, str]  # (tenant, user_id)


def user_key(tenant: str, user_id: str) -> int:
    """``detector_state.user_key``: the first 8 bytes of md5(tenant, chr(31), user_id), little-endian, which is what
    DuckDB's ``md5_number_upper`` computes (migration 005)."""
    return int.from_bytes(md5(f"{tenant}\x1f{user_id}".encode()).digest()[:8], "little")


def sql_dir() -> Path:
    """The migrations folder: the repository's ``sql/`` or the copy packaged into the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "sql", here / "_sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("guardstream's sql/ migrations folder is missing from this installation")


def migrations() -> list[tuple[int, str, str]]:
    found = []
    for path in sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:3]), path.stem, path.read_text()))
    return found


def migrate(conn: duckdb.DuckDBPyConnection, upto: int | None = None) -> list[str]:
    """Apply every migration not yet applied (up to version ``upto``), each in its own transaction. Returns the
    applied names."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, text in migrations():
        if version in done or (upto is not None and version > upto):
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(text)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def _user_states_table(users: list[tuple[int, str, str, bytes]]) -> pa.Table | None:
    if not users:
        return None
    return pa.table(
        {
            "kafka_partition": pa.array([u[0] for u in users], pa.int32()),
            "tenant": [u[1] for u in users],
            "user_id": [u[2] for u in users],
            "state": pa.array([u[3] for u in users], pa.binary()),
        }
    )


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """A query's rows as dicts keyed by column name."""
    names = [d[0] for d in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@dataclass(slots=True)
class Checkpoint:
    """Everything one batch changes, written atomically: data, state and the offsets it covers.

    ``expected`` is the committer's view of each touched partition's stored ``next_offset``; the sink
    refuses the whole batch when any differs (another worker committed that partition since: this one
    is behind, or a zombie). ``decisions`` holds only events the committer believes new; when one is
    already stored the batch is refused too, so the detectors never count an event twice."""

    topic: str
    decisions: pa.Table | None = None  # decision_rows columns (see Pipeline._decisions_table)
    layouts: pa.Table | None = None  # the score_layouts the decisions use (stored once; more are harmless)
    daily: pa.Table | None = None  # the batch's user_category_daily rows, added to the stored ones
    expected: dict[int, int] = field(default_factory=dict)
    alerts: pa.Table | None = None
    alert_changes: pa.Table | None = None
    dead_letters: pa.Table | None = None
    users: list[tuple[int, str, str, bytes]] = field(default_factory=list)
    populations: list[tuple[int, bytes, int]] = field(default_factory=list)  # partition, state, watermark
    offsets: dict[int, int] = field(default_factory=dict)
    # the committer's epoch of each partition in ``expected``, as it loaded them: refused (fenced) when an erasure
    # moved one since (None: a sender that predates erasures; only the offsets are checked then)
    epochs: dict[int, int] | None = None


class PartitionCheckpoint(msgspec.Struct, frozen=True):
    """What a worker needs to take over a partition: where to resume and the detectors' state there. Users' states
    are not in it: the worker fetches each user's on their next decision (:meth:`Store.user_states_for`)."""

    next_offset: int
    population: bytes | None
    watermark_ms: int
    alerts: list[dict[str, Any]]
    epoch: int = 0  # erasures of a user with state here so far (partition_epochs); the worker's batches carry it


class Applied(msgspec.Struct, frozen=True):
    """The sink's answer to one checkpoint: committed, or refused."""

    fenced: dict[int, int] = {}  # partition -> the stored next_offset, where it was not the expected one
    duplicates: list[str] = []  # event ids that were already stored
    # every partition's epoch that is not 0: a worker reloads the partitions it holds whose epoch moved (a user was
    # erased there) after a commit, so the user leaves its memory (and /status) without waiting for a batch there
    epochs: dict[int, int] = {}


class Erasure(msgspec.Struct, frozen=True):
    """What ``guardstream forget`` erased of one user: rows per table, and the partitions it was held in."""

    deleted: dict[str, int]  # table -> rows (``decisions``: rows of decision_rows, the view's table)
    unpublished: int  # of the alert_changes rows, those the alerts topic had not acknowledged yet (never sent now)
    epochs: dict[int, int]  # partition -> its new epoch: where detector state or alerts of the user were
    in_memory: int = 0  # users dropped from a running worker's detector state (filled in by the worker)


class Store:
    """The single writer. Every method runs on the caller's thread; one batch at a time."""

    def __init__(
        self,
        path: Path | str,
        *,
        checkpoint_threshold: str | None = None,
        upto: int | None = None,
        row_group_size: int | None = None,
        limits: QueryLimits | None = None,
    ) -> None:
        """``upto`` stops the schema at that migration: how tests and the side-by-side benchmark build a store
        as an earlier version wrote it. ``row_group_size``: see ``Settings.duckdb_row_group_size``. ``limits``:
        what one caller's query may take (:meth:`query`)."""
        self.path = Path(path)
        self.limits = limits or QueryLimits()
        # DuckDB takes a row group size only as an option of ATTACH: the file is then attached to an in-memory
        # database and made this connection's default; a cursor starts in the in-memory one (sandbox.run_query).
        self.catalog: str | None = STORE_CATALOG if row_group_size else None
        try:
            if row_group_size:
                self.conn = duckdb.connect(":memory:")
                location = str(self.path).replace("'", "''")
                self.conn.execute(f"ATTACH '{location}' AS {STORE_CATALOG} (ROW_GROUP_SIZE {int(row_group_size)})")
                self.conn.execute(f"USE {STORE_CATALOG}")
            else:
                self.conn = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            raise StoreLocked(self.path, exc) from exc
        if checkpoint_threshold:
            # DuckDB checkpoints inside the commit that grows the WAL past this (16 MB by default): a stall of
            # hundreds of ms in the batch that triggers it.
            self.conn.execute("SET checkpoint_threshold = ?", [checkpoint_threshold])
        migrate(self.conn, upto)
        # The instance answers callers' SQL too (/query, on cursors of this connection): from here on it reads no
        # file but its own, loads no extension, and no statement changes its settings (streams/sandbox.py). So the
        # sink reads each batch's Arrow tables through views registered for its statements (:meth:`_views`), not
        # through DuckDB's replacement scans of Python variables, which external access off turns off.
        seal(self.conn)
        self._offsets: dict[str, dict[int, int]] = {}  # topic -> partition -> next_offset, as this writer stored it
        # The outbox's unpublished changes, change_id -> row: read once by the first unpublished_changes(), then
        # kept as commits add rows (from the insert's RETURNING) and mark_published takes them out, so publishing
        # after each commit neither scans alert_changes for them nor marks them by a scan of the whole table.
        self._outbox: dict[str, dict[str, Any]] | None = None
        # Partitions with a population_state row (seen by population() or committed here): their rows take an
        # UPDATE, ~0.6 ms less than DuckDB's ON CONFLICT on these few-row tables; the offsets likewise.
        self._populations: set[int] = set()
        self._layouts: set[int] = set()
        self._user_keys = upto is None or upto >= 5  # detector_state.user_key came with migration 005
        if upto is None or upto >= 3:  # score_layouts came with migration 003
            stored = self.conn.execute("SELECT layout_key FROM score_layouts").fetchall()
            self._layouts = {int(r[0]) for r in stored}
        self._new_layouts: set[int] = set()  # inserted by the open transaction: known once it commits
        self._epochs: dict[int, int] = {}  # partition_epochs, kept like the offsets (this writer alone changes it)
        if upto is None or upto >= 6:  # partition_epochs came with migration 006
            rows = self.conn.execute("SELECT kafka_partition, epoch FROM partition_epochs").fetchall()
            self._epochs = {int(p): int(e) for p, e in rows}
        self._reader = self.conn.cursor()  # queries from other threads branch off this, never off the writer

    def close(self) -> None:
        self._reader.close()
        self.conn.close()

    @contextlib.contextmanager
    def _views(self, **tables: pa.Table) -> Iterator[None]:
        """The batch's Arrow tables as views of the writer's connection, by name, for the statements inside.
        Registered views are the connection's own: a caller's query, on another cursor, never sees them."""
        for name, table in tables.items():
            self.conn.register(name, table)
        try:
            yield
        finally:
            for name in tables:
                with contextlib.suppress(duckdb.Error):  # a failed statement aborted the transaction, view and all
                    self.conn.unregister(name)

    # -- reading the checkpoint -------------------------------------------------------------------
    def offsets(self, topic: str) -> dict[int, int]:
        """The stored resume offsets of a topic's partitions. Read once per topic, then kept as this writer
        commits them: no other connection writes the file while this one holds it (see the module's note), so
        the copy stays exact and the fencing check in :meth:`apply` costs no statement."""
        known = self._offsets.get(topic)
        if known is None:
            rows = self.conn.execute(
                "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE topic = ?", [topic]
            ).fetchall()
            known = self._offsets[topic] = {int(p): int(o) for p, o in rows}
        return dict(known)

    def population(self, partition: int) -> tuple[bytes | None, int]:
        """The partition's population baselines and its event-time watermark."""
        row = self.conn.execute(
            "SELECT state, watermark_ms FROM population_state WHERE kafka_partition = ?", [partition]
        ).fetchone()
        if row is None:
            return None, 0
        self._populations.add(partition)
        return bytes(row[0]), int(row[1])

    def alert_rows(self, partition: int) -> list[dict[str, Any]]:
        cursor = self.conn.execute(
            "SELECT alert_id, detector, tenant, user_id, category, status, severity, score, reason, "
            "evidence, action, epoch_ms(first_ts) AS first_ts_ms, epoch_ms(last_ts) AS last_ts_ms, "
            "epoch_ms(changed_ts) AS changed_ts_ms, published_score, updates, episode "
            "FROM alerts WHERE kafka_partition = ?",
            [partition],
        )
        return _dicts(cursor)

    def user_states(self, partition: int) -> Iterable[tuple[str, str, bytes]]:
        """Every user's state in a partition."""
        cursor = self.conn.execute(
            "SELECT tenant, user_id, state FROM detector_state WHERE kafka_partition = ?", [partition]
        )
        while rows := cursor.fetchmany(10_000):
            for tenant, user_id, state in rows:
                yield tenant, user_id, bytes(state)

    def user_states_for(self, keys: Mapping[int, Iterable[UserKey]]) -> dict[int, list[tuple[str, str, bytes]]]:
        """The stored states of these users (by partition), in one statement: the users of a batch whose state is
        not in the worker's memory. A user with no stored state (a new one) is left out."""
        wanted = {(partition, tenant, user_id) for partition, users in keys.items() for tenant, user_id in users}
        if not wanted:
            return {}
        if self._user_keys:
            # literal integers, not a list parameter: DuckDB looks an IN list of constants up in the index (~50 us a
            # user), a list parameter it joins with a scan of the whole table
            hashes = ", ".join(str(k) for k in sorted({user_key(t, u) for _p, t, u in wanted}))
            rows = self.conn.execute(
                f"SELECT kafka_partition, tenant, user_id, state FROM detector_state WHERE user_key IN ({hashes})"
            ).fetchall()
        else:
            users = sorted(wanted)
            rows = self.conn.execute(
                "SELECT kafka_partition, tenant, user_id, state FROM detector_state "
                "WHERE (kafka_partition, tenant, user_id) IN "
                "(SELECT unnest(?::INTEGER[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]))",
                [[p for p, _t, _u in users], [t for _p, t, _u in users], [u for _p, _t, u in users]],
            ).fetchall()
        found: dict[int, list[tuple[str, str, bytes]]] = {}
        for partition, tenant, user_id, state in rows:
            if (partition, tenant, user_id) in wanted:  # not a hash collision, nor the user in another partition
                found.setdefault(int(partition), []).append((tenant, user_id, bytes(state)))
        return found

    def checkpoint(self, topic: str, partitions: Iterable[int]) -> dict[int, PartitionCheckpoint]:
        stored = self.offsets(topic)
        found = {}
        for partition in partitions:
            population, watermark = self.population(partition)
            found[partition] = PartitionCheckpoint(
                next_offset=stored.get(partition, 0),
                population=population,
                watermark_ms=watermark,
                alerts=self.alert_rows(partition),
                epoch=self._epochs.get(partition, 0),
            )
        return found

    # -- writing -------------------------------------------------------------------------------
    def apply(self, cp: Checkpoint) -> Applied:
        """Commit one batch in one transaction, or refuse it and change nothing (see :class:`Checkpoint`)."""
        self.begin()
        try:
            if cp.expected:
                stored = self.offsets(cp.topic)
                fenced = {p: stored.get(p, 0) for p, e in cp.expected.items() if stored.get(p, 0) != e}
                if cp.epochs is not None:  # a user erased in a partition since the committer loaded it
                    epochs = self._epochs
                    fenced |= {p: stored.get(p, 0) for p in cp.expected if cp.epochs.get(p, 0) != epochs.get(p, 0)}
                if fenced:
                    self.rollback()
                    return Applied(fenced=fenced)
            if cp.decisions is not None and cp.decisions.num_rows:
                duplicates = self.insert_decisions(cp.decisions, cp.layouts)
                if duplicates:
                    self.rollback()
                    return Applied(duplicates=sorted(duplicates))
            if cp.daily is not None and cp.daily.num_rows:
                self.add_daily(cp.daily)
            self.finish(cp)
        except BaseException:
            self.rollback()
            raise
        return Applied(epochs=dict(self._epochs)) if self._epochs else Applied()

    def begin(self) -> None:
        self.conn.execute("BEGIN TRANSACTION")

    def insert_decisions(self, decisions: pa.Table, layouts: pa.Table | None = None) -> set[str]:
        """Insert the batch's decisions (and layouts), unless some are stored already: then insert nothing and
        return their event ids (the caller rolls back and starts the batch over without them). It must be the
        first write of its transaction: finding a stored key restarts the transaction.

        The check needs no index: the batch's keys are joined with ``event_keys`` of the event-time hours the
        batch touches, which DuckDB reads by zone map (the keys are appended in arrival order, so an hour's
        keys sit in a row group or two). The batch's keys go in by the same statement, those not found there:
        one hash per key and one statement. If any was found, the transaction starts over and the keys found
        are confirmed by event_id in their hours' decisions (a 64-bit collision between two different events
        stores both)."""
        conn = self.conn
        ts_ms = decisions.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
        hours = pc.unique(pc.divide(ts_ms, HOUR_MS).cast(pa.int32())).to_pylist()
        # The keys are hashed in SQL, in the statements that use them: DuckDB does it without holding the GIL,
        # which the worker's Python work needs, and each call into DuckDB is a GIL round trip of its own.
        with self._views(decisions_batch=decisions):
            stored_hours = "SELECT hour, event_key FROM event_keys WHERE hour IN (SELECT unnest(?::INTEGER[]))"
            batch_keys = f"SELECT event_id, {_HOUR} AS hour, {_KEY} AS event_key FROM decisions_batch"
            row = conn.execute(
                f"INSERT INTO event_keys SELECT b.hour, b.event_key FROM ({batch_keys}) b "
                f"ANTI JOIN ({stored_hours}) k USING (hour, event_key)",
                [hours],
            ).fetchone()
            if row is None or row[0] != decisions.num_rows:  # a key was stored already: the rare way, in two steps
                self.rollback()
                self.begin()
                conn.register("decisions_batch", decisions)  # the rollback took the view with it
                hits = conn.execute(
                    f"SELECT b.event_id, b.hour FROM ({batch_keys}) b "
                    f"SEMI JOIN ({stored_hours}) k USING (hour, event_key)",
                    [hours],
                ).fetchall()
                if hits:
                    found = sorted({int(hour) for _id, hour in hits})
                    stored = conn.execute(
                        "SELECT DISTINCT event_id FROM decision_rows "
                        "WHERE ts >= to_timestamp(?::BIGINT * 3600) AND ts < to_timestamp(?::BIGINT * 3600) "
                        "AND event_id IN (SELECT unnest(?::VARCHAR[]))",
                        [found[0], found[-1] + 1, [event_id for event_id, _hour in hits]],
                    ).fetchall()
                    if stored:
                        return {str(row[0]) for row in stored}
                conn.execute(f"INSERT INTO event_keys SELECT {_HOUR}, {_KEY} FROM decisions_batch")
            if layouts is not None and layouts.num_rows:
                self._insert_layouts(layouts)
            conn.execute(f"INSERT INTO decision_rows BY NAME SELECT {_ROW_COLUMNS} FROM decisions_batch")
        return set()

    def _insert_layouts(self, layouts: pa.Table) -> None:
        """The layouts not stored yet (a handful per deployment: the store remembers which it has)."""
        new = layouts.filter(pc.invert(pc.is_in(layouts.column("layout_key"), pa.array(self._layouts, pa.uint64()))))
        if new.num_rows:
            with self._views(layouts_batch=new):
                self.conn.execute(
                    "INSERT INTO score_layouts BY NAME SELECT * FROM layouts_batch ON CONFLICT DO NOTHING"
                )
            self._new_layouts.update(new.column("layout_key").to_pylist())

    def add_daily(self, daily: pa.Table) -> None:
        """Add a batch's per-user, per-category, per-day counts to ``user_category_daily``."""
        with self._views(daily_batch=daily):
            self.conn.execute(
                "INSERT INTO user_category_daily BY NAME SELECT * FROM daily_batch "
                "ON CONFLICT (tenant, user_id, category, day) DO UPDATE SET "
                "decisions = decisions + excluded.decisions, blocks = blocks + excluded.blocks, "
                "hugs = hugs + excluded.hugs, score_sum = score_sum + excluded.score_sum"
            )

    def finish(self, cp: Checkpoint) -> None:
        """Write the rest of the checkpoint and commit. On any error the whole batch rolls back."""
        conn = self.conn
        added: list[dict[str, Any]] = []  # the alert changes this commit stores (the outbox's new rows)
        tables = {
            "alerts_batch": cp.alerts,
            "changes_batch": cp.alert_changes,
            "dlq_batch": cp.dead_letters,
            "state_batch": _user_states_table(cp.users),
        }
        parts = [p for p, _state, _watermark in cp.populations]
        states = [state for _p, state, _watermark in cp.populations]
        watermarks = [watermark for _p, _state, watermark in cp.populations]
        # One statement per table, whatever the number of partitions: DuckDB's cost here is per statement. The
        # population rows already stored take an UPDATE that picks each partition's value from a list parameter:
        # ~0.75 ms, against ~1.2-1.5 for the same UPDATE joined with a table of the values (offline, 4 rows).
        update_populations = self._populations.issuperset(parts)
        if cp.populations and not update_populations:
            tables["populations_batch"] = pa.table(
                {
                    "kafka_partition": pa.array(parts, pa.int32()),
                    "state": pa.array(states, pa.binary()),
                    "watermark_ms": pa.array(watermarks, pa.int64()),
                }
            )
        with self._views(**{name: t for name, t in tables.items() if t is not None and t.num_rows}):
            if cp.alerts is not None and cp.alerts.num_rows:
                # Nearly every alert a batch touches is stored already (one opens, then many updates follow): an
                # UPDATE joined with the batch took 1.7-2.4 ms where DuckDB's ON CONFLICT upsert of the same rows
                # took 3.5-5 (20 rows into 115, 100k or 1M stored, offline). The alerts it did not find, new ones,
                # are inserted by a second statement; ``ts`` stays as the first insert wrote it.
                mutable = [n for n in cp.alerts.column_names if n not in ("alert_id", "ts")]
                row = conn.execute(
                    "UPDATE alerts SET "
                    + ", ".join(f"{n} = b.{n}" for n in mutable)
                    + " FROM alerts_batch b WHERE alerts.alert_id = b.alert_id"
                ).fetchone()
                if row is None or row[0] != cp.alerts.num_rows:
                    conn.execute(
                        "INSERT INTO alerts BY NAME SELECT * FROM alerts_batch ANTI JOIN alerts USING (alert_id)"
                    )
            if cp.alert_changes is not None and cp.alert_changes.num_rows:
                cursor = conn.execute(
                    "INSERT INTO alert_changes BY NAME SELECT * FROM changes_batch ON CONFLICT DO NOTHING "
                    f"RETURNING {_OUTBOX_COLUMNS}"
                )
                added = _dicts(cursor)
            if cp.dead_letters is not None and cp.dead_letters.num_rows:
                conn.execute("INSERT INTO dead_letters BY NAME SELECT * FROM dlq_batch ON CONFLICT DO NOTHING")
            if cp.users:
                key = f", {_USER_KEY} AS user_key" if self._user_keys else ""
                conn.execute(
                    f"INSERT INTO detector_state BY NAME SELECT *{key} FROM state_batch "
                    "ON CONFLICT (kafka_partition, tenant, user_id) DO UPDATE SET state = excluded.state"
                )
            if cp.populations and update_populations:
                conn.execute(
                    "UPDATE population_state SET state = (?::BLOB[])[list_position(?::INTEGER[], kafka_partition)], "
                    "watermark_ms = (?::BIGINT[])[list_position(?::INTEGER[], kafka_partition)] "
                    "WHERE list_contains(?::INTEGER[], kafka_partition)",
                    [states, parts, watermarks, parts, parts],
                )
            elif cp.populations:
                conn.execute(
                    "INSERT INTO population_state BY NAME SELECT * FROM populations_batch "
                    "ON CONFLICT (kafka_partition) "
                    "DO UPDATE SET state = excluded.state, watermark_ms = excluded.watermark_ms"
                )
        known = self._offsets.get(cp.topic)
        if cp.offsets and known is not None and all(p in known for p in cp.offsets):
            conn.execute(
                "UPDATE consumer_offsets SET next_offset = greatest(next_offset, "
                "(?::BIGINT[])[list_position(?::INTEGER[], kafka_partition)]), updated_at = now() "
                "WHERE topic = ? AND list_contains(?::INTEGER[], kafka_partition)",
                [list(cp.offsets.values()), list(cp.offsets), cp.topic, list(cp.offsets)],
            )
        elif cp.offsets:
            conn.execute(
                "INSERT INTO consumer_offsets SELECT ?, unnest(?::INTEGER[]), unnest(?::BIGINT[]), now() "
                "ON CONFLICT (topic, kafka_partition) "
                "DO UPDATE SET next_offset = greatest(next_offset, excluded.next_offset), updated_at = now()",
                [cp.topic, list(cp.offsets), list(cp.offsets.values())],
            )
        conn.execute("COMMIT")
        self._populations.update(p[0] for p in cp.populations)
        if known is not None:
            for partition, offset in cp.offsets.items():
                known[partition] = max(known.get(partition, offset), offset)
        if self._outbox is not None:
            self._outbox.update((row["change_id"], row) for row in added)
        self._layouts |= self._new_layouts
        self._new_layouts.clear()

    def apply_retention(self, cutoff: datetime) -> dict[str, int]:
        """Delete what is older than ``cutoff`` (event time for decisions, aggregates and alert history;
        arrival for dead letters). Open alerts and detector state stay: they are the running picture.
        A deleted decision's event_id no longer dedupes, so keep more than the producers' retry window.
        Returns the rows deleted per table (``decisions`` counts the view's rows: ``decision_rows``)."""
        conn = self.conn
        day = cutoff.date()
        deleted = {}
        conn.execute("BEGIN TRANSACTION")
        try:
            for name, table, where, params in (
                ("decisions", "decision_rows", "ts < ?", [cutoff]),
                ("event_keys", "event_keys", "hour < ?", [(cutoff - EPOCH) // timedelta(hours=1)]),
                ("user_category_daily", "user_category_daily", "day < ?", [day]),
                ("alert_changes", "alert_changes", "ts < ? AND (published OR dead_letter IS NOT NULL)", [cutoff]),
                ("dead_letters", "dead_letters", "ingested_at < ?", [cutoff]),
                ("alerts", "alerts", "status = 'resolved' AND last_ts < ?", [cutoff]),
            ):
                row = conn.execute(f"DELETE FROM {table} WHERE {where} RETURNING 1", params).fetchall()
                deleted[name] = len(row)
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        return deleted

    def forget(self, user_id: str, tenant: str | None = None) -> Erasure:
        """Erase one user (as stored: the pseudonym; in every tenant unless ``tenant``) in one transaction:
        decisions, daily aggregates, alerts, alert changes (published or not), verdicts on those alerts and
        detector state, and bump the epochs of the partitions whose state or alerts held the user, so that a
        worker holding it in memory has its next batch there refused and reloads (see ``partition_epochs``).
        Idempotent. Population baselines are aggregates over every user of a tenant, not per-user data: they keep
        what the user's decisions added. ``event_keys`` keeps the 64-bit hashes of the event ids, which name no one.
        """
        conn = self.conn
        where, params = (
            ("user_id = ? AND tenant = ?", [user_id, tenant]) if tenant is not None else ("user_id = ?", [user_id])
        )
        deleted: dict[str, int] = {}

        def count(statement: str, args: list[Any]) -> int:
            row = conn.execute(statement, args).fetchone()
            return int(row[0]) if row else 0

        self.begin()
        try:
            partitions = sorted(
                int(r[0])
                for r in conn.execute(
                    f"SELECT kafka_partition FROM detector_state WHERE {where} "
                    f"UNION SELECT kafka_partition FROM alerts WHERE {where}",
                    params + params,
                ).fetchall()
            )
            unpublished = count(f"SELECT count(*) FROM alert_changes WHERE {where} AND NOT published", params)
            deleted["verdicts"] = count(
                f"DELETE FROM verdicts WHERE alert_id IN (SELECT alert_id FROM alerts WHERE {where} "
                f"UNION SELECT alert_id FROM alert_changes WHERE {where})",
                params + params,
            )
            for name, table in (
                ("decisions", "decision_rows"),
                ("user_category_daily", "user_category_daily"),
                ("alerts", "alerts"),
                ("alert_changes", "alert_changes"),
                ("detector_state", "detector_state"),
            ):
                deleted[name] = count(f"DELETE FROM {table} WHERE {where}", params)
            if partitions:
                conn.execute(
                    "INSERT INTO partition_epochs SELECT unnest(?::INTEGER[]), 1 "
                    "ON CONFLICT (kafka_partition) DO UPDATE SET epoch = epoch + 1",
                    [partitions],
                )
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        for partition in partitions:
            self._epochs[partition] = self._epochs.get(partition, 0) + 1
        if self._outbox is not None:  # the erased changes never reach the alerts topic now
            for change_id, row in list(self._outbox.items()):
                if row["user_id"] == user_id and (tenant is None or row["tenant"] == tenant):
                    del self._outbox[change_id]
        return Erasure(deleted=deleted, unpublished=unpublished, epochs={p: self._epochs[p] for p in partitions})

    def rollback(self) -> None:
        self._new_layouts.clear()
        with contextlib.suppress(duckdb.Error):
            self.conn.execute("ROLLBACK")

    def unpublished_changes(self) -> list[dict[str, Any]]:
        """The outbox: alert changes committed and not yet acknowledged by the alerts topic, oldest first."""
        if self._outbox is None:
            cursor = self.conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM alert_changes WHERE NOT published AND dead_letter IS NULL"
            )
            self._outbox = {row["change_id"]: row for row in _dicts(cursor)}
        return sorted(self._outbox.values(), key=lambda row: (row["ts"], row["change_id"]))

    def mark_published(self, change_ids: Sequence[str]) -> None:
        if not change_ids:
            return
        outbox = self._outbox or {}
        times = [row["ts"] for i in change_ids if (row := outbox.get(i)) is not None]
        if len(times) == len(change_ids):
            # alert_changes is appended in commit order, about event time: the bound skips older row groups
            oldest = min(times)
            self.conn.execute(
                "UPDATE alert_changes SET published = true WHERE ts >= ? AND change_id IN ?", [oldest, list(change_ids)]
            )
        else:
            self.conn.execute("UPDATE alert_changes SET published = true WHERE change_id IN ?", [list(change_ids)])
        if self._outbox is not None:
            for change_id in change_ids:
                self._outbox.pop(change_id, None)

    def mark_dead_lettered(self, change_id: str, reason: str) -> None:
        """An alert change the alerts topic refused for good (too large): out of the outbox, never offered again;
        ``reason`` stays on its row (``alert_changes.dead_letter``) with the whole change."""
        self.conn.execute("UPDATE alert_changes SET dead_letter = ? WHERE change_id = ?", [reason, change_id])
        if self._outbox is not None:
            self._outbox.pop(change_id, None)

    def record_verdict(self, alert_id: str, verdict: str, analyst: str | None, note: str | None) -> str:
        """Store an analyst's verdict on an alert (the latest one wins); returns the alert's detector."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
        row = self.conn.execute("SELECT detector FROM alerts WHERE alert_id = ?", [alert_id]).fetchone()
        if row is None:
            raise LookupError(f"no alert {alert_id!r}")
        self.conn.execute(
            "INSERT INTO verdicts VALUES (?, ?, ?, ?, now()) ON CONFLICT (alert_id) DO UPDATE SET "
            "verdict = excluded.verdict, analyst = excluded.analyst, note = excluded.note, created_at = now()",
            [alert_id, verdict, analyst, note],
        )
        return str(row[0])

    def verdict_counts(self) -> dict[tuple[str, str, str | None], int]:
        """(detector, verdict, category) -> alerts with that latest verdict."""
        rows = self.conn.execute(
            "SELECT a.detector, v.verdict, a.category, count(*) FROM verdicts v JOIN alerts a USING (alert_id) "
            "GROUP BY ALL"
        ).fetchall()
        return {(str(d), str(v), c): int(n) for d, v, c, n in rows}

    def query(self, sql: str, params: QueryParams | None = None) -> pa.Table:
        """A caller's query, in the sandbox (streams/sandbox.py). Safe from any thread while the writer works: a
        separate cursor sees committed snapshots."""
        return run_query(self._reader, sql, params, limits=self.limits, catalog=self.catalog)


def open_store(settings: Settings) -> Store:
    """The writer's store, as the settings configure it (worker, writer and rebuild alike)."""
    return Store(
        settings.db,
        checkpoint_threshold=settings.duckdb_checkpoint_threshold,
        row_group_size=settings.duckdb_row_group_size,
        limits=settings.query_limits(),
    )
