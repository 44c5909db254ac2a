"""Experiment strings: parsing, CC-CV, terminations, packs."""

from __future__ import annotations

import numpy as np
import pytest

from twin.errors import TwinInputError
from twin.experiment import parse_experiment, run_experiment
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.pack import Pack
from twin.params import load_parameter_set


def test_parse_understands_pybamm_style_steps() -> None:
    steps = parse_experiment(
        "Discharge at 1C for 1 hour; Charge at 0.5 C until 4.2 V; Hold at 4.2 V until C/50;"
        "Rest for 10 minutes; Discharge at 20 A for 5 min or until 3.0 V; Charge at 2 kW for 30 s;"
        "Hold at 4.1 V until 50 mA"
    )
    assert [s.mode for s in steps] == [
        "current",
        "current",
        "voltage",
        "rest",
        "current",
        "power",
        "voltage",
    ]
    assert steps[0].c_rate == 1.0 and steps[0].duration_s == 3600.0
    assert steps[1].c_rate == -0.5 and steps[1].until_voltage_v == 4.2
    assert steps[2].until_c_rate == pytest.approx(0.02)
    assert (
        steps[4].value == 20.0 and steps[4].duration_s == 300.0 and steps[4].until_voltage_v == 3.0
    )
    assert steps[5].value == -2000.0
    assert steps[6].until_current_a == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Dance at 1C", "cannot parse experiment step 'Dance at 1C'"),
        ("Charge at 1C", "needs 'for <time>' or 'until <V>'"),
        ("Rest for 5 fortnights", "unknown time unit 'fortnights'"),
        ("", "no steps"),
    ],
)
def test_parse_errors_name_the_step(text: str, match: str) -> None:
    with pytest.raises(TwinInputError, match=match):
        parse_experiment(text)


def test_cccv_charge_ends_at_cutoff_current() -> None:
    twin = EcmTwin(
        load_parameter_set("ecm_example"), init=CellInit(soc=0.2), options=EcmOptions(ageing="none")
    )
    trace = run_experiment(
        twin,
        ["Charge at 0.5C until 4.1 V", "Hold at 4.1 V until C/50"],
        capacity_ah=100.0,
        dt_s=5.0,
    )
    data = trace.as_arrays()
    cc, cv = data["step"] == 0, data["step"] == 1
    assert np.all(data["current_a"][cc] == -50.0)
    assert data["voltage_v"][cc][-1] >= 4.1 > data["voltage_v"][cc][-2]
    np.testing.assert_allclose(data["voltage_v"][cv], 4.1, atol=2e-3)
    assert abs(data["current_a"][cv][-1]) <= 2.0 < abs(data["current_a"][cv][0])
    assert np.all(np.diff(data["time_s"]) > 0)


def test_duration_is_exact_with_uneven_step_length() -> None:
    twin = EcmTwin(load_parameter_set("ecm_example"), options=EcmOptions(ageing="none"))
    trace = run_experiment(twin, "Discharge at 0.5C for 95 s", capacity_ah=100.0, dt_s=10.0)
    assert trace.time_s[-1] == pytest.approx(95.0)
    assert 0.5 - trace.soc[-1] == pytest.approx(50.0 * 95.0 / 3600.0 / 100.0)


def test_unreached_condition_is_an_error_not_a_hang() -> None:
    twin = EcmTwin(load_parameter_set("ecm_example"), options=EcmOptions(ageing="none"))
    with pytest.raises(TwinInputError, match="did not reach its end condition"):
        run_experiment(
            twin,
            "Hold at 3.7 V until 0 mA",
            capacity_ah=100.0,
            dt_s=600.0,
            max_step_duration_s=3600.0,
        )


def test_pack_runs_power_steps_and_refuses_voltage_holds() -> None:
    pack = Pack(load_parameter_set("ecm_example"), soc=0.6, options=EcmOptions(ageing="none"))
    trace = run_experiment(pack, "Discharge at 3 kW for 10 min", capacity_ah=100.0, dt_s=30.0)
    data = trace.as_arrays()
    np.testing.assert_allclose(data["current_a"] * data["voltage_v"], 3000.0, rtol=1e-3)
    with pytest.raises(TwinInputError, match="cannot hold a voltage"):
        run_experiment(pack, "Hold at 60 V for 1 min", capacity_ah=100.0)
