"""Provisioning the generated dashboards into Grafana with ``grafana-client``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DashboardPushError(RuntimeError):
    pass


def generated_dir() -> Path:
    """The committed dashboard JSON: the repository's ``dashboards/generated`` or the wheel's copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "dashboards" / "generated", here / "_dashboards"):
        if candidate.is_dir():
            return candidate
    raise DashboardPushError("the generated dashboards are missing from this installation (dashboards/generated)")


def load_dashboards() -> list[dict[str, Any]]:
    files = sorted(generated_dir().glob("*.json"))
    if not files:
        raise DashboardPushError(f"no dashboards in {generated_dir()}: run `make dashboards`")
    return [json.loads(path.read_text()) for path in files]


def push_dashboards(url: str, token: str, *, folder_uid: str | None = None) -> list[tuple[str, int]]:
    """Create or overwrite every dashboard by uid; returns (uid, version) per dashboard."""
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaException

    api = GrafanaApi.from_url(url=url, credential=token, timeout=30.0)
    pushed = []
    for dashboard in load_dashboards():
        payload: dict[str, Any] = {
            "dashboard": {**dashboard, "id": None},
            "overwrite": True,
            "message": "provisioned by guardstream dashboards push",
        }
        if folder_uid is not None:
            payload["folderUid"] = folder_uid
        try:
            answer = api.dashboard.update_dashboard(payload)
        except GrafanaException as exc:
            raise DashboardPushError(f"Grafana refused {dashboard.get('uid')}: {exc}") from exc
        except Exception as exc:  # connection errors come from niquests/urllib3 under various names
            raise DashboardPushError(f"cannot reach Grafana at {url}: {exc}") from exc
        pushed.append((str(answer.get("uid", dashboard.get("uid"))), int(answer.get("version", 0))))
    return pushed
