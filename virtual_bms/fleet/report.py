"""The fleet run's report: connections, throughput, integrity, latency, CPU, API; JSON and HTML.

Pure functions over what a run measured, then one writer:

* :func:`latency_stats`: publish -> queryable latency of the messages a probe saw, overall
  and per time window;
* :func:`loss_and_duplicates`: messages lost and duplicated, from sequence numbers;
* :func:`build_report`: the JSON-ready report, checked against :class:`Targets`;
* :func:`write_report`: ``report.json`` and a self-contained ``report.html`` (plotly.js
  inline, no CDN, so it opens offline).

Times are seconds (``time.time()`` for publish and visibility times; ``t_s`` of a series is
seconds on the run's own clock); latencies in the report are milliseconds. Percentiles are
nearest-rank (``numpy.percentile(..., method="inverted_cdf")``): every figure is a latency
that was actually measured.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ApiSamples",
    "RunRecords",
    "Targets",
    "build_report",
    "latency_stats",
    "loss_and_duplicates",
    "write_report",
]

Messages = tuple[ArrayLike, ArrayLike, ArrayLike]
"""Parallel columns ``(device, seq, time_s)``; devices are names or indices (one kind)."""

_QUANTILES = {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0}
_WORST_DEVICES = 10  # devices listed in the integrity section
_STEADY_FRACTION = 0.1  # default: the first 10 % of the run is warm-up


class RunRecords(Protocol):
    """What :func:`build_report` reads from a run (``FleetRecords`` has it)."""

    timeline: list[dict[str, float]]
    connect_s: float
    connected_peak: int
    connect_failures: int
    reconnects: int
    commands_answered: int
    dropped_at_edge: int


@dataclass(frozen=True)
class ApiSamples:
    """API queries made during the run.

    Attributes:
        t_s: When each query was sent, on the run's clock.
        latency_s: How long each successful query took.
        failures: Queries that failed (errors, timeouts).
    """

    t_s: Sequence[float]
    latency_s: Sequence[float]
    failures: int = 0

    def __post_init__(self) -> None:
        if len(self.t_s) != len(self.latency_s):
            raise ValueError(
                f"ApiSamples: {len(self.t_s)} times but {len(self.latency_s)} latencies; "
                "give one of each per query"
            )


@dataclass(frozen=True)
class Targets:
    """What a run must reach; the report's summary table is green where it does.

    Attributes:
        connections_pct: Connections held at the peak, as % of the fleet.
        stored_rate_pct: Messages stored per second, as % of those offered.
        lost: Most messages lost.
        duplicated: Most messages duplicated.
        latency_p95_ms: Publish -> queryable, 95th percentile.
        latency_p99_ms: Publish -> queryable, 99th percentile.
        api_p95_ms: API queries during the run, 95th percentile (docs/cloud.md: 50 ms).
    """

    connections_pct: float = 100.0
    stored_rate_pct: float = 99.0
    lost: int = 0
    duplicated: int = 0
    latency_p95_ms: float = 1000.0
    latency_p99_ms: float = 2000.0
    api_p95_ms: float = 50.0


# --------------------------------------------------------------------------- latency
def latency_stats(
    published: Messages,
    visible: Messages,
    *,
    window_s: float = 10.0,
    start_s: float | None = None,
    probed_devices: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Publish -> queryable latency of the messages a probe saw.

    Args:
        published: ``(device, seq, first publish time)`` of every message sent.
        visible: ``(device, seq, time the probe first found it stored)``; a message found
            more than once counts at its first sighting.
        window_s: Width of the time windows of the per-window percentiles.
        start_s: Start of the first window (default: the first publish); windows are
            placed by publish time.
        probed_devices: Devices the probe watched (default: those in ``visible``).

    Returns:
        ``matched`` (messages published and seen), ``p50_ms``, ``p95_ms``, ``p99_ms``,
        ``max_ms``, ``mean_ms``, ``min_ms``; ``probed_devices``, ``probed_published`` and
        ``never_seen`` (published messages of the probed devices the probe did not see);
        ``unmatched_visible`` (seen but not in ``published``); and ``windows``:
        ``{"t_s", "count", "p50_ms", "p95_ms", "p99_ms", "max_ms"}``, one entry per window,
        ``t_s`` the window's start after ``start_s`` (``None`` where a window is empty).

    Raises:
        ValueError: For a window <= 0 or columns of unequal length.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    pub_dev, pub_seq, pub_t = _columns(published, what="published")
    vis_dev, vis_seq, vis_t = _columns(visible, what="visible")
    pub_key, vis_key = _keys(pub_dev, pub_seq, vis_dev, vis_seq)
    # first sighting of each visible message; first publish of each published one
    order = np.lexsort((vis_t, vis_key))
    vis_key, vis_t = vis_key[order], vis_t[order]
    first = np.ones(vis_key.size, dtype=bool)
    first[1:] = vis_key[1:] != vis_key[:-1]
    vis_key, vis_t = vis_key[first], vis_t[first]
    order = np.lexsort((pub_t, pub_key))
    sorted_key, sorted_t = pub_key[order], pub_t[order]
    at = np.clip(np.searchsorted(sorted_key, vis_key), 0, max(sorted_key.size - 1, 0))
    matched = sorted_key[at] == vis_key if sorted_key.size else np.zeros(0, dtype=bool)
    t_pub = sorted_t[at[matched]]
    latency_s = vis_t[matched] - t_pub
    probed = np.unique(vis_dev) if probed_devices is None else np.asarray(probed_devices)
    of_probed = np.isin(pub_dev, probed)
    seen = np.isin(pub_key[of_probed], vis_key)
    t0 = float(start_s) if start_s is not None else (float(pub_t.min()) if pub_t.size else 0.0)
    return {
        "matched": int(latency_s.size),
        **_percentiles_ms(latency_s),
        "mean_ms": float(latency_s.mean() * 1000.0) if latency_s.size else None,
        "min_ms": float(latency_s.min() * 1000.0) if latency_s.size else None,
        "probed_devices": int(probed.size),
        "probed_published": int(of_probed.sum()),
        "never_seen": int(seen.size - seen.sum()),
        "unmatched_visible": int(vis_key.size - matched.sum()),
        "window_s": float(window_s),
        "windows": _windows(t_pub - t0, latency_s, window_s=window_s),
    }


def _columns(messages: Messages, *, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    device, seq, t = (np.asarray(c) for c in messages)
    if not device.shape == seq.shape == t.shape or device.ndim != 1:
        raise ValueError(
            f"{what}: device, seq and time must be 1-D columns of one length, got shapes "
            f"{device.shape}, {seq.shape}, {t.shape}"
        )
    return device, seq.astype(np.int64), t.astype(np.float64)


def _keys(
    pub_dev: np.ndarray, pub_seq: np.ndarray, vis_dev: np.ndarray, vis_seq: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per ``(device, seq)``, comparable across the two sets."""
    _, codes = np.unique(np.concatenate([pub_dev, vis_dev]), return_inverse=True)
    seqs = np.concatenate([pub_seq, vis_seq])
    if seqs.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    low = int(seqs.min())
    span = int(seqs.max()) - low + 1
    if (int(codes.max()) + 1) * span >= 2**63:
        raise ValueError(
            f"seq values span {span}: too wide to join on; check that published and visible "
            "use the same sequence numbers"
        )
    keys = codes.astype(np.int64) * span + (seqs - low)
    return keys[: pub_seq.size], keys[pub_seq.size :]


def _percentiles_ms(latency_s: np.ndarray) -> dict[str, float | None]:
    if latency_s.size == 0:
        return {**dict.fromkeys(_QUANTILES), "max_ms": None}
    values = np.percentile(latency_s, list(_QUANTILES.values()), method="inverted_cdf")
    out: dict[str, float | None] = {
        name: float(v) * 1000.0 for name, v in zip(_QUANTILES, values, strict=True)
    }
    out["max_ms"] = float(latency_s.max()) * 1000.0
    return out


def _windows(at_s: np.ndarray, latency_s: np.ndarray, *, window_s: float) -> dict[str, list[Any]]:
    """Percentiles of ``latency_s`` per window of ``at_s`` (seconds from the start)."""
    columns: dict[str, list[Any]] = {"t_s": [], "count": [], **{k: [] for k in _QUANTILES}}
    columns["max_ms"] = []
    if at_s.size == 0:
        return columns
    index = np.floor(np.maximum(at_s, 0.0) / window_s).astype(np.int64)
    for i in range(int(index.max()) + 1):
        values = latency_s[index == i]
        columns["t_s"].append(i * window_s)
        columns["count"].append(int(values.size))
        for name, value in _percentiles_ms(values).items():
            columns[name].append(value)
    return columns


# ------------------------------------------------------------------------- integrity
def loss_and_duplicates(
    published_per_device: Mapping[str, ArrayLike],
    stored: Mapping[str, Mapping[str, int | None]],
    *,
    duplicate_rows: int = 0,
    cells_per_message: int = 1,
) -> dict[str, Any]:
    """Messages lost and duplicated, from sequence numbers against the database.

    Per device, the database gives how many distinct seqs it stored and the lowest and
    highest (``ingested_messages``, restricted to the run). Published seqs outside
    ``[min_seq, max_seq]`` are certainly lost. Inside it, the stored count says how many
    of the published seqs are there, exactly when every seq in the range was published
    (the fleet's counters run without gaps) and otherwise as a lower bound, assuming no
    stored seq is one the device did not publish; ``lost_max`` is the upper bound and
    ``lost_exact`` says whether they agree. A stored seq that was never published (seen
    when the stored count exceeds the published seqs in range, or a stored ``min_seq`` /
    ``max_seq`` that was not published), and stored messages of devices that published
    nothing, count as ``stored_beyond_published``.

    Args:
        published_per_device: Device name -> seqs it published (repeats count once).
        stored: Device name -> ``{"count", "min_seq", "max_seq"}`` stored.
        duplicate_rows: Measurement rows stored twice (same cell, same time).
        cells_per_message: Rows per message, to turn ``duplicate_rows`` into messages.

    Returns:
        Totals ``published``, ``stored``, ``lost``, ``lost_max``, ``lost_exact``,
        ``lost_pct``, ``stored_beyond_published``, ``duplicate_rows``, ``duplicated``
        (messages: stored beyond published + duplicate rows / cells per message),
        ``devices``, ``devices_with_loss``, ``devices_never_stored``, and ``worst``: up to
        10 devices with the most lost or extra messages.

    Raises:
        ValueError: For a negative ``duplicate_rows`` or ``cells_per_message`` < 1.
    """
    if duplicate_rows < 0 or cells_per_message < 1:
        raise ValueError(
            f"duplicate_rows must be >= 0 and cells_per_message >= 1, got {duplicate_rows} "
            f"and {cells_per_message}"
        )
    rows = [
        _device_integrity(name, np.asarray(seqs, dtype=np.int64), stored.get(name))
        for name, seqs in published_per_device.items()
    ]
    strangers = sum(
        int(s.get("count") or 0) for name, s in stored.items() if name not in published_per_device
    )
    published = sum(r["published"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    beyond = sum(r["extra"] for r in rows) + strangers
    worst = sorted(
        (r for r in rows if r["lost"] or r["extra"]),
        key=lambda r: (-(r["lost"] + r["extra"]), r["device"]),
    )
    return {
        "published": published,
        "stored": sum(r["stored"] for r in rows) + strangers,
        "lost": lost,
        "lost_max": sum(r["lost_max"] for r in rows),
        "lost_exact": all(r["lost"] == r["lost_max"] for r in rows),
        "lost_pct": 100.0 * lost / published if published else 0.0,
        "stored_beyond_published": beyond,
        "duplicate_rows": int(duplicate_rows),
        "duplicated": beyond + math.ceil(duplicate_rows / cells_per_message),
        "devices": len(rows),
        "devices_with_loss": sum(1 for r in rows if r["lost"]),
        "devices_never_stored": sum(1 for r in rows if r["stored"] == 0 and r["published"]),
        "worst": worst[:_WORST_DEVICES],
    }


def _device_integrity(
    name: str, seqs: np.ndarray, stored: Mapping[str, int | None] | None
) -> dict[str, Any]:
    """Lost (bounds) and extra stored messages of one device; see loss_and_duplicates."""
    published = np.unique(seqs)
    n_published = int(published.size)
    count = int((stored or {}).get("count") or 0)
    row: dict[str, Any] = {"device": name, "published": n_published, "stored": count}
    if stored is None or count == 0:
        return row | {"lost": n_published, "lost_max": n_published, "extra": 0}
    low, high = stored.get("min_seq"), stored.get("max_seq")
    if low is None or high is None:
        raise ValueError(f"device {name!r}: stored count {count} needs min_seq and max_seq")
    inside = int(((published >= low) & (published <= high)).sum())
    outside = n_published - inside
    # the stored ends are stored seqs: if the device never published them, they are extra
    ends = {int(low), int(high)}
    foreign_ends = sum(1 for s in ends if not _contains(published, s))
    unpublished_in_range = (int(high) - int(low) + 1) - inside
    # bounds on how many of the stored seqs are published ones
    found_max = min(count - foreign_ends, inside)
    found_min = max(count - unpublished_in_range, len(ends) - foreign_ends)
    return row | {
        "lost": outside + inside - found_max,
        "lost_max": outside + inside - found_min,
        "extra": max(count - inside, foreign_ends),
    }


def _contains(sorted_values: np.ndarray, value: int) -> bool:
    at = int(np.searchsorted(sorted_values, value))
    return at < sorted_values.size and int(sorted_values[at]) == value


# ---------------------------------------------------------------------------- report
def build_report(
    *,
    config: Mapping[str, Any],
    records: RunRecords,
    devices: int,
    duration_s: float,
    integrity: Mapping[str, Any],
    latency: Mapping[str, Any] | None = None,
    cpu: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    api: ApiSamples | None = None,
    stored_over_time: Sequence[tuple[float, int]] | None = None,
    targets: Targets | None = None,
    steady_from_s: float | None = None,
) -> dict[str, Any]:
    """The JSON-ready report of a fleet run.

    Args:
        config: How the run was set up (copied into the report as given).
        records: The runner's records (timeline rows per second: ``t_s``, ``generated``,
            ``acked``, ``connected``, ``backlog``).
        devices: BMSs in the fleet.
        duration_s: Length of the generating phase (rates are counts / this).
        integrity: From :func:`loss_and_duplicates`.
        latency: From :func:`latency_stats`, windows on the timeline's clock.
        cpu: ``CpuSampler.samples()``, ``t_s`` on the timeline's clock.
        api: API queries during the run.
        stored_over_time: ``(t_s, messages stored so far)`` samples, for the stored rate
            over time and its sustained value.
        targets: What to check (default :class:`Targets`).
        steady_from_s: Start of the steady part (default: after the first 10 % of
            ``duration_s``); it ends at ``duration_s``.

    Returns:
        Sections ``summary`` (checks against the targets), ``config``, ``connections``,
        ``throughput``, ``integrity``, ``latency``, ``cpu``, ``api`` and ``timeline``
        (every series, for plots).

    Raises:
        ValueError: For ``devices`` < 1 or ``duration_s`` <= 0.
    """
    if devices < 1 or not duration_s > 0:
        raise ValueError(f"devices must be >= 1 and duration_s > 0, got {devices}, {duration_s}")
    steady = (
        (_STEADY_FRACTION * duration_s if steady_from_s is None else steady_from_s),
        duration_s,
    )
    fleet = _fleet_series(records.timeline)
    stored_series = _stored_rate(stored_over_time or [])
    latency_summary = {k: v for k, v in (latency or {}).items() if k != "windows"}
    report: dict[str, Any] = {
        "config": dict(config),
        "connections": _connections(records, fleet, devices=devices, steady=steady),
        "throughput": _throughput(
            fleet, stored_over_time or [], records=records, integrity=integrity, steady=steady
        ),
        "integrity": dict(integrity) | {"dropped_at_edge": records.dropped_at_edge},
        "latency": latency_summary or None,
        "cpu": _cpu_summary(cpu or {}),
        "api": _api_summary(api) if api is not None else None,
        "timeline": {
            "fleet": fleet,
            "stored": stored_series,
            "latency": (latency or {}).get("windows"),
            "cpu": {label: {k: list(v) for k, v in s.items()} for label, s in (cpu or {}).items()},
            "api": _api_windows(api, window_s=(latency or {}).get("window_s", 10.0))
            if api is not None
            else None,
        },
    }
    targets = targets or Targets()
    checks = _checks(report, targets, devices=devices)
    summary = {"passed": all(c["ok"] for c in checks), "checks": checks, "targets": asdict(targets)}
    report = {"summary": summary} | report
    plain: dict[str, Any] = _jsonable(report)
    return plain


def _fleet_series(timeline: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    keys = ("t_s", "generated", "acked", "connected", "backlog")
    return {k: [float(row.get(k, math.nan)) for row in timeline] for k in keys}


def _in_steady(t_s: Sequence[float], steady: tuple[float, float]) -> np.ndarray:
    t = np.asarray(t_s, dtype=np.float64)
    return (t >= steady[0]) & (t <= steady[1])


def _connections(
    records: RunRecords,
    fleet: Mapping[str, list[float]],
    *,
    devices: int,
    steady: tuple[float, float],
) -> dict[str, Any]:
    connected = np.asarray(fleet["connected"])
    during = connected[_in_steady(fleet["t_s"], steady)]
    return {
        "devices": devices,
        "held_peak": records.connected_peak,
        "held_at_end": int(connected[-1]) if connected.size else None,
        "held_min_steady": int(during.min()) if during.size else None,
        "connect_s": records.connect_s,
        "connect_failures": records.connect_failures,
        "reconnects": records.reconnects,
    }


def _throughput(
    fleet: Mapping[str, list[float]],
    stored_over_time: Sequence[tuple[float, int]],
    *,
    records: RunRecords,
    integrity: Mapping[str, Any],
    steady: tuple[float, float],
) -> dict[str, Any]:
    """Totals, rates over the generating phase (``steady[1]`` long) and steady rates."""
    steady_rows = _in_steady(fleet["t_s"], steady)
    generated = np.asarray(fleet["generated"])
    acked = np.asarray(fleet["acked"])
    totals = {
        "generated": int(np.nansum(generated)),
        "acked": int(np.nansum(acked)),
        "stored": int(integrity.get("stored", 0)),
    }
    duration_s = steady[1]
    return totals | {
        "duration_s": duration_s,
        "offered_msgs_per_s": totals["generated"] / duration_s,
        "acked_msgs_per_s": totals["acked"] / duration_s,
        "stored_msgs_per_s": totals["stored"] / duration_s,
        "commands_answered": records.commands_answered,
        "steady_from_s": steady[0],
        "steady_offered_msgs_per_s": float(generated[steady_rows].mean())
        if steady_rows.any()
        else None,
        "steady_acked_msgs_per_s": float(acked[steady_rows].mean()) if steady_rows.any() else None,
        "steady_stored_msgs_per_s": _steady_stored_rate(stored_over_time, steady),
        "peak_acked_msgs_per_s": float(acked.max()) if acked.size else None,
    }


def _steady_stored_rate(
    samples: Sequence[tuple[float, int]], steady: tuple[float, float]
) -> float | None:
    inside = sorted((t, n) for t, n in samples if steady[0] <= t <= steady[1])
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0)


def _stored_rate(samples: Sequence[tuple[float, int]]) -> dict[str, list[float]]:
    """Stored messages per second between consecutive ``(t_s, stored so far)`` samples."""
    ordered = sorted(samples)
    out: dict[str, list[float]] = {"t_s": [], "stored_per_s": []}
    for (t0, n0), (t1, n1) in itertools.pairwise(ordered):
        if t1 > t0:
            out["t_s"].append(float(t1))
            out["stored_per_s"].append((n1 - n0) / (t1 - t0))
    return out


def _cpu_summary(cpu: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, Any]:
    out = {}
    for label, series in cpu.items():
        pct = np.asarray(series.get("cpu_pct", ()), dtype=np.float64)
        rss = np.asarray(series.get("rss_mb", ()), dtype=np.float64)
        out[label] = {
            "cpu_pct_mean": float(pct.mean()) if pct.size else None,
            "cpu_pct_max": float(pct.max()) if pct.size else None,
            "rss_mb_max": float(rss.max()) if rss.size else None,
        }
    return out


def _api_summary(api: ApiSamples) -> dict[str, Any]:
    latency_s = np.asarray(api.latency_s, dtype=np.float64)
    stats = _percentiles_ms(latency_s)
    return {
        "queries": int(latency_s.size),
        "failures": api.failures,
        "p50_ms": stats["p50_ms"],
        "p95_ms": stats["p95_ms"],
        "max_ms": stats["max_ms"],
    }


def _api_windows(api: ApiSamples, *, window_s: float) -> dict[str, list[Any]]:
    return _windows(
        np.asarray(api.t_s, dtype=np.float64),
        np.asarray(api.latency_s, dtype=np.float64),
        window_s=window_s,
    )


def _check(name: str, target: str, measured: Any, ok: bool) -> dict[str, Any]:
    return {"name": name, "target": target, "measured": measured, "ok": bool(ok)}


def _checks(report: Mapping[str, Any], targets: Targets, *, devices: int) -> list[dict[str, Any]]:
    """Targets vs measured, one row each; a measurement that is missing fails."""
    held = report["connections"]["held_peak"]
    need = math.ceil(devices * targets.connections_pct / 100.0)
    integrity, throughput = report["integrity"], report["throughput"]
    offered = throughput["generated"]
    stored_pct = 100.0 * throughput["stored"] / offered if offered else None
    lost, duplicated = integrity["lost"], integrity["duplicated"]
    checks = [
        _check("connections held", f">= {need}", held, held >= need),
        _check(
            "stored / offered (%)",
            f">= {targets.stored_rate_pct:g}",
            stored_pct,
            _at_least(stored_pct, targets.stored_rate_pct),
        ),
        _check("messages lost", f"<= {targets.lost}", lost, lost <= targets.lost),
        _check(
            "messages duplicated",
            f"<= {targets.duplicated}",
            duplicated,
            duplicated <= targets.duplicated,
        ),
    ]
    limits = {
        ("latency", "p95_ms"): targets.latency_p95_ms,
        ("latency", "p99_ms"): targets.latency_p99_ms,
        ("api", "p95_ms"): targets.api_p95_ms,
    }
    for (section, key), limit in limits.items():
        if report[section] is not None:
            value = report[section].get(key)
            name = f"{'API' if section == 'api' else section} {key[:3]} (ms)"
            checks.append(_check(name, f"<= {limit:g}", value, _at_most(value, limit)))
    return checks


def _at_most(value: float | None, limit: float) -> bool:
    return value is not None and math.isfinite(value) and value <= limit


def _at_least(value: float | None, limit: float) -> bool:
    return value is not None and math.isfinite(value) and value >= limit


def _jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars unwrapped, NaN and inf as null, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------- writing
def write_report(report: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """Write ``report.json`` and a self-contained ``report.html`` into ``folder``.

    Returns:
        ``{"json": path, "html": path}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "html": folder / "report.html"}
    data = _jsonable(report)
    paths["json"].write_text(json.dumps(data, indent=1, allow_nan=False), encoding="utf-8")
    paths["html"].write_text(_html(data), encoding="utf-8")
    return paths


_PLOTS = (
    "Messages per second: offered, acknowledged by the broker, stored",
    "Connections held",
    "Backlog: generated, not yet acknowledged",
    "Latency, publish -> queryable (ms)",
    "CPU per process group (% of one core)",
    "API latency during the run (ms)",
)


def _html(report: Mapping[str, Any]) -> str:
    figure = _figure(report.get("timeline") or {})
    config = report.get("config") or {}
    title = f"batterytwin fleet: {report.get('connections', {}).get('devices', '?')} virtual BMSs"
    sections = "".join(
        _table(name, report.get(name))
        for name in ("connections", "throughput", "integrity", "latency", "cpu", "api")
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}td,th{{padding:2px 12px}}
tr:nth-child(even){{background:#f3f3f3}}td.ok{{background:#c8f0c8}}td.bad{{background:#f6c4c4}}
th{{text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(", ".join(f"{k} {v}" for k, v in config.items()))}</p>
{_summary_table(report.get("summary") or {})}
{sections}
{figure.to_html(full_html=False, include_plotlyjs=True)}
</body></html>"""


def _summary_table(summary: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['target'])}</td>"
        f'<td class="{"ok" if c["ok"] else "bad"}">{_fmt(c["measured"])}</td></tr>'
        for c in summary.get("checks", [])
    )
    verdict = "all targets met" if summary.get("passed") else "targets missed"
    return (
        f"<h2>Summary: {verdict}</h2><table><tr><th>check</th><th>target</th>"
        f"<th>measured</th></tr>{rows}</table>"
    )


def _table(name: str, section: Any) -> str:
    if not isinstance(section, Mapping) or not section:
        return f"<h2>{html.escape(name)}</h2><p>not measured</p>"
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>"
        for k, v in section.items()
        if k != "worst"
    )
    worst = section.get("worst") or []
    extra = ""
    if worst:
        keys = list(worst[0])
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{_fmt(row.get(k))}</td>" for k in keys) + "</tr>"
            for row in worst
        )
        extra = (
            "<h3>Devices with the most lost or extra messages</h3>"
            f"<table><tr>{head}</tr>{body}</table>"
        )
    return f"<h2>{html.escape(name)}</h2><table>{rows}</table>{extra}"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, Mapping):
        return html.escape(", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()))
    return html.escape(str(value))


def _figure(timeline: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=len(_PLOTS), cols=1, shared_xaxes=True, vertical_spacing=0.04, subplot_titles=_PLOTS
    )

    def line(row: int, x: Sequence[float], y: Sequence[Any], name: str) -> None:
        fig.add_trace(go.Scatter(x=list(x), y=list(y), name=name, mode="lines"), row=row, col=1)

    fleet = timeline.get("fleet") or {}
    if fleet.get("t_s"):
        line(1, fleet["t_s"], fleet["generated"], "offered")
        line(1, fleet["t_s"], fleet["acked"], "acknowledged")
        line(2, fleet["t_s"], fleet["connected"], "connections")
        line(3, fleet["t_s"], fleet["backlog"], "backlog")
    stored = timeline.get("stored") or {}
    if stored.get("t_s"):
        line(1, stored["t_s"], stored["stored_per_s"], "stored")
    latency = timeline.get("latency") or {}
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        if latency.get("t_s"):
            line(4, latency["t_s"], latency[key], f"latency {key[:3]}")
    for label, series in (timeline.get("cpu") or {}).items():
        line(5, series.get("t_s", []), series.get("cpu_pct", []), f"CPU {label}")
    api = timeline.get("api") or {}
    for key in ("p50_ms", "p95_ms", "max_ms"):
        if api.get("t_s"):
            line(6, api["t_s"], api[key], f"API {key[:-3]}")
    fig.update_xaxes(title_text="s since the start", row=len(_PLOTS), col=1)
    fig.update_layout(height=300 * len(_PLOTS), template="plotly_white", margin={"t": 40})
    return fig
