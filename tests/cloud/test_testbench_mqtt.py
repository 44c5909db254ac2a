"""End to end over MQTT: a plain client publishes test requests on the request topic of the
running cloud service, reads the results topic, and the results are queried over REST.

Backends: SQLite + the service's embedded amqtt broker (with its device ACL), and
PostgreSQL + the shared Mosquitto (required when CI=true).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cloud.main import create_app
from cloud.models import BenchTest
from cloud.settings import CloudSettings
from cloud.testbench.topics import BenchTopics
from cloud.users import add_user
from tests.cloud.conftest import _postgres_database
from tests.cloud.mqtt_fixtures import MOSQUITTO_HOST, MOSQUITTO_PORT, require

SECRET = "bench-mqtt-secret-0123456789abcdef-01"
TOPICS = BenchTopics()
SERVICE_SESSIONS = ("batterytwin-bench", "batterytwin-ingest")  # persistent, on the broker
FINAL = {"completed", "failed", "stopped_by_safety"}


async def _drop_sessions() -> None:
    """Forget the service's persistent sessions on the shared Mosquitto (and what they
    queued), so that no test sees another's requests."""
    for client_id in SERVICE_SESSIONS:
        async with aiomqtt.Client(
            MOSQUITTO_HOST, MOSQUITTO_PORT, identifier=client_id, clean_session=True
        ):
            pass


@pytest.fixture(params=["sqlite-embedded", "postgres-mosquitto"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    if request.param == "sqlite-embedded":
        settings = CloudSettings(
            database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
            jwt_secret=SECRET,
            broker="embedded",
            embedded_broker_port=0,
            estimator_interval_s=0,
        )
        with TestClient(create_app(settings)) as client:
            yield client
        return
    require(MOSQUITTO_HOST, MOSQUITTO_PORT, "Mosquitto")
    asyncio.run(_drop_sessions())
    for url in _postgres_database():
        settings = CloudSettings(
            database_url=url,
            jwt_secret=SECRET,
            broker=f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}",
            estimator_interval_s=0,
        )
        try:
            with TestClient(create_app(settings)) as client:
                yield client
        finally:
            asyncio.run(_drop_sessions())


class Lims:
    """A plain MQTT client in its own thread: publishes requests, records results."""

    def __init__(self, service: TestClient) -> None:
        endpoint = service.app.state.mqtt  # type: ignore[attr-defined]
        # the service's own user: on the embedded broker only it may use the bench topics
        self.login = {
            "hostname": endpoint.host,
            "port": endpoint.port,
            "username": endpoint.username,
            "password": endpoint.password.get_secret_value() if endpoint.password else None,
            "identifier": f"lims-{uuid.uuid4().hex[:8]}",
        }
        self.received: list[tuple[str, dict[str, Any]]] = []

    def run(self, script: Any, *, timeout_s: float = 60.0) -> None:
        error: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(asyncio.wait_for(self._session(script), timeout_s))
            except BaseException as caught:
                error.append(caught)

        thread = threading.Thread(target=main)
        thread.start()
        thread.join(timeout_s + 5)
        assert not thread.is_alive() and not error, error

    async def _session(self, script: Any) -> None:
        async with aiomqtt.Client(**self.login) as client:
            await client.subscribe([(TOPICS.results_filter, 1), (TOPICS.errors, 1)])
            await script(client, self)

    async def until(self, client: aiomqtt.Client, done: Any) -> None:
        async for message in client.messages:
            payload = bytes(message.payload)  # type: ignore[arg-type]
            self.received.append((message.topic.value, json.loads(payload)))
            if done(self):
                return

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [body for t, body in self.received if t == topic]


def _admin(service: TestClient) -> dict[str, str]:
    with service.app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
        add_user(session, username="admin", password="password-123", role="admin")
    token = service.post("/api/token/", json={"username": "admin", "password": "password-123"})
    return {"Authorization": f"Bearer {token.json()['access']}"}


def _wait_final(service: TestClient, ref: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        test = service.get(f"/api/tests/{ref}/", headers=headers)
        if test.status_code == 200 and test.json()["status"] in FINAL:
            return dict(test.json())
        assert time.monotonic() < deadline, test.text
        time.sleep(0.05)


def test_a_request_over_mqtt_runs_and_its_results_reach_rest(service: TestClient) -> None:
    admin = _admin(service)
    test_id, bad_id = str(uuid.uuid4()), str(uuid.uuid4())
    results, bad_results = TOPICS.results(test_id), TOPICS.results(bad_id)
    request = {
        "uuid": test_id,
        "name": "Capacity Cell-01",
        "unit_under_test": "Cell-01",
        "level": "cell",
        "test_type": "capacity",
        "model": {"kind": "ecm", "parameter_set": "nmc_okane2022", "soh": 0.9},
        "bench": "virtual",
        "scheduled_at": "2025-06-01T08:00:00Z",
        "dt_s": 10,
        "ambient_c": 25,
    }
    lims = Lims(service)

    async def script(client: aiomqtt.Client, lims: Lims) -> None:
        await client.publish(TOPICS.requests, json.dumps(request), qos=1)
        bad = {**request, "uuid": bad_id, "model": {"kind": "ecm", "parameter_set": "nope"}}
        await client.publish(TOPICS.requests, json.dumps(bad), qos=1)
        await client.publish(TOPICS.requests, b'{"test_type": "capacity"', qos=1)

        def done(lims: Lims) -> bool:
            final = [m for m in lims.on(results) if m.get("status") in FINAL]
            return bool(final and lims.on(bad_results) and lims.on(TOPICS.errors))

        await lims.until(client, done)
        # a chunk delivered twice (e.g. after a lost acknowledgement) is stored once
        chunk = next(m for m in lims.on(results) if m["kind"] == "data")
        await client.publish(results, json.dumps(chunk), qos=1)

    lims.run(script)

    # the results topic carried the documented format
    messages = lims.on(results)
    first = messages[0]
    assert first["kind"] == "status" and first["status"] == "started"
    assert first["test"]["unit_under_test"] == "Cell-01" and first["test"]["uuid"] == test_id
    units = {v["name"]: v["unit"] for v in first["variables"]}
    assert units == {
        "time_s": "s",
        "step": "-",
        "current_a": "A",
        "voltage_v": "V",
        "temperature_c": "degC",
        "soc": "-",
    }
    statuses = [m["status"] for m in messages if m["kind"] == "status"]
    assert statuses[0] == "started" and statuses[-1] == "completed"
    assert set(statuses[1:-1]) == {"in_progress"}
    progress = next(m["progress"] for m in messages if m.get("status") == "in_progress")
    assert progress["step_index"] == 0 and progress["step"] == "Charge at 0.5C until 4.2 V"
    data = [m for m in messages if m["kind"] == "data"]
    assert [m["seq"] for m in data] == list(range(len(data))) and len(data) > 1
    assert all(set(m) == {"kind", "uuid", "seq", *units} for m in data)  # no units repeated
    n_samples = sum(len(m["time_s"]) for m in data)
    final = messages[-1]
    assert final["outcome"]["kpis"]["measured_capacity_ah"] == pytest.approx(4.5, rel=0.02)
    # the malformed requests were answered, naming the field, and stored nowhere
    [rejected] = lims.on(bad_results)
    assert rejected["status"] == "rejected"
    assert rejected["errors"][0]["loc"] == "model.ecm.parameter_set"
    [unreadable] = lims.on(TOPICS.errors)
    assert unreadable["status"] == "rejected" and "bad JSON" in unreadable["errors"][0]["msg"]

    # the collector stored everything once; REST shows it
    test = _wait_final(service, test_id, admin)
    assert test["status"] == "completed" and test["name"] == "Capacity Cell-01"
    assert test["scheduled_at"] == "2025-06-01T08:00:00+00:00"
    assert test["outcome"]["summary"] == final["outcome"]["summary"]
    assert test["n_samples"] == n_samples
    trend = service.get(f"/api/tests/{test['id']}/results/?max_points=100000", headers=admin)
    assert trend.json()["n_samples"] == n_samples
    assert trend.json()["data"]["voltage_v"] == [v for m in data for v in m["voltage_v"]]
    engine = service.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(BenchTest)).scalar_one() == 1
    assert service.get(f"/api/tests/{bad_id}/", headers=admin).status_code == 404


def test_rest_requests_go_through_the_request_topic(service: TestClient) -> None:
    admin = _admin(service)
    lims = Lims(service)
    body = {
        "unit_under_test": "Cell-02",
        "test_type": "overcharge",
        "model": {"kind": "ecm", "initial_soc": 1.0},
    }
    seen: dict[str, Any] = {}

    async def script(client: aiomqtt.Client, lims: Lims) -> None:
        await client.subscribe(TOPICS.requests, qos=1)
        answer = await asyncio.to_thread(service.post, "/api/tests/", json=body, headers=admin)
        assert answer.status_code == 201, answer.text
        seen.update(answer.json())
        uuid_ = answer.json()["uuid"]

        def done(lims: Lims) -> bool:
            return any(m.get("status") in FINAL for m in lims.on(TOPICS.results(uuid_)))

        await lims.until(client, done)

    lims.run(script)
    [published] = lims.on(TOPICS.requests)  # REST handed the request to the MQTT handler
    assert published["uuid"] == seen["uuid"] and published["test_type"] == "overcharge"
    test = _wait_final(service, str(seen["id"]), admin)
    assert test["status"] == "completed"
    assert test["outcome"]["safety_stop"]["limit"] in ("max_soc", "max_voltage_v")
