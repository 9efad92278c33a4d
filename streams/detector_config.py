"""Detector thresholds as settings: a TOML file (``GUARDSTREAM_DETECTOR_CONFIG``) overrides any field of
:class:`detectors.registry.DetectorConfig`, and ``guardstream detectors`` lists every field with its
default and meaning (read from the field docstrings in ``detectors/``)."""

from __future__ import annotations

import ast
import inspect
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from detectors.registry import DetectorConfig, build_detectors


class DetectorConfigError(ValueError):
    """The detector configuration file cannot be used: one line naming the file and what is wrong."""


def load_detector_config(path: Path | None, band: float | None = None) -> DetectorConfig:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text()) if path is not None else {}
        if band is not None:
            data.setdefault("band", band)
        config = msgspec.convert(data, DetectorConfig, strict=False)
        build_detectors(config)  # every name in ``disabled`` must be a detector's
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DetectorConfigError(f"detector config {path}: {exc}") from exc
    return config


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after an annotated field) of a class."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, following in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def describe() -> list[tuple[str, str, str]]:
    """(setting, default, meaning) for every detector threshold, ``section.field`` as in the TOML file."""
    rows: list[tuple[str, str, str]] = []
    defaults = DetectorConfig()
    top_docs = _field_docs(DetectorConfig)
    for field in msgspec.structs.fields(DetectorConfig):
        value = getattr(defaults, field.name)
        if isinstance(value, msgspec.Struct):
            docs = _field_docs(type(value))
            for sub in msgspec.structs.fields(type(value)):
                rows.append((f"{field.name}.{sub.name}", repr(getattr(value, sub.name)), docs.get(sub.name, "")))
        else:
            rows.append((field.name, repr(value), top_docs.get(field.name, "")))
    return rows
