"""Ingest worker processes: N ingests sharing the stream, kept running by a small supervisor.

``batterytwin cloud ingest --workers N`` runs :class:`IngestSupervisor` in its own process
and N worker processes (the same command with a hidden ``--worker-index k``), each running
:func:`run_worker`: one :class:`~cloud.mqtt.ingest.IngestService` in an MQTT shared
subscription group, under its own fixed client id (:func:`worker_client_id`).

Why a worker must come back under the same client id: Mosquitto 2.0 hands each message of
a shared subscription to one member of the group, offline members with a persistent
session included, and keeps what it gave a member (in flight and not yet acknowledged, or
queued) in that member's session. Nothing is given to another member when one dies; it
is delivered when the same client id reconnects. So the supervisor restarts a dead worker
at once, with the same index, and a worker that is no longer wanted is retired
(:meth:`~cloud.mqtt.ingest.IngestService.retire`) rather than just left stopped.

A broker restart is the exception: Mosquitto 2.0.11 restores the members' sessions but
not their ``$share/...`` subscriptions, so what devices publish between the restart and
the workers' new SUBSCRIBE would be acknowledged and dropped. So the supervisor also runs
a guard (:func:`guard_client_id`, ``IngestConfig.guard_window_s``): one more process with
a plain persistent subscription, which the broker does restore, storing what arrives in
the first :data:`GUARD_WINDOW_S` after each of its connections and only acknowledging
the rest. A single ingest (a plain subscription) needs no guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cloud.mqtt.ingest import IngestConfig, IngestCounters, IngestError, IngestService

if TYPE_CHECKING:
    from cloud.settings import CloudSettings

__all__ = [
    "DEFAULT_GROUP",
    "GUARD_INDEX",
    "GUARD_WINDOW_S",
    "INGEST_CLIENT_PREFIX",
    "IngestSupervisor",
    "SupervisorConfig",
    "format_summary",
    "guard_client_id",
    "ingest_config",
    "retire_client",
    "run_worker",
    "worker_client_id",
]

_log = logging.getLogger(__name__)

INGEST_CLIENT_PREFIX = "batterytwin-ingest"
"""The ingest's client id alone, and the prefix of each shared-group worker's own."""
DEFAULT_GROUP = "batterytwin-ingest"
"""The shared subscription group of ``cloud ingest`` when none is named."""
GUARD_INDEX = -1
"""The supervisor's index of the guard process (workers are 0..9999)."""
GUARD_WINDOW_S = 75.0
"""How long a guard stores after each connection: more than the workers' longest
reconnect delay (30 s) and their SUBSCRIBE, so the group is back before the guard stops."""
_WATCH_S = 0.1  # how often a worker looks at its counters and its supervisor
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_MAX_INDEX = 9999  # keeps "batterytwin-ingest-9999" within MQTT 3.1.1's 23 characters


def worker_client_id(index: int, *, shared: bool) -> str:
    """The MQTT client id of worker ``index``: fixed, so a restart resumes its session.

    A lone ingest (not in a shared group) keeps the id the API's in-process ingest uses,
    so moving the ingest out of the API keeps its session and what is queued in it.

    Raises:
        ValueError: If ``index`` is outside 0..9999.
    """
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"worker index must be 0..{_MAX_INDEX} (client ids <= 23 chars)")
    return f"{INGEST_CLIENT_PREFIX}-{index}" if shared else INGEST_CLIENT_PREFIX


def guard_client_id(first_index: int) -> str:
    """The MQTT client id of the guard run beside workers ``first_index``.. (one per
    machine; several guards only store the same messages twice, which the seq claim drops).

    Raises:
        ValueError: If ``first_index`` is outside 0..9999.
    """
    if not 0 <= first_index <= _MAX_INDEX:
        raise ValueError(f"worker index must be 0..{_MAX_INDEX} (client ids <= 23 chars)")
    return f"{INGEST_CLIENT_PREFIX}-g{first_index}"


def format_summary(
    counters: IngestCounters, *, label: str, rate_msgs_per_s: float | None = None
) -> str:
    """One line of what an ingest has done since it started (``rate`` over the last period)."""
    c = counters
    lag = "-" if c.last_lag_s is None else f"{c.last_lag_s:.2f} s"
    batch = "-" if c.last_batch_s is None else f"{1000 * c.last_batch_s:.1f} ms"
    rate = "" if rate_msgs_per_s is None else f"{rate_msgs_per_s:.1f} msg/s, "
    return (
        f"{label}: {c.messages_in} in, {c.stored} stored, {c.duplicates} duplicates, "
        f"{c.dead_lettered} dead-lettered, {c.status_updates + c.acks + c.events} other, "
        f"{c.measurement_rows} rows, {c.batches} batches, {c.reconnects} reconnects, "
        f"{c.db_retries} db retries; {rate}lag {lag}, last batch {batch}"
        + (f"; {c.guard_passed} passed outside the guard window" if c.guard_passed else "")
    )


def run_worker(
    *,
    database_url: str,
    config: IngestConfig,
    summary_every_s: float = 10.0,
    supervisor_pid: int | None = None,
) -> IngestCounters:
    """Run one ingest until SIGINT or SIGTERM (or its supervisor is gone); its counters.

    Logs ``first messages done`` once the first batch is stored, and a summary line
    every ``summary_every_s`` and at the end.

    Args:
        database_url: The database (already migrated).
        config: The ingest, with its own ``client_id`` and, in a group, ``shared_group``.
        summary_every_s: Seconds between summary lines.
        supervisor_pid: The supervisor's pid: the worker stops when its parent is no
            longer that process (a worker left behind would hold its client id).

    Raises:
        cloud.mqtt.ingest.IngestError: If the broker refuses the subscriptions.
    """
    from cloud.db import make_engine

    engine = make_engine(database_url)
    try:
        service = IngestService(engine=engine, config=config)
        asyncio.run(_work(service, summary_every_s=summary_every_s, supervisor_pid=supervisor_pid))
        return service.counters
    finally:
        engine.dispose()


async def _work(
    service: IngestService, *, summary_every_s: float, supervisor_pid: int | None
) -> None:
    label = f"ingest {service.config.client_id}"
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, service.stop)
    run = asyncio.create_task(service.run(), name="mqtt-ingest")
    counters = service.counters
    last_at, last_done = time.monotonic(), 0
    first_done = False
    try:
        while not run.done():
            await asyncio.wait({run}, timeout=_WATCH_S)
            if not first_done and counters.processed:
                first_done = True
                _log.info("%s: first messages done (%d)", label, counters.processed)
            if supervisor_pid is not None and os.getppid() != supervisor_pid:
                _log.warning("%s: the supervisor (pid %d) is gone; stopping", label, supervisor_pid)
                service.stop()
            now = time.monotonic()
            if now - last_at >= summary_every_s:
                rate = (counters.processed - last_done) / (now - last_at)
                _log.info(format_summary(counters, label=label, rate_msgs_per_s=rate))
                last_at, last_done = now, counters.processed
        await run  # the ingest's error, if it ended with one
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
    rate = (counters.processed - last_done) / max(time.monotonic() - last_at, 1e-9)
    _log.info(format_summary(counters, label=f"{label} stopped", rate_msgs_per_s=rate))


class SupervisorConfig(BaseModel):
    """How the supervisor restarts and stops its workers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_uptime_s: float = Field(default=5.0, ge=0)
    """A worker that dies sooner than this after starting is crash-looping: back off."""
    backoff_s: float = Field(default=0.5, gt=0)
    """First delay before restarting a crash-looping worker; doubles each time."""
    backoff_max_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=30.0, gt=0)
    """How long workers get to store the batch in hand and disconnect before SIGKILL."""
    poll_s: float = Field(default=0.1, gt=0)
    """How often the supervisor looks for dead workers."""


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    delay_s: float = 0.0
    restarts: int = 0


@dataclass
class IngestSupervisor:
    """Keeps one process per worker index running until SIGINT or SIGTERM.

    A worker that dies is started again with the same index (so the same client id and
    session): at once after a long run, with a doubling delay when it keeps dying within
    ``min_uptime_s``. On SIGINT or SIGTERM every worker gets SIGTERM, then SIGKILL after
    ``stop_timeout_s``.

    Args:
        command: The command line of worker ``index``.
        indices: The worker indices to run.
        env: The workers' environment (default: the supervisor's).
        config: Restart and stop timing.
    """

    command: Callable[[int], Sequence[str]]
    indices: Sequence[int]
    env: Mapping[str, str] | None = None
    config: SupervisorConfig = field(default_factory=SupervisorConfig)
    _workers: list[_Worker] = field(init=False, default_factory=list)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)

    @property
    def restarts(self) -> dict[int, int]:
        """Restarts so far, per worker index."""
        return {w.index: w.restarts for w in self._workers}

    def stop(self) -> None:
        """Ask :meth:`run` to stop the workers and return (safe from a signal handler)."""
        self._stopping.set()

    def run(self) -> None:
        """Start the workers and keep them running until :meth:`stop`, SIGINT or SIGTERM.

        Signal handlers are installed only when called from the main thread.
        """
        self._workers = [_Worker(index) for index in self.indices]
        previous: dict[signal.Signals, _Handler] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            for worker in self._workers:
                self._start(worker)
            while not self._stopping.is_set():
                now = time.monotonic()
                for worker in self._workers:
                    if worker.process is not None and worker.process.poll() is not None:
                        self._died(worker, now=now)
                    if worker.process is None and now >= worker.restart_at:
                        if self._stopping.is_set():
                            break
                        self._start(worker)
                self._stopping.wait(self.config.poll_s)
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping.set()

    def _start(self, worker: _Worker) -> None:
        env = dict(self.env) if self.env is not None else None
        # its own process group: a Ctrl-C reaches the supervisor only, which stops the
        # workers in order (and does not mistake their exit for a crash)
        worker.process = subprocess.Popen(
            list(self.command(worker.index)), env=env, stdin=subprocess.DEVNULL, process_group=0
        )
        worker.started_at = time.monotonic()
        _log.info("started %s (pid %d)", _label(worker.index), worker.process.pid)

    def _died(self, worker: _Worker, *, now: float) -> None:
        process = worker.process
        assert process is not None
        code = process.wait()
        worker.process = None
        uptime_s = now - worker.started_at
        if uptime_s < self.config.min_uptime_s:
            worker.delay_s = min(
                max(2 * worker.delay_s, self.config.backoff_s), self.config.backoff_max_s
            )
        else:
            worker.delay_s = 0.0
        worker.restart_at = now + worker.delay_s
        worker.restarts += 1
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        _log.warning(
            "%s (pid %d) %s after %.1f s; restarting it in %.1f s under the "
            "same client id (the broker keeps its share of the messages for it)",
            _label(worker.index),
            process.pid,
            how,
            uptime_s,
            worker.delay_s,
        )

    def _stop_all(self) -> None:
        running = [w.process for w in self._workers if w.process is not None]
        for process in running:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout_s
        for process in running:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                _log.warning("ingest worker pid %d did not stop in time: killed", process.pid)
                process.kill()
                process.wait()
        for worker in self._workers:
            worker.process = None
        _log.info("ingest workers stopped")


def _label(index: int) -> str:
    return "ingest guard" if index == GUARD_INDEX else f"ingest worker {index}"


def ingest_config(
    settings: CloudSettings,
    *,
    client_id: str,
    shared_group: str | None,
    guard_window_s: float | None = None,
) -> IngestConfig:
    """The ingest of ``settings`` (broker, login, TLS) under ``client_id``.

    Raises:
        ValueError: If ``settings`` has no external broker (embedded or none).
    """
    address = settings.broker_address()
    if address is None:
        raise ValueError(
            f"the ingest workers need an external broker, but broker is {settings.broker!r}: "
            "pass --broker mqtt://host[:port] or set BATTERYTWIN_BROKER"
        )
    return IngestConfig(
        host=address[0],
        port=address[1],
        username=settings.mqtt_username,
        password=SecretStr(settings.mqtt_password) if settings.mqtt_password else None,
        client_id=client_id,
        tls=settings.mqtt_tls(),
        shared_group=shared_group,
        guard_window_s=guard_window_s,
    )


def retire_client(*, database_url: str, config: IngestConfig, idle_s: float) -> IngestCounters:
    """:meth:`IngestService.retire` for ``config.client_id``; what it stored on the way.

    Raises:
        IngestError: If the broker cannot be reached (nothing was retired).
    """
    import aiomqtt

    from cloud.db import make_engine

    engine = make_engine(database_url)
    try:
        service = IngestService(engine=engine, config=config)
        try:
            asyncio.run(service.retire(idle_s=idle_s))
        except aiomqtt.MqttError as error:
            raise IngestError(
                f"could not retire {config.client_id} at {config.host}:{config.port}: {error}"
            ) from error
        return service.counters
    finally:
        engine.dispose()
