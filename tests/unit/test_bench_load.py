"""bench.load's per-event latency: the first message whose profile version counts an event,
and bench.scale's pause measure, against hand-worked timelines."""

from __future__ import annotations

import pytest

from bench.load import event_latencies, saturated
from bench.scale import _longest_pause, _pauses


def test_each_event_is_timed_to_the_first_message_that_counts_it() -> None:
    sent = {"a": [10.0, 10.2, 10.4], "b": [11.0]}
    # a: the first event emitted at once (v1); the next two coalesced into one message (v3) at 11.5;
    # a message listed out of order and a stale one (v2 after v3) must not change the answer.
    messages = {"a": [(11.5, 3, 10.4), (10.05, 1, 10.0), (11.6, 2, 10.2)], "b": [(11.01, 1, 11.0)]}
    per_event, missing = event_latencies(sent, messages)
    assert missing == 0
    assert per_event == pytest.approx([0.05, 1.3, 1.1, 0.01])


def test_events_no_message_counts_are_reported_missing() -> None:
    per_event, missing = event_latencies({"a": [1.0, 2.0, 3.0], "c": [5.0]}, {"a": [(1.5, 2, 2.0)]})
    assert per_event == pytest.approx([0.5, 0.0]) and missing == 2  # a's third event, and c's


def test_regression_uncommitted_records_of_a_worker_that_keeps_up_are_not_saturation() -> None:
    """The rule counted the group's uncommitted records: at 200/s with a commit a second, 321 of
    6,000 (applied 5,994, p50 31 ms) made the level "saturated" and stopped the run there."""
    assert not saturated(6_000, 5_994.0, 200)
    assert not saturated(9_000, 8_982.0, 300)
    # Saturated: the shortfall grows over the level (500/s offered, 450/s applied for 30 s).
    assert saturated(15_000, 13_500.0, 500)
    assert not saturated(15_000, 14_500.0, 500) and saturated(15_000, 14_499.0, 500)  # one second of input is the edge


def test_longest_pause_only_counts_time_after_the_change_and_inside_the_window() -> None:
    samples = [(0.0, 0.0), (1.0, 5.0), (2.0, 5.0), (3.0, 5.0), (4.0, 9.0), (5.0, 9.0), (6.0, 12.0), (100.0, 12.0)]
    # progress seen at 1.0, 4.0 and 6.0; nothing after 6.0 (the run ended: not a pause)
    assert _longest_pause(samples, start=1.5) == pytest.approx(2.5)  # from the change to the progress at 4.0
    assert _longest_pause(samples, start=4.0) == pytest.approx(2.0)  # 4.0 -> 6.0
    assert _longest_pause(samples, start=0.5, window=2.0) == pytest.approx(0.5)  # only progress inside the window


def test_regression_scale_throughput_rows_without_changes_have_no_pauses() -> None:
    """bench all's scale part failed on its first row (zip(strict=True) of no changes and one
    window end): a plain throughput run has no join or leave, so no pause to report."""
    samples = [(0.0, 0.0), (1.0, 10.0), (2.0, 20.0)]
    assert _pauses([], samples) == {}


def test_each_change_pause_is_measured_up_to_the_next_change() -> None:
    # progress at 0..2, none 2..5 (after the join at 2.5), progress at 5, the leave at 6, none 6..9, progress at 9
    samples = [(0.0, 0.0), (1.0, 5.0), (2.0, 10.0), (3.0, 10.0), (4.0, 10.0), (5.0, 15.0), (6.0, 20.0),
               (7.0, 20.0), (8.0, 20.0), (9.0, 25.0), (10.0, 30.0)]
    got = _pauses([("join", 2.5), ("leave", 6.0)], samples)
    assert got == {"join_pause_s": pytest.approx(2.5), "leave_pause_s": pytest.approx(3.0)}


def test_bench_all_markdown_lists_the_load_and_scale_figures_and_what_was_not_measured() -> None:
    from bench.all import markdown

    report = {
        "started": "2026-12-02T00:00:00Z", "quick": False, "settings": {"partitions": 8},
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11", "load_1m_start": 0.1, "load_1m_end": 0.2},
        "parts": {
            "load": {"ok": True, "result": {"levels": [
                {"offered_eps": 100, "applied_vs_offered": 0.998, "event_p50_s": 0.028, "event_p99_s": 0.829},
                {"offered_eps": 1000, "not_run": "saturated at 500 events/s"}]}},
            "scale": {"ok": True, "result": {"rows": [{"workers": 1, "eps": 1500.0, "speedup": 1.0},
                                                      {"workers": 2, "eps": 2100.0, "speedup": 1.4}],
                                             "rebalance": {"join_pause_s": 3.2, "leave_pause_s": 1.5},
                                             "restart": {"dynamic": {"restart_pause_s": 28.94, "back_s": 31.68},
                                                         "static": {"restart_pause_s": 0.36, "back_s": 4.67}},
                                             "stop": {"static": {"stop_pause_s": 31.04},
                                                      "static, then persona group leave": {"stop_pause_s": 2.26}}}},
            "encoder": {"ok": False, "not_measured": "FileNotFoundError: no registry"},
        },
    }
    md = markdown(report)
    assert "| load | 100/s offered: applied/offered, event p50/p99 s | 0.998, 0.028/0.829 |" in md
    assert "| load | 1000/s offered | saturated at 500 events/s |" in md
    assert "| scale | 2 workers: events/s (speedup vs 1) | 2,100 (1.40) |" in md
    assert "| scale | pause after a join / a leave (s) | 3.2 / 1.5 |" in md
    assert "| scale | a worker killed and restarted, dynamic members: group pause / back after (s) | 28.9 / 31.7 |" in md
    assert "| scale | a worker killed and restarted, static members: group pause / back after (s) | 0.4 / 4.7 |" in md
    assert "| scale | a worker stopped for good, static: group pause (s) | 31.0 |" in md
    assert "| scale | a worker stopped for good, static, then persona group leave: group pause (s) | 2.3 |" in md
    assert "- encoder: FileNotFoundError: no registry" in md


def test_bench_all_markdown_gives_cpu_per_event_and_its_ratio_to_the_trivial_agent() -> None:
    from bench.all import markdown

    report = {
        "started": "2026-12-03T00:00:00Z", "quick": False, "settings": {},
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11", "load_1m_start": 0.1, "load_1m_end": 0.2},
        "parts": {"stream": {"ok": True, "result": {
            "persona_worker_cpu_us_per_event": 400.0, "persona_machine_cpu_us_per_event": 500.0, "trivial_cpu_us_per_event": 84.0}}},
    }
    md = markdown(report)
    assert "| stream | persona_worker_cpu_us_per_event | 400.0 |" in md
    assert "| stream | trivial/persona CPU per event | 0.210 |" in md  # 84 / 400
