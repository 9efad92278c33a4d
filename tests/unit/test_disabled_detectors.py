"""``disabled`` in the detector config: the other detectors answer exactly as with every detector on, a state
blob written with every detector loads without the disabled ones, and a wrong name or file is one clear error."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detectors.events import Decision, decode
from detectors.registry import DetectorConfig, build_detectors, build_engine
from streams.detector_config import DetectorConfigError, load_detector_config
from streams.evaluate import kafka_partition
from streams.simulator import SimConfig, simulate

OFF = ("boundary_hugging", "judge_disagreement")


def changes(config: DetectorConfig, events: list[Decision]) -> list[tuple[str, str, str, int, str, float]]:
    engine = build_engine(config)
    out = []
    for e in events:
        out += engine.process(kafka_partition(e.user_id.encode(), 2), engine.observe(e, int(e.ts.timestamp() * 1000)))
    out += engine.sweep()
    return [(c.alert.detector, c.alert.alert_id, c.change, c.ts_ms, c.alert.severity, c.alert.score) for c in out]


@pytest.fixture(scope="module")
def stream() -> list[Decision]:
    out = []
    for raw in simulate(SimConfig(users=150, days=3, seed=21)).events:
        event = decode(orjson.dumps(raw))
        assert isinstance(event, Decision)
        out.append(event)
    return out


def test_the_detectors_left_on_answer_as_with_every_detector_on(stream: list[Decision]) -> None:
    every = changes(DetectorConfig(), stream)
    some = changes(DetectorConfig(disabled=OFF), stream)
    off = {name for d in build_detectors(DetectorConfig()) if d.name in OFF for name in d.emits}
    assert {c[0] for c in every} & off, "the stream must raise alerts of the disabled detectors to test anything"
    assert some == [c for c in every if c[0] not in off]
    assert [d.name for d in build_detectors(DetectorConfig(disabled=OFF))] == [
        d.name for d in build_detectors(DetectorConfig()) if d.name not in OFF
    ]


def test_state_written_with_every_detector_loads_without_the_disabled_ones(stream: list[Decision]) -> None:
    every = build_engine()
    for e in stream[:3000]:
        every.process(0, every.observe(e, int(e.ts.timestamp() * 1000)))
    dirty = every.take_dirty()
    some = build_engine(DetectorConfig(disabled=OFF))
    for _partition, _tenant, _user, blob in dirty.users:
        state = some.decode_user(blob)
        full = every.decode_user(blob)
        assert set(state) == set(full) - set(OFF)
        assert all(state[name] == full[name] for name in state), "the enabled detectors' state is kept"
        assert some.decode_user(some.encode_user(state)) == state
    for _partition, blob in dirty.populations:
        population = some.decode_population(blob)
        assert population and all(not set(per) & set(OFF) for per in population.values())


def test_no_detector_at_all_still_runs(stream: list[Decision]) -> None:
    every_name = tuple(d.name for d in build_detectors(DetectorConfig()))
    assert changes(DetectorConfig(disabled=every_name), stream) == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('disabled = ["judge"]\n', "unknown detector(s) judge; the detectors are boundary_hugging"),
        ('disabled = "judge_disagreement"\n', "Expected `array`"),
        ("[hugging\n", "table declaration"),
        (None, "No such file"),
    ],
)
def test_a_config_that_cannot_be_used_is_one_error_naming_the_file(tmp_path: Path, text: str | None, says: str) -> None:
    path = tmp_path / "detectors.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DetectorConfigError) as raised:
        load_detector_config(path)
    assert str(raised.value).startswith(f"detector config {path}: ")
    assert says in str(raised.value)


def test_a_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "detectors.toml"
    path.write_text('disabled = ["judge_disagreement"]\n[hugging]\nindex_level = 6.0\n')
    config = load_detector_config(path, band=0.25)
    assert config.disabled == ("judge_disagreement",)
    assert config.band == 0.25
    assert config.hugging.index_level == 6.0


def test_rebuild_refuses_a_config_that_cannot_be_used_before_it_creates_the_store(tmp_path: Path) -> None:
    import asyncio

    from streams.rebuild import RebuildError, rebuild
    from streams.settings import Settings

    config = tmp_path / "detectors.toml"
    config.write_text('disabled = ["judge"]\n')
    settings = Settings().with_overrides(db=tmp_path / "new.duckdb", detector_config=config)
    with pytest.raises(RebuildError, match="unknown detector"):
        asyncio.run(rebuild(settings))
    assert not settings.db.exists()
