"""``guardstream eval``: the simulator's labelled scenarios through the same detector code as the stream.

No broker: events are decoded with the stream's decoder, deduplicated by ``event_id``, assigned to the
partition Kafka's default partitioner would give their key (murmur2), and fed to the same
:class:`detectors.engine.Engine` in the same per-partition order. Because detector state is per
partition and alert resolution does not depend on batch boundaries, the alerts equal the streaming
pipeline's for the same events (an integration test checks this).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import orjson
from aiokafka.partitioner import murmur2
from rich.console import Console
from rich.table import Table

from detectors.alerts import AlertChange
from detectors.engine import Engine
from detectors.events import Decision, decode
from detectors.multivariate import AnomalyModel, MultivariateAnomaly
from detectors.registry import DETECTOR_NAMES, DetectorConfig, build_engine
from streams.simulator import Label, SimConfig, simulate
from streams.train import fit

# Which detectors are meant to catch which planted attacker kind.
FAMILIES: dict[str, frozenset[str]] = {
    "boundary_hugger": frozenset({"boundary_hugging", "boundary_hugging_slow_burn"}),
    "slow_burn_hugger": frozenset({"boundary_hugging", "boundary_hugging_slow_burn"}),
    "rephrase_prober": frozenset({"retry_probing"}),
    "output_bypass": frozenset({"output_bypass"}),
    "decomposer": frozenset({"multi_turn_decomposition"}),
    "judge_evader": frozenset({"judge_disagreement"}),
    "category_flooder": frozenset({"category_rate"}),
}


def _has_family(detector: str) -> bool:
    return any(detector in detectors for detectors in FAMILIES.values())


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, aiokafka) gives a keyed record."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def run_engine(
    engine: Engine,
    events: Iterable[dict[str, Any] | bytes],
    *,
    partitions: int = 4,
    pseudonym_key: bytes | None = None,
) -> list[AlertChange]:
    """Every alert change the engine produces for these events, as the stream would produce them."""
    changes: list[AlertChange] = []
    seen: set[str] = set()
    for item in events:
        raw = item if isinstance(item, bytes) else orjson.dumps(item)
        event = decode(raw, pseudonym_key=pseudonym_key)
        if not isinstance(event, Decision) or event.event_id in seen:
            continue
        seen.add(event.event_id)
        raw_user = orjson.loads(raw)["user_id"] if pseudonym_key else event.user_id
        partition = kafka_partition(raw_user.encode(), partitions)
        changes.extend(engine.process(partition, engine.observe(event, int(event.ts.timestamp() * 1000))))
    changes.extend(engine.sweep())
    return changes


@dataclass
class KindResult:
    kind: str
    users: int = 0
    caught: int = 0  # by the detectors meant for this kind
    caught_any: int = 0  # by any detector
    hours: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "users": self.users,
            "recall": self.caught / self.users if self.users else None,
            "recall_any_detector": self.caught_any / self.users if self.users else None,
            "median_hours_to_detect": statistics.median(self.hours) if self.hours else None,
            "p90_hours_to_detect": _quantile(self.hours, 0.9),
        }


@dataclass
class ScenarioResult:
    scenario: str
    events: int
    users: int
    benign_users: int
    benign_flagged: int
    seconds: float
    kinds: list[KindResult]
    detectors: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "events": self.events,
            "users": self.users,
            "benign_users": self.benign_users,
            "benign_flagged": self.benign_flagged,
            "benign_flagged_rate": self.benign_flagged / self.benign_users if self.benign_users else 0.0,
            "seconds": round(self.seconds, 2),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
            "kinds": [k.as_dict() for k in self.kinds],
            "detectors": self.detectors,
            "notes": self.notes,
        }


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Opened(NamedTuple):
    """An alert opening, as scoring needs it (from the engine, or read back from the store)."""

    tenant: str
    user_id: str
    detector: str
    ts_ms: int


def openings(changes: Iterable[AlertChange]) -> list[Opened]:
    return [
        Opened(c.alert.tenant, c.alert.user_id, c.alert.detector, c.ts_ms)
        for c in changes
        if c.change in ("opened", "reopened")
    ]


def score(
    labels_list: Sequence[Label], opened: Iterable[Opened], scenario: str, events: int, seconds: float
) -> ScenarioResult:
    """Per attack family: recall by its own detectors and by any, time to detect; per detector: precision."""
    labels = {(label.tenant, label.user_id): label for label in labels_list}
    first: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)  # user -> detector -> first opened ts
    for o in opened:
        detectors = first[(o.tenant, o.user_id)]
        if o.detector not in detectors or o.ts_ms < detectors[o.detector]:
            detectors[o.detector] = o.ts_ms
    kinds: dict[str, KindResult] = {}
    benign_users = benign_flagged = 0
    for key, label in labels.items():
        flagged = first.get(key, {})
        if label.kind.startswith("benign"):
            benign_users += 1
            benign_flagged += bool(flagged)
            continue
        row = kinds.setdefault(label.kind, KindResult(label.kind))
        row.users += 1
        row.caught_any += bool(flagged)
        meant = [ts for det, ts in flagged.items() if det in FAMILIES.get(label.kind, frozenset())]
        if meant:
            row.caught += 1
            if label.first_attack_ts is not None:
                row.hours.append(max(0.0, (min(meant) / 1000 - label.first_attack_ts.timestamp()) / 3600))
    per_detector: dict[str, dict[str, Any]] = {}
    for detector in DETECTOR_NAMES:
        users = [key for key, dets in first.items() if detector in dets]
        attackers = [k for k in users if k in labels and not labels[k].kind.startswith("benign")]
        intended = [k for k in attackers if detector in FAMILIES.get(labels[k].kind, frozenset())]
        per_detector[detector] = {
            "flagged_users": len(users),
            "precision": len(attackers) / len(users) if users else None,
            "family_precision": len(intended) / len(users) if users and _has_family(detector) else None,
            "benign_flagged": len(users) - len(attackers),
        }
    order = list(FAMILIES)
    return ScenarioResult(
        scenario=scenario,
        events=events,
        users=len(labels),
        benign_users=benign_users,
        benign_flagged=benign_flagged,
        seconds=seconds,
        kinds=sorted(kinds.values(), key=lambda k: order.index(k.kind) if k.kind in order else len(order)),
        detectors=per_detector,
    )


def train_model(sim_config: SimConfig, partitions: int = 4, band: float = 0.2, **fit_options: Any) -> AnomalyModel:
    """Fit the multivariate model on a separate simulation (same scenario, another seed): the counters come
    from the detector's own state, which a test checks equal the SQL that ``guardstream train`` runs."""
    training = simulate(dataclasses.replace(sim_config, seed=sim_config.seed + 1000))
    counting = Engine([MultivariateAnomaly(None, band=band)], band=band)
    run_engine(counting, training.events, partitions=partitions)
    counters = [
        user[MultivariateAnomaly.name].counters
        for state in counting.partitions.values()
        for user in state.users.values()
    ]
    return fit(counters, **fit_options)


def evaluate(
    scenarios: dict[str, SimConfig],
    config: DetectorConfig | None = None,
    partitions: int = 4,
    progress: Any = None,
    anomaly: bool = True,
) -> list[ScenarioResult]:
    results = []
    config = config or DetectorConfig()
    for name, sim_config in scenarios.items():
        sim = simulate(sim_config)
        notes = []
        if config.disabled:
            notes.append(f"not run (the detector config's disabled): {', '.join(config.disabled)}")
        scenario_config = config
        if anomaly and config.anomaly_model is None and MultivariateAnomaly.name not in config.disabled:
            try:
                model = train_model(sim_config, partitions, band=config.band)
                scenario_config = msgspec.structs.replace(config, anomaly_model=model)
            except ValueError as exc:
                notes.append(f"multivariate_anomaly not trained, so it only counted: {exc}")
        engine = build_engine(scenario_config)
        started = time.perf_counter()
        changes = run_engine(engine, sim.events, partitions=partitions)
        result = score(sim.labels, openings(changes), name, len(sim.events), time.perf_counter() - started)
        result.notes = notes
        results.append(result)
        if progress is not None:
            progress(name)
    return results


def _fmt(value: float | None, pct: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if pct else f"{value:.1f}"


def print_results(results: list[ScenarioResult], console: Console, title: str | None = None) -> None:
    for r in results:
        table = Table(
            title=title
            or f"scenario {r.scenario}: {r.events:,} events, {r.users:,} users "
            f"({r.events / r.seconds:,.0f} events/s through the detectors)"
        )
        for col in ("attack family", "planted", "recall", "recall (any detector)", "median TTD", "p90 TTD"):
            table.add_column(col, justify="left" if col == "attack family" else "right")
        for k in r.kinds:
            d = k.as_dict()
            table.add_row(
                k.kind,
                str(k.users),
                _fmt(d["recall"]),
                _fmt(d["recall_any_detector"]),
                "-" if d["median_hours_to_detect"] is None else f"{d['median_hours_to_detect']:.1f} h",
                "-" if d["p90_hours_to_detect"] is None else f"{d['p90_hours_to_detect']:.1f} h",
            )
        table.add_row(
            "benign users flagged",
            str(r.benign_users),
            f"{r.benign_flagged} ({r.benign_flagged / r.benign_users:.2%})" if r.benign_users else "-",
            "",
            "",
            "",
        )
        console.print(table)
        det = Table(title=f"scenario {r.scenario}: per detector")
        for col in ("detector", "flagged users", "precision (any attacker)", "precision (its family)", "benign"):
            det.add_column(col, justify="left" if col == "detector" else "right")
        for name, d in r.detectors.items():
            det.add_row(
                name,
                str(d["flagged_users"]),
                _fmt(d["precision"]),
                _fmt(d["family_precision"]),
                str(d["benign_flagged"]),
            )
        console.print(det)
        for note in r.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
