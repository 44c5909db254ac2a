"""Scale-out ingest: workers in an MQTT shared subscription group on a private Mosquitto.

* ``cloud ingest --workers 2`` on PostgreSQL: every message stored once, both workers busy;
* one worker killed with SIGKILL in the middle of a steady QoS 1 stream: the supervisor
  restarts it under the same client id, and afterwards every ``(device, seq)`` and every
  measurement row is there exactly once (the recovery times are printed);
* what Mosquitto 2.0 does with a stopped member's share (keeps it in that member's session),
  and retiring a member for good;
* the guards: ``cloud serve --workers N`` with the in-process ingest, ``--no-ingest`` with
  the embedded broker, group names, client ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from sqlalchemy import func, select
from typer.testing import CliRunner

from cloud.cli import app as cloud_cli
from cloud.db import make_engine
from cloud.main import create_app
from cloud.migrate import upgrade
from cloud.models import Device, IngestedMessage, Measurement
from cloud.mqtt.broker import render_mosquitto_conf
from cloud.mqtt.contract import Channel, Topics
from cloud.mqtt.ingest import IngestConfig, IngestService
from cloud.mqtt.ingest_workers import guard_client_id, worker_client_id
from cloud.settings import CloudSettings
from tests.cloud.mqtt_fixtures import (
    N_CELLS,
    PG_HOST,
    PG_PORT,
    Backend,
    count,
    free_port,
    private_mosquitto,
    require,
    seed_device,
    telemetry,
    wait_until,
)

_STARTED = re.compile(r"started ingest worker (\d+) \(pid (\d+)\)")


@pytest.fixture
def broker_port(tmp_path: Path) -> Iterator[int]:
    """A private Mosquitto (anonymous, configured as the cloud renders it) for the test."""
    port = free_port()
    (tmp_path / "passwd").write_text("")
    (tmp_path / "acl").write_text("")
    conf = render_mosquitto_conf(
        password_file=tmp_path / "passwd", acl_file=tmp_path / "acl", port=port
    ).replace("allow_anonymous false", "allow_anonymous true")
    conf = "\n".join(
        line for line in conf.splitlines() if not line.startswith(("password_file", "acl_file"))
    )
    (tmp_path / "mosquitto.conf").write_text(conf + "\n")
    with private_mosquitto(tmp_path / "mosquitto.conf", port, purpose="the ingest worker tests"):
        yield port


@pytest.fixture
def postgres() -> Iterator[tuple[str, Backend]]:
    """A throw-away PostgreSQL database (migrated) and a backend to seed it; dropped after."""
    require(PG_HOST, PG_PORT, "PostgreSQL")
    run_id = uuid.uuid4().hex[:12]
    name = f"bt_workers_{run_id}"
    admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    engine = make_engine(url)
    try:
        upgrade(engine)
        yield url, Backend("postgres-private", engine, Topics(), run_id)
    finally:
        engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class _Supervisor:
    """``batterytwin cloud ingest`` as a child process; its log lines, stamped on arrival."""

    args: Sequence[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    _process: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATTERYTWIN_")}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "batterytwin", "cloud", "ingest", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env | {"PYBAMM_DISABLE_TELEMETRY": "true"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def log(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def find(self, pattern: str | re.Pattern[str], *, since: float = 0.0) -> list[re.Match[str]]:
        """Matches of ``pattern`` in the lines that arrived at or after ``since``."""
        found = (re.search(pattern, line) for t, line in list(self.lines) if t >= since)
        return [m for m in found if m is not None]

    def first(self, pattern: str, *, since: float = 0.0) -> tuple[float, re.Match[str]] | None:
        """``(arrival time, match)`` of the first line matching ``pattern`` since ``since``."""
        for t, line in list(self.lines):
            if t >= since and (m := re.search(pattern, line)) is not None:
                return t, m
        return None

    def pids(self) -> dict[int, int]:
        """The newest pid of each worker index."""
        return {int(m[1]): int(m[2]) for m in self.find(_STARTED)}

    def wait_for(self, pattern: str, *, timeout_s: float = 20.0, since: float = 0.0) -> float:
        """Arrival time of the first line matching ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while (hit := self.first(pattern, since=since)) is None:
            assert self._process is not None
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n{self.log()}")
            time.sleep(0.02)
        return hit[0]

    def stop(self) -> int:
        """SIGTERM, as a service manager does; the exit code."""
        assert self._process is not None and self._reader is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            code = self._process.wait(timeout=30)
        finally:
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
            self._reader.join(timeout=5)
            assert self._process.stderr is not None
            self._process.stderr.close()
        return code


@contextlib.contextmanager
def _supervisor(*args: str) -> Iterator[_Supervisor]:
    running = _Supervisor(args)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _wait_subscribed(supervisor: _Supervisor, *, workers: int) -> None:
    """Until ``workers`` ingests have subscribed in the default shared group."""
    subscribed = r"MQTT ingest subscribed to \$share/batterytwin-ingest/batterytwin/v1/"
    deadline = time.monotonic() + 20
    while len(supervisor.find(subscribed)) < workers:
        assert time.monotonic() < deadline, f"not {workers} subscribed:\n{supervisor.log()}"
        time.sleep(0.05)


def _publish(
    port: int,
    messages: Sequence[tuple[str, bytes]],
    *,
    rate_per_s: float | None = None,
    sent_at: list[float] | None = None,
) -> None:
    """Publish with QoS 1 from one paho client, at ``rate_per_s`` (None: as fast as it goes),
    and return once the broker has acknowledged every message; ``sent_at`` gets the wall
    clock time of each publish."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        started = time.monotonic()
        sent = []
        for i, (topic, payload) in enumerate(messages):
            if rate_per_s is not None and (ahead_s := started + i / rate_per_s - time.monotonic()):
                time.sleep(max(ahead_s, 0.0))
            sent.append(client.publish(topic, payload, qos=1))
            if sent_at is not None:
                sent_at.append(time.time())
        for info in sent:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _stream(backend: Backend, devices: Sequence[str], per_device: int) -> list[tuple[str, bytes]]:
    """``per_device`` telemetry messages of each device, interleaved."""
    topics = {name: backend.topic(name, Channel.telemetry) for name in devices}
    return [(topics[name], telemetry(seq)) for seq in range(per_device) for name in devices]


def _final(supervisor: _Supervisor, client_id: str) -> dict[str, int]:
    """The counters in the last 'stopped' summaries of ``client_id``, added up."""
    pattern = rf"ingest {client_id} stopped: (\d+) in, (\d+) stored, (\d+) duplicates"
    totals = {"in": 0, "stored": 0, "duplicates": 0}
    for m in supervisor.find(pattern):
        totals["in"] += int(m[1])
        totals["stored"] += int(m[2])
        totals["duplicates"] += int(m[3])
    return totals


def _assert_exactly_once(backend: Backend, devices: Sequence[str], per_device: int) -> None:
    with backend.engine.connect() as conn:
        keys = conn.execute(select(IngestedMessage.device_id, IngestedMessage.seq)).all()
        repeated = conn.execute(
            select(Measurement.cell_id, Measurement.measured_at)
            .group_by(Measurement.cell_id, Measurement.measured_at)
            .having(func.count() > 1)
            .limit(5)
        ).all()
        ids = {name: id_ for name, id_ in conn.execute(select(Device.name, Device.id))}
    expected = {(ids[name], seq) for name in devices for seq in range(per_device)}
    assert len(keys) == len(expected) and set(keys) == expected
    assert repeated == [], f"measurements stored twice: {repeated}"
    assert count(backend.engine, Measurement) == len(expected) * N_CELLS


def test_two_workers_share_the_stream_and_store_each_message_once(
    broker_port: int, postgres: tuple[str, Backend]
) -> None:
    url, backend = postgres
    devices = [f"bms-share-{i}" for i in range(4)]
    for name in devices:
        seed_device(backend, name)
    per_device = 100
    broker = f"mqtt://127.0.0.1:{broker_port}"
    with _supervisor("--workers", "2", "--db", url, "--broker", broker) as supervisor:
        _wait_subscribed(supervisor, workers=2)
        _publish(broker_port, _stream(backend, devices, per_device))
        total = len(devices) * per_device
        asyncio.run(
            wait_until(
                lambda: count(backend.engine, IngestedMessage) >= total,
                timeout_s=30,
                what=f"{total} messages stored",
            )
        )
        assert supervisor.stop() == 0
    shares = [_final(supervisor, worker_client_id(k, shared=True)) for k in (0, 1)]
    assert all(share["stored"] > 0 for share in shares), supervisor.log()
    assert sum(share["stored"] for share in shares) == total
    assert sum(share["duplicates"] for share in shares) == 0
    assert not supervisor.find("restarting it")
    _assert_exactly_once(backend, devices, per_device)


def test_a_killed_worker_is_restarted_and_nothing_is_lost_or_doubled(
    broker_port: int, postgres: tuple[str, Backend], capsys: pytest.CaptureFixture[str]
) -> None:
    url, backend = postgres
    devices = [f"bms-kill-{i}" for i in range(6)]
    for name in devices:
        seed_device(backend, name)
    per_device = 500  # 3,000 messages
    rate_per_s = 300.0
    total = len(devices) * per_device
    broker = f"mqtt://127.0.0.1:{broker_port}"
    victim_id = worker_client_id(1, shared=True)
    with _supervisor("--workers", "2", "--db", url, "--broker", broker) as supervisor:
        _wait_subscribed(supervisor, workers=2)
        sent_at: list[float] = []
        publisher = threading.Thread(
            target=_publish,
            args=(broker_port, _stream(backend, devices, per_device)),
            kwargs={"rate_per_s": rate_per_s, "sent_at": sent_at},
        )
        publisher.start()
        try:
            asyncio.run(
                wait_until(
                    lambda: count(backend.engine, IngestedMessage) >= total // 3,
                    timeout_s=30,
                    what="a third of the stream stored",
                )
            )
            victim = supervisor.pids()[1]
            # stall the workers' claims for a moment, so the victim surely dies with messages
            # received but neither committed nor acknowledged (its transaction is rolled back)
            with psycopg.connect(url) as stall:
                stall.execute("LOCK TABLE ingested_messages IN SHARE ROW EXCLUSIVE MODE")
                time.sleep(0.5)
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
            wall_offset_s = time.time() - killed_at
            restarted_at = supervisor.wait_for(r"started ingest worker 1 \(pid", since=killed_at)
            new_pid = supervisor.pids()[1]
            assert new_pid != victim
            first_at = supervisor.wait_for(
                rf"\[{new_pid}\].* ingest {victim_id}: first messages done", since=killed_at
            )
        finally:
            publisher.join()
        asyncio.run(
            wait_until(
                lambda: count(backend.engine, IngestedMessage) >= total,
                timeout_s=60,
                what=f"all {total} messages stored",
            )
        )
        assert supervisor.stop() == 0
    assert len(supervisor.find(r"ingest worker 1 \(pid \d+\) was killed by SIGKILL")) == 1
    restarted = _final(supervisor, victim_id)  # the killed worker wrote no final summary
    survivor = _final(supervisor, worker_client_id(0, shared=True))
    _assert_exactly_once(backend, devices, per_device)
    # per message: when it was published and when its transaction stored it
    position = {name: i for i, name in enumerate(devices)}
    with backend.engine.connect() as conn:
        stored_at = [0.0] * total
        for name, seq, received_at in conn.execute(
            select(Device.name, IngestedMessage.seq, IngestedMessage.received_at).join(
                Device, Device.id == IngestedMessage.device_id
            )
        ):
            aware = received_at if received_at.tzinfo else received_at.replace(tzinfo=dt.UTC)
            stored_at[seq * len(devices) + position[name]] = aware.timestamp()
    latency_s = sorted(b - a for a, b in zip(sent_at, stored_at, strict=True))
    back_at = first_at + wall_offset_s
    # the backlog: everything published before the restarted worker stored its first batch
    drained_at = max(b for a, b in zip(sent_at, stored_at, strict=True) if a <= back_at)
    first_batch = supervisor.find(rf"ingest {victim_id}: first messages done \((\d+)\)")[-1][1]
    with capsys.disabled():
        print(
            f"\n[ingest workers] {total} messages at {rate_per_s:.0f}/s from {len(devices)} "
            f"devices, worker 1 killed -9 after {total // 3}+ were stored: restarted by the "
            f"supervisor after {restarted_at - killed_at:.2f} s; its first batch "
            f"({first_batch} messages) stored {first_at - killed_at:.2f} s after the kill; "
            f"backlog drained {drained_at - wall_offset_s - killed_at:.2f} s after the kill; "
            f"latency median {1000 * latency_s[total // 2]:.0f} ms, "
            f"max {1000 * latency_s[-1]:.0f} ms; restarted worker {restarted['stored']} stored, "
            f"{restarted['duplicates']} redelivered duplicates; other worker "
            f"{survivor['stored']} stored"
        )


def test_a_stopped_member_keeps_its_share_until_it_returns_or_is_retired(
    broker_port: int, tmp_path: Path
) -> None:
    """Mosquitto 2.0 gives a stopped member (persistent session) its share of new messages
    and keeps them for it; retiring the member stores them and ends its session, after
    which the remaining member gets everything."""
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    upgrade(engine)
    backend = Backend("sqlite-mosquitto", engine, Topics(root="shared/v1"), "shared")
    seed_device(backend, "bms-s")
    topic = backend.topic("bms-s", Channel.telemetry)

    def member(k: int) -> IngestService:
        config = IngestConfig(
            host="127.0.0.1",
            port=broker_port,
            client_id=worker_client_id(k, shared=True),
            topics=backend.topics,
            shared_group="g",
        )
        return IngestService(engine=engine, config=config)

    async def publish(seqs: range) -> None:
        async with aiomqtt.Client("127.0.0.1", broker_port) as device:
            for seq in seqs:
                await device.publish(topic, telemetry(seq), qos=1)

    async def scenario() -> None:
        async with member(0) as a:
            async with member(1) as b:
                await publish(range(20))
                await wait_until(lambda: a.counters.stored + b.counters.stored >= 20, what="20")
                assert a.counters.stored > 0 and b.counters.stored > 0
            before = a.counters.stored
            await publish(range(20, 60))  # member 1 is stopped, its session kept
            await asyncio.sleep(1.0)
            got = a.counters.stored - before
            assert 0 < got < 40, f"the running member got {got} of 40"
            assert count(engine, IngestedMessage) == 20 + got  # the rest waits for member 1
            retiring = member(1)
            await retiring.retire(idle_s=0.5)
            assert retiring.counters.stored == 40 - got
            assert count(engine, IngestedMessage) == 60
            before = a.counters.stored
            await publish(range(60, 80))  # member 1 is out of the group now
            await wait_until(lambda: a.counters.stored - before >= 20, what="all 20 to member 0")

    try:
        asyncio.run(scenario())
        assert count(engine, Measurement) == 80 * N_CELLS
    finally:
        engine.dispose()


def test_the_guard_stores_only_after_resuming_its_session(broker_port: int, tmp_path: Path) -> None:
    """The guard's plain subscription lives in its session: what arrives while it is away
    is queued for it and stored when it resumes (within its window); on a new session,
    and after the window, it acknowledges without storing."""
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    upgrade(engine)
    backend = Backend("sqlite-mosquitto", engine, Topics(root="guard/v1"), "guard")
    seed_device(backend, "bms-g")
    topic = backend.topic("bms-g", Channel.telemetry)
    config = IngestConfig(
        host="127.0.0.1",
        port=broker_port,
        client_id=guard_client_id(0),
        topics=backend.topics,
        guard_window_s=1.0,
    )

    async def publish(seqs: range) -> None:
        async with aiomqtt.Client("127.0.0.1", broker_port) as device:
            for seq in seqs:
                await device.publish(topic, telemetry(seq), qos=1)

    async def scenario() -> None:
        async with IngestService(engine=engine, config=config) as guard:  # a new session
            await publish(range(10))
            await wait_until(lambda: guard.counters.guard_passed >= 10, what="10 passed")
            assert guard.counters.stored == 0
        await publish(range(10, 25))  # the guard is away: queued in its session
        async with IngestService(engine=engine, config=config) as guard:
            await wait_until(lambda: guard.counters.stored >= 15, what="15 queued, stored")
            await asyncio.sleep(1.2)  # the window closes
            await publish(range(25, 30))
            await wait_until(lambda: guard.counters.guard_passed >= 5, what="5 passed")
            assert guard.counters.stored == 15

    try:
        asyncio.run(scenario())
        with engine.connect() as conn:
            seqs = sorted(conn.scalars(select(IngestedMessage.seq)))
        assert seqs == list(range(10, 25))
    finally:
        engine.dispose()


def test_the_api_can_leave_the_ingest_to_the_workers(broker_port: int, tmp_path: Path) -> None:
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        broker=f"mqtt://127.0.0.1:{broker_port}",
        ingest_in_api=False,
        estimator_interval_s=0,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.ingest is None and app.state.mqtt is not None
        assert client.get("/health").json() == {"database": "ok"}


def test_guards_and_names() -> None:
    runner = CliRunner()
    result = runner.invoke(cloud_cli, ["serve", "--workers", "2", "--broker", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "--no-ingest" in result.output and "cloud ingest" in result.output
    result = runner.invoke(cloud_cli, ["ingest", "--broker", "embedded"])
    assert result.exit_code == 2 and "external broker" in result.output
    with pytest.raises(ValidationError, match="external broker"):
        CloudSettings(broker="embedded", ingest_in_api=False)
    CloudSettings(broker="none", ingest_in_api=False)
    with pytest.raises(ValidationError, match="shared_group"):
        IngestConfig(shared_group="a/b")
    config = IngestConfig(shared_group="g", topics=Topics(root="r/v1"))
    assert config.subscriptions()[0] == "$share/g/r/v1/devices/+/telemetry"
    assert IngestConfig().subscriptions()[0] == "batterytwin/v1/devices/+/telemetry"
    guard = IngestConfig(guard_window_s=60, topics=Topics(root="r/v1"))
    assert [t.rsplit("/", 1)[1] for t in guard.subscriptions()] == ["telemetry", "eis", "acks"]
    assert all(not t.startswith("$share") for t in guard.subscriptions())
    with pytest.raises(ValidationError, match="not both"):
        IngestConfig(guard_window_s=60, shared_group="g")
    assert guard_client_id(4) == "batterytwin-ingest-g4"
    assert worker_client_id(0, shared=False) == "batterytwin-ingest"
    assert len(worker_client_id(9999, shared=True)) <= 23
    with pytest.raises(ValueError, match=r"0\.\.9999"):
        worker_client_id(10_000, shared=True)
