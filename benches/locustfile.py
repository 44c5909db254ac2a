"""Locust load test: every Locust user is one virtual BMS publishing MQTT telemetry.

Each user takes a device's credentials, connects to the broker over MQTT 3.1.1 (the lean
blocking client, :class:`~virtual_bms.fleet.mqtt_blocking.BlockingConnection`: plain
sockets, which Locust's gevent makes cooperative), subscribes to its ``commands`` topic,
and then publishes the telemetry of its own cells every ``--fleet-period-s`` (3.33 s, i.e.
0.3 Hz) with QoS 1 and its own increasing ``seq``, as the wire contract says
(docs/wire_contract.md). The cells come from one vectorised
:class:`~virtual_bms.fleet.population.FleetPopulation` per Locust process, stepped once a
second. A user keeps every message until the broker acknowledges it: after a lost
connection it reconnects with backoff and sends what is unacknowledged again, in seq order
(store-and-forward; the cloud stores a ``(device, seq)`` once). Commands are answered with
``ok`` acks.

Locust's statistics (request type ``MQTT``):

* ``telemetry publish``: response time = publish -> PUBACK (of the last send), length =
  payload bytes; failures: no PUBACK within ``--fleet-ack-timeout-s`` (the connection is
  then dropped and re-made), a connection lost with the message in flight, a message
  dropped because the outbox was full (1,000 messages);
* ``connect``: CONNECT -> CONNACK (and SUBACK); failures: refused, timed out, bad password.

Provision the devices and their credentials first (lines ``name,password``; a header line
``name,password``, blank lines and ``#`` comments are skipped)::

    batterytwin cloud device add-many --prefix fleet- --count 1000 --out creds.csv

Run it on one machine (one Locust process uses at most one core; in a trial here one
process held 2,000 users at 0.3 Hz against a local Mosquitto without failures)::

    ulimit -n 65536    # one socket per user, in every process, and in the broker's too
    LOCUST_FLEET_CREDENTIALS=creds.csv locust -f benches/locustfile.py --headless \\
        -u 1000 -r 100 -t 10m --host mqtt://127.0.0.1:1883 --csv out/fleet

On every core of the machine: add ``--processes -1`` (or ``--processes N``). Over several
machines: ``locust -f benches/locustfile.py --master --expect-workers 8 ...`` on one, and
``locust -f benches/locustfile.py --worker --master-host MASTER [--processes 4]`` on each
of the others, with the credentials file at the same path on every worker machine (the
master's options are sent to the workers). Start every worker before the test starts.

Which device a user gets: Locust process (worker) ``w`` of ``W`` gives its ``k``-th user
line ``w + k * W`` of the file, so no two users anywhere share a device and ``-u N`` uses
the first ``N`` lines when Locust spreads the users evenly. ``W`` is counted by the master
when the test starts (or set ``--fleet-workers``); a worker that connects later would
reuse lines and is refused. The file needs a line per user, plus up to ``W - 1`` when the
users do not divide evenly over the workers. A user that stops gives its line back to the
next user of its process.

Options (each also an environment variable): ``--fleet-credentials``
(``LOCUST_FLEET_CREDENTIALS``, required), ``--fleet-period-s`` (``LOCUST_FLEET_PERIOD_S``,
3.33), ``--fleet-cells`` (``LOCUST_FLEET_CELLS``, 16: cells per device, as provisioned),
``--fleet-pillar`` (``LOCUST_FLEET_PILLAR``, ``2``), ``--fleet-topic-root``
(``LOCUST_FLEET_TOPIC_ROOT``, ``batterytwin/v1``), ``--fleet-ack-timeout-s``
(``LOCUST_FLEET_ACK_TIMEOUT_S``, 10), ``--fleet-workers`` (``LOCUST_FLEET_WORKERS``).
Sequence numbers start at the current time in milliseconds, so a device that runs again
later continues above its earlier ones.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import heapq
import logging
import os
import random
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import gevent
from locust import User, constant, events, task
from locust.runners import MasterRunner, WorkerRunner


@contextlib.contextmanager
def _packages_not_benches() -> Iterator[None]:
    """Locust imports this file with its folder first on ``sys.path``, where
    ``benches/cloud.py`` and ``benches/twin.py`` would stand in for the ``cloud`` and
    ``twin`` packages: import the project's modules without that folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if os.path.abspath(p or os.curdir) != here]
    try:
        yield
    finally:
        sys.path[:] = saved  # Locust takes its entry off again itself


with _packages_not_benches():
    from cloud.mqtt.contract import TOPIC_ROOT, Channel, ContractError, Topics, parse_command
    from virtual_bms.fleet.mqtt_blocking import BlockingConnection
    from virtual_bms.fleet.mqtt_codec import MqttProtocolError, Puback, Publish, Will
    from virtual_bms.fleet.population import FleetPopulation, PopulationConfig

_log = logging.getLogger("batterytwin.locust")

REQUEST_TYPE = "MQTT"
PUBLISH_NAME = "telemetry publish"
CONNECT_NAME = "connect"
_MQTT_PORT = 1883
_KEEPALIVE_S = 60
_CONNECT_TIMEOUT_S = 10.0
_INFLIGHT_WINDOW = 20  # unacknowledged publishes per device on the wire
_OUTBOX_LIMIT = 1000  # messages a device keeps while offline: 55 min at 0.3 Hz
_BACKOFF_S = (0.5, 10.0)  # first and longest wait before reconnecting
_STEP_S = 1.0  # the twin is stepped once a second
_PILLARS: dict[str, Literal["1", "2", "mix"]] = {"1": "1", "2": "2", "mix": "mix"}


# ----------------------------------------------------------------------------- settings
def _add_options(parser: Any, **_kwargs: Any) -> None:
    options: list[tuple[str, str, Any, type, str]] = [
        ("--fleet-credentials", "LOCUST_FLEET_CREDENTIALS", "", str, "CSV of name,password"),
        ("--fleet-period-s", "LOCUST_FLEET_PERIOD_S", 3.33, float, "telemetry period (s)"),
        ("--fleet-cells", "LOCUST_FLEET_CELLS", 16, int, "cells per device"),
        ("--fleet-pillar", "LOCUST_FLEET_PILLAR", "2", str, "1, 2 or mix"),
        ("--fleet-topic-root", "LOCUST_FLEET_TOPIC_ROOT", TOPIC_ROOT, str, "topic root"),
        ("--fleet-ack-timeout-s", "LOCUST_FLEET_ACK_TIMEOUT_S", 10.0, float, "PUBACK wait (s)"),
        ("--fleet-workers", "LOCUST_FLEET_WORKERS", 0, int, "Locust processes (0: count)"),
    ]
    for flag, env_var, default, kind, text in options:
        parser.add_argument(
            flag, type=kind, default=default, env_var=env_var, help=text, include_in_web_ui=False
        )


@dataclass(frozen=True)
class FleetUserSettings:
    """The fleet options of one Locust process, checked."""

    credentials: Path
    period_s: float
    cells: int
    pillar: Literal["1", "2", "mix"]
    topics: Topics
    ack_timeout_s: float

    @classmethod
    def from_options(cls, options: Any) -> FleetUserSettings:
        """Read Locust's parsed options.

        Raises:
            ValueError: For a missing credentials file or a bad value, saying which option.
        """
        path = Path(options.fleet_credentials or "")
        if not options.fleet_credentials or not path.is_file():
            raise ValueError(
                f"--fleet-credentials / LOCUST_FLEET_CREDENTIALS must name a CSV of "
                f"name,password lines, got {options.fleet_credentials!r} (make one with "
                "batterytwin cloud device add-many --out creds.csv)"
            )
        if not options.fleet_period_s > 0 or not options.fleet_ack_timeout_s > 0:
            raise ValueError(
                f"--fleet-period-s and --fleet-ack-timeout-s must be > 0, got "
                f"{options.fleet_period_s} and {options.fleet_ack_timeout_s}"
            )
        if options.fleet_pillar not in _PILLARS:
            raise ValueError(f"--fleet-pillar must be 1, 2 or mix, got {options.fleet_pillar!r}")
        return cls(
            credentials=path,
            period_s=float(options.fleet_period_s),
            cells=int(options.fleet_cells),
            pillar=_PILLARS[options.fleet_pillar],
            topics=Topics(root=options.fleet_topic_root),
            ack_timeout_s=float(options.fleet_ack_timeout_s),
        )


def read_credentials(path: Path) -> list[tuple[str, str]]:
    """``(name, password)`` per line of ``path``.

    Raises:
        ValueError: For a line that is not ``name,password``, naming the line.
    """
    out: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8") as lines:
        for number, row in enumerate(csv.reader(lines), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if [c.strip().lower() for c in row] == ["name", "password"]:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1]:
                # the line holds a password: say what is wrong with it, not what it says
                raise ValueError(
                    f"{path}:{number}: expected name,password (two fields, neither empty), "
                    f"got {len(row)} field(s)"
                )
            out.append((row[0].strip(), row[1]))
    return out


def broker_address(host: str | None) -> tuple[str, int]:
    """``(host, port)`` of Locust's ``--host``, which must be ``mqtt://host[:port]``.

    Raises:
        ValueError: For another scheme or no host.
    """
    parts = urlsplit(host or "")
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(
            f"--host must be mqtt://host[:port] (plain MQTT; TLS is not supported here), "
            f"got {host!r}"
        )
    return parts.hostname, parts.port or _MQTT_PORT


def _count_workers(environment: Any, **_kwargs: Any) -> None:
    """On the master: tell the workers how many there are (sent with the spawn message)."""
    runner, options = environment.runner, environment.parsed_options
    if isinstance(runner, MasterRunner) and options is not None and not options.fleet_workers:
        options.fleet_workers = max(runner.worker_index_max, 1)


# Locust calls these in every process (EventHook.add_listener has no annotations).
events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_count_workers)  # type: ignore[no-untyped-call]


# ----------------------------------------------------------------------- process state
class _ProcessFleet:
    """What the users of one Locust process share: the credentials, slots, the twin.

    A user takes the lowest free slot ``k``; its device is line ``worker + k * workers``.
    The twin grows in chunks as users arrive and is stepped by one greenlet.
    """

    def __init__(
        self, settings: FleetUserSettings, *, worker: int, workers: int, expected_users: int
    ) -> None:
        if not 0 <= worker < workers:
            raise ValueError(
                f"this Locust worker has index {worker} but the test started with {workers} "
                "worker(s): start every worker before the test (or set --fleet-workers)"
            )
        self.settings = settings
        self.credentials = read_credentials(settings.credentials)
        self.worker, self.workers = worker, workers
        self._expected = max(expected_users, 1)
        self._free: list[int] = []
        self._next_slot = 0
        self._chunks: list[FleetPopulation] = []
        self._chunk_starts: list[int] = []
        self._capacity = 0
        self.users = 0
        self._stepper = gevent.spawn(self._step_forever)

    def acquire(self) -> tuple[int, str, str]:
        """A free slot and its device's ``(slot, name, password)``.

        Raises:
            ValueError: If the credentials file has no line for it.
        """
        slot = heapq.heappop(self._free) if self._free else self._next_slot
        line = self.worker + slot * self.workers
        if line >= len(self.credentials):
            heapq.heappush(self._free, slot)
            raise ValueError(
                f"{self.settings.credentials} has {len(self.credentials)} devices, but user "
                f"{slot + 1} of Locust process {self.worker} (of {self.workers}) needs line "
                f"{line + 1}: provision more devices or run fewer users"
            )
        self._next_slot = max(self._next_slot, slot + 1)
        while slot >= self._capacity:
            self._grow(max(self._expected - self._capacity, self._capacity, 1))
        self.users += 1
        name, password = self.credentials[line]
        return slot, name, password

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)
        self.users -= 1

    def telemetry(self, slot: int, *, seq: int, ts_s: float) -> bytes:
        chunk = bisect.bisect_right(self._chunk_starts, slot) - 1
        return self._chunks[chunk].telemetry(slot - self._chunk_starts[chunk], seq=seq, ts_s=ts_s)

    def close(self) -> None:
        self._stepper.kill(block=False)

    def _grow(self, count: int) -> None:
        config = PopulationConfig(
            count=count,
            pillar=self.settings.pillar,
            cells=self.settings.cells,
            seed=1_000_003 * self.worker + len(self._chunks),  # every process its own cells
        )
        self._chunks.append(FleetPopulation(config))
        self._chunk_starts.append(self._capacity)
        self._capacity += count

    def _step_forever(self) -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(_STEP_S)
            now = time.monotonic()
            for chunk in self._chunks:
                chunk.step(now - last)
            last = now


_FLEETS: weakref.WeakKeyDictionary[Any, _ProcessFleet] = weakref.WeakKeyDictionary()
"""The process state per Locust environment (one in practice), made by the first user."""


def _fleet_of(environment: Any) -> _ProcessFleet:
    fleet = _FLEETS.get(environment)
    if fleet is None:
        runner, options = environment.runner, environment.parsed_options
        worker, workers = 0, 1
        if isinstance(runner, WorkerRunner):
            worker = runner.worker_index
            workers = options.fleet_workers or options.expect_workers or 1
        elif options.fleet_workers:
            workers = options.fleet_workers
        fleet = _ProcessFleet(
            FleetUserSettings.from_options(options),
            worker=worker,
            workers=workers,
            expected_users=int(getattr(runner, "target_user_count", 0) or 1),
        )
        _FLEETS[environment] = fleet
    return fleet


# ------------------------------------------------------------------------ device link
class _Fire(Protocol):
    def __call__(
        self, *, name: str, response_time: float, length: int, exception: Exception | None
    ) -> None: ...


class _DeviceLink:
    """One device's MQTT session with store-and-forward: outbox, in-flight, reconnects."""

    def __init__(
        self,
        *,
        address: tuple[str, int],
        name: str,
        password: str,
        settings: FleetUserSettings,
        fire: _Fire,
    ) -> None:
        self.address = address
        self.name, self._password = name, password
        self.ack_timeout_s = settings.ack_timeout_s
        self._fire = fire
        try:
            topics = settings.topics
            self.telemetry_topic = topics.device(name, Channel.telemetry)
            self.status_topic = topics.device(name, Channel.status)
            self.acks_topic = topics.device(name, Channel.acks)
            self.commands_topic = topics.device(name, Channel.commands)
        except ContractError as error:
            raise ValueError(f"credentials: {error}") from None
        self.conn: BlockingConnection | None = None
        self.outbox: dict[int, bytes] = {}  # seq -> payload, unacknowledged, in seq order
        self._inflight: dict[int, tuple[int, float]] = {}  # packet id -> (seq, sent at)
        self._sent_up_to = -1  # the highest seq written on this connection
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_S[0]
        self.commands_answered = 0

    def add(self, seq: int, payload: bytes) -> None:
        """Queue a new message (seqs increase); the oldest unsent one goes if it is full."""
        self.outbox[seq] = payload
        if len(self.outbox) <= _OUTBOX_LIMIT:
            return
        sending = {s for s, _ in self._inflight.values()}
        oldest = next(s for s in self.outbox if s not in sending)
        dropped = self.outbox.pop(oldest)
        self._fire(
            name=PUBLISH_NAME,
            response_time=0.0,
            length=len(dropped),
            exception=OverflowError(f"{self.name}: outbox full, seq {oldest} dropped"),
        )

    def service(self, *, until: float) -> None:
        """Connect when due, send what waits, and handle what arrives, until ``until``
        (``time.monotonic()``); returns at once if that has passed."""
        while True:
            now = time.monotonic()
            if self.conn is None and now >= self._retry_at:
                self._connect()
            if self.conn is None:
                wake = min(until, self._retry_at)
                if wake > now:
                    gevent.sleep(wake - now)
            else:
                try:
                    self._send_waiting()
                    self._receive(until=until)
                except (ConnectionError, MqttProtocolError) as error:
                    self._lost(error)
            if time.monotonic() >= until:
                return

    def close(self) -> None:
        """DISCONNECT (the broker discards the will) and close."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    # -- internals -----------------------------------------------------------------------
    def _connect(self) -> None:
        started = time.monotonic()
        host, port = self.address
        try:
            conn = BlockingConnection.connect(
                host,
                port,
                client_id=self.name,
                username=self.name,
                password=self._password,
                keepalive_s=_KEEPALIVE_S,
                clean_session=False,  # commands sent while it is away wait for it
                will=Will(self.status_topic, b'{"online":false,"ts":0}', qos=1, retain=True),
                timeout_s=_CONNECT_TIMEOUT_S,
            )
            try:
                if not conn.session_present:
                    conn.subscribe([(self.commands_topic, 1)], timeout_s=_CONNECT_TIMEOUT_S)
                status = f'{{"online":true,"ts":{time.time():.3f}}}'.encode()
                conn.publish(self.status_topic, status, qos=1, retain=True)
            except BaseException:
                conn.close()
                raise
        except (OSError, MqttProtocolError) as error:  # ConnectionError, TimeoutError, refusals
            self._fire(
                name=CONNECT_NAME,
                response_time=(time.monotonic() - started) * 1000.0,
                length=0,
                exception=error,
            )
            self._retry_at = time.monotonic() + self._backoff_s * (0.5 + random.random())
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_S[1])
            return
        self._fire(
            name=CONNECT_NAME,
            response_time=(time.monotonic() - started) * 1000.0,
            length=0,
            exception=None,
        )
        self.conn = conn
        self._backoff_s = _BACKOFF_S[0]
        self._sent_up_to = -1

    def _send_waiting(self) -> None:
        """Write unsent outbox messages, in seq order, up to the in-flight window."""
        conn = self.conn
        assert conn is not None
        for seq, payload in self.outbox.items():
            if len(self._inflight) >= _INFLIGHT_WINDOW:
                return
            if seq <= self._sent_up_to:
                continue
            sent_at = time.monotonic()
            packet_id = conn.publish(self.telemetry_topic, payload, qos=1)
            assert packet_id is not None
            self._inflight[packet_id] = (seq, sent_at)
            self._sent_up_to = seq

    def _receive(self, *, until: float) -> None:
        """Read until ``until``, a PUBACK that frees the window, or an overdue PUBACK."""
        conn = self.conn
        assert conn is not None
        while True:
            now = time.monotonic()
            deadline = until
            if self._inflight:
                oldest = min(sent for _, sent in self._inflight.values())
                if now - oldest > self.ack_timeout_s:
                    raise ConnectionError(f"no PUBACK within {self.ack_timeout_s:g} s")
                deadline = min(deadline, oldest + self.ack_timeout_s)
            if now - conn.last_send_s >= _KEEPALIVE_S / 2:
                conn.ping()
            deadline = min(deadline, conn.last_send_s + _KEEPALIVE_S / 2)
            freed = False
            for packet in conn.poll(max(deadline - now, 0.0)):
                if type(packet) is Puback:
                    freed |= self._acked(packet.packet_id)
                elif type(packet) is Publish:
                    self._answer(conn, packet.payload)
            if freed and len(self.outbox) > len(self._inflight):
                return  # room in the window for what waits
            if time.monotonic() >= until:
                return

    def _acked(self, packet_id: int) -> bool:
        entry = self._inflight.pop(packet_id, None)
        if entry is None:
            return False  # the status message or a command ack
        seq, sent_at = entry
        payload = self.outbox.pop(seq, b"")
        self._fire(
            name=PUBLISH_NAME,
            response_time=(time.monotonic() - sent_at) * 1000.0,
            length=len(payload),
            exception=None,
        )
        return True

    def _answer(self, conn: BlockingConnection, payload: bytes) -> None:
        try:
            command = parse_command(payload)
        except ContractError as error:
            _log.warning("%s: bad command: %s", self.name, error)
            return
        ack = f'{{"command_id":{command.command_id},"status":"ok","detail":"locust BMS"}}'
        conn.publish(self.acks_topic, ack.encode(), qos=1)
        self.commands_answered += 1

    def _lost(self, error: Exception) -> None:
        """The connection broke (or a PUBACK is overdue): fail what was in flight, drop the
        connection, and reconnect after a backoff; the outbox keeps every message."""
        for seq, sent_at in self._inflight.values():
            self._fire(
                name=PUBLISH_NAME,
                response_time=(time.monotonic() - sent_at) * 1000.0,
                length=len(self.outbox.get(seq, b"")),
                exception=error,
            )
        self._inflight.clear()
        self._sent_up_to = -1
        self.close()
        self._retry_at = time.monotonic() + self._backoff_s * (0.5 + random.random())
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_S[1])


# ------------------------------------------------------------------------------- user
class VirtualBmsUser(User):
    """One virtual BMS: a device's MQTT session publishing telemetry every period."""

    wait_time = constant(0)  # the task paces itself, waiting on its socket
    _fleet: _ProcessFleet | None = None
    _slot = -1

    def on_start(self) -> None:
        fleet = _fleet_of(self.environment)
        settings = fleet.settings
        address = broker_address(self.host or self.environment.host)
        slot, name, password = fleet.acquire()
        try:
            self.device = name
            self._link = _DeviceLink(
                address=address, name=name, password=password, settings=settings, fire=self._fire
            )
        except BaseException:
            fleet.release(slot)
            raise
        self._fleet, self._slot = fleet, slot
        self._period_s = settings.period_s
        self._next_seq = time.time_ns() // 1_000_000  # only grows, across runs too
        self._next_due = time.monotonic() + random.uniform(0.0, settings.period_s)
        self._link.service(until=time.monotonic())  # connect now

    @task
    def sample(self) -> None:
        """Generate the message that is due, then keep the link busy until the next one."""
        now = time.monotonic()
        if now >= self._next_due:
            fleet = self._fleet
            assert fleet is not None
            seq = self._next_seq
            self._next_seq += 1
            self._link.add(seq, fleet.telemetry(self._slot, seq=seq, ts_s=time.time()))
            self._next_due += self._period_s
            if self._next_due <= now:  # fell behind (a slow connect): skip, do not burst
                self._next_due = now + self._period_s
        self._link.service(until=self._next_due)

    def on_stop(self) -> None:
        fleet, self._fleet = self._fleet, None
        if fleet is None:
            return  # on_start failed before taking a device
        self._link.close()
        fleet.release(self._slot)
        if fleet.users == 0:
            fleet.close()
            _FLEETS.pop(self.environment, None)

    def _fire(
        self, *, name: str, response_time: float, length: int, exception: Exception | None
    ) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exception,
            context={"device": self.device},
        )
