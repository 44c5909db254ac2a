"""Packs: current split, balancing, contactor, replacement, spread, conduction."""

from __future__ import annotations

import numpy as np
import pytest

from tests.twin.conftest import make_params
from twin.errors import TwinInputError
from twin.models.ecm import CellInit, EcmOptions
from twin.pack import Pack, PackTopology, SecondLifeSpread
from twin.params import load_parameter_set

NO_AGEING = EcmOptions(ageing="none")
INDUSTRIAL = PackTopology(
    cells_per_group=3, groups_per_module=14, modules_in_series=2, strings_in_parallel=2
)


def industrial_pack(**kwargs: object) -> Pack:
    return Pack(
        load_parameter_set("ecm_example"),
        topology=INDUSTRIAL,
        spread=SecondLifeSpread(),
        options=NO_AGEING,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("current_a", [150.0, -90.0, 0.0])
def test_current_split_sums_to_pack_current(current_a: float) -> None:
    pack = industrial_pack(seed=3)
    for _ in range(20):
        out = pack.step(current_a=current_a, dt_s=30.0, ambient_c=25.0)
        cells = out.cells.current_a.reshape(INDUSTRIAL.shape)
        assert out.string_currents_a.sum() == pytest.approx(current_a, abs=1e-9)
        # every series group of a string carries that string's current
        np.testing.assert_allclose(
            cells.sum(axis=2), np.repeat(out.string_currents_a[:, None], 28, axis=1), atol=1e-9
        )


def test_parallel_cells_share_by_resistance_and_voltage_matches() -> None:
    params = make_params(r0_ohm=0.002, rc=((0.001, 5000.0),), capacity_ah=50.0)
    init = CellInit(soc=0.5, resistance_factor=[1.0, 2.0])
    pack = Pack(
        params, topology=PackTopology(cells_per_group=2, groups_per_module=1), options=NO_AGEING
    )
    pack.cells._init = init  # a two-cell group with one cell of double resistance
    pack.cells.reset()
    out = pack.step(current_a=30.0, dt_s=1.0, ambient_c=25.0)
    i_low, i_high = out.cells.current_a
    assert i_low == pytest.approx(2 * i_high, rel=2e-3)  # same OCV: inverse to resistance
    assert out.cells.voltage_v[0] == pytest.approx(out.cells.voltage_v[1], abs=1e-4)


def test_parallel_cells_at_different_soc_equalise_at_rest() -> None:
    params = make_params(capacity_ah=5.0)
    pack = Pack(
        params, topology=PackTopology(cells_per_group=2, groups_per_module=1), options=NO_AGEING
    )
    pack.cells._init = CellInit(soc=[0.3, 0.7])
    pack.cells.reset()
    out = pack.step(current_a=0.0, dt_s=1.0, ambient_c=25.0)
    assert (
        out.cells.current_a[1] > 0 > out.cells.current_a[0]
    )  # the fuller cell charges the emptier
    assert out.cells.current_a.sum() == pytest.approx(0.0, abs=1e-12)
    for _ in range(2000):
        out = pack.step(current_a=0.0, dt_s=10.0, ambient_c=25.0)
    assert abs(out.cells.truth.soc[0] - out.cells.truth.soc[1]) < 1e-3


def test_open_contactor_stops_pack_current_but_not_balancing() -> None:
    # 16s1p: balancing acts per series group (in a parallel group it drains the group).
    pack = Pack(
        load_parameter_set("ecm_example"), spread=SecondLifeSpread(soc_std=0.0), options=NO_AGEING
    )
    pack.open_contactor("over_voltage")
    bal = np.zeros(pack.n_cells)
    bal[5] = 0.2
    pack.set_balancing(bal)
    before = pack.cells.soc
    out = pack.step(current_a=200.0, dt_s=600.0, ambient_c=25.0)
    assert out.current_a == 0.0 and not out.contactor_closed
    assert any(e.kind == "contactor_open:over_voltage" for e in out.events)
    drop = before - out.cells.truth.soc
    assert drop[5] == pytest.approx(0.2 * 600 / 3600 / pack.cells.capacity_ah[5], rel=1e-9)
    np.testing.assert_allclose(np.delete(drop, 5), 0.0, atol=1e-15)


def test_bypass_balancing_lowers_the_chosen_cell_only() -> None:
    params = load_parameter_set("ecm_example")
    pack = Pack(params, options=NO_AGEING, soc=0.6)
    bal = np.zeros(16)
    bal[[2, 9]] = 1.0
    pack.set_balancing(bal)
    for _ in range(360):
        out = pack.step(current_a=20.0, dt_s=10.0, ambient_c=25.0)
    soc = out.cells.truth.soc
    rest = np.delete(soc, [2, 9])
    np.testing.assert_allclose(rest, rest[0], atol=1e-12)
    np.testing.assert_allclose(
        rest[0] - soc[[2, 9]], 1.0 / 100.0, rtol=1e-6
    )  # 1 A for 1 h of 100 Ah


def test_second_life_spread_draws_within_bounds() -> None:
    spread = SecondLifeSpread(soh_mean=0.8, soh_std=0.08, soh_range=(0.7, 0.9))
    pack = Pack(
        load_parameter_set("ecm_example"),
        topology=PackTopology(groups_per_module=200),
        spread=spread,
    )
    soh = pack.cells.capacity_ah / 100.0
    assert soh.min() >= 0.7 and soh.max() <= 0.9
    assert soh.std() > 0.03
    assert pack.cells.resistance_factor.mean() == pytest.approx(1.3, abs=0.05)


def test_replacing_an_aged_cell_mid_run() -> None:
    pack = Pack(load_parameter_set("ecm_example"), spread=SecondLifeSpread(), options=NO_AGEING)
    for _ in range(50):
        pack.step(current_a=40.0, dt_s=60.0, ambient_c=25.0)
    worst = int(np.argmin(pack.cells.capacity_ah))
    pack.replace_cells([worst], init=CellInit(soc=0.2, soh=0.98, resistance_factor=1.0))
    out = pack.step(current_a=40.0, dt_s=60.0, ambient_c=25.0)
    assert pack.cells.capacity_ah[worst] == pytest.approx(98.0)
    assert any(e.kind == "cells_replaced" and e.cells == (worst,) for e in out.events)


def test_pack_power_step_and_limit() -> None:
    pack = industrial_pack()
    out = pack.step_power(power_w=20_000.0, dt_s=10.0, ambient_c=25.0)
    assert out.power_w == pytest.approx(20_000.0, rel=1e-4)
    out = pack.step_power(power_w=1e9, dt_s=10.0, ambient_c=25.0)
    assert any(e.kind == "power_limited" for e in out.events)


def test_conduction_pulls_neighbours_together() -> None:
    params = make_params(capacity_ah=1e6)
    pack = Pack(
        params,
        topology=PackTopology(groups_per_module=3),
        options=NO_AGEING,
        conduction_w_per_k=2.0,
    )
    pack.cells._init = CellInit(temperature_c=[40.0, 25.0, 25.0])
    pack.cells.reset()
    out = pack.step(current_a=0.0, dt_s=10.0, ambient_c=25.0)
    t = out.cells.surface_temperature_c
    assert t[1] > 25.0 and t[2] == pytest.approx(25.0)  # heat reached the neighbour first
    with pytest.raises(TwinInputError, match=r"too long for cell-to-cell conduction"):
        pack.step(current_a=0.0, dt_s=1000.0, ambient_c=25.0)


def test_bad_pack_inputs() -> None:
    with pytest.raises(TwinInputError, match=r"cells_per_group must be an integer >= 1, got 0"):
        PackTopology(cells_per_group=0)
    with pytest.raises(TwinInputError, match=r"soh_range"):
        SecondLifeSpread(soh_range=(0.9, 0.7))
    pack = industrial_pack()
    with pytest.raises(TwinInputError, match=r"pack current_a must be finite, got nan"):
        pack.step(current_a=float("nan"), dt_s=1.0, ambient_c=25.0)
