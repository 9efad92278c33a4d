"""The ``score_layouts`` key of every decision in a batch, worked out once per layout (``Layouts.keys_of``), is the
key each decision's own categories and thresholds give (``Layouts.keys``), whether or not its layout was interned."""

from __future__ import annotations

import orjson

from detectors.base import Layout, Observation, observe
from detectors.events import Decision, decode
from streams.pipeline import Layouts


def event(i: int, thresholds: dict[str, float]) -> Decision:
    decoded = decode(
        orjson.dumps(
            {
                "event_id": f"e{i}",
                "ts": "2026-11-01T00:00:00Z",
                "user_id": f"u{i % 3}",
                "stage": "input",
                "guardrail": {"name": "g", "version": "1"},
                "scores": dict.fromkeys(thresholds, 0.1),
                "thresholds": thresholds,
                "decision": "allow",
            }
        )
    )
    assert isinstance(decoded, Decision)
    return decoded


def test_a_batch_gets_each_decisions_own_layout_key() -> None:
    shapes = [{"S1": 0.5, "S2": 0.5}, {"S1": 0.4, "S2": 0.5}, {"S3": 0.5}]
    events = [event(i, shapes[i % 3]) for i in range(30)]
    observations = []
    for i, e in enumerate(events):
        if i % 7 == 3:  # not interned: a producer with more layouts than the process keeps
            observations.append(Observation(e, 0, None, 0.2, layout=Layout(-1, tuple(e.scores), (), None)))
        elif i % 7 == 5:  # built by hand, no layout at all
            observations.append(Observation(e, 0, None, 0.2))
        else:
            observations.append(observe(e, 0, 0.2))
    expected_keys, expected_used = Layouts().keys([e.scores for e in events], [e.thresholds for e in events])
    layouts = Layouts()
    for _ in range(2):  # the second batch finds every interned layout remembered
        keys, used = layouts.keys_of(observations)
        assert keys == expected_keys
        assert used == expected_used
    interned = [o for o in observations if o.layout is not None and o.layout.index >= 0]
    keys, used = layouts.keys_of(interned)  # no decision without a layout: the one-lookup path
    assert (
        len(used) == 3
        and keys == Layouts().keys([o.event.scores for o in interned], [o.event.thresholds for o in interned])[0]
    )
