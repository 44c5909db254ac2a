"""Sensors kept apart from truth: what a BMS reads instead of the twin's exact values.

A :class:`Sensors` object turns true cell voltages, string currents and cell
temperatures into readings with the errors of a real measurement chain, applied in
the order the hardware applies them::

    analog = truth * gain + offset + noise     # front end: calibration error, noise
    reading = quantise(saturate(analog))       # ADC: input range, then LSB
    held between samples                       # sample-and-hold at sample_period_s

``gain`` and ``offset`` are drawn once per channel at construction (a calibration
error is fixed for the life of a channel); ``noise`` is drawn afresh at every sample.
Everything is vectorised over channels and seeded, so two sensors built with the same
spec, channel counts and seed read the same values for the same inputs. The truth
arrays passed in are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from twin.errors import TwinInputError
from twin.models.base import FloatArray, as_cell_array

__all__ = ["ChannelSpec", "Reading", "SensorSpec", "Sensors"]

# Tolerance, in sample periods or LSBs, so that a read at t = k * period (or a range
# end at k * lsb) computed in floating point still counts as k.
_EPS = 1e-9


def _check(value: float, *, name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise TwinInputError(f"ChannelSpec.{name} must be {rule}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Error model of one kind of measurement channel (all channels of a kind share it).

    Each channel ``i`` reads ``truth * (1 + gain_error + g_i) + offset + o_i + noise``,
    where ``g_i ~ N(0, gain_error_std)`` and ``o_i ~ N(0, offset_std)`` are drawn once
    per channel and ``noise ~ N(0, noise_std)`` at every sample; the result is
    saturated to ``[min_value, max_value]`` and rounded to the ``lsb`` grid.

    Attributes:
        noise_std: Standard deviation of the Gaussian noise per sample, in the unit of
            the quantity.
        offset: Bias common to every channel (a systematic error), in the unit of the
            quantity.
        offset_std: Spread of the per-channel offset (calibration error), drawn once.
        gain_error: Relative gain error common to every channel (0.005 = reads 0.5 % high).
        gain_error_std: Spread of the per-channel relative gain error, drawn once.
        lsb: Quantisation step of the converter; 0 means no quantisation.
        sample_period_s: A new sample is taken at most every this many seconds; reads
            in between return the held sample.
        min_value: Lower end of the input range (the reading saturates there); ``None``
            for no limit.
        max_value: Upper end of the input range; ``None`` for no limit.
    """

    noise_std: float = 0.0
    offset: float = 0.0
    offset_std: float = 0.0
    gain_error: float = 0.0
    gain_error_std: float = 0.0
    lsb: float = 0.0
    sample_period_s: float = 1.0
    min_value: float | None = None
    max_value: float | None = None

    def __post_init__(self) -> None:
        for name in ("noise_std", "offset_std", "gain_error_std", "lsb"):
            value = getattr(self, name)
            _check(value, name=name, ok=math.isfinite(value) and value >= 0, rule="finite and >= 0")
        _check(self.offset, name="offset", ok=math.isfinite(self.offset), rule="finite")
        _check(
            self.gain_error,
            name="gain_error",
            ok=math.isfinite(self.gain_error) and self.gain_error > -1.0,
            rule="finite and > -1 (a relative error; -1 would read zero)",
        )
        _check(
            self.sample_period_s,
            name="sample_period_s",
            ok=math.isfinite(self.sample_period_s) and self.sample_period_s > 0,
            rule="finite and > 0",
        )
        for name in ("min_value", "max_value"):
            value = getattr(self, name)
            if value is not None:
                _check(value, name=name, ok=math.isfinite(value), rule="finite or None")
        if (
            self.min_value is not None
            and self.max_value is not None
            and not self.min_value < self.max_value
        ):
            raise TwinInputError(
                f"ChannelSpec.min_value must be < max_value, got min_value={self.min_value!r}, "
                f"max_value={self.max_value!r}"
            )


def _default_voltage() -> ChannelSpec:
    # Cell-monitor AFEs (16-bit, e.g. LTC681x / BQ769x2 class) resolve ~0.1 mV but are
    # specified to about +-1.5 mV total error; BMS firmware reports whole mV. Hence
    # a 1 mV grid, 1 mV noise and a 1 mV (1 sigma) per-channel calibration offset.
    # 0-5 V is the usual AFE input range; 0.1 s is a typical full scan of all cells.
    return ChannelSpec(
        noise_std=1e-3,
        offset_std=1e-3,
        gain_error_std=1e-4,
        lsb=1e-3,
        sample_period_s=0.1,
        min_value=0.0,
        max_value=5.0,
    )


def _default_current() -> ChannelSpec:
    # A shunt or closed-loop Hall sensor on the string: about 0.5 % gain error after
    # calibration and a zero offset of tens of mA, which is what makes Coulomb
    # counting drift; 0.1 A noise on a +-500 A range (10 mA steps). Sampled fast
    # (10 ms) because current is what the BMS integrates.
    return ChannelSpec(
        noise_std=0.1,
        offset_std=0.05,
        gain_error_std=0.005,
        lsb=0.01,
        sample_period_s=0.01,
        min_value=-500.0,
        max_value=500.0,
    )


def _default_temperature() -> ChannelSpec:
    # NTC thermistors through a divider: 0.5 degC noise and a 0.5 degC calibration
    # spread, reported in 0.1 degC steps once a second (temperatures move slowly,
    # and the multiplexed NTC channels are scanned slowly), -40..125 degC range.
    return ChannelSpec(
        noise_std=0.5,
        offset_std=0.5,
        lsb=0.1,
        sample_period_s=1.0,
        min_value=-40.0,
        max_value=125.0,
    )


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """Channel specs for a BMS: cell voltage [V], string current [A], temperature [degC].

    The defaults describe a typical stationary-storage BMS (see the comments in
    :mod:`twin.sensors` for each number's origin). Pass ``ChannelSpec()`` for an ideal
    channel (no error, 1 s sample period).
    """

    voltage: ChannelSpec = field(default_factory=_default_voltage)
    current: ChannelSpec = field(default_factory=_default_current)
    temperature: ChannelSpec = field(default_factory=_default_temperature)


@dataclass(frozen=True, slots=True)
class Reading:
    """What the BMS sees at ``time_s``: one value per channel, each a fresh array.

    Attributes:
        time_s: Time of the read.
        voltage_v: Cell voltage readings.
        current_a: String current readings (positive = discharge).
        temperature_c: Temperature readings.
        voltage_sampled_s: When the held voltage sample was taken (<= ``time_s``).
        current_sampled_s: When the held current sample was taken.
        temperature_sampled_s: When the held temperature sample was taken.
    """

    time_s: float
    voltage_v: FloatArray
    current_a: FloatArray
    temperature_c: FloatArray
    voltage_sampled_s: float
    current_sampled_s: float
    temperature_sampled_s: float


class _Channel:
    """One kind of channel: fixed calibration errors plus the sample-and-hold state."""

    def __init__(self, spec: ChannelSpec, *, n: int, rng: np.random.Generator) -> None:
        self.spec = spec
        self.n = n
        self.offset = spec.offset + spec.offset_std * rng.standard_normal(n)
        self.gain = 1.0 + spec.gain_error + spec.gain_error_std * rng.standard_normal(n)
        lo, hi = spec.min_value, spec.max_value
        if spec.lsb > 0:
            # Saturated values must stay on the LSB grid as well.
            lo = None if lo is None else math.ceil(lo / spec.lsb - _EPS) * spec.lsb
            hi = None if hi is None else math.floor(hi / spec.lsb + _EPS) * spec.lsb
        self.lo, self.hi = lo, hi
        self.held: FloatArray | None = None
        self.sample_index = -1
        self.sampled_s = math.nan

    def read(
        self, truth: FloatArray, *, elapsed_s: float, time_s: float, rng: np.random.Generator
    ) -> FloatArray:
        spec = self.spec
        k = math.floor(elapsed_s / spec.sample_period_s + _EPS)
        if self.held is None or k > self.sample_index:
            value = truth * self.gain
            value += self.offset
            if spec.noise_std > 0:
                value += spec.noise_std * rng.standard_normal(self.n)
            if spec.lsb > 0:
                value = np.round(value / spec.lsb) * spec.lsb
            if self.lo is not None or self.hi is not None:
                np.clip(value, self.lo, self.hi, out=value)
            self.held = value
            self.sample_index = k
            self.sampled_s = time_s
        return self.held.copy()


class Sensors:
    """Measurement chain of one BMS: turns true values into readings.

    Example:
        >>> sensors = Sensors(SensorSpec(), n_voltage=16, n_current=1, n_temperature=4, seed=7)
        >>> reading = sensors.read(
        ...     time_s=0.0, voltage_v=3.7, current_a=20.0, temperature_c=25.0
        ... )
        >>> reading.voltage_v.shape
        (16,)

    Args:
        spec: Error model per channel kind.
        n_voltage: Number of cell-voltage channels.
        n_current: Number of current channels (one per string).
        n_temperature: Number of temperature channels.
        seed: Seed or generator for the calibration draws and the noise.

    Raises:
        TwinInputError: If a channel count is < 1.
    """

    def __init__(
        self,
        spec: SensorSpec,
        *,
        n_voltage: int,
        n_current: int = 1,
        n_temperature: int,
        seed: int | np.random.Generator,
    ) -> None:
        for name, n in (
            ("n_voltage", n_voltage),
            ("n_current", n_current),
            ("n_temperature", n_temperature),
        ):
            if n < 1:
                raise TwinInputError(f"Sensors.{name} must be >= 1, got {n}")
        self.spec = spec
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        # Draw order is part of reproducibility: voltage, current, temperature.
        self._voltage = _Channel(spec.voltage, n=n_voltage, rng=self._rng)
        self._current = _Channel(spec.current, n=n_current, rng=self._rng)
        self._temperature = _Channel(spec.temperature, n=n_temperature, rng=self._rng)
        self._t_first: float | None = None
        self._t_last = -math.inf

    @property
    def voltage_offsets_v(self) -> FloatArray:
        """Total offset of each voltage channel (common + drawn), a copy."""
        return self._voltage.offset.copy()

    @property
    def voltage_gains(self) -> FloatArray:
        """Gain of each voltage channel (1 = exact), a copy."""
        return self._voltage.gain.copy()

    @property
    def current_offsets_a(self) -> FloatArray:
        """Total offset of each current channel, a copy."""
        return self._current.offset.copy()

    @property
    def current_gains(self) -> FloatArray:
        """Gain of each current channel, a copy."""
        return self._current.gain.copy()

    @property
    def temperature_offsets_c(self) -> FloatArray:
        """Total offset of each temperature channel, a copy."""
        return self._temperature.offset.copy()

    @property
    def temperature_gains(self) -> FloatArray:
        """Gain of each temperature channel, a copy."""
        return self._temperature.gain.copy()

    def read(
        self,
        *,
        time_s: float,
        voltage_v: ArrayLike,
        current_a: ArrayLike,
        temperature_c: ArrayLike,
    ) -> Reading:
        """Read every channel at ``time_s`` from the true values.

        Sample instants are counted from the first read: a channel takes a new sample
        when a read reaches the next multiple of its ``sample_period_s``, otherwise it
        returns the held one. Scalars broadcast to every channel of their kind.

        Raises:
            TwinInputError: If ``time_s`` is not finite or goes backwards, or an input
                has the wrong shape or a non-finite value.
        """
        t = float(time_s)
        if not math.isfinite(t) or t < self._t_last:
            raise TwinInputError(
                f"Sensors.read: time_s must be finite and not earlier than the previous "
                f"read ({self._t_last}), got {time_s!r}"
            )
        source = "Sensors.read"
        v = as_cell_array(voltage_v, n_cells=self._voltage.n, name="voltage_v", source=source)
        i = as_cell_array(current_a, n_cells=self._current.n, name="current_a", source=source)
        temp = as_cell_array(
            temperature_c, n_cells=self._temperature.n, name="temperature_c", source=source
        )
        if self._t_first is None:
            self._t_first = t
        self._t_last = t
        elapsed = t - self._t_first
        rng = self._rng
        voltage = self._voltage.read(v, elapsed_s=elapsed, time_s=t, rng=rng)
        current = self._current.read(i, elapsed_s=elapsed, time_s=t, rng=rng)
        temperature = self._temperature.read(temp, elapsed_s=elapsed, time_s=t, rng=rng)
        return Reading(
            time_s=t,
            voltage_v=voltage,
            current_a=current,
            temperature_c=temperature,
            voltage_sampled_s=self._voltage.sampled_s,
            current_sampled_s=self._current.sampled_s,
            temperature_sampled_s=self._temperature.sampled_s,
        )
