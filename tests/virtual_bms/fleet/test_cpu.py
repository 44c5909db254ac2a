"""CpuSampler against real child processes: busy ones, idle ones, late ones, vanished ones.

The machine may be shared with other work, so a busy child need not get a whole core: the
checks compare the sampled CPU with what the kernel says the process used, and busy with
idle, rather than expecting 100 %.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from virtual_bms.fleet.cpu import SELF_LABEL, CpuSampler

BUSY = "while True: pass"
IDLE = "import time; time.sleep(60)"
INTERVAL_S = 0.2


def _python(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children started by a test, killed at its end whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _mean_after_first(values: list[float]) -> float:
    return statistics.fmean(values[1:]) if len(values) > 1 else 0.0


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _integral_s(series: dict[str, list[float]]) -> float:
    """CPU seconds the samples add up to (percent of a core times each interval)."""
    total, previous = 0.0, 0.0
    for t_s, cpu_pct in zip(series["t_s"], series["cpu_pct"], strict=True):
        total += cpu_pct / 100.0 * (t_s - previous)
        previous = t_s
    return total


def test_a_busy_child_shows_about_one_core_and_an_idle_one_nothing(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    busy, idle = _python(BUSY), _python(IDLE)
    processes += [busy, idle]
    sampler = CpuSampler({"busy": [busy.pid], "idle": [idle.pid]}, interval_s=INTERVAL_S)
    before_s = _cpu_s(busy.pid)
    with sampler:
        time.sleep(1.5)
    used_s = _cpu_s(busy.pid) - before_s
    samples = sampler.samples()
    assert set(samples) == {"busy", "idle", SELF_LABEL}
    assert len(samples["busy"]["t_s"]) >= 5
    assert samples["busy"]["t_s"] == sorted(samples["busy"]["t_s"])
    assert _integral_s(samples["busy"]) == pytest.approx(used_s, abs=0.1)
    busy_pct = _mean_after_first(samples["busy"]["cpu_pct"])
    assert busy_pct > 25.0  # one core is 100; a shared machine gives it less
    assert max(samples["busy"]["cpu_pct"]) < 150.0  # a single thread cannot use two
    assert _mean_after_first(samples["idle"]["cpu_pct"]) < min(5.0, busy_pct / 5)
    assert min(samples["busy"]["rss_mb"]) > 1.0
    assert min(samples[SELF_LABEL]["rss_mb"]) > 10.0  # this Python process


def test_vanished_and_never_existing_pids_do_not_crash(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    gone = _python("pass")
    gone.wait(timeout=10)
    busy = _python(BUSY)
    processes.append(busy)
    groups: dict[str, list[int]] = {"gone": [gone.pid], "busy": [busy.pid], "none": [2**22 + 7]}
    with CpuSampler(groups, interval_s=INTERVAL_S) as sampler:
        time.sleep(0.7)
        busy.kill()  # vanishes while being sampled
        busy.wait(timeout=10)
        time.sleep(0.7)
    samples = sampler.samples()
    assert set(samples["gone"]["cpu_pct"]) == {0.0}
    assert set(samples["none"]["rss_mb"]) == {0.0}
    cpu = samples["busy"]["cpu_pct"]
    assert max(cpu) > 25.0
    assert cpu[-1] == 0.0 and samples["busy"]["rss_mb"][-1] == 0.0


def test_a_pattern_picks_up_processes_that_start_later(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    marker = f"cpu-sampler-test-{uuid.uuid4().hex}"
    with CpuSampler({"late": marker}, interval_s=INTERVAL_S) as sampler:
        time.sleep(0.5)
        processes.append(_python(BUSY, marker))  # the marker is in its command line
        time.sleep(1.2)
    cpu = sampler.samples()["late"]["cpu_pct"]
    assert cpu[0] == 0.0  # before it started
    assert max(cpu) > 25.0


def test_children_count_when_asked(processes: list[subprocess.Popen[bytes]]) -> None:
    # The parent sleeps; its child (started through the parent) burns a core.
    parent_code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {BUSY!r}])\n"
        "try:\n    time.sleep(60)\nfinally:\n    child.kill()\n"
    )
    parent = _python(parent_code)
    processes.append(parent)
    time.sleep(0.3)  # let it start its child
    groups = {"tree": [parent.pid]}
    with (
        CpuSampler(groups, interval_s=INTERVAL_S, children=True) as with_children,
        CpuSampler(groups, interval_s=INTERVAL_S) as parent_only,
    ):
        time.sleep(1.2)
    import psutil

    for child in psutil.Process(parent.pid).children(recursive=True):
        child.kill()
    tree_pct = _mean_after_first(with_children.samples()["tree"]["cpu_pct"])
    assert tree_pct > 25.0
    assert _mean_after_first(parent_only.samples()["tree"]["cpu_pct"]) < min(5.0, tree_pct / 5)


@pytest.mark.parametrize(
    ("groups", "interval_s", "message"),
    [
        ({}, 0.0, "interval_s must be > 0"),
        ({SELF_LABEL: [1]}, 1.0, "own process"),
        ({"db": " "}, 1.0, "pattern is empty"),
    ],
)
def test_bad_arguments_say_what_to_do(
    groups: dict[str, list[int] | str], interval_s: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        CpuSampler(groups, interval_s=interval_s)


def test_starting_twice_is_refused_and_stopping_twice_is_fine() -> None:
    sampler = CpuSampler({}, interval_s=INTERVAL_S)
    sampler.start()
    with pytest.raises(RuntimeError, match="running already"):
        sampler.start()
    sampler.stop()
    sampler.stop()
    assert len(sampler.samples()[SELF_LABEL]["t_s"]) == 1  # the last sample at stop
