"""SoW: D1.2's table row by row (boundaries included), and RW/RH/RUW from a sizing record."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from cloud.estimators.sow import (
    MESSAGES,
    Severity,
    SohHistory,
    SowState,
    classify_sow,
    sow,
    xh0_soh,
)
from cloud.models import DiagnosticParameters

NAN = math.nan

# ------------------------------------------------------------------ the table
ROWS = [
    # rw, rh, ruw, state   (inside each band)
    (0.5, 0.9, 0.9, SowState.correct),
    (0.02, 0.9, 0.9, SowState.warranty_end_close),
    (0.5, 0.9, 0.45, SowState.early_advice),
    (0.5, 0.6, 0.45, SowState.middle_advice),
    (0.5, 0.6, 0.2, SowState.late_advice),
    (0.5, 0.3, 0.2, SowState.irreversible),
    (0.5, 0.6, 0.0, SowState.two_replacements),
    (0.5, 0.0, 0.3, SowState.end_of_life),
    (0.5, 0.9, 0.2, SowState.undefined),  # healthy now, but a short useful life ahead
]

BOUNDARIES = [
    # a value at a threshold belongs to the worse band
    (0.05, 0.9, 0.9, SowState.warranty_end_close),
    (0.0500001, 0.9, 0.9, SowState.correct),
    (0.0, 0.9, 0.9, SowState.warranty_end_close),
    (1.0, 1.0, 1.0, SowState.correct),
    (0.5, 0.75000001, 0.5000001, SowState.correct),
    (0.5, 0.9, 0.5, SowState.early_advice),
    (0.5, 0.75, 0.5, SowState.middle_advice),
    (0.5, 0.75, 0.45, SowState.middle_advice),
    (0.5, 0.5000001, 0.4000001, SowState.middle_advice),
    (0.5, 0.75, 0.4, SowState.late_advice),
    (0.5, 0.5000001, 1e-9, SowState.late_advice),
    (0.5, 0.5, 0.4, SowState.irreversible),
    (0.5, 1e-9, 1e-9, SowState.irreversible),
    (0.5, 0.9, 0.0, SowState.two_replacements),
    (0.5, 1e-9, 0.0, SowState.two_replacements),
    (0.5, 0.0, 0.0, SowState.end_of_life),  # death is checked first
    (0.5, 0.0, 0.9, SowState.end_of_life),
    (0.02, 0.0, 0.9, SowState.end_of_life),
    # "-" in RW means any value, unknown included
    (NAN, 0.9, 0.45, SowState.early_advice),
    (NAN, 0.6, 0.2, SowState.late_advice),
]

UNDEFINED = [
    (0.5, 0.75, 0.9),  # RH in (0.5, 0.75] with RUW > 0.5
    (0.5, 0.6, 0.5000001),
    (0.5, 0.3, 0.45),  # RH <= 0.5 with RUW in (0.4, 0.5]
    (0.5, 0.3, 0.9),
    (0.5, 0.9, 0.4),  # RH > 0.75 with RUW <= 0.4
    (NAN, 0.9, 0.9),  # rows 1-2 need RW
    (0.5, NAN, 0.9),
    (0.5, 0.9, NAN),
    (-0.1, 0.9, 0.9),
    (0.5, -0.1, 0.5),
    (0.5, 0.6, -0.1),
]


@pytest.mark.parametrize(("rw", "rh", "ruw", "state"), ROWS + BOUNDARIES)
def test_table_rows_and_boundaries(rw: float, rh: float, ruw: float, state: SowState) -> None:
    cls = classify_sow(rw, rh, ruw)
    assert cls.state is state
    assert cls.message == MESSAGES[state]


@pytest.mark.parametrize(("rw", "rh", "ruw"), UNDEFINED)
def test_undefined_scenarios(rw: float, rh: float, ruw: float) -> None:
    cls = classify_sow(rw, rh, ruw)
    assert cls.state is SowState.undefined
    assert cls.message == "Undefined scenario. Something unexpected is happening."
    assert cls.severity is Severity.undefined


def test_messages_are_d12_verbatim() -> None:
    assert [MESSAGES[s] for s in SowState] == [
        "The warranty fulfilment level is correct.",
        "The warranty fulfilment level is correct, but the end of warranty is close.",
        "ATTENTION! Predicted 1 additional replacement. Early advice.",
        "ATTENTION! Predicted 1 additional replacement. Middle advice.",
        "ATTENTION! Predicted 1 additional replacement. Late advice.",
        "DANGER! Predicted 1 additional replacement. Irreversible damages.",
        "DANGER! Predicted 2 additional replacement.",
        "DEATH! The battery has reached the EOL.",
        "Undefined scenario. Something unexpected is happening.",
    ]


def test_severities() -> None:
    expected = {
        SowState.correct: "green",
        SowState.warranty_end_close: "yellow",
        SowState.early_advice: "orange",
        SowState.late_advice: "orange",
        SowState.irreversible: "red",
        SowState.two_replacements: "red",
        SowState.end_of_life: "black",
    }
    for rw, rh, ruw, state in ROWS:
        if state in expected:
            assert classify_sow(rw, rh, ruw).severity.colour == expected[state]


# ------------------------------------------------------------------ from a sizing record
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
LIFESPAN_Y = 10.0
DAYS_PER_YEAR = 300.0  # operating days; 1 FEC each -> 3000 FEC over the lifespan
TABLE_T = np.linspace(0.0, 12.0, 40)


def _plan_pct(t: np.ndarray | float) -> np.ndarray:
    """The sizing tool's curve: 100 % - 0.3 %/y^2 t^2, reaching 70 % at 10 years."""
    return np.asarray(100.0 - 0.3 * np.asarray(t) ** 2)


def _sizing(*, tables: bool = True, eol: float | None = 70.0) -> DiagnosticParameters:
    return DiagnosticParameters(
        battery_id=1,
        soh_at_eol=eol,
        lifespan_years=LIFESPAN_Y,
        lifespan_fecs=3000.0,
        fecs_per_day=1.0,
        days_per_year=DAYS_PER_YEAR,
        xh0_time=[100.0, 0.0, 1.0, 0.3, 2.0],
        xh0_fec=[100.0, 0.0, 1.0, 0.3 / 300.0**2, 2.0],
        soh_evolution=_plan_pct(TABLE_T).tolist() if tables else None,
        time_evolution=TABLE_T.tolist() if tables else None,
        fecs_evolution=(TABLE_T * 300.0).tolist() if tables else None,
    )


def _at(years: float) -> dt.datetime:
    return START + dt.timedelta(days=365.25 * years)


def _history(until_years: float, *, k: float = 1.0, percent: bool = True) -> SohHistory:
    """Monthly SoH of a cell fading ``k`` times as fast as planned."""
    t = np.arange(0.0, until_years + 1e-9, 1.0 / 12.0)
    soh = 100.0 - k * (100.0 - _plan_pct(t))
    return SohHistory(tuple(_at(y) for y in t), soh if percent else soh / 100.0)


@pytest.mark.parametrize("tables", [True, False], ids=["evolution-tables", "xh0"])
def test_on_plan_cell(tables: bool) -> None:
    result = sow(_sizing(tables=tables), _history(3.0), now=_at(3.0))
    assert result.rw == pytest.approx(0.7, abs=1e-6)
    assert result.rh == pytest.approx(27.3 / 30.0, abs=1e-3)
    assert result.ruw == pytest.approx(0.7, abs=0.005)  # on plan: RUW = RW
    assert result.fade_ratio["time"] == pytest.approx(1.0, abs=0.005)  # table: chords
    assert result.projected_eol["time"] == pytest.approx(10.0, abs=0.05)
    assert result.projected_eol["fec"] == pytest.approx(3000.0, abs=15)
    assert result.fec == pytest.approx(900.0, rel=1e-6)
    assert (result.soh_start, result.soh_eol) == pytest.approx((1.0, 0.7))
    assert result.state is SowState.correct and result.severity is Severity.ok


def test_a_cell_on_plan_walks_down_the_table() -> None:
    """The plan's convex curve takes a cell on plan through the table's rows in order."""
    walk = {
        2.0: SowState.correct,
        5.5: SowState.middle_advice,
        6.5: SowState.late_advice,
        8.0: SowState.irreversible,
        10.5: SowState.end_of_life,
    }
    sizing = _sizing(tables=False)
    for years, state in walk.items():
        assert sow(sizing, _history(years), now=_at(years)).state is state, years


def test_fast_fading_cell_gets_early_advice() -> None:
    result = sow(_sizing(tables=False), _history(3.0, k=2.0), now=_at(3.0))
    assert result.fade_ratio["time"] == pytest.approx(2.0, rel=1e-3)
    assert result.rh == pytest.approx(1 - 2 * 2.7 / 30, abs=1e-3)
    # projected EoL where 2 * 0.3 t^2 = 30: t = sqrt(50)
    assert result.ruw == pytest.approx((math.sqrt(50.0) - 3.0) / 10.0, abs=1e-3)
    assert result.state is SowState.early_advice
    assert result.message == "ATTENTION! Predicted 1 additional replacement. Early advice."


def test_slow_cell_near_warranty_end() -> None:
    result = sow(_sizing(), _history(9.8, k=0.2), now=_at(9.8))
    assert result.rw == pytest.approx(0.02, abs=1e-3)
    assert result.rh > 0.75 and result.ruw == 1.0
    assert result.state is SowState.warranty_end_close


def test_percent_and_fraction_histories_agree() -> None:
    a = sow(_sizing(), _history(4.0, k=1.3), now=_at(4.0))
    b = sow(_sizing(), _history(4.0, k=1.3, percent=False), now=_at(4.0))
    assert (a.rw, a.rh, a.ruw, a.state) == pytest.approx((b.rw, b.rh, b.ruw, b.state))


def test_recorded_fec_shortens_the_warranty() -> None:
    base = _history(3.0)
    fec = np.linspace(0.0, 1800.0, base.soh.size)  # twice the planned cycling
    result = sow(_sizing(), SohHistory(base.time, base.soh, fec), now=_at(3.0))
    assert result.fec == pytest.approx(1800.0)
    assert result.rw == pytest.approx(1 - 1800.0 / 3000.0, abs=1e-6)


def test_records_after_now_are_ignored_and_start_can_be_given() -> None:
    history = _history(6.0)
    result = sow(_sizing(), history, now=_at(3.0), warranty_start=START)
    assert result.elapsed_years == pytest.approx(3.0)
    assert result.soh_now == pytest.approx(_plan_pct(3.0) / 100.0)


def test_early_history_assumes_the_plan() -> None:
    """Two months in, the plan has faded 0.1 points: too early to fit a fade ratio."""
    result = sow(_sizing(), _history(2.0 / 12.0, k=5.0), now=_at(2.0 / 12.0))
    assert result.fade_ratio["time"] == 1.0
    assert result.state is SowState.correct


def test_missing_inputs_give_the_undefined_scenario() -> None:
    no_eol = sow(_sizing(eol=None), _history(3.0), now=_at(3.0))
    assert math.isnan(no_eol.rh) and math.isnan(no_eol.ruw)
    assert no_eol.state is SowState.undefined
    empty = sow(_sizing(), SohHistory((), np.zeros(0)), now=_at(1.0))
    assert math.isnan(empty.rh) and empty.state is SowState.undefined


def test_xh0_model() -> None:
    assert xh0_soh([0.0, 10.0], [100.0, 0.0, 1.0, 0.3, 2.0]) == pytest.approx([100.0, 70.0])
    assert xh0_soh([4.0], [1.0, 0.1, 0.5, 0.0, 1.0]) == pytest.approx([0.8])
    with pytest.raises(ValueError, match="five"):
        xh0_soh([1.0], [1.0, 2.0])


def test_history_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="one soh"):
        SohHistory((START,), np.array([0.9, 0.8]))
