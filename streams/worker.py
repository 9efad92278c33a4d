"""Start one pipeline worker: open the store, make sure the topics exist, run the Faust app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import faust
import msgspec

from detectors.registry import DetectorConfig, build_engine
from streams.app import Service, create_app
from streams.broker import ensure_topics, free_port, pid_alive
from streams.detector_config import load_detector_config
from streams.metrics import Metrics
from streams.pipeline import DAY_MS, Pipeline, Sink
from streams.settings import Settings
from streams.store import Store, open_store
from streams.web_security import check_serving

log = logging.getLogger("guardstream.worker")


def service_file(db: Path) -> Path:
    """Where a running pipeline announces its loopback URL, so readers find it while it holds the DB."""
    return db.with_name(db.name + ".service.json")


def running_service(db: Path) -> dict[str, Any] | None:
    path = service_file(db)
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if pid_alive(int(info.get("pid", 0))) else None


def warn_if_raw_user_ids(settings: Settings) -> bool:
    """Check the pseudonym key (:meth:`Settings.checked_pseudonym_key` raises when it is missing or weak) and say
    loudly when the process runs without one on purpose (``--allow-raw-user-ids``). Returns whether it does."""
    if settings.checked_pseudonym_key() is not None:
        return False
    log.warning(
        "--allow-raw-user-ids: no pseudonym key, so user ids are stored, published and served RAW "
        "(/status raw_user_ids and guardstream_privacy_raw_ids say so); set GUARDSTREAM_PSEUDONYM_KEY to stop it"
    )
    return True


def detector_config(settings: Settings) -> DetectorConfig:
    """The settings' detector config (its file, the hugging band); one that cannot be used raises
    :class:`streams.detector_config.DetectorConfigError`, which callers check before they open a store."""
    return load_detector_config(settings.detector_config, band=settings.hugging_band)


def build_pipeline(settings: Settings, store: Sink, config: DetectorConfig | None = None) -> Pipeline:
    """The pipeline every path uses (worker, rebuild): detector config (``config``, already loaded from the
    settings, or loaded here), anomaly model, pseudonym key."""
    model = None
    if settings.anomaly_model is not None:
        from streams.train import load

        model = load(settings.anomaly_model)
        log.warning("multivariate anomaly model %s loaded from %s", model.version, settings.anomaly_model)
    config = config or detector_config(settings)
    if config.disabled:
        log.warning("detectors disabled by %s: %s", settings.detector_config, ", ".join(config.disabled))
    engine = build_engine(msgspec.structs.replace(config, anomaly_model=model), settings.state_limits())
    return Pipeline(
        store,
        engine,
        topic=settings.decisions_topic,
        pseudonym_key=settings.checked_pseudonym_key(),
        max_future_ms=int(settings.max_future_seconds * 1000),
        max_past_ms=int(settings.max_past_days * DAY_MS),
        idle_user_ms=int(settings.idle_user_seconds * 1000) or None,
        max_resident_users=settings.max_resident_users or None,
    )


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM)."""
    # These stop the worker before the store or Kafka: a missing pseudonym key (PrivacySettingsError), a detector
    # config that cannot be used, and serving beyond loopback without TLS and credentials (ServingRefused).
    warn_if_raw_user_ids(settings)
    config = detector_config(settings)
    check_serving(settings)
    if settings.web_port == 0:
        settings = settings.with_overrides(web_port=free_port(settings.web_host))
    store: Store | None = None
    sink: Sink
    if settings.writer_url:
        from streams.writer import remote_sink

        sink = remote_sink(settings)
        log.warning("committing to the writer at %s", settings.writer_url)
    else:
        sink = store = open_store(settings)
    asyncio.run(ensure_topics(settings))
    pipeline = build_pipeline(settings, sink, config)
    service = Service(settings, store, pipeline, Metrics())
    datadir = tempfile.TemporaryDirectory(prefix="guardstream-faust-")
    app = create_app(settings, service, datadir.name)
    service.heap.take_over()
    announce = service_file(settings.db) if store is not None else None
    if announce is not None:
        url = f"{settings.web_scheme()}://{settings.web_host}:{settings.web_port}"
        announce.write_text(json.dumps({"pid": os.getpid(), "url": url, "db": str(settings.db.resolve())}))
    try:
        worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        worker.execute_from_commandline()
    finally:
        if announce is not None:
            with contextlib.suppress(OSError):
                announce.unlink()
        sink.close()
        datadir.cleanup()
