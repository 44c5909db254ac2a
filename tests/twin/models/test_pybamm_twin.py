"""Tests for the PyBaMM-backed cell twin."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest

# PyBaMM asks about telemetry on first import unless told not to; tests never should.
os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
pybamm = pytest.importorskip("pybamm")

from twin.errors import ParameterSetError, TwinInputError  # noqa: E402
from twin.models.base import CellTwin  # noqa: E402
from twin.models.pybamm_twin import (  # noqa: E402
    PybammStepError,
    PybammTwin,
    PybammTwinConfig,
)

pytestmark = pytest.mark.pybamm

AMBIENT_C = 25.0
CAPACITY_AH = 5.0  # nominal capacity of the LG M50 cell behind Chen2020/OKane2022 (1C = 5 A)


@pytest.fixture(scope="module")
def chen() -> PybammTwin:
    return PybammTwin(PybammTwinConfig(parameter_set="Chen2020", initial_soc=0.8))


@pytest.fixture(scope="module")
def chen_sei() -> PybammTwin:
    return PybammTwin(
        PybammTwinConfig(parameter_set="Chen2020", sei="solvent-diffusion limited", initial_soc=0.8)
    )


@pytest.fixture(scope="module")
def okane_plating() -> PybammTwin:
    # Isothermal so one twin serves a cold and a warm charge (cell at ambient).
    # OKane2022's partially reversible plating needs an SEI option (dead-lithium rate).
    return PybammTwin(
        PybammTwinConfig(
            parameter_set="OKane2022",
            thermal="isothermal",
            sei="solvent-diffusion limited",
            lithium_plating="partially reversible",
            initial_soc=0.2,
        )
    )


@pytest.fixture()
def fresh(chen: PybammTwin) -> Iterator[PybammTwin]:
    chen.reset()
    yield chen


def test_is_a_cell_twin(fresh: PybammTwin) -> None:
    assert isinstance(fresh, CellTwin)
    assert fresh.n_cells == 1
    assert fresh.time_s == 0.0
    step = fresh.reset()
    assert step.truth.soc == pytest.approx([0.8], abs=1e-6)
    assert 4.5 < step.truth.capacity_ah[0] < 5.5
    assert 0.005 < step.truth.r0_ohm[0] < 0.1
    assert step.surface_temperature_c == pytest.approx([25.0])


def test_matches_one_pybamm_solve_within_1mv_rms(chen_sei: PybammTwin) -> None:
    twin = chen_sei
    twin.reset()
    # (current A, duration s): 1C discharge, rest, C/2 charge, then pulses.
    segments = [
        (CAPACITY_AH, 1200.0),
        (0.0, 600.0),
        (-0.5 * CAPACITY_AH, 1200.0),
        (2 * CAPACITY_AH, 30.0),
        (0.0, 30.0),
        (-CAPACITY_AH, 30.0),
        (0.0, 60.0),
        (2 * CAPACITY_AH, 10.0),
        (0.0, 50.0),
    ]
    dt_s = 10.0
    times, voltages = [], []
    for current_a, duration_s in segments:
        for _ in range(round(duration_s / dt_s)):
            step = twin.step(current_a=current_a, dt_s=dt_s, ambient_c=AMBIENT_C)
            times.append(step.time_s)
            voltages.append(step.voltage_v[0])

    # Reference: one solve of the same model with a piecewise-constant current.
    # ``t > t_k`` (not >=) so the voltage at a switching time belongs to the segment
    # that ends there, as the twin's end-of-step voltage does.
    model = pybamm.lithium_ion.SPMe(twin.config.options)
    values = pybamm.ParameterValues("Chen2020")
    values.set_initial_state(0.8, options=model.options)
    breaks = np.cumsum([d for _, d in segments])[:-1]
    current = segments[0][0] + sum(
        (segments[k + 1][0] - segments[k][0]) * (pybamm.t > float(b)) for k, b in enumerate(breaks)
    )
    values.update({"Current function [A]": current})
    solver = pybamm.IDAKLUSolver(rtol=twin.config.rtol, atol=twin.config.atol)
    simulation = pybamm.Simulation(model, parameter_values=values, solver=solver)
    t_s = np.array(times)
    solution = simulation.solve(np.unique(np.r_[0.0, breaks, t_s[-1]]), t_interp=t_s)
    reference = solution["Voltage [V]"](t_s)

    rms_v = float(np.sqrt(np.mean((np.array(voltages) - reference) ** 2)))
    assert rms_v < 1e-3, f"twin vs one PyBaMM solve: {rms_v * 1e3:.3f} mV RMS"


def test_memory_does_not_grow_with_steps(fresh: PybammTwin) -> None:
    pattern = [5.0] * 20 + [0.0] * 10 + [-5.0] * 20 + [0.0] * 10

    def run(n: int) -> None:
        for k in range(n):
            fresh.step(current_a=pattern[k % len(pattern)], dt_s=10.0, ambient_c=AMBIENT_C)

    # pybammsolvers makes a one-off ~4 MB workspace allocation around its 1000th
    # solve call; warm up past it (untraced, so fast) before measuring.
    run(20 * len(pattern))
    tracemalloc.start()
    try:
        run(len(pattern))
        before, _ = tracemalloc.get_traced_memory()
        run(10 * len(pattern))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Keeping one state vector per step would add ~1 kB/step (600 kB here); allow only
    # the few tens of kB that CPython free lists and CasADi caches settle into.
    assert after - before < 200_000, f"memory grew by {after - before} B over 600 steps"


def test_soc_change_matches_charge_over_capacity(fresh: PybammTwin) -> None:
    start = fresh.reset()
    current_a, dt_s, n = 2.5, 60.0, 30
    for _ in range(n):
        step = fresh.step(current_a=current_a, dt_s=dt_s, ambient_c=AMBIENT_C)
    charge_ah = current_a * dt_s * n / 3600.0
    expected = start.truth.soc[0] - charge_ah / start.truth.capacity_ah[0]
    assert step.truth.soc[0] == pytest.approx(expected, abs=1e-4)
    for _ in range(n):
        step = fresh.step(current_a=-current_a, dt_s=dt_s, ambient_c=AMBIENT_C)
    assert step.truth.soc[0] == pytest.approx(start.truth.soc[0], abs=1e-4)


def test_sei_growth_increases_lli_monotonically(chen_sei: PybammTwin) -> None:
    chen_sei.reset()
    lli = [0.0]
    cycle = [CAPACITY_AH] * 30 + [0.0] * 10 + [-CAPACITY_AH] * 30 + [0.0] * 10
    for current_a in cycle * 2:
        step = chen_sei.step(current_a=current_a, dt_s=60.0, ambient_c=AMBIENT_C)
        lli.append(float(step.truth.lli_pct[0]))
    assert np.all(np.diff(lli) >= -1e-12)
    assert lli[-1] > 1e-4
    assert step.truth.lam_negative_pct == pytest.approx([0.0], abs=1e-9)


def test_cold_fast_charge_plates_far_more_than_warm_slow_charge(
    okane_plating: PybammTwin,
) -> None:
    def charge(*, c_rate: float, ambient_c: float) -> float:
        okane_plating.reset()
        minutes = round(0.4 / c_rate * 60)  # 40 % of nominal capacity from SoC 0.2
        for _ in range(minutes):
            step = okane_plating.step(
                current_a=-c_rate * CAPACITY_AH, dt_s=60.0, ambient_c=ambient_c
            )
        return float(step.truth.plated_lithium_ah[0])

    cold_fast = charge(c_rate=1.0, ambient_c=5.0)
    warm_slow = charge(c_rate=0.3, ambient_c=25.0)
    assert cold_fast > 0.01
    assert warm_slow < 0.2 * cold_fast


def test_prada2013_lfp_runs() -> None:
    twin = PybammTwin(
        PybammTwinConfig(parameter_set="Prada2013", thermal="isothermal", initial_soc=0.9)
    )
    capacity_ah = twin.last_step.truth.capacity_ah[0]
    for _ in range(20):
        step = twin.step(current_a=capacity_ah, dt_s=60.0, ambient_c=AMBIENT_C)
    assert step.truth.soc[0] == pytest.approx(0.9 - 1.0 / 3.0, abs=1e-3)
    assert 2.8 < step.voltage_v[0] < 3.5  # LFP plateau under 1C load
    assert step.events == ()


def test_prada2013_lumped_thermal_names_missing_parameters() -> None:
    with pytest.raises(ParameterSetError, match=r"'Prada2013'.*Cell volume \[m3\].*isothermal"):
        PybammTwin(PybammTwinConfig(parameter_set="Prada2013", thermal="lumped"))


def test_unknown_parameter_set_names_value_and_lists_allowed() -> None:
    with pytest.raises(ParameterSetError, match=r"'Nope2024'.*allowed: .*Chen2020.*OKane2022"):
        PybammTwinConfig(parameter_set="Nope2024")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"model": "P2D"}, r"model must be one of .*'DFN'.*got 'P2D'"),
        ({"thermal": "x-full"}, r"thermal must be one of .*got 'x-full'"),
        ({"sei": "magic"}, r"sei must be one of .*'reaction limited'.*got 'magic'"),
        ({"lithium_plating": "yes"}, r"lithium_plating .*'irreversible'.*got 'yes'"),
        ({"initial_soc": 1.5}, r"initial_soc must be in 0..1, got 1.5"),
        ({"n_cells": 0}, r"n_cells must be an integer >= 1, got 0"),
    ],
)
def test_bad_options_name_the_value(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(TwinInputError, match=pattern):
        PybammTwinConfig(**kwargs)  # type: ignore[arg-type]


def test_option_needing_absent_parameters_is_explained() -> None:
    config = PybammTwinConfig(parameter_set="Chen2020", lithium_plating="irreversible")
    with pytest.raises(
        ParameterSetError,
        match=r"'Chen2020' lacks .*Exchange-current density for plating.*OKane2022",
    ):
        PybammTwin(config)


def test_plating_without_sei_in_okane2022_is_explained() -> None:
    config = PybammTwinConfig(
        parameter_set="OKane2022",
        thermal="isothermal",
        lithium_plating="partially reversible",
    )
    with pytest.raises(ParameterSetError, match=r"divides by zero.*set sei"):
        PybammTwin(config)


def test_parameter_overrides_apply_and_unknown_names_are_rejected() -> None:
    twin = PybammTwin(
        PybammTwinConfig(
            parameter_set="Chen2020", parameter_overrides={"Upper voltage cut-off [V]": 4.1}
        )
    )
    assert twin.voltage_limits_v[1] == 4.1
    with pytest.raises(ParameterSetError, match=r"'Upper votlage cut-off \[V\]'"):
        PybammTwin(PybammTwinConfig(parameter_overrides={"Upper votlage cut-off [V]": 4.1}))


def test_nan_current_is_rejected_without_changing_state(fresh: PybammTwin) -> None:
    before = fresh.last_step
    with pytest.raises(TwinInputError, match=r"current_a must be finite, got nan"):
        fresh.step(current_a=float("nan"), dt_s=10.0, ambient_c=AMBIENT_C)
    with pytest.raises(TwinInputError, match=r"ambient_c must be finite, got inf"):
        fresh.step(current_a=1.0, dt_s=10.0, ambient_c=float("inf"))
    assert fresh.last_step is before
    assert fresh.time_s == 0.0


@pytest.mark.parametrize("dt_s", [0.0, -10.0, float("nan")])
def test_non_positive_dt_is_rejected(fresh: PybammTwin, dt_s: float) -> None:
    with pytest.raises(TwinInputError, match=r"dt_s must be a finite number > 0, got"):
        fresh.step(current_a=1.0, dt_s=dt_s, ambient_c=AMBIENT_C)


def test_solver_failure_reports_context_and_keeps_last_good_state(fresh: PybammTwin) -> None:
    fresh.step(current_a=5.0, dt_s=60.0, ambient_c=AMBIENT_C)
    good = fresh.last_step
    with pytest.raises(PybammStepError, match=r"current_a=200 A for dt_s=3600 s .* t=60 s"):
        fresh.step(current_a=200.0, dt_s=3600.0, ambient_c=AMBIENT_C)
    assert fresh.last_step is good
    assert fresh.time_s == 60.0
    after = fresh.step(current_a=5.0, dt_s=60.0, ambient_c=AMBIENT_C)

    fresh.reset()
    fresh.step(current_a=5.0, dt_s=60.0, ambient_c=AMBIENT_C)
    expected = fresh.step(current_a=5.0, dt_s=60.0, ambient_c=AMBIENT_C)
    assert after.voltage_v == pytest.approx(expected.voltage_v, abs=1e-9)


def test_step_power_delivers_the_requested_energy(fresh: PybammTwin) -> None:
    power_w, dt_s = 15.0, 60.0
    step = fresh.step_power(power_w=power_w, dt_s=dt_s, ambient_c=AMBIENT_C)
    current_a = float(step.current_a[0])
    assert current_a > 0.0

    # Same current in ~1 s sub-steps (the first 1 ms long to catch the voltage just
    # after the current step): the trapezoidal mean power must match.
    fresh.reset()
    sub_steps_s = [1e-3, 1.0 - 1e-3] + [1.0] * 59
    times_s, voltages = [], []
    for sub_s in sub_steps_s:
        sub = fresh.step(current_a=current_a, dt_s=sub_s, ambient_c=AMBIENT_C)
        times_s.append(sub.time_s)
        voltages.append(sub.voltage_v[0])
    assert times_s[-1] == pytest.approx(dt_s)
    mean_power_w = current_a * np.trapezoid(voltages, times_s) / (times_s[-1] - times_s[0])
    assert mean_power_w == pytest.approx(power_w, rel=2e-4)
    assert voltages[-1] == pytest.approx(step.voltage_v[0], abs=2e-5)  # solver tolerance

    charge = fresh.step_power(power_w=-10.0, dt_s=dt_s, ambient_c=AMBIENT_C)
    assert charge.current_a[0] < 0.0


def test_step_voltage_holds_the_target_with_tapering_current(fresh: PybammTwin) -> None:
    target_v = 4.15
    while fresh.step(current_a=-CAPACITY_AH, dt_s=10.0, ambient_c=AMBIENT_C).voltage_v[0] < 4.1:
        pass
    currents = []
    for _ in range(20):
        step = fresh.step_voltage(voltage_v=target_v, dt_s=30.0, ambient_c=AMBIENT_C)
        assert step.voltage_v[0] == pytest.approx(target_v, abs=2e-5)
        currents.append(float(step.current_a[0]))
    assert all(c < 0.0 for c in currents)
    assert np.all(np.diff(np.abs(currents)) < 0.0)


def test_limits_are_reported_not_clipped(fresh: PybammTwin, okane_plating: PybammTwin) -> None:
    step = fresh.step(current_a=-2 * CAPACITY_AH, dt_s=60.0, ambient_c=AMBIENT_C)
    _, upper_v = fresh.voltage_limits_v
    assert step.voltage_v[0] > upper_v
    (event,) = step.events
    assert (event.kind, event.cells, event.limit) == ("over_voltage", (0,), upper_v)
    assert event.values == (step.voltage_v[0],)

    okane_plating.reset()
    hot = okane_plating.step(current_a=0.0, dt_s=10.0, ambient_c=70.0)
    assert hot.surface_temperature_c[0] == pytest.approx(70.0)
    assert [e.kind for e in hot.events] == ["over_temperature"]


def test_cells_are_independent_rows(fresh: PybammTwin) -> None:
    pair = PybammTwin(PybammTwinConfig(parameter_set="Chen2020", initial_soc=0.8, n_cells=2))
    currents = np.array([5.0, -2.5])
    for _ in range(5):
        both = pair.step(current_a=currents, dt_s=30.0, ambient_c=[25.0, 10.0])
    for cell, (current_a, ambient_c) in enumerate(zip(currents, [25.0, 10.0], strict=True)):
        fresh.reset()
        for _ in range(5):
            single = fresh.step(current_a=current_a, dt_s=30.0, ambient_c=ambient_c)
        assert both.voltage_v[cell] == pytest.approx(single.voltage_v[0], abs=1e-7)
        assert both.truth.soc[cell] == pytest.approx(single.truth.soc[0], abs=1e-9)


def test_dfn_resistance_estimate_includes_algebraic_states(fresh: PybammTwin) -> None:
    dfn = PybammTwin(PybammTwinConfig(parameter_set="Chen2020", model="DFN", initial_soc=0.8))
    for twin in (dfn, fresh):
        for _ in range(3):
            step = twin.step(current_a=CAPACITY_AH, dt_s=10.0, ambient_c=AMBIENT_C)
        if twin is dfn:
            dfn_r0 = float(step.truth.r0_ohm[0])
    assert dfn_r0 == pytest.approx(float(step.truth.r0_ohm[0]), rel=0.15)
