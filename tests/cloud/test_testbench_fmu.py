"""An FMU of the models exchange on the virtual bench, end to end: the ECM exported as a C
FMU is stored in the exchange, a request over MQTT names it by id, the service runs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from fastapi.testclient import TestClient

from cloud.exchange import Folder, add_model
from cloud.main import create_app
from cloud.models import FmuCategory, FmuKind, FmuLevel
from cloud.settings import CloudSettings
from tests.cloud.test_testbench_mqtt import FINAL, SECRET, TOPICS, Lims, _admin, _wait_final


@pytest.fixture(scope="module")
def cell_fmu(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The nmc_okane2022 ECM as an FMI 2.0 FMU (C sources compiled here)."""
    from twin.fmu.export_c import export_c_fmu
    from twin.params import load_parameter_set

    out = tmp_path_factory.mktemp("fmu") / "cell.fmu"
    return export_c_fmu(load_parameter_set("nmc_okane2022"), out, fmi_version=2).read_bytes()


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


def test_an_fmu_from_the_exchange_runs_on_the_bench(service: TestClient, cell_fmu: bytes) -> None:
    admin = _admin(service)
    folder = Folder(FmuCategory.performance_ageing, FmuLevel.cell, "nmc", FmuKind.data_driven)
    with service.app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
        model_id = add_model(session, folder=folder, test_name="Capacity", content=cell_fmu).id
    model = {
        "kind": "fmu",
        "model_id": model_id,
        "mapping": {"current": "current", "voltage": "voltage", "soc": "soc"},
        "initial_soc": 0.5,
        "capacity_ah": 5.0,
        "min_voltage_v": 2.5,
        "max_voltage_v": 4.2,
    }
    good = {"uuid": "5d0c3f5e-1b1e-4c57-9b0f-0a3d9f0e7c11", "unit_under_test": "Cell-FMU"}
    missing = {"uuid": "5d0c3f5e-1b1e-4c57-9b0f-0a3d9f0e7c12", "unit_under_test": "Cell-FMU"}
    lims = Lims(service)

    async def script(client: aiomqtt.Client, lims: Lims) -> None:
        request = {**good, "test_type": "capacity", "model": model}
        await client.publish(TOPICS.requests, json.dumps(request), qos=1)
        nowhere = {**missing, "test_type": "capacity", "model": {**model, "model_id": 999}}
        await client.publish(TOPICS.requests, json.dumps(nowhere), qos=1)

        def done(lims: Lims) -> bool:
            return all(
                any(m.get("status") in FINAL for m in lims.on(TOPICS.results(r["uuid"])))
                for r in (good, missing)
            )

        await lims.until(client, done)

    lims.run(script)
    test = _wait_final(service, good["uuid"], admin)
    assert test["status"] == "completed", test["outcome"]
    outcome = test["outcome"]
    assert outcome["model"]["kind"] == "fmu" and outcome["model"]["interface"] == "CoSimulation"
    assert outcome["kpis"]["measured_capacity_ah"] == pytest.approx(5.0, rel=0.02)
    assert test["n_samples"] > 1000
    failed = _wait_final(service, missing["uuid"], admin)
    assert failed["status"] == "failed"
    assert "no FMU with model_id 999" in failed["outcome"]["error"]
