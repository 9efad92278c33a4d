"""The one settings object. Every field reads ``GUARDSTREAM_<NAME>`` from the environment (or a ``.env``
file); CLI flags override. ``guardstream settings`` prints them all with their current values."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
        description="reject (future_timestamp) an event whose ts is this far past its Kafka record timestamp: "
        "event time drives each partition's watermark, and one event dated 9999 would resolve every alert",
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
    web_host: str = Field("127.0.0.1", description="interface for /metrics, /status and /query (loopback)")
    web_port: int = Field(6066, ge=0, le=65535, description="port for /metrics, /status and /query")
    web_username: str | None = Field(
        None, description="if set (with web_password), every endpoint requires HTTP basic auth with it"
    )
    web_password: SecretStr | None = Field(None, description="the basic-auth password for web_username")
    web_tls_cert: Path | None = Field(None, description="PEM certificate: serve the endpoints over HTTPS")
    web_tls_key: Path | None = Field(None, description="PEM private key of web_tls_cert")
    web_tls_cafile: Path | None = Field(
        None, description="CA (or the self-signed certificate) the CLI trusts when it calls a worker over HTTPS"
    )

    def web_authorization(self) -> str | None:
        """The ``Authorization`` header value for the worker's endpoints, when basic auth is configured."""
        if not self.web_username or self.web_password is None:
            return None
        token = f"{self.web_username}:{self.web_password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(token).decode()

    def web_scheme(self) -> str:
        return "https" if self.web_tls_cert else "http"

    def web_client_context(self) -> ssl.SSLContext | None:
        """TLS context for the CLI calling a worker over HTTPS (loopback: the name is not the certificate's)."""
        if not self.web_tls_cert:
            return None
        context = ssl.create_default_context(cafile=str(self.web_tls_cafile or self.web_tls_cert))
        context.check_hostname = False  # the worker is reached by address; the certificate itself is checked
        return context

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
