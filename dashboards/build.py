"""guardstream's Grafana dashboards as code.

Small panel factories build four dashboards with fixed uids; ``python -m dashboards.build`` writes them to
``dashboards/generated/<uid>.json`` (committed), and ``--check`` fails when the committed JSON differs from what
this module generates. Metric names come from streams/metrics.py and the recording rules from
deploy/prometheus/rules.yml; queries only group by bounded labels, never a user, session or event id.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]

GENERATED = Path(__file__).resolve().parent / "generated"
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
SCHEMA_VERSION = 39
BURN_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# The multiwindow burn-rate factors the GuardstreamAbuseBudgetBurn alerts use (deploy/prometheus/rules.yml).
BURN_THRESHOLDS = (1, 3, 6, 14.4)


# --- template variables ------------------------------------------------------------------------------------


def datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def label_variable(name: str, label: str, metric: str) -> Json:
    """A multi-select variable over one bounded label; "All" matches with ``.*`` so ``=~"$name"`` works."""
    query = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "hide": 0,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "skipUrlSync": False,
        "options": [],
    }


CATEGORY = label_variable("category", "Category", "guardstream_safety_category_decisions_total")
STAGE = label_variable("stage", "Stage", "guardstream_pipeline_decisions_total")
DETECTOR = label_variable("detector", "Detector", "guardstream_detector_alerts_total")
NIST_MEASURE = label_variable("nist_measure", "NIST MEASURE", "guardstream_safety_category_decisions_total")
AI600_RISK = label_variable("ai600_risk", "AI 600-1 risk", "guardstream_safety_category_decisions_total")


# --- panel factories ---------------------------------------------------------------------------------------


def target(expr: str, legend: str = "__auto", *, instant: bool = False) -> Json:
    """One query; refIds are assigned by the panel (A, B, ...)."""
    return {"expr": expr, "legendFormat": legend, "instant": instant, "range": not instant}


def _panel(kind: str, title: str, targets: list[Json], width: int, height: int, description: str) -> Json:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [{**t, "datasource": DATASOURCE, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)],
        "gridPos": {"w": width, "h": height},
    }


def _thresholds(steps: tuple[float, ...]) -> Json:
    colors = ("green", "yellow", "orange", "red", "dark-red")
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}]
        + [{"color": colors[min(i + 1, len(colors) - 1)], "value": v} for i, v in enumerate(steps)],
    }


def timeseries(
    title: str,
    targets: list[Json],
    *,
    unit: str = "short",
    description: str = "",
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    thresholds: tuple[float, ...] = (),
) -> Json:
    panel = _panel("timeseries", title, targets, width, height, description)
    custom: Json = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"group": "A", "mode": "normal"}
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "dashed"}
    panel["fieldConfig"] = {
        "defaults": {"unit": unit, "custom": custom, "thresholds": _thresholds(thresholds)},
        "overrides": [],
    }
    panel["options"] = {
        "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["lastNotNull"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel


def stat(
    title: str,
    targets: list[Json],
    *,
    unit: str = "short",
    description: str = "",
    width: int = 6,
    height: int = 4,
    thresholds: tuple[float, ...] = (),
) -> Json:
    panel = _panel("stat", title, targets, width, height, description)
    panel["fieldConfig"] = {"defaults": {"unit": unit, "thresholds": _thresholds(thresholds)}, "overrides": []}
    panel["options"] = {
        "colorMode": "value",
        "graphMode": "area",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    }
    return panel


def bargauge(
    title: str,
    targets: list[Json],
    *,
    unit: str = "short",
    description: str = "",
    width: int = 12,
    height: int = 8,
    thresholds: tuple[float, ...] = (),
) -> Json:
    panel = _panel("bargauge", title, targets, width, height, description)
    panel["fieldConfig"] = {"defaults": {"unit": unit, "thresholds": _thresholds(thresholds)}, "overrides": []}
    panel["options"] = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
    }
    return panel


def table(title: str, targets: list[Json], *, description: str = "", width: int = 12, height: int = 8) -> Json:
    panel = _panel("table", title, [{**t, "format": "table"} for t in targets], width, height, description)
    panel["fieldConfig"] = {"defaults": {}, "overrides": []}
    panel["options"] = {"showHeader": True}
    panel["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return panel


def row(title: str, *, repeat: str | None = None) -> Json:
    panel: Json = {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}
    if repeat is not None:
        panel["repeat"] = repeat
    return panel


def dashboard(uid: str, title: str, description: str, variables: list[Json], panels: list[Json]) -> Json:
    """Assigns ids (1, 2, ... in order) and lays panels out left to right, wrapping at the grid's width."""
    x = y = row_height = 0
    laid_out: list[Json] = []
    for panel_id, panel in enumerate(panels, start=1):
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + w > GRID_WIDTH or panel["type"] == "row":
            x, y, row_height = 0, y + row_height, 0
        laid_out.append({**panel, "id": panel_id, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
        x, row_height = x + w, max(row_height, h)
        if panel["type"] == "row":
            x, y, row_height = 0, y + h, 0
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["guardstream"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": [datasource_variable(), *variables]},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["guardstream"], "title": "guardstream", "asDropdown": True}],
        "panels": laid_out,
        "version": 1,
    }


# --- dashboards --------------------------------------------------------------------------------------------

CATEGORY_DECISIONS = "guardstream_safety_category_decisions_total"


def overview() -> Json:
    by_category = 'category=~"$category", stage=~"$stage"'
    panels = [
        stat(
            "Decisions / s",
            [target('sum(rate(guardstream_pipeline_decisions_total{stage=~"$stage"}[$__rate_interval]))')],
            unit="reqps",
        ),
        stat(
            "Blocked share",
            [
                target(
                    f'sum(rate({CATEGORY_DECISIONS}{{outcome="blocked", {by_category}}}[$__rate_interval]))'
                    f" / sum(rate({CATEGORY_DECISIONS}{{{by_category}}}[$__rate_interval]))"
                )
            ],
            unit="percentunit",
        ),
        stat(
            "Hugging burn rate (1h)",
            [target("guardstream:hugging_burn_rate:ratio_rate1h")],
            unit="x",
            description="Hugging share over 1h as a multiple of the 2% abuse budget.",
            thresholds=(1, 14.4),
        ),
        stat(
            "Open alerts",
            [target('sum(guardstream_detector_open_alerts{detector=~"$detector"})')],
            thresholds=(1,),
        ),
        timeseries(
            "Decisions by stage and decision",
            [
                target(
                    'sum by (stage, decision) (rate(guardstream_pipeline_decisions_total{stage=~"$stage"}'
                    "[$__rate_interval]))",
                    "{{stage}} {{decision}}",
                )
            ],
            unit="reqps",
            stack=True,
            width=24,
        ),
        timeseries(
            "Blocks by category",
            [
                target(
                    f'sum by (category) (rate({CATEGORY_DECISIONS}{{outcome="blocked", {by_category}}}'
                    "[$__rate_interval]))",
                    "{{category}}",
                )
            ],
            unit="ops",
        ),
        timeseries(
            "Hugging by category",
            [
                target(
                    f'sum by (category) (rate({CATEGORY_DECISIONS}{{outcome="hugging", {by_category}}}'
                    "[$__rate_interval]))",
                    "{{category}}",
                )
            ],
            unit="ops",
            description="Category outcomes scoring within the band just under the guardrail threshold.",
        ),
        timeseries(
            "Hugging share by category (5m)",
            [target('guardstream_category:hugging_ratio:rate5m{category=~"$category"}', "{{category}}")],
            unit="percentunit",
        ),
        timeseries(
            "Block share by category (5m)",
            [target('guardstream_category:block_ratio:rate5m{category=~"$category"}', "{{category}}")],
            unit="percentunit",
        ),
        timeseries(
            "Alerts opened by detector",
            [
                target(
                    'sum by (detector) (increase(guardstream_detector_alert_changes_total{change=~"opened|reopened", '
                    'detector=~"$detector"}[$__rate_interval]))',
                    "{{detector}}",
                )
            ],
            stack=True,
        ),
        table(
            "Open alerts by detector and severity",
            [
                target(
                    'sum by (detector, severity) (guardstream_detector_open_alerts{detector=~"$detector"})',
                    instant=True,
                )
            ],
        ),
    ]
    return dashboard(
        "guardstream-overview",
        "guardstream / Overview",
        "Guardrail decision traffic, blocks and threshold hugging by category, and the alerts they raise.",
        [CATEGORY, STAGE, DETECTOR],
        panels,
    )


def nist() -> Json:
    measure = 'nist_measure=~"$nist_measure"'
    risk = 'ai600_risk=~"$ai600_risk"'
    panels = [
        row("NIST AI RMF $nist_measure", repeat="nist_measure"),
        timeseries(
            "Category outcomes by AI 600-1 risk",
            [
                target(
                    f"sum by (ai600_risk, outcome) (rate({CATEGORY_DECISIONS}{{{measure}, {risk}, "
                    'category=~"$category"}[$__rate_interval]))',
                    "{{ai600_risk}} {{outcome}}",
                )
            ],
            unit="ops",
            width=8,
        ),
        timeseries(
            "Alerts raised by detector",
            [
                target(
                    f"sum by (detector, severity) (increase(guardstream_detector_alerts_total{{{measure}, {risk}, "
                    'detector=~"$detector"}[$__rate_interval]))',
                    "{{detector}} {{severity}}",
                )
            ],
            width=8,
        ),
        timeseries(
            "Dead letters by reason",
            [
                target(
                    f"sum by (reason) (increase(guardstream_ingest_dead_letters_total{{{measure}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            width=8,
        ),
        timeseries(
            "Judge disagreement by guardrail",
            [target(f"guardstream_guardrail:judge_disagreement:ratio{{{measure}}}", "{{guardrail}}")],
            unit="percentunit",
            description="Share of judged decisions the LLM judge called unsafe although the guardrail allowed "
            "them, weighted by judged decisions across workers.",
            thresholds=(0.05,),
        ),
        bargauge(
            "Detector precision (analyst verdicts)",
            [
                target(
                    f'max by (detector) (guardstream_detector_precision_ratio{{{measure}, detector=~"$detector"}})',
                    "{{detector}}",
                    instant=True,
                )
            ],
            unit="percentunit",
            description="Confirmed / (confirmed + false positive) among the alerts analysts judged.",
        ),
        row("AI 600-1 risk $ai600_risk", repeat="ai600_risk"),
        timeseries(
            "Block share by category",
            [
                target(
                    f'guardstream_category:block_ratio:rate5m{{{risk}, category=~"$category"}}',
                    "{{category}}",
                )
            ],
            unit="percentunit",
            width=8,
        ),
        timeseries(
            "Hugging share by category",
            [
                target(
                    f'guardstream_category:hugging_ratio:rate5m{{{risk}, category=~"$category"}}',
                    "{{category}}",
                )
            ],
            unit="percentunit",
            width=8,
        ),
        timeseries(
            "Alerts raised by MEASURE subcategory",
            [
                target(
                    f"sum by (nist_measure, detector) (increase(guardstream_detector_alerts_total{{{risk}, "
                    'detector=~"$detector"}[$__rate_interval]))',
                    "{{nist_measure}} {{detector}}",
                )
            ],
            width=8,
        ),
    ]
    return dashboard(
        "guardstream-nist",
        "guardstream / NIST AI RMF MEASURE and AI 600-1",
        "Guardrail signals grouped by the NIST AI RMF MEASURE subcategory and the NIST AI 600-1 risk they "
        "evidence (labels from streams/nist_mapping.toml).",
        [NIST_MEASURE, AI600_RISK, CATEGORY, DETECTOR],
        panels,
    )


def slow_burn() -> Json:
    hugging_alerts = 'guardstream_detector_alerts_total{detector=~"boundary_hugging.*"}'
    panels = [
        timeseries(
            "Hugging burn rate by window",
            [target(f"guardstream:hugging_burn_rate:ratio_rate{w}", w) for w in BURN_WINDOWS],
            unit="x",
            description="Hugging share over each window as a multiple of the abuse budget; the dashed lines are "
            "the burn-rate factors of the GuardstreamAbuseBudgetBurn alerts.",
            thresholds=BURN_THRESHOLDS,
            width=24,
        ),
        timeseries(
            "Hugging share vs budget",
            [
                *(
                    target(f"guardstream:hugging_burn_rate:ratio_rate{w} * on () guardstream:hugging_budget:ratio", w)
                    for w in ("1h", "1d", "3d")
                ),
                target("guardstream:hugging_budget:ratio", "budget"),
            ],
            unit="percentunit",
        ),
        bargauge(
            "Top boundary huggers (hugging index by rank)",
            [
                target(
                    "topk(20, guardstream_detector_top_hugging_index)",
                    "{{instance}} #{{rank}}",
                    instant=True,
                )
            ],
            description="Hugging index of the open boundary-hugging alerts by rank slot; who holds a slot is in "
            "/status and the alerts table, never in a label.",
        ),
        timeseries(
            "Boundary-hugging alerts opened",
            [target(f"sum by (detector, severity) (increase({hugging_alerts}[$__rate_interval]))", "{{detector}}")],
            stack=True,
        ),
        stat(
            "Boundary-hugging alerts open",
            [target('sum(guardstream_detector_open_alerts{detector=~"boundary_hugging.*"})')],
            thresholds=(1,),
        ),
        stat(
            "Hugging burn rate (1d)",
            [target("guardstream:hugging_burn_rate:ratio_rate1d")],
            unit="x",
            thresholds=(1, 3),
        ),
        timeseries(
            "Hugging share by category (5m)",
            [target('guardstream_category:hugging_ratio:rate5m{category=~"$category"}', "{{category}}")],
            unit="percentunit",
            width=24,
        ),
    ]
    return dashboard(
        "guardstream-slow-burn",
        "guardstream / Slow-burn abuse",
        "Threshold hugging against the 2% abuse budget over multiple windows, and the users the "
        "boundary-hugging detectors rank highest.",
        [CATEGORY],
        panels,
    )


def pipeline_health() -> Json:
    def quantile(q: float, metric: str) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[$__rate_interval])))"

    panels = [
        stat("Processes up", [target('sum(up{job="guardstream"})')]),
        stat(
            "Time since last commit",
            [target("time() - guardstream:sink_last_commit_timestamp_seconds:max")],
            unit="s",
            thresholds=(60, 300),
        ),
        stat("Consumer lag", [target("guardstream:consumer_lag_messages:sum")], thresholds=(10000,)),
        stat("Tracked users", [target("sum(guardstream_detector_tracked_users)")]),
        timeseries(
            "Ingest rate",
            [
                target("sum(rate(guardstream_ingest_messages_total[$__rate_interval]))", "messages"),
                target("sum(rate(guardstream_ingest_duplicate_events_total[$__rate_interval]))", "duplicates"),
            ],
            unit="reqps",
        ),
        timeseries(
            "Consumer lag by partition",
            [target("sum by (partition) (guardstream_consumer_lag_messages)", "partition {{partition}}")],
        ),
        timeseries(
            "Dead letters by reason",
            [
                target(
                    "sum by (reason) (rate(guardstream_ingest_dead_letters_total[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        timeseries(
            "Batch duration",
            [
                target(quantile(0.5, "guardstream_sink_batch_duration_seconds"), "p50"),
                target(quantile(0.95, "guardstream_sink_batch_duration_seconds"), "p95"),
            ],
            unit="s",
        ),
        timeseries(
            "Where a batch's time goes (mean per batch)",
            [
                target(
                    "sum by (phase) (rate(guardstream_sink_batch_phase_seconds_sum[$__rate_interval]))"
                    " / sum by (phase) (rate(guardstream_sink_batch_phase_seconds_count[$__rate_interval]))",
                    "{{phase}}",
                )
            ],
            unit="s",
            stack=True,
            description="wait: in the commit queue behind the commit in flight (high when the worker is near its "
            "peak: batches then merge); decode: decoding and checking the batch's events, on the committer; "
            "detect: the detectors and the batch's "
            "tables; sink: the DuckDB transaction (or the writer's); publish: alerts from the outbox and the ack. "
            "Together about the detection latency of an alert, less the broker's fetch wait.",
        ),
        timeseries(
            "Ingest latency p95 (broker timestamp to commit)",
            [target(quantile(0.95, "guardstream_pipeline_ingest_latency_seconds"), "p95")],
            unit="s",
        ),
        timeseries(
            "Batch size p95",
            [target(quantile(0.95, "guardstream_sink_batch_size_events"), "p95")],
        ),
        timeseries(
            "Tracked users by worker",
            [target("guardstream_detector_tracked_users", "{{instance}}")],
        ),
        timeseries(
            "Writer: worker batches by result",
            [
                target(
                    "sum by (result) (rate(guardstream_writer_batches_total[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            unit="reqps",
            description="With several workers sharing one store: batches the writer committed, and batches it "
            "refused (fenced: another worker committed the partition since, as after a rebalance; duplicates: an "
            "event in it was stored already). A refused batch is started over by its worker, never lost.",
        ),
        timeseries(
            "Writer: apply duration",
            [
                target(quantile(0.5, "guardstream_writer_apply_seconds"), "p50"),
                target(quantile(0.95, "guardstream_writer_apply_seconds"), "p95"),
            ],
            unit="s",
            description="One DuckDB transaction per worker batch; the writer applies one at a time, so this bounds "
            "the throughput of all workers together.",
        ),
        table(
            "Targets",
            [target('up{job="guardstream"}', instant=True)],
        ),
    ]
    return dashboard(
        "guardstream-pipeline-health",
        "guardstream / Pipeline health",
        "Whether the pipeline keeps up: ingest, lag, dead letters, batch and ingest latency, commits.",
        [],
        panels,
    )


def build_all() -> dict[str, Json]:
    """File name under dashboards/generated/ -> dashboard JSON."""
    return {f"{d['uid']}.json": d for d in (overview(), nist(), slow_burn(), pipeline_health())}


def render(dashboard_json: Json) -> str:
    return json.dumps(dashboard_json, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is not what this generates")
    args = parser.parse_args(argv)
    dashboards = {name: render(d) for name, d in build_all().items()}
    if args.check:
        stale = sorted(
            name
            for name, text in dashboards.items()
            if not (GENERATED / name).exists() or (GENERATED / name).read_text() != text
        )
        extra = sorted(p.name for p in GENERATED.glob("*.json") if p.name not in dashboards)
        if stale or extra:
            print(
                f"dashboards/generated is out of date (changed: {stale or 'none'}, not generated: {extra or 'none'}):"
                " run `python -m dashboards.build` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"dashboards/generated is up to date ({len(dashboards)} dashboards)")
        return 0
    GENERATED.mkdir(exist_ok=True)
    for name, text in dashboards.items():
        (GENERATED / name).write_text(text)
    print(f"wrote {len(dashboards)} dashboards to {GENERATED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
