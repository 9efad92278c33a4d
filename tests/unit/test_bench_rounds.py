"""``guardstream bench --rounds N``: how the rounds' runs become one figure per variant and the ratios."""

from __future__ import annotations

from typing import Any

import pytest

from streams.bench import _rounds_line, _rows, markdown_report, summarize_rounds


def run(variant: str, rate: float) -> dict[str, Any]:
    return {
        "variant": variant,
        "what": f"variant {variant}",
        "events": 1000,
        "seconds": 1000 / rate,
        "events_per_second": rate,
        "peak_rss_bytes": 64 << 20,
    }


def test_each_variant_reports_its_median_run_and_the_ratios_are_the_median_of_each_rounds() -> None:
    runs = {
        "b": [run("b", 3000), run("b", 2000), run("b", 4000)],
        "a": [run("a", 100_000), run("a", 90_000), run("a", 140_000)],
        "c": [run("c", 18_000), run("c", 10_000), run("c", 16_000)],
    }
    variants, ratios, per_round = summarize_rounds(runs)

    assert variants["b"]["events_per_second"] == 3000  # the middle one of 2000, 3000, 4000
    assert variants["c"]["events_per_second"] == 16_000
    assert variants["c"]["seconds"] == pytest.approx(1000 / 16_000), "the median run's own figures, not a mix"
    assert variants["b"]["rounds"] == [3000, 2000, 4000], "every round, in round order"
    # side by side in each round: 6.0, 5.0 and 4.0 for c/b; 0.18, 0.111 and 0.114 for c/a
    assert per_round == [
        {"c/b": pytest.approx(6.0), "c/a": pytest.approx(0.18)},
        {"c/b": pytest.approx(5.0), "c/a": pytest.approx(10 / 90)},
        {"c/b": pytest.approx(4.0), "c/a": pytest.approx(16 / 140)},
    ]
    assert ratios == {"c/b": pytest.approx(5.0), "c/a": pytest.approx(16 / 140)}
    # (16,000 / 3,000 = 5.33 from the medians would mix runs that were not side by side)


def test_an_even_number_of_rounds_reports_a_run_that_happened() -> None:
    variants, ratios, _ = summarize_rounds({"c": [run("c", 10), run("c", 30)], "b": [run("b", 5), run("b", 5)]})
    assert variants["c"]["events_per_second"] == 10  # the lower middle, not the mean 20
    assert ratios["c/b"] == pytest.approx(4.0)  # median of 2.0 and 6.0


def test_one_round_is_that_round() -> None:
    variants, ratios, per_round = summarize_rounds({"c": [run("c", 15_000)], "b2": [run("b2", 7_500)]})
    assert variants["c"]["rounds"] == [15_000]
    assert ratios == {"c/b2": pytest.approx(2.0)} and len(per_round) == 1


def test_the_reports_show_every_round_and_the_median_ratios() -> None:
    variants, ratios, per_round = summarize_rounds(
        {"b": [run("b", 3000), run("b", 2000)], "c": [run("c", 18_000), run("c", 10_000)]}
    )
    result = {
        "machine": {
            "cpu_count": 2,
            "python": "3.11",
            "faust": "0.15",
            "aiokafka": "0.14",
            "duckdb": "2.0",
            "date": "2026-12-06",
            "commit": "abc",
            "load_average_at_start": [1.0, 1.0, 1.0],
        },
        "settings": {"events": 1000, "avg_event_bytes": 700, "users": 10, "partitions": 4, "broker": "x", "rounds": 2},
        "variants": variants,
        "ratios": ratios,
        "round_ratios": per_round,
    }
    rows = {row[0]: row for row in _rows(result)}
    assert rows["b"][4] == "5.50×", "c ÷ b is the median of the rounds' 6.00 and 5.00, not 10,000 / 2,000"
    line = _rounds_line(result)
    assert "b 3,000 / 2,000" in line and "round 1: c/b 6.00×; round 2: c/b 5.00×" in line
    assert "median of 2 rounds on 2026-12-06" in markdown_report(result)


def test_rounds_of_c_alone_have_no_ratios_to_show() -> None:
    variants, ratios, per_round = summarize_rounds({"c": [run("c", 10), run("c", 30), run("c", 20)]})
    assert variants["c"]["events_per_second"] == 20 and ratios == {} and per_round == [{}, {}, {}]
    line = _rounds_line({"variants": variants, "round_ratios": per_round})
    assert line == "rounds (events/s in round order): c 10 / 30 / 20"
