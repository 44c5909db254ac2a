"""``batterytwin bench run`` on this machine, ``bench request`` against a running service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cloud.main import create_app
from cloud.settings import CloudSettings
from cloud.testbench.cli import app
from tests.cloud.test_testbench_mqtt import SECRET, _admin, _wait_final


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TestClient]:
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        jwt_secret=SECRET,
        broker="embedded",
        embedded_broker_port=0,
        estimator_interval_s=0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_bench_run_prints_the_outcome_and_writes_the_samples(tmp_path: Path) -> None:
    out = tmp_path / "overcharge.csv"
    result = CliRunner().invoke(app, ["run", "overcharge", "--out", str(out)])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["status"] == "completed" and outcome["safety_stop"]["limit"] == "max_soc"
    lines = out.read_text().splitlines()
    assert lines[0] == "time_s,step,current_a,voltage_v,temperature_c,soc" and len(lines) > 100
    refused = CliRunner().invoke(app, ["run", "custom"])
    assert refused.exit_code == 2 and "needs a procedure" in refused.output


def test_bench_request_follows_the_test_to_its_end(service: TestClient, tmp_path: Path) -> None:
    admin = _admin(service)
    endpoint = service.app.state.mqtt  # type: ignore[attr-defined]
    password = endpoint.password.get_secret_value()
    broker = f"mqtt://{endpoint.username}:{password}@{endpoint.host}:{endpoint.port}"
    request = tmp_path / "request.json"
    body = {
        "uuid": "9a1d8e02-4d0b-4c73-a1c5-3f7a5f1a0b64",
        "unit_under_test": "Cell-03",
        "test_type": "custom",
        "procedure": ["Discharge at 1C for 10 minutes"],
    }
    request.write_text(json.dumps(body))
    result = CliRunner().invoke(app, ["request", str(request), "--broker", broker])
    assert result.exit_code == 0, result.output
    statuses = [json.loads(line)["status"] for line in result.output.splitlines()]
    assert statuses[0] == "started" and statuses[-1] == "completed"
    assert _wait_final(service, body["uuid"], admin)["n_samples"] == 60
