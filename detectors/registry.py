"""Every detector guardstream runs, built from one configuration object (defaults documented per field)."""

from __future__ import annotations

import msgspec

from detectors.alerts import AlertPolicy
from detectors.base import Detector
from detectors.boundary import BoundaryHugging, HuggingConfig
from detectors.bypass import BypassConfig, OutputBypass
from detectors.decomposition import DecompositionConfig, MultiTurnDecomposition
from detectors.engine import Engine, StateLimits
from detectors.judge import JudgeConfig, JudgeDisagreement
from detectors.multivariate import AnomalyModel, MultivariateAnomaly
from detectors.probing import ProbingConfig, RetryProbing
from detectors.rates import CategoryRateAnomaly, RateConfig


class DetectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    band: float = 0.2
    """A decision hugs a category when ``0 < threshold - score <= band * threshold`` (all detectors)."""
    hugging: HuggingConfig = msgspec.field(default_factory=HuggingConfig)
    rates: RateConfig = msgspec.field(default_factory=RateConfig)
    probing: ProbingConfig = msgspec.field(default_factory=ProbingConfig)
    bypass: BypassConfig = msgspec.field(default_factory=BypassConfig)
    decomposition: DecompositionConfig = msgspec.field(default_factory=DecompositionConfig)
    judge: JudgeConfig = msgspec.field(default_factory=JudgeConfig)
    alerts: AlertPolicy = msgspec.field(default_factory=AlertPolicy)
    anomaly_model: AnomalyModel | None = None
    """A model from ``guardstream train``; without one the multivariate detector only counts."""
    disabled: tuple[str, ...] = ()
    """Detectors not to run, by name (``disabled = ["judge_disagreement"]``); every other one runs. A disabled
    detector's stored state is dropped as each user's state is next written, so enabled again it starts afresh for
    them. Its open alerts resolve after the quiet period."""


def build_detectors(cfg: DetectorConfig) -> list[Detector]:
    """Every detector the configuration enables, in the order the engine runs them."""
    hugging = msgspec.structs.replace(cfg.hugging, band=cfg.band)
    detectors: list[Detector] = [
        BoundaryHugging(hugging),
        CategoryRateAnomaly(cfg.rates),
        RetryProbing(msgspec.structs.replace(cfg.probing, band=cfg.band)),
        OutputBypass(cfg.bypass),
        MultiTurnDecomposition(cfg.decomposition),
        JudgeDisagreement(cfg.judge),
        MultivariateAnomaly(cfg.anomaly_model, band=cfg.band),
    ]
    unknown = sorted(set(cfg.disabled) - {d.name for d in detectors})
    if unknown:
        raise ValueError(
            f"disabled names unknown detector(s) {', '.join(unknown)}; "
            f"the detectors are {', '.join(d.name for d in detectors)}"
        )
    return [d for d in detectors if d.name not in cfg.disabled]


def build_engine(cfg: DetectorConfig | None = None, limits: StateLimits | None = None) -> Engine:
    cfg = cfg or DetectorConfig()
    return Engine(build_detectors(cfg), band=cfg.band, alert_policy=cfg.alerts, limits=limits)


DETECTOR_NAMES: tuple[str, ...] = tuple(name for d in build_detectors(DetectorConfig()) for name in d.emits)
