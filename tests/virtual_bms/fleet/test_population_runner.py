"""The fleet's twin and payloads, and its runner against a real Mosquitto: seqs without
gaps, store-and-forward across a network cut, commands answered."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest

from cloud.mqtt.contract import Channel, Topics, parse_uplink
from tests.cloud.mqtt_fixtures import free_port, private_mosquitto
from virtual_bms.fleet.population import FleetPopulation, PopulationConfig
from virtual_bms.fleet.runner import DeviceCredentials, FleetRunConfig, FleetRunner


def test_payloads_follow_the_contract_and_move_with_load() -> None:
    pop = FleetPopulation(PopulationConfig(count=6, pillar="mix", seed=3))
    assert list(pop.pillar) == [2, 2, 2, 1, 1, 1]
    first = [parse_uplink(Channel.telemetry, pop.telemetry(i, seq=7, ts_s=1e9)) for i in range(6)]
    for _ in range(1800):  # half an hour of twin time
        pop.step(1.0)
    later = [parse_uplink(Channel.telemetry, pop.telemetry(i, seq=8, ts_s=1e9)) for i in range(6)]
    for a, b in zip(first, later, strict=True):
        assert a.seq == 7 and len(a.cell_ids) == 16 and a.voltage is not None
        assert b.voltage is not None and b.soc is not None and a.soc is not None
        assert b.voltage != a.voltage  # the cells moved under their load
    homes, hubs = first[:3], first[3:]
    assert all(m.soh is not None and m.equivalent_cycles is not None for m in homes)
    assert all(m.soh is None for m in hubs)  # Pillar 1 reports no SoH (D2.3 Table 2)
    # Noon: the homes charge from PV, so their SoC estimate rises.
    assert all(b.soc[0] > a.soc[0] for a, b in zip(homes, later[:3], strict=True))


def test_soc_stays_in_the_window_a_bms_keeps() -> None:
    pop = FleetPopulation(PopulationConfig(count=40, pillar="2", seed=1))
    for _ in range(3 * 24 * 60):  # three days at 60 s
        pop.step(60.0)
    soc = pop.true_soc()
    assert soc.min() > 0.05 and soc.max() < 0.95


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
    )
    with private_mosquitto(conf, port, purpose="the fleet runner test"):
        yield port


class _Recorder:
    """Every telemetry seq per device, and the acks to commands."""

    def __init__(self, port: int, topics: Topics) -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.acks: list[dict[str, object]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="recorder")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(
            [(topics.subscription(Channel.telemetry), 1), (topics.subscription(Channel.acks), 1)]
        )
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        device = msg.topic.split("/")[-2]
        data = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/telemetry"):
                self.seqs[device].append(int(data["seq"]))
            else:
                self.acks.append(data)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_runner_keeps_every_seq_through_a_network_cut_and_answers_commands(
    broker: int,
) -> None:
    topics = Topics()
    recorder = _Recorder(broker, topics)
    n = 20
    pop = FleetPopulation(PopulationConfig(count=n, pillar="2"))
    creds = [DeviceCredentials(f"fleet-{i:05d}", "x") for i in range(n)]
    start = np.arange(n, dtype=np.int64) * 1000  # continue after an earlier run
    runner = FleetRunner(
        pop,
        creds,
        FleetRunConfig(host="127.0.0.1", port=broker, rate_hz=5.0, duration_s=6.0, drain_s=20),
        seq_start=start,
    )

    async def scenario() -> None:
        async def cut_and_command() -> None:
            while runner.connected < n:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            runner.cut([0, 1, 2], duration_s=2.0)  # they buffer meanwhile
            command = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cloud")
            command.connect("127.0.0.1", broker)
            command.loop_start()
            body = b'{"command_id":42,"kind":"reporting_interval","params":{"interval_s":5}}'
            command.publish(
                topics.device(creds[5].name, Channel.commands), body, qos=1
            ).wait_for_publish()
            command.loop_stop()
            command.disconnect()

        task = asyncio.create_task(cut_and_command())
        await runner.run()
        await task

    asyncio.run(scenario())
    recorder_wait = 0
    while recorder_wait < 50 and sum(len(v) for v in recorder.seqs.values()) < len(
        runner.records.publications()[1]
    ):
        threading.Event().wait(0.1)
        recorder_wait += 1
    recorder.close()
    device, seq, _ = runner.records.publications()
    assert runner.records.reconnects >= 3 and runner.records.dropped_at_edge == 0
    for i, c in enumerate(creds):
        published = sorted(seq[device == i].tolist())
        assert published == list(range(int(start[i]), int(start[i]) + len(published)))
        received = recorder.seqs[c.name]
        # Everything arrived; resent messages may arrive twice (the cloud keeps one).
        assert sorted(set(received)) == published, c.name
        # In order: after dropping repeats, the first arrivals increase.
        firsts = list(dict.fromkeys(received))
        assert firsts == sorted(firsts), c.name
    assert recorder.acks == [{"command_id": 42, "status": "ok", "detail": "fleet BMS"}]
    assert runner.records.commands_answered == 1
