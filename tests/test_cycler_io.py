"""firmware/cycler_io.py under real MicroPython, against a fake HAL: the
pressure-proportional analog outputs, the fault line, the debounced trigger."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest

from isopress.protocol import wire

from conftest import ROOT, MicroPython

RESULTS = {name: code for code, name in wire.RESULTS}
SIM = json.loads((ROOT / "hardware" / "boards" / "sim.json").read_text())
WRAP = 1 << 30


@pytest.fixture(scope="module")
def mp() -> Iterator[MicroPython]:
    m = MicroPython(ROOT / "tests" / "mpy" / "profile_cycler_io_server.py")
    yield m
    m.close()


def new(mp: MicroPython, profile: dict | None = None, channels=(1, 2, 3, 4), **kw) -> dict:
    r = mp(op="new", profile=profile or SIM, channels=list(channels), **kw)
    assert "error" not in r, r["error"]
    return r


def exact_duty(p: int, fs_mpa: float, fs_v: float, v_high: float = 3.3, gain: float = 1.0):
    p = min(max(p, 0), fs_mpa * 1e6)
    return p / (fs_mpa * 1e6) * fs_v / (v_high * gain) * 65535


# --- analog outputs ---


def test_outputs_come_from_the_profile_and_start_at_zero(mp):
    r = new(mp)
    pwms = r["pins"]["pwms"]
    assert set(pwms) == {"16", "18", "20", "22"}
    for o in pwms.values():
        assert o["freq_hz"] == 10000
        assert o["v"] == 0


def test_duty_at_zero_half_and_full_scale(mp):
    new(mp)
    full = round(3000 * 65535 / 3300)  # 3.0 V of a 3.3 V PWM
    got = mp(op="sweep", ch=1, pressures=[0, 5_000_000, 10_000_000])["duties"]
    assert got[0] == 0
    assert abs(got[1] - exact_duty(5_000_000, 10, 3.0)) <= 2
    assert got[2] == full
    got = mp(op="sweep", ch=3, pressures=[0, 75_000_000, 150_000_000])["duties"]
    assert got == [0, pytest.approx(full / 2, abs=2), full]


def test_duty_clamps_below_zero_and_above_full_scale(mp):
    new(mp)
    full = round(3000 * 65535 / 3300)
    got = mp(op="sweep", ch=1, pressures=[-1, -5_000_000, 10_000_001, 500_000_000])["duties"]
    assert got == [0, 0, full, full]


@pytest.mark.parametrize(("ch", "fs_mpa"), [(1, 10.0), (3, 150.0)])
def test_duty_tracks_pressure_within_two_counts_and_never_falls(mp, ch, fs_mpa):
    new(mp)
    fs = int(fs_mpa * 1e6)
    pressures = sorted({*range(0, fs + 1, fs // 997), 1, 2, 3, 999, fs - 1, fs // 3})
    got = mp(op="sweep", ch=ch, pressures=pressures)["duties"]
    for p, d in zip(pressures, got, strict=True):
        assert abs(d - exact_duty(p, fs_mpa, 3.0)) <= 2, (p, d)
    assert got == sorted(got)


def test_only_written_when_the_duty_changes(mp):
    r = new(mp)
    writes = r["pins"]["pwms"]["16"]["writes"]
    mp(op="analog", ch=1, p=4_000_000)
    r = mp(op="analog", ch=1, p=4_000_000)
    assert r["pins"]["pwms"]["16"]["writes"] == writes + 1


def test_gain_and_pwm_high_level_set_the_volts_per_count(mp):
    prof = copy.deepcopy(SIM)
    prof["analog_out"] = {"pwm_freq_hz": 2000, "pwm_v_high": 3.3, "amp_gain": 2.0}
    prof["channels"][0]["analog_out_scale"] = {"full_scale_mpa": 10.0, "full_scale_v": 5.0}
    r = new(mp, prof)
    assert r["pins"]["pwms"]["16"]["freq_hz"] == 2000
    got = mp(op="sweep", ch=1, pressures=[2_500_000, 10_000_000])["duties"]
    assert got[1] == round(5000 * 65535 / 6600)
    assert abs(got[0] - exact_duty(2_500_000, 10, 5.0, 3.3, 2.0)) <= 2


def test_channels_without_an_output_or_not_built_are_ignored(mp):
    prof = copy.deepcopy(SIM)
    del prof["channels"][1]["analog_out_pin"]
    r = new(mp, prof, channels=(1, 2, 3))
    assert set(r["pins"]["pwms"]) == {"16", "20"}  # ch2 has no pin, ch4 was not built
    for ch in (2, 4, 0, 9, -1):
        r = mp(op="analog", ch=ch, p=5_000_000)
        assert {o["v"] for o in r["pins"]["pwms"].values()} == {0}


def test_set_scale_changes_the_full_scale(mp):
    new(mp)
    r = mp(op="set_scale", ch=1, fs_pa=5_000_000, fs_mv=1500)
    assert (r["result"], r["value"]) == (RESULTS["OK"], 0)
    got = mp(op="sweep", ch=1, pressures=[5_000_000, 2_500_000])["duties"]
    assert got[0] == round(1500 * 65535 / 3300)
    assert abs(got[1] - exact_duty(2_500_000, 5, 1.5)) <= 2


@pytest.mark.parametrize(
    ("ch", "fs_pa", "fs_mv", "result", "value"),
    [
        (1, 99_999, 3000, "OUT_OF_RANGE", 100_000),
        (1, 1 << 30, 3000, "OUT_OF_RANGE", (1 << 30) - 1),
        (1, 10_000_000, 0, "OUT_OF_RANGE", 1),
        (1, 10_000_000, 3301, "OUT_OF_RANGE", 3300),  # above what the PWM can reach
        (5, 10_000_000, 3000, "UNKNOWN_CHANNEL", 0),
        (2, 10_000_000, 3000, "NOT_SUPPORTED", 0),
    ],
)
def test_bad_scale_is_refused_and_changes_nothing(mp, ch, fs_pa, fs_mv, result, value):
    prof = copy.deepcopy(SIM)
    del prof["channels"][1]["analog_out_pin"]
    new(mp, prof)
    before = mp(op="sweep", ch=1, pressures=[3_000_000, 10_000_000])["duties"]
    r = mp(op="set_scale", ch=ch, fs_pa=fs_pa, fs_mv=fs_mv)
    assert (r["result"], r["value"]) == (RESULTS[result], value)
    assert mp(op="sweep", ch=1, pressures=[3_000_000, 10_000_000])["duties"] == before


def test_a_profile_asking_more_volts_than_the_output_has_is_refused(mp):
    prof = copy.deepcopy(SIM)
    prof["channels"][2]["analog_out_scale"]["full_scale_v"] = 5.0
    r = mp(op="new", profile=prof, channels=[1, 2, 3, 4])
    assert "channel 3" in r["error"]
    assert "3300 mV" in r["error"]


# --- fault line ---


def test_fault_line_is_asserted_from_boot_and_driven_every_tick(mp):
    r = new(mp)
    assert r["pins"]["outs"]["2"]["level"] == 0  # active level 0: fault until healthy
    r = mp(op="fault", active=False)
    assert r["pins"]["outs"]["2"]["level"] == 1
    w = r["pins"]["outs"]["2"]["writes"]
    r = mp(op="fault", active=False)
    assert r["pins"]["outs"]["2"] == {"level": 1, "writes": w + 1}
    r = mp(op="fault", active=True)
    assert r["pins"]["outs"]["2"]["level"] == 0


def test_fault_line_follows_the_profiles_active_level(mp):
    prof = copy.deepcopy(SIM)
    prof["fault_out_active_level"] = 1
    r = new(mp, prof)
    assert r["pins"]["outs"]["2"]["level"] == 1
    assert mp(op="fault", active=False)["pins"]["outs"]["2"]["level"] == 0
    assert mp(op="fault", active=True)["pins"]["outs"]["2"]["level"] == 1


# --- trigger input ---
# sim.json: trigger on pin 3, active level 0 (the optocoupler pulls low), pull-up.


def test_trigger_pin_uses_the_profiles_pull(mp):
    assert new(mp)["pins"]["ins"] == {"3": {"pull_up": True}}
    prof = copy.deepcopy(SIM)
    prof["trigger_in_pull"] = "external"
    assert new(mp, prof)["pins"]["ins"] == {"3": {"pull_up": False}}


def test_clean_edge_counts_once_after_20_ms(mp):
    new(mp, trigger_level=1)
    r = mp(op="trigger", levels=[[100, 0]], ms=500)
    assert r["edges"] == [120]
    assert r["wrapped"]  # the clock started 100 ms before the wrap


def test_bounce_gives_one_edge_when_the_level_settles(mp):
    new(mp, trigger_level=1)
    bounce = [[100, 0], [102, 1], [105, 0], [107, 1], [110, 0], [113, 1], [114, 0]]
    release = [[400, 1], [401, 0], [403, 1]]  # a bouncing release: still no edge
    again = [[600, 0], [601, 1], [603, 0]]
    r = mp(op="trigger", levels=[*bounce, *release, *again], ms=1000)
    assert r["edges"] == [134, 623]


def test_glitch_shorter_than_20_ms_is_ignored(mp):
    new(mp, trigger_level=1)
    r = mp(op="trigger", levels=[[100, 0], [119, 1], [300, 0], [310, 1]], ms=600)
    assert r["edges"] == []


def test_release_is_not_an_edge_and_a_level_held_at_boot_is_not_either(mp):
    new(mp, trigger_level=0)  # asserted before the board came up
    r = mp(op="trigger", levels=[[200, 1], [500, 0]], ms=800)
    assert r["edges"] == [520]


def test_active_high_trigger(mp):
    prof = copy.deepcopy(SIM)
    prof["trigger_in_active_level"] = 1
    new(mp, prof, trigger_level=0)
    r = mp(op="trigger", levels=[[50, 1], [300, 0], [600, 1]], ms=800, dt=5)
    assert r["edges"] == [70, 620]


def test_a_board_without_a_trigger_never_reports_one(mp):
    prof = copy.deepcopy(SIM)
    del prof["trigger_in_pin"]
    del prof["fault_out_pin"]
    r = new(mp, prof)
    assert r["pins"]["ins"] == {}
    assert r["pins"]["outs"] == {}
    mp(op="fault", active=True)
    assert mp(op="trigger", levels=[], ms=100)["edges"] == []


def test_per_tick_calls_allocate_nothing(mp):
    new(mp)
    assert mp(op="alloc", ch=3, fs_pa=160_000_000, ticks=2000)["bytes"] == 0
