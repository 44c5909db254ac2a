"""CPU and memory of labelled groups of processes (broker, ingest, database, the fleet itself).

:class:`CpuSampler` wakes every ``interval_s`` in a background thread and records, per
group, the CPU the group's processes used since the previous sample (percent of one core:
a process that keeps two cores busy shows 200) and their resident memory. A group is given
by process ids or by a pattern::

    groups = {"mosquitto": "mosquitto", "postgres": "postgres", "ingest": "cloud ingest"}
    with CpuSampler(groups, interval_s=1.0) as sampler:
        run_the_fleet()
    sampler.samples()["postgres"]["cpu_pct"]

A pattern matches a process whose name contains it or whose command line (arguments
joined by spaces) contains it, so ``"postgres"`` takes every PostgreSQL backend and
``"cloud ingest"`` the ingest workers started as ``batterytwin cloud ingest``. Patterns are
looked up again at every sample, so processes that start later (a backend for a new
connection, a restarted broker) are picked up; with ``children=True`` the descendants of
every matched process count too. A process that exits between two samples simply stops
counting. RSS is summed over a group's processes, so memory they share (PostgreSQL's
shared buffers) counts once per process. The sampler's own process is always sampled, as
``"fleet"`` (it is never part of another group).

psutil is imported when sampling starts, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

__all__ = ["SELF_LABEL", "CpuSampler"]

SELF_LABEL = "fleet"
"""The label of the sampler's own process."""

_log = logging.getLogger(__name__)
_MIB = 1024.0 * 1024.0  # rss_mb is in MiB


class _Tracked:
    """A process seen before: its handle and the CPU seconds it had used then."""

    __slots__ = ("cpu_s", "process")

    def __init__(self, process: Any, cpu_s: float) -> None:
        self.process = process
        self.cpu_s = cpu_s


class CpuSampler:
    """Samples CPU % and RSS of process groups in a background thread.

    Args:
        groups: Label -> process ids, or label -> a pattern matched against process names
            and command lines (see the module docstring). A label may not be ``"fleet"``.
        interval_s: Time between samples.
        children: Count the descendants of every process of a group too.

    Raises:
        ValueError: For an interval <= 0, an empty pattern or the reserved label.
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[int] | str],
        *,
        interval_s: float = 1.0,
        children: bool = False,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if SELF_LABEL in groups:
            raise ValueError(
                f"the label {SELF_LABEL!r} is the sampler's own process: name the group otherwise"
            )
        for label, spec in groups.items():
            if isinstance(spec, str) and not spec.strip():
                raise ValueError(f"group {label!r}: the pattern is empty; give a name or pids")
        self.interval_s = interval_s
        self.children = children
        self._groups = {
            label: spec if isinstance(spec, str) else tuple(int(p) for p in spec)
            for label, spec in groups.items()
        }
        self._own_pid = os.getpid()
        self._tracked: dict[str, dict[int, _Tracked]] = {}
        self._series: dict[str, dict[str, list[float]]] = {
            label: {"t_s": [], "cpu_pct": [], "rss_mb": []} for label in (*self._groups, SELF_LABEL)
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._last = 0.0
        self._psutil: Any = None
        self._gone: tuple[type[BaseException], ...] = ()  # psutil's "it is gone" errors
        self.started_at_s = float("nan")
        """``time.time()`` when sampling started; ``t_s`` counts from there."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Take the baseline and start the sampling thread.

        Raises:
            RuntimeError: If it runs already.
            ModuleNotFoundError: Without psutil (``pip install batterytwin[fleet]``).
        """
        if self._thread is not None:
            raise RuntimeError("the CPU sampler is running already")
        import psutil

        self._psutil = psutil
        self._gone = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)
        self.started_at_s = time.time()
        self._t0 = self._last = time.monotonic()
        self._sample(record=False)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample and stop the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._sample(record=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def samples(self) -> dict[str, dict[str, list[float]]]:
        """Per label, ``{"t_s": [...], "cpu_pct": [...], "rss_mb": [...]}`` (copies).

        ``t_s`` is the end of each sample's interval, in seconds after :meth:`start`;
        ``cpu_pct`` the group's CPU over the interval (100 = one core); ``rss_mb`` the
        group's resident memory at its end, in MiB.
        """
        with self._lock:
            return {
                label: {key: list(values) for key, values in series.items()}
                for label, series in self._series.items()
            }

    # ------------------------------------------------------------------ sampling
    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample(record=True)
            except Exception:  # a sampler that dies silently would leave holes in the report
                _log.exception("CPU sample failed; sampling goes on")

    def _sample(self, *, record: bool) -> None:
        now = time.monotonic()
        wall_s = now - self._last
        members = self._members()
        rows: dict[str, tuple[float, float]] = {}
        for label, pids in members.items():
            cpu_s, rss_bytes = self._measure(label, pids, since=self._last)
            rows[label] = (100.0 * cpu_s / wall_s if wall_s > 0 else 0.0, rss_bytes / _MIB)
        self._last = now
        if not record:
            return
        with self._lock:
            for label, (cpu_pct, rss_mb) in rows.items():
                series = self._series[label]
                series["t_s"].append(round(now - self._t0, 3))
                series["cpu_pct"].append(cpu_pct)
                series["rss_mb"].append(rss_mb)

    def _members(self) -> dict[str, set[int]]:
        """The pids of every group now (patterns looked up again, children added)."""
        members: dict[str, set[int]] = {label: set() for label in self._groups}
        patterns = {label: spec for label, spec in self._groups.items() if isinstance(spec, str)}
        if patterns:
            for process in self._psutil.process_iter(["pid", "name", "cmdline"]):
                info = process.info
                if info["pid"] == self._own_pid:
                    continue
                name = info.get("name") or ""
                cmdline = " ".join(info.get("cmdline") or ())
                for label, pattern in patterns.items():
                    if pattern in name or pattern in cmdline:
                        members[label].add(int(info["pid"]))
        for label, spec in self._groups.items():
            if not isinstance(spec, str):
                members[label].update(spec)
        if self.children:
            for pids in members.values():
                for pid in list(pids):
                    pids.update(self._descendants(pid))
        for pids in members.values():
            pids.discard(self._own_pid)
        members[SELF_LABEL] = {self._own_pid}
        return members

    def _measure(self, label: str, pids: set[int], *, since: float) -> tuple[float, float]:
        """CPU seconds the group used since the last sample, and its RSS in bytes."""
        tracked = self._tracked.setdefault(label, {})
        for pid in set(tracked) - pids:
            del tracked[pid]
        cpu_s = 0.0
        rss = 0.0
        for pid in pids:
            try:
                entry = tracked.get(pid)
                if entry is None:
                    entry = tracked[pid] = self._track(pid, since=since)
                with entry.process.oneshot():
                    times = entry.process.cpu_times()
                    rss += entry.process.memory_info().rss
                total = times.user + times.system
                cpu_s += max(total - entry.cpu_s, 0.0)
                entry.cpu_s = total
            except self._gone:
                tracked.pop(pid, None)
        return cpu_s, rss

    def _track(self, pid: int, *, since: float) -> _Tracked:
        """Start following ``pid``.

        A process born since the last sample used all of its CPU time within this
        interval, so its baseline is zero; one that was there already (seen now for the
        first time) gives only a baseline.
        """
        process = self._psutil.Process(pid)
        last_sample_at_s = self.started_at_s + (since - self._t0)
        if process.create_time() >= last_sample_at_s:
            return _Tracked(process, 0.0)
        times = process.cpu_times()
        return _Tracked(process, times.user + times.system)

    def _descendants(self, pid: int) -> list[int]:
        try:
            return [c.pid for c in self._psutil.Process(pid).children(recursive=True)]
        except self._gone:
            return []
