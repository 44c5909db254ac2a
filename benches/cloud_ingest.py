"""MQTT ingest throughput on PostgreSQL + Mosquitto, publisher to stored rows.

``ingest_msgs_per_s``: a device publishes N 16-cell Pillar 2 telemetry messages (QoS 1)
from its own process as fast as the broker takes them, while the ingest runs; the clock
runs from the first publish to the last message stored, and every row is counted in the
database afterwards (zero loss is checked, not assumed). The broker is a private
Mosquitto on a free port with the ingest-sized limits of
``cloud.mqtt.broker.render_mosquitto_conf`` (anonymous here: authentication is not what
is measured); the database is a throw-away PostgreSQL database.

Run: ``python -m benches.cloud_ingest --json``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benches.cloud import free_port, seed_pack, throwaway_database

N_CELLS = 16

_PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
host, port, topic, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
cells = list(range(16))
def message(seq):
    return json.dumps({"seq": seq, "ts": time.time(), "pillar": 2, "cell_ids": cells,
        "voltage": [3.6 + 0.001 * i for i in cells], "current": [5.0] * 16,
        "temperature": [25.0] * 16, "soc": [55.0] * 16, "soh": [81.0] * 16,
        "sos": [1.0] * 16, "equivalent_cycles": [812.5] * 16})
# paho's own network thread with 100 QoS 1 messages in flight: ~8,000 msg/s alone here,
# where awaiting aiomqtt publishes in windows managed ~500 msg/s and measured the publisher.
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-device")
client.max_inflight_messages_set(100)
client.connect(host, port)
client.loop_start()
sent = [client.publish(topic, message(s), qos=1) for s in range(n)]
for info in sent:
    info.wait_for_publish(timeout=600)
client.disconnect()
client.loop_stop()
"""


def _seed(url: str) -> None:
    from cloud.db import make_engine, session_factory
    from cloud.migrate import upgrade
    from cloud.models import Device

    engine = make_engine(url)
    upgrade(engine)
    with session_factory(engine)() as session, session.begin():
        battery_id, _ = seed_pack(session, serial="INGEST-1", n_cells=N_CELLS)
        session.add(Device(name="bench", battery_id=battery_id, pillar=2))
    engine.dispose()


async def _measure(url: str, port: int, n: int) -> dict[str, Any]:
    from cloud.db import make_engine
    from cloud.mqtt import IngestConfig, IngestService

    engine = make_engine(url)
    config = IngestConfig(host="127.0.0.1", port=port, client_id="bench-ingest")
    topic = "batterytwin/v1/devices/bench/telemetry"
    async with IngestService(engine=engine, config=config) as ingest:
        start = time.perf_counter()
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PUBLISHER, "127.0.0.1", str(port), topic, str(n)
        )
        while ingest.counters.stored + ingest.counters.dead_lettered < n:
            await asyncio.sleep(0.005)
            if time.perf_counter() - start > 600:
                raise RuntimeError(f"ingest stalled: {ingest.counters}")
        elapsed = time.perf_counter() - start
        await publisher.wait()
        counters = ingest.counters
    from sqlalchemy import func, select

    from cloud.models import Measurement

    with engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(Measurement))
    engine.dispose()
    return {
        "ingest_msgs_per_s": n / elapsed,
        "ingest_rows_per_s": (rows or 0) / elapsed,
        "ingest_messages": n,
        "ingest_rows_stored": rows,
        "ingest_rows_expected": n * N_CELLS,
        "ingest_lost_messages": n - counters.stored,
        "ingest_dead_lettered": counters.dead_lettered,
        "ingest_batches": counters.batches,
        "ingest_seconds": elapsed,
    }


def run_benchmark(*, messages: int = 30_000) -> dict[str, Any]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with throwaway_database("bt_ingest") as url, tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 4000\n"
            "max_queued_messages 1000000\nmessage_size_limit 1048576\npersistence false\n"
        )
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            _seed(url)
            result = asyncio.run(_measure(url, port, messages))
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    return {"benchmark": "cloud_ingest", "backend": "postgresql+mosquitto", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description="MQTT ingest throughput (PostgreSQL + Mosquitto).")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--messages", type=int, default=30_000)
    args = parser.parse_args()
    result = run_benchmark(messages=args.messages)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
