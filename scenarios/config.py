"""Scenario configuration of both pillars: validated pydantic models read from TOML.

A scenario file names its ``kind`` (``"pillar1_charging_hub"`` or ``"pillar2_home"``) and
holds one table per part of the system (``[simulation]``, ``[site]``, ``[pv]``, ``[pack]``,
``[bms]``, ``[tariff]``, ...). Every number carries its unit in its name and an allowed
range; :func:`load_scenario` turns every problem into one line that names the file, the
dotted field and the allowed range::

    scenarios/pillar2_home.toml: pv.peak_kw must be >= 0, got -3

Sign convention, as everywhere in batterytwin: positive power discharges the battery.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import math
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

if TYPE_CHECKING:
    from twin.models.ecm import EcmOptions
    from twin.models.ecm_params import EcmParameters
    from twin.pack import PackTopology, SecondLifeSpread

__all__ = [
    "BmsConfig",
    "ChargerGroup",
    "EvConfig",
    "FmuConfig",
    "GridConfig",
    "HouseholdConfig",
    "PackConfig",
    "PeakShavingConfig",
    "Pillar1Scenario",
    "Pillar2Scenario",
    "PvConfig",
    "ReplacementEvent",
    "Scenario",
    "ScenarioError",
    "SimulationConfig",
    "SiteConfig",
    "TariffConfig",
    "get_field",
    "load_scenario",
    "scenario_hash",
    "with_overrides",
]

#: Weather and load profiles come on a 15-min grid; a step must tile it.
_GRID_S = 900
_DAYS_PER_YEAR = 365.0


class ScenarioError(ValueError):
    """A scenario file or override is invalid; one message line per problem.

    Attributes:
        source: The file (or ``"overrides"``) the problems were found in.
        problems: One sentence per problem, each naming the dotted field.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _FieldProblem(ValueError):
    """Raised by cross-field validators: names the offending field relative to the model."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


class _Model(BaseModel):
    # strict: a TOML string "8" is not silently a number, a float 3.5 not an integer.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# ----------------------------------------------------------------------------------- parts
class PackConfig(_Model):
    """The second-life pack: wiring, cell-to-cell spread and ageing options.

    Layout as in :mod:`twin.pack`: ``strings_in_parallel`` strings of ``modules_in_series``
    modules of ``groups_per_module`` series groups of ``cells_per_group`` parallel cells.
    Module ``k`` (used by replacements) is module ``k % modules_in_series`` of string
    ``k // modules_in_series``.
    """

    parameter_set: str = Field(
        default="nmc_okane2022", min_length=1, description="Cell parameter set name or JSON path"
    )
    cell_capacity_ah: float | None = Field(
        default=None,
        gt=0.0,
        le=2_000.0,
        description=(
            "Build the set's cells to this capacity (second-life EV cells are 60-160 Ah; "
            "the calibrated sets are 5 Ah); omitted keeps the set's own"
        ),
    )
    cells_per_group: int = Field(ge=1, le=10_000, description="Parallel cells per series group")
    groups_per_module: int = Field(
        default=16, ge=1, le=1_000, description="Series groups per module"
    )
    modules_in_series: int = Field(
        default=1, ge=1, le=100, description="Modules in series per string"
    )
    strings_in_parallel: int = Field(default=1, ge=1, le=100, description="Parallel strings")
    initial_soc: float = Field(default=0.5, ge=0.0, le=1.0, description="Pack SoC at the start")
    soh_mean: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Mean cell SoH (usable / nominal capacity)"
    )
    soh_std: float = Field(
        default=0.05, ge=0.0, le=0.5, description="Standard deviation of cell SoH"
    )
    soh_min: float = Field(default=0.7, gt=0.0, le=1.0, description="Lowest cell SoH drawn")
    soh_max: float = Field(default=0.9, gt=0.0, le=1.0, description="Highest cell SoH drawn")
    resistance_factor_mean: float = Field(
        default=1.3,
        gt=0.0,
        le=10.0,
        description="Mean cell resistance relative to the set's tables",
    )
    resistance_factor_std: float = Field(
        default=0.1, ge=0.0, le=5.0, description="Standard deviation of the resistance factor"
    )
    ageing_rate_std: float = Field(
        default=0.1,
        ge=0.0,
        le=5.0,
        description="Standard deviation of the per-cell ageing rate (mean 1)",
    )
    ageing: Literal["auto", "nmc", "lfp", "none"] = Field(
        default="auto", description="Ageing law: the set's chemistry, a named law, or off"
    )
    conduction_w_per_k: float = Field(
        default=0.0,
        ge=0.0,
        le=1_000.0,
        description="Thermal conductance between neighbouring cells",
    )
    prior_calendar_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of a cell's lost capacity put down to calendar ageing",
    )

    @model_validator(mode="after")
    def _soh_order(self) -> Self:
        if self.soh_min > self.soh_max:
            raise _FieldProblem(
                "soh_max", f"must be >= soh_min ({self.soh_min:g}), got {self.soh_max:g}"
            )
        if not self.soh_min <= self.soh_mean <= self.soh_max:
            raise _FieldProblem(
                "soh_mean",
                f"must be within soh_min..soh_max ({self.soh_min:g}..{self.soh_max:g}), "
                f"got {self.soh_mean:g}",
            )
        return self

    @property
    def n_modules(self) -> int:
        """Modules in the pack, over all strings."""
        return self.modules_in_series * self.strings_in_parallel

    @property
    def n_cells(self) -> int:
        return self.n_modules * self.groups_per_module * self.cells_per_group

    def load_parameters(self) -> EcmParameters:
        """The cell parameter set, scaled to ``cell_capacity_ah`` when given."""
        from twin.params import load_parameter_set

        params = load_parameter_set(self.parameter_set)
        return params if self.cell_capacity_ah is None else params.scaled_to(self.cell_capacity_ah)

    def to_topology(self) -> PackTopology:
        """The :class:`twin.pack.PackTopology` of this pack."""
        from twin.pack import PackTopology

        return PackTopology(
            cells_per_group=self.cells_per_group,
            groups_per_module=self.groups_per_module,
            modules_in_series=self.modules_in_series,
            strings_in_parallel=self.strings_in_parallel,
        )

    def to_spread(self) -> SecondLifeSpread:
        """The :class:`twin.pack.SecondLifeSpread` of this pack."""
        from twin.pack import SecondLifeSpread

        return SecondLifeSpread(
            soh_mean=self.soh_mean,
            soh_std=self.soh_std,
            soh_range=(self.soh_min, self.soh_max),
            resistance_factor_mean=self.resistance_factor_mean,
            resistance_factor_std=self.resistance_factor_std,
            ageing_rate_std=self.ageing_rate_std,
        )

    def to_options(self) -> EcmOptions:
        """The :class:`twin.models.ecm.EcmOptions` (ageing law and prior history)."""
        from twin.models.ecm import EcmOptions

        return EcmOptions(ageing=self.ageing, prior_calendar_share=self.prior_calendar_share)


class BmsConfig(_Model):
    """Limits the battery management system enforces, and an optional virtual BMS.

    The limits always apply (the engine's controller enforces them on the pack's true
    state). With ``enabled = true`` a :class:`virtual_bms.runtime.VirtualBms` is attached
    as well: it estimates SoC and SoH from noisy sensors every ``sample_period_s``, and
    its SoF charge-current table, SoC window, voltage derating, contactor and balancing
    act on the pack. That run steps the pack in Python, cycle by cycle: use it for days
    or weeks, not years.
    """

    soc_min: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Lowest SoC the BMS discharges to"
    )
    soc_max: float = Field(
        default=0.95, ge=0.0, le=1.0, description="Highest SoC the BMS charges to"
    )
    max_charge_c_rate: float = Field(
        default=0.5, gt=0.0, le=10.0, description="Charge current limit in C (per cell)"
    )
    max_discharge_c_rate: float = Field(
        default=1.0, gt=0.0, le=10.0, description="Discharge current limit in C (per cell)"
    )
    cell_voltage_margin_v: float = Field(
        default=0.02, ge=0.0, le=0.5, description="Distance kept from the cell voltage limits"
    )
    min_charge_temperature_c: float = Field(
        default=0.0, ge=-40.0, le=40.0, description="No charging below this cell temperature"
    )
    max_temperature_c: float = Field(
        default=55.0, ge=20.0, le=80.0, description="Contactor opens above this cell temperature"
    )
    enabled: bool = Field(
        default=False,
        description="Attach a virtual BMS (estimates, SoF, balancing); slow: days or weeks",
    )
    sample_period_s: int = Field(
        default=10, ge=1, le=60, description="BMS cycle when enabled; must divide simulation.dt_s"
    )
    reporting_interval_s: float = Field(
        default=900.0,
        gt=0.0,
        le=86_400.0,
        description="Time between the BMS's telemetry reports (and safety evaluations)",
    )
    record: bool = Field(
        default=False, description="Add the BMS's estimates and limits to hourly.parquet"
    )
    sof_table: str | None = Field(
        default=None,
        description="SoF table file (JSON/TOML, see virtual_bms.estimators.sof.load_sof_table);"
        " default: the built-in second-life NMC table",
    )

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.soc_min >= self.soc_max:
            raise _FieldProblem(
                "soc_max", f"must be > soc_min ({self.soc_min:g}), got {self.soc_max:g}"
            )
        if self.min_charge_temperature_c >= self.max_temperature_c:
            raise _FieldProblem(
                "max_temperature_c",
                f"must be > min_charge_temperature_c ({self.min_charge_temperature_c:g}), "
                f"got {self.max_temperature_c:g}",
            )
        return self


class FmuConfig(_Model):
    """A partner's cell model as an FMU, for ``--model fmu``.

    The pack becomes one series string of FMU cells, one FMU instance per series group
    (a group's parallel cells, and parallel strings, are taken as identical and share its
    current). A virtual BMS (``[bms] enabled``) runs on top with the ECM of
    ``pack.parameter_set`` as its own model, as a real BMS would with a plant it does not
    know exactly.
    """

    path: str = Field(min_length=1, description="The .fmu file (relative to the working folder)")
    mapping: dict[str, str | float] = Field(
        default_factory=dict,
        description="Variable roles (see twin.fmu.twin.FmuMapping); default: detected by name",
    )
    parameters: dict[str, float] = Field(
        default_factory=dict, description="FMU parameter start values, the same for every cell"
    )
    spread_parameters: dict[str, str] = Field(
        default_factory=dict,
        description="Second-life spread drawn per cell into FMU parameters: keys soh, "
        "resistance_factor, ageing_rate_factor; values the FMU parameter names",
    )
    interface: Literal["auto", "CoSimulation", "ModelExchange"] = Field(
        default="auto", description="FMI interface; auto prefers co-simulation"
    )

    @model_validator(mode="after")
    def _spread_keys(self) -> Self:
        allowed = {"soh", "resistance_factor", "ageing_rate_factor"}
        bad = sorted(set(self.spread_parameters) - allowed)
        if bad:
            raise _FieldProblem(
                "spread_parameters", f"keys must be among {', '.join(sorted(allowed))}, got {bad}"
            )
        return self


class SiteConfig(_Model):
    """Where the system stands: weather data and the battery's surroundings."""

    weather_source: Literal["try2010", "tmy3"] = Field(
        default="try2010", description="DWD test reference year 2010 or NREL TMY3"
    )
    weather_region: int = Field(ge=1, le=15, description="Region of the weather source")
    ambient_offset_c: float = Field(
        default=0.0,
        ge=-20.0,
        le=20.0,
        description="Added to the weather temperature (what-if hotter)",
    )
    battery_location: Literal["outdoor", "indoor"] = Field(
        default="indoor", description="Outdoor: battery sees the weather; indoor: a fixed room"
    )
    indoor_temperature_c: float = Field(
        default=20.0, ge=0.0, le=40.0, description="Room temperature when battery_location = indoor"
    )


class PvConfig(_Model):
    """The PV array."""

    peak_kw: float = Field(ge=0.0, le=100_000.0, description="Peak DC power at STC")
    tilt_deg: float = Field(default=30.0, ge=0.0, le=90.0, description="Tilt from horizontal")
    azimuth_deg: float = Field(
        default=180.0, ge=0.0, le=360.0, description="Orientation, 0 = north, 180 = south"
    )
    system_losses_pct: float = Field(
        default=14.0, ge=0.0, le=50.0, description="Wiring, soiling, mismatch and inverter losses"
    )


class TariffConfig(_Model):
    """Energy prices."""

    import_eur_per_kwh: float = Field(ge=0.0, le=10.0, description="Price of grid import")
    feed_in_eur_per_kwh: float = Field(ge=0.0, le=10.0, description="Pay for grid export")


class ReplacementEvent(_Model):
    """Cells or a whole module swapped for other second-life ones during the run."""

    at_days: float = Field(ge=0.0, le=36_500.0, description="When, from the start")
    cells: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=1, description="Pack cell indices to replace"
    )
    module: int | None = Field(default=None, ge=0, description="Module index to replace")
    soh: float = Field(gt=0.0, le=1.0, description="SoH of the replacement cells")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if self.cells is not None and self.module is not None:
            raise _FieldProblem(
                "module",
                "must be omitted when cells is given: a replacement names either cells or "
                "one module",
            )
        if self.cells is None and self.module is None:
            raise _FieldProblem("cells", "or module is required: name exactly one of them")
        return self


class SimulationConfig(_Model):
    """Length, step and output resolution of a run.

    Give ``years`` or ``days`` (not both); with neither, a run lasts one year. Results are
    kept per 15-min interval except on ``full_resolution_days``, kept at every step.
    """

    years: float | None = Field(default=None, gt=0.0, le=50.0, description="Run length in years")
    days: float | None = Field(default=None, gt=0.0, le=18_250.0, description="Run length in days")
    dt_s: int = Field(default=60, ge=1, le=_GRID_S, description="Time step; must divide 900 s")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seed of every random draw")
    full_resolution_days: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="Day indices kept at every step"
    )
    chunk_s: int = Field(
        default=3600,
        ge=1,
        le=7 * 86_400,
        description="Simulated time per chunk; a multiple of dt_s",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_length(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("years") is None and data.get("days") is None:
            return {**data, "years": 1.0}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.years is not None and self.days is not None:
            raise _FieldProblem("days", "must be omitted when years is given: set one of them")
        if _GRID_S % self.dt_s:
            divisors = [d for d in range(1, _GRID_S + 1) if _GRID_S % d == 0]
            raise _FieldProblem(
                "dt_s",
                f"must divide {_GRID_S} s (the 15-min grid of weather and load data): one of "
                f"{', '.join(map(str, divisors))}; got {self.dt_s}",
            )
        if self.chunk_s % self.dt_s:
            raise _FieldProblem(
                "chunk_s", f"must be a multiple of dt_s ({self.dt_s}), got {self.chunk_s}"
            )
        n_days = math.ceil(self.duration_days)
        late = [d for d in self.full_resolution_days if d >= n_days]
        if late:
            raise _FieldProblem(
                "full_resolution_days",
                f"must be day indices within 0..{n_days - 1} (the run lasts {n_days} days), "
                f"got {late[0]}",
            )
        return self

    @property
    def duration_days(self) -> float:
        """Run length in days (a year is 365 days)."""
        if self.days is not None:
            return self.days
        return (self.years or 1.0) * _DAYS_PER_YEAR

    @property
    def duration_s(self) -> int:
        """Run length in seconds, rounded to whole steps."""
        return round(self.duration_days * 86_400 / self.dt_s) * self.dt_s


class HouseholdConfig(_Model):
    """The household load of Pillar 2."""

    annual_consumption_kwh: float = Field(
        gt=0.0, le=1_000_000.0, description="Electricity use per year"
    )
    profile: Literal["h25"] = Field(default="h25", description="BDEW standard load profile")


class ChargerGroup(_Model):
    """``count`` identical chargers of a hub."""

    power_kw: float = Field(ge=11.0, le=400.0, description="Rated power of one charger")
    count: int = Field(ge=1, le=1_000, description="How many")
    kind: Literal["ac", "dc"] = Field(description="AC (on-board charger) or DC fast charger")

    @model_validator(mode="after")
    def _ac_limit(self) -> Self:
        if self.kind == "ac" and self.power_kw > 43.0:
            raise _FieldProblem(
                "power_kw",
                f"must be within 11..43 for an AC charger (kind = 'ac'), got {self.power_kw:g}",
            )
        return self


class EvConfig(_Model):
    """Electric vehicles arriving at the hub."""

    arrivals_per_day: float = Field(gt=0.0, le=100_000.0, description="Mean arrivals per day")
    arrival_profile: Literal["fast_charging_hub"] = Field(
        default="fast_charging_hub", description="Shape of arrivals over the day"
    )
    energy_mean_kwh: float = Field(gt=0.0, le=200.0, description="Mean energy wanted per EV")
    energy_std_kwh: float = Field(ge=0.0, le=100.0, description="Its standard deviation")
    dwell_mean_min: float = Field(gt=0.0, le=1_440.0, description="Mean time plugged in")
    dwell_std_min: float = Field(ge=0.0, le=1_440.0, description="Its standard deviation")
    max_power_kw: float = Field(gt=0.0, le=400.0, description="Charging power an EV accepts")
    patience_min: float = Field(
        ge=0.0, le=1_440.0, description="How long an EV waits for a free charger before leaving"
    )


class GridConfig(_Model):
    """The grid connection."""

    limit_kw: float = Field(gt=0.0, le=100_000.0, description="Connection capacity")


class PeakShavingConfig(_Model):
    """Peak-shaving controller of the hub storage."""

    threshold_kw: float = Field(
        gt=0.0, le=100_000.0, description="Grid power the storage keeps below"
    )
    recharge_below_kw: float = Field(
        ge=0.0, le=100_000.0, description="Grid import below which the storage recharges"
    )
    recharge_max_kw: float = Field(
        ge=0.0, le=100_000.0, description="Highest grid power used to recharge the storage"
    )

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.recharge_below_kw > self.threshold_kw:
            raise _FieldProblem(
                "recharge_below_kw",
                f"must be <= threshold_kw ({self.threshold_kw:g}), got {self.recharge_below_kw:g}",
            )
        return self


# ------------------------------------------------------------------------------- scenarios
class _ScenarioBase(_Model):
    name: str = Field(min_length=1, max_length=200, description="Label of the scenario")
    simulation: SimulationConfig = Field(default_factory=lambda: SimulationConfig())
    site: SiteConfig
    pv: PvConfig
    pack: PackConfig
    bms: BmsConfig = Field(default_factory=lambda: BmsConfig())
    fmu: FmuConfig | None = Field(
        default=None, description="An FMU cell model for --model fmu (see FmuConfig)"
    )
    tariff: TariffConfig
    replacements: list[ReplacementEvent] = Field(
        default_factory=list, description="Cell or module swaps during the run"
    )

    @model_validator(mode="after")
    def _bms_cycle_fits(self) -> Self:
        dt_s, period = self.simulation.dt_s, self.bms.sample_period_s
        if self.bms.enabled and dt_s % period:
            divisors = [d for d in range(1, min(dt_s, 60) + 1) if dt_s % d == 0]
            raise _FieldProblem(
                "bms.sample_period_s",
                f"must divide simulation.dt_s ({dt_s} s) when bms.enabled: one of "
                f"{', '.join(map(str, divisors))}; got {period}",
            )
        return self

    @model_validator(mode="after")
    def _replacements_fit(self) -> Self:
        days = self.simulation.duration_days
        for i, event in enumerate(self.replacements):
            where = f"replacements[{i}]"
            if event.at_days >= days:
                raise _FieldProblem(
                    f"{where}.at_days",
                    f"must be within 0..{days:g} (before the run ends), got {event.at_days:g}",
                )
            if event.module is not None and event.module >= self.pack.n_modules:
                raise _FieldProblem(
                    f"{where}.module",
                    f"must be within 0..{self.pack.n_modules - 1} (the pack has "
                    f"{self.pack.n_modules} modules), got {event.module}",
                )
            bad = [c for c in event.cells or [] if c >= self.pack.n_cells]
            if bad:
                raise _FieldProblem(
                    f"{where}.cells",
                    f"must be within 0..{self.pack.n_cells - 1} (the pack has "
                    f"{self.pack.n_cells} cells), got {bad[0]}",
                )
        return self


class Pillar2Scenario(_ScenarioBase):
    """Pillar 2: a home with PV, household load and a second-life battery."""

    kind: Literal["pillar2_home"]
    household: HouseholdConfig
    inverter_max_kw: float = Field(
        gt=0.0, le=1_000.0, description="AC power limit of the battery inverter"
    )


class Pillar1Scenario(_ScenarioBase):
    """Pillar 1: an EV charging hub on a weak grid with PV and second-life storage."""

    kind: Literal["pillar1_charging_hub"]
    chargers: list[ChargerGroup] = Field(
        default_factory=lambda: [
            ChargerGroup(power_kw=22.0, count=4, kind="ac"),
            ChargerGroup(power_kw=150.0, count=4, kind="dc"),
        ],
        min_length=1,
        description="Charger groups; default 4 x 22 kW AC + 4 x 150 kW DC",
    )
    ev: EvConfig
    grid: GridConfig
    controller: PeakShavingConfig
    inverter_max_kw: float = Field(
        gt=0.0, le=100_000.0, description="AC power limit of the storage's power converter"
    )

    @model_validator(mode="after")
    def _threshold_fits_grid(self) -> Self:
        if self.controller.threshold_kw > self.grid.limit_kw:
            raise _FieldProblem(
                "controller.threshold_kw",
                f"must be <= grid.limit_kw ({self.grid.limit_kw:g}), "
                f"got {self.controller.threshold_kw:g}",
            )
        return self


#: Either scenario, told apart by ``kind``.
Scenario = Annotated[Pillar1Scenario | Pillar2Scenario, Field(discriminator="kind")]
_KINDS = ("pillar1_charging_hub", "pillar2_home")
_MODELS: dict[str, type[_ScenarioBase]] = {
    "pillar1_charging_hub": Pillar1Scenario,
    "pillar2_home": Pillar2Scenario,
}


@functools.cache
def _adapter() -> TypeAdapter[Scenario]:
    return TypeAdapter(Scenario)


# ------------------------------------------------------------------------------ public API
def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file.

    Raises:
        ScenarioError: The file is missing, is not valid TOML or breaks the schema; the
            message has one line per problem, each naming the file and the dotted field.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(source, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, [f"invalid TOML: {exc}"]) from exc
    return _validate(data, source=source)


def scenario_hash(scenario: Scenario) -> str:
    """SHA-256 (hex) of the scenario with every default filled in: equal runs, equal hash."""
    canonical = json.dumps(scenario.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def with_overrides(scenario: Scenario, overrides: Mapping[str, Any]) -> Scenario:
    """A copy of ``scenario`` with fields set by dotted path, validated again.

    Paths index lists with ``[i]`` or ``.i`` (``chargers[1].count``). A string value for a
    non-string field is parsed as a TOML value (``"8.0"``, ``"[1, 2]"``, ``"true"``), so
    command-line values work as they are.

    Raises:
        ScenarioError: A path names no field, or a value breaks the schema.
    """
    data = scenario.model_dump()
    problems: list[str] = []
    for path, value in overrides.items():
        try:
            _set_path(data, path, value)
        except _PathError as exc:
            problems.append(str(exc))
    if problems:
        raise ScenarioError("overrides", problems)
    return _validate(data, source="overrides")


def get_field(scenario: Scenario, path: str) -> Any:
    """The value at a dotted path (``"pv.peak_kw"``, ``"chargers[1].count"``), as JSON data.

    Raises:
        ScenarioError: The path names no field.
    """
    node: Any = scenario.model_dump(mode="json")
    try:
        parts = _split_path(path)
        for depth in range(len(parts)):
            node = node[_check_step(node, parts, depth)]
    except _PathError as exc:
        raise ScenarioError("field path", [str(exc)]) from None
    return node


# ------------------------------------------------------------------------------- internals
class _PathError(ValueError):
    pass


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for match in _PATH_TOKEN.finditer(path):
        gap = path[pos : match.start()]
        if gap not in ("", "."):
            raise _PathError(f"cannot read field path {path!r}")
        name, index = match.groups()
        if index is not None:
            parts.append(int(index))
        else:
            parts.append(int(name) if name.isdigit() else name)
        pos = match.end()
    if not parts or path[pos:] or path.startswith(".") or path.endswith("."):
        raise _PathError(f"cannot read field path {path!r}")
    return parts


def _dotted(loc: tuple[str | int, ...] | list[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _check_step(node: Any, parts: list[str | int], depth: int) -> str | int:
    """``parts[depth]`` if it names a field or element of ``node``, else a _PathError."""
    part = parts[depth]
    here = _dotted(parts[: depth + 1])
    if isinstance(node, dict):
        if not isinstance(part, str) or part not in node:
            raise _PathError(_unknown_field(here, [str(k) for k in node]))
    elif isinstance(node, list):
        if not isinstance(part, int) or not 0 <= part < len(node):
            raise _PathError(
                f"{here} does not exist: {_dotted(parts[:depth])} has {len(node)} "
                "element(s), indexed from 0"
            )
    else:
        raise _PathError(f"unknown field '{here}' ({_dotted(parts[:depth])} has no fields)")
    return part


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    parts = _split_path(path)
    node: Any = data
    for depth in range(len(parts) - 1):
        node = node[_check_step(node, parts, depth)]
    last = _check_step(node, parts, len(parts) - 1)
    node[last] = _coerce(value, node[last])


def _coerce(value: Any, current: Any) -> Any:
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, str) and not isinstance(current, str):
        # Not TOML: left a string, so validation says which type the field wants.
        with contextlib.suppress(tomllib.TOMLDecodeError):
            value = tomllib.loads(f"v = {value}")["v"]
    if (
        type(current) is int
        and isinstance(value, float)
        and value.is_integer()
        and math.isfinite(value)
    ):
        value = int(value)
    return value


def _unknown_field(dotted: str, allowed: list[str]) -> str:
    name = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, allowed, n=1)
    parent = dotted[: -len(name)].rstrip(".")
    if close:
        hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'?"
    else:
        hint = f"allowed: {', '.join(sorted(allowed))}"
    return f"unknown field '{dotted}' ({hint})"


def _validate(data: Any, *, source: str) -> Scenario:
    try:
        return _adapter().validate_python(data)
    except ValidationError as exc:
        tag = data.get("kind") if isinstance(data, dict) else None
        model = _MODELS.get(tag) if isinstance(tag, str) else None
        problems = [_describe(err, model) for err in exc.errors()]
        raise ScenarioError(source, list(dict.fromkeys(problems))) from None


def _describe(err: Any, model: type[BaseModel] | None) -> str:
    """One sentence for one pydantic error: dotted field, problem, allowed values."""
    kind = err["type"]
    loc = tuple(err["loc"])
    if loc and loc[0] in _KINDS:
        loc = loc[1:]  # the tag pydantic puts in front of a discriminated union's errors
    field = _dotted(loc)
    got = _show(err.get("input"))
    ctx = err.get("ctx") or {}
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        options = ", ".join(f"'{k}'" for k in _KINDS)
        if kind == "union_tag_not_found":
            return f"kind is required: one of {options}"
        return f"kind must be one of {options}, got {_show(ctx.get('tag'))}"
    if kind == "model_attributes_type" and not loc:
        return f"a scenario must be a table of fields, got {got}"
    resolved = _resolve(model, loc) if model is not None else None
    annotation, metadata = resolved if resolved is not None else (None, [])
    bounds = _bounds(metadata)
    if kind == "extra_forbidden":
        parent = _resolve(model, loc[:-1]) if model is not None else None
        names = _field_names(parent[0]) if parent is not None else []
        return _unknown_field(field, names)
    if kind == "missing":
        what = _type_name(annotation)
        extra = f" ({what}{' ' + bounds if bounds else ''})" if what else ""
        return f"{field} is required{extra}"
    if kind in _BOUND_ERRORS:
        symbol, key = _BOUND_ERRORS[kind]
        two_sided = " " in bounds.removeprefix(symbol + " ")
        allowed = f" (allowed: {bounds.removeprefix('within ')})" if two_sided else ""
        return f"{field} must be {symbol} {_num(ctx.get(key))}, got {got}{allowed}"
    if kind == "literal_error":
        return f"{field} must be {ctx.get('expected', '')}, got {got}"
    if kind in ("too_short", "too_long"):
        return f"{field} {err['msg'].lower().replace('should', 'must')}, got {got}"
    if kind == "value_error":
        error = ctx.get("error")
        if isinstance(error, _FieldProblem):
            return f"{_dotted([*loc, error.field]) if loc else error.field} {error.problem}"
        return f"{field}: {err['msg'].removeprefix('Value error, ')}"
    what = _type_name(annotation)
    if what:
        return f"{field} must be {what}{' ' + bounds if bounds else ''}, got {got}"
    return f"{field}: {err['msg']}, got {got}"


_BOUND_ERRORS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _resolve(
    model: type[BaseModel] | None, loc: tuple[str | int, ...]
) -> tuple[Any, list[Any]] | None:
    """The annotation and constraints of the field at ``loc`` (None if there is none)."""
    tp: Any = model
    meta: list[Any] = []
    for part in loc:
        tp = _without_none(tp)
        if isinstance(part, int):
            if get_origin(tp) is not list:
                return None
            tp, meta = _unannotate(get_args(tp)[0])
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            info = tp.model_fields[part]
            tp, meta = info.annotation, list(info.metadata)
        else:
            return None
    return tp, meta


def _without_none(tp: Any) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _unannotate(tp: Any) -> tuple[Any, list[Any]]:
    if get_origin(tp) is Annotated:
        base, *extra = get_args(tp)
        meta: list[Any] = []
        for item in extra:
            meta.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        return base, meta
    return tp, []


def _field_names(tp: Any) -> list[str]:
    tp = _without_none(tp)
    if get_origin(tp) is list:
        tp = _unannotate(get_args(tp)[0])[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(metadata: list[Any]) -> str:
    lo: Any = None
    hi: Any = None
    lo_open = hi_open = False
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lo = item.ge
        elif isinstance(item, annotated_types.Gt):
            lo, lo_open = item.gt, True
        elif isinstance(item, annotated_types.Le):
            hi = item.le
        elif isinstance(item, annotated_types.Lt):
            hi, hi_open = item.lt, True
    if lo is not None and hi is not None:
        if not lo_open and not hi_open:
            return f"within {_num(lo)}..{_num(hi)}"
        return f"{'>' if lo_open else '>='} {_num(lo)} and {'<' if hi_open else '<='} {_num(hi)}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_num(hi)}"
    return ""


def _type_name(tp: Any) -> str:
    tp = _without_none(tp)
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a table"
    return ""


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, float):
        return _num(value)
    return repr(value) if isinstance(value, str) else str(value)
