"""Cloud service speed on PostgreSQL + Mosquitto: MQTT ingest and API latency.

``ingest_msgs_per_s`` (from :mod:`benches.cloud_ingest`): sustained 16-cell Pillar 2
telemetry from a publisher to stored rows, zero loss checked.

``api_p95_ms_50_users``: 50 concurrent clients, each sending one filtered, paginated
measurements query (one cell, a one-hour window, 100 rows) per second at a random phase,
as the thesis's k6 virtual users did (1-5 iterations/s each), against
``batterytwin cloud serve`` (2 workers) on a throw-away PostgreSQL database seeded with
10 M cell rows (625,000 samples of 16 cells) by COPY. Latency is measured at the client,
from request to full response. ``db_query_p95_ms`` is the same query on the database
alone: what the (cell_id, measured_at) index gives at that size.

Run: ``python -m benches.cloud --json`` (about 3 minutes; ``--only api|ingest``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database (its URL), dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_pack(session: Any, *, serial: str, n_cells: int) -> tuple[int, list[int]]:
    """A battery with one module of ``n_cells`` cells (positions 0..n-1); their ids."""
    from cloud.models import Battery, Cell, Module

    battery = Battery(serial_number=serial, battery_name="bench")
    session.add(battery)
    session.flush()
    module = Module(module_name="m0", battery_id=battery.id)
    session.add(module)
    session.flush()
    cells = [Cell(cell_name=f"c{i}", module_id=module.id, position=i) for i in range(n_cells)]
    session.add_all(cells)
    session.flush()
    return battery.id, [c.id for c in cells]


def _seed(url: str, *, n_rows: int, n_cells: int) -> dict[str, Any]:
    import psycopg

    from cloud.db import make_engine, session_factory
    from cloud.migrate import upgrade
    from cloud.users import add_user

    engine = make_engine(url)
    upgrade(engine)
    with session_factory(engine)() as session, session.begin():
        _, cell_ids = seed_pack(session, serial="BENCH-1", n_cells=n_cells)
        add_user(session, username="svc", password="bench-password", role="service")
    engine.dispose()
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    samples = n_rows // n_cells
    start = time.perf_counter()
    columns = "cell_id, measured_at, added_at, voltage, temperature, current, soc"
    with (
        psycopg.connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY measurements ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["int4", "timestamptz", "timestamptz", *["float8"] * 4])
        for k in range(samples):
            when = t0 + dt.timedelta(seconds=k)
            for j, cell_id in enumerate(cell_ids):
                copy.write_row((cell_id, when, when, 3.6 + 0.001 * j, 25.0, 10.0, 50.0))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE measurements")  # as autovacuum leaves a settled table
    return {
        "cell_ids": cell_ids,
        "t0": t0,
        "samples": samples,
        "seed_s": time.perf_counter() - start,
    }


def _query_latency_ms(url: str, seeded: dict[str, Any], *, n: int = 1000) -> list[float]:
    """The database alone: one cell's one-hour window (100 rows), as the API asks it."""
    import psycopg

    rng = random.Random(7)
    latencies: list[float] = []
    with psycopg.connect(url) as conn:
        for _ in range(n):
            since = seeded["t0"] + dt.timedelta(seconds=rng.randrange(seeded["samples"] - 3600))
            started = time.perf_counter()
            rows = conn.execute(
                "SELECT * FROM measurements WHERE cell_id = %s AND measured_at >= %s "
                "AND measured_at < %s ORDER BY measured_at, id LIMIT 101",
                (rng.choice(seeded["cell_ids"]), since, since + dt.timedelta(hours=1)),
            ).fetchall()
            latencies.append((time.perf_counter() - started) * 1000.0)
            if len(rows) != 101:
                raise RuntimeError(f"expected 101 rows, got {len(rows)}")
    return sorted(latencies)


async def _user(
    k: int,
    *,
    port: int,
    token: str,
    seeded: dict[str, Any],
    stop_at: float,
    latencies: list[float],
) -> None:
    """One client on its own keep-alive connection: a query per second, at a random phase.

    A bare HTTP/1.1 client on asyncio streams: the load generator shares the 2 cores with
    the server, and httpx in 50 threads spent more CPU than the server it was measuring.
    """
    rng = random.Random(k)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(rng.random())  # users do not arrive in lockstep
    try:
        while time.monotonic() < stop_at:
            since = seeded["t0"] + dt.timedelta(seconds=rng.randrange(seeded["samples"] - 3600))
            query = urllib.parse.urlencode(
                {
                    "cell": rng.choice(seeded["cell_ids"]),
                    "since": since.isoformat(),
                    "until": (since + dt.timedelta(hours=1)).isoformat(),
                    "limit": 100,
                }
            )
            request = (
                f"GET /api/measurements/?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            length = int(next(v for h, v in headers.items() if h.lower() == b"content-length"))
            body = await reader.readexactly(length)
            took_ms = (time.perf_counter() - started) * 1000.0
            status = int(head.split(b" ", 2)[1])
            if status != 200 or len(json.loads(body)) != 100:
                raise RuntimeError(f"bad response {status}: {body[:200]!r}")
            latencies.append(took_ms)
            await asyncio.sleep(max(0.0, 1.0 - took_ms / 1000.0))  # one request/s per user
    finally:
        writer.close()


def _load(
    port: int, token: str, seeded: dict[str, Any], *, users: int, duration_s: float
) -> list[float]:
    latencies: list[float] = []

    async def all_users() -> None:
        stop_at = time.monotonic() + duration_s
        await asyncio.gather(
            *(
                _user(
                    k, port=port, token=token, seeded=seeded, stop_at=stop_at, latencies=latencies
                )
                for k in range(users)
            )
        )

    asyncio.run(all_users())
    return latencies


def run_api_benchmark(
    *, n_rows: int = 10_000_000, users: int = 50, duration_s: float = 30.0, workers: int = 2
) -> dict[str, Any]:
    """``api_p95_ms_50_users`` and the database's own query latency at ``n_rows``."""
    import httpx

    server = None
    with throwaway_database("bt_bench") as url:
        try:
            print(f"[benches.cloud] seeding {n_rows:,} rows ...", file=sys.stderr, flush=True)
            seeded = _seed(url, n_rows=n_rows, n_cells=16)
            database_ms = _query_latency_ms(url, seeded)
            port = free_port()
            env = {**os.environ, "BATTERYTWIN_JWT_SECRET": "bench-secret-" + "x" * 40}
            command = [sys.executable, "-m", "batterytwin", "cloud", "serve", "--db", url]
            command += ["--port", str(port), "--workers", str(workers), "--broker", "none"]
            server = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    error = server.stderr.read().decode() if server.stderr else ""
                    raise RuntimeError(f"the server did not become healthy:\n{error[-2000:]}")
                time.sleep(0.2)
            login = {"username": "svc", "password": "bench-password"}
            token = httpx.post(f"{base}/api/token/", json=login).json()["access"]
            print(f"[benches.cloud] {users} users for {duration_s:.0f} s ...", file=sys.stderr)
            latencies = _load(port, token, seeded, users=users, duration_s=duration_s)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)
    latencies.sort()
    return {
        "measurement_rows": seeded["samples"] * 16,
        "seed_rows_per_s": seeded["samples"] * 16 / seeded["seed_s"],
        "db_query_p50_ms": statistics.median(database_ms),
        "db_query_p95_ms": database_ms[int(0.95 * (len(database_ms) - 1))],
        "api_users": users,
        "api_server_workers": workers,
        "api_requests": len(latencies),
        "api_p50_ms": statistics.median(latencies),
        "api_p95_ms_50_users": latencies[int(0.95 * (len(latencies) - 1))],
        "api_max_ms": latencies[-1],
    }


def run_benchmark(
    *, parts: tuple[str, ...] = ("api", "ingest"), n_rows: int = 10_000_000, workers: int = 2
) -> dict[str, Any]:
    """Both cloud figures (or the ``parts`` asked for), one JSON object."""
    result: dict[str, Any] = {"benchmark": "cloud", "backend": "postgresql+mosquitto"}
    if "ingest" in parts:
        from benches.cloud_ingest import run_benchmark as run_ingest

        print("[benches.cloud] MQTT ingest ...", file=sys.stderr, flush=True)
        ingest = run_ingest()
        result |= {k: v for k, v in ingest.items() if k.startswith("ingest_")}
    if "api" in parts:
        result |= run_api_benchmark(n_rows=n_rows, workers=workers)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Cloud service benchmark (PostgreSQL + Mosquitto): ingest and API."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rows", type=int, default=10_000_000, help="measurement rows to seed")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--only", choices=("api", "ingest"), help="run one part (default: both)", default=None
    )
    args = parser.parse_args()
    parts = (args.only,) if args.only else ("api", "ingest")
    result = run_benchmark(parts=parts, n_rows=args.rows, workers=args.workers)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
