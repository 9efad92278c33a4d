"""Producing simulated traffic (and deliberately broken events) to the decisions topic."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.broker import producer
from streams.settings import Settings


def simulated_past_days(start: datetime, now: datetime | None = None) -> int:
    """Days back a worker must accept events (``GUARDSTREAM_MAX_PAST_DAYS``) to take simulated traffic produced
    now. The simulator dates its events from a fixed ``start`` (a seed always gives the same traffic), so as the
    calendar moves on they fall behind any fixed horizon; the demo and the bench give their workers this one."""
    age = ((now or datetime.now(UTC)) - start).total_seconds() / 86_400
    return max(365, math.ceil(age) + 2)


def bad_events(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """Deterministic invalid messages of every rejection kind, as (key, value) pairs."""
    rng = random.Random(seed)
    valid: dict[str, Any] = {
        "event_id": "bad",
        "ts": "2026-11-01T00:00:00Z",
        "user_id": "u-bad",
        "stage": "input",
        "guardrail": {"name": "llama-guard-3", "version": "8b"},
        "scores": {"S1": 0.1},
        "thresholds": {"S1": 0.5},
        "decision": "allow",
    }
    makers: list[Callable[[dict[str, Any]], bytes]] = [
        lambda e: b"{not json",
        lambda e: orjson.dumps({k: v for k, v in e.items() if k != "user_id"}),
        lambda e: orjson.dumps({**e, "scores": {"S1": 1.7}}),
        lambda e: orjson.dumps({**e, "ts": "2026-11-01T00:00:00"}),
        lambda e: orjson.dumps({**e, "stage": "somewhere"}),
        lambda e: orjson.dumps({**e, "turn": "three"}),
        lambda e: orjson.dumps({**e, "schema": "guardrail.decision/v9"}),
        lambda e: b'{"event_id": "\xff\xfe"}',
    ]
    out = []
    for i in range(count):
        event = {**valid, "event_id": f"bad-{seed}-{i}"}
        out.append((b"u-bad", makers[rng.randrange(len(makers))](event)))
    return out


async def produce(
    settings: Settings,
    events: Sequence[dict[str, Any]],
    extra: Sequence[tuple[bytes, bytes]] = (),
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
) -> dict[int, int]:
    """Send events keyed by user_id (plus ``extra`` raw messages spread among them).

    Returns, per partition, the offset after the last message sent: what a consumer has to reach to
    have seen everything (taken from the broker's acknowledgements, not from ListOffsets)."""
    rng = random.Random(seed)
    positions = sorted(rng.randrange(len(events) + 1) for _ in extra)
    topic = settings.decisions_topic
    pending: list[asyncio.Future[Any]] = []
    next_offsets: dict[int, int] = {}

    def settle() -> None:
        for future in pending:
            metadata = future.result()
            next_offsets[metadata.partition] = max(next_offsets.get(metadata.partition, 0), metadata.offset + 1)
        if progress is not None:
            progress(len(pending))
        pending.clear()

    async with producer(settings) as prod:
        extra_iter = iter(zip(positions, extra, strict=True))
        next_extra = next(extra_iter, None)
        for index, event in enumerate(events):
            while next_extra is not None and next_extra[0] <= index:
                pending.append(await prod.send(topic, key=next_extra[1][0], value=next_extra[1][1]))
                next_extra = next(extra_iter, None)
            pending.append(await prod.send(topic, key=event["user_id"].encode(), value=orjson.dumps(event)))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                settle()
        while next_extra is not None:
            pending.append(await prod.send(topic, key=next_extra[1][0], value=next_extra[1][1]))
            next_extra = next(extra_iter, None)
        await prod.flush()
        await asyncio.gather(*pending)
        settle()
    return next_offsets
