"""Impedance spectra of a twin and an emulated on-board EIS sweep with its wire records.

:func:`impedance_spectrum` returns the twin's analytic small-signal ``Z(f)`` at its
present state (for the ECM: ``R0 + j w L + sum_k R_k / (1 + j w R_k C_k)``, with R and
C looked up at each cell's SoC and temperature and scaled by its resistance factor).

:func:`measure_eis` emulates what a BMS with a built-in galvanostatic EIS uploads: one
:class:`EisRecord` per cell and frequency point, with measurement noise, the DC
voltage and temperature during the point, and a status. The sweep runs from the
highest to the lowest frequency, as instruments do, and lasts ``periods_per_point``
periods at each frequency.

Wire format (the cloud's ``/api/eis/`` payload, keys exactly :data:`WIRE_KEYS`):

==============  ========  ======================================================
key             unit      meaning
==============  ========  ======================================================
frequency       Hz        excitation frequency
amplitude       A         galvanostatic excitation amplitude (peak)
phase           deg       the phase of Z, identical to ``Z_phz`` (see below)
current_offset  A         DC current during the sweep (positive = discharge)
v_start         V         ``voltage`` of the first point (the sweep's start)
v_end           V         ``voltage`` of the last point (the sweep's end)
temperature     degC      cell temperature at the end of the point
Z_re, Z_im      ohm       real and imaginary part, ``Z_im < 0`` where capacitive
Z_mod           ohm       ``|Z|``
Z_phz           deg       ``atan2(Z_im, Z_re)``, in (-180, 180]
voltage         V         DC terminal voltage at the end of the point
status          -         ``"success"``, ``"noisy"`` or ``"fail"`` (as in the seeds)
event_id        -         the sweep's id, a string such as ``"207_1"``
cell_id         -         the cell's index in the twin (an int)
==============  ========  ======================================================

The reference payload (thesis, ``POST /api/eis/``) carries ``phase`` without ``Z_phz``
beside it, so it does not say which angle ``phase`` is; D1.2 lists ``Z_phz`` as the
EIS module's output. Both are therefore the same number here, in degrees.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twin.errors import TwinInputError
from twin.models.base import CellTwin, FloatArray, as_cell_array
from twin.models.ecm_params import Limits

__all__ = [
    "STATUS_FAIL",
    "STATUS_NOISY",
    "STATUS_SUCCESS",
    "WIRE_KEYS",
    "EisConfig",
    "EisRecord",
    "ImpedanceTwin",
    "impedance_spectrum",
    "log_frequencies",
    "measure_eis",
]

ComplexArray = NDArray[np.complex128]

WIRE_KEYS: tuple[str, ...] = (
    "frequency",
    "amplitude",
    "phase",
    "current_offset",
    "v_start",
    "v_end",
    "temperature",
    "Z_re",
    "Z_im",
    "Z_mod",
    "Z_phz",
    "voltage",
    "status",
    "event_id",
    "cell_id",
)
"""Keys of one EIS point on the wire, in this order."""

STATUS_SUCCESS = "success"
STATUS_NOISY = "noisy"
STATUS_FAIL = "fail"


class ImpedanceTwin(CellTwin, Protocol):
    """A cell twin that can report its small-signal impedance (e.g. the ECM twin)."""

    @property
    def temperature_c(self) -> FloatArray:
        """Cell temperature per cell."""
        ...

    def impedance(self, frequency_hz: ArrayLike) -> np.ndarray:
        """Complex ``Z(f)`` per cell at the present state, shape ``(n_cells, n_freq)``."""
        ...


def _frequencies(frequency_hz: ArrayLike, *, source: str) -> FloatArray:
    f = np.atleast_1d(np.asarray(frequency_hz, dtype=np.float64))
    if f.ndim != 1 or f.size == 0:
        raise TwinInputError(f"frequency_hz must be a non-empty 1-D array, got shape {f.shape}")
    bad = ~np.isfinite(f) | (f <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TwinInputError(
            f"frequency_hz must be finite and > 0, got {f[i]!r} at index {i} ({source})"
        )
    return f


def impedance_spectrum(twin: ImpedanceTwin, frequency_hz: ArrayLike) -> ComplexArray:
    """The twin's analytic impedance at its present state, without noise.

    Args:
        twin: Any twin with an ``impedance`` method (the ECM twin).
        frequency_hz: Frequencies, scalar or 1-D.

    Returns:
        Complex array of shape ``(n_cells, n_freq)`` in ohm.

    Raises:
        TwinInputError: If a frequency is not finite and > 0.
    """
    f = _frequencies(frequency_hz, source="impedance_spectrum")
    return np.asarray(twin.impedance(f), dtype=np.complex128)


def log_frequencies(
    f_min_hz: float = 0.1,
    f_max_hz: float = 5000.0,
    *,
    points_per_decade: int = 10,
    n_points: int | None = None,
) -> FloatArray:
    """Log-spaced frequencies from ``f_min_hz`` to ``f_max_hz`` (both included), ascending.

    Args:
        f_min_hz: Lowest frequency.
        f_max_hz: Highest frequency.
        points_per_decade: Density when ``n_points`` is not given; the count is rounded
            up so that the spacing is at most ``1 / points_per_decade`` decade.
        n_points: Exact number of points (overrides ``points_per_decade``).

    Raises:
        TwinInputError: On a non-positive or inverted range or too few points.
    """
    if not (math.isfinite(f_min_hz) and f_min_hz > 0):
        raise TwinInputError(f"f_min_hz must be finite and > 0, got {f_min_hz!r}")
    if not (math.isfinite(f_max_hz) and f_max_hz > f_min_hz):
        raise TwinInputError(
            f"f_max_hz must be finite and > f_min_hz ({f_min_hz!r}), got {f_max_hz!r}"
        )
    decades = math.log10(f_max_hz / f_min_hz)
    if n_points is None:
        if points_per_decade < 1:
            raise TwinInputError(f"points_per_decade must be >= 1, got {points_per_decade!r}")
        n_points = math.ceil(decades * points_per_decade - 1e-9) + 1
    if n_points < 2:
        raise TwinInputError(f"n_points must be >= 2, got {n_points!r}")
    f = np.logspace(math.log10(f_min_hz), math.log10(f_max_hz), n_points)
    f[0], f[-1] = f_min_hz, f_max_hz
    return f


@dataclass(frozen=True, slots=True)
class EisConfig:
    """One EIS sweep as a BMS would run it.

    Attributes:
        f_min_hz: Lowest frequency of the sweep.
        f_max_hz: Highest frequency of the sweep.
        points_per_decade: Frequency density (ignored when ``n_points`` is set).
        n_points: Exact number of frequencies, log-spaced.
        amplitude_a: Galvanostatic excitation amplitude (peak); ``None`` = C/20 of the
            twin's nominal capacity (5 A for a 100 Ah cell).
        z_noise_rel: Standard deviation of the relative error on ``|Z|``. The 1 % default
            is the order of an on-board impedance chip at milliohm levels (a lab
            potentiostat does about 0.1 %).
        phase_noise_deg: Standard deviation of the absolute error on the phase.
        current_offset_a: DC current during the sweep (positive = discharge). Non-zero
            moves the twin: it is stepped with this current over the sweep.
        periods_per_point: Excitation periods per frequency (sets the sweep duration).
        min_response_v: Points whose voltage response ``amplitude * |Z|`` is below this
            are marked ``"noisy"``.
        seed: Noise seed; the noise also depends on the sweep's ``event_id``, so
            repeated sweeps differ but each is reproducible.
    """

    f_min_hz: float = 0.1
    f_max_hz: float = 5000.0
    points_per_decade: int = 10
    n_points: int | None = None
    amplitude_a: float | None = None
    z_noise_rel: float = 0.01
    phase_noise_deg: float = 0.5
    current_offset_a: float = 0.0
    periods_per_point: float = 3.0
    min_response_v: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise TwinInputError(f"EisConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        if not (math.isfinite(self.f_min_hz) and self.f_min_hz > 0):
            fail("f_min_hz", "finite and > 0")
        if not (math.isfinite(self.f_max_hz) and self.f_max_hz > self.f_min_hz):
            fail("f_max_hz", f"finite and > f_min_hz ({self.f_min_hz!r})")
        if self.n_points is not None and self.n_points < 2:
            fail("n_points", ">= 2 (or None to use points_per_decade)")
        if self.points_per_decade < 1:
            fail("points_per_decade", ">= 1")
        if self.amplitude_a is not None and not (
            math.isfinite(self.amplitude_a) and self.amplitude_a > 0
        ):
            fail("amplitude_a", "finite and > 0 (or None for C/20)")
        for name in ("z_noise_rel", "phase_noise_deg", "min_response_v"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                fail(name, "finite and >= 0")
        if not math.isfinite(self.current_offset_a):
            fail("current_offset_a", "finite")
        if not (math.isfinite(self.periods_per_point) and self.periods_per_point > 0):
            fail("periods_per_point", "finite and > 0")

    def sweep_frequencies_hz(self) -> FloatArray:
        """The frequencies in sweep order, highest first."""
        f = log_frequencies(
            self.f_min_hz,
            self.f_max_hz,
            points_per_decade=self.points_per_decade,
            n_points=self.n_points,
        )
        return f[::-1].copy()

    def point_durations_s(self) -> FloatArray:
        """How long each point of the sweep lasts, in sweep order."""
        return self.periods_per_point / self.sweep_frequencies_hz()

    def sweep_duration_s(self) -> float:
        """Total duration of the sweep."""
        return float(self.point_durations_s().sum())


@dataclass(frozen=True, slots=True)
class EisRecord:
    """One frequency point of one cell, as uploaded; :meth:`to_dict` gives the wire form.

    Attributes mirror :data:`WIRE_KEYS` with units in their names (``phase`` on the
    wire is :attr:`phase_deg`, equal to :attr:`z_phz_deg`). ``status_reason`` and
    ``time_s`` are for local use and are not sent.
    """

    frequency_hz: float
    amplitude_a: float
    current_offset_a: float
    v_start_v: float
    v_end_v: float
    temperature_c: float
    z_re_ohm: float
    z_im_ohm: float
    z_mod_ohm: float
    z_phz_deg: float
    voltage_v: float
    status: str
    event_id: str
    cell_id: int
    status_reason: str = ""
    time_s: float = math.nan

    @property
    def phase_deg(self) -> float:
        """The wire's ``phase``: the phase of Z in degrees (same as ``z_phz_deg``)."""
        return self.z_phz_deg

    @property
    def z_ohm(self) -> complex:
        """The measured impedance as a complex number."""
        return complex(self.z_re_ohm, self.z_im_ohm)

    def to_dict(self) -> dict[str, Any]:
        """The wire payload: exactly :data:`WIRE_KEYS`, plain Python scalars."""
        return {
            "frequency": self.frequency_hz,
            "amplitude": self.amplitude_a,
            "phase": self.phase_deg,
            "current_offset": self.current_offset_a,
            "v_start": self.v_start_v,
            "v_end": self.v_end_v,
            "temperature": self.temperature_c,
            "Z_re": self.z_re_ohm,
            "Z_im": self.z_im_ohm,
            "Z_mod": self.z_mod_ohm,
            "Z_phz": self.z_phz_deg,
            "voltage": self.voltage_v,
            "status": self.status,
            "event_id": self.event_id,
            "cell_id": self.cell_id,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> EisRecord:
        """Read a wire payload back (extra keys such as the server's ``id`` are ignored).

        Raises:
            TwinInputError: If a wire key is missing.
        """
        missing = [k for k in WIRE_KEYS if k not in payload]
        if missing:
            raise TwinInputError(f"EIS payload lacks {', '.join(missing)}")
        return cls(
            frequency_hz=float(payload["frequency"]),
            amplitude_a=float(payload["amplitude"]),
            current_offset_a=float(payload["current_offset"]),
            v_start_v=float(payload["v_start"]),
            v_end_v=float(payload["v_end"]),
            temperature_c=float(payload["temperature"]),
            z_re_ohm=float(payload["Z_re"]),
            z_im_ohm=float(payload["Z_im"]),
            z_mod_ohm=float(payload["Z_mod"]),
            z_phz_deg=float(payload["Z_phz"]),
            voltage_v=float(payload["voltage"]),
            status=str(payload["status"]),
            event_id=str(payload["event_id"]),
            cell_id=int(payload["cell_id"]),
        )


def _cell_indices(cells: Sequence[int] | None, n_cells: int) -> np.ndarray:
    if cells is None:
        return np.arange(n_cells)
    idx = np.asarray(cells, dtype=np.intp).reshape(-1)
    if idx.size == 0:
        raise TwinInputError("measure_eis: cells is empty; pass None to measure every cell")
    if idx.min() < 0 or idx.max() >= n_cells:
        raise TwinInputError(f"measure_eis: cell index out of range 0..{n_cells - 1}: {cells}")
    if np.unique(idx).size != idx.size:
        raise TwinInputError(f"measure_eis: cells has duplicates: {cells}")
    return idx


def _amplitude(twin: ImpedanceTwin, config: EisConfig) -> float:
    if config.amplitude_a is not None:
        return config.amplitude_a
    capacity = getattr(getattr(twin, "params", None), "nominal_capacity_ah", None)
    if not isinstance(capacity, int | float) or not capacity > 0:
        raise TwinInputError(
            "EisConfig.amplitude_a is None (C/20 of the nominal capacity), but the twin has "
            "no params.nominal_capacity_ah: set amplitude_a"
        )
    return 0.05 * float(capacity)


def _voltage_limits(twin: ImpedanceTwin) -> Limits | None:
    limits = getattr(getattr(twin, "params", None), "limits", None)
    return limits if isinstance(limits, Limits) else None


def measure_eis(
    twin: ImpedanceTwin,
    *,
    event_id: str,
    config: EisConfig | None = None,
    cells: Sequence[int] | None = None,
    time_s: float | None = None,
    ambient_c: ArrayLike | None = None,
) -> list[EisRecord]:
    """Run an emulated galvanostatic EIS sweep on some cells of ``twin``.

    At each point the twin's analytic ``Z(f)`` at its state at that moment gets
    Gaussian noise on ``|Z|`` (relative) and on the phase (absolute, in degrees). Over
    the point's duration the cells carry the DC ``current_offset_a`` (the zero-mean
    excitation does not move the state). With a zero offset the sweep runs on a copy,
    so ``twin`` is left exactly as it was; with a non-zero offset ``twin`` itself is
    stepped over the sweep (measured cells at the offset, the others at rest), so its
    time, SoC and voltages move and ``v_start != v_end``.

    Status: ``"fail"`` where ``Z`` is not finite or the voltage (DC plus excitation
    peak) leaves the twin's voltage limits, ``"noisy"`` where the voltage response
    ``amplitude * |Z|`` is below ``config.min_response_v``, else ``"success"``; the
    reason is in ``EisRecord.status_reason``.

    Args:
        twin: A twin with an ``impedance`` method (the ECM twin).
        event_id: Id of the sweep, copied into every record.
        config: The sweep; defaults to :class:`EisConfig` ``()``.
        cells: Indices of the cells to measure; ``None`` = all.
        time_s: Start time stamped on the records; defaults to ``twin.time_s``.
        ambient_c: Ambient temperature while the twin is stepped; defaults to each
            cell's present temperature.

    Returns:
        One record per cell and frequency, cell by cell, each cell's points in sweep
        order (highest frequency first).

    Raises:
        TwinInputError: On bad cells, ambient or a missing amplitude.
    """
    cfg = config or EisConfig()
    n = twin.n_cells
    idx = _cell_indices(cells, n)
    amplitude = _amplitude(twin, cfg)
    freqs = cfg.sweep_frequencies_hz()
    durations = cfg.point_durations_s()
    start_s = twin.time_s if time_s is None else float(time_s)
    point_start_s = start_s + np.concatenate(([0.0], np.cumsum(durations)[:-1]))
    amb = as_cell_array(
        twin.temperature_c if ambient_c is None else ambient_c,
        n_cells=n,
        name="ambient_c",
        source="measure_eis",
    )
    current = np.zeros(n)
    current[idx] = cfg.current_offset_a
    target = twin if cfg.current_offset_a != 0.0 else copy.deepcopy(twin)

    n_pts, m = freqs.size, idx.size
    z_true = np.empty((n_pts, m), dtype=np.complex128)
    voltage = np.empty((n_pts, m))
    temperature = np.empty((n_pts, m))
    limit_hit = np.zeros((n_pts, m), dtype=bool)
    for k in range(n_pts):
        z_true[k] = impedance_spectrum(target, freqs[k])[idx, 0]
        out = target.step(current_a=current, dt_s=float(durations[k]), ambient_c=amb)
        voltage[k] = out.voltage_v[idx]
        temperature[k] = out.surface_temperature_c[idx]
        for event in out.events:
            if event.kind in ("over_voltage", "under_voltage"):
                limit_hit[k] |= np.isin(idx, event.cells)

    # Multiplicative noise: scale |Z| and rotate the phase, so zero noise is exact.
    rng = np.random.default_rng([cfg.seed, zlib.crc32(event_id.encode())])
    gain = 1.0 + cfg.z_noise_rel * rng.standard_normal((n_pts, m))
    turn = np.radians(cfg.phase_noise_deg * rng.standard_normal((n_pts, m)))
    with np.errstate(invalid="ignore"):
        z_meas = z_true * (gain * np.exp(1j * turn))
    z_re, z_im = z_meas.real, z_meas.imag
    mod = np.abs(z_meas)
    phz = np.degrees(np.angle(z_meas))
    response_v = amplitude * np.abs(z_true)

    limits = _voltage_limits(twin)
    records: list[EisRecord] = []
    for j, cell in enumerate(idx):
        v_start, v_end = float(voltage[0, j]), float(voltage[-1, j])
        for k in range(n_pts):
            status, reason = STATUS_SUCCESS, ""
            values = (mod[k, j], phz[k, j], z_re[k, j], z_im[k, j])
            if not (np.isfinite(z_meas[k, j]) and gain[k, j] > 0):
                status, reason = STATUS_FAIL, "no finite impedance at this point"
                values = (0.0, 0.0, 0.0, 0.0)
            elif limit_hit[k, j] or (
                limits is not None
                and not (
                    limits.min_voltage_v
                    <= voltage[k, j] - response_v[k, j]
                    <= voltage[k, j] + response_v[k, j]
                    <= limits.max_voltage_v
                )
            ):
                status = STATUS_FAIL
                reason = f"voltage {voltage[k, j]:.4f} V +- {response_v[k, j]:.2e} V beyond limits"
            elif response_v[k, j] < cfg.min_response_v:
                status = STATUS_NOISY
                reason = (
                    f"response {response_v[k, j]:.2e} V below min_response_v "
                    f"{cfg.min_response_v:.2e} V"
                )
            records.append(
                EisRecord(
                    frequency_hz=float(freqs[k]),
                    amplitude_a=amplitude,
                    current_offset_a=cfg.current_offset_a,
                    v_start_v=v_start,
                    v_end_v=v_end,
                    temperature_c=float(temperature[k, j]),
                    z_mod_ohm=float(values[0]),
                    z_phz_deg=float(values[1]),
                    z_re_ohm=float(values[2]),
                    z_im_ohm=float(values[3]),
                    voltage_v=float(voltage[k, j]),
                    status=status,
                    event_id=event_id,
                    cell_id=int(cell),
                    status_reason=reason,
                    time_s=float(point_start_s[k]),
                )
            )
    return records
