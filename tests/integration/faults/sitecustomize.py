"""Fault injection for worker subprocesses in the integration tests (put this directory on PYTHONPATH).

GUARDSTREAM_FAULT_HANG_COMMIT=1      every batch commit blocks forever (a hung store)
GUARDSTREAM_FAULT_DETECTOR_USER=ID   the judge detector raises on every event of user ID (a detector bug)
"""

from __future__ import annotations

import os
import time
from typing import Any

if os.environ.get("GUARDSTREAM_FAULT_HANG_COMMIT"):
    from streams.pipeline import Pipeline

    def hang(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(3600)

    Pipeline.commit = hang  # type: ignore[method-assign]

if user := os.environ.get("GUARDSTREAM_FAULT_DETECTOR_USER"):
    from detectors.judge import JudgeDisagreement

    update = JudgeDisagreement.update

    def flaky(self: Any, user_state: Any, population: Any, obs: Any) -> Any:
        if obs.event.user_id == user:
            raise ValueError(f"injected detector bug on {obs.event.event_id}")
        return update(self, user_state, population, obs)

    JudgeDisagreement.update = flaky  # type: ignore[method-assign]
