"""SoF: the charge-current table, its interpolation and validation, and clipping a pack's charge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from twin.models.ecm import EcmOptions
from twin.pack import Pack, PackTopology, SecondLifeSpread
from twin.params import load_parameter_set
from virtual_bms.estimators.sof import (
    SofTable,
    SofTableError,
    allowed_charge_current,
    clip_charge_current,
    default_sof_table,
    load_sof_table,
)


def small_table(unit: str = "C") -> SofTable:
    return SofTable(
        temperature_grid_c=np.array([0.0, 20.0]),
        soc_grid=np.array([0.0, 1.0]),
        max_charge=np.array([[0.0, 0.2], [1.0, 0.6]]),
        unit=unit,  # type: ignore[arg-type]
    )


def test_bilinear_interpolation_between_grid_points() -> None:
    table = small_table("A")
    got = table.max_charge_current_a(
        temperature_c=[0.0, 20.0, 10.0, 10.0, 5.0], soc=[1.0, 0.0, 0.5, 0.0, 0.25], capacity_ah=1
    )
    # (T=10, s=0.5): mean of the four corners; (T=5, s=0.25) by hand.
    corner = 0.75 * (0.75 * 0.0 + 0.25 * 0.2) + 0.25 * (0.75 * 1.0 + 0.25 * 0.6)
    np.testing.assert_allclose(got, [0.2, 1.0, 0.45, 0.5, corner])


def test_c_rate_scales_with_capacity_and_edges_hold() -> None:
    table = small_table("C")
    got = table.max_charge_current_a(temperature_c=[40.0, -5.0], soc=[0.0, 2.0], capacity_ah=80.0)
    np.testing.assert_allclose(got, [80.0, 0.2 * 80.0])


def test_unknown_state_allows_no_charge() -> None:
    got = default_sof_table().max_charge_current_a(
        temperature_c=[25.0, np.nan, 25.0], soc=[0.5, 0.5, np.nan], capacity_ah=100.0
    )
    np.testing.assert_allclose(got, [50.0, 0.0, 0.0])


def test_default_table_cuts_cold_hot_and_full() -> None:
    table = default_sof_table()
    t = np.array([-5.0, 0.0, 5.0, 25.0, 25.0, 25.0, 45.0, 60.0])
    s = np.array([0.5, 0.5, 0.5, 0.5, 0.9, 1.0, 0.5, 0.5])
    c_rate = table.max_charge_current_a(temperature_c=t, soc=s, capacity_ah=1.0)
    np.testing.assert_allclose(c_rate, [0.0, 0.0, 0.1, 0.5, 0.2, 0.05, 0.3, 0.0])
    # Never more at a higher SoC or a colder temperature (below 25 degC).
    grid_s = np.linspace(0, 1, 41)
    for temp in np.linspace(-10, 25, 15):
        row = table.max_charge_current_a(temperature_c=temp, soc=grid_s, capacity_ah=1.0)
        assert np.all(np.diff(row) <= 1e-12)
    col = table.max_charge_current_a(temperature_c=np.linspace(-10, 25, 36), soc=0.5, capacity_ah=1)
    assert np.all(np.diff(col) >= -1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature_grid_c": np.array([20.0, 0.0])}, "strictly increasing"),
        ({"soc_grid": np.array([0.0, 100.0])}, "within 0..1"),
        ({"max_charge": np.zeros((3, 2))}, r"shape \(2, 2\)"),
        ({"max_charge": np.array([[0.0, -0.2], [1.0, 0.6]])}, ">= 0"),
        ({"max_charge": np.array([[0.0, np.nan], [1.0, 0.6]])}, "finite"),
        ({"unit": "mA"}, "unit must be 'A' or 'C'"),
        ({"soc_grid": np.zeros((1, 2))}, "1-D grid"),
    ],
)
def test_validation_errors(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {
        "temperature_grid_c": np.array([0.0, 20.0]),
        "soc_grid": np.array([0.0, 1.0]),
        "max_charge": np.array([[0.0, 0.2], [1.0, 0.6]]),
        "unit": "C",
    }
    fields.update(kwargs)
    with pytest.raises(SofTableError, match=match):
        SofTable(**fields)  # type: ignore[arg-type]


def test_pack_limit_is_weakest_cell_times_parallel_cells() -> None:
    limit = allowed_charge_current(
        default_sof_table(),
        temperature_c=[25.0, 10.0, 25.0],
        soc=[0.5, 0.5, 0.95],
        capacity_ah=[80.0, 80.0, 90.0],
        parallel_cells=2,
    )
    np.testing.assert_allclose(limit.cell_a, [40.0, 16.0, 9.0])
    assert limit.limiting_cell == 2 and limit.pack_a == pytest.approx(18.0)
    with pytest.raises(ValueError, match="parallel_cells"):
        allowed_charge_current(
            default_sof_table(), temperature_c=25, soc=0.5, capacity_ah=1, parallel_cells=0
        )


def test_clip_charge_current() -> None:
    assert clip_charge_current(-30.0, allowed_a=20.0) == -20.0
    assert clip_charge_current(-10.0, allowed_a=20.0) == -10.0
    assert clip_charge_current(50.0, allowed_a=0.0) == 50.0  # discharge is not the SoF's
    with pytest.raises(ValueError, match="magnitude"):
        clip_charge_current(-1.0, allowed_a=-1.0)


def test_cold_twin_pack_charges_only_at_the_sof_limit() -> None:
    """A 2p pack at 5 degC asked for 0.5C gets 0.1C of the believed capacity per cell."""
    params = load_parameter_set("ecm_example")
    topology = PackTopology(cells_per_group=2, groups_per_module=8)
    pack = Pack(
        params,
        topology=topology,
        spread=SecondLifeSpread(),
        soc=0.3,
        temperature_c=5.0,
        options=EcmOptions(ageing="none"),
    )
    capacity_ah = np.full(pack.n_cells, 0.8 * params.nominal_capacity_ah)
    table = default_sof_table()
    requested_a = -0.5 * capacity_ah[0] * topology.cells_per_group
    for _ in range(20):
        limit = allowed_charge_current(
            table,
            temperature_c=pack.cells.temperature_c,
            soc=pack.cells.soc,
            capacity_ah=capacity_ah,
            parallel_cells=topology.cells_per_group,
        )
        current_a = clip_charge_current(requested_a, allowed_a=limit.pack_a)
        out = pack.step(current_a=current_a, dt_s=30.0, ambient_c=5.0)
    assert out.current_a == pytest.approx(-limit.pack_a)
    assert -out.current_a < 0.25 * -requested_a
    # The parallel split lets no cell take much more than its own limit.
    assert np.all(-out.cells.current_a <= 1.2 * limit.cell_a)


def test_a_table_loads_from_toml_or_json_and_bad_files_name_themselves(tmp_path: Path) -> None:
    toml = tmp_path / "sof.toml"
    toml.write_text(
        'unit = "A"\ntemperature_grid_c = [0.0, 25.0]\nsoc_grid = [0.0, 1.0]\n'
        "max_charge = [[0.0, 0.0], [40.0, 10.0]]\n"
    )
    table = load_sof_table(toml)
    limit = table.max_charge_current_a(temperature_c=25.0, soc=0.5, capacity_ah=100.0)
    assert float(limit) == pytest.approx(25.0)
    as_json = tmp_path / "sof.json"
    as_json.write_text(json.dumps({"temperature_grid_c": [0, 25], "soc_grid": [0, 1]}))
    with pytest.raises(SofTableError, match=r"sof\.json: missing \['max_charge'\]"):
        load_sof_table(as_json)
    with pytest.raises(SofTableError, match="cannot read SoF table"):
        load_sof_table(tmp_path / "absent.json")
    bad = tmp_path / "bad.toml"
    bad.write_text(toml.read_text().replace("[40.0, 10.0]", "[40.0, -1.0]"))
    with pytest.raises(SofTableError, match=">= 0"):
        load_sof_table(bad)
