"""One fleet run end to end: provision, connect, publish, probe, load the API, account.

:func:`run_fleet` is what ``batterytwin fleet`` and ``benches.fleet`` run:

1. log in to the cloud and provision ``count`` BMSs (or read their credentials from a
   CSV), continuing each device's sequence numbers after what the cloud already stored;
2. run the fleet (:class:`~virtual_bms.fleet.runner.FleetRunner`) for ``duration_s``,
   while a probe polls what a sample of devices got stored (publish -> queryable
   latency), ``api_users`` clients query measurements once a second each, and a CPU
   sampler watches the broker, the ingest, the database and the API;
3. after the drain, ask the cloud what it stored per device and count loss and
   duplicates from the sequence numbers;
4. build ``report.json`` and ``report.html``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from cloud.mqtt.contract import Topics
from virtual_bms.fleet.cloud_client import CloudClient, CloudError
from virtual_bms.fleet.population import FleetPopulation, PillarMix, PopulationConfig
from virtual_bms.fleet.probe import StoredProbe
from virtual_bms.fleet.runner import DeviceCredentials, FleetRunConfig, FleetRunner

__all__ = ["FleetOptions", "read_credentials", "run_fleet", "write_credentials"]

_log = logging.getLogger(__name__)

DEFAULT_CPU_GROUPS: dict[str, str] = {
    "broker": "mosquitto",
    "ingest": "cloud ingest",
    "database": "postgres",
    "api": "cloud serve",
}
"""Process groups the report's CPU section watches (name or command-line pattern)."""


@dataclass(frozen=True)
class FleetOptions:
    """A fleet run.

    Attributes:
        count: Number of virtual BMSs.
        pillar: ``"1"``, ``"2"`` or ``"mix"``.
        broker_url: ``mqtt://host:port`` of the broker the BMSs connect to.
        cloud_url: Base URL of the cloud's REST API.
        username: Cloud user (admin, to provision; service is enough with credentials).
        password: Its password.
        rate_hz: Telemetry messages per BMS per second.
        duration_s: Publishing time (the drain comes after).
        report_dir: Where ``report.json`` and ``report.html`` go (None: no files).
        prefix: Device name prefix.
        credentials_csv: Use these ``name,password`` lines instead of provisioning.
        save_credentials: Write the provisioned credentials here (for Locust workers).
        probe_devices: Devices sampled by the latency probe.
        probe_interval_s: Its polling period.
        api_users: Clients querying measurements once a second each during the run.
        cpu_groups: Process groups for the CPU section (label -> name pattern).
        seed: Seed of the fleet's cells and loads.
        speed: Twin seconds per wall second.
        drain_s: Longest wait for the fleet's outboxes to empty at the end.
        settle_s: Longest wait after the drain for the ingest to store what the broker
            still holds (it ends early once the sampled devices are fully stored, or when
            nothing new was stored for ``stall_s``).
        stall_s: See ``settle_s``.
        topics: Topic names.
    """

    count: int
    pillar: PillarMix = "2"
    broker_url: str = "mqtt://127.0.0.1:1883"
    cloud_url: str = "http://127.0.0.1:8000"
    username: str = "admin"
    password: str = ""
    rate_hz: float = 0.3
    duration_s: float = 60.0
    report_dir: Path | None = None
    prefix: str = "fleet-"
    credentials_csv: Path | None = None
    save_credentials: Path | None = None
    probe_devices: int = 200
    probe_interval_s: float = 0.25
    api_users: int = 0
    cpu_groups: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CPU_GROUPS))
    seed: int = 0
    speed: float = 1.0
    drain_s: float = 120.0
    settle_s: float = 600.0
    stall_s: float = 30.0
    topics: Topics = field(default_factory=Topics)

    def broker(self) -> tuple[str, int]:
        """``(host, port)`` of :attr:`broker_url`."""
        parts = urlsplit(self.broker_url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(
                f"broker must be mqtt://host[:port], got {self.broker_url!r} (the fleet's lean "
                "client speaks plain MQTT 3.1.1; put TLS in front with a proxy if needed)"
            )
        return parts.hostname, parts.port or 1883


def read_credentials(path: Path) -> list[DeviceCredentials]:
    """``name,password`` lines (a header line ``name,password`` is skipped)."""
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh) if row and row[0] != "name"]
    for k, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0] or not row[1]:
            raise ValueError(f"{path}: line {k} is not 'name,password': {row!r}")
    return [DeviceCredentials(row[0], row[1]) for row in rows]


def write_credentials(path: Path, credentials: Sequence[DeviceCredentials]) -> None:
    """The CSV :func:`read_credentials` reads (keep it private: it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "password"])
        for c in credentials:
            writer.writerow([c.name, c.password])
    path.chmod(0o600)


async def _provision(
    cloud: CloudClient, options: FleetOptions, pillars: np.ndarray
) -> list[DeviceCredentials]:
    """One call per run of devices of one pillar (at most ``chunk`` devices a call);
    device ``i`` is named ``{prefix}{i:05d}``."""
    out: list[DeviceCredentials] = []
    chunk = 2000
    start = 0
    while start < options.count:
        pillar = int(pillars[start])
        end = start + 1
        while end < options.count and end - start < chunk and int(pillars[end]) == pillar:
            end += 1
        out += await cloud.provision(
            prefix=options.prefix, count=end - start, pillar=pillar, start=start
        )
        start = end
    return out


async def _api_load(
    cloud: CloudClient, *, users: int, stop: asyncio.Event, cell_ids: Sequence[int]
) -> list[tuple[float, float]]:
    """``users`` clients, one measurements query per second each: (time, latency ms)."""
    samples: list[tuple[float, float]] = []
    if users <= 0 or not cell_ids:
        return samples

    async def user(k: int) -> None:
        rng = random.Random(k)
        await asyncio.sleep(rng.random())
        while not stop.is_set():
            took = 0.0
            until = time.time()
            query = {
                "cell": rng.choice(cell_ids),
                "since": _iso(until - 600.0),
                "until": _iso(until),
                "limit": 100,
            }
            try:
                took = await cloud.measurements_latency_ms(query=query)
                samples.append((time.time(), took))
            except (CloudError, OSError) as exc:
                _log.debug("API query failed: %s", exc)
                samples.append((time.time(), float("nan")))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, 1.0 - took / 1000.0))

    await asyncio.gather(*(user(k) for k in range(users)))
    return samples


def _iso(epoch_s: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).isoformat()


async def _cell_ids(cloud: CloudClient, *, limit: int = 200) -> list[int]:
    with contextlib.suppress(CloudError, OSError, KeyError, TypeError):
        rows = await cloud._call("GET", "/api/cells/", params={"limit": limit})
        return [int(r["id"]) for r in rows]
    return []


async def _settle(
    probe: StoredProbe, runner: FleetRunner, *, settle_s: float, stall_s: float
) -> float:
    """Wait until the sampled devices' last published messages are stored (the ingest
    has caught up with what the broker holds); the seconds waited."""
    started = time.monotonic()
    last_seq = {i: int(runner.next_seq[i]) - 1 for i in probe.indices}
    seen = probe.seen_count
    progress_at = started
    while time.monotonic() - started < settle_s:
        if all(probe.mark_of(i) >= s for i, s in last_seq.items()):
            break
        await asyncio.sleep(0.5)
        if probe.seen_count != seen:
            seen, progress_at = probe.seen_count, time.monotonic()
        elif time.monotonic() - progress_at > stall_s:
            _log.warning("nothing new stored for %.0f s: accounting now", stall_s)
            break
    return time.monotonic() - started


async def run_fleet(
    options: FleetOptions,
    *,
    on_second: Callable[[dict[str, float]], None] | None = None,
    during: Callable[[FleetRunner], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run the fleet (see the module docstring); returns the report.

    Args:
        options: The run.
        on_second: Called with each timeline row (progress display).
        during: A coroutine run beside the fleet once it is connected (fault drills:
            cut networks, restart the broker, ...).
    """
    from virtual_bms.fleet.cpu import CpuSampler

    host, port = options.broker()
    population = FleetPopulation(
        PopulationConfig(count=options.count, pillar=options.pillar, seed=options.seed)
    )
    async with CloudClient(options.cloud_url, options.username, options.password) as cloud:
        if options.credentials_csv is not None:
            credentials = read_credentials(options.credentials_csv)[: options.count]
            if len(credentials) < options.count:
                raise ValueError(
                    f"{options.credentials_csv} has {len(credentials)} devices, "
                    f"{options.count} asked for"
                )
        else:
            credentials = await _provision(cloud, options, population.pillar)
            if options.save_credentials is not None:
                write_credentials(options.save_credentials, credentials)
        before = await cloud.summary(prefix=options.prefix, check_duplicates=False)
        stored_before = before.get("devices", {})
        seq_start = np.array(
            [_max_seq(stored_before.get(c.name)) + 1 for c in credentials],
            dtype=np.int64,
        )
        runner = FleetRunner(
            population,
            credentials,
            FleetRunConfig(
                host=host,
                port=port,
                rate_hz=options.rate_hz,
                duration_s=options.duration_s,
                drain_s=options.drain_s,
                speed=options.speed,
                topics=options.topics,
            ),
            seq_start=seq_start,
        )
        rng = np.random.default_rng(options.seed)
        sample = np.sort(
            rng.choice(options.count, size=min(options.probe_devices, options.count), replace=False)
        )
        probe = StoredProbe(
            cloud,
            names=[credentials[i].name for i in sample],
            indices=sample.tolist(),
            first_seq=seq_start[sample].tolist(),
            interval_s=options.probe_interval_s,
        )
        cell_ids = await _cell_ids(cloud)
        stop = asyncio.Event()
        started = time.time()
        with CpuSampler(dict(options.cpu_groups), children=True) as cpu:
            probe_task = asyncio.create_task(probe.run(stop))
            api_task = asyncio.create_task(
                _api_load(cloud, users=options.api_users, stop=stop, cell_ids=cell_ids)
            )
            drill: asyncio.Task[None] | None = None
            settled_s = math.nan
            try:
                if during is not None:

                    async def drills() -> None:
                        while runner.connected < options.count and not stop.is_set():
                            await asyncio.sleep(0.2)
                        await during(runner)

                    drill = asyncio.create_task(drills())
                records = await runner.run(on_second=on_second)
                settled_s = await _settle(
                    probe, runner, settle_s=options.settle_s, stall_s=options.stall_s
                )
            finally:
                stop.set()
                await probe_task
                api_samples = await api_task
                if drill is not None:
                    drill.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await drill
            cpu_samples = cpu.samples()
            cpu_started_s = cpu.started_at_s
        ended = time.time()
        after = await cloud.summary(prefix=options.prefix, check_duplicates=True)
    return _report(
        options=options,
        credentials=credentials,
        seq_start=seq_start,
        records=records,
        probe=probe,
        before=before,
        after=after,
        cpu_samples=cpu_samples,
        cpu_started_s=cpu_started_s,
        settled_s=settled_s,
        api_samples=api_samples,
        started_s=started,
        ended_s=ended,
    )


def _max_seq(stored: Mapping[str, Any] | None) -> int:
    """The highest seq the cloud holds of a device (-1: none)."""
    value = (stored or {}).get("max_seq")
    return -1 if value is None else int(value)


def _report(**parts: Any) -> dict[str, Any]:
    """Assemble the report from the run's parts (see :mod:`virtual_bms.fleet.report`)."""
    from virtual_bms.fleet.report import (
        ApiSamples,
        Targets,
        build_report,
        latency_stats,
        loss_and_duplicates,
        write_report,
    )

    options: FleetOptions = parts["options"]
    credentials: list[DeviceCredentials] = parts["credentials"]
    records = parts["records"]
    probe: StoredProbe = parts["probe"]
    seq_start: np.ndarray = parts["seq_start"]
    start = records.started_at_s
    device, seq, published_at = records.publications()
    names = [c.name for c in credentials]
    # Per device: its published seqs; stored counts of this run only (the cloud's counts
    # minus what it held before the run).
    order = np.argsort(device, kind="stable")
    bounds = np.searchsorted(device[order], np.arange(len(names) + 1))
    published = {names[i]: seq[order[bounds[i] : bounds[i + 1]]] for i in range(len(names))}
    before = parts["before"].get("devices", {})
    after = parts["after"]
    stored: dict[str, dict[str, int | None]] = {}
    for i, name in enumerate(names):
        now_ = after.get("devices", {}).get(name)
        if not now_ or not now_.get("count"):
            continue
        count = int(now_["count"]) - int((before.get(name) or {}).get("count", 0))
        if count > 0:
            stored[name] = {
                "count": count,
                "min_seq": max(int(now_["min_seq"]), int(seq_start[i])),
                "max_seq": int(now_["max_seq"]),
            }
    integrity = loss_and_duplicates(
        published,
        stored,
        duplicate_rows=int(after.get("duplicate_measurement_rows") or 0),
        cells_per_message=16,
    )
    visible = probe.visible()
    latency = latency_stats(
        (device, seq, published_at),
        visible,
        window_s=10.0,
        start_s=start,
        probed_devices=sorted(set(probe.indices)),
    )
    cpu_samples: dict[str, dict[str, list[float]]] = parts["cpu_samples"]
    shift = parts["cpu_started_s"] - start
    cpu = {
        label: {**series, "t_s": [t + shift for t in series.get("t_s", [])]}
        for label, series in cpu_samples.items()
    }
    api_samples: list[tuple[float, float]] = parts["api_samples"]
    ok = [(t - start, ms / 1000.0) for t, ms in api_samples if ms == ms]
    api = ApiSamples(
        t_s=[t for t, _ in ok],
        latency_s=[x for _, x in ok],
        failures=len(api_samples) - len(ok),
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    config.pop("password", None)
    config["topics"] = options.topics.root
    targets = Targets(latency_p99_ms=2000.0, api_p95_ms=100.0)
    report = build_report(
        config=config,
        records=records,
        devices=options.count,
        duration_s=options.duration_s,
        integrity=integrity,
        latency=latency,
        cpu=cpu,
        api=api if api_samples else None,
        stored_over_time=probe.stored_over_time(
            start_s=start, scale=options.count / max(len(probe.indices), 1)
        ),
        targets=targets,
    )
    p99 = (report.get("latency") or {}).get("p99_ms")
    report["figures"] = {
        "bms_connected": report["connections"]["held_peak"],
        "stored_msgs_per_s": report["throughput"]["stored_msgs_per_s"],
        "offered_msgs_per_s": report["throughput"]["offered_msgs_per_s"],
        "lost": integrity["lost"] + records.dropped_at_edge,
        "duplicated": integrity["duplicated"],
        "p99_publish_to_stored_s": None if p99 is None else p99 / 1000.0,
        "p50_publish_to_stored_s": (report.get("latency") or {}).get("p50_ms", 0.0) / 1000.0
        if (report.get("latency") or {}).get("p50_ms") is not None
        else None,
        "api_p95_ms_under_load": (report.get("api") or {}).get("p95_ms"),
        "latency_resolution_s": options.probe_interval_s,
        "ingest_catch_up_s": parts["settled_s"],
    }
    if options.report_dir is not None:
        write_report(report, options.report_dir)
    return report
