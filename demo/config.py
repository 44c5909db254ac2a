"""What a demo run is told: how long, where to write, the two sites and the speed-ups."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_DAYS", "CoolingFailure", "DemoConfig", "SiteConfig"]

DEFAULT_DAYS = 7.0
"""A week: seven daily SoH/SoW runs, 27 EIS -> ECM loops, about 2 min on two cores."""


class SiteConfig(BaseModel):
    """One site: its device name, pillar and the second-life pack the twin is made of."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,40}$")
    pillar: Literal[1, 2]
    cells: int = Field(default=8, ge=2, le=64)
    """Series cells (one voltage channel, one cloud ``Cell`` row each)."""
    capacity_ah: float = Field(gt=0)
    """Nominal (first-life) cell capacity; the cells start at 70-90 % of it."""
    parameters: str
    """Cell parameter set the twin is made of and the BMS believes in."""
    soc_spread: float = Field(default=0.01, ge=0, le=0.2)
    """Standard deviation of the cells' initial SoC (cells from different modules)."""


class CoolingFailure(BaseModel):
    """The alarm scenario: the hub's container cooling fails and its air heats up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_s: float = Field(default=2 * 3600.0, ge=0)
    """Twin time the cooling fails (the scenario must fit in short runs too)."""
    duration_s: float = Field(default=3600.0, gt=0)
    ambient_c: float = Field(default=70.0, gt=25.0, le=120.0)
    """Container air temperature while it is off (the cells trip at 60 degC)."""


class DemoConfig(BaseModel):
    """A whole demo run. Times are twin times unless their name says ``wall``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    days: float = Field(default=DEFAULT_DAYS, gt=0, le=365)
    out_dir: Path = Path("out/demo")
    serve: bool = False
    """Keep serving the dashboard after the run (until Ctrl-C)."""
    port: int | None = Field(default=None, ge=0, le=65535)
    """HTTP port of the cloud; None: 8000 with ``serve``, a free port otherwise."""
    seed: int = 0
    speed: float | None = Field(default=None, gt=0)
    """Twin seconds per wall second; None: as fast as the machine goes."""
    sample_period_s: float = Field(default=60.0, gt=0, le=60)
    """BMS cycle (and twin step)."""
    reporting_interval_s: float = Field(default=300.0, gt=0)
    eis_interval_s: float = Field(default=6 * 3600.0, gt=0)
    """Pillar 1's scheduled EIS sweeps; each new sweep starts an EIS -> DRT -> ECM loop."""
    ageing_rate_factor: float = Field(default=5.0, gt=0, le=20)
    """Multiplies the rate coefficients of the twin's ageing laws (every cell's
    ``CellInit.ageing_rate_factor``) so SoH and SoW move within days. The laws are power
    laws in time (~t^0.75) and throughput (~Q^0.5), so 5x the rates is roughly 8x the
    calendar time and 25x the throughput."""
    soh_interval_s: float = Field(default=86_400.0, gt=0)
    """Cloud SoH (and after it SoW) job interval; the service's default is a week."""
    estimator_tick_wall_s: float = Field(default=1.0, gt=0)
    """How often the cloud's estimator scheduler looks for due work (wall clock)."""
    ingest_timeout_wall_s: float = Field(default=60.0, gt=0)
    """How long to wait for the cloud to store what the BMSs sent, after the run."""
    cooling_failure: CoolingFailure = CoolingFailure()
    hub: SiteConfig = SiteConfig(
        name="demo-hub", pillar=1, capacity_ah=160.0, parameters="nmc_eis_arc"
    )
    home: SiteConfig = SiteConfig(
        name="demo-home", pillar=2, capacity_ah=100.0, parameters="nmc_okane2022", soc_spread=0.03
    )

    @property
    def duration_s(self) -> float:
        return self.days * 86_400.0

    @model_validator(mode="after")
    def _sites(self) -> DemoConfig:
        if self.hub.pillar != 1 or self.home.pillar != 2:
            raise ValueError("the hub is a Pillar 1 site and the home a Pillar 2 site")
        if self.hub.name == self.home.name:
            raise ValueError(f"the two sites need different names, both are {self.hub.name!r}")
        return self
