"""Tests for twin.sensors: error statistics, quantisation, sample-and-hold, saturation."""

from __future__ import annotations

import numpy as np
import pytest

from twin.errors import TwinInputError
from twin.sensors import ChannelSpec, Sensors, SensorSpec

IDEAL = ChannelSpec(sample_period_s=1.0)


def _sensors(
    *,
    voltage: ChannelSpec = IDEAL,
    current: ChannelSpec = IDEAL,
    temperature: ChannelSpec = IDEAL,
    n: int = 4,
    seed: int = 1,
) -> Sensors:
    spec = SensorSpec(voltage=voltage, current=current, temperature=temperature)
    return Sensors(spec, n_voltage=n, n_current=1, n_temperature=n, seed=seed)


def _collect_voltage(sensors: Sensors, truth: np.ndarray, n_reads: int) -> np.ndarray:
    out = np.empty((n_reads, truth.size))
    for k in range(n_reads):
        r = sensors.read(time_s=float(k), voltage_v=truth, current_a=0.0, temperature_c=25.0)
        out[k] = r.voltage_v
    return out


def test_ideal_channels_read_the_truth() -> None:
    sensors = _sensors()
    truth = np.array([3.1, 3.6, 3.7, 4.1])
    r = sensors.read(time_s=0.0, voltage_v=truth, current_a=12.5, temperature_c=[20, 21, 22, 23])
    np.testing.assert_array_equal(r.voltage_v, truth)
    np.testing.assert_array_equal(r.current_a, [12.5])
    np.testing.assert_array_equal(r.temperature_c, [20, 21, 22, 23])
    assert r.time_s == 0.0 and r.voltage_sampled_s == 0.0


def test_mean_error_is_the_offset_and_spread_is_the_noise() -> None:
    sensors = _sensors(voltage=ChannelSpec(noise_std=2e-3, offset=5e-3), n=200)
    truth = np.full(200, 3.7)
    err = _collect_voltage(sensors, truth, 50) - truth  # 10,000 samples
    # Standard error of the mean is 2e-5 V, of the std about 0.7 %.
    assert err.mean() == pytest.approx(5e-3, abs=1e-4)
    assert err.std() == pytest.approx(2e-3, rel=0.03)


def test_per_channel_offsets_are_fixed_and_drawn_from_the_spec() -> None:
    spec = ChannelSpec(noise_std=1e-3, offset_std=4e-3)
    sensors = _sensors(voltage=spec, n=400)
    offsets = sensors.voltage_offsets_v
    # The drawn offsets scatter with offset_std around zero ...
    assert offsets.std() == pytest.approx(4e-3, rel=0.12)
    assert abs(offsets.mean()) < 5 * 4e-3 / np.sqrt(400)
    # ... and each channel keeps its own: averaging 100 reads recovers it.
    truth = np.full(400, 3.3)
    err = _collect_voltage(sensors, truth, 100) - truth
    np.testing.assert_allclose(err.mean(axis=0), offsets, atol=5 * 1e-3 / np.sqrt(100))


def test_gain_error_scales_the_reading() -> None:
    sensors = _sensors(current=ChannelSpec(gain_error=0.01, offset=-0.2))
    r = sensors.read(time_s=0.0, voltage_v=3.7, current_a=100.0, temperature_c=25.0)
    assert r.current_a[0] == pytest.approx(100.0 * 1.01 - 0.2)
    np.testing.assert_allclose(sensors.current_gains, [1.01])


def test_quantisation_puts_readings_on_the_lsb_grid() -> None:
    lsb = 1e-3
    sensors = _sensors(voltage=ChannelSpec(noise_std=0.7e-3, offset=0.3e-3, lsb=lsb), n=300)
    truth = np.linspace(3.0, 4.0, 300)
    readings = _collect_voltage(sensors, truth, 20)
    steps = readings / lsb
    np.testing.assert_allclose(steps, np.round(steps), rtol=0, atol=1e-6)
    # Quantisation adds lsb^2 / 12 of variance to the noise and no bias.
    err = readings - truth
    assert err.mean() == pytest.approx(0.3e-3, abs=5e-5)
    assert err.std() == pytest.approx(np.hypot(0.7e-3, lsb / np.sqrt(12)), rel=0.04)


def test_sample_and_hold_between_samples() -> None:
    sensors = _sensors(temperature=ChannelSpec(noise_std=0.5, sample_period_s=1.0))
    reads = []
    for k in range(9):  # every 0.25 s
        t = 0.25 * k
        reads.append(sensors.read(time_s=t, voltage_v=3.7, current_a=0.0, temperature_c=25.0 + t))
    temps = np.array([r.temperature_c for r in reads])
    # Samples at 0, 1 and 2 s; each is held for the three reads that follow it.
    for start in (0, 4):
        for k in range(start + 1, start + 4):
            np.testing.assert_array_equal(temps[k], temps[start])
            assert reads[k].temperature_sampled_s == reads[start].time_s
    assert not np.array_equal(temps[4], temps[0])
    assert not np.array_equal(temps[8], temps[4])
    assert reads[8].temperature_sampled_s == 2.0
    # The truth moved by 1 degC per sample; the held value follows it, not the noise alone.
    assert np.mean(temps[8] - temps[0]) == pytest.approx(2.0, abs=1.5)
    # Ideal voltage channels with the same 1 s period also hold.
    assert reads[3].voltage_sampled_s == 0.0


def test_reads_slower_than_the_sample_period_always_sample() -> None:
    sensors = _sensors(voltage=ChannelSpec(sample_period_s=0.1))
    for k, v in enumerate((3.5, 3.6, 3.7)):
        r = sensors.read(time_s=float(k), voltage_v=v, current_a=0.0, temperature_c=25.0)
        np.testing.assert_array_equal(r.voltage_v, v)


def test_saturation_clips_to_the_range_on_the_lsb_grid() -> None:
    spec = ChannelSpec(lsb=0.03, min_value=-100.0, max_value=100.0)
    sensors = _sensors(current=spec)
    high = sensors.read(time_s=0.0, voltage_v=3.7, current_a=250.0, temperature_c=25.0)
    low = sensors.read(time_s=1.0, voltage_v=3.7, current_a=-250.0, temperature_c=25.0)
    # 100 is not a multiple of 0.03: the reading stops at the last code inside the range.
    assert high.current_a[0] == pytest.approx(99.99)
    assert low.current_a[0] == pytest.approx(-99.99)
    inside = sensors.read(time_s=2.0, voltage_v=3.7, current_a=50.0, temperature_c=25.0)
    assert inside.current_a[0] == pytest.approx(50.01)


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    def run(seed: int) -> np.ndarray:
        sensors = Sensors(SensorSpec(), n_voltage=8, n_current=1, n_temperature=8, seed=seed)
        truth = np.full(8, 3.7)
        return np.array(
            [
                sensors.read(
                    time_s=0.5 * k, voltage_v=truth, current_a=10.0, temperature_c=25.0
                ).voltage_v
                for k in range(5)
            ]
        )

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_truth_arrays_are_not_modified() -> None:
    sensors = Sensors(SensorSpec(), n_voltage=3, n_current=1, n_temperature=3, seed=0)
    v = np.array([3.6, 3.7, 3.8])
    i = np.array([40.0])
    t = np.array([24.0, 25.0, 26.0])
    copies = (v.copy(), i.copy(), t.copy())
    r = sensors.read(time_s=0.0, voltage_v=v, current_a=i, temperature_c=t)
    for arr, copy in zip((v, i, t), copies, strict=True):
        np.testing.assert_array_equal(arr, copy)
    r.voltage_v[:] = 0.0  # the reading is the BMS's own copy
    again = sensors.read(time_s=0.01, voltage_v=v, current_a=i, temperature_c=t)
    assert np.all(again.voltage_v > 3.0)


def test_default_spec_is_realistic() -> None:
    spec = SensorSpec()
    assert spec.voltage.lsb == 1e-3 and 1e-3 <= spec.voltage.noise_std <= 2e-3
    assert spec.current.gain_error_std == 0.005 and spec.current.noise_std == 0.1
    assert spec.temperature.noise_std == 0.5 and spec.temperature.lsb == 0.1
    assert spec.temperature.sample_period_s == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"noise_std": -0.1}, "noise_std", "-0.1"),
        ({"offset_std": -1.0}, "offset_std", "-1.0"),
        ({"lsb": -0.001}, "lsb", "-0.001"),
        ({"sample_period_s": 0.0}, "sample_period_s", "0.0"),
        ({"sample_period_s": -1.0}, "sample_period_s", "-1.0"),
        ({"gain_error": -1.0}, "gain_error", "-1.0"),
        ({"offset": float("nan")}, "offset", "nan"),
        ({"min_value": 5.0, "max_value": 5.0}, "min_value", "5.0"),
        ({"min_value": 6.0, "max_value": 5.0}, "min_value", "6.0"),
    ],
)
def test_bad_spec_names_the_field_and_value(
    kwargs: dict[str, float], field: str, value: str
) -> None:
    with pytest.raises(TwinInputError, match=rf"ChannelSpec\.{field}.*{value}"):
        ChannelSpec(**kwargs)


def test_bad_channel_count_and_inputs() -> None:
    with pytest.raises(TwinInputError, match="n_temperature must be >= 1, got 0"):
        Sensors(SensorSpec(), n_voltage=2, n_temperature=0, seed=0)
    sensors = _sensors(n=2)
    with pytest.raises(TwinInputError, match="voltage_v must be a scalar or have shape"):
        sensors.read(time_s=0.0, voltage_v=[3.7, 3.7, 3.7], current_a=0.0, temperature_c=25.0)
    with pytest.raises(TwinInputError, match="temperature_c must be finite"):
        sensors.read(time_s=0.0, voltage_v=3.7, current_a=0.0, temperature_c=[25.0, np.nan])
    sensors.read(time_s=5.0, voltage_v=3.7, current_a=0.0, temperature_c=25.0)
    with pytest.raises(TwinInputError, match="not earlier than the previous read"):
        sensors.read(time_s=4.0, voltage_v=3.7, current_a=0.0, temperature_c=25.0)
