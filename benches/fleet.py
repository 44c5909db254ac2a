"""Fleet load test: thousands of virtual BMSs against the whole cloud on this machine.

Scenario: ``count`` virtual BMSs (default 10,000 Pillar 2 homes, 16 cells each), each
with its own MQTT connection, password and sequence numbers, publish telemetry at
``rate_hz`` (default 0.3 Hz: 3,000 messages/s) for ``duration_s`` (default 10 minutes)
into a private Mosquitto. Two ingest workers (``batterytwin cloud ingest --workers 2``,
MQTT shared subscription, and its guard) store them in PostgreSQL: by default an instance
of the bench's own sized for the ingest (``benches.private_postgres.INGEST_SIZING``:
4 GB shared buffers, checkpoints every 16 GB of WAL or 30 min; fsync on), or with
``--postgres shared`` a throw-away database on the machine's cluster. Two API workers
(``cloud serve --workers 2 --no-ingest``) answer ``api_users`` clients that each query
measurements once a second. Everything runs on the same 2 cores: the fleet generator, the
broker, the ingest, the API and the database.

Figures (``--json``), from the fleet's report (``virtual_bms.fleet.report``):

- ``bms_connected``: peak of connections held.
- ``stored_msgs_per_s``: messages stored per second of the run, from the cloud's counts.
- ``lost`` and ``duplicated``: from sequence numbers against the database.
- ``p99_publish_to_stored_s``: publish to queryable (sampled devices, polled every
  0.25 s).
- ``api_p95_ms_under_load``: the measurements queries while the fleet runs.

Set-up: the broker, ingest and fleet raise their open-file limits to the hard limit.
Raise that limit first if it is below about 25,000 (``ulimit -Hn``; see docs/fleet.md).

Run: ``python -m benches.fleet --json [--count N] [--duration S]`` (the default run takes
about 15 minutes, with provisioning).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benches.cloud import free_port, throwaway_database
from benches.private_postgres import INGEST_SIZING, private_postgres
from virtual_bms.fleet.limits import raise_open_files

TARGETS = {
    "bms_connected": 10_000,
    "stored_msgs_per_s": 3_000.0,
    "lost": 0,
    "duplicated": 0,
    "p99_publish_to_stored_s": 2.0,
    "api_p95_ms_under_load": 100.0,
}
ADMIN = ("fleet-admin", "fleet-admin-password")
INGEST_USER = "cloud-ingest"


def _raise_in_child() -> None:  # preexec_fn: children inherit the raised limit
    raise_open_files()


@dataclass
class Cloud:
    """The processes of one cloud deployment on this machine."""

    db_url: str
    broker_port: int
    api_url: str
    folder: Path
    env: dict[str, str]
    broker: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    ingest: subprocess.Popen[bytes] | None = None

    def broker_conf(self) -> Path:
        return self.folder / "mosquitto" / "mosquitto.conf"

    def write_broker_files(self) -> None:
        """Passwords and ACL of every device in the database, for Mosquitto."""
        command = [sys.executable, "-m", "batterytwin", "cloud", "broker-files"]
        command += ["--db", self.db_url, "--out", str(self.folder / "mosquitto")]
        command += ["--port", str(self.broker_port)]
        subprocess.run(command, env=self.env, check=True, capture_output=True)
        conf = self.broker_conf()
        text = conf.read_text()
        if os.geteuid() == 0 and "\nuser " not in text:
            # Mosquitto started as root drops to user mosquitto, who cannot read the
            # private password file; a throw-away bench broker may stay root.
            conf.write_text(text + "user root\n")

    def start_broker(self) -> None:
        self.broker = subprocess.Popen(
            ["mosquitto", "-c", str(self.broker_conf())],
            preexec_fn=_raise_in_child,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.broker_port, what="mosquitto", process=self.broker)

    def reload_broker(self) -> None:
        """Re-read password file and ACL (clients stay connected)."""
        assert self.broker is not None
        self.broker.send_signal(signal.SIGHUP)

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.terminate()
            self.broker.wait(timeout=30)
            self.broker = None

    def start_api(self, *, workers: int = 2) -> None:
        port = int(self.api_url.rsplit(":", 1)[1])
        command = [sys.executable, "-m", "batterytwin", "cloud", "serve", "--db", self.db_url]
        command += ["--port", str(port), "--workers", str(workers), "--no-ingest"]
        command += ["--broker", f"mqtt://127.0.0.1:{self.broker_port}"]
        # Logs go to files: a pipe nobody reads fills up (a database outage logs a
        # traceback per failed request) and then blocks the server.
        with (self.folder / "api.log").open("ab") as log:
            self.api = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        _wait_http(f"{self.api_url}/health", process=self.api, log=self.folder / "api.log")

    def start_ingest(self, *, workers: int = 2) -> None:
        command = [sys.executable, "-m", "batterytwin", "cloud", "ingest"]
        command += ["--workers", str(workers)]
        log = (self.folder / "ingest.log").open("ab")
        self.ingest = subprocess.Popen(
            command,
            env={
                **self.env,
                "BATTERYTWIN_DATABASE_URL": self.db_url,
                "BATTERYTWIN_BROKER": f"mqtt://127.0.0.1:{self.broker_port}",
            },
            preexec_fn=_raise_in_child,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.wait_ingest_subscribed(workers=ingest_processes(workers))

    def wait_ingest_subscribed(
        self, *, workers: int, since: int = 0, timeout_s: float = 60
    ) -> None:
        """Wait until ``workers`` ingest processes (:func:`ingest_processes`) logged their
        subscription (after byte ``since`` of the log): before that, the broker drops what
        devices publish."""
        path = self.folder / "ingest.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = path.read_bytes()[since:].decode(errors="replace")
            if text.count("MQTT ingest subscribed") >= workers:
                return
            if self.ingest is not None and self.ingest.poll() is not None:
                raise RuntimeError(f"the ingest exited:\n{text[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"the ingest did not subscribe within {timeout_s} s (see {path})")

    def stop(self) -> None:
        for process in (self.ingest, self.api):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in (self.ingest, self.api):
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.stop_broker()


def _wait_port(
    port: int, *, what: str, process: subprocess.Popen[bytes], timeout_s: float = 30
) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s} s")


def _wait_http(
    url: str, *, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90
) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = log.read_text(errors="replace")
            raise RuntimeError(f"{url}: the server exited:\n{error[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy within {timeout_s} s")


def ingest_processes(workers: int) -> int:
    """Processes of ``cloud ingest --workers N`` that subscribe: N, and the guard when N > 1."""
    return workers + 1 if workers > 1 else workers


@contextlib.contextmanager
def local_cloud(*, db_url: str, api_workers: int = 2, ingest_workers: int = 2) -> Iterator[Cloud]:
    """Mosquitto + ``cloud serve --no-ingest`` + ``cloud ingest`` on ``db_url``, with an
    admin user; devices added later need :meth:`Cloud.write_broker_files` + reload."""
    from sqlalchemy.orm import Session

    from cloud.db import make_engine
    from cloud.migrate import upgrade
    from cloud.users import add_user

    folder = Path(tempfile.mkdtemp(prefix="batterytwin-fleet-"))
    env = {
        **os.environ,
        "BATTERYTWIN_JWT_SECRET": "fleet-bench-" + secrets.token_hex(24),
        "BATTERYTWIN_MQTT_USERNAME": INGEST_USER,
        "BATTERYTWIN_MQTT_PASSWORD": secrets.token_urlsafe(18),
        "BATTERYTWIN_ESTIMATOR_INTERVAL_S": "0",  # measure the ingest, not the estimators
        "BATTERYTWIN_TOKEN_RATE_PER_MINUTE": "1000",
    }
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with Session(engine) as session, session.begin():
            add_user(session, username=ADMIN[0], password=ADMIN[1], role="admin")
    finally:
        engine.dispose()
    cloud = Cloud(
        db_url=db_url,
        broker_port=free_port(),
        api_url=f"http://127.0.0.1:{free_port()}",
        folder=folder,
        env=env,
    )
    try:
        cloud.write_broker_files()
        cloud.start_broker()
        cloud.start_api(workers=api_workers)
        cloud.start_ingest(workers=ingest_workers)
        yield cloud
    finally:
        cloud.stop()
        shutil.rmtree(folder, ignore_errors=True)  # it holds the devices' passwords


async def provision_and_reload(cloud: Cloud, *, count: int, pillar: str, prefix: str) -> Path:
    """Provision the fleet over REST, refresh Mosquitto's files; the credentials CSV."""
    from virtual_bms.fleet.app import FleetOptions, _provision, write_credentials
    from virtual_bms.fleet.cloud_client import CloudClient
    from virtual_bms.fleet.population import PopulationConfig

    options = FleetOptions(count=count, pillar=pillar, prefix=prefix)  # type: ignore[arg-type]
    pillars = PopulationConfig(count=count, pillar=options.pillar).pillars()
    async with CloudClient(cloud.api_url, *ADMIN) as client:
        credentials = await _provision(client, options, pillars)
    path = cloud.folder / "credentials.csv"
    write_credentials(path, credentials)
    cloud.write_broker_files()
    cloud.reload_broker()
    await asyncio.sleep(1.0)
    return path


def run_benchmark(
    *,
    count: int = 10_000,
    duration_s: float = 600.0,
    rate_hz: float = 0.3,
    pillar: str = "2",
    api_users: int = 20,
    ingest_workers: int = 2,
    api_workers: int = 2,
    report_dir: Path | None = None,
    during: Callable[[Any, Cloud], Awaitable[None]] | None = None,
    postgres: str = "private",
) -> dict[str, Any]:
    """The fleet against a local cloud; the figures of the module docstring.

    ``postgres``: ``private`` (an instance of the bench's own, sized by
    :data:`~benches.private_postgres.INGEST_SIZING`) or ``shared`` (a throw-away database
    on the machine's cluster, as configured there)."""
    from virtual_bms.fleet.app import FleetOptions, run_fleet

    raise_open_files()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    report_dir = report_dir or Path(tempfile.mkdtemp(prefix="batterytwin-fleet-report-"))
    with (
        _database(postgres, log_to=report_dir / "postgres.log") as db_url,
        local_cloud(db_url=db_url, api_workers=api_workers, ingest_workers=ingest_workers) as cloud,
    ):
        print(f"[benches.fleet] provisioning {count:,} BMSs ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        credentials = asyncio.run(
            provision_and_reload(cloud, count=count, pillar=pillar, prefix="fleet-")
        )
        provision_s = time.monotonic() - started
        options = FleetOptions(
            count=count,
            pillar=pillar,  # type: ignore[arg-type]
            broker_url=f"mqtt://127.0.0.1:{cloud.broker_port}",
            cloud_url=cloud.api_url,
            username=ADMIN[0],
            password=ADMIN[1],
            rate_hz=rate_hz,
            duration_s=duration_s,
            report_dir=report_dir,
            credentials_csv=credentials,
            api_users=api_users,
        )

        def progress(row: dict[str, float]) -> None:
            if int(row["t_s"]) % 10 == 0:
                print(
                    f"[benches.fleet] t={row['t_s']:.0f} s connected={row['connected']:.0f} "
                    f"generated={row['generated']:.0f}/s acked={row['acked']:.0f}/s "
                    f"backlog={row['backlog']:.0f}",
                    file=sys.stderr,
                    flush=True,
                )

        drill = None
        if during is not None:

            async def drill_fn(runner: Any) -> None:
                await during(runner, cloud)

            drill = drill_fn
        report = asyncio.run(run_fleet(options, on_second=progress, during=drill))
    figures = report.get("figures", {})
    result: dict[str, Any] = {
        "benchmark": "fleet",
        "count": count,
        "duration_s": duration_s,
        "rate_hz": rate_hz,
        "ingest_workers": ingest_workers,
        "api_workers": api_workers,
        "api_users": api_users,
        "postgres": postgres,
        "postgres_settings": dict(INGEST_SIZING) if postgres == "private" else "machine's",
        "provision_s": provision_s,
        **figures,
        "targets": TARGETS,
        "report": str(options.report_dir),
    }
    result["targets_met"] = {
        key: _meets(key, result.get(key), target) for key, target in TARGETS.items()
    }
    return result


@contextlib.contextmanager
def _database(postgres: str, *, log_to: Path) -> Iterator[str]:
    """The URL of an empty database: on a private, sized instance (whose log, with its
    checkpoints and autovacuum runs, is copied to ``log_to`` at the end) or the shared
    cluster."""
    if postgres == "shared":
        with throwaway_database("bt_fleet") as url:
            yield url
        return
    if postgres != "private":
        raise ValueError(f"postgres must be 'private' or 'shared', got {postgres!r}")
    with private_postgres(dbname="bt_fleet", settings=INGEST_SIZING) as instance:
        try:
            yield instance.url
        finally:
            log = instance.folder / "postgres.log"
            if log.exists():
                log_to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, log_to)


def _meets(key: str, value: Any, target: float) -> bool | None:
    if value is None:
        return None
    if key in ("bms_connected", "stored_msgs_per_s"):
        return bool(value >= target)
    return bool(value <= target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--count", type=int, default=10_000, help="virtual BMSs")
    parser.add_argument("--duration", type=float, default=600.0, help="publishing time, s")
    parser.add_argument("--rate", type=float, default=0.3, help="messages per BMS per second")
    parser.add_argument("--pillar", default="2", choices=("1", "2", "mix"))
    parser.add_argument("--api-users", type=int, default=20)
    parser.add_argument("--ingest-workers", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None, help="report folder")
    parser.add_argument(
        "--postgres",
        choices=("private", "shared"),
        default="private",
        help="private: an instance of the bench's own, sized for the ingest (default); "
        "shared: a database on the machine's cluster at 127.0.0.1:5432",
    )
    args = parser.parse_args()
    result = run_benchmark(
        count=args.count,
        duration_s=args.duration,
        rate_hz=args.rate,
        pillar=args.pillar,
        api_users=args.api_users,
        ingest_workers=args.ingest_workers,
        report_dir=args.report,
        postgres=args.postgres,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
