"""The Models Exchange Interface: FMI 2.0/3.0 uploads with their parsed descriptions,
versions that are never overwritten nor reused, the folder tree and filters, rejected
files, the size limit, read/write access and the CLI that grants it.

The FMUs are zips with a hand-written modelDescription.xml (and a dummy binary): the
exchange parses FMUs but never runs them.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from batterytwin.cli import app as cli_app
from cloud.main import create_app
from cloud.models import FmuFile, FmuModel
from cloud.settings import CloudSettings
from tests.cloud.api_fixtures import SECRET, Api

LIMIT = 32 * 1024  # bytes: the exchange's size limit in these tests
FOLDER = {
    "category": "safety_reliability",
    "level": "cell",
    "chemistry": "nmc",
    "kind": "physics_based",
}

_FMI2 = """<?xml version="1.0" encoding="UTF-8"?>
<fmiModelDescription fmiVersion="2.0" modelName="{model}"
    guid="{{8c3e5f1a-2b74-4000-8000-0000000000{tag:02d}}}"
    generationTool="hand-written for tests" variableNamingConvention="structured">
  <CoSimulation modelIdentifier="{model}" canHandleVariableCommunicationStepSize="true"/>
  <UnitDefinitions><Unit name="A"/><Unit name="V"/><Unit name="Ah"/></UnitDefinitions>
  <DefaultExperiment startTime="0" stopTime="3600" stepSize="1"/>
  <ModelVariables>
    <ScalarVariable name="current_a" valueReference="0" causality="input"
        variability="continuous" description="charge current, + discharge">
      <Real unit="A" start="0"/>
    </ScalarVariable>
    <ScalarVariable name="voltage_v" valueReference="1" causality="output"
        variability="continuous" initial="calculated">
      <Real unit="V"/>
    </ScalarVariable>
    <ScalarVariable name="capacity_ah" valueReference="2" causality="parameter"
        variability="fixed" initial="exact">
      <Real unit="Ah" start="50"/>
    </ScalarVariable>
  </ModelVariables>
  <ModelStructure>
    <Outputs><Unknown index="2"/></Outputs>
    <InitialUnknowns><Unknown index="2"/></InitialUnknowns>
  </ModelStructure>
</fmiModelDescription>
"""

_FMI3 = """<?xml version="1.0" encoding="UTF-8"?>
<fmiModelDescription fmiVersion="3.0" modelName="{model}"
    instantiationToken="{{8c3e5f1a-2b74-4000-8000-0000000003{tag:02d}}}">
  <CoSimulation modelIdentifier="{model}"/>
  <UnitDefinitions><Unit name="s"/><Unit name="degC"/></UnitDefinitions>
  <ModelVariables>
    <Float64 name="time" valueReference="0" causality="independent" variability="continuous"
        unit="s"/>
    <Float64 name="temperature_c" valueReference="1" causality="output"
        variability="continuous" unit="degC"/>
    <Float64 name="depth_mm" valueReference="2" causality="parameter" variability="fixed"
        start="3"/>
  </ModelVariables>
  <ModelStructure><Output valueReference="1"/></ModelStructure>
</fmiModelDescription>
"""

_FMI1 = """<?xml version="1.0" encoding="UTF-8"?>
<fmiModelDescription fmiVersion="1.0" modelName="Old" modelIdentifier="Old"
    guid="{8c3e5f1a-2b74-4000-8000-000000000100}" numberOfContinuousStates="0"
    numberOfEventIndicators="0">
  <ModelVariables/>
</fmiModelDescription>
"""


def _zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():  # a fixed date: the same files, the same bytes
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def make_fmu(*, fmi: str = "2.0", model: str = "Overcharge", tag: int = 1) -> bytes:
    """A small FMU whose bytes differ by ``tag``; it declares a linux64 binary (a dummy)."""
    template = _FMI3 if fmi == "3.0" else _FMI2
    binary = f"binaries/{'x86_64-linux' if fmi == '3.0' else 'linux64'}/{model}.so"
    return _zip({"modelDescription.xml": template.format(model=model, tag=tag), binary: b"\0"})


@pytest.fixture
def exchange(database_url: str) -> Iterator[Api]:
    """The API with a small FMU size limit (the tests' FMUs are about 1 kB)."""
    settings = CloudSettings(
        database_url=database_url,
        jwt_secret=SECRET,
        token_rate_per_minute=1000,
        broker="none",
        estimator_interval_s=0,
        fmu_max_bytes=LIMIT,
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client)


def upload(
    api: Api,
    headers: dict[str, str],
    content: bytes,
    *,
    expect: int = 201,
    file_name: str = "upload.fmu",
    **fields: Any,
) -> Any:
    form = {**FOLDER, "test_name": "Overcharge", **fields}
    response = api.client.post(
        "/api/models/",
        data={k: str(v) for k, v in form.items()},
        files={"file": (file_name, content, "application/octet-stream")},
        headers=headers,
    )
    assert response.status_code == expect, response.text
    return response.json()


def stored(api: Api) -> tuple[int, int]:
    """(metadata rows, byte rows) in the database."""
    with api.sessions() as session:
        models = session.scalar(select(func.count()).select_from(FmuModel))
        files = session.scalar(select(func.count()).select_from(FmuFile))
    return models or 0, files or 0


def test_upload_stores_the_parsed_description_of_fmi2_and_fmi3(exchange: Api) -> None:
    writer = exchange.user("wp4", "service", models_access="write")
    fmu2 = make_fmu()
    created = exchange.client.post(
        "/api/models/",
        data={**FOLDER, "test_name": "Overcharge", "note": "first cut"},
        files={"file": ("Overcharge.fmu", fmu2)},
        headers=writer,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/api/models/{body['id']}/"
    assert body["folder"] == "safety_reliability/cell/nmc/physics_based"
    assert (body["test_name"], body["version"], body["file_name"]) == (
        "Overcharge",
        1,
        "Overcharge_v1.fmu",
    )
    assert body["size_bytes"] == len(fmu2)
    assert body["sha256"] == hashlib.sha256(fmu2).hexdigest()
    assert (body["fmi_version"], body["model_name"], body["note"]) == (
        "2.0",
        "Overcharge",
        "first cut",
    )

    detail = exchange.client.get(f"/api/models/{body['id']}/", headers=writer).json()
    description = detail["model_description"]
    variables = {v["name"]: v for v in description["variables"]}
    assert {n: (v["causality"], v["unit"]) for n, v in variables.items()} == {
        "current_a": ("input", "A"),
        "voltage_v": ("output", "V"),
        "capacity_ah": ("parameter", "Ah"),
    }
    assert variables["capacity_ah"]["start"] == "50"
    assert description["platforms"] == ["linux64"]
    assert description["interfaces"] == ["CoSimulation"]
    assert description["default_experiment"]["stop_time_s"] == 3600.0

    fmu3 = make_fmu(fmi="3.0", model="NailPenetration")
    three = upload(exchange, writer, fmu3, test_name="Nail-penetration", level="pack")
    assert (three["fmi_version"], three["file_name"]) == ("3.0", "Nail-penetration_v1.fmu")
    variables = {v["name"]: v for v in three["model_description"]["variables"]}
    assert variables["temperature_c"]["unit"] == "degC"
    assert variables["time"]["causality"] == "independent"
    assert len(three["model_description"]["platforms"]) == 1  # FMPy names it its own way
    assert stored(exchange) == (2, 2)


def test_versions_are_added_and_never_overwritten(exchange: Api) -> None:
    admin = exchange.user("admin", "admin")
    first, second = make_fmu(tag=1), make_fmu(tag=2)
    v1 = upload(exchange, admin, first)
    v2 = upload(exchange, admin, second)
    assert (v1["version"], v2["version"]) == (1, 2)
    for row, content in ((v1, first), (v2, second)):
        download = exchange.client.get(row["download_url"], headers=admin)
        assert download.status_code == 200
        assert download.content == content
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.headers["content-disposition"] == (
            f"attachment; filename=Overcharge_v{row['version']}.fmu"
        )

    taken = upload(exchange, admin, make_fmu(tag=3), version=1, expect=409)
    assert "Overcharge_v1.fmu exists already" in taken["detail"]
    assert "version 3" in taken["detail"]  # what leaving the version out would give
    assert upload(exchange, admin, make_fmu(tag=5), version=5)["version"] == 5
    assert upload(exchange, admin, make_fmu(tag=6))["version"] == 6
    # Versions count per folder and test; a test name differing only in case is refused.
    assert upload(exchange, admin, first, kind="data_driven")["version"] == 1
    assert upload(exchange, admin, first, test_name="Overdischarge")["version"] == 1
    case = upload(exchange, admin, first, test_name="overcharge", expect=409)
    assert "test_name=Overcharge" in case["detail"]
    assert exchange.client.get(v1["download_url"], headers=admin).content == first


def test_delete_removes_one_version_and_its_bytes_and_its_number_stays_taken(
    exchange: Api,
) -> None:
    writer = exchange.user("wp3", "operator", models_access="write")
    v1, v2 = (upload(exchange, writer, make_fmu(tag=t)) for t in (1, 2))
    assert exchange.client.delete(f"/api/models/{v2['id']}/", headers=writer).status_code == 204
    assert exchange.client.get(f"/api/models/{v2['id']}/", headers=writer).status_code == 404
    assert exchange.client.get(v2["download_url"], headers=writer).status_code == 404
    assert exchange.client.delete(f"/api/models/{v2['id']}/", headers=writer).status_code == 404
    assert exchange.client.get(v1["download_url"], headers=writer).content == make_fmu(tag=1)
    assert stored(exchange) == (2, 1)  # the deleted version's row stays, its bytes go
    listed = exchange.client.get("/api/models/", headers=writer).json()
    assert [row["version"] for row in listed] == [1]

    again = upload(exchange, writer, make_fmu(tag=2), version=2, expect=409)
    assert "was deleted" in again["detail"]
    assert upload(exchange, writer, make_fmu(tag=3))["version"] == 3


def test_list_filters_paging_and_tree(exchange: Api) -> None:
    admin = exchange.user("admin", "admin")
    fmu = make_fmu()
    upload(exchange, admin, fmu)  # safety/cell/nmc/physics Overcharge v1
    upload(exchange, admin, fmu)  # ... v2
    upload(exchange, admin, fmu, test_name="Short_circuit")
    upload(exchange, admin, fmu, category="performance_ageing", chemistry="Solid-State")
    upload(exchange, admin, fmu, category="performance_ageing", level="pack", kind="data_driven")

    def names(query: str) -> list[str]:
        response = exchange.client.get(f"/api/models/?{query}", headers=admin)
        assert response.status_code == 200, response.text
        return [f"{r['folder']}/{r['file_name']}" for r in response.json()]

    assert names("category=safety_reliability") == [
        "safety_reliability/cell/nmc/physics_based/Overcharge_v2.fmu",
        "safety_reliability/cell/nmc/physics_based/Overcharge_v1.fmu",
        "safety_reliability/cell/nmc/physics_based/Short_circuit_v1.fmu",
    ]
    assert names("category=safety_reliability&latest_only=true") == [
        "safety_reliability/cell/nmc/physics_based/Overcharge_v2.fmu",
        "safety_reliability/cell/nmc/physics_based/Short_circuit_v1.fmu",
    ]
    assert names("chemistry=solid_state") == names("chemistry=Solid%20state")
    assert names("chemistry=solid_state") == [
        "performance_ageing/cell/solid_state/physics_based/Overcharge_v1.fmu"
    ]
    assert names("level=pack&kind=data_driven") == [
        "performance_ageing/pack/nmc/data_driven/Overcharge_v1.fmu"
    ]
    assert len(names("test_name=Overcharge")) == 4
    assert names("test_name=Nothing") == []
    assert exchange.client.get("/api/models/?level=rack", headers=admin).status_code == 422
    assert exchange.client.get("/api/models/?chemistry=n%2Fa", headers=admin).status_code == 422

    page = exchange.client.get("/api/models/?limit=2", headers=admin)
    assert len(page.json()) == 2
    assert "model_description" not in page.json()[0]
    assert 'rel="next"' in page.headers["link"] and "offset=2" in page.headers["link"]
    last = exchange.client.get("/api/models/?limit=2&offset=4", headers=admin)
    assert len(last.json()) == 1 and "link" not in last.headers

    tree = exchange.client.get("/api/models/tree/", headers=admin).json()
    assert [(c["category"], c["display_name"], c["count"]) for c in tree] == [
        ("performance_ageing", "Performance and ageing tests", 2),
        ("safety_reliability", "Safety and reliability tests", 3),
    ]
    safety_cell = tree[1]["levels"][0]
    assert (safety_cell["level"], safety_cell["count"]) == ("cell", 3)
    assert [lv["count"] for lv in tree[1]["levels"]] == [3, 0, 0]  # cell, module, pack
    (nmc,) = safety_cell["chemistries"]
    physics, data = nmc["kinds"]
    assert (physics["kind"], physics["count"], data["count"]) == ("physics_based", 3, 0)
    assert [
        (t["test_name"], t["versions"], t["latest_version"], t["latest_file_name"])
        for t in physics["tests"]
    ] == [
        ("Overcharge", 2, 2, "Overcharge_v2.fmu"),
        ("Short_circuit", 1, 1, "Short_circuit_v1.fmu"),
    ]
    latest = exchange.client.get(f"/api/models/{physics['tests'][0]['latest_id']}/", headers=admin)
    assert latest.json()["version"] == 2
    ageing_chems = [c["chemistry"] for lv in tree[0]["levels"] for c in lv["chemistries"]]
    assert ageing_chems == ["solid_state", "nmc"]  # cell, then pack


def test_files_that_are_not_fmus_are_rejected_and_nothing_is_stored(exchange: Api) -> None:
    admin = exchange.user("admin", "admin")
    for content, reason in (
        (b"PK\x03\x04 this is not really a zip", "not a valid zip archive"),
        (_zip({"README.txt": "no description"}), "no modelDescription.xml"),
        (_zip({"modelDescription.xml": _FMI1}), "FMI version 1.0 is not supported"),
        (_zip({"modelDescription.xml": "<fmiModelDescription"}), "modelDescription.xml"),
    ):
        refused = upload(exchange, admin, content, file_name="Broken.fmu", expect=422)
        assert reason in refused["detail"]
        assert refused["detail"].startswith("Broken.fmu")
    assert stored(exchange) == (0, 0)


def test_oversize_uploads_are_refused_with_413(exchange: Api) -> None:
    admin = exchange.user("admin", "admin")
    padding = bytes(range(256)) * 160  # 40 kB, stored uncompressed
    large = _zip({"modelDescription.xml": _FMI2.format(model="Big", tag=9), "resources/x": padding})
    assert len(large) > LIMIT
    streamed = upload(exchange, admin, large, file_name="Big.fmu", expect=413)
    assert "Big.fmu is larger than 32,768 bytes" in streamed["detail"]
    declared = upload(exchange, admin, large * 4, expect=413)  # refused by Content-Length
    assert "the upload" in declared["detail"]
    assert stored(exchange) == (0, 0)


def test_form_fields_are_validated(exchange: Api) -> None:
    admin = exchange.user("admin", "admin")
    fmu = make_fmu()

    def problems(**fields: Any) -> dict[str, str]:
        detail = upload(exchange, admin, fmu, expect=422, **fields)["detail"]
        return {"/".join(map(str, d["loc"])): d["msg"] for d in detail}

    assert "only letters, digits" in problems(test_name="Over charge!")["body/test_name"]
    assert (
        "send test_name=Overcharge and version=3"
        in problems(test_name="Overcharge_v3")["body/test_name"]
    )
    assert set(problems(category="wp5", level="rack", version="0")) == {
        "body/category",
        "body/level",
        "body/version",
    }
    assert "body/colour" in problems(colour="red")
    assert "e.g. nmc, lfp" in problems(chemistry="NMC/811")["body/chemistry"]
    no_file = exchange.client.post("/api/models/", data=FOLDER, headers=admin)
    assert no_file.status_code == 400  # not multipart without a file part
    only_fields = exchange.client.post(
        "/api/models/", data=FOLDER, files={"other": ("x", b"")}, headers=admin
    )
    assert {"/".join(d["loc"]) for d in only_fields.json()["detail"]} >= {
        "body/file",
        "body/test_name",
        "body/other",
    }
    assert upload(exchange, admin, fmu, version="", note="")["version"] == 1  # blank = absent
    assert stored(exchange) == (1, 1)


def test_read_only_users_browse_and_download_writers_upload_and_delete(
    exchange: Api, database_url: str
) -> None:
    admin = exchange.user("admin", "admin")
    reader = exchange.user("reader", "service")  # read access by default
    device = exchange.user("edge", "device", models_access="write")  # devices: never
    stored_v1 = upload(exchange, admin, make_fmu())
    model = f"/api/models/{stored_v1['id']}/"
    for path in ("/api/models/", "/api/models/tree/", model, f"{model}download/"):
        assert exchange.client.get(path, headers=reader).status_code == 200, path
        refused = exchange.client.get(path, headers=device)
        assert refused.status_code == 403 and "device" in refused.json()["detail"], path
        assert exchange.client.get(path).status_code == 401, path
    read_only = upload(exchange, reader, make_fmu(tag=2), expect=403)
    assert "models-access reader write" in read_only["detail"]
    assert exchange.client.delete(model, headers=reader).status_code == 403
    upload(exchange, device, make_fmu(tag=2), expect=403)
    assert exchange.client.post("/api/models/", files={"file": ("x", b"")}).status_code == 401
    assert stored(exchange) == (1, 1)

    runner = CliRunner()
    granted = runner.invoke(
        cli_app, ["cloud", "user", "models-access", "reader", "write", "--db", database_url]
    )
    assert granted.exit_code == 0, granted.output
    assert "'reader' has write access" in granted.output
    assert upload(exchange, reader, make_fmu(tag=2))["version"] == 2  # the same token
    assert exchange.client.delete(model, headers=reader).status_code == 204
    added = runner.invoke(
        cli_app,
        [
            "cloud", "user", "add", "--username", "wp3", "--password", "password-123",
            "--role", "operator", "--models-access", "write", "--db", database_url,
        ],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    tokens = exchange.client.post(
        "/api/token/", json={"username": "wp3", "password": "password-123"}
    ).json()
    assert upload(exchange, {"Authorization": f"Bearer {tokens['access']}"}, make_fmu(tag=3))
    wrong = runner.invoke(
        cli_app, ["cloud", "user", "models-access", "reader", "delete", "--db", database_url]
    )
    assert wrong.exit_code != 0 and "choose read" in wrong.output
