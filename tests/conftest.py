from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings

# The simulator dates its events from 2026-11-01, and workers dead-letter events dated more than a day past
# their Kafka record time (future_timestamp). Tests must not depend on the test machine's clock, so every
# worker they start tolerates any skew; the rejection itself is tested with explicit record timestamps.
os.environ.setdefault("GUARDSTREAM_MAX_FUTURE_SECONDS", str(100 * 365 * 86_400))
# Likewise the past horizon (stale_timestamp): simulated events age as the calendar moves on.
os.environ.setdefault("GUARDSTREAM_MAX_PAST_DAYS", str(100 * 365))
# run, writer and rebuild refuse to start without a pseudonym key (or --allow-raw-user-ids): every process a test
# starts gets this one, and the tests that look users up by raw id pseudonymize them with it (TEST_PSEUDONYM_KEY).
os.environ.setdefault("GUARDSTREAM_PSEUDONYM_KEY", "tests-only-7Qm2vX9kLp4RtY8wZs3Nd6Hf1Jb5Gc0A")
TEST_PSEUDONYM_KEY = os.environ["GUARDSTREAM_PSEUDONYM_KEY"].encode()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One real tansu broker for the session; each test uses its own uuid-named topics."""
    with EmbeddedBroker() as embedded:
        yield embedded


@pytest.fixture
def topics() -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {
        "decisions_topic": f"decisions-{run}",
        "alerts_topic": f"alerts-{run}",
        "dlq_topic": f"dlq-{run}",
        "consumer_group": f"guardstream-{run}",
    }


@pytest.fixture
def settings(broker: EmbeddedBroker, topics: dict[str, str], tmp_path: Path) -> Settings:
    return Settings(bootstrap=broker.bootstrap, db=tmp_path / "store.duckdb", **topics)  # type: ignore[arg-type]


def promtool() -> str | None:
    return shutil.which("promtool")
