"""The versioned NIST mapping (``streams/nist_mapping.toml``): labels for every safety metric."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

UNMAPPED = "unmapped"
MAPPING_PATH = Path(__file__).with_name("nist_mapping.toml")


@dataclass(frozen=True, slots=True)
class NistMapping:
    version: str
    risks: dict[str, str]
    categories: dict[str, str]
    signals: dict[str, list[str]]
    signal_risks: dict[str, str]

    def risk(self, category: str | None) -> str:
        """AI 600-1 risk id of a category; ``unmapped`` for a category the file does not know."""
        return self.categories.get(category, UNMAPPED) if category is not None else UNMAPPED

    def measure(self, signal: str) -> str:
        """The primary MEASURE subcategory of a signal, as a label value."""
        measures = self.signals.get(signal)
        return measures[0] if measures else UNMAPPED

    def signal_risk(self, signal: str, category: str | None) -> str:
        return self.signal_risks.get(signal) or self.risk(category)


@cache
def load_mapping(path: Path = MAPPING_PATH) -> NistMapping:
    data = tomllib.loads(path.read_text())
    mapping = NistMapping(
        version=str(data["version"]),
        risks=dict(data["risks"]),
        categories=dict(data["categories"]),
        signals={k: list(v) for k, v in data["signals"].items()},
        signal_risks=dict(data.get("signal_risks", {})),
    )
    unknown = {r for r in [*mapping.categories.values(), *mapping.signal_risks.values()] if r not in mapping.risks}
    if unknown:
        raise ValueError(f"{path}: risk ids not declared under [risks]: {sorted(unknown)}")
    return mapping
