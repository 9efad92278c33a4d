"""The one settings object. Every field reads ``GUARDSTREAM_<NAME>`` from the environment (or a ``.env``
file); CLI flags override. ``guardstream settings`` prints them all with their current values."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from streams.sandbox import QueryLimits
from detectors.engine import StateLimits

_LIMITS = StateLimits()  # the caps' defaults, documented where the engine applies them

MIN_PSEUDONYM_KEY_BYTES = 32  # HMAC-SHA256 wants a key as long as its output; shorter ones are guessable sooner
# Values copied from examples instead of generated: deploy/kubernetes/secret.example.yaml's placeholder (a test keeps
# the two in step), the demo's former fixed key, and the usual stand-ins. A key containing one of the words is refused.
PLACEHOLDER_PSEUDONYM_KEYS = ("replace-with-openssl-rand-hex-32", "guardstream-demo-key")
PLACEHOLDER_WORDS = ("replace", "changeme", "change-me", "change_me", "placeholder", "example", "your-key", "yourkey")
MIN_DISTINCT_KEY_CHARACTERS = 10  # `openssl rand -hex 32` shows all 16 hex digits; "aaaa..." or "abab..." is no secret


class PrivacySettingsError(ValueError):
    """The settings would store raw user ids without saying so (see :meth:`Settings.checked_pseudonym_key`)."""


def pseudonym_key_problem(key: bytes | None) -> str | None:
    """What is wrong with a pseudonym key, in words (None: it will do)."""
    if key is None:
        return "is not set"
    if not key.strip():
        return "is empty"
    lowered = key.decode("utf-8", "replace").strip().lower()
    if lowered in PLACEHOLDER_PSEUDONYM_KEYS or any(word in lowered for word in PLACEHOLDER_WORDS):
        return "is a placeholder from an example, not a secret"
    if len(key) < MIN_PSEUDONYM_KEY_BYTES:
        return f"is {len(key)} bytes long, shorter than {MIN_PSEUDONYM_KEY_BYTES}"
    if len(set(key)) < MIN_DISTINCT_KEY_CHARACTERS:
        return f"has only {len(set(key))} distinct characters, so it is not a random secret"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GUARDSTREAM_", env_file=".env", extra="ignore", frozen=True)

    # Kafka
    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, HOST:PORT[,HOST:PORT]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*"
    )
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password")
    ssl_cafile: Path | None = Field(None, description="CA bundle for TLS to the brokers")
    decisions_topic: str = Field("guardrail.decisions", description="input topic (the v1 event contract)")
    alerts_topic: str = Field("guardrail.alerts", description="alerts are published here")
    dlq_topic: str = Field("guardrail.decisions.dlq", description="dead-letter topic for rejected events")
    topic_partitions: int = Field(4, ge=1, description="partitions when guardstream creates the topics")
    consumer_group: str = Field("guardstream", description="consumer group id (the Faust app id)")
    session_timeout_seconds: float = Field(
        10.0, gt=0, description="consumer group session timeout: how soon a dead worker's partitions move"
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        le=30_000,
        description="longest a fetch waits for data at the broker (Faust hard-codes 1500; the embedded broker "
        "always waits it out, so it adds straight to detection latency)",
    )
    faust_batch_delivery: bool = Field(
        True,
        description="hand each fetch of the decisions topic to the pipeline as one batch of records, straight from "
        "Faust's fetcher, instead of one Faust event at a time through the agent's stream (Faust still runs the "
        "group, rebalances and offset commits); false restores the agent's stream",
    )
    faust_direct_delivery: bool = Field(
        True,
        description="hand each fetched message to the agent by awaiting Faust's callback directly while the flow "
        "runs, instead of Faust's per-message wait_first race against a rebalance (1.5x events/s measured); "
        "false restores Faust's own path",
    )
    gc_freeze: bool = Field(
        True,
        description="automatic garbage collection off; after each committed batch, collect the young garbage and "
        "freeze the survivors (detector state) so collections stop walking them (streams/heap.py)",
    )
    gc_reclaim_seconds: float = Field(
        3600.0, ge=0, description="with gc_freeze, one full collection over everything this often (0: never)"
    )
    rebalance_timeout_seconds: float = Field(
        10.0, gt=0, description="how long a rebalance waits for members to rejoin (also the start-up join wait)"
    )

    # Pipeline
    db: Path = Field(Path("guardstream.duckdb"), description="DuckDB file; this process is its one writer")
    writer_url: str | None = Field(
        None,
        description="commit to a `guardstream writer` process at this http(s) URL instead of opening `db`: "
        "how several workers share one store (the writer owns the file; workers split the partitions)",
    )
    duckdb_checkpoint_threshold: str = Field(
        "256MB",
        pattern=r"^[0-9]+(\.[0-9]+)?\s*[KMGT]i?B$",
        description="WAL size at which DuckDB checkpoints (inside the commit that crosses it, stalling that batch): "
        "fewer, larger checkpoints keep detection latency's tail short; a crash replays at most this much WAL",
    )
    duckdb_row_group_size: int | None = Field(
        None,
        ge=2048,
        multiple_of=2048,
        description="rows per row group the writer gives the store's tables (unset: DuckDB's 122,880). A commit "
        "that appends at least this many decisions writes them to the file compressed, skipping the WAL and the "
        "checkpoint that would compress them later: with batch_max_events as large, a backlog commits ~1.4x "
        "faster and without checkpoint stalls, in a ~1.2x larger file at 32768 (README: Benchmarks, the store)",
    )
    batch_max_events: int = Field(
        10_000,
        ge=1,
        description="largest batch handed to the detectors and the sink; only a backlog fills it (a worker that "
        "keeps up commits what arrived during its last commit), so it shares a commit's fixed cost at peak and "
        "does not touch the latency at a rate the worker sustains",
    )
    batch_max_seconds: float = Field(
        0.05,
        gt=0,
        description="longest the agent waits to fill a batch; under load the committer merges queued batches "
        "up to batch_max_events, so a short wait costs little throughput and keeps detection latency low",
    )
    hugging_band: float = Field(0.2, gt=0, lt=1, description="a decision hugs when 0 < margin <= band*threshold")
    max_future_seconds: float = Field(
        86_400.0,
        gt=0,
        description="reject (future_timestamp) an event whose ts is this far past its Kafka record timestamp, or past "
        "its arrival when the record has none or one ahead of the worker's clock: event time drives each "
        "partition's watermark, and one event dated 9999 would resolve every alert",
    )
    # Bad input (issue 25, part 4): event times outside a horizon are dead-lettered, not fed to the detectors
    max_past_days: float = Field(
        365.0,
        gt=0,
        description="reject (stale_timestamp) an event whose ts is more than this many days before its Kafka record "
        "timestamp (its arrival, for a record without one): clock-zero dates (1970, 0001-01-01) and misrouted "
        "old traffic never reach the detectors and the daily aggregates; a replay keeps its record timestamps, so "
        "it passes. Raise it to backfill older history",
    )

    detector_config: Path | None = Field(
        None, description="TOML file overriding detector thresholds (see `guardstream detectors`)"
    )
    anomaly_model: Path | None = Field(
        None, description="model file from `guardstream train`; without one the multivariate detector only counts"
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        description="delete decisions, daily aggregates, published alert history, resolved alerts and dead "
        "letters older than this many days (hourly, by event time); unset keeps everything",
    )
    # Bounded memory (issue 25, part 5): idle users leave memory; caps on what detector state keeps per user and
    # per partition (detectors/engine.py StateLimits; docs/memory.md)
    idle_user_seconds: float = Field(
        86_400.0,
        ge=0,
        description="a user whose latest decision is this many seconds of event time behind their partition's "
        "newest leaves the worker's memory (their state stays in the store and is fetched back with their next "
        "decision's batch); event time, so a replay evicts the same users; 0 keeps every user in memory",
    )
    max_resident_users: int = Field(
        500_000,
        ge=0,
        description="users whose detector state a worker keeps in memory (~6 KB each): beyond it, after a commit, "
        "the longest idle leave memory down to 90% of it, as idle ones do (a flood of new user ids within "
        "idle_user_seconds stays bounded); 0: no cap",
    )
    max_categories_per_user: int = Field(
        _LIMITS.max_categories_per_user,
        ge=1,
        description="distinct categories one user's detector state keeps; a decision's others are folded into one "
        "'__other__' category (its worst score/threshold) for the detectors, and stored as they came",
    )
    max_categories_per_partition: int = Field(
        _LIMITS.max_categories_per_partition,
        ge=1,
        description="distinct categories a partition's detector state keeps (users and baselines); categories "
        "first seen after that are folded into '__other__' for every user of the partition",
    )
    max_tenants_per_partition: int = Field(
        _LIMITS.max_tenants_per_partition,
        ge=1,
        description="tenants with population baselines of their own per partition; later tenants share the "
        "'__other__' baselines (their users, alerts and decisions keep the real tenant)",
    )

    stall_seconds: float = Field(
        300.0,
        gt=0,
        description="liveness: exit with code 71 when messages wait and nothing committed for this long "
        "(an agent that died or a store that hangs must not idle silently; alert GuardstreamNoCommits)",
    )

    # Privacy (issue 25, part 3: pseudonyms that cannot switch off by accident)
    pseudonym_key: SecretStr | None = Field(
        None,
        description="required by run, writer and rebuild: user ids are replaced by HMAC-SHA256(key, user_id) before "
        f"anything is stored or published; at least {MIN_PSEUDONYM_KEY_BYTES} bytes of random text (`openssl rand "
        "-hex 32`), kept stable (a new key starts new pseudonyms)",
    )
    allow_raw_user_ids: bool = Field(
        False,
        description="run, writer and rebuild start without a pseudonym key and store, publish and serve raw user ids "
        "(the `--allow-raw-user-ids` flag); the start-up log, /status (`raw_user_ids`) and the metric "
        "guardstream_privacy_raw_ids show it. Prompt text is dropped either way",
    )

    # Serving (metrics, status and the read-only query endpoint)
    web_host: str = Field(
        "127.0.0.1",
        description="interface for /metrics, /status and /query (loopback); any other needs web_tls_cert and "
        "basic auth or web_tls_client_cafile, or run and writer refuse to start",
    )
    web_port: int = Field(6066, ge=0, le=65535, description="port for /metrics, /status and /query")
    web_username: str | None = Field(
        None, description="with web_password: every path of every endpoint requires HTTP basic auth (401 without)"
    )
    web_password: SecretStr | None = Field(None, description="the basic-auth password for web_username")
    web_tls_cert: Path | None = Field(None, description="PEM certificate: serve the endpoints over HTTPS")
    web_tls_key: Path | None = Field(None, description="PEM private key of web_tls_cert")
    web_tls_cafile: Path | None = Field(
        None, description="CA (or the self-signed certificate) the CLI trusts when it calls a worker over HTTPS"
    )

    # Serving: who may ask (issue 25, endpoint authentication). `run` and `writer` refuse to serve beyond loopback
    # without TLS and credentials (basic auth, or client certificates), and half-set credentials are an error
    # everywhere (see check_web_credentials below and streams/web_security.py).
    web_tls_client_cafile: Path | None = Field(
        None,
        description="mutual TLS: the server (with web_tls_cert) requires every client to present a certificate "
        "signed by this CA (PEM) and refuses the TLS handshake otherwise",
    )
    web_tls_client_cert: Path | None = Field(
        None,
        description="PEM client certificate the CLI and the workers (calling the writer) present to a server that "
        "requires one (web_tls_client_cafile there); it may hold the key too",
    )
    web_tls_client_key: Path | None = Field(None, description="PEM private key of web_tls_client_cert")
    web_max_batch_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="largest request body the writer accepts on /v1/apply (a worker's batch); larger ones get 413. "
        "A 10,000-event batch of simulated traffic measured 6-9 MB and the committer merges queued batches up to "
        "about twice batch_max_events: raise it with batch_max_events",
    )
    web_max_request_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="largest request body on every other path (/query, /verdict, /v1/checkpoint, the worker's "
        "pages); larger ones get 413",
    )

    @field_validator(
        "web_username",
        "web_password",
        "web_tls_cert",
        "web_tls_key",
        "web_tls_cafile",
        "web_tls_client_cafile",
        "web_tls_client_cert",
        "web_tls_client_key",
        mode="before",
    )
    @classmethod
    def empty_is_unset(cls, value: object) -> object:
        """``GUARDSTREAM_WEB_TLS_CERT=`` means no certificate, not the working directory (``Path("")``)."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def check_web_credentials(self) -> Settings:
        """Half-set credentials would silently serve (or call) without them: refuse them wherever settings load."""
        problems = []
        if bool(self.web_username) != bool(self.web_password and self.web_password.get_secret_value()):
            given, missing = (
                ("GUARDSTREAM_WEB_USERNAME", "GUARDSTREAM_WEB_PASSWORD")
                if self.web_username
                else ("GUARDSTREAM_WEB_PASSWORD", "GUARDSTREAM_WEB_USERNAME")
            )
            problems.append(f"{given} is set without {missing}: basic auth needs both (or neither)")
        if self.web_tls_key and not self.web_tls_cert:
            problems.append("GUARDSTREAM_WEB_TLS_KEY is set without GUARDSTREAM_WEB_TLS_CERT")
        if self.web_tls_client_cafile and not self.web_tls_cert:
            problems.append(
                "GUARDSTREAM_WEB_TLS_CLIENT_CAFILE (mutual TLS) needs the server's own GUARDSTREAM_WEB_TLS_CERT "
                "and GUARDSTREAM_WEB_TLS_KEY"
            )
        if self.web_tls_client_key and not self.web_tls_client_cert:
            problems.append("GUARDSTREAM_WEB_TLS_CLIENT_KEY is set without GUARDSTREAM_WEB_TLS_CLIENT_CERT")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # Callers' SQL (guardstream sql / query / investigate / export and /query): see streams/sandbox.py
    query_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="a caller's query is interrupted after this long (by the process that holds the store, or by "
        "the CLI reading the file itself)",
    )
    query_max_rows: int = Field(
        1_000_000,
        ge=1,
        le=100_000_000,
        description="a caller's query returns at most this many rows; a longer result is cut there and says so "
        "(`guardstream sql` warns, `export` refuses to write a partial table)",
    )

    def query_limits(self) -> QueryLimits:
        from streams.sandbox import QueryLimits  # duckdb and pyarrow load with it: not for every command

        return QueryLimits(timeout_seconds=self.query_timeout_seconds, max_rows=self.query_max_rows)

    def state_limits(self) -> StateLimits:
        return StateLimits(
            max_categories_per_user=self.max_categories_per_user,
            max_categories_per_partition=self.max_categories_per_partition,
            max_tenants_per_partition=self.max_tenants_per_partition,
        )

    def web_authorization(self) -> str | None:
        """The ``Authorization`` header value for the worker's endpoints, when basic auth is configured."""
        if not self.web_username or self.web_password is None:
            return None
        token = f"{self.web_username}:{self.web_password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(token).decode()

    def web_scheme(self) -> str:
        return "https" if self.web_tls_cert else "http"

    def web_client_context(self) -> ssl.SSLContext:
        """TLS context for the CLI calling a worker or the writer over HTTPS: trusts web_tls_cafile (else the
        process's own web_tls_cert, else the system's CAs) and presents web_tls_client_cert when set."""
        trust = self.web_tls_cafile or self.web_tls_cert
        context = ssl.create_default_context(cafile=str(trust) if trust else None)
        if trust:
            context.check_hostname = False  # reached by address (<db>.service.json); the certificate is checked
        self.load_client_certificate(context)
        return context

    def load_client_certificate(self, context: ssl.SSLContext) -> None:
        """Mutual TLS: present web_tls_client_cert (and its key) to a server that asks for one."""
        if self.web_tls_client_cert:
            key = str(self.web_tls_client_key) if self.web_tls_client_key else None
            context.load_cert_chain(str(self.web_tls_client_cert), key)

    def pseudonym_key_bytes(self) -> bytes | None:
        """The key as set, unchecked: what readers (``investigate --raw``, ``pseudonym``, ``forget --raw``) map a
        raw id with. Whatever writes the store takes :meth:`checked_pseudonym_key` instead."""
        return self.pseudonym_key.get_secret_value().encode("utf-8") if self.pseudonym_key else None

    def checked_pseudonym_key(self) -> bytes | None:
        """The pseudonym key of a process that writes the store (run, writer, rebuild), or None when it was
        started with ``allow_raw_user_ids``. The one check, made before the store is opened or Kafka reached:
        a missing, empty, short or placeholder key is refused with :class:`PrivacySettingsError` (one line
        saying what to do), so raw ids are only ever stored on purpose."""
        key = None if self.pseudonym_key is None else self.pseudonym_key.get_secret_value().encode("utf-8")
        if self.allow_raw_user_ids:
            if key and key.strip():  # an empty value (a compose file's `${VAR:-}`) counts as unset here
                raise PrivacySettingsError(
                    "--allow-raw-user-ids (GUARDSTREAM_ALLOW_RAW_USER_IDS) and GUARDSTREAM_PSEUDONYM_KEY are both "
                    "set: unset the key to store raw user ids on purpose, or drop the flag to pseudonymize them"
                )
            return None
        problem = pseudonym_key_problem(key)
        if problem is not None:
            raise PrivacySettingsError(
                f"GUARDSTREAM_PSEUDONYM_KEY {problem}: user ids would not be pseudonymized. Set it to a random "
                f"secret of at least {MIN_PSEUDONYM_KEY_BYTES} bytes, e.g. `openssl rand -hex 32` or "
                '`python -c "import secrets; print(secrets.token_urlsafe(32))"`, and keep it (a new key starts new '
                "pseudonyms); or start with --allow-raw-user-ids to store raw ids on purpose"
            )
        return key

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with the CLI flags that were actually given (``None`` means not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return type(self)(**{**self.model_dump(), **given}) if given else self
