"""sensor.py: sensor.build() on hardware/boards/sim.json with a fake HAL made
of the simulated buses, in the real MicroPython interpreter: signal units,
round-robin sharing of the ADS1115, fault detection with persistence, no
allocation in poll()."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest

from isopress.protocol import wire

from conftest import ROOT, MicroPython

SIM = json.loads((ROOT / "hardware" / "boards" / "sim.json").read_text())
# The rig's fake signals carry no transducer noise, so the stuck band the
# reference profiles use (for noisy transducers) would call them stuck;
# test_stuck_band_catches_a_frozen_transducer covers the band.
for _c in SIM["channels"]:
    _c["sensor"].pop("stuck_band_counts", None)
SENSORS = {name: code for code, name in wire.SENSORS}
OK, MISSING, OPEN, RANGE, SATURATED, STUCK = range(6)
N = 3  # default bad_samples

# sim.json: ch1 ratiometric on AIN0 (divider 0.6), its supply on AIN3 (0.6);
# ch2 4-20 mA on AIN1 through 100 ohm; ch3, ch4 HX711 load cells, 2 mV/V
# at capacity, safe overload 150 % = 3 mV/V.
DIV = 0.6
HEALTHY = {"adc0": [2.5 * DIV, 0.012 * 100, 0.0, 5.0 * DIV]}
HEALTHY_MV = {"3": 1.0, "4": -0.5}


@pytest.fixture(scope="module")
def mp() -> Iterator[MicroPython]:
    m = MicroPython(ROOT / "tests" / "mpy" / "drivers_server.py")
    yield m
    m.close()


def setup(mp, profile=None, volts=None, mv=None, **kw) -> dict:
    return mp(
        op="sensor_setup",
        profile=profile or SIM,
        volts=volts or HEALTHY,
        mv=mv or HEALTHY_MV,
        **kw,
    )["sensors"]


def run(mp, ms: int, tick_ms: int = 1) -> dict:
    got = mp(op="sensor_run", ms=ms, tick_ms=tick_ms)
    assert got["raised"] is None, got["raised"]
    return got["channels"]


def profile_with(**changes) -> dict:
    # sim.json with sensor keys of some channels changed: {"ch1": {...}}
    p = copy.deepcopy(SIM)
    for c in p["channels"]:
        for k, v in changes.get(f"ch{c['channel']}", {}).items():
            if v is None:
                c["sensor"].pop(k, None)
            else:
                c["sensor"][k] = v
    return p


def test_build_gives_each_channel_its_kind_unit_and_period(mp):
    got = setup(mp)
    assert set(got) == {"1", "2", "3", "4"}
    assert got["1"]["kind"] == SENSORS["RATIOMETRIC_0_5_4_5V"] and got["1"]["unit"] == "ppm"
    assert got["2"]["kind"] == SENSORS["CURRENT_4_20MA"] and got["2"]["unit"] == "uA"
    assert got["3"]["kind"] == got["4"]["kind"] == SENSORS["LOAD_CELL"]
    assert got["3"]["unit"] == "nV/V"
    # Three ADS1115 slots (AIN3 supply, AIN0, AIN1) of 8 ms at 128 SPS.
    assert got["1"]["period_ms"] == got["2"]["period_ms"] == 24
    assert got["3"]["period_ms"] == 100
    assert all(s["bad_samples"] == N for s in got.values())


@pytest.mark.parametrize("supply_v", [4.5, 5.0, 5.5])
@pytest.mark.parametrize("fraction", [0.1, 0.37, 0.9])
def test_ratiometric_signal_is_ppm_of_the_measured_supply(mp, supply_v, fraction):
    volts = {"adc0": [fraction * supply_v * DIV, 1.2, 0.0, supply_v * DIV]}
    setup(mp, volts=volts, ads_noise=0.0)
    ch = run(mp, 300)["1"]
    assert ch["fault"] == OK
    # One ADS1115 code (125 uV at the ADC) is 1e6 * 125e-6 / (S * 0.6) ppm.
    tol = 1e6 * 125e-6 / (supply_v * DIV) * 1.5
    assert abs(ch["signal"] - fraction * 1e6) <= tol
    assert ch["raw"] == round(fraction * supply_v * DIV / 125e-6)


def test_ratiometric_without_a_supply_input_uses_the_nominal_supply(mp):
    p = profile_with(
        ch1={"supply_input": None, "supply_divider_ratio": None, "stuck_band_counts": None}
    )
    got = setup(mp, profile=p, volts={"adc0": [2.0 * DIV, 1.2, 0.0, 4.0 * DIV]}, ads_noise=0.0)
    assert got["1"]["period_ms"] == 16  # two slots now
    ch = run(mp, 300)["1"]
    assert abs(ch["signal"] - 400000) <= 40  # 2.0 V of the nominal 5 V


@pytest.mark.parametrize("ma", [4.0, 12.0, 20.0, 20.9])
def test_current_signal_is_microamps(mp, ma):
    setup(mp, volts={"adc0": [1.5, ma / 1000 * 100, 0.0, 3.0]}, ads_noise=0.0)
    ch = run(mp, 300)["2"]
    assert ch["fault"] == OK
    assert abs(ch["signal"] - ma * 1000) <= 2  # one code is 1.25 uA
    assert ch["raw"] == round(ma / 1000 * 100 / 125e-6)


@pytest.mark.parametrize("mv_per_v", [2.0, 0.25, -0.8, 0.0])
def test_load_cell_signal_is_signed_nv_per_v(mp, mv_per_v):
    setup(mp, mv={"3": mv_per_v, "4": -mv_per_v}, hx_noise=0)
    chans = run(mp, 1000)
    # 24 bits over +/-3.90625 mV/V: one count is 0.47 nV/V; the fixed-point
    # scale factor carries 17 bits (relative error under 8e-6).
    for ch, mv in (("3", mv_per_v), ("4", -mv_per_v)):
        assert chans[ch]["fault"] == OK
        assert abs(chans[ch]["signal"] - mv * 1e6) <= 2 + 8e-6 * abs(mv * 1e6)
        assert chans[ch]["raw"] == round(mv * 128 / 500 * (1 << 23))
        # 10 SPS, first result after 400 ms of settling: samples at 400..1000 ms.
        assert chans[ch]["good_polls"] == 7


def test_load_cell_at_gain_64_drops_the_reading_taken_at_128(mp):
    p = profile_with(ch3={"gain": 64})
    setup(mp, profile=p, hx_noise=0)
    chans = run(mp, 1000)
    # The first conversion after power-up is at A/128; it is not used.
    assert chans["3"]["good_polls"] == 6
    assert chans["3"]["raw"] == round(1.0 * 64 / 500 * (1 << 23))
    assert abs(chans["3"]["signal"] - 1_000_000) <= 2 + 8


@pytest.mark.parametrize("tick_ms", [1, 10, 50])
def test_ads_is_shared_round_robin(mp, tick_ms):
    setup(mp)
    mp(op="sensor_set", adc="adc0", history=True)
    chans = run(mp, 1200, tick_ms=tick_ms)
    hist = mp(op="sensor_history", adc="adc0")
    muxes = [h[0] for h in hist["history"]]
    # MUX 7 = AIN3 (the supply) first, then AIN0 (ch1), AIN1 (ch2), repeating.
    assert muxes[:3] == [7, 4, 5]
    assert muxes == [7, 4, 5] * (len(muxes) // 3) + [7, 4, 5][: len(muxes) % 3]
    # Never a start while a conversion runs: one conversion at a time.
    assert hist["ignored_starts"] == 0
    # Each conversion waits for the next tick after 1/DR (7.8 ms); with a
    # slow tick (50 ms is the device's default) a round takes 3 ticks, and
    # that is no reason for a MISSING sample.
    per_conv = tick_ms * -(-8 // tick_ms)
    rounds = 1200 // (3 * per_conv)
    for ch in ("1", "2"):
        assert chans[ch]["fault"] == OK
        assert all(s[0] == OK for s in chans[ch]["samples"])
        assert abs(chans[ch]["good_polls"] - rounds) <= 1
    assert all(h[1] == 1 and h[2] == 4 for h in hist["history"])  # 4.096 V, 128 SPS


def test_two_ratiometric_channels_share_one_supply_slot(mp):
    p = profile_with(
        ch2={
            "signal": "ratiometric_0.5_4.5v",
            "supply_v": 5.0,
            "divider_ratio": 0.6,
            "supply_input": 3,
            "supply_divider_ratio": 0.6,
            "shunt_ohm": None,
        }
    )
    got = setup(mp, profile=p, volts={"adc0": [1.5, 2.0 * DIV, 0.0, 3.0]})
    assert got["2"]["unit"] == "ppm" and got["2"]["period_ms"] == 24
    mp(op="sensor_set", adc="adc0", history=True)
    chans = run(mp, 500)
    muxes = [h[0] for h in mp(op="sensor_history", adc="adc0")["history"]]
    assert muxes[:6] == [7, 4, 5, 7, 4, 5]
    assert abs(chans["2"]["signal"] - 400000) <= 150


def bad_run(samples: list, code: int) -> tuple[int, int]:
    # Index of the first sample judged `code`, and of the first good one after.
    first = next(i for i, s in enumerate(samples) if s[0] == code)
    later = next((i for i in range(first, len(samples)) if samples[i][0] == OK), len(samples))
    return first, later


def check_persistence(samples: list, code: int, n: int = N) -> list:
    # The fault is set exactly at the n-th bad sample in a row, and the
    # signal never takes a bad sample's value. Returns the samples from the
    # first bad one on.
    first, _ = bad_run(samples, code)
    assert first >= 0
    run_ = samples[first : first + n]
    assert [s[0] for s in run_] == [code] * n, samples[first : first + n + 2]
    assert [s[1] for s in run_] == [OK] * (n - 1) + [code]
    good_signal = samples[first - 1][3] if first else None
    if good_signal is not None:
        assert all(s[3] == good_signal for s in run_)
    return samples[first:]


def check_clears(samples: list, code: int, n: int = N) -> None:
    # After the cause is gone: the fault stays for n-1 good samples and
    # clears at the n-th.
    start = next(i for i, s in enumerate(samples) if s[0] == OK)
    run_ = samples[start : start + n]
    assert [s[0] for s in run_] == [OK] * n
    assert [s[1] for s in run_] == [code] * (n - 1) + [OK]


FAULTS = [
    # id, channel, what breaks it, what mends it, code, fault_value check, ms
    (
        "missing-ads",
        "1",
        {"adc": "adc0", "present": False},
        {"adc": "adc0", "present": True},
        MISSING,
        lambda v: v == 19,
        300,
    ),
    (
        "missing-bus-eio",
        "2",
        {"bus": 0, "fail_errno": 5},
        {"bus": 0, "fail_errno": 0},
        MISSING,
        lambda v: v == 5,
        300,
    ),
    (
        "missing-hx711",
        "3",
        {"channel": 3, "mv": None},
        {"channel": 3, "mv": 1.0},
        MISSING,
        lambda v: v == 0,
        1500,
    ),
    (
        "open-ratiometric",
        "1",
        {"adc": "adc0", "input": 0, "v": 0.2 * DIV},
        {"adc": "adc0", "input": 0, "v": 2.5 * DIV},
        OPEN,
        lambda v: abs(v - 40000) < 200,
        300,
    ),
    (
        "open-current",
        "2",
        {"adc": "adc0", "input": 1, "v": 0.002 * 100},
        {"adc": "adc0", "input": 1, "v": 0.012 * 100},
        OPEN,
        lambda v: abs(v - 2000) < 5,
        300,
    ),
    (
        "range-ratiometric",
        "1",
        {"adc": "adc0", "input": 0, "v": 4.85 * DIV},
        {"adc": "adc0", "input": 0, "v": 2.5 * DIV},
        RANGE,
        lambda v: abs(v - 970000) < 200,
        300,
    ),
    (
        "range-current",
        "2",
        {"adc": "adc0", "input": 1, "v": 0.022 * 100},
        {"adc": "adc0", "input": 1, "v": 0.012 * 100},
        RANGE,
        lambda v: abs(v - 22000) < 5,
        300,
    ),
    (
        "saturated-ads",
        "2",
        {"adc": "adc0", "input": 1, "v": 4.2},
        {"adc": "adc0", "input": 1, "v": 1.2},
        SATURATED,
        lambda v: v > 40000,
        300,
    ),
    (
        "saturated-overload",
        "3",
        {"channel": 3, "mv": 3.5},
        {"channel": 3, "mv": 1.0},
        SATURATED,
        lambda v: abs(v - 3_500_000) < 100,
        1000,
    ),
    (
        "saturated-rail",
        "4",
        {"channel": 4, "mv": -5.0},
        {"channel": 4, "mv": -0.5},
        SATURATED,
        lambda v: v < -3_900_000,
        1000,
    ),
    (
        "stuck-hx711",
        "3",
        {"channel": 3, "hx_stuck": True},
        {"channel": 3, "hx_stuck": False},
        STUCK,
        None,
        6000,
    ),
    (
        # The only input on its chip: a frozen conversion register repeats
        # this channel's own last value. (On a shared chip it repeats some
        # other input's, which the range checks catch first.)
        "stuck-ads",
        "1",
        {"adc": "adc0", "stuck": True},
        {"adc": "adc0", "stuck": False},
        STUCK,
        None,
        6000,
    ),
    (
        "missing-ads-hung",
        "2",
        {"adc": "adc0", "hung": True},
        {"adc": "adc0", "hung": False},
        MISSING,
        lambda v: v == 0,
        300,
    ),
]


def single_ads_profile() -> dict:
    # Channel 1 alone on the ADS1115, against the nominal supply.
    p = profile_with(
        ch1={"supply_input": None, "supply_divider_ratio": None, "stuck_band_counts": None}
    )
    p["channels"] = [c for c in p["channels"] if c["channel"] != 2]
    return p


@pytest.mark.parametrize(
    ("channel", "brk", "mend", "code", "value_ok", "ms"),
    [f[1:] for f in FAULTS],
    ids=[f[0] for f in FAULTS],
)
def test_fault_after_n_bad_samples_and_clear_after_n_good(
    mp, channel, brk, mend, code, value_ok, ms
):
    profile = single_ads_profile() if brk.get("stuck") and "adc" in brk else None
    info = setup(mp, profile=profile)
    warm = run(mp, 1000)
    assert all(c["fault"] == OK for c in warm.values())
    mp(op="sensor_set", **brk)
    got = run(mp, ms)[channel]
    assert got["fault"] == code, got["samples"][-5:]
    if code == STUCK:
        # The first STUCK sample is the stuck_samples-th identical reading in
        # a row (the run may begin before the break: noise can repeat a code).
        stuck = info[channel]["stuck_samples"]
        before = [s[4] for s in warm[channel]["samples"]]
        raws = before + [s[4] for s in got["samples"]]
        first = len(before) + next(i for i, s in enumerate(got["samples"]) if s[0] == STUCK)
        assert first - stuck >= 0
        same = raws[first - stuck + 1 : first + 1]
        assert len(same) == stuck and len(set(same)) == 1
        assert raws[first - stuck] != same[0]
        assert got["fault_value"] == same[0]
    else:
        assert value_ok(got["fault_value"]), got["fault_value"]
    check_persistence(got["samples"], code)
    mp(op="sensor_set", **mend)
    after = run(mp, ms)[channel]
    check_clears(after["samples"], code)
    assert after["fault"] == OK
    # Channels that were not broken stayed healthy throughout.
    for other, c in run(mp, 200).items():
        assert c["fault"] == OK, (other, c["samples"][-3:])


def test_one_bad_sample_neither_sets_nor_clears(mp):
    setup(mp)
    run(mp, 500)
    mp(op="sensor_set", adc="adc0", input=1, v=0.2)  # 2 mA: open
    samples = []
    while not samples:
        samples = [s for s in run(mp, 1)["2"]["samples"] if s[0] != OK]
    mp(op="sensor_set", adc="adc0", input=1, v=1.2)
    got = run(mp, 300)["2"]
    assert got["fault"] == OK
    assert all(s[1] == OK for s in got["samples"])


def test_a_different_persistent_fault_replaces_the_first(mp):
    setup(mp)
    run(mp, 500)
    mp(op="sensor_set", adc="adc0", input=1, v=0.2)  # open
    assert run(mp, 200)["2"]["fault"] == OPEN
    mp(op="sensor_set", adc="adc0", input=1, v=2.3)  # 23 mA: range
    got = run(mp, 200)["2"]
    first = next(i for i, s in enumerate(got["samples"]) if s[0] == RANGE)
    assert [s[1] for s in got["samples"][first : first + N]] == [OPEN] * (N - 1) + [RANGE]
    assert abs(got["fault_value"] - 23000) < 5


def test_bad_samples_and_stuck_samples_come_from_the_profile(mp):
    p = profile_with(ch2={"bad_samples": 5}, ch3={"stuck_samples": 0})
    info = setup(mp, profile=p)
    assert info["2"]["bad_samples"] == 5
    assert info["3"]["stuck_samples"] == 0
    run(mp, 1000)
    mp(op="sensor_set", adc="adc0", input=1, v=0.2)
    mp(op="sensor_set", channel=3, hx_stuck=True)
    got = run(mp, 6000)
    check_persistence(got["2"]["samples"], OPEN, n=5)
    assert got["3"]["fault"] == OK  # stuck detection off for this channel


def test_poll_never_raises_and_reports_missing(mp):
    setup(mp)
    run(mp, 300)
    mp(op="sensor_break")  # the bus raises ValueError, not OSError
    got = run(mp, 300)
    for ch in ("1", "2"):
        assert got[ch]["fault"] == MISSING
        assert got[ch]["fault_value"] == -1
    assert got["3"]["fault"] == OK


def test_a_sensor_whose_results_stop_coming_reports_missing(mp):
    # Whatever stops the results (here the share is never polled), the
    # sensor's own time-out, 3 periods and a margin, reports MISSING.
    setup(mp)
    run(mp, 300)
    mp(op="sensor_freeze_share")
    got = run(mp, 300)["2"]
    assert got["fault"] == MISSING and got["fault_value"] == 0
    # 3 bad samples, one per time-out of 3 * 24 + 10 ms and 5 polls.
    assert [s[0] for s in got["samples"]] == [MISSING] * 3


def test_a_stalled_loop_is_not_a_missing_sensor(mp):
    # One poll 500 ms after the last (a long flash write, say): the sensors
    # whose slot did not convert in that poll must not count it as bad.
    setup(mp)
    run(mp, 300)
    got = run(mp, 500, tick_ms=500)
    for ch in ("1", "2"):
        assert all(s[0] == OK for s in got[ch]["samples"])
    got = run(mp, 100)
    assert all(c["fault"] == OK for c in got.values())


def test_ticks_wrap_during_runs(mp):
    # The rig's ticks start 250 ms before the 2**30 wrap: every run above
    # crossed it, and sampling went on at the same rate across it.
    setup(mp)
    got = mp(op="sensor_run", ms=600, tick_ms=1)
    assert got["ticks"] < 1000
    assert got["channels"]["1"]["good_polls"] >= 600 // 24 - 1


def test_poll_allocates_nothing(mp):
    p = copy.deepcopy(SIM)
    p["channels"].append(
        {
            "channel": 5,
            "kind": "monitor",
            "sensor": {
                "type": "mcu_adc",
                "pin": 26,
                "signal": "current_4_20ma",
                "shunt_ohm": 150.0,
                "vref_v": 3.3,
                "samples": 8,
                "period_ms": 5,
            },
        }
    )
    setup(mp, profile=p, mcu_volts={"26": 0.010 * 150})
    run(mp, 1000)
    got = mp(op="sensor_alloc", ms=3000)
    assert got["bytes"] == 0
    assert got["faults"] == [OK] * 5
    # Every sensor delivered samples in the measured stretch.
    assert got["good"][0] >= 3000 // 24 - 1 and got["good"][1] >= 3000 // 24 - 1
    assert got["good"][2] >= 29 and got["good"][3] >= 29
    assert got["good"][4] >= 3000 // 5 - 1


def test_mcu_adc_channel(mp):
    p = copy.deepcopy(SIM)
    p["channels"].append(
        {
            "channel": 5,
            "kind": "monitor",
            "sensor": {
                "type": "mcu_adc",
                "pin": 26,
                "signal": "ratiometric_0.5_4.5v",
                "supply_v": 5.0,
                "divider_ratio": 0.6,
            },
        }
    )
    info = setup(mp, profile=p, mcu_volts={"26": 2.0 * DIV})
    assert info["5"]["kind"] == SENSORS["MCU_ADC"] and info["5"]["unit"] == "ppm"
    assert info["5"]["period_ms"] == 10
    ch = run(mp, 500)["5"]
    # 12-bit ADC at 3.3 V: one code is 0.8 mV at the pin, 268 ppm here.
    assert abs(ch["signal"] - 400000) <= 800
    mp(op="sensor_set", pin=26, v=0.1 * DIV)
    ch = run(mp, 100)["5"]
    assert ch["fault"] == OPEN
    check_persistence(ch["samples"], OPEN)


def test_ads1015_profile_reads_12_bit_counts(mp):
    p = copy.deepcopy(SIM)
    p["adcs"][0]["type"] = "ads1015"
    for c in p["channels"][:2]:
        c["sensor"]["type"] = "ads1015"
        c["sensor"]["data_rate_sps"] = 1600
    info = setup(mp, profile=p, ads_noise=0.0)
    assert info["1"]["stuck_samples"] == 0  # 12 bits may sit on one code
    assert info["1"]["period_ms"] == 3  # three 1-ms slots at 1600 SPS
    chans = run(mp, 300)
    assert chans["1"]["raw"] == round(1.5 / 0.002)
    assert abs(chans["1"]["signal"] - 500000) <= 1000
    assert abs(chans["2"]["signal"] - 12000) <= 20


BAD_PROFILES = [
    ("unknown adc", {"ch1": {"adc": "adc9"}}, "channel 1", "adc9"),
    ("bad pga", {"ch1": {"pga_fsr_v": 5.0}}, "channel 1", "PGA full-scale 5.0"),
    ("bad rate", {"ch2": {"data_rate_sps": 100}}, "channel 2", "100 SPS"),
    ("bad input", {"ch2": {"input": 4}}, "channel 2", "input = 4"),
    ("shared input", {"ch2": {"input": 0}}, "channel 2", "already used by channel 1"),
    ("supply is a signal", {"ch2": {"input": 3}}, "channel 2", "already used by supply"),
    ("signal kind", {"ch1": {"signal": "pwm"}}, "channel 1", "signal = 'pwm'"),
    ("no shunt", {"ch2": {"shunt_ohm": None}}, "channel 2", "missing key"),
    ("zero divider", {"ch1": {"divider_ratio": 0}}, "channel 1", "divider_ratio = 0"),
    ("hx gain", {"ch4": {"gain": 100}}, "channel 4", "gain = 100"),
    ("hx rate", {"ch3": {"rate_hz": 20}}, "channel 3", "rate_hz = 20"),
    ("hx pins", {"ch4": {"sck": 14}}, "channel 4", "both pin 14"),
    ("sensor type", {"ch3": {"type": "hx712"}}, "channel 3", "hx712"),
    ("bad_samples", {"ch1": {"bad_samples": 0}}, "channel 1", "bad_samples = 0"),
]


@pytest.mark.parametrize(
    ("changes", "where", "what"),
    [b[1:] for b in BAD_PROFILES],
    ids=[b[0] for b in BAD_PROFILES],
)
def test_build_rejects_bad_profiles_before_touching_hardware(mp, changes, where, what):
    got = mp(op="sensor_build_error", profile=profile_with(**changes))
    assert got["error"] is not None
    assert where in got["error"] and what in got["error"], got["error"]
    assert got["hal_calls"] == 0
