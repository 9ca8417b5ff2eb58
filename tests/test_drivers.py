"""The sensor drivers (ads1x15, hx711, mcu_adc) against the simulated buses
of firmware/sim/simbus.py, in the real MicroPython interpreter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import ROOT, MicroPython

FSR = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256)
RATES = {
    "ads1115": (8, 16, 32, 64, 128, 250, 475, 860),
    "ads1015": (128, 250, 490, 920, 1600, 2400, 3300, 3300),
}
BITS = {"ads1115": 16, "ads1015": 12}
# input index -> (positive AIN, negative AIN or None for GND)
PAIRS = [(0, None), (1, None), (2, None), (3, None), (0, 1), (0, 3), (1, 3), (2, 3)]
ERR_BUS, ERR_TIMEOUT, ERR_ARG, ERR_NOT_READY = 1, 2, 3, 4


@pytest.fixture(scope="module")
def mp() -> Iterator[MicroPython]:
    m = MicroPython(ROOT / "tests" / "mpy" / "drivers_server.py")
    yield m
    m.close()


def expected_counts(kind: str, gain: int, volts: float) -> float:
    half = 1 << (BITS[kind] - 1)
    return max(-half, min(half - 1, volts / FSR[gain] * half))


def pair_volts(volts: list[float], inp: int) -> float:
    p, n = PAIRS[inp]
    return volts[p] - (volts[n] if n is not None else 0.0)


@pytest.mark.parametrize("kind", ["ads1115", "ads1015"])
@pytest.mark.parametrize("gain", range(6), ids=[f"{v}V" for v in FSR])
@pytest.mark.parametrize("rate", range(8))
def test_ads_single_shot_every_gain_rate_input(mp, kind, gain, rate):
    fs = FSR[gain]
    # Fractions of full scale chosen off the code grid; the differential
    # pairs then span negative and positive values.
    volts = [0.6113 * fs, 0.2347 * fs, 0.3791 * fs, 0.8929 * fs]
    got = mp(op="ads_sweep", kind=kind, gain=gain, rate=rate, volts=volts)
    sps = RATES[kind][rate]
    assert got["conversion_ms"] == -(-1000 // sps)
    assert got["conversions"] == 8
    lsb = fs / (1 << (BITS[kind] - 1))
    for r in got["results"]:
        v = pair_volts(volts, r["input"])
        assert r["started"] and r["error"] == 0
        # Not ready before 1/DR has passed, ready after: the OS bit is polled.
        assert r["ready_early"] is False
        assert r["ready_late"] is True
        assert abs(r["counts"] - expected_counts(kind, gain, v)) <= 1, r
        assert abs(r["uv"] / 1e6 - v) <= lsb, r
        assert abs(r["volts"] - v) <= lsb, r


@pytest.mark.parametrize("kind", ["ads1115", "ads1015"])
@pytest.mark.parametrize("gain", [0, 1, 5])
def test_ads_clips_at_full_scale(mp, kind, gain):
    fs = FSR[gain]
    volts = [1.3 * fs, -0.2 * fs, 0.0, 0.0]
    got = mp(op="ads_sweep", kind=kind, gain=gain, rate=4, volts=volts)
    top = (1 << (BITS[kind] - 1)) - 1
    by_input = {r["input"]: r["counts"] for r in got["results"]}
    assert by_input[0] == top  # AIN0 above +FSR
    assert by_input[4] == top  # AIN0 - AIN1 = 1.5 FSR
    assert by_input[1] == round(-0.2 * (top + 1))  # within range, negative


@pytest.mark.parametrize("kind", ["ads1115", "ads1015"])
def test_ads_continuous_mode_follows_the_input(mp, kind):
    volts = [0.10, 0.55, 1.20, 2.05, 0.35]
    got = mp(op="ads_continuous", kind=kind, gain=1, rate=4, input=2, volts=volts, step_ms=20)
    assert got["started"]
    lsb = 4.096 / (1 << (BITS[kind] - 1))
    for v, step in zip(volts, got["steps"], strict=True):
        # Right after a read no new result exists; one period later one does.
        assert step["ready_at_0"] is False
        assert step["ready"] is True
        assert abs(step["counts"] * lsb - v) <= lsb
    # One start, then only conversion-register reads: no writes per sample.
    assert got["transfers"] == len(volts)
    assert got["conversions"] >= len(volts)
    assert got["stopped"]
    assert abs(got["single"] * lsb - volts[0]) <= lsb


def test_ads_missing_device_and_bus_errors_set_error_codes(mp):
    got = mp(op="ads_missing")
    # Nothing at the address: every call returns, with ENODEV recorded.
    assert got["absent_start"] is False
    assert got["absent_error"] == ERR_BUS
    assert got["absent_errno"] == 19
    assert got["absent_ready"] is False
    assert got["absent_read"] == 0
    assert got["absent_blocking"] is None
    assert got["absent_scan"] == [0x48]
    # A working chip reads 1.0 V at 4.096 V full scale: 8000 counts.
    assert got["present"] == 8000 and got["present_error"] == 0
    # The chip stops answering, then comes back: the error clears.
    assert got["gone"] is None and got["gone_error"] == ERR_BUS and got["gone_errno"] == 19
    assert got["back"] == 8000 and got["back_error"] == 0
    # SDA held low: EIO on every transfer.
    assert got["stuck_bus_start"] is False and got["stuck_bus_errno"] == 5
    # A chip that never finishes: the blocking read gives up at its time-out.
    assert got["hung"] is None and got["hung_error"] == ERR_TIMEOUT
    assert 50 <= got["hung_waited_ms"] <= 52
    assert got["bad_input_start"] is False and got["bad_input_error"] == ERR_ARG


def test_ads_configuration_errors_are_clear(mp):
    got = mp(op="ads_bad_config")
    assert "gain index 6" in got["gain"]
    assert "rate index 8" in got["rate"]
    assert "5.0 V" in got["fsr"] and "4.096" in got["fsr"]
    assert "100 SPS" in got["sps"] and "860" in got["sps"]
    assert "ads1234" in got["kind"]


def hx_counts(mv_per_v: float, gain: int) -> int:
    return max(-(1 << 23), min((1 << 23) - 1, round(mv_per_v * gain / 500 * (1 << 23))))


@pytest.mark.parametrize(("mv_a", "mv_b"), [(1.0, -2.0), (-1.5, 0.75), (0.0123, -0.0456)])
def test_hx711_reads_signed_counts_at_each_gain(mp, mv_a, mv_b):
    got = mp(op="hx_read", gains=[128, 64, 32, 128], mv=mv_a, mv_b=mv_b, reads=2)
    reads = got["reads"]
    assert len(reads) == 8 and got["power_downs"] == 0
    # First result after the power-up settling time (4 periods at 10 SPS).
    assert reads[0]["waited_ms"] == 400
    prev = 128
    for i, r in enumerate(reads):
        # The pulses of a read set the gain of the *next* conversion: the
        # first read after set_gain still carries the previous gain.
        want_gain = prev if i % 2 == 0 else r["gain"]
        assert r["data_gain"] == want_gain, r
        mv = mv_b if want_gain == 32 else mv_a
        assert r["value"] == hx_counts(mv, want_gain), r
        prev = r["gain"]


@pytest.mark.parametrize(("mv", "counts"), [(5.0, (1 << 23) - 1), (-5.0, -(1 << 23))])
def test_hx711_saturates_at_its_rails(mp, mv, counts):
    got = mp(op="hx_read", gains=[128], mv=mv, reads=1)
    assert got["reads"][0]["value"] == counts


def test_hx711_times_out_when_never_ready(mp):
    got = mp(op="hx_timeout", timeout_ms=300)
    assert got["value"] is None
    assert got["error"] == ERR_TIMEOUT
    assert 300 <= got["waited_ms"] <= 302
    # read() without a waiting conversion clocks nothing and says so.
    assert got["direct"] is None and got["direct_error"] == ERR_NOT_READY
    assert got["ready"] is False


@pytest.mark.parametrize("rate", [10, 80])
def test_hx711_power_down_and_up(mp, rate):
    got = mp(op="hx_power", rate=rate)
    assert got["gain_before"] == 64
    assert got["first"] == hx_counts(1.0, 64)
    # SCK high: the chip sleeps once 60 us have passed, not before.
    assert got["powered_at_0"] is True
    assert got["powered_after_1ms"] is False
    assert got["ready_while_down"] is False and got["ready_after_5s_down"] is False
    # SCK low: reset to A/128, first result after 4 periods of settling.
    assert got["powered_up"] is True and got["gain_after"] == 128
    assert got["settle_ms"] == 4 * 1000 // rate
    assert got["after_data_gain"] == 128
    assert got["after_value"] == hx_counts(1.0, 128)
    assert got["power_downs"] == 1


def test_hx711_read_keeps_sck_high_briefly(mp):
    # Each pin access costing 5 us of chip time: a read never holds SCK high
    # near the 60 us power-down threshold.
    got = mp(op="hx_sck_high", us_per_access=5, reads=5)
    assert got["power_downs"] == 0 and got["reads"] == 5
    assert got["values"] == [hx_counts(-0.7, 128)] * 5


def test_hx711_model_notices_a_slow_clock(mp):
    # The model's side of the same check: 70 us per access powers it down.
    got = mp(op="hx_sck_high", us_per_access=70, reads=2)
    assert got["power_downs"] > 0


def test_mcu_adc_averages_and_scales(mp):
    got = mp(op="mcu_read", values=[1000, 1001, 1002, 1003], vref=3.3, samples=4)
    assert got["reads"] == 4 and got["error"] == 0
    assert got["counts"] == 1001  # floor of the mean 1001.5
    assert got["uv"] == int(1001 * 3.3e6 / 65536)
    top = mp(op="mcu_read", values=[65535], vref=3.0, samples=16)
    assert top["counts"] == 65535
    assert top["uv"] == int(65535 * 3.0e6 / 65536)


def test_mcu_adc_errors(mp):
    got = mp(op="mcu_errors")
    assert got["counts"] == 0 and got["error"] == ERR_BUS and got["errno"] == 5
    assert "5.0 V" in got["vref"]
    assert "samples 0" in got["samples"]


def test_simbus_i2c_behaves_like_machine_i2c(mp):
    got = mp(op="simbus_i2c")
    assert got["scan"] == [0x48]
    # writeto sets the pointer (and writes); readfrom_into reads from it.
    assert got["config_busy"] == 0x4383  # OS = 0 while converting
    assert got["config_idle"] == 0xC383
    assert got["missing"] == 19  # ENODEV
    assert got["absent"] == 5  # a bus configured to report EIO
    assert got["transfers"] == 4
    assert got["bus_us"] > 0
