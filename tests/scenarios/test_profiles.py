"""Tests for scenarios.profiles: load energy, weather interpolation, PV yield, EV arrivals."""

from __future__ import annotations

import numpy as np
import pytest

from scenarios import profiles
from scenarios.profiles import (
    ProfileError,
    ev_arrival_rate_per_h,
    household_load_w,
    pv_power_w,
    weather,
    weather_tmy3,
)

DAY_S = 86_400.0


def _block_means(x: np.ndarray, n: int) -> np.ndarray:
    return x.reshape(-1, n).mean(axis=1)


def _annual_kwh(power_w: np.ndarray, dt_s: float) -> float:
    return float(power_w.sum() * dt_s / 3.6e6)


# ------------------------------------------------------------------ household load


@pytest.mark.parametrize(("year", "days"), [(2025, 365), (2024, 366)])
def test_load_sums_to_the_annual_energy(year: int, days: int) -> None:
    load = household_load_w(annual_kwh=3500.0, dt_s=60.0, n_days=days, seed=3, year=year)
    assert load.shape == (days * 1440,)
    assert _annual_kwh(load, 60.0) == pytest.approx(3500.0, rel=0.005)
    assert load.min() >= 0.0


def test_variability_keeps_every_15_min_energy() -> None:
    slp = household_load_w(annual_kwh=4000.0, dt_s=900.0, n_days=365, seed=0)
    fine = household_load_w(annual_kwh=4000.0, dt_s=60.0, n_days=365, seed=0)
    np.testing.assert_allclose(_block_means(fine, 15), slp, rtol=1e-9)
    # ... and actually fluctuates within the blocks, with appliance peaks on top.
    within = fine.reshape(-1, 15) / slp[:, None]
    assert np.median(within.std(axis=1)) > 0.15
    assert fine.max() > 2.0 * slp.max()


def test_load_follows_the_h25_day_shape() -> None:
    slp = household_load_w(annual_kwh=4000.0, dt_s=900.0, n_days=365, seed=0)
    by_hour = slp.reshape(365, 24, 4).mean(axis=(0, 2))
    assert by_hour[3] < 0.6 * by_hour[19]  # night trough, evening peak
    assert by_hour.argmax() in range(11, 21)


def test_load_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=3, seed=7).copy()
    profiles._load_chunk_w.cache_clear()  # recompute, not just hit the cache
    again = household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=3, seed=7)
    other = household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=3, seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    np.testing.assert_allclose(_block_means(first, 15), _block_means(other, 15), rtol=1e-9)


def test_a_shorter_run_is_a_prefix_of_a_longer_one() -> None:
    short = household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=2, seed=4)
    long = household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=30, seed=4)
    np.testing.assert_array_equal(short, long[: short.size])
    w_short = weather(region=9, n_days=2, dt_s=60.0)
    w_long = weather(region=9, n_days=30, dt_s=60.0)
    for name in ("ghi_w_m2", "dhi_w_m2", "dni_w_m2", "temperature_c", "wind_m_s"):
        part = getattr(w_short, name)
        np.testing.assert_array_equal(part, getattr(w_long, name)[: part.size])


def test_later_years_repeat_the_calendar_with_fresh_noise() -> None:
    load = household_load_w(annual_kwh=3000.0, dt_s=300.0, n_days=365 + 10, seed=1)
    assert load.shape == ((365 + 10) * 288,)
    year1, year2 = load[: 10 * 288], load[365 * 288 :]
    np.testing.assert_allclose(_block_means(year2, 3), _block_means(year1, 3), rtol=1e-9)
    assert not np.allclose(year1, year2)


@pytest.mark.parametrize("dt_s", [1.0, 10.0, 60.0, 450.0, 900.0])
def test_length_follows_dt_and_days(dt_s: float) -> None:
    load = household_load_w(annual_kwh=3000.0, dt_s=dt_s, n_days=2, seed=0)
    assert load.shape == (round(2 * DAY_S / dt_s),)


@pytest.mark.parametrize("dt_s", [7.0, 1000.0, 0.0, -60.0, float("nan")])
def test_dt_that_does_not_divide_15_min_is_refused(dt_s: float) -> None:
    with pytest.raises(ProfileError, match="dt_s"):
        household_load_w(annual_kwh=3000.0, dt_s=dt_s, n_days=1, seed=0)
    with pytest.raises(ProfileError, match="dt_s"):
        weather(region=4, n_days=1, dt_s=dt_s)


def test_bad_load_arguments_are_refused() -> None:
    with pytest.raises(ProfileError, match="annual_kwh"):
        household_load_w(annual_kwh=-1.0, dt_s=60.0, n_days=1, seed=0)
    with pytest.raises(ProfileError, match="n_days"):
        household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=0, seed=0)
    with pytest.raises(ProfileError, match="seed"):
        household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=1, seed=-1)


def test_cached_arrays_are_read_only_and_stay_intact() -> None:
    load = household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=2, seed=0)
    reference = load.copy()
    with pytest.raises(ValueError, match="read-only"):
        load[0] = 1e9
    w = weather(region=4, n_days=2, dt_s=900.0)
    with pytest.raises(ValueError, match="read-only"):
        w.ghi_w_m2[:] = 0.0
    mine = load.copy()  # the documented way to get a writable array
    mine[:] = 0.0
    np.testing.assert_array_equal(
        household_load_w(annual_kwh=3000.0, dt_s=60.0, n_days=2, seed=0), reference
    )
    assert weather(region=4, n_days=2, dt_s=900.0).ghi_w_m2.max() > 0.0


# ------------------------------------------------------------------------- weather


def test_weather_keeps_the_hourly_irradiance_energy() -> None:
    hourly = profiles._read_try2010(4)
    w = weather(region=4, n_days=365, dt_s=300.0)
    sun_cos = profiles._sun(w.latitude, w.longitude, w.altitude_m, 1.0, 300.0, 365).cos_zenith
    assert (w.latitude, w.longitude) == pytest.approx((52 + 23 / 60, 13 + 4 / 60))
    assert w.site == "Potsdam" and w.utc_offset_h == 1.0
    direct_kwh = hourly.direct_horizontal_w_m2.sum() / 1000
    diffuse_kwh = hourly.diffuse_horizontal_w_m2.sum() / 1000
    assert 1000 < direct_kwh + diffuse_kwh < 1150  # kWh/m2/yr, Potsdam
    assert _annual_kwh(w.dhi_w_m2, 300.0) == pytest.approx(diffuse_kwh, rel=0.005)
    assert _annual_kwh(w.ghi_w_m2, 300.0) == pytest.approx(direct_kwh + diffuse_kwh, rel=0.005)
    assert np.all(w.ghi_w_m2 >= w.dhi_w_m2) and w.dni_w_m2.min() >= 0.0
    assert w.dni_w_m2.max() < 1050.0
    np.testing.assert_allclose(w.ghi_w_m2 - w.dhi_w_m2, w.dni_w_m2 * sun_cos, atol=1e-9)


def test_weather_temperature_and_wind_interpolate_the_hourly_values() -> None:
    hourly = profiles._read_try2010(12)
    w = weather(region=12, n_days=365, dt_s=900.0)
    # Sample k covers [k*900, (k+1)*900) s, so its midpoint is 7.5 min after the hour
    # for k = 4h: between the values labelled h and h+1, weighted 7/8 and 1/8.
    t = hourly.temperature_c
    expected = 0.875 * t[:-1] + 0.125 * t[1:]  # sample at 01:07:30 onwards
    np.testing.assert_allclose(w.temperature_c[4::4][: t.size - 1], expected, atol=1e-9)
    assert w.temperature_c.mean() == pytest.approx(t.mean(), abs=0.05)
    assert w.wind_m_s.mean() == pytest.approx(hourly.wind_m_s.mean(), abs=0.05)


def test_weather_repeats_the_year_and_has_whole_days() -> None:
    w = weather(region=1, n_days=400, dt_s=900.0)
    assert w.ghi_w_m2.shape == w.temperature_c.shape == (400 * 96,)
    np.testing.assert_array_equal(w.ghi_w_m2[365 * 96 :], w.ghi_w_m2[: 35 * 96])
    np.testing.assert_array_equal(w.temperature_c[365 * 96 :], w.temperature_c[: 35 * 96])


@pytest.mark.parametrize("region", [0, 16, -1, True])
def test_unknown_region_names_the_allowed_range(region: int) -> None:
    with pytest.raises(ProfileError, match=r"1\.\.15"):
        weather(region=region, n_days=1, dt_s=900.0)


def test_tmy3_source() -> None:
    w = weather_tmy3(n_days=365, dt_s=900.0)
    assert w.source == "tmy3" and w.utc_offset_h == -5.0
    assert w.latitude == pytest.approx(36.1)
    assert 1500 < _annual_kwh(w.ghi_w_m2, 900.0) < 1650  # kWh/m2/yr, North Carolina
    pv = pv_power_w(weather=w, peak_kw=1.0, tilt_deg=30.0, azimuth_deg=180.0, dt_s=900.0)
    assert 1200 < _annual_kwh(pv, 900.0) < 1550


# ------------------------------------------------------------------------------ PV


@pytest.mark.parametrize("region", [4, 12])
def test_pv_yield_per_kwp_is_plausible_for_germany(region: int) -> None:
    w = weather(region=region, n_days=365, dt_s=60.0)
    pv = pv_power_w(weather=w, peak_kw=1.0, tilt_deg=30.0, azimuth_deg=180.0, dt_s=60.0)
    assert 850 < _annual_kwh(pv, 60.0) < 1100  # kWh/kWp/yr
    assert pv.min() >= 0.0 and pv.max() < 1000.0


def test_pv_is_zero_at_night_and_centred_on_solar_noon() -> None:
    import pvlib

    w = weather(region=12, n_days=365, dt_s=300.0)
    pv = pv_power_w(weather=w, peak_kw=5.0, tilt_deg=30.0, azimuth_deg=180.0, dt_s=300.0)
    by_day = pv.reshape(365, 288)
    hour = (np.arange(288) + 0.5) / 12
    assert np.all(by_day[:, (hour < 3) | (hour > 22)] == 0.0)
    assert np.all(by_day[:, (hour > 18) & (hour < 19)][:31] == 0.0)  # January evenings
    # Energy-weighted time of day per day vs solar noon in CET (UTC+1 -> meridian 15 E).
    # Reading the TRY irradiance as hours of CET instead of true solar time puts this
    # 0.4 h early at Mannheim (8.55 E).
    eot_h = pvlib.solarposition.equation_of_time_spencer71(np.arange(1, 366)) / 60
    noon_cet = 12.0 + (15.0 - w.longitude) / 15.0 - eot_h
    energy = by_day.sum(axis=1)
    centroid = (by_day * hour).sum(axis=1) / energy
    assert np.average(centroid - noon_cet, weights=energy) == pytest.approx(0.0, abs=0.1)


def test_pv_orientation_and_losses() -> None:
    w = weather(region=12, n_days=365, dt_s=900.0)

    def kwh(**kw: float) -> float:
        args = {"tilt_deg": 30.0, "azimuth_deg": 180.0, **kw}
        return _annual_kwh(pv_power_w(weather=w, peak_kw=1.0, dt_s=900.0, **args), 900.0)

    south, north = kwh(), kwh(azimuth_deg=0.0)
    east, west, flat = kwh(azimuth_deg=90.0), kwh(azimuth_deg=270.0), kwh(tilt_deg=0.0)
    assert north < 0.75 * south
    assert north < east < south and north < west < south
    assert flat < south
    # Losses derate the DC power (the inverter curve makes it not exactly linear).
    assert kwh(system_losses_pct=0.0) * 0.86 == pytest.approx(south, rel=0.02)


def test_pv_over_many_years_repeats_the_first() -> None:
    one = weather(region=4, n_days=365, dt_s=900.0)
    three = weather(region=4, n_days=3 * 365 + 2, dt_s=900.0)
    args = {"peak_kw": 2.0, "tilt_deg": 35.0, "azimuth_deg": 200.0, "dt_s": 900.0}
    pv1 = pv_power_w(weather=one, **args)
    pv3 = pv_power_w(weather=three, **args)
    assert pv3.shape == ((3 * 365 + 2) * 96,)
    np.testing.assert_array_equal(pv3[: pv1.size], pv1)
    np.testing.assert_array_equal(pv3[2 * pv1.size : 3 * pv1.size], pv1)
    np.testing.assert_array_equal(pv3[3 * pv1.size :], pv1[: 2 * 96])


def test_pv_refuses_bad_arguments() -> None:
    w = weather(region=4, n_days=1, dt_s=900.0)
    with pytest.raises(ProfileError, match="same grid"):
        pv_power_w(weather=w, peak_kw=1.0, tilt_deg=30.0, azimuth_deg=180.0, dt_s=60.0)
    with pytest.raises(ProfileError, match="peak_kw"):
        pv_power_w(weather=w, peak_kw=0.0, tilt_deg=30.0, azimuth_deg=180.0, dt_s=900.0)
    with pytest.raises(ProfileError, match="tilt_deg"):
        pv_power_w(weather=w, peak_kw=1.0, tilt_deg=95.0, azimuth_deg=180.0, dt_s=900.0)


# ---------------------------------------------------------------------- EV arrivals


def test_fast_charging_hub_arrivals() -> None:
    rate = ev_arrival_rate_per_h()
    assert rate.shape == (24,)
    assert rate.sum() == pytest.approx(6.0)  # sessions per charging point per day
    assert rate[2:5].max() < 0.3 * rate.max()  # quiet at night
    assert rate[10:13].max() > 2 * rate[3] and rate.argmax() in range(15, 19)
    with pytest.raises(ValueError, match="read-only"):
        rate[0] = 1.0
    with pytest.raises(ProfileError, match="fast_charging_hub"):
        ev_arrival_rate_per_h("motorway")


def test_numpy_integers_are_accepted() -> None:
    w = weather(region=np.int64(4), n_days=np.int64(1), dt_s=np.float64(900.0))
    assert w.ghi_w_m2.shape == (96,)
    load = household_load_w(annual_kwh=3000.0, dt_s=900.0, n_days=np.int32(1), seed=np.int64(0))
    assert load.shape == (96,)
