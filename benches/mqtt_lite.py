"""Fleet MQTT load: thousands of lean connections from one process to a private Mosquitto.

Scenario: ``--connections`` virtual BMSs (default 5,000), each with its own user name and
password, connect to a private Mosquitto that has the cloud's password file and per-device
ACL (``cloud.mqtt.broker.write_mosquitto_files`` with ``device_acl``); then, for
``--duration-s`` seconds (20), each keeps ``--window`` QoS 1 messages in flight on its
telemetry topic, sending the next one as soon as a PUBACK comes back. A message is a
16-cell Pillar 2 telemetry payload (about 1.2 kB of JSON, ``seq`` changing). Nobody
subscribes: this measures the devices' side and the broker, not the ingest.

Reported: connections held at the end, connect time, acknowledged messages per second,
client CPU seconds per 1,000 messages (user + system of this process during the publish
phase), client RSS per 1,000 connections (growth while connecting), and the broker's CPU
per 1,000 messages. The client runs on uvloop when it is importable.

Run: ``python -m benches.mqtt_lite --json`` (about 30 s; ``--connections 10000`` needs an
fd limit of more than 10,000, which the bench raises to the hard limit itself;
``--no-uvloop`` measures the default asyncio loop)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from cloud.mqtt.broker import device_acl, render_mosquitto_conf, write_mosquitto_files
from cloud.mqtt.contract import Channel, Topics
from virtual_bms.fleet.limits import raise_open_files
from virtual_bms.fleet.mqtt_async import KeepaliveScheduler, LiteConnection, connect

HOST = "127.0.0.1"
N_CELLS = 16
CONNECT_CONCURRENCY = 250  # connection attempts at once (the broker's accept backlog is finite)
KEEPALIVE_S = 60
DRAIN_TIMEOUT_S = 10.0  # wait for the last acknowledgements after the publish phase
TOPICS = Topics(root="bench-fleet/v1")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _rss_mb() -> float:
    """Resident memory of this process now (not the peak), MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_s(pid: int) -> float:
    """User + system CPU of another process (the broker) from /proc, s."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _device_name(i: int) -> str:
    return f"bench-bms-{i:05d}"


def _password(user: str) -> str:
    return f"pw-{user}"


def _telemetry_parts() -> tuple[bytes, bytes]:
    """A 16-cell Pillar 2 telemetry payload split around its ``seq`` value."""
    cells = list(range(N_CELLS))
    rest = json.dumps(
        {
            "ts": 1714564800.123,
            "pillar": 2,
            "cell_ids": cells,
            "voltage": [round(3.60123 + 0.00123 * i, 5) for i in cells],
            "current": [5.01234] * N_CELLS,
            "temperature": [round(25.0123 + 0.1 * i, 4) for i in cells],
            "soc": [55.0123] * N_CELLS,
            "soh": [round(81.0123 - 0.01 * i, 4) for i in cells],
            "sos": [1.0] * N_CELLS,
            "equivalent_cycles": [round(812.5123 + i, 4) for i in cells],
        }
    ).encode()
    return b'{"seq": ', b", " + rest[1:]


@contextlib.contextmanager
def _mosquitto(directory: Path, *, port: int, devices: list[str]) -> Iterator[int]:
    """A private Mosquitto with a password and ACL per device; yields its pid."""
    files = write_mosquitto_files(
        directory,
        credentials={name: _password(name) for name in devices},
        acl=device_acl(devices, topics=TOPICS),
    )
    conf = directory / "mosquitto.conf"
    conf.write_text(
        render_mosquitto_conf(password_file=files.password_file, acl_file=files.acl_file, port=port)
        + "max_connections -1\n"
        # as root Mosquitto would become "mosquitto", who cannot read the 0600 password file
        + ("user root\n" if os.geteuid() == 0 else "")
        + "log_type error\nlog_type warning\n"  # not a line per connect
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    log = directory / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {log.read_text()}")
            time.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


class _Pump:
    """Keeps ``window`` messages of one device in flight: each PUBACK sends the next one."""

    __slots__ = ("connection", "errors", "running", "seq", "topic")

    head, tail = _telemetry_parts()
    acked = 0  # class-wide counter: one bench, one fleet

    def __init__(self, connection: LiteConnection) -> None:
        self.connection = connection
        self.topic = TOPICS.device(connection.client_id, Channel.telemetry)
        self.seq = 0
        self.errors = 0
        self.running = True

    def send(self) -> None:
        self.seq += 1
        payload = self.head + str(self.seq).encode() + self.tail
        future = self.connection.publish(self.topic, payload, qos=1)
        assert future is not None
        future.add_done_callback(self._on_done)

    def _on_done(self, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.errors += 1
            return
        _Pump.acked += 1
        if self.running and self.connection.connected:
            self.send()


async def _measure(
    *, port: int, broker_pid: int, connections: int, duration_s: float, window: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> LiteConnection:
        name = _device_name(i)
        async with gate:
            return await connect(
                HOST,
                port,
                client_id=name,
                username=name,
                password=_password(name),
                keepalive_s=KEEPALIVE_S,
                connect_timeout_s=60,
            )

    rss_before_mb = _rss_mb()
    started = time.perf_counter()
    fleet = await asyncio.gather(*(one(i) for i in range(connections)))
    connect_s = time.perf_counter() - started
    rss_connected_mb = _rss_mb()

    pumps = [_Pump(conn) for conn in fleet]
    async with KeepaliveScheduler() as keepalive:
        for conn in fleet:
            keepalive.add(conn)
        cpu_before_s, broker_before_s = _cpu_s(), _process_cpu_s(broker_pid)
        started = time.perf_counter()
        for pump in pumps:
            for _ in range(window):
                pump.send()
        await asyncio.sleep(duration_s)
        acked = _Pump.acked
        elapsed_s = time.perf_counter() - started
        cpu_s = _cpu_s() - cpu_before_s
        broker_cpu_s = _process_cpu_s(broker_pid) - broker_before_s
        for pump in pumps:
            pump.running = False
        drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(c.inflight for c in fleet) and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.05)
        held = sum(c.connected for c in fleet)
    for conn in fleet:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in fleet))
    per_1000 = max(acked, 1) / 1000
    return {
        "connections_requested": connections,
        "connections_held": held,
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(connections / connect_s),
        "window_per_connection": window,
        "payload_bytes": len(pumps[0].head + b"1" + pumps[0].tail) if pumps else 0,
        "publish_s": round(elapsed_s, 2),
        "msgs_acked": acked,
        "msgs_per_s": round(acked / elapsed_s),
        "publish_errors": sum(p.errors for p in pumps),
        "client_cpu_s_per_1000_msgs": round(cpu_s / per_1000, 4),
        "client_cpu_cores": round(cpu_s / elapsed_s, 2),
        "broker_cpu_s_per_1000_msgs": round(broker_cpu_s / per_1000, 4),
        "client_rss_mb_per_1000_connections": round(
            (rss_connected_mb - rss_before_mb) / (connections / 1000), 2
        ),
        "client_rss_mb": round(rss_connected_mb, 1),
    }


def _runner(
    *, use_uvloop: bool
) -> tuple[str, Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]]:
    try:
        if not use_uvloop:
            return "asyncio", asyncio.run
        import uvloop
    except ImportError:
        return "asyncio", asyncio.run

    def run(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)

    return "uvloop", run


def run_benchmark(
    *, connections: int = 5_000, duration_s: float = 20.0, window: int = 2, use_uvloop: bool = True
) -> dict[str, Any]:
    """Start the broker, run the fleet, and return the figures (see the module docstring)."""
    fd_limit, _ = raise_open_files()  # Mosquitto, started later, inherits it
    if fd_limit < connections + 100:
        raise RuntimeError(
            f"{connections} connections need an fd limit above {connections + 100}; the hard "
            f"limit is {fd_limit}: raise it (ulimit -Hn) or use fewer --connections"
        )
    loop_name, run = _runner(use_uvloop=use_uvloop)
    devices = [_device_name(i) for i in range(connections)]
    port = _free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        _mosquitto(Path(tmp), port=port, devices=devices) as pid,
    ):
        result = run(
            _measure(
                port=port,
                broker_pid=pid,
                connections=connections,
                duration_s=duration_s,
                window=window,
            )
        )
    return {"benchmark": "mqtt_lite", "loop": loop_name, "cpus": os.cpu_count(), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description="Lean MQTT client fleet against Mosquitto.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--connections", type=int, default=5_000)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--window", type=int, default=2, help="QoS 1 messages in flight each")
    parser.add_argument("--no-uvloop", action="store_true", help="the default asyncio loop")
    args = parser.parse_args()
    result = run_benchmark(
        connections=args.connections,
        duration_s=args.duration_s,
        window=args.window,
        use_uvloop=not args.no_uvloop,
    )
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
