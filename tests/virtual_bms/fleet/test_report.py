"""The fleet report on synthetic runs whose answers are known: percentiles, losses, the files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from virtual_bms.fleet.report import (
    ApiSamples,
    Targets,
    build_report,
    latency_stats,
    loss_and_duplicates,
    write_report,
)
from virtual_bms.fleet.runner import FleetRecords

T0 = 1_700_000_000.0  # publish times are epoch seconds: a double resolves 0.24 us there


def _ms(expected: float | list[float]) -> Any:
    """Milliseconds to within a microsecond (epoch seconds carry ~0.2 us of rounding)."""
    return pytest.approx(expected, abs=1e-3)


def _probe_of_a() -> tuple[tuple[list[str], list[int], list[float]], ...]:
    """Device a publishes seq 0..104 once a second; the probe sees seq i after i + 1 ms,
    except seq 100..104; b publishes 10 messages and is never seen; the probe also sees a
    message nobody published and seq 0 of a a second time, later."""
    pub_dev = ["a"] * 105 + ["b"] * 10
    pub_seq = [*range(105), *range(10)]
    pub_t = [T0 + i for i in range(105)] + [T0 + i for i in range(10)]
    vis_dev = ["a"] * 100 + ["a", "c"]
    vis_seq = [*range(100), 0, 7]
    vis_t = [T0 + i + (i + 1) / 1000.0 for i in range(100)] + [T0 + 500.0, T0 + 1.0]
    return (pub_dev, pub_seq, pub_t), (vis_dev, vis_seq, vis_t)


def test_latency_percentiles_are_nearest_rank_and_exact() -> None:
    published, visible = _probe_of_a()
    stats = latency_stats(published, visible, probed_devices=["a", "b"])
    assert stats["matched"] == 100
    # latencies are 1..100 ms: nearest rank gives the 50th, 95th and 99th of them
    assert stats["p50_ms"] == _ms(50.0)
    assert stats["p95_ms"] == _ms(95.0)
    assert stats["p99_ms"] == _ms(99.0)
    assert stats["max_ms"] == _ms(100.0)
    assert stats["min_ms"] == _ms(1.0)  # seq 0 counts at its first sighting
    assert stats["mean_ms"] == _ms(50.5)
    assert stats["never_seen"] == 5 + 10  # a's last five and all of b
    assert stats["probed_published"] == 115
    assert stats["unmatched_visible"] == 1  # c/7 was never published


def test_probed_devices_default_to_those_the_probe_saw() -> None:
    published, visible = _probe_of_a()
    stats = latency_stats(published, visible)
    assert stats["probed_devices"] == 2  # a and c: b was not probed
    assert stats["never_seen"] == 5


def test_latency_windows_follow_publish_time() -> None:
    published, visible = _probe_of_a()
    stats = latency_stats(published, visible, window_s=10.0, start_s=T0)
    windows = stats["windows"]
    assert windows["t_s"] == [10.0 * k for k in range(10)]
    assert windows["count"] == [10] * 10
    # window k holds latencies 10k+1 .. 10k+10 ms
    assert windows["p50_ms"] == _ms([10.0 * k + 5 for k in range(10)])
    assert windows["p95_ms"] == _ms([10.0 * k + 10 for k in range(10)])
    assert windows["max_ms"] == _ms([10.0 * k + 10 for k in range(10)])


def test_latency_with_device_indices_and_empty_windows() -> None:
    published = (np.array([0, 0, 1]), np.array([5, 6, 5]), np.array([T0, T0 + 25.0, T0]))
    visible = (np.array([0, 0, 1]), np.array([5, 6, 5]), np.array([T0 + 0.2, T0 + 25.4, T0 + 0.1]))
    stats = latency_stats(published, visible, window_s=10.0)
    assert stats["matched"] == 3 and stats["never_seen"] == 0
    windows = stats["windows"]
    assert windows["count"] == [2, 0, 1]
    assert windows["p50_ms"][1] is None
    assert windows["max_ms"][0] == _ms(200.0)
    assert windows["p50_ms"][2] == _ms(400.0)


def test_latency_without_anything_seen() -> None:
    published = (["a"], [1], [T0])
    stats = latency_stats(published, ([], [], []), probed_devices=["a"])
    assert stats["matched"] == 0 and stats["p95_ms"] is None and stats["never_seen"] == 1
    with pytest.raises(ValueError, match="window_s must be > 0"):
        latency_stats(published, published, window_s=0)
    with pytest.raises(ValueError, match="one length"):
        latency_stats((["a"], [1, 2], [T0]), published)


def _integrity() -> dict[str, Any]:
    published = {
        "a": range(10),  # all stored
        "b": range(10),  # 3 and 7 lost, and 9 (after the last stored)
        "c": range(5),  # nothing stored
        "d": range(5),  # all stored, plus seq 5 it never sent
    }
    stored = {
        "a": {"count": 10, "min_seq": 0, "max_seq": 9},
        "b": {"count": 7, "min_seq": 0, "max_seq": 8},
        "d": {"count": 6, "min_seq": 0, "max_seq": 5},
        "z": {"count": 2, "min_seq": 0, "max_seq": 1},  # published nothing
    }
    return loss_and_duplicates(published, stored, duplicate_rows=32, cells_per_message=16)


def test_loss_and_duplicates_known_sets() -> None:
    result = _integrity()
    assert result["published"] == 30
    assert result["stored"] == 10 + 7 + 6 + 2
    assert result["lost"] == result["lost_max"] == 3 + 5
    assert result["lost_exact"] is True
    assert result["lost_pct"] == pytest.approx(100.0 * 8 / 30)
    assert result["stored_beyond_published"] == 1 + 2  # d's seq 5 and z's two
    assert result["duplicated"] == 3 + 2  # + 32 duplicate rows of 16-cell messages
    assert result["devices_with_loss"] == 2 and result["devices_never_stored"] == 1
    assert [(w["device"], w["lost"], w["extra"]) for w in result["worst"]] == [
        ("c", 5, 0),
        ("b", 3, 0),
        ("d", 0, 1),
    ]


def test_loss_bounds_when_the_published_seqs_have_gaps() -> None:
    # Published 0, 2, 4, 6, 8; three stored from 0 to 8: the middle one is 2, 4 or 6
    # (two lost) or an odd seq the device never sent (three lost).
    result = loss_and_duplicates(
        {"a": [0, 2, 4, 6, 8]}, {"a": {"count": 3, "min_seq": 0, "max_seq": 8}}
    )
    assert (result["lost"], result["lost_max"], result["lost_exact"]) == (2, 3, False)
    assert result["duplicated"] == 0


def test_loss_and_duplicates_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="needs min_seq and max_seq"):
        loss_and_duplicates({"a": [0]}, {"a": {"count": 1, "min_seq": None, "max_seq": None}})
    with pytest.raises(ValueError, match="cells_per_message >= 1"):
        loss_and_duplicates({}, {}, cells_per_message=0)


def _records() -> FleetRecords:
    records = FleetRecords(connect_s=1.5, connected_peak=10, reconnects=2, dropped_at_edge=0)
    for t in range(1, 13):  # 10 s of generating at 100 msg/s, then 2 s of draining
        generating = t <= 10
        records.timeline.append(
            {
                "t_s": float(t),
                "generated": 100.0 if generating else 0.0,
                "acked": 100.0 if generating else 0.0,
                "connected": 10.0,
                "backlog": 4.0 if generating else 0.0,
            }
        )
    return records


def _report(**overrides: Any) -> dict[str, Any]:
    published, visible = _probe_of_a()
    integrity = loss_and_duplicates(
        {f"bms-{i}": range(100) for i in range(10)},
        {f"bms-{i}": {"count": 100, "min_seq": 0, "max_seq": 99} for i in range(10)},
    )
    arguments: dict[str, Any] = {
        "config": {"devices": 10, "rate_hz": 10.0, "host": "127.0.0.1"},
        "records": _records(),
        "devices": 10,
        "duration_s": 10.0,
        "integrity": integrity,
        "latency": latency_stats(published, visible, start_s=T0),
        "cpu": {"mosquitto": {"t_s": [1.0, 2.0], "cpu_pct": [10.0, 30.0], "rss_mb": [5.0, 6.0]}},
        "api": ApiSamples(t_s=[1.0, 2.0, 3.0], latency_s=[0.010, 0.020, 0.030]),
        "stored_over_time": [(0.0, 0), (5.0, 500), (10.0, 1000)],
    }
    return build_report(**(arguments | overrides))


def test_build_report_sections_and_numbers() -> None:
    report = _report()
    assert list(report) == [
        "summary",
        "config",
        "connections",
        "throughput",
        "integrity",
        "latency",
        "cpu",
        "api",
        "timeline",
    ]
    assert report["connections"] == {
        "devices": 10,
        "held_peak": 10,
        "held_at_end": 10,
        "held_min_steady": 10,
        "connect_s": 1.5,
        "connect_failures": 0,
        "reconnects": 2,
    }
    throughput = report["throughput"]
    assert throughput["offered_msgs_per_s"] == throughput["acked_msgs_per_s"] == 100.0
    assert throughput["stored_msgs_per_s"] == 100.0  # 1000 stored in 10 s
    assert throughput["steady_offered_msgs_per_s"] == 100.0
    assert throughput["steady_stored_msgs_per_s"] == 100.0
    assert report["integrity"]["lost"] == 0 and report["integrity"]["dropped_at_edge"] == 0
    assert report["latency"]["p95_ms"] == _ms(95.0)
    assert "windows" not in report["latency"]
    assert report["cpu"]["mosquitto"] == {
        "cpu_pct_mean": 20.0,
        "cpu_pct_max": 30.0,
        "rss_mb_max": 6.0,
    }
    assert report["api"]["p50_ms"] == pytest.approx(20.0)
    assert report["api"]["max_ms"] == pytest.approx(30.0)
    assert report["timeline"]["stored"]["stored_per_s"] == [100.0, 100.0]
    assert report["timeline"]["latency"]["count"][0] == 10
    checks = {c["name"]: c["ok"] for c in report["summary"]["checks"]}
    assert all(checks.values()) and report["summary"]["passed"]
    assert set(checks) >= {"connections held", "messages lost", "latency p95 (ms)", "API p95 (ms)"}


def test_missed_targets_are_marked() -> None:
    records = _records()
    records.connected_peak = 9
    report = _report(records=records, targets=Targets(latency_p95_ms=50.0))
    failed = {c["name"] for c in report["summary"]["checks"] if not c["ok"]}
    assert failed == {"connections held", "latency p95 (ms)"}
    assert report["summary"]["passed"] is False


def test_report_without_optional_measurements() -> None:
    report = _report(latency=None, cpu=None, api=None, stored_over_time=None)
    assert report["latency"] is None and report["api"] is None and report["cpu"] == {}
    assert report["throughput"]["steady_stored_msgs_per_s"] is None
    assert [c["name"] for c in report["summary"]["checks"]] == [
        "connections held",
        "stored / offered (%)",
        "messages lost",
        "messages duplicated",
    ]


def test_write_report_json_and_self_contained_html(tmp_path: Path) -> None:
    records = _records()
    records.connect_s = float("nan")  # never connected: must still be valid JSON
    report = _report(records=records)
    paths = write_report(report, tmp_path / "out")
    loaded = json.loads(paths["json"].read_text(), parse_constant=pytest.fail)
    assert loaded["connections"]["connect_s"] is None
    assert loaded["summary"] == report["summary"]
    page = paths["html"].read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js is inline, no CDN
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    for title in ("Messages per second", "Connections held", "Backlog", "Latency", "CPU", "API"):
        assert title in page
    assert 'class="ok"' in page
    failing = _report(targets=Targets(api_p95_ms=1.0), integrity=_integrity())
    page = write_report(failing, tmp_path / "bad")["html"].read_text()
    assert 'class="bad"' in page
    assert "Devices with the most lost or extra messages" in page
