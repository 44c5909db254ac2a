"""Cloud service speed on PostgreSQL: API latency under 50 clients on >= 10 M rows.

``api_p95_ms_50_users``: 50 concurrent clients, each sending one filtered, paginated
measurements query (one cell, a one-hour window, 100 rows) per second, as the thesis's
k6 virtual users did (1-5 iterations/s each), against ``batterytwin cloud serve`` on a
throw-away PostgreSQL database seeded with 10 M cell rows (625,000 samples of 16 cells)
by COPY. Latency is measured at the client, from request to full response.

Run: ``python -m benches.cloud --json`` (seeding takes a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
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
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY measurements (cell_id, measured_at, added_at, voltage, temperature, current, soc)"
            " FROM STDIN"
        ) as copy:
            for k in range(samples):
                when = t0 + dt.timedelta(seconds=k)
                for j, cell_id in enumerate(cell_ids):
                    copy.write_row((cell_id, when, when, 3.6 + 0.001 * j, 25.0, 10.0, 50.0))
        cur.execute("ANALYZE measurements")
    return {
        "cell_ids": cell_ids,
        "t0": t0,
        "samples": samples,
        "seed_s": time.perf_counter() - start,
    }


def _load(
    base: str, token: str, seeded: dict[str, Any], *, users: int, duration_s: float
) -> list[float]:
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration_s

    def client(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            while time.monotonic() < stop:
                cell = rng.choice(seeded["cell_ids"])
                since = seeded["t0"] + dt.timedelta(seconds=rng.randrange(seeded["samples"] - 3600))
                params = {
                    "cell": cell,
                    "since": since.isoformat(),
                    "until": (since + dt.timedelta(hours=1)).isoformat(),
                    "limit": 100,
                }
                t = time.perf_counter()
                response = http.get("/api/measurements/", params=params)
                took = (time.perf_counter() - t) * 1000.0
                if response.status_code != 200 or len(response.json()) != 100:
                    raise RuntimeError(
                        f"bad response {response.status_code}: {response.text[:200]}"
                    )
                with lock:
                    latencies.append(took)
                time.sleep(max(0.0, 1.0 - took / 1000.0))  # one request per second per user

    threads = [threading.Thread(target=client, args=(k,)) for k in range(users)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies


def run_benchmark(
    *, n_rows: int = 10_000_000, users: int = 50, duration_s: float = 30.0, workers: int = 2
) -> dict[str, Any]:
    import httpx

    server = None
    with throwaway_database("bt_bench") as url:
        try:
            print(f"[benches.cloud] seeding {n_rows:,} rows ...", file=sys.stderr, flush=True)
            seeded = _seed(url, n_rows=n_rows, n_cells=16)
            port = free_port()
            env = {**os.environ, "BATTERYTWIN_JWT_SECRET": "bench-secret-" + "x" * 40}
            command = [sys.executable, "-m", "batterytwin", "cloud", "serve", "--db", url]
            command += ["--port", str(port), "--workers", str(workers), "--broker", "none"]
            server = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            login = {"username": "svc", "password": "bench-password"}
            token = httpx.post(f"{base}/api/token/", json=login).json()["access"]
            print(f"[benches.cloud] {users} users for {duration_s:.0f} s ...", file=sys.stderr)
            latencies = _load(base, token, seeded, users=users, duration_s=duration_s)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=10)
    latencies.sort()
    return {
        "benchmark": "cloud",
        "measurement_rows": seeded["samples"] * 16,
        "seed_rows_per_s": seeded["samples"] * 16 / seeded["seed_s"],
        "api_users": users,
        "api_server_workers": workers,
        "api_requests": len(latencies),
        "api_p50_ms": statistics.median(latencies),
        "api_p95_ms_50_users": latencies[int(0.95 * (len(latencies) - 1))],
        "api_max_ms": latencies[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Cloud service benchmark (PostgreSQL).")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rows", type=int, default=10_000_000, help="measurement rows to seed")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = parser.parse_args()
    result = run_benchmark(n_rows=args.rows, workers=args.workers)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
