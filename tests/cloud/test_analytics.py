"""Battery Analytics: both file formats and their quirks, the seed's response shape, the
restricted unpickler, size limits, the ``analyze`` command, attaching results to batteries."""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import io
import json
import os
import pickle
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from batterytwin.cli import app as cli_app
from benches.analytics import OCV_PEAKS, synthetic_cell, synthetic_pickle
from cloud.analytics import (
    MAX_FILE_BYTES,
    SEED_SECTIONS,
    AnalysisConfig,
    AnalyticsInputError,
    FileTooLargeError,
    analyse_upload,
)
from cloud.models import AnalyticsResult
from tests.cloud.api_fixtures import Api

SEED_README = Path("/work/shared/seeds/004_af61dd8c0ef5a97a.txt")
# The response of the seed's README, section by section (nested dicts name nested keys).
SEED_KEYS: dict[str, Any] = {
    "metadata": [
        "cell_id",
        "form_factor",
        "nominal_capacity_in_Ah",
        "total_cycles",
        "first_cycle_number",
        "last_cycle_number",
        "test_temperature_C",
    ],
    "capacity_fade": [
        "cycle_numbers",
        "charge_capacities",
        "discharge_capacities",
        "coulombic_efficiencies",
        "capacity_fade_percentage",
        "capacity_fade_rate_per_cycle",
        "capacity_retention_percentage",
        "capacity_plot",
    ],
    "voltage_profile": {
        "voltage_curves": None,
        "voltage_stats": ["min_voltage", "max_voltage", "avg_voltage"],
        "voltage_profile_plot": None,
        "differential_voltage_plot": None,
    },
    "temperature_analysis": {
        "has_temperature_data": None,
        "average_temperature": None,
        "temperature_range": ["min", "max"],
        "temperature_stats": None,
        "temperature_vs_capacity_plot": None,
    },
    "statistical_metrics": {
        "charge_discharge_stats": None,
        "current_stats": None,
        "voltage_stats": None,
        "cycle_life_projection": ["fade_rate", "projected_eol_cycle", "confidence"],
    },
    "battery_health": [
        "health_score",
        "health_status",
        "capacity_retention",
        "degradation_indicators",
    ],
}
PLOTS = [
    ("capacity_fade", "capacity_plot"),
    ("voltage_profile", "voltage_profile_plot"),
    ("voltage_profile", "differential_voltage_plot"),
    ("voltage_profile", "incremental_capacity_plot"),
    ("temperature_analysis", "temperature_vs_capacity_plot"),
]


def _key_tree(keys: Any) -> dict[str, Any]:
    if isinstance(keys, list):
        return {k: None for k in keys}
    return {k: _key_tree(v) if v is not None else None for k, v in keys.items()}


def _readme_keys(text: str) -> dict[str, Any]:
    """The key tree of the README's response example (its JSON with "..." elided)."""
    block = text.split("**Response Format**:", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    block = re.sub(r"\[[^\[\]]*\.\.\.[^\[\]]*\]", "[]", block)
    block = block.replace("{...}", "{}")

    def tree(value: Any) -> Any:
        if isinstance(value, dict) and value:
            return {k: tree(v) for k, v in value.items()}
        return None

    keys: dict[str, Any] = tree(json.loads(block))
    return keys


def _assert_has_keys(result: dict[str, Any], tree: dict[str, Any], where: str = "") -> None:
    for key, sub in tree.items():
        assert key in result, f"{where}{key} missing"
        if sub is not None:
            assert isinstance(result[key], dict), f"{where}{key} is not an object"
            _assert_has_keys(result[key], sub, f"{where}{key}.")


def _png(value: str) -> bytes:
    data = base64.b64decode(value, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


def _csv_set(cell: dict[str, Any], name: str = "CELL_1") -> list[tuple[str, bytes]]:
    """The CSV export of a pickle dict: samples in long format, metadata in one row,
    one metrics row per cycle (with the internal resistance)."""
    columns = [
        "cycle_number",
        "time_in_s",
        "current_in_A",
        "voltage_in_V",
        "charge_capacity_in_Ah",
        "discharge_capacity_in_Ah",
        "temperature_in_C",
    ]
    cycles = io.StringIO()
    writer = csv.writer(cycles)
    writer.writerow(["", *columns])  # the index column pandas writes
    row = 0
    for cycle in cell["cycle_data"]:
        temps = cycle.get("temperature_in_C") or [None] * len(cycle["voltage_in_V"])
        for k in range(len(cycle["voltage_in_V"])):
            values = [cycle["cycle_number"]] + [float(cycle[c][k]) for c in columns[1:-1]]
            temp = "" if temps[k] is None else float(temps[k])
            writer.writerow([row, *values, temp])
            row += 1
    meta = {k: v for k, v in cell.items() if k != "cycle_data"}
    metadata = io.StringIO()
    writer = csv.writer(metadata)
    writer.writerow(meta.keys())
    writer.writerow(["" if v is None else v for v in meta.values()])
    metrics = io.StringIO()
    writer = csv.writer(metrics)
    writer.writerow(["cycle_number", "internal_resistance_in_ohm"])
    for cycle in cell["cycle_data"]:
        writer.writerow([cycle["cycle_number"], cycle["internal_resistance_in_ohm"]])
    return [
        (f"{name}_cycles.csv", cycles.getvalue().encode()),
        (f"{name}_metadata.csv", metadata.getvalue().encode()),
        (f"{name}_metrics.csv", metrics.getvalue().encode()),
    ]


@pytest.fixture(scope="module")
def quirky() -> bytes:
    """100 cycles of numpy floats, starting at 2, with time resets and a charge capacity
    that also counts during discharge."""
    return synthetic_pickle()


@pytest.fixture(scope="module")
def quirky_result(quirky: bytes) -> dict[str, Any]:
    return analyse_upload([("SYNTH_25_B001.pkl", quirky)])


# --- the response shape --------------------------------------------------------------


def test_seed_keys_are_the_readme_keys() -> None:
    if not SEED_README.is_file():
        pytest.skip(f"{SEED_README} not present (the literal SEED_KEYS stands in for it)")
    assert _readme_keys(SEED_README.read_text()) == _key_tree(SEED_KEYS)
    assert tuple(SEED_KEYS) == SEED_SECTIONS


def test_response_has_the_seed_sections_and_keys(quirky_result: dict[str, Any]) -> None:
    assert list(quirky_result) == [*SEED_SECTIONS, "data_quality"]
    _assert_has_keys(quirky_result, _key_tree(SEED_KEYS))
    json.dumps(quirky_result, allow_nan=False)  # plain JSON: no NaN, no numpy types
    for section, key in PLOTS:
        _png(quirky_result[section][key])
    meta = quirky_result["metadata"]
    assert meta["cell_id"] == "SYNTH_25_B001"
    assert (meta["total_cycles"], meta["first_cycle_number"], meta["last_cycle_number"]) == (
        100,
        2,
        101,
    )
    health = quirky_result["battery_health"]
    assert health["health_status"] in ("Excellent", "Good", "Fair", "Poor", "Critical")
    assert 0 <= health["health_score"] <= 100
    assert all(isinstance(i, str) for i in health["degradation_indicators"])


# --- quirks of real files ------------------------------------------------------------


def test_quirks_are_repaired_and_reported(quirky_result: dict[str, Any]) -> None:
    quality = quirky_result["data_quality"]
    assert quality["format"] == "pickle"
    assert quality["value_types"] == ["numpy.float64"]
    assert quality["first_cycle_number"] == 2
    assert any("cycles start at 2" in note for note in quality["notes"])
    # synthetic_cell resets the clock inside every 7th cycle (k % 7 == 3): 14 cycles
    assert quality["time_resets"]["count"] == 14
    assert quality["time_resets"]["cycles"] == 14
    assert quality["charge_capacity_source"].startswith("coulomb counting")
    assert "rises during discharge" in quality["charge_capacity_source"]
    assert quality["discharge_capacity_source"] == "discharge_capacity_in_Ah"
    assert "coulomb counting" in quality["coulombic_efficiency"]
    assert quality["current_sign"].startswith("charge positive")
    # coulomb counting over repaired time: CE near 100 %, not the column's ~50 %
    ce = np.array(quirky_result["capacity_fade"]["coulombic_efficiencies"])
    assert np.all(np.abs(ce - 100.0) < 1.5), ce.min()


def test_python_and_numpy_floats_give_the_same_analysis(quirky_result: dict[str, Any]) -> None:
    plain = analyse_upload([("SYNTH_25_B001.pkl", synthetic_pickle(numpy_floats=False))])
    assert plain["data_quality"]["value_types"] == ["python float"]
    for section in ("capacity_fade", "statistical_metrics", "battery_health"):
        left = {k: v for k, v in plain[section].items() if not k.endswith("_plot")}
        right = {k: v for k, v in quirky_result[section].items() if not k.endswith("_plot")}
        assert left == right


def test_clean_file_uses_the_capacity_columns() -> None:
    data = synthetic_pickle(
        first_cycle=1, time_resets=False, charge_during_discharge=False, numpy_floats=False
    )
    result = analyse_upload([("clean.pkl", data)], plots=False)
    quality = result["data_quality"]
    assert quality["charge_capacity_source"] == "charge_capacity_in_Ah"
    assert "time_resets" not in quality and "coulombic_efficiency" not in quality
    assert not any("cycles start" in n for n in quality["notes"])
    assert result["capacity_fade"]["capacity_plot"] is None  # plots=False


def test_discharge_positive_files_are_flipped() -> None:
    cell = synthetic_cell(cycles=20, numpy_floats=False)
    for cycle in cell["cycle_data"]:
        cycle["current_in_A"] = [-i for i in cycle["current_in_A"]]
    result = analyse_upload([("flipped.pkl", pickle.dumps(cell))], plots=False)
    assert result["data_quality"]["current_sign"].startswith("flipped")
    assert result["capacity_fade"]["discharge_capacities"][0] > 50


def test_missing_temperatures_and_resistances_are_reported() -> None:
    cell = synthetic_cell(cycles=12, temperature=False, numpy_floats=False)
    cell["cell_id"] = "CALB_35_B249"
    for cycle in cell["cycle_data"]:
        cycle["internal_resistance_in_ohm"] = None
    result = analyse_upload([("calb.pkl", pickle.dumps(cell))])
    temperature = result["temperature_analysis"]
    assert temperature["has_temperature_data"] is False
    assert temperature["average_temperature"] == 35.0  # from the cell id, as the seed
    assert temperature["temperature_vs_capacity_plot"] is None
    assert result["metadata"]["test_temperature_C"] == 35.0
    absent = result["data_quality"]["absent_columns"]
    assert "temperature_in_C" in absent and "internal_resistance_in_ohm" in absent


def test_unsorted_and_repeated_cycles() -> None:
    cell = synthetic_cell(cycles=10, numpy_floats=False)
    cycles = cell["cycle_data"]
    cell["cycle_data"] = [cycles[3], *cycles, copy.deepcopy(cycles[5])]
    result = analyse_upload([("messy.pkl", pickle.dumps(cell))], plots=False)
    assert result["capacity_fade"]["cycle_numbers"] == list(range(2, 12))
    notes = " ".join(result["data_quality"]["notes"])
    assert "sorted" in notes and "2 repeated cycle numbers" in notes


# --- beyond the seed: EOL model, dQ/dV, voltage limits -------------------------------


def test_eol_projection_fits_the_fade_law(quirky_result: dict[str, Any]) -> None:
    life = quirky_result["statistical_metrics"]["cycle_life_projection"]
    # synthetic_cell: Q = Q0 (1 - 8e-4 n^0.9); EOL where Q = 0.8 Q(initial)
    k, initial = 8e-4, 1 - 8e-4 * 3**0.9
    truth = ((1 - 0.8 * initial) / k) ** (1 / 0.9)
    assert abs(life["projected_eol_cycle"] - truth) / truth < 0.05
    low, high = life["projected_eol_interval"]
    assert low <= life["projected_eol_cycle"] <= high
    assert 0.0 <= life["confidence"] <= 1.0
    assert life["fade_rate"] < 0
    assert life["parameters"]["b"] == pytest.approx(0.9, abs=0.15)
    assert life["r_squared"] > 0.95


def test_no_fade_means_no_projection() -> None:
    data = synthetic_pickle(
        cycles=30, fade_per_cycle=0.0, resistance_growth_per_cycle=0.0, numpy_floats=False
    )
    life = analyse_upload([("flat.pkl", data)], plots=False)["statistical_metrics"][
        "cycle_life_projection"
    ]
    if life["projected_eol_cycle"] is not None:  # noise may fit a tiny fade
        assert life["projected_eol_cycle"] > 3000
        assert life["projected_eol_interval"][1] is None or life["confidence"] < 0.9


def test_incremental_capacity_finds_and_tracks_the_peaks(quirky_result: dict[str, Any]) -> None:
    ic = quirky_result["voltage_profile"]["incremental_capacity"]
    peaks = ic["peaks"]
    # the OCV's phase changes, seen in discharge at OCV - I*R (29 A * 1.2 mOhm = 35 mV)
    expected = [volts - 0.035 for volts, _, _ in OCV_PEAKS]
    assert [p["reference_voltage_V"] for p in peaks] == pytest.approx(expected, abs=0.015)
    for peak in peaks:
        assert len(peak["voltage_V"]) == len(peak["cycle_numbers"]) == 100
        # resistance grows 0.3 %/cycle: -29 A * 1.2 mOhm * 0.3 % * 99 = about -10 mV
        assert -20 < peak["shift_mV"] < -4 and peak["shift_significant"]
        assert -10 < peak["height_change_percentage"] < 0
    assert len(ic["curves"]) == 5
    assert len(ic["voltage_grid_V"]) == len(ic["curves"][0]["dq_dv_Ah_per_V"])


def test_few_noisy_cycles_raise_no_peak_shift() -> None:
    result = analyse_upload([("short.pkl", synthetic_pickle(cycles=15))], plots=False)
    peaks = result["voltage_profile"]["incremental_capacity"]["peaks"]
    assert len(peaks) == 3 and not any(p["shift_significant"] for p in peaks)
    assert "dQ/dV Peak Shift" not in result["battery_health"]["degradation_indicators"]


def test_voltage_limits_have_a_tolerance() -> None:
    cell = synthetic_cell(cycles=12, numpy_floats=False)
    cell["cycle_data"][4]["voltage_in_V"][10] = 4.21  # within the 20 mV tolerance
    result = analyse_upload([("ok.pkl", pickle.dumps(cell))], plots=False)
    over = result["statistical_metrics"]["voltage_stats"]["over_voltage"]
    assert over["samples"] == 0 and over["limit_in_V"] == 4.2
    assert "Overvoltage Detected" not in result["battery_health"]["degradation_indicators"]
    cell["cycle_data"][4]["voltage_in_V"][10] = 4.3
    cell["cycle_data"][7]["voltage_in_V"][300] = 2.6
    result = analyse_upload([("spike.pkl", pickle.dumps(cell))], plots=False)
    stats = result["statistical_metrics"]["voltage_stats"]
    assert stats["over_voltage"]["samples"] == 1 and stats["over_voltage"]["cycle_numbers"] == [6]
    assert stats["under_voltage"]["cycle_numbers"] == [9]
    indicators = result["battery_health"]["degradation_indicators"]
    assert "Overvoltage Detected" in indicators and "Undervoltage Detected" in indicators
    loose = analyse_upload(
        [("spike.pkl", pickle.dumps(cell))],
        plots=False,
        config=AnalysisConfig(voltage_tolerance_v=0.2),
    )
    assert loose["statistical_metrics"]["voltage_stats"]["over_voltage"]["samples"] == 0


# --- CSV set -------------------------------------------------------------------------


def test_csv_set_matches_the_pickle() -> None:
    cell = synthetic_cell(cycles=15, numpy_floats=False)
    cell["cycle_data"][3]["temperature_in_C"][5] = None  # an empty cell in the CSV
    from_pickle = analyse_upload([("CELL_1.pkl", pickle.dumps(cell))], plots=False)
    from_csv = analyse_upload(_csv_set(cell))
    assert list(from_csv) == [*SEED_SECTIONS, "data_quality"]
    _assert_has_keys(from_csv, _key_tree(SEED_KEYS))
    for key in ("cycle_numbers", "discharge_capacities", "charge_capacities"):
        assert from_csv["capacity_fade"][key] == pytest.approx(
            from_pickle["capacity_fade"][key], rel=1e-4
        )
    assert from_csv["metadata"]["cell_id"] == "SYNTH_25_B001"
    assert from_csv["metadata"]["nominal_capacity_in_Ah"] == 58.0
    quality = from_csv["data_quality"]
    assert quality["format"] == "csv" and quality["value_types"] == ["csv text"]
    assert quality["metrics_file"]["columns_used"] == ["internal_resistance_in_ohm"]
    assert from_csv["battery_health"] == from_pickle["battery_health"]
    _png(from_csv["voltage_profile"]["incremental_capacity_plot"])


def test_csv_cycles_file_alone_is_enough() -> None:
    cycles = _csv_set(synthetic_cell(cycles=8, numpy_floats=False), name="B7")[0]
    result = analyse_upload([cycles], plots=False)
    assert result["metadata"]["cell_id"] == "B7"
    assert any("no B7_metadata.csv" in n for n in result["data_quality"]["notes"])


# --- invalid or incomplete data ------------------------------------------------------


def _error(files: list[tuple[str, bytes]]) -> str:
    with pytest.raises(AnalyticsInputError) as raised:
        analyse_upload(files, plots=False)
    return str(raised.value)


def test_missing_keys_are_named() -> None:
    cell = synthetic_cell(cycles=6, numpy_floats=False)
    for k in (1, 4):
        del cell["cycle_data"][k]["voltage_in_V"]
    del cell["cycle_data"][2]["time_in_s"]
    message = _error([("broken.pkl", pickle.dumps(cell))])
    assert "voltage_in_V (cycle_data[1, 4] of 2 cycles)" in message
    assert "time_in_s (cycle_data[2] of 1 cycles)" in message
    assert "'cycle_data' is missing" in _error([("x.pkl", pickle.dumps({"cell_id": "x"}))])
    assert "expected a dict" in _error([("x.pkl", pickle.dumps([1, 2, 3]))])
    short = synthetic_cell(cycles=3, numpy_floats=False)
    short["cycle_data"][1]["current_in_A"].pop()
    assert "399 current_in_A values" in _error([("s.pkl", pickle.dumps(short))])
    files = _csv_set(synthetic_cell(cycles=3, numpy_floats=False))
    name, data = files[0]
    header, _, body = data.decode().partition("\n")
    no_voltage = header.replace("voltage_in_V", "volts") + "\n" + body
    assert "missing columns voltage_in_V" in _error([(name, no_voltage.encode())])
    assert "lacks CELL_1_cycles.csv" in _error(files[1:])


def test_wrong_files_are_refused_with_a_reason() -> None:
    data = synthetic_pickle(cycles=3, numpy_floats=False)
    assert "file type not allowed: notes.txt" in _error([("notes.txt", b"hello")])
    assert "one cell per upload" in _error([("a.pkl", data), ("b.pkl", data)])
    assert "one cell per upload" in _error([("a.pkl", data), ("a_cycles.csv", b"x")])
    assert "must be named" in _error([("cycles.csv", b"cycle_number\n1\n")])
    assert "not a readable pickle" in _error([("junk.pkl", b"not a pickle at all")])
    assert "no file" in _error([])


class _Marker:
    """Unpickling this runs ``command`` (what an attacker's file would do)."""

    def __init__(self, call: Any, *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call, self.args


def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attacks = {
        "os.system": _Marker(os.system, f"touch {marker}"),
        "subprocess.Popen": _Marker(subprocess.Popen, ["touch", str(marker)]),
        "builtins.exec": _Marker(exec, f"open({str(marker)!r}, 'w').close()"),
    }
    for name, attack in attacks.items():
        cell = synthetic_cell(cycles=3, numpy_floats=False)
        cell["cycle_data"][1]["voltage_in_V"][0] = attack  # deep inside the data
        message = _error([("evil.pkl", pickle.dumps(cell))])
        function = name.rpartition(".")[2]
        assert "refused global" in message and function in message, message
        assert not marker.exists(), name
    # the textbook payload, protocol 0: GLOBAL os.system, REDUCE
    raw = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    assert "refused global os.system" in _error([("evil.pkl", raw)])
    assert not marker.exists()
    # numpy object arrays would carry any object: refused by dtype
    objects = np.array([1.0, "x", None], dtype=object)
    assert "refused numpy dtype '|O'" in _error([("obj.pkl", pickle.dumps({"a": objects}))])


def test_numpy_arrays_are_rebuilt_safely() -> None:
    cell = synthetic_cell(cycles=6, numpy_floats=False)
    for cycle in cell["cycle_data"]:
        for key in ("voltage_in_V", "current_in_A", "time_in_s"):
            cycle[key] = np.asarray(cycle[key], dtype=np.float32)
    for protocol in (2, 4, 5):
        result = analyse_upload(
            [("arrays.pkl", pickle.dumps(cell, protocol=protocol))], plots=False
        )
        assert result["metadata"]["total_cycles"] == 6


def test_oversized_file_is_refused_before_analysis() -> None:
    with pytest.raises(FileTooLargeError, match="at most 50 MB"):
        analyse_upload([("big.pkl", b"\0" * (MAX_FILE_BYTES + 1))])


# --- the HTTP API --------------------------------------------------------------------


def _upload(
    api: Api, files: list[tuple[str, bytes]], headers: dict[str, str], **params: Any
) -> Any:
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    return api.client.post("/api/upload", files=parts, headers=headers, params=params)


def test_upload_over_http(api: Api, quirky: bytes) -> None:
    service = api.user("analyst", "service")
    response = _upload(api, [("SYNTH_25_B001.pkl", quirky)], service)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == [*SEED_SECTIONS, "data_quality"]
    _png(body["capacity_fade"]["capacity_plot"])
    slash = api.client.post(
        "/api/upload/",
        files=[("file", (n, d)) for n, d in _csv_set(synthetic_cell(cycles=5))],
        headers=service,
    )
    assert slash.status_code == 200, slash.text
    with api.sessions() as session:
        assert session.query(AnalyticsResult).count() == 0  # nothing stored


def test_upload_errors_over_http(api: Api, tmp_path: Path) -> None:
    service = api.user("analyst", "service")
    assert _upload(api, [("a.pkl", b"x")], {}).status_code == 401
    device = api.user("edge", "device")
    assert _upload(api, [("a.pkl", b"x")], device).status_code == 403
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Marker(os.system, f"touch {marker}"))
    refused = _upload(api, [("evil.pkl", evil)], service)
    assert refused.status_code == 400
    assert "refused global" in refused.json()["detail"] and not marker.exists()
    cell = synthetic_cell(cycles=4, numpy_floats=False)
    del cell["cycle_data"][2]["current_in_A"]
    missing = _upload(api, [("m.pkl", pickle.dumps(cell))], service)
    assert missing.status_code == 400 and "current_in_A" in missing.json()["detail"]
    not_form = api.client.post("/api/upload", content=b"{}", headers=service)
    assert not_form.status_code == 400 and "multipart/form-data" in not_form.json()["detail"]
    no_file = api.client.post(
        "/api/upload", data={"other": "1"}, files={"x": ("a", b"1")}, headers=service
    )
    assert no_file.status_code == 400 and "field 'file'" in no_file.json()["detail"]
    too_many = _upload(
        api, [(f"c_{k}.csv", b"1") for k in ("cycles", "metadata", "metrics", "x")], service
    )
    assert too_many.status_code == 400 and "at most 3 files" in too_many.json()["detail"]


def test_oversized_upload_is_413(api: Api) -> None:
    service = api.user("analyst", "service")
    response = _upload(api, [("big.pkl", b"\0" * (MAX_FILE_BYTES + 1))], service)
    assert response.status_code == 413
    assert "big.pkl is larger than 50 MB" in response.json()["detail"]


def test_reading_stops_at_the_limit() -> None:
    """The stream is read no further than the part that passes the limit."""
    import asyncio

    from fastapi import HTTPException
    from starlette.requests import Request

    from cloud.api.analytics import _read_files

    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.pkl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunks = [head] + [b"\0" * 1000] * 100 + [f"\r\n--{boundary}--\r\n".encode()]
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        chunk = chunks.pop(0)
        sent += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }
    with pytest.raises(HTTPException) as raised:
        asyncio.run(_read_files(Request(scope, receive), limit=5_000))
    assert raised.value.status_code == 413
    assert sent <= len(head) + 6_000  # the limit and the chunk that passed it


def test_attach_to_battery_permissions(api: Api, site: dict[str, Any], quirky: bytes) -> None:
    files = [("SYNTH_25_B001.pkl", quirky)]
    made = _upload(api, files, site["maker"], attach_to_battery=site["bat_a"])
    assert made.status_code == 201, made.text
    location = made.headers["Location"]
    assert re.fullmatch(r"/api/analytics/results/\d+/", location)
    stored = api.client.get(location, headers=site["operator"])  # battery A's operator
    assert stored.status_code == 200
    result = stored.json()["result"]
    assert list(result) == [*SEED_SECTIONS, "data_quality"]
    assert not any(k.endswith("_plot") for section in result.values() for k in section)
    assert stored.json()["cell_id"] == "SYNTH_25_B001"
    assert api.client.get(location, headers=site["rival"]).status_code == 404
    listed = api.client.get(
        "/api/analytics/results/", params={"battery": site["bat_a"]}, headers=site["maker"]
    )
    assert [r["health_status"] for r in listed.json()] == [
        result["battery_health"]["health_status"]
    ]
    assert (
        api.client.get(
            "/api/analytics/results/", params={"battery": site["bat_a"]}, headers=site["rival"]
        ).json()
        == []
    )
    # a manufacturer only on its own batteries; service and admin on any; others never
    cases = [
        ("rival", site["bat_a"], 404),
        ("operator", site["bat_a"], 403),
        ("service", site["bat_b"], 201),
        ("admin", site["bat_a"], 201),
        ("maker", 999_999, 404),
    ]
    small = [("small.pkl", synthetic_pickle(cycles=6, numpy_floats=False))]
    for who, battery, expect in cases:
        response = _upload(api, small, site[who], attach_to_battery=battery)
        assert response.status_code == expect, (who, battery, response.text)
    with api.sessions() as session:
        rows = session.query(AnalyticsResult).order_by(AnalyticsResult.id).all()
        assert [(r.battery_id, r.source) for r in rows] == [
            (site["bat_a"], "SYNTH_25_B001.pkl"),
            (site["bat_b"], "small.pkl"),
            (site["bat_a"], "small.pkl"),
        ]


# --- the analyze command -------------------------------------------------------------

runner = CliRunner()


def test_analyze_locally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkl = tmp_path / "SYNTH_25_B001.pkl"
    pkl.write_bytes(synthetic_pickle(cycles=20, numpy_floats=False))
    out = tmp_path / "results.json"
    opened: list[str] = []
    monkeypatch.setattr("typer.launch", lambda path, **_: opened.append(path))
    result = runner.invoke(cli_app, ["analyze", str(pkl), "--output", str(out), "--show-plots"])
    assert result.exit_code == 0, result.output
    assert "SYNTH_25_B001" in result.stdout and "Excellent" in result.stdout
    document = json.loads(out.read_text())
    assert list(document) == [*SEED_SECTIONS, "data_quality"]
    assert len(opened) == 5 and all(Path(p).read_bytes().startswith(b"\x89PNG") for p in opened)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    paths = []
    for name, data in _csv_set(synthetic_cell(cycles=6, numpy_floats=False), name="C2"):
        (csv_dir / name).write_bytes(data)
        paths.append(str(csv_dir / name))
    both = runner.invoke(cli_app, ["analyze", str(pkl), *paths, "--output", str(out)])
    assert both.exit_code == 0, both.output
    assert sorted(json.loads(out.read_text())) == ["C2", "SYNTH_25_B001"]
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"cell_id": "x"}))
    failed = runner.invoke(cli_app, ["analyze", str(bad)])
    assert failed.exit_code == 2 and "cycle_data" in failed.output


def test_analyze_against_the_server(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.user("analyst", "service")
    monkeypatch.setattr(
        "cloud.analytics.cli.http_client", lambda: contextlib.nullcontext(api.client)
    )
    pkl = tmp_path / "SYNTH_25_B001.pkl"
    pkl.write_bytes(synthetic_pickle(cycles=20, numpy_floats=False))
    out = tmp_path / "remote.json"
    args = ["analyze", str(pkl), "--url", "http://testserver", "--output", str(out)]
    result = runner.invoke(cli_app, [*args, "--user", "analyst", "--password", "password-123"])
    assert result.exit_code == 0, result.output
    remote = json.loads(out.read_text())
    local = analyse_upload([(pkl.name, pkl.read_bytes())])
    assert (
        remote["capacity_fade"]["discharge_capacities"]
        == local["capacity_fade"]["discharge_capacities"]
    )
    no_login = runner.invoke(cli_app, ["analyze", str(pkl), "--url", "http://testserver"])
    assert no_login.exit_code == 2 and "--token" in no_login.output
    wrong = runner.invoke(cli_app, [*args, "--token", "not-a-token"])
    assert wrong.exit_code == 2 and "401" in wrong.output
