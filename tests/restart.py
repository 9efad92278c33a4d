"""Restart an engine the way the pipeline does: take what changed, serialize it, load it into a new engine."""

from __future__ import annotations

from detectors.engine import Engine


def restart(engine: Engine, fresh: Engine) -> Engine:
    """Load ``engine``'s state into ``fresh`` (same detectors) through the serialized form the store keeps,
    checking on the way that every user's state round-trips byte for byte."""
    dirty = engine.take_dirty()
    for _p, _t, _u, blob in dirty.users:
        assert fresh.encode_user(fresh.decode_user(blob)) == blob
    populations = dict(dirty.populations)
    for partition, state in engine.partitions.items():
        population, categories = fresh.decode_partition_population(populations[partition])
        assert fresh.encode_population(population, categories) == populations[partition]
        fresh.load_partition(
            partition,
            populations[partition],
            [(t, u, blob) for p, t, u, blob in dirty.users if p == partition],
            [a for p, a in dirty.alerts if p == partition],
            state.watermark_ms,
        )
    return fresh
