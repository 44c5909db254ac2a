"""benches/locustfile.py run by Locust, headless, against a private Mosquitto.

Locust runs in a subprocess only: importing it here would monkey-patch this process with
gevent. The broker has the cloud's password file and per-device ACL; a subscriber logged
in as the ingest records every telemetry message (and the command acks) straight from the
broker, so the checks do not rely on what Locust says about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.mqtt.broker import (
    INGEST_USER,
    device_acl,
    render_mosquitto_conf,
    write_mosquitto_files,
)
from cloud.mqtt.contract import Channel, Topics
from tests.cloud.mqtt_fixtures import free_port, private_mosquitto
from tests.virtual_bms.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[3]
LOCUSTFILE = REPO / "benches" / "locustfile.py"
HOST = "127.0.0.1"
TOPICS = Topics()
N_DEVICES = 20
DEVICES = [f"fleet-{i:05d}" for i in range(N_DEVICES)]
LOCUST_TIMEOUT_S = 45  # a run of -t 10 s takes about 15 s


def _password(user: str) -> str:
    return f"pw-{user}-secret"


@dataclass
class Broker:
    port: int
    directory: Path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    directory = tmp_path_factory.mktemp("locust-mosquitto")
    port = free_port()
    files = write_mosquitto_files(
        directory,
        credentials={user: _password(user) for user in [*DEVICES, INGEST_USER]},
        acl=device_acl(DEVICES, topics=TOPICS),
    )
    conf = directory / "mosquitto.conf"
    conf.write_text(
        render_mosquitto_conf(password_file=files.password_file, acl_file=files.acl_file, port=port)
        # as root, Mosquitto would switch to the user "mosquitto", who cannot read the 0600
        # password file in pytest's directory; as anyone else it stays who it is
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    with private_mosquitto(conf, port, purpose="the Locust fleet test"):
        yield Broker(port=port, directory=directory)


@dataclass
class Recorder:
    """Every telemetry message and ack the broker delivers, by device."""

    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    acks: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        device, channel = TOPICS.parse(message.topic)
        body = json.loads(message.payload)
        with self.lock:
            if channel is Channel.telemetry:
                self.seqs[device].append(int(body["seq"]))
                if len(body["cell_ids"]) != 16 or len(body["voltage"]) != 16:
                    self.bad.append(f"{device}: {message.payload[:80]!r}")
            elif channel is Channel.acks:
                self.acks.append((device, body))

    def devices_seen(self) -> set[str]:
        with self.lock:
            return set(self.seqs)


@pytest.fixture
def recorder(broker: Broker) -> Iterator[tuple[Recorder, paho.Client]]:
    recorder = Recorder()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"locust-test-{os.getpid()}", clean_session=True
    )
    client.username_pw_set(INGEST_USER, _password(INGEST_USER))
    client.on_message = recorder.on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(HOST, broker.port)
    client.subscribe(
        [(TOPICS.subscription(Channel.telemetry), 1), (TOPICS.subscription(Channel.acks), 1)]
    )
    client.loop_start()
    try:
        assert subscribed.wait(10), "the recording subscriber got no SUBACK"
        yield recorder, client
    finally:
        client.disconnect()
        client.loop_stop()


def _credentials(path: Path, devices: list[str]) -> Path:
    lines = ["name,password", *(f"{d},{_password(d)}" for d in devices)]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def _locust(
    *args: str, port: int, credentials: Path, csv_prefix: Path, period_s: float
) -> Iterator[subprocess.Popen[str]]:
    """Locust in a subprocess for the block; stopped (SIGTERM, so it stops its worker
    processes too) if the block leaves it running."""
    env = os.environ | {
        "LOCUST_FLEET_CREDENTIALS": str(credentials),
        "LOCUST_FLEET_PERIOD_S": str(period_s),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        f"mqtt://{HOST}:{port}",
        "--csv",
        str(csv_prefix),
        "--loglevel",
        "INFO",
        *args,
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def _finish(process: subprocess.Popen[str]) -> str:
    try:
        output, _ = process.communicate(timeout=LOCUST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"Locust did not finish within {LOCUST_TIMEOUT_S} s:\n{output[-5000:]}")
    return output


def _stats(csv_prefix: Path) -> dict[str, dict[str, str]]:
    path = Path(f"{csv_prefix}_stats.csv")
    with path.open(newline="") as rows:
        return {f"{row['Type']} {row['Name']}": row for row in csv.DictReader(rows)}


def _contiguous(seqs: list[int]) -> bool:
    distinct = sorted(set(seqs))
    return distinct == list(range(distinct[0], distinct[-1] + 1))


def _wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def test_twenty_users_over_two_processes_publish_without_gaps(
    broker: Broker, recorder: tuple[Recorder, paho.Client], tmp_path: Path
) -> None:
    record, client = recorder
    credentials = _credentials(tmp_path / "creds.csv", DEVICES)
    started_ms = time.time_ns() // 1_000_000
    with _locust(
        *("--processes", "2", "-u", str(N_DEVICES), "-r", str(N_DEVICES), "-t", "10s"),
        port=broker.port,
        credentials=credentials,
        csv_prefix=tmp_path / "fleet",
        period_s=1.0,
    ) as locust:
        _wait_for(
            lambda: len(record.devices_seen()) == N_DEVICES or locust.poll() is not None,
            timeout_s=LOCUST_TIMEOUT_S,
            what="every device to publish",
        )
        command = {"command_id": 4242, "kind": "reporting_interval", "params": {"interval_s": 5}}
        client.publish(TOPICS.device(DEVICES[3], Channel.commands), json.dumps(command), qos=1)
        output = _finish(locust)
    ended_ms = time.time_ns() // 1_000_000
    time.sleep(0.5)  # the last deliveries to the recorder
    assert locust.returncode == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]

    with record.lock:
        seqs = dict(record.seqs)
        acks = list(record.acks)
    assert sorted(seqs) == DEVICES  # every device, each from exactly one user
    for device, device_seqs in seqs.items():
        assert _contiguous(device_seqs), f"{device} has gaps: {sorted(device_seqs)}"
        assert started_ms <= min(device_seqs) <= ended_ms  # starts at the time in ms
        assert len(set(device_seqs)) >= 5, f"{device}: {len(device_seqs)} messages in 10 s"
    assert not record.bad
    assert (DEVICES[3], {"command_id": 4242, "status": "ok", "detail": "locust BMS"}) in acks

    stats = _stats(tmp_path / "fleet")
    publish, connect = stats["MQTT telemetry publish"], stats["MQTT connect"]
    assert int(publish["Failure Count"]) == 0, output[-5000:]
    assert int(connect["Failure Count"]) == 0 and int(connect["Request Count"]) == N_DEVICES
    delivered = sum(len(set(s)) for s in seqs.values())
    # every acknowledged message reached the subscriber; a few may be unacknowledged at the end
    assert delivered - 2 * N_DEVICES <= int(publish["Request Count"]) <= delivered
    assert 700 < float(publish["Average Content Size"]) < 1500  # 16-cell telemetry


def test_messages_sent_during_an_outage_arrive_in_order_afterwards(
    broker: Broker, recorder: tuple[Recorder, paho.Client], tmp_path: Path
) -> None:
    record, _ = recorder
    devices = DEVICES[:4]
    credentials = _credentials(tmp_path / "creds.csv", devices)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = TcpProxy(HOST, broker.port)

    def run(coroutine: Coroutine[None, None, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)

    try:
        run(proxy.start())
        with _locust(
            *("-u", str(len(devices)), "-r", str(len(devices)), "-t", "14s"),
            port=proxy.port,
            credentials=credentials,
            csv_prefix=tmp_path / "outage",
            period_s=0.5,
        ) as locust:
            _wait_for(
                lambda: len(record.devices_seen()) == len(devices) or locust.poll() is not None,
                timeout_s=LOCUST_TIMEOUT_S,
                what="every device to publish",
            )
            run(proxy.cut())
            time.sleep(2.5)
            run(proxy.restore())
            output = _finish(locust)
    finally:
        run(proxy.cut())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    time.sleep(0.5)
    assert locust.returncode in (0, 1), output[-5000:]  # 1: Locust counted failures
    stats = _stats(tmp_path / "outage")
    assert int(stats["MQTT connect"]["Request Count"]) > len(devices), "no reconnects"
    with record.lock:
        seqs = dict(record.seqs)
    assert sorted(seqs) == devices
    for device, device_seqs in seqs.items():
        distinct = sorted(set(device_seqs))
        assert _contiguous(device_seqs), f"{device} has gaps: {distinct}"
        # at 2 Hz for ~14 s, 2.5 s of it cut off: what was made during the cut came later
        assert len(distinct) >= 20, f"{device}: {len(distinct)} messages"


def test_too_few_credentials_are_refused_with_a_reason(broker: Broker, tmp_path: Path) -> None:
    credentials = _credentials(tmp_path / "creds.csv", DEVICES[:2])
    with _locust(
        *("-u", "3", "-r", "10", "-t", "3s"),
        port=broker.port,
        credentials=credentials,
        csv_prefix=tmp_path / "few",
        period_s=1.0,
    ) as locust:
        output = _finish(locust)
    assert "has 2 devices, but user 3 of Locust process 0 (of 1) needs line 3" in output
    assert int(_stats(tmp_path / "few")["MQTT connect"]["Request Count"]) == 2
