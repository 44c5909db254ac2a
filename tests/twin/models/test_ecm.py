"""Physics sanity of the vectorised ECM twin."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.twin.conftest import make_params
from twin.errors import ParameterSetError, TwinInputError
from twin.models.ageing import AgeingState, StressWindow
from twin.models.ecm import CellInit, EcmOptions, EcmTwin
from twin.models.ecm_params import ThermalParameters
from twin.params import load_parameter_set

NO_AGEING = EcmOptions(ageing="none")


def test_charge_conservation_matches_coulomb_count() -> None:
    params = load_parameter_set("ecm_example")
    twin = EcmTwin(
        params, n_cells=3, init=CellInit(soc=0.8, soh=[1.0, 0.8, 0.7]), options=NO_AGEING
    )
    rng = np.random.default_rng(1)
    moved_ah = np.zeros(3)
    for _ in range(300):
        current = rng.uniform(-60, 80, size=3)
        twin.step(current_a=current, dt_s=7.0, ambient_c=25.0)
        moved_ah += current * 7.0 / 3600.0
    expected = 0.8 - moved_ah / (100.0 * np.array([1.0, 0.8, 0.7]))
    np.testing.assert_allclose(twin.soc, expected, rtol=0, atol=1e-12)


def test_rest_voltage_returns_to_ocv() -> None:
    params = load_parameter_set("ecm_example")
    twin = EcmTwin(params, init=CellInit(soc=0.7), options=NO_AGEING)
    for _ in range(60):
        twin.step(current_a=100.0, dt_s=10.0, ambient_c=25.0)
    loaded = twin.step(current_a=100.0, dt_s=1.0, ambient_c=25.0).voltage_v[0]
    for _ in range(400):  # 4 h rest: RC pairs decay, cell cools to ambient
        out = twin.step(current_a=0.0, dt_s=36.0, ambient_c=25.0)
    ocv = params.ocv_at(out.truth.soc, 25.0)[0]
    assert loaded < ocv - 0.05  # under load the voltage sags well below OCV
    assert out.voltage_v[0] == pytest.approx(ocv, abs=2e-4)


@pytest.mark.parametrize("dt_s", [1.0, 7.0, 30.0])
def test_rc_step_response_is_analytic(dt_s: float) -> None:
    r0, r1, c1, current = 0.002, 0.001, 10_000.0, 20.0
    params = make_params(r0_ohm=r0, rc=((r1, c1),), capacity_ah=1e6)
    twin = EcmTwin(params, init=CellInit(soc=0.5), options=EcmOptions(ageing="none", thermal=False))
    tau = r1 * c1
    for n in range(1, int(60 / dt_s) + 1):
        out = twin.step(current_a=current, dt_s=dt_s, ambient_c=25.0)
        t = n * dt_s
        ocv = 3.3 + 0.8 * out.truth.soc[0]
        expected = ocv - current * r0 - current * r1 * (1 - np.exp(-t / tau))
        assert out.voltage_v[0] == pytest.approx(expected, abs=1e-9)


def test_two_rc_pairs_superpose() -> None:
    pairs = ((0.001, 5_000.0), (0.003, 100_000.0))
    params = make_params(r0_ohm=0.001, rc=pairs, capacity_ah=1e6)
    twin = EcmTwin(params, options=EcmOptions(ageing="none", thermal=False))
    out = twin.step(current_a=-30.0, dt_s=200.0, ambient_c=25.0)
    drop = 0.001 * -30.0 + sum(r * -30.0 * (1 - np.exp(-200.0 / (r * c))) for r, c in pairs)
    assert out.voltage_v[0] == pytest.approx(3.3 + 0.8 * out.truth.soc[0] - drop, abs=1e-9)


def test_thermal_steady_state_balances_joule_heat() -> None:
    thermal = ThermalParameters(heat_capacity_j_per_k=800.0, heat_transfer_w_per_k=4.0)
    params = make_params(r0_ohm=0.004, rc=((0.002, 1000.0),), capacity_ah=1e6, thermal=thermal)
    twin = EcmTwin(params, options=NO_AGEING)
    for _ in range(300):
        out = twin.step(current_a=30.0, dt_s=20.0, ambient_c=20.0)
    expected = 20.0 + 30.0**2 * (0.004 + 0.002) / 4.0
    assert out.surface_temperature_c[0] == pytest.approx(expected, abs=1e-6)


def test_reversible_heat_sign_follows_entropy() -> None:
    # dOCV/dT > 0: discharge absorbs heat (cools), charge releases heat (warms).
    params = make_params(r0_ohm=1e-9, rc=((1e-9, 1.0),), capacity_ah=1e6, entropic_v_per_k=5e-4)
    discharge = EcmTwin(params, options=NO_AGEING)
    charge = EcmTwin(params, options=NO_AGEING)
    for _ in range(100):
        cooled = discharge.step(current_a=50.0, dt_s=10.0, ambient_c=25.0)
        warmed = charge.step(current_a=-50.0, dt_s=10.0, ambient_c=25.0)
    assert cooled.surface_temperature_c[0] < 25.0 < warmed.surface_temperature_c[0]


def test_step_size_independence_after_same_charge() -> None:
    params = load_parameter_set("ecm_example")
    fine = EcmTwin(params, init=CellInit(soc=0.95), options=NO_AGEING)
    coarse = EcmTwin(params, init=CellInit(soc=0.95), options=NO_AGEING)
    for _ in range(3600):
        a = fine.step(current_a=60.0, dt_s=1.0, ambient_c=15.0)
    for _ in range(60):
        b = coarse.step(current_a=60.0, dt_s=60.0, ambient_c=15.0)
    assert a.truth.soc[0] == pytest.approx(b.truth.soc[0], abs=1e-12)
    assert abs(a.voltage_v[0] - b.voltage_v[0]) < 1e-3
    assert abs(a.surface_temperature_c[0] - b.surface_temperature_c[0]) < 0.05


def test_vectorised_fleet_equals_single_cells() -> None:
    params = load_parameter_set("ecm_example")
    socs = np.array([0.2, 0.5, 0.9])
    currents = np.array([40.0, -70.0, 100.0])
    temps = np.array([0.0, 25.0, 45.0])
    fleet = EcmTwin(
        params, n_cells=3, init=CellInit(soc=socs, temperature_c=temps), options=NO_AGEING
    )
    for _ in range(50):
        together = fleet.step(current_a=currents, dt_s=5.0, ambient_c=temps)
    for i in range(3):
        one = EcmTwin(params, init=CellInit(soc=socs[i], temperature_c=temps[i]), options=NO_AGEING)
        for _ in range(50):
            alone = one.step(current_a=currents[i], dt_s=5.0, ambient_c=temps[i])
        assert alone.voltage_v[0] == pytest.approx(together.voltage_v[i], abs=1e-12)
        assert alone.surface_temperature_c[0] == pytest.approx(together.surface_temperature_c[i])


def test_parameters_follow_temperature_and_direction_tables() -> None:
    params = load_parameter_set("ecm_example")
    cold = EcmTwin(params, init=CellInit(temperature_c=-10.0), options=NO_AGEING)
    warm = EcmTwin(params, init=CellInit(temperature_c=30.0), options=NO_AGEING)
    r_cold = cold.ecm_parameters_now()["r0_ohm"][0]
    r_warm = warm.ecm_parameters_now()["r0_ohm"][0]
    assert r_cold > 2 * r_warm  # the example tables roughly triple R0 from 30 to -10 degC


def test_power_step_delivers_requested_power() -> None:
    params = load_parameter_set("ecm_example")
    twin = EcmTwin(params, n_cells=2, init=CellInit(soc=0.6), options=NO_AGEING)
    for power in ([200.0, -150.0], [350.0, 10.0]):
        out = twin.step_power(power_w=power, dt_s=10.0, ambient_c=25.0)
        np.testing.assert_allclose(out.voltage_v * out.current_a, power, rtol=2e-4)


def test_unreachable_power_is_limited_and_reported() -> None:
    params = make_params(r0_ohm=0.05, rc=((0.01, 1000.0),))
    twin = EcmTwin(params, options=NO_AGEING)
    out = twin.step_power(power_w=1e5, dt_s=1.0, ambient_c=25.0)
    assert "power_limited" in {e.kind for e in out.events}
    assert out.current_a[0] > 0


def test_voltage_step_holds_terminal_voltage() -> None:
    params = load_parameter_set("ecm_example")
    twin = EcmTwin(params, init=CellInit(soc=0.9), options=NO_AGEING)
    for _ in range(30):
        out = twin.step_voltage(voltage_v=4.15, dt_s=10.0, ambient_c=25.0)
    assert out.voltage_v[0] == pytest.approx(4.15, abs=1e-3)
    assert out.current_a[0] < 0  # charging into the cell


def test_limits_are_reported_not_clipped() -> None:
    params = load_parameter_set("ecm_example")
    twin = EcmTwin(params, init=CellInit(soc=0.97), options=NO_AGEING)
    events = []
    for _ in range(200):
        out = twin.step(current_a=-100.0, dt_s=10.0, ambient_c=25.0)
        events.extend(out.events)
    kinds = [e.kind for e in events]
    assert kinds.count("over_voltage") == 1  # raised once when crossed, not every step
    assert out.voltage_v[0] > params.limits.max_voltage_v  # the twin does not clip
    assert "soc_above_1" in kinds


def test_cell_replacement_resets_that_cell_only() -> None:
    params = load_parameter_set("ecm_example")
    twin = EcmTwin(params, n_cells=4, init=CellInit(soc=0.5, soh=0.75), options=NO_AGEING)
    twin.replace_cells([2], init=CellInit(soc=0.9, soh=0.95))
    np.testing.assert_allclose(twin.capacity_ah, [75.0, 75.0, 95.0, 75.0])
    np.testing.assert_allclose(twin.soc, [0.5, 0.5, 0.9, 0.5])


def test_impedance_limits_and_peak() -> None:
    r0, r1, c1 = 0.002, 0.003, 500.0
    twin = EcmTwin(make_params(r0_ohm=r0, rc=((r1, c1),)), options=NO_AGEING)
    f_peak = 1.0 / (2 * np.pi * r1 * c1)
    z = twin.impedance([1e-5, f_peak, 1e6])[0]
    assert z[0].real == pytest.approx(r0 + r1, rel=1e-6)
    assert z[2].real == pytest.approx(r0, rel=1e-3)
    assert -z[1].imag == pytest.approx(r1 / 2, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"current_a": float("nan")}, "current_a must be finite"),
        ({"current_a": [1.0, float("inf")]}, "cell 1"),
        ({"dt_s": 0.0}, r"dt_s must be a finite number > 0, got 0\.0"),
        ({"dt_s": -1.0}, "got -1.0"),
        ({"current_a": [1.0, 2.0, 3.0]}, "shape"),
    ],
)
def test_bad_step_inputs_name_the_value(kwargs: dict[str, object], match: str) -> None:
    twin = EcmTwin(load_parameter_set("ecm_example"), n_cells=2, options=NO_AGEING)
    before = twin.soc
    args: dict[str, object] = {"current_a": 1.0, "dt_s": 1.0, "ambient_c": 25.0, **kwargs}
    with pytest.raises(TwinInputError, match=match):
        twin.step(**args)  # type: ignore[arg-type]
    np.testing.assert_array_equal(twin.soc, before)  # nothing happened


def test_bad_cell_init_is_rejected() -> None:
    params = load_parameter_set("ecm_example")
    with pytest.raises(TwinInputError, match=r"soh must be > 0.*-0.5 for cell 1"):
        EcmTwin(params, n_cells=2, init=CellInit(soh=[0.8, -0.5]))
    with pytest.raises(TwinInputError, match=r"soc must be within 0..1"):
        EcmTwin(params, init=CellInit(soc=1.5))


def test_non_monotonic_ocv_table_is_rejected() -> None:
    params = make_params()
    ocv = params.ocv_v.copy()
    ocv[4] = ocv[6]
    with pytest.raises(ParameterSetError, match=r"not monotonic in SoC.*synthetic"):
        dataclasses.replace(params, ocv_v=ocv)


def test_negative_capacity_and_unknown_set_are_rejected() -> None:
    with pytest.raises(ParameterSetError, match=r"nominal_capacity_ah must be > 0, got -5"):
        dataclasses.replace(make_params(), nominal_capacity_ah=-5.0)
    with pytest.raises(ParameterSetError, match=r"unknown ECM parameter set 'nope'.*ecm_example"):
        load_parameter_set("nope")


def test_json_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    params = load_parameter_set("ecm_example")
    path = Path(str(tmp_path)) / "set.json"
    params.to_json(path)
    again = load_parameter_set(str(path))
    np.testing.assert_array_equal(again.r0_ohm, params.r0_ohm)
    assert again.limits == params.limits


class _Recorder:
    """An ageing model that records the windows it is given and ages nothing."""

    name = "recorder"

    def __init__(self) -> None:
        self.windows: list[StressWindow] = []

    def update(
        self, state: AgeingState, window: StressWindow, *, rate_factor: np.ndarray
    ) -> AgeingState:
        self.windows.append(window)
        return state


def test_stress_windows_count_half_cycles() -> None:
    recorder = _Recorder()
    params = make_params(capacity_ah=10.0)
    opts = EcmOptions(ageing=recorder, ageing_interval_s=7200.0, thermal=False)
    twin = EcmTwin(params, n_cells=2, init=CellInit(soc=0.9), options=opts)
    # Cell 0: 1 h discharge at 0.6C (0.9 -> 0.3), 1 h charge at 0.6C (back to 0.9).
    # Cell 1: rests all the time.
    for _ in range(360):
        twin.step(current_a=[6.0, 0.0], dt_s=10.0, ambient_c=25.0)
    for _ in range(360):
        twin.step(current_a=[-6.0, 0.0], dt_s=10.0, ambient_c=25.0)
    (w,) = recorder.windows
    assert w.duration_s == pytest.approx(7200.0)
    # Only the discharge half-cycle has ended (at the reversal): 6 Ah, depth 0.6, at C/rate 0.6.
    np.testing.assert_allclose(w.throughput_ah, [6.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(w.mean_dod, [0.6, 0.0], atol=1e-9)
    np.testing.assert_allclose(w.mean_c_rate, [0.6, 0.0], atol=1e-9)
    np.testing.assert_allclose(w.cycle_mean_soc[0], 0.6, atol=1e-9)  # midpoint of 0.9 -> 0.3
    np.testing.assert_allclose(w.mean_soc, [0.6, 0.9], atol=2e-3)
    twin.flush_ageing()  # closes the open charge half-cycle
    np.testing.assert_allclose(recorder.windows[-1].throughput_ah, [6.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(recorder.windows[-1].mean_dod, [0.6, 0.0], atol=1e-9)


def test_ageing_is_monotonic_and_faster_when_hot() -> None:
    params = load_parameter_set("ecm_example")
    opts = EcmOptions(ageing="nmc", ageing_interval_s=3600.0)
    cool = EcmTwin(params, init=CellInit(soc=0.5, soh=0.85, temperature_c=15.0), options=opts)
    hot = EcmTwin(params, init=CellInit(soc=0.5, soh=0.85, temperature_c=45.0), options=opts)
    caps = []
    for k in range(24 * 20):  # 20 days of 30 min 0.5C cycling per hour
        current = 50.0 if k % 2 == 0 else -50.0
        cool.step(current_a=current, dt_s=1800.0, ambient_c=15.0)
        hot.step(current_a=current, dt_s=1800.0, ambient_c=45.0)
        caps.append(cool.capacity_ah[0])
    assert np.all(np.diff(caps) <= 0) and caps[-1] < caps[0]
    assert hot.capacity_ah[0] < cool.capacity_ah[0]
    assert hot.resistance_factor[0] > cool.resistance_factor[0] > 1.0


def test_second_life_cell_fades_slower_than_fresh() -> None:
    params = load_parameter_set("ecm_example")
    opts = EcmOptions(ageing="nmc")
    twin = EcmTwin(params, n_cells=2, init=CellInit(soc=0.5, soh=[1.0, 0.8]), options=opts)
    for k in range(24 * 10):
        twin.step(current_a=40.0 if k % 2 == 0 else -40.0, dt_s=1800.0, ambient_c=25.0)
    lost = np.array([100.0, 80.0]) - twin.capacity_ah
    assert lost[1] < 0.5 * lost[0]


def test_gather_cache_is_exact() -> None:
    """Results with the per-cell coefficient cache equal a fresh gather at every step."""
    params = load_parameter_set("ecm_example")
    rng = np.random.default_rng(5)
    init = CellInit(soc=rng.uniform(0.05, 0.95, 200), temperature_c=rng.uniform(-15, 45, 200))
    cached = EcmTwin(params, n_cells=200, init=init, options=NO_AGEING)
    fresh = EcmTwin(params, n_cells=200, init=init, options=NO_AGEING)
    for _ in range(300):
        current = rng.uniform(-150, 150, 200)
        fresh._gather_idx[:] = -1  # forget every cached row
        fresh._ocv_gather_idx[:] = -1
        a = cached.step(current_a=current, dt_s=20.0, ambient_c=10.0)
        b = fresh.step(current_a=current, dt_s=20.0, ambient_c=10.0)
        np.testing.assert_array_equal(a.voltage_v, b.voltage_v)
        np.testing.assert_array_equal(a.surface_temperature_c, b.surface_temperature_c)


def test_step_results_are_read_only_snapshots() -> None:
    twin = EcmTwin(load_parameter_set("ecm_example"), n_cells=3, options=NO_AGEING)
    first = twin.step(current_a=10.0, dt_s=60.0, ambient_c=25.0)
    with pytest.raises(ValueError, match="read-only"):
        first.voltage_v[0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        first.truth.soc[0] = 0.0
    kept = first.truth.soc.copy()
    twin.step(current_a=10.0, dt_s=60.0, ambient_c=25.0)
    twin.replace_cells([1], init=CellInit(soc=0.9))
    np.testing.assert_array_equal(first.truth.soc, kept)  # earlier results never change


def test_scaled_cell_equals_parallel_cells() -> None:
    """A cell built k times larger behaves electrically as k of the original cells in
    parallel (isothermal here: thermally the big cell, with less surface per volume, runs
    warmer, which the next assertion shows)."""
    small = load_parameter_set("nmc_okane2022")
    big = small.scaled_to(160.0)
    k = 160.0 / small.nominal_capacity_ah
    iso = EcmOptions(ageing="none", thermal=False)
    one = EcmTwin(big, init=CellInit(soc=0.6), options=iso)
    many = EcmTwin(small, init=CellInit(soc=0.6), options=iso)
    for current in (80.0, -40.0, 0.0, 120.0):
        a = one.step(current_a=current, dt_s=30.0, ambient_c=20.0)
        b = many.step(current_a=current / k, dt_s=30.0, ambient_c=20.0)
        assert a.voltage_v[0] == pytest.approx(b.voltage_v[0], abs=1e-9)
        assert a.truth.soc[0] == pytest.approx(b.truth.soc[0], abs=1e-12)
    warm = EcmTwin(big, options=NO_AGEING).step(current_a=160.0, dt_s=600.0, ambient_c=20.0)
    cool = EcmTwin(small, options=NO_AGEING).step(current_a=160.0 / k, dt_s=600.0, ambient_c=20.0)
    assert warm.surface_temperature_c[0] > cool.surface_temperature_c[0]
    with pytest.raises(ParameterSetError, match="capacity_ah must be > 0"):
        small.scaled_to(-1.0)
