"""What a virtual BMS is told: its identity, rates, windows and estimator settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.mqtt.contract import DEVICE_NAME_PATTERN

__all__ = ["BmsConfig", "EisSchedule"]


class EisSchedule(BaseModel):
    """Pillar 1's periodic impedance sweeps (a command can ask for one at any time)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval_s: float | None = Field(default=4 * 3600.0, gt=0)
    """Time between scheduled sweeps; None: only on command."""
    f_min_hz: float = Field(default=0.1, gt=0)
    f_max_hz: float = Field(default=1000.0, gt=0)
    points: int = Field(default=21, ge=2, le=200)

    @model_validator(mode="after")
    def _band(self) -> EisSchedule:
        if self.f_max_hz <= self.f_min_hz:
            raise ValueError(f"f_max_hz {self.f_max_hz} must be above f_min_hz {self.f_min_hz}")
        return self


class BmsConfig(BaseModel):
    """One BMS. Times are in the twin's seconds (``--speed`` only paces them to a clock).

    Attributes mirror D1.2's intervals: the SoC runs every sample, SoT after each EIS
    sweep (Pillar 1), SoH after a completed charge once ``soh_interval_s`` has passed,
    the plating check once a rest after a charge exceeds ``plating_rest_s`` (Pillar 2),
    and balancing on request or every ``balancing_interval_s`` (Pillar 2).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field(pattern=DEVICE_NAME_PATTERN)
    pillar: Literal[1, 2]
    sample_period_s: float = Field(default=1.0, gt=0, le=60)
    reporting_interval_s: float = Field(default=10.0, gt=0)
    soc_window: tuple[float, float] = (0.05, 0.95)
    """Estimated SoC outside this window stops discharge (below) or charge (above)."""
    assumed_soh: float = Field(default=0.8, gt=0, le=1.2)
    """What the BMS believes before its first SoH estimate (second-life packs: ~0.8)."""
    assumed_resistance_factor: float = Field(default=1.3, gt=0)
    """Resistance growth the BMS believes in (aged cells), until the cloud sends an ECM."""
    eis: EisSchedule = EisSchedule()
    soh_interval_s: float = Field(default=7 * 86_400.0, gt=0)
    balancing_interval_s: float | None = Field(default=86_400.0, gt=0)
    plating_rest_s: float = Field(default=1800.0, gt=0)
    max_current_a: float = Field(default=float("inf"), gt=0)
    """Protection limit on string current (both directions)."""

    @model_validator(mode="after")
    def _window(self) -> BmsConfig:
        low, high = self.soc_window
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"soc_window must be 0 <= low < high <= 1, got {self.soc_window}")
        return self
