"""Exogenous time series for the scenarios: household load, weather, PV power, EV arrivals.

Every series lives on a uniform grid of ``dt_s`` seconds that starts on 1 January 00:00
local standard time (no daylight saving) and covers ``n_days`` whole days; sample ``i``
is the mean over ``[i * dt_s, (i + 1) * dt_s)``. ``dt_s`` must divide 900 s (the 15-min
resolution of the BDEW load profiles). Powers are in W (``load_w`` consumed by the home,
``pv_w`` AC power delivered by the PV inverter, both >= 0), temperatures in degC.

Data ship inside installed packages, nothing is downloaded:

* household load: BDEW standard load profile H25 (2025 revision, dynamised), from
  ``demandlib.bdew.H25`` (``demandlib/bdew/bdew_data/h25.csv``);
* weather: the 15 DWD test reference years TRY2010 shipped with demandlib
  (``demandlib/vdi/resources_weather/TRY2010_<RR>_Jahr.dat``), or pvlib's TMY3 file
  ``723170TYA.CSV`` (Greensboro, NC) as an alternative source;
* PV: pvlib (solar position, Hay-Davies transposition, SAPM cell temperature, PVWatts).

The expensive computations (at most one year each) are cached per distinct argument
set and return read-only arrays: copy a result (``arr.copy()``) before modifying it.
pandas, pvlib and demandlib are imported lazily inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

__all__ = [
    "EV_ARRIVAL_PROFILES",
    "TRY_REGIONS",
    "ProfileError",
    "Weather",
    "ev_arrival_rate_per_h",
    "household_load_w",
    "pv_power_w",
    "weather",
    "weather_tmy3",
]

BLOCK_S = 900.0  # s, resolution of the BDEW standard load profiles
HOUR_S = 3600.0  # s
DAY_S = 86_400.0  # s
WEATHER_YEAR_DAYS = 365  # days in one test reference year (TRY2010 and TMY3 alike)
TRY_REGIONS = range(1, 16)  # DWD TRY2010 climate regions

CET_UTC_OFFSET_H = 1.0  # h, TRY2010 files are in MEZ (CET) without daylight saving
_REFERENCE_WEATHER_YEAR = 2010  # non-leap calendar used for the sun in typical years

# Minute-scale load variability (see household_load_w).
_NOISE_SIGMA = 0.35  # standard deviation of the log of the multiplicative noise
_NOISE_TAU_S = 120.0  # s, correlation time of that noise
_PEAK_RATE = 0.12  # appliance peaks per 15-min block at the year's mean load
_PEAK_W = (1000.0, 2500.0)  # W, uniform range of an appliance's power
_PEAK_S = (60.0, 300.0)  # s, uniform range of an appliance run
_PEAK_MAX_SHARE = 0.5  # at most this share of a block's energy goes into its peak

# Disaggregation of hourly irradiance: caps on the hourly clearness indices so that
# an hour whose sun is barely up (sunrise, sunset) cannot spike.
_MAX_BEAM_INDEX = 0.85  # DNI <= 0.85 * extraterrestrial irradiance
_MAX_DIFFUSE_INDEX = 0.6  # DHI <= 0.6 * extraterrestrial horizontal irradiance
# ... and DNI stays below a clear-sky bound (Meinel: I0 * 0.7 ** AM ** 0.678, with
# margin); beam above it is counted as diffuse, which keeps GHI.
_CLEAR_DNI_MARGIN = 1.15

# PV system (PVWatts v5 defaults unless stated).
_GAMMA_PDC_PER_K = -0.004  # 1/K, power temperature coefficient of crystalline Si
_ALBEDO = 0.2  # ground reflectance
_DC_AC_RATIO = 1.1  # DC peak over inverter AC rating, typical German rooftop
_INVERTER_ETA_NOM = 0.96  # nominal inverter efficiency (PVWatts)
_CELL_TEMPERATURE_MODEL = "open_rack_glass_polymer"  # SAPM; rooftop with ventilated gap

# Fast-charging hub: relative arrivals per hour of the day (0 = 00:00-01:00, local
# time). An assumed typical shape, not fitted to a data set: few arrivals at night, a
# late-morning and a larger late-afternoon peak (commuting, shopping, through traffic),
# scaled so that one charging point sees _HUB_SESSIONS_PER_DAY sessions a day.
_HUB_SHAPE = (
    0.25, 0.15, 0.10, 0.10, 0.15, 0.30, 0.55, 0.80, 0.95, 1.05, 1.15, 1.25,
    1.25, 1.15, 1.10, 1.15, 1.25, 1.30, 1.15, 0.95, 0.75, 0.60, 0.45, 0.35,
)  # fmt: skip
_HUB_SESSIONS_PER_DAY = 6.0  # vehicles per charging point per day
EV_ARRIVAL_PROFILES = ("fast_charging_hub",)


class ProfileError(ValueError):
    """A profile was asked for with invalid arguments; the message says which and why."""


@dataclass(frozen=True, slots=True, eq=False)
class Weather:
    """Weather at one site on the scenario grid (all arrays read-only, same length).

    Attributes:
        ghi_w_m2: Global horizontal irradiance, W/m2.
        dhi_w_m2: Diffuse horizontal irradiance, W/m2.
        dni_w_m2: Direct normal irradiance, W/m2 (direct horizontal over cos(zenith)).
        temperature_c: Air temperature at 2 m, degC.
        wind_m_s: Wind speed at 10 m, m/s.
        latitude: Site latitude, degrees north.
        longitude: Site longitude, degrees east.
        altitude_m: Site altitude above sea level, m.
        utc_offset_h: Offset of the grid's local standard time from UTC, h.
        dt_s: Grid step, s.
        site: Station name.
        source: ``"dwd_try2010"`` or ``"tmy3"``.
    """

    ghi_w_m2: FloatArray
    dhi_w_m2: FloatArray
    dni_w_m2: FloatArray
    temperature_c: FloatArray
    wind_m_s: FloatArray
    latitude: float
    longitude: float
    altitude_m: float
    utc_offset_h: float
    dt_s: float
    site: str
    source: str


# --------------------------------------------------------------------------- helpers


def _samples_per_block(dt_s: float) -> int:
    """Samples per 15-min block; dt_s must divide 900 s exactly."""
    real = isinstance(dt_s, numbers.Real) and not isinstance(dt_s, bool)
    if not (real and math.isfinite(dt_s) and dt_s > 0):
        raise ProfileError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
    n = round(BLOCK_S / dt_s)
    if n < 1 or abs(n * dt_s - BLOCK_S) > 1e-9 * BLOCK_S:
        raise ProfileError(f"dt_s must divide 900 s (e.g. 1, 10, 60, 300, 900), got {dt_s!r}")
    return n


def _whole(value: object) -> int | None:
    """value as an int if it is an integer (Python or numpy, not bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _checked_n_days(n_days: int) -> int:
    days = _whole(n_days)
    if days is None or days < 1:
        raise ProfileError(f"n_days must be a whole number of days >= 1, got {n_days!r}")
    return days


def _read_only(arr: FloatArray) -> FloatArray:
    arr.flags.writeable = False
    return arr


def _cyclic(arr: FloatArray, n: int) -> FloatArray:
    """The first n samples of arr repeated end to end, read-only."""
    if n <= arr.size:
        return _read_only(arr[:n])  # a view of a read-only array stays read-only
    return _read_only(np.resize(arr, n))


@contextlib.contextmanager
def _library_deprecations_ignored() -> Iterator[None]:
    """Silence DeprecationWarnings raised inside demandlib/pvlib calls.

    demandlib 0.2.2 passes ``inplace=True`` and pvlib 0.16.1 reads
    ``DatetimeIndex.dayofyear``, both deprecated by pandas >= 3.1 (Pandas4Warning, a
    DeprecationWarning); results are unaffected. Scoped to those calls only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# ------------------------------------------------------------------ household load


def _easter_sunday(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _german_public_holidays(year: int) -> list[date]:
    """The nine public holidays kept in every German state (BDEW day type "FT")."""
    easter = _easter_sunday(year)
    return [
        date(year, 1, 1),
        easter - timedelta(days=2),  # Good Friday
        easter + timedelta(days=1),  # Easter Monday
        date(year, 5, 1),
        easter + timedelta(days=39),  # Ascension
        easter + timedelta(days=50),  # Whit Monday
        date(year, 10, 3),
        date(year, 12, 25),
        date(year, 12, 26),
    ]


@functools.lru_cache(maxsize=8)
def _h25_w_per_kwh(year: int) -> FloatArray:
    """H25 15-min mean power, W, for an annual consumption of 1 kWh (read-only)."""
    import pandas as pd
    from demandlib import bdew

    n_blocks = (366 if _is_leap(year) else 365) * 96
    index = pd.date_range(f"{year}-01-01", periods=n_blocks, freq="15min")
    with _library_deprecations_ignored():
        profile = bdew.H25(index, holidays=_german_public_holidays(year))
    kw = np.asarray(profile.to_numpy(), dtype=np.float64)
    if kw.size != n_blocks or not np.all(np.isfinite(kw)) or np.any(kw < 0):
        raise ProfileError(f"demandlib H25 returned an unusable profile for {year}")
    annual_kwh = kw.sum() * BLOCK_S / HOUR_S
    return _read_only(kw * (1000.0 / annual_kwh))


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _spread_day(
    block_w: FloatArray, n: int, dt_s: float, mean_w: float, rng: np.random.Generator
) -> FloatArray:
    """Spread one day's 15-min means over n samples each, keeping every block's mean."""
    from scipy.signal import lfilter

    n_blocks = block_w.size
    # Correlated multiplicative noise, normalised to mean 1 in every block.
    rho = math.exp(-dt_s / _NOISE_TAU_S)
    eps = rng.standard_normal(n_blocks * n)
    x = lfilter([math.sqrt(1.0 - rho * rho)], [1.0, -rho], eps, zi=[rho * rng.standard_normal()])
    noise = np.exp(_NOISE_SIGMA * x[0]).reshape(n_blocks, n)
    noise /= noise.mean(axis=1, keepdims=True)

    # Appliance runs (kettle, oven, washing-machine heater): at most one per block,
    # more likely when the profile is high; a block's run takes the share of its
    # energy that the appliance would use, capped so the base load never vanishes.
    has_peak = rng.random(n_blocks) < np.minimum(0.9, _PEAK_RATE * block_w / mean_w)
    peak_w = rng.uniform(*_PEAK_W, n_blocks)
    run = np.clip(np.rint(rng.uniform(*_PEAK_S, n_blocks) / dt_s), 1, n).astype(np.int64)
    start = np.floor(rng.random(n_blocks) * (n - run + 1)).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        natural_share = peak_w * run * dt_s / (block_w * BLOCK_S)
    share = np.where(has_peak & (block_w > 0), np.minimum(_PEAK_MAX_SHARE, natural_share), 0.0)
    k = np.arange(n)
    in_run = (k >= start[:, None]) & (k < (start + run)[:, None])
    shape = (1.0 - share[:, None]) * noise + share[:, None] * in_run * (n / run)[:, None]
    return np.asarray((block_w[:, None] * shape).ravel(), dtype=np.float64)


@functools.lru_cache(maxsize=32)
def _load_chunk_w(
    annual_kwh: float, dt_s: float, seed: int, year: int, year_index: int, n_days: int
) -> FloatArray:
    """The first n_days of one profile year with minute-scale variability (read-only).

    Each day draws from its own seeded stream, so a shorter run is a prefix of a longer
    one and memory stays bounded by one day of intermediates.
    """
    year_w = _h25_w_per_kwh(year) * annual_kwh
    n = _samples_per_block(dt_s)
    if n == 1:
        return _read_only(year_w[: n_days * 96].copy())
    mean_w = float(year_w.mean())
    out = np.empty(n_days * 96 * n, dtype=np.float64)
    for day in range(n_days):
        rng = np.random.default_rng(np.random.SeedSequence([seed, year_index, day]))
        out[day * 96 * n : (day + 1) * 96 * n] = _spread_day(
            year_w[day * 96 : (day + 1) * 96], n, dt_s, mean_w, rng
        )
    return _read_only(out)


def household_load_w(
    *, annual_kwh: float, dt_s: float, n_days: int, seed: int, year: int = 2025
) -> FloatArray:
    """Household electricity demand, W, from the BDEW H25 standard load profile.

    The dynamised H25 profile of ``year`` (German public holidays count as Sundays) is
    scaled so that the calendar year consumes ``annual_kwh``. Below 15 min, each block's
    mean is spread over its samples with seeded variability that keeps every 15-min
    energy exactly:

    * correlated multiplicative noise (log-normal, sigma 0.35, correlation time 2 min),
      normalised to mean 1 in each block;
    * appliance runs of 1-2.5 kW for 1-5 min, on average 0.12 per block at the year's
      mean load (more at high load), taking at most half of the block's energy.

    At ``dt_s == 900`` the series is the profile itself. Runs longer than the year
    repeat the same calendar pattern with fresh noise each year. Every day draws from
    its own stream of ``seed``, so a shorter run is a prefix of a longer one.

    Args:
        annual_kwh: Energy consumed in one calendar year, kWh (> 0).
        dt_s: Grid step, s; must divide 900.
        n_days: Whole days from 1 January 00:00.
        seed: Non-negative seed of the variability.
        year: Calendar year whose weekdays and holidays the profile follows.

    Returns:
        Read-only array of ``n_days * 86400 / dt_s`` mean powers, W.
    """
    if not (math.isfinite(annual_kwh) and annual_kwh > 0):
        raise ProfileError(f"annual_kwh must be > 0, got {annual_kwh!r}")
    seed_int, year_int = _whole(seed), _whole(year)
    if seed_int is None or seed_int < 0:
        raise ProfileError(f"seed must be an integer >= 0, got {seed!r}")
    if year_int is None:
        raise ProfileError(f"year must be an integer calendar year, got {year!r}")
    seed, year, n_days = seed_int, year_int, _checked_n_days(n_days)
    _samples_per_block(dt_s)
    days_per_year = 366 if _is_leap(year) else 365
    chunks = [
        _load_chunk_w(
            float(annual_kwh), float(dt_s), seed, year, k, min(days_per_year, n_days - first)
        )
        for k, first in enumerate(range(0, n_days, days_per_year))
    ]
    return chunks[0] if len(chunks) == 1 else _read_only(np.concatenate(chunks))


# ------------------------------------------------------------------------- weather


@dataclass(frozen=True, slots=True)
class _Sun:
    """Sun at the grid's sample midpoints over the first days of a year (read-only)."""

    zenith_deg: FloatArray  # apparent (refracted) zenith
    azimuth_deg: FloatArray
    cos_zenith: FloatArray  # max(cos(apparent zenith), 0)
    dni_extra_w_m2: FloatArray  # extraterrestrial normal irradiance
    dni_clear_w_m2: FloatArray  # upper bound of DNI (clear sky, with margin)
    hour_of_year_lst: FloatArray  # midpoint, hours since 1 Jan 00:00 local standard time
    eot_min: FloatArray  # equation of time, min


@functools.lru_cache(maxsize=16)
def _sun(
    latitude: float,
    longitude: float,
    altitude_m: float,
    utc_offset_h: float,
    dt_s: float,
    n_days: int,
) -> _Sun:
    import pandas as pd
    import pvlib

    n = n_days * 96 * _samples_per_block(dt_s)
    hours = (np.arange(n, dtype=np.float64) + 0.5) * (dt_s / HOUR_S)
    start = pd.Timestamp(f"{_REFERENCE_WEATHER_YEAR}-01-01", tz="UTC")
    times = start + pd.to_timedelta(hours - utc_offset_h, unit="h")
    # pvlib's ephemeris is ~10x faster than NREL SPA here and well within 0.1 deg.
    with _library_deprecations_ignored():
        pos = pvlib.solarposition.ephemeris(
            times, latitude, longitude, pressure=pvlib.atmosphere.alt2pres(altitude_m)
        )
    zenith = np.asarray(pos["apparent_zenith"].to_numpy(), dtype=np.float64)
    azimuth = np.asarray(pos["azimuth"].to_numpy(), dtype=np.float64)
    day_of_year = np.floor(hours / 24.0) + 1.0
    dni_extra = np.asarray(
        pvlib.irradiance.get_extra_radiation(day_of_year, method="spencer"), dtype=np.float64
    )
    eot = np.asarray(pvlib.solarposition.equation_of_time_spencer71(day_of_year), dtype=np.float64)
    cos_z = np.asarray(np.maximum(np.cos(np.radians(zenith)), 0.0), dtype=np.float64)
    airmass = pvlib.atmosphere.get_relative_airmass(np.minimum(zenith, 90.0), "kastenyoung1989")
    dni_clear = np.where(
        cos_z > 0, _CLEAR_DNI_MARGIN * dni_extra * 0.7 ** (np.nan_to_num(airmass) ** 0.678), 0.0
    )
    return _Sun(
        zenith_deg=_read_only(zenith),
        azimuth_deg=_read_only(azimuth),
        cos_zenith=_read_only(cos_z),
        dni_extra_w_m2=_read_only(dni_extra),
        dni_clear_w_m2=_read_only(np.asarray(dni_clear, dtype=np.float64)),
        hour_of_year_lst=_read_only(hours),
        eot_min=_read_only(eot),
    )


def _disaggregate(
    hourly_w_m2: FloatArray,
    hour_index: NDArray[np.int64],
    horizontal_extra: FloatArray,
    dt_s: float,
    max_index: float,
) -> tuple[FloatArray, FloatArray]:
    """Hourly-mean horizontal irradiance -> grid, following the sun within each hour.

    Each sample gets ``k_h * horizontal_extra`` where ``k_h`` (the hour's clearness
    index, capped at ``max_index``) makes the hour's samples integrate to its hourly
    energy exactly. Returns (values on the grid, k per sample).
    """
    n_hours = hourly_w_m2.size
    extra_sum = np.bincount(hour_index, weights=horizontal_extra, minlength=n_hours)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(extra_sum > 0, hourly_w_m2 * (HOUR_S / dt_s) / extra_sum, 0.0)
    k = np.minimum(k, max_index)
    k_sample = k[hour_index]
    return k_sample * horizontal_extra, k_sample


@dataclass(frozen=True, slots=True)
class _HourlyWeather:
    """A typical year of hourly data (8760 values each) and the site."""

    direct_horizontal_w_m2: FloatArray  # hourly means over the hour ending at the label
    diffuse_horizontal_w_m2: FloatArray
    temperature_c: FloatArray  # values at the label time
    wind_m_s: FloatArray
    latitude: float
    longitude: float
    altitude_m: float
    utc_offset_h: float
    site: str
    source: str
    irradiance_in_solar_time: bool  # hour labels of irradiance in true solar time


def _weather_days(hourly: _HourlyWeather, dt_s: float, n_days: int) -> Weather:
    """Interpolate the first n_days (<= 365) of a typical hourly year onto the grid.

    Hours straddling the ends of the range (always night here) see only their samples
    inside it, so a shorter range is a prefix of a longer one.
    """
    sun = _sun(
        hourly.latitude, hourly.longitude, hourly.altitude_m, hourly.utc_offset_h, dt_s, n_days
    )
    t_h = sun.hour_of_year_lst
    if hourly.irradiance_in_solar_time:
        # Local standard time -> true local solar time (WOZ) of each sample midpoint.
        meridian = 15.0 * hourly.utc_offset_h
        t_irr = t_h + (hourly.longitude - meridian) / 15.0 + sun.eot_min / 60.0
    else:
        t_irr = t_h
    n_hours = WEATHER_YEAR_DAYS * 24
    # Label HH (1..24) covers [HH-1, HH); the typical year wraps around at the ends.
    hour_index = np.mod(np.floor(t_irr).astype(np.int64), n_hours)
    horizontal_extra = sun.dni_extra_w_m2 * sun.cos_zenith
    direct_h, k_beam = _disaggregate(
        hourly.direct_horizontal_w_m2, hour_index, horizontal_extra, dt_s, _MAX_BEAM_INDEX
    )
    diffuse_h, _ = _disaggregate(
        hourly.diffuse_horizontal_w_m2, hour_index, horizontal_extra, dt_s, _MAX_DIFFUSE_INDEX
    )
    dni = np.minimum(k_beam * sun.dni_extra_w_m2, sun.dni_clear_w_m2)
    diffuse_h = diffuse_h + (direct_h - dni * sun.cos_zenith)
    direct_h = dni * sun.cos_zenith

    # Point values at hour labels 1..8760; hour 0 repeats hour 8760 (periodic year).
    label_h = np.arange(n_hours + 1, dtype=np.float64)

    def at_grid(values: FloatArray) -> FloatArray:
        grid = np.interp(t_h, label_h, np.concatenate([values[-1:], values]))
        return np.asarray(grid, dtype=np.float64)

    return Weather(
        ghi_w_m2=_read_only(direct_h + diffuse_h),
        dhi_w_m2=_read_only(diffuse_h),
        dni_w_m2=_read_only(dni),
        temperature_c=_read_only(at_grid(hourly.temperature_c)),
        wind_m_s=_read_only(at_grid(hourly.wind_m_s)),
        latitude=hourly.latitude,
        longitude=hourly.longitude,
        altitude_m=hourly.altitude_m,
        utc_offset_h=hourly.utc_offset_h,
        dt_s=dt_s,
        site=hourly.site,
        source=hourly.source,
    )


def _try_path(region: int) -> Path:
    import demandlib

    return (
        Path(demandlib.__file__).parent
        / "vdi"
        / "resources_weather"
        / f"TRY2010_{region:02d}_Jahr.dat"
    )


_DMS_RE = re.compile(r"Lage:\s*(\d+)°(\d+)'N.*?(\d+)°(\d+)'O.*?(-?\d+)\s*Meter")


def _read_try2010(region: int) -> _HourlyWeather:
    """Parse a DWD TRY2010 file: header (station, position) and the hourly table.

    Columns used (file header): WG wind speed at 10 m [m/s], t air temperature at 2 m
    [degC], B direct and D diffuse irradiance on the horizontal [W/m2]. Hours HH = 1..24
    are labelled MEZ (CET, UTC+1). Fitting the irradiance to the sun's path in all 15
    files shows it is the mean over the hour ending at HH in *true solar time* (the DWD
    radiation archive's convention): that is how it is placed on the grid.
    """
    path = _try_path(region)
    lines = path.read_text(encoding="utf-8").splitlines()
    site = lines[1].split("Station:")[1].split("WMO")[0].strip()
    match = _DMS_RE.search(lines[2])
    if match is None:
        raise ProfileError(f"no position in the header of {path}")
    deg_n, min_n, deg_e, min_e, alt = (int(g) for g in match.groups())
    star = next(i for i, line in enumerate(lines) if line.startswith("***"))
    names = lines[star - 1].split()
    table = np.loadtxt(lines[star + 1 :], dtype=np.float64)
    if table.shape != (WEATHER_YEAR_DAYS * 24, len(names)):
        raise ProfileError(f"{path}: expected 8760 rows of {len(names)} columns")
    col = {name: table[:, i] for i, name in enumerate(names)}
    return _HourlyWeather(
        direct_horizontal_w_m2=np.maximum(col["B"], 0.0),
        diffuse_horizontal_w_m2=np.maximum(col["D"], 0.0),
        temperature_c=col["t"],
        wind_m_s=col["WG"],
        latitude=deg_n + min_n / 60.0,
        longitude=deg_e + min_e / 60.0,
        altitude_m=float(alt),
        utc_offset_h=CET_UTC_OFFSET_H,
        site=site,
        source="dwd_try2010",
        irradiance_in_solar_time=True,
    )


@functools.lru_cache(maxsize=16)
def _try_weather_days(region: int, dt_s: float, n_days: int) -> Weather:
    return _weather_days(_read_try2010(region), dt_s, n_days)


def _extend(year: Weather, n_days: int) -> Weather:
    """The weather over n_days, repeating the (up to) 365 days computed."""
    n = n_days * round(DAY_S / year.dt_s)
    return Weather(
        ghi_w_m2=_cyclic(year.ghi_w_m2, n),
        dhi_w_m2=_cyclic(year.dhi_w_m2, n),
        dni_w_m2=_cyclic(year.dni_w_m2, n),
        temperature_c=_cyclic(year.temperature_c, n),
        wind_m_s=_cyclic(year.wind_m_s, n),
        latitude=year.latitude,
        longitude=year.longitude,
        altitude_m=year.altitude_m,
        utc_offset_h=year.utc_offset_h,
        dt_s=year.dt_s,
        site=year.site,
        source=year.source,
    )


def weather(*, region: int, n_days: int, dt_s: float) -> Weather:
    """Weather of a DWD TRY2010 climate region on the grid (local time: CET, UTC+1).

    Irradiance is spread over each hour following the sun: every hour keeps its direct
    and diffuse energy, except that clearness indices are capped in sunrise/sunset hours
    (< 0.02 % of the GHI lost) and DNI stays below a clear-sky bound (the excess, < 1.2 %
    of the beam energy, counts as diffuse). Temperature and wind are interpolated
    linearly between hourly values. The 365-day year repeats for longer runs.

    Args:
        region: TRY climate region 1..15 (1 Bremerhaven, 4 Potsdam, 12 Mannheim, ...).
        n_days: Whole days from 1 January 00:00 CET.
        dt_s: Grid step, s; must divide 900.

    Returns:
        The weather with read-only arrays of ``n_days * 86400 / dt_s`` samples.
    """
    region_int = _whole(region)
    if region_int is None or region_int not in TRY_REGIONS:
        raise ProfileError(f"region must be a DWD TRY2010 climate region 1..15, got {region!r}")
    region, n_days = region_int, _checked_n_days(n_days)
    _samples_per_block(dt_s)
    days = min(n_days, WEATHER_YEAR_DAYS)
    return _extend(_try_weather_days(region, float(dt_s), days), n_days)


def _read_tmy3() -> _HourlyWeather:
    """pvlib's bundled TMY3 file (Greensboro, NC): hour-ending means in local standard time."""
    import pvlib

    path = Path(pvlib.__file__).parent / "data" / "723170TYA.CSV"
    data, meta = pvlib.iotools.read_tmy3(
        str(path), coerce_year=_REFERENCE_WEATHER_YEAR, map_variables=True
    )
    ghi = np.asarray(data["ghi"].to_numpy(), dtype=np.float64)
    dhi = np.asarray(data["dhi"].to_numpy(), dtype=np.float64)
    return _HourlyWeather(
        direct_horizontal_w_m2=np.maximum(ghi - dhi, 0.0),
        diffuse_horizontal_w_m2=np.maximum(dhi, 0.0),
        temperature_c=np.asarray(data["temp_air"].to_numpy(), dtype=np.float64),
        wind_m_s=np.asarray(data["wind_speed"].to_numpy(), dtype=np.float64),
        latitude=float(meta["latitude"]),
        longitude=float(meta["longitude"]),
        altitude_m=float(meta["altitude"]),
        utc_offset_h=float(meta["TZ"]),
        site=str(meta["Name"]).strip('"'),
        source="tmy3",
        irradiance_in_solar_time=False,
    )


@functools.lru_cache(maxsize=4)
def _tmy3_weather_days(dt_s: float, n_days: int) -> Weather:
    return _weather_days(_read_tmy3(), dt_s, n_days)


def weather_tmy3(*, n_days: int, dt_s: float) -> Weather:
    """Weather from pvlib's bundled TMY3 file (Greensboro, NC; local time UTC-5).

    Same grid and interpolation as :func:`weather`; ``source == "tmy3"``.
    """
    n_days = _checked_n_days(n_days)
    _samples_per_block(dt_s)
    days = min(n_days, WEATHER_YEAR_DAYS)
    return _extend(_tmy3_weather_days(float(dt_s), days), n_days)


# ------------------------------------------------------------------------------ PV


def _pv_chunk(
    w: Weather,
    sl: slice,
    sun: _Sun,
    *,
    peak_w: float,
    tilt_deg: float,
    azimuth_deg: float,
    system_losses_pct: float,
) -> FloatArray:
    import pvlib

    m = sl.stop - sl.start
    zenith, azimuth = sun.zenith_deg[:m], sun.azimuth_deg[:m]
    dni, ghi, dhi = w.dni_w_m2[sl], w.ghi_w_m2[sl], w.dhi_w_m2[sl]
    poa: dict[str, Any] = pvlib.irradiance.get_total_irradiance(
        tilt_deg,
        azimuth_deg,
        zenith,
        azimuth,
        dni,
        ghi,
        dhi,
        dni_extra=sun.dni_extra_w_m2[:m],
        albedo=_ALBEDO,
        model="haydavies",
    )
    aoi = pvlib.irradiance.aoi(tilt_deg, azimuth_deg, zenith, azimuth)
    effective = poa["poa_direct"] * pvlib.iam.physical(aoi) + poa["poa_diffuse"]
    effective = np.maximum(np.nan_to_num(effective), 0.0)
    params = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"][_CELL_TEMPERATURE_MODEL]
    cell_c = pvlib.temperature.sapm_cell(effective, w.temperature_c[sl], w.wind_m_s[sl], **params)
    dc_w = pvlib.pvsystem.pvwatts_dc(effective, cell_c, peak_w, _GAMMA_PDC_PER_K)
    dc_w = dc_w * (1.0 - system_losses_pct / 100.0)
    ac_w = pvlib.inverter.pvwatts(
        dc_w, peak_w / _DC_AC_RATIO / _INVERTER_ETA_NOM, eta_inv_nom=_INVERTER_ETA_NOM
    )
    return np.asarray(np.maximum(ac_w, 0.0), dtype=np.float64)


def _same_weather(w: Weather, sl: slice) -> bool:
    """True if the samples in sl repeat the first ones (a typical year repeated)."""
    m = sl.stop - sl.start
    return all(
        np.array_equal(a[sl], a[:m])
        for a in (w.ghi_w_m2, w.dhi_w_m2, w.dni_w_m2, w.temperature_c, w.wind_m_s)
    )


def pv_power_w(
    *,
    weather: Weather,
    peak_kw: float,
    tilt_deg: float,
    azimuth_deg: float,
    system_losses_pct: float = 14.0,
    dt_s: float,
) -> FloatArray:
    """AC power of a fixed PV array, W (>= 0), on the weather's grid.

    Model chain (pvlib): apparent sun position (ephemeris) for the site in the weather's
    local standard time; plane-of-array irradiance by Hay-Davies transposition (albedo
    0.2) with the physical incidence-angle modifier on the beam; SAPM cell temperature
    (open rack, glass/polymer); PVWatts DC (gamma -0.4 %/K) derated by
    ``system_losses_pct`` (PVWatts' 14 %: soiling, shading, mismatch, wiring, ...);
    PVWatts inverter (96 % nominal, DC/AC ratio 1.1).

    Args:
        weather: From :func:`weather` or :func:`weather_tmy3`.
        peak_kw: DC peak power at STC, kWp (> 0).
        tilt_deg: Module tilt from horizontal, 0..90 deg.
        azimuth_deg: Direction the modules face, deg clockwise from north (180 = south).
        system_losses_pct: DC system losses, % (0..100).
        dt_s: Grid step, s; must equal ``weather.dt_s``.

    Returns:
        Read-only array of AC powers, one per weather sample, W.
    """
    if not (math.isfinite(peak_kw) and peak_kw > 0):
        raise ProfileError(f"peak_kw must be > 0, got {peak_kw!r}")
    if not 0.0 <= tilt_deg <= 90.0:
        raise ProfileError(f"tilt_deg must be within 0..90, got {tilt_deg!r}")
    if not (math.isfinite(azimuth_deg) and 0.0 <= azimuth_deg <= 360.0):
        raise ProfileError(f"azimuth_deg must be within 0..360 (180 = south), got {azimuth_deg!r}")
    if not 0.0 <= system_losses_pct < 100.0:
        raise ProfileError(f"system_losses_pct must be within 0..100, got {system_losses_pct!r}")
    _samples_per_block(dt_s)
    if dt_s != weather.dt_s:
        raise ProfileError(
            f"dt_s={dt_s!r} but the weather was built with dt_s={weather.dt_s!r}; "
            "build both on the same grid"
        )
    n = weather.ghi_w_m2.size
    per_day = 96 * _samples_per_block(dt_s)
    year = WEATHER_YEAR_DAYS * per_day
    sun = _sun(
        weather.latitude,
        weather.longitude,
        weather.altitude_m,
        weather.utc_offset_h,
        float(dt_s),
        min(WEATHER_YEAR_DAYS, -(-n // per_day)),
    )
    out = np.empty(n, dtype=np.float64)
    first: FloatArray | None = None
    for start in range(0, n, year):
        sl = slice(start, min(start + year, n))
        if first is not None and _same_weather(weather, sl):
            out[sl] = first[: sl.stop - sl.start]
            continue
        chunk = _pv_chunk(
            weather,
            sl,
            sun,
            peak_w=1000.0 * peak_kw,
            tilt_deg=tilt_deg,
            azimuth_deg=azimuth_deg,
            system_losses_pct=system_losses_pct,
        )
        if first is None:
            first = chunk
        out[sl] = chunk
    return _read_only(out)


# ---------------------------------------------------------------------- EV arrivals


def ev_arrival_rate_per_h(profile: str = "fast_charging_hub") -> FloatArray:
    """Mean EV arrivals per charging point for each hour of the day (24 values, 1/h).

    ``"fast_charging_hub"``: a public DC hub, 6 sessions per charging point a day,
    few arrivals at night, a late-morning and a larger late-afternoon peak. Multiply
    by the number of charging points for a site; use as the rate of a Poisson process.

    Raises:
        ProfileError: For an unknown profile name.
    """
    if profile != "fast_charging_hub":
        raise ProfileError(
            f"unknown EV arrival profile {profile!r}; known: {', '.join(EV_ARRIVAL_PROFILES)}"
        )
    shape = np.asarray(_HUB_SHAPE, dtype=np.float64)
    return _read_only(shape * (_HUB_SESSIONS_PER_DAY / shape.sum()))
