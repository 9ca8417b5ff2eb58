"""The plant model: physics checked against formulas, every fault, parameter
validation, the reference file, and the same trace in MicroPython and CPython."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from isopress.sim import plant

from conftest import FIRMWARE, ROOT, MicroPython

SIM = FIRMWARE / "sim"
TRACE_SCRIPT = ROOT / "tests" / "mpy" / "plant_trace.py"
P_ATM = 101325.0
R_AIR = 287.05
GAMMA = 1.4
T_OVEN = 303.15


def rig(channel: dict | None = None, **plant_keys: object) -> dict:
    """Channel 1 only (isostatic unless given), oven steady unless given."""
    ch = {"kind": "isostatic", "leak_pct_per_day": 0.0}
    ch.update(channel or {})
    return {"plant": {"oven_swing_k": 0.0, **plant_keys}, "channel": {"1": ch}}


def choked_mdot(d_mm: float, cd: float, p_up: float, t_up: float) -> float:
    area = math.pi * (d_mm * 1e-3) ** 2 / 4
    k = (2 / (GAMMA + 1)) ** ((GAMMA + 1) / (2 * (GAMMA - 1)))
    return cd * area * p_up * math.sqrt(GAMMA / (R_AIR * t_up)) * k


def ratiometric_pa(volts: float, supply_v: float, range_mpa: float = 10.0) -> float:
    return ((volts / supply_v) - 0.1) / 0.8 * range_mpa * 1e6


def run_until(p: plant.Plant, done, limit_s: float, dt: float = 0.01) -> float:
    while not done():
        assert p.t < limit_s, "condition not reached in time"
        p.advance(dt)
    return p.t


# ---------------------------------------------------------------- reference rig


def test_reference_toml_is_the_default_rig():
    parsed = tomllib.loads((SIM / "reference.toml").read_text())
    assert parsed == plant.default_params()
    a, b = plant.Plant(parsed), plant.Plant(None)
    for p in (a, b):
        p.holder(1).fill = True
        p.holder(3).fill = True
        for _ in range(50):
            p.advance(0.02)
            for ch in p.channels:
                p.holder(ch).signal()
    assert a.truth_row() == b.truth_row()


def test_default_rig_matches_sim_board_profile():
    board = json.loads((ROOT / "hardware" / "boards" / "sim.json").read_text())
    p = plant.Plant()
    assert p.channels == [c["channel"] for c in board["channels"]]
    signal_of = {"ratiometric_0.5_4.5v": "ratiometric_0.5_4.5v", "current_4_20ma": "current_4_20ma"}
    for c in board["channels"]:
        cfg = p.holder(c["channel"]).cfg
        assert cfg["kind"] == c["kind"]
        s = c["sensor"]
        if s["type"] == "hx711":
            assert cfg["sensor"]["signal"] == "load_cell"
            assert cfg["sensor"]["capacity_n"] == s["capacity_n"]
            assert cfg["sensor"]["sensitivity_mv_per_v"] == s["sensitivity_mv_per_v"]
            assert cfg["sensor"]["safe_overload_pct"] == s["safe_overload_pct"]
            # HX711 input range at this gain: +/-0.5 * E / gain
            assert cfg["sensor"]["amp_range_mv_per_v"] == pytest.approx(500.0 / s["gain"])
        else:
            assert cfg["sensor"]["signal"] == signal_of[s["signal"]]
            assert cfg["sensor"]["range_mpa"] == s["range_mpa"]
            if "supply_v" in s:
                assert cfg["sensor"]["supply_v"] == s["supply_v"]
            assert cfg["relief_mpa"] == c["limits"]["relief_mpa"]
        if "actuator" in c:
            a = c["actuator"]
            assert cfg["bore_mm"] == a["bore_mm"]
            assert cfg["supply_mpa"] == a["supply_mpa"]
            assert cfg["relief_mpa"] == a["relief_mpa"]


def test_reference_channel_1_is_the_brief():
    c = plant.Plant().holder(1).cfg
    assert (c["volume_l"], c["supply_mpa"], c["fill_d_mm"], c["vent_d_mm"]) == (0.5, 12.0, 0.5, 0.5)
    assert (c["fill_cd"], c["tau_s"], c["leak_pct_per_day"], c["initial_mpa"]) == (
        0.8,
        10.0,
        2.0,
        0,
    )
    p = plant.Plant()
    assert p.holder(1).oven_temp == pytest.approx(T_OVEN)
    assert p.holder(4).force == pytest.approx(5000.0)
    assert p.holder(3).stack.area == pytest.approx(78.54e-6)


# ---------------------------------------------------------------- gas physics


def test_choked_fill_rate_from_zero_gauge_matches_formula():
    p = plant.Plant(rig())
    h = p.holder(1)
    h.fill = True
    p.advance(0.01)
    mdot = choked_mdot(0.5, 0.8, 12e6 + P_ATM, T_OVEN)
    # open rigid volume, gas in at T_supply, no heat exchanged yet:
    # dP/dt = gamma R T_supply mdot / V
    expected = GAMMA * R_AIR * T_OVEN * mdot / 0.5e-3
    assert h.pressure / 0.01 == pytest.approx(expected, rel=2e-3)
    assert h.gas_used / 0.01 == pytest.approx(mdot, rel=1e-6)
    assert 1.0e6 < expected < 1.1e6  # about 1.07 MPa/s into 0.5 L


def test_filling_heats_and_pressure_relaxes_with_tau():
    p = plant.Plant(rig())
    h = p.holder(1)
    h.fill = True
    p.advance(3.0)
    h.fill = False
    assert h.gas_temp > T_OVEN + 50  # filling heats (adiabatic compression)
    t_close = p.t
    samples = {}
    for t in (5.0, 15.0, 25.0):
        p.advance_to(t_close + t)
        samples[t] = h.pressure
    p.advance_to(t_close + 300.0)
    p_inf = h.pressure
    assert h.gas_temp == pytest.approx(T_OVEN, abs=1e-6)
    assert samples[5.0] > samples[15.0] > samples[25.0] > p_inf  # cools, falls
    tau = 10.0 / math.log((samples[5.0] - p_inf) / (samples[15.0] - p_inf))
    assert tau == pytest.approx(10.0, rel=0.01)
    tau = 10.0 / math.log((samples[15.0] - p_inf) / (samples[25.0] - p_inf))
    assert tau == pytest.approx(10.0, rel=0.01)


def test_vent_5_to_2_mpa_takes_about_15_s_and_recovers():
    p = plant.Plant(rig({"initial_mpa": 5.0}))
    h = p.holder(1)
    h.vent = True
    t = run_until(p, lambda: h.pressure <= 2e6, 30.0)
    # isothermal blow-down through the choked orifice would take 14 s; the
    # gas cools as it expands, so the pressure falls a little faster
    assert 10.0 < t < 16.0
    assert h.gas_temp < T_OVEN - 20
    h.vent = False
    p_closed = h.pressure
    p.advance(100.0)
    assert h.pressure > p_closed + 200e3  # the gas warms back up
    assert h.gas_temp == pytest.approx(T_OVEN, abs=0.1)


def test_vent_reaches_atmosphere_and_stays():
    p = plant.Plant(rig({"initial_mpa": 1.0}))
    h = p.holder(1)
    h.vent = True
    p.advance(120.0)
    assert abs(h.pressure) < 5.0
    p.advance(600.0)  # cheap at equilibrium, and no drift past it
    assert abs(h.pressure) < 1.0


@pytest.mark.parametrize("d_mm", [0.5, 5.0], ids=["integrated", "quasi-steady"])
def test_open_vent_holds_atmosphere_and_the_gas_warms_at_constant_pressure(d_mm):
    # With the chamber open to atmosphere the wall's heat goes into c_p, not
    # c_v: the gas follows the wall with gamma * tau = 14 s. A 5 mm opening is
    # stiff enough for the model to switch to that limit; 0.5 mm is integrated.
    p = plant.Plant(rig())
    h = p.holder(1)
    p.inject(1, "fast_leak", d_mm)
    p.inject(1, "oven_step", 5.0)
    p.advance(5.0)
    early = T_OVEN + 5.0 - h.gas_temp
    p.advance(20.0)
    late = T_OVEN + 5.0 - h.gas_temp
    assert 20.0 / math.log(early / late) == pytest.approx(GAMMA * 10.0, rel=0.01)
    assert abs(h.pressure) < 10.0
    p.advance(7200.0)  # cheap either way: about 120 chunks
    assert abs(h.pressure) < 1.0  # the integrator's tolerance: 1e-6 of the mass
    assert h.gas_temp == pytest.approx(T_OVEN + 5.0, abs=1e-3)  # and 1e-4 K on temperature


def test_sealed_chamber_moves_0_33_pct_per_kelvin_at_30c():
    p = plant.Plant(rig({"initial_mpa": 5.0}))
    h = p.holder(1)
    p_abs = h.pressure + P_ATM
    p.inject(1, "oven_step", 1.0)
    p.advance(300.0)
    assert h.oven_temp == pytest.approx(T_OVEN + 1.0)
    rise = h.pressure + P_ATM - p_abs
    assert rise / p_abs == pytest.approx(1 / T_OVEN, rel=1e-4)
    assert rise / 5e6 == pytest.approx(0.0033, rel=0.03)  # DOMAIN.md: ~0.33 %/K


def test_oven_swing_moves_a_sealed_chamber_with_the_oven():
    p = plant.Plant(rig({"initial_mpa": 5.0}, oven_swing_k=1.0, oven_period_s=3600.0))
    h = p.holder(1)
    lo, hi = math.inf, -math.inf
    for _ in range(360):
        p.advance(10.0)
        lo, hi = min(lo, h.pressure), max(hi, h.pressure)
    # +/-1 K through a 10 s lag at a 1 h period: barely attenuated
    amplitude = (5e6 + P_ATM) / T_OVEN / math.sqrt(1 + (2 * math.pi * 10 / 3600) ** 2)
    assert (hi - lo) / 2 == pytest.approx(amplitude, rel=0.01)


def test_leak_2_pct_per_day_over_a_simulated_day():
    p = plant.Plant(rig({"initial_mpa": 5.0, "leak_pct_per_day": 2.0}))
    h = p.holder(1)
    p.advance(86400.0)
    assert h.pressure / 5e6 == pytest.approx(0.98, abs=2e-5)


def test_leak_with_oven_swing_over_whole_periods():
    params = plant.default_params()
    params["channel"] = {"1": {**params["channel"]["1"], "initial_mpa": 5.0}}
    p = plant.Plant(params)
    start = p.holder(1).pressure
    p.advance(86400.0)  # 24 whole oven periods: same phase at both ends
    assert p.holder(1).pressure / start == pytest.approx(0.98, abs=2e-4)


def test_closed_valve_result_does_not_depend_on_step_size():
    params = plant.default_params()
    params["channel"] = {"1": {**params["channel"]["1"], "initial_mpa": 5.0}}
    ticks, one = plant.Plant(params), plant.Plant(params)
    for k in range(1, 30001):
        ticks.advance_to(k * 0.02)
    one.advance(600.0)
    a, b = ticks.holder(1), one.holder(1)
    assert a.pressure == pytest.approx(b.pressure, rel=1e-8)
    assert a.gas_temp == pytest.approx(b.gas_temp, abs=1e-6)


def test_fill_result_converges_with_step_size():
    # one 2 s call and 100 ticks of 20 ms agree to the integrator's tolerance
    a, b = plant.Plant(rig()), plant.Plant(rig())
    a.holder(1).fill = b.holder(1).fill = True
    a.advance(2.0)
    for k in range(1, 101):
        b.advance_to(k * 0.02)
    assert a.holder(1).pressure == pytest.approx(b.holder(1).pressure, rel=1e-5)
    assert a.holder(1).gas_used == pytest.approx(b.holder(1).gas_used, rel=1e-5)


def test_fill_stops_at_supply_pressure():
    p = plant.Plant(rig({"supply_mpa": 2.0, "relief_mpa": 0.0}))
    h = p.holder(1)
    h.fill = True
    p.advance(120.0)
    assert h.pressure == pytest.approx(2e6, abs=100.0)


# ---------------------------------------------------------------- sensors


def test_ratiometric_noise_rms_and_mean_match_the_spec():
    p = plant.Plant(rig({"initial_mpa": 5.0}))
    h = p.holder(1)
    n = 20000
    xs = [ratiometric_pa(h.signal(), h.supply_v) for _ in range(n)]
    mean = sum(xs) / n
    rms = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    assert rms / 10e6 * 100 == pytest.approx(0.05, rel=0.03)  # % FS
    assert mean == pytest.approx(h.pressure, abs=4 * 5e3 / math.sqrt(n))
    inside = sum(1 for x in xs if abs(x - mean) < rms) / n
    assert inside == pytest.approx(0.6827, abs=0.01)  # gaussian


def test_current_loop_signal_and_noise():
    p = plant.Plant(rig({"initial_mpa": 2.5, "sensor": {"signal": "current_4_20ma"}}))
    h = p.holder(1)
    ma = [h.signal() for _ in range(20000)]
    mean = sum(ma) / len(ma)
    rms = math.sqrt(sum((x - mean) ** 2 for x in ma) / (len(ma) - 1))
    assert mean == pytest.approx(4.0 + 16.0 * h.pressure / 10e6, abs=4e-4)
    assert rms / 16.0 * 100 == pytest.approx(0.05, rel=0.03)


def test_load_cell_signal_noise_and_sign():
    p = plant.Plant({"channel": {"4": {"kind": "monitor", "relax_pct": 0.0, "breathing_n": 0.0}}})
    h = p.holder(4)
    mvv = [h.signal() for _ in range(20000)]
    mean = sum(mvv) / len(mvv)
    rms = math.sqrt(sum((x - mean) ** 2 for x in mvv) / (len(mvv) - 1))
    assert mean == pytest.approx(2.0 * 5000 / 20000, abs=1e-6)
    assert rms / 2.0 * 100 == pytest.approx(0.001, rel=0.03)


def test_ratiometric_output_follows_the_supply():
    p = plant.Plant(
        rig({"initial_mpa": 5.0, "sensor": {"noise_pct_fs": 0.0, "supply_drift_v": 0.2}})
    )
    h = p.holder(1)
    p.advance(86400 / 4)  # drift at its peak
    assert h.supply_v == pytest.approx(5.2)
    p_true = h.pressure
    assert h.signal() == pytest.approx(5.2 * (0.1 + 0.8 * p_true / 10e6))


def test_transducer_quantisation():
    p = plant.Plant(
        rig({"initial_mpa": 3.0, "sensor": {"noise_pct_fs": 0.0, "quantisation_bits": 8}})
    )
    frac = (p.holder(1).signal() / 5.0 - 0.1) / 0.8
    assert frac * 256 == pytest.approx(round(frac * 256), abs=1e-9)
    assert frac == pytest.approx(p.holder(1).pressure / 10e6, abs=1 / 512)


def test_output_rails_outside_the_range():
    p = plant.Plant(rig({"initial_mpa": 12.0, "supply_mpa": 20.0, "relief_mpa": 0.0}))
    assert p.holder(1).signal() == pytest.approx(0.98 * 5.0)
    p = plant.Plant(
        rig(
            {
                "initial_mpa": 12.0,
                "supply_mpa": 20,
                "relief_mpa": 0,
                "sensor": {"signal": "current_4_20ma"},
            }
        )
    )
    assert p.holder(1).signal() == 20.5


def test_same_seed_same_noise_other_seed_other_noise():
    def draw(seed: int) -> list[float]:
        p = plant.Plant({"plant": {"seed": seed}})
        return [p.holder(ch).signal() for _ in range(20) for ch in p.channels]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_rng_is_xorshift32_with_known_values():
    r = plant.Rng(1)
    state = r.state
    x = state
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    assert r.next32() == x
    assert all(0.0 <= plant.Rng(5).uniform() < 1.0 for _ in range(100))


def test_truth_row_draws_no_noise():
    a, b = plant.Plant(), plant.Plant()
    a.truth_row()
    a.truth_row()
    assert [a.holder(1).signal() for _ in range(5)] == [b.holder(1).signal() for _ in range(5)]


# ---------------------------------------------------------------- faults


def test_sensor_unplugged():
    p = plant.Plant({"channel": {"1": {"kind": "isostatic", "initial_mpa": 1.0},
                                 "2": {"kind": "isostatic", "sensor": {"signal": "current_4_20ma"}},
                                 "3": {"kind": "uniaxial"}}})  # fmt: skip
    for ch in (1, 2, 3):
        p.inject(ch, "sensor_unplugged", True)
    assert p.holder(1).signal() == 0.0
    assert p.holder(2).signal() == 0.0
    assert p.holder(3).signal() is None  # the HX711 is gone
    p.clear(1, "sensor_unplugged")
    p.inject(3, "sensor_unplugged", None)
    assert ratiometric_pa(p.holder(1).signal(), 5.0) == pytest.approx(1e6, abs=30e3)
    assert p.holder(3).signal() is not None


def test_sensor_stuck_freezes_the_present_output():
    p = plant.Plant(rig())
    h = p.holder(1)
    last = h.signal()
    p.inject(1, "sensor_stuck", True)
    h.fill = True
    outs = set()
    for _ in range(50):
        p.advance(0.02)
        outs.add(h.signal())
    assert outs == {last}
    assert h.pressure > 1e6
    p.clear(1, "sensor_stuck")
    assert ratiometric_pa(h.signal(), 5.0) == pytest.approx(h.pressure, abs=30e3)


def test_noise_spikes_magnitude_and_probability():
    p = plant.Plant(rig({"initial_mpa": 5.0, "sensor": {"spike_prob": 0.02}}))
    h = p.holder(1)
    p.inject(1, "noise_spikes", 10.0)
    n = 20000
    dev = [ratiometric_pa(h.signal(), 5.0) - h.pressure for _ in range(n)]
    spikes = [d for d in dev if abs(d) > 0.5e6]
    assert len(spikes) / n == pytest.approx(0.02, abs=5 * math.sqrt(0.02 / n))
    assert all(abs(abs(d) - 1e6) < 30e3 for d in spikes)  # 10 % FS, plus noise
    assert any(d > 0 for d in spikes) and any(d < 0 for d in spikes)


def test_sensor_offset():
    p = plant.Plant(rig({"initial_mpa": 2.0, "sensor": {"noise_pct_fs": 0.0}}))
    h = p.holder(1)
    p.inject(1, "sensor_offset", -1.5)
    assert ratiometric_pa(h.signal(), 5.0) == pytest.approx(2e6 - 0.015 * 10e6, abs=1e-3)


def test_load_cell_saturated_fault_clamps_the_output():
    p = plant.Plant()
    p.inject(4, "load_cell_saturated", True)
    assert p.holder(4).signal() == pytest.approx(3.90625)
    p.inject(4, "load_cell_saturated", -1)
    assert p.holder(4).signal() == pytest.approx(-3.90625)
    p.clear(4, "load_cell_saturated")
    assert p.holder(4).signal() == pytest.approx(0.5, abs=1e-3)


def test_force_beyond_range_clamps_and_overload_shifts_the_zero():
    p = plant.Plant({"channel": {"3": {"kind": "uniaxial", "relief_mpa": 0.0}}})
    h = p.holder(3)
    p.inject(3, "supply_lost", 2.0)  # the regulator fails high: 2 MPa on 160 mm
    h.fill = True
    p.advance(30.0)
    assert h.force > 39000.0
    assert h.signal() == pytest.approx(3.90625)  # the HX711 input clamps
    h.fill = False
    h.vent = True
    p.advance(60.0)
    assert h.force == 0.0
    shift = 2.0 * (h._peak - 30000.0) / 20000.0 * 0.02
    assert shift > 0.01
    assert h.signal() == pytest.approx(shift, abs=1e-3)  # the zero moved for good


def test_supply_lost_stops_the_fill_and_the_check_valve_holds():
    p = plant.Plant(rig({"initial_mpa": 4.0}))
    h = p.holder(1)
    p.inject(1, "supply_lost", 0.0)
    assert h.faults == {"supply_lost": 0.0}
    h.fill = True
    p.advance(10.0)
    assert h.pressure == pytest.approx(4e6, rel=1e-6)  # nothing in, nothing back out
    assert h.gas_used == 0.0
    p.inject(1, "supply_lost", 3.0)  # falls to 3 MPa: still below the chamber
    p.advance(10.0)
    assert h.pressure == pytest.approx(4e6, rel=1e-6)
    p.inject(1, "supply_lost", 6.0)
    p.advance(60.0)
    assert h.pressure == pytest.approx(6e6, abs=1e3)
    p.clear(1, "supply_lost")
    p.advance(1.0)
    assert h.pressure > 6.5e6


def test_leak_fault_rate():
    p = plant.Plant(rig({"initial_mpa": 5.0}))
    p.inject(1, "leak", 20.0)
    p.advance(3600.0)
    # to 100 Pa: what leaves cools what stays by a few mK against the wall
    assert p.holder(1).pressure == pytest.approx(5e6 * 0.8 ** (1 / 24), abs=100.0)
    p.clear(1, "leak")
    before = p.holder(1).pressure
    p.advance(3600.0)
    # only the gas warming back by the few mK the leak's expansion cost
    assert 0.0 < p.holder(1).pressure - before < 100.0


def test_fast_leak_is_an_orifice_to_atmosphere():
    p = plant.Plant(rig({"initial_mpa": 5.0}))
    h = p.holder(1)
    p.inject(1, "fast_leak", 0.2)
    p.advance(0.01)
    mdot = choked_mdot(0.2, 0.8, 5e6 + P_ATM, T_OVEN)
    # adiabatic outflow from a rigid volume: dP/dt = -gamma R T mdot / V
    assert (5e6 - h.pressure) / 0.01 == pytest.approx(
        GAMMA * R_AIR * T_OVEN * mdot / 0.5e-3, rel=3e-3
    )
    p.advance(600.0)
    assert h.pressure < 1e3


def test_fill_stuck_open_runs_into_the_relief_valve():
    p = plant.Plant(rig())
    h = p.holder(1)
    p.inject(1, "fill_stuck_open", True)
    peak = 0.0
    opened = False
    for _ in range(3000):
        p.advance(0.02)
        peak = max(peak, h.pressure)
        opened = opened or h.relief_open
    row = dict(zip(p.truth_header(), p.truth_row(), strict=True))
    assert (row["ch1_fill"], row["ch1_fill_cmd"]) == (1, 0)
    assert opened
    assert 9e6 <= peak < 9.1e6  # relief at 9 MPa catches a 12 MPa supply
    assert 7.5e6 < h.pressure < 9.1e6


def test_fill_stuck_closed_and_exclusive_with_stuck_open():
    p = plant.Plant(rig())
    h = p.holder(1)
    p.inject(1, "fill_stuck_open", True)
    p.inject(1, "fill_stuck_closed", True)
    assert h.faults == {"fill_stuck_closed": True}
    h.fill = True
    p.advance(5.0)
    assert h.pressure == pytest.approx(0.0, abs=1e-6)


def test_fill_seat_leak_creeps_in_with_valves_closed():
    p = plant.Plant(rig())
    h = p.holder(1)
    p.inject(1, "fill_seat_leak", 0.02)
    p.advance(0.01)
    mdot = choked_mdot(0.02, 0.8, 12e6 + P_ATM, T_OVEN)
    assert h.pressure / 0.01 == pytest.approx(GAMMA * R_AIR * T_OVEN * mdot / 0.5e-3, rel=3e-3)
    assert h.gas_used == pytest.approx(mdot * 0.01, rel=1e-6)


def test_vent_stuck_closed_and_open():
    p = plant.Plant(rig({"initial_mpa": 3.0}))
    h = p.holder(1)
    p.inject(1, "vent_stuck_closed", True)
    h.vent = True
    p.advance(5.0)
    assert h.pressure == pytest.approx(3e6, rel=1e-9)
    p.inject(1, "vent_stuck_open", True)
    assert "vent_stuck_closed" not in h.faults
    h.vent = False
    p.advance(5.0)
    assert h.pressure < 2.5e6
    row = dict(zip(p.truth_header(), p.truth_row(), strict=True))
    assert (row["ch1_vent"], row["ch1_vent_cmd"]) == (1, 0)


def test_oven_swing_fault_sets_the_amplitude():
    p = plant.Plant(rig(oven_period_s=600.0))
    h = p.holder(1)
    p.inject(1, "oven_swing", 3.0)
    temps = []
    for _ in range(600):
        p.advance(1.0)
        temps.append(h.oven_temp)
    assert max(temps) == pytest.approx(T_OVEN + 3.0, abs=1e-3)
    assert min(temps) == pytest.approx(T_OVEN - 3.0, abs=1e-3)
    p.clear(1, "oven_swing")
    assert h.oven_temp == pytest.approx(T_OVEN)  # the plant's own swing is 0 here


def test_scheduled_faults_apply_clear_and_expire():
    params = rig({"initial_mpa": 5.0})
    params["channel"]["1"]["fault"] = [
        {"at_s": 10.0, "kind": "oven_step", "value": 2.0, "duration_s": 5.0},
        {"at_s": 20.0, "kind": "sensor_unplugged"},
        {"at_s": 30.0, "kind": "sensor_unplugged", "clear": True},
        {"at_s": 0.0, "kind": "supply_lost"},
    ]
    p = plant.Plant(params)
    h = p.holder(1)
    assert h.faults == {"supply_lost": 0.0}
    p.advance(12.0)  # stops at 10 s inside the call
    assert h.oven_temp == pytest.approx(T_OVEN + 2.0)
    p.advance(4.0)
    assert h.oven_temp == pytest.approx(T_OVEN)
    p.advance(5.0)
    assert h.signal() == 0.0
    p.advance(10.0)
    assert h.signal() > 0.5
    assert h.faults == {"supply_lost": 0.0}


def test_every_fault_is_documented_and_exercised_here():
    doc = (SIM / "PLANT.md").read_text()
    here = Path(__file__).read_text()
    for name in plant.FAULTS:
        assert f"`{name}`" in doc, name
        assert f'"{name}"' in here, name


# ---------------------------------------------------------------- mechanics


def uniaxial(**keys: object) -> plant.Plant:
    ch = {"kind": "uniaxial", "relax_pct": 0.0, "breathing_n": 0.0, "leak_pct_per_day": 0.0}
    ch.update(keys)
    return plant.Plant({"plant": {"oven_swing_k": 0.0}, "channel": {"3": ch}})


def test_cylinder_force_is_gas_force_less_spring_and_friction():
    p = uniaxial()
    h = p.holder(3)
    area = math.pi * 0.08**2
    h.fill = True
    pushes = []
    for _ in range(40):
        p.advance(0.02)
        pg = h.gas_pressure
        pushes.append((pg, h.force))
    for pg, force in pushes[5:]:
        g = pg * area
        assert force == pytest.approx(g - 100.0 - (20.0 + 0.02 * g), abs=0.01)
    assert h.pressure == pytest.approx(h.force / 78.54e-6)
    assert h.piston_mm > 0.0


def test_seal_friction_makes_the_piston_stick_then_slip_back():
    p = uniaxial()
    h = p.holder(3)
    area = math.pi * 0.08**2
    h.fill = True
    p.advance(0.8)
    h.fill = False
    p.advance(60.0)
    # the gas cooled after the fill and the piston slid back with it
    g = h.gas_pressure * area
    assert h.force == pytest.approx(g - 100.0 + (20.0 + 0.02 * g), abs=0.01)
    f0 = h.force
    # a little more gas: the gas force rises by less than twice the
    # friction, and the stuck piston passes none of it on
    h.fill = True
    p.advance(0.005)
    h.fill = False
    assert h.gas_pressure * area > g + 20.0
    assert h.force == f0
    # more: past the friction band the piston slides forward again
    h.fill = True
    p.advance(0.1)
    h.fill = False
    g = h.gas_pressure * area
    assert h.force == pytest.approx(g - 100.0 - (20.0 + 0.02 * g), abs=0.01)
    assert h.force > f0


def test_gas_spring_absorbs_breathing_that_a_bolted_stack_feels():
    def swing(p: plant.Plant, ch: int) -> float:
        forces = []
        for _ in range(600):
            p.advance(1.0)
            forces.append(p.holder(ch).force)
        return (max(forces) - min(forces)) / 2

    keys = {"breathing_n": 100.0, "breathing_period_s": 600.0, "thermal_n_per_k": 0.0}
    bolted = plant.Plant(
        {
            "plant": {"oven_swing_k": 0.0},
            "channel": {"4": {"kind": "monitor", "relax_pct": 0.0, **keys}},
        }
    )
    assert swing(bolted, 4) == pytest.approx(100.0, rel=0.01)
    free = uniaxial(friction_n=0.0, friction_pct=0.0, **keys)
    free.holder(3).fill = True
    free.advance(1.0)
    free.holder(3).fill = False
    free.advance(120.0)  # the gas back at oven temperature
    assert swing(free, 3) < 10.0  # the cylinder's gas is a soft spring
    sticky = uniaxial(**keys)
    sticky.holder(3).fill = True
    sticky.advance(1.0)
    sticky.holder(3).fill = False
    sticky.advance(60.0)
    assert swing(sticky, 3) == pytest.approx(100.0, rel=0.05)  # friction locks it


def test_monitor_preload_relaxes_exponentially():
    p = plant.Plant(
        {
            "plant": {"oven_swing_k": 0.0},
            "channel": {
                "4": {
                    "kind": "monitor",
                    "breathing_n": 0.0,
                    "relax_pct": 5.0,
                    "relax_tau_s": 86400.0,
                }
            },
        }
    )
    h = p.holder(4)
    assert h.force == pytest.approx(5000.0)
    p.advance(86400.0)
    assert h.force == pytest.approx(5000.0 * (1 - 0.05 * (1 - math.exp(-1))), rel=1e-6)
    p.advance(20 * 86400.0)
    assert h.force == pytest.approx(5000.0 * 0.95, rel=1e-6)
    assert h.pressure == pytest.approx(h.force / 78.54e-6)


def test_monitor_thermal_force_per_kelvin():
    p = plant.Plant(
        {
            "plant": {"oven_swing_k": 0.0},
            "channel": {
                "4": {"kind": "monitor", "breathing_n": 0.0, "relax_pct": 0.0, "stack_tau_s": 600.0}
            },
        }
    )
    h = p.holder(4)
    p.inject(4, "oven_step", 2.0)
    p.advance(600.0)
    assert h.force - 5000.0 == pytest.approx(40.0 * (1 - math.exp(-1)), rel=1e-6)
    p.advance(20 * 600.0)
    assert h.force - 5000.0 == pytest.approx(40.0, rel=1e-6)
    assert h.gas_temp == pytest.approx(T_OVEN + 2.0)  # the stack's temperature


def test_monitor_rejects_valve_faults_and_ignores_valve_commands():
    p = plant.Plant()
    with pytest.raises(ValueError, match="does not apply to a monitor"):
        p.inject(4, "fill_stuck_open", True)
    h = p.holder(4)
    h.fill = True
    p.advance(1.0)
    assert h.force == pytest.approx(5000.0, rel=1e-3)
    assert h.gas_used == 0.0


# ---------------------------------------------------------------- bad input


def iso(**keys: object) -> dict:
    return {"channel": {"1": {"kind": "isostatic", **keys}}}


def sensor(**keys: object) -> dict:
    return iso(sensor=keys)


def fault(**entry: object) -> dict:
    return iso(fault=[entry])


BAD_PARAMS = [
    ({"plants": {}}, "unknown top-level key 'plants'"),
    ({"plant": {"sead": 1}}, "plant: unknown key 'sead'"),
    ({"plant": {"oven_c": 500.0}}, "plant.oven_c = 500.0: expected a number in -40.0..300.0 C"),
    ({"plant": {"oven_c": float("nan")}}, "plant.oven_c"),
    ({"plant": {"seed": -1}}, "plant.seed = -1: expected an integer in 0..4294967295"),
    ({"plant": {"seed": 1.5}}, "plant.seed"),
    ({"plant": {"oven_period_s": "1h"}}, "plant.oven_period_s = '1h'"),
    ({"channel": {}}, "channel: expected tables"),
    ({"channel": {"0": {"kind": "isostatic"}}}, "channel.0: channel numbers are integers 1..64"),
    ({"channel": {"x": {"kind": "isostatic"}}}, "channel.x"),
    ({"channel": {"1": {"kind": "piston"}}}, "channel.1.kind = 'piston'"),
    (iso(volume_l=0), "channel.1.volume_l = 0: expected a number in 0.001..1000.0 L"),
    (iso(volume_l=True), "channel.1.volume_l = True"),
    (iso(volum_l=1.0), "channel.1: unknown key 'volum_l'"),
    (iso(bore_mm=100.0), "channel.1: unknown key 'bore_mm'"),
    ({"channel": {"3": {"kind": "uniaxial", "relax_pct": 95.0}}}, "channel.3.relax_pct = 95.0"),
    (sensor(signal="load_cell"), "channel.1.sensor.signal = 'load_cell'"),
    (sensor(rnage_mpa=5.0), "channel.1.sensor: unknown key 'rnage_mpa'"),
    (sensor(quantisation_bits=40), "channel.1.sensor.quantisation_bits = 40"),
    (
        {"channel": {"4": {"kind": "monitor", "sensor": {"signal": "current_4_20ma"}}}},
        "channel.4.sensor.signal",
    ),
    (iso(fault={"at_s": 1}), "channel.1.fault: expected an array"),
    (fault(at_s=1.0, kind="boom"), "channel.1.fault[0]: unknown fault 'boom'"),
    ({"channel": {"1": {"kind": "isostatic", "fault": [{"kind": "leak"}]}}}, "missing key 'at_s'"),
    (fault(at_s=1.0, kind="leak"), "fault[0]: fault 'leak' needs a value in 0.0..99.0 %/day"),
    (fault(at_s=1.0, kind="leak", value=150), "channel.1.fault[0].leak = 150"),
    (fault(at=1.0, at_s=1.0, kind="leak"), "channel.1.fault[0]: unknown key 'at'"),
    (fault(at_s=-1.0, kind="leak", value=1), "channel.1.fault[0].at_s = -1.0"),
    (fault(at_s=1.0, kind="leak", value=1, clear=True), "clear = true takes no value"),
    (fault(at_s=1.0, kind="sensor_stuck", value=2), "fault 'sensor_stuck' takes true"),
    (fault(at_s=1.0, kind="load_cell_saturated"), "does not apply to a isostatic holder"),
    (
        {"channel": {"4": {"kind": "monitor", "fault": [{"at_s": 1.0, "kind": "supply_lost"}]}}},
        "channel.4.fault[0]: fault 'supply_lost' does not apply to a monitor holder",
    ),
    (
        {"channel": {"4": {"kind": "monitor", "regulator": {}}}},
        "channel.4: unknown key 'regulator'",
    ),
    (iso(regulator={"tau": 1.0}), "channel.1.regulator: unknown key 'tau'"),
    (iso(regulator={"d_mm": 0.0}), "channel.1.regulator.d_mm = 0.0: expected a number in 0.01"),
    (iso(regulator=[]), "channel.1.regulator: expected a table"),
    (
        fault(at_s=1.0, kind="regulator_stuck"),
        "channel.1.fault[0]: fault 'regulator_stuck' needs a proportional regulator",
    ),
]


@pytest.mark.parametrize(("params", "message"), BAD_PARAMS, ids=[m for _, m in BAD_PARAMS])
def test_bad_params_are_rejected_naming_the_key(params, message):
    with pytest.raises(ValueError) as e:
        plant.Plant(params)
    assert message in str(e.value)


def test_partial_params_fill_in_defaults():
    p = plant.Plant({"plant": {"seed": 9}})
    assert p.channels == [1, 2, 3, 4]
    p = plant.Plant({"channel": {"2": {"kind": "isostatic", "volume_l": 2.0}}})
    assert p.channels == [2]
    assert p.holder(2).cfg["tau_s"] == 10.0
    assert p.holder(2).cfg["sensor"]["signal"] == "ratiometric_0.5_4.5v"
    p = plant.Plant({"plant": {"oven_c": 60.0}, "channel": {"1": {"kind": "isostatic"}}})
    assert p.holder(1).cfg["supply_temp_c"] == 60.0  # supply gas at oven temperature
    assert plant.Plant({"channel": {5: {"kind": "monitor"}}}).channels == [5]


def test_bad_runtime_input_is_rejected_and_changes_nothing():
    p = plant.Plant()
    p.inject(1, "leak", 5.0)
    before = p.truth_row()
    for call in (
        lambda: p.inject(1, "leak", 120.0),
        lambda: p.inject(1, "leak", "lots"),
        lambda: p.inject(1, "nonsense", True),
        lambda: p.inject(9, "leak", 1.0),
        lambda: p.inject(4, "supply_lost", 1.0),
        lambda: p.inject(1, "fast_leak", -1.0),
        lambda: p.advance(-0.1),
        lambda: p.advance(float("nan")),
        lambda: p.advance(float("inf")),
        lambda: p.advance("1"),
        lambda: p.advance_to(p.t - 1.0),
    ):
        with pytest.raises(ValueError):
            call()
    assert p.truth_row() == before
    assert p.holder(1).faults == {"leak": 5.0}


def test_unknown_channel():
    p = plant.Plant()
    for ch in (0, 5, "1", True):
        with pytest.raises(ValueError, match="unknown channel"):
            p.holder(ch)


def test_advance_zero_changes_nothing():
    p = plant.Plant()
    p.holder(1).fill = True
    before = p.truth_row()
    p.advance(0)
    assert p.truth_row() == before


# ---------------------------------------------------------------- proportional regulator


def regulated(**keys: object) -> plant.Plant:
    """Channel 1 with a proportional regulator (0-10 V for 0-10 MPa)."""
    return plant.Plant(rig({"regulator": keys}))


def test_regulator_outlet_lags_the_command_and_its_valve_seals_the_chamber():
    p = regulated(offset_pct_fs=0.0, span_pct=0.0)
    h, r = p.holder(1), p.holder(1).regulator
    r.command_v = 5.0
    p.advance(0.3)  # one time constant
    assert r.out == pytest.approx(5e6 * (1 - math.exp(-1)), rel=1e-9)
    p.advance(5.0)
    assert r.out == pytest.approx(5e6, rel=1e-6)
    # the isolation valve is shut: nothing reached the chamber or left the supply
    assert h.pressure == pytest.approx(0.0, abs=1e-6) and h.gas_used == 0.0


def test_regulator_fills_then_relieves_from_above():
    p = regulated(offset_pct_fs=0.0, span_pct=0.0)
    h, r = p.holder(1), p.holder(1).regulator
    r.valve = True
    r.command_v = 5.0
    p.advance(60.0)
    assert h.pressure == pytest.approx(5e6, abs=2e3)  # the gas still cools a little
    assert h.gas_used > 0.0
    used = h.gas_used
    r.command_v = 2.0
    low = 5e6
    for _ in range(1500):
        p.advance(0.04)
        low = min(low, h.pressure)
    # relieved to the outlet and never below it: the flow stops where they meet
    assert h.pressure == pytest.approx(2e6, abs=1e3)
    assert low > 2e6 - 1.0
    # relieving draws no gas; a few Pa of make-up where the pilot settles
    assert h.gas_used - used < 1e-7


def test_regulator_holds_the_chamber_against_the_oven():
    p = plant.Plant(rig({"regulator": {}, "initial_mpa": 0.0}, oven_period_s=600.0))
    p.inject(1, "oven_swing", 3.0)
    h, r = p.holder(1), p.holder(1).regulator
    r.valve = True
    r.command_v = 5.0
    p.advance(120.0)
    seen = []
    for _ in range(600):
        p.advance(1.0)
        seen.append(h.pressure)
    # a sealed chamber would swing +-1 %; the regulator fills and relieves
    assert max(seen) - min(seen) < 2e3


def test_regulator_offset_span_and_monitor():
    p = regulated()  # 0.3 % FS offset, 0.5 % span, monitor noise 0.05 % FS
    r = p.holder(1).regulator
    r.command_v = 5.0
    p.advance(5.0)
    assert r.target() == pytest.approx(5e6 * 1.005 + 3e4)
    assert r.out == pytest.approx(r.target(), abs=1.0)  # 5 s is 17 time constants
    # the monitor is the unit's own sensor: it agrees with the command, not
    # with the outlet it really delivers
    vs = [r.monitor_v() for _ in range(4000)]
    mean = sum(vs) / len(vs)
    rms = (sum((v - mean) ** 2 for v in vs) / len(vs)) ** 0.5
    assert mean == pytest.approx(5.0, abs=5e-4)
    assert rms == pytest.approx(0.005, rel=0.05)
    r.command_v = 12.0  # beyond the input range: it saturates
    assert r.target() == pytest.approx(10e6 * 1.005 + 3e4)
    r.command_v = -1.0  # below: the offset alone
    assert r.target() == pytest.approx(3e4)
    low = plant.Plant(rig({"regulator": {"offset_pct_fs": -1.0}})).holder(1).regulator
    assert low.target() == 0.0  # it relieves to atmosphere and no lower


def test_regulator_supply_lost_check_valve_holds_and_the_monitor_shows_it():
    p = regulated(offset_pct_fs=0.0, span_pct=0.0, monitor_noise_pct_fs=0.0)
    h, r = p.holder(1), p.holder(1).regulator
    r.valve = True
    r.command_v = 3.0
    p.advance(150.0)  # the gas back at wall temperature: sealed, it holds still
    p.inject(1, "regulator_supply_lost", 0.0)
    r.command_v = 5.0
    p.advance(30.0)
    assert h.pressure == pytest.approx(3e6, abs=3e3)  # nothing in, nothing back out
    assert r.monitor_v() == pytest.approx(h.pressure / 1e6, abs=0.003)  # not the 5 V asked
    p.inject(1, "regulator_supply_lost", 4.0)  # comes back to 4 MPa, below the command
    p.advance(60.0)
    assert h.pressure == pytest.approx(4e6, abs=3e3)
    p.clear(1, "regulator_supply_lost")
    p.inject(1, "supply_lost", 4.5)  # the holder's supply feeds the regulator too
    p.advance(60.0)
    assert h.pressure == pytest.approx(4.5e6, abs=3e3)


def test_regulator_stuck_and_monitor_open():
    p = regulated(offset_pct_fs=0.0, span_pct=0.0, monitor_noise_pct_fs=0.0)
    r = p.holder(1).regulator
    r.command_v = 3.0
    p.advance(5.0)
    p.inject(1, "regulator_stuck", True)
    r.command_v = 6.0
    p.advance(5.0)
    assert r.out == pytest.approx(3e6, rel=1e-4)
    p.clear(1, "regulator_stuck")
    p.advance(5.0)
    assert r.out == pytest.approx(6e6, rel=1e-4)
    assert r.monitor_v() == pytest.approx(6.0, rel=1e-4)
    p.inject(1, "regulator_monitor_open", True)
    assert r.monitor_v() == 0.0
    p.clear(1, "regulator_monitor_open")
    assert r.monitor_v() == pytest.approx(6.0, rel=1e-4)


def test_regulator_faults_need_a_regulator_and_truth_columns_only_where_fitted():
    p = plant.Plant()
    for fault in plant._REGULATOR_FAULTS:
        with pytest.raises(ValueError, match="needs a proportional regulator"):
            p.inject(1, fault, True if fault != "regulator_supply_lost" else 0.0)
    assert not any("reg_" in c for c in p.truth_header())
    p = plant.Plant(
        {"channel": {"1": {"kind": "isostatic", "regulator": {}}, "2": iso()["channel"]["1"]}}
    )
    p.holder(1).regulator.command_v = 2.5
    p.holder(1).regulator.valve = True
    p.advance(1.0)
    row = dict(zip(p.truth_header(), p.truth_row(), strict=True))
    assert not any(c.startswith("ch2_reg_") for c in row)
    assert row["ch1_reg_command_v"] == 2.5 and row["ch1_reg_valve"] == 1
    assert row["ch1_reg_target_pa"] == pytest.approx(2.5e6 * 1.005 + 3e4)
    assert row["ch1_reg_monitor_v"] is None  # not sampled yet: truth draws no noise
    assert 0 < row["ch1_reg_out_pa"] <= row["ch1_reg_target_pa"]


# ---------------------------------------------------------------- truth log, docs


def test_truth_header_and_row():
    p = plant.Plant()
    header, row = p.truth_header(), p.truth_row()
    assert len(header) == len(row) == 1 + 4 * 13
    assert header[0] == "t_s" and header[1] == "ch1_pressure_pa"
    assert len(set(header)) == len(header)
    p.inject(2, "leak", 3.0)
    p.inject(2, "sensor_stuck", True)
    row = dict(zip(p.truth_header(), p.truth_row(), strict=True))
    assert row["ch2_faults"] == "leak=3.0|sensor_stuck"
    assert row["ch4_force_n"] == pytest.approx(5000.0)
    assert row["ch1_force_n"] == 0.0


def test_plant_md_documents_every_key_and_column():
    doc = (SIM / "PLANT.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9_.]+)`", doc, re.M))
    keys = {k[0] for k in plant._PLANT_KEYS}
    for table in plant._CHANNEL_KEYS.values():
        keys |= {k[0] for k in table}
    for table in plant._SENSOR_KEYS.values():
        keys |= {k[0] for k in table}
    keys |= {k[0] for k in plant._REGULATOR_KEYS}
    keys |= {"kind", "at_s", "value", "duration_s", "clear"}
    missing = keys - rows
    assert not missing, f"PLANT.md has no table row for {sorted(missing)}"
    for column in plant._TRUTH_COLUMNS + plant._REGULATOR_COLUMNS:
        assert f"`chN_{column}`" in doc, column


# ---------------------------------------------------------------- both interpreters


def load_trace_module():
    spec = importlib.util.spec_from_file_location("plant_trace", TRACE_SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mpy_plant() -> Iterator[MicroPython]:
    mp = MicroPython(TRACE_SCRIPT)
    yield mp
    mp.close()


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b)) + 1e-300
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


def test_same_seed_same_trace_in_micropython_and_cpython(mpy_plant):
    scheduled = plant.default_params()
    scheduled["plant"]["seed"] = 12345
    scheduled["channel"]["2"]["fault"] = [
        {"at_s": 15.0, "kind": "oven_step", "value": 2.0, "duration_s": 10.0},
        {"at_s": 50.0, "kind": "vent_stuck_open"},
    ]
    mod = load_trace_module()
    scenario = mod.Scenario(plant, scheduled)
    mpy_plant(op="start", params=scheduled)
    compared = 0
    for _ in range(12):  # 60 s of 20 ms ticks, in 5 s pieces
        here = json.loads(json.dumps(scenario.run(5.0)))
        there = mpy_plant(op="run", seconds=5.0)
        assert len(here["signals"]) == len(there["signals"]) == 250 * 4
        for k, (a, b) in enumerate(zip(here["signals"], there["signals"], strict=True)):
            assert same(a, b), f"signal {k}: CPython {a!r}, MicroPython {b!r}"
        for a, b in zip(here["rows"], there["rows"], strict=True):
            assert same(a, b), f"truth row: CPython {a!r}, MicroPython {b!r}"
        compared += len(here["signals"])
    here = json.loads(json.dumps(scenario.finish()))
    there = mpy_plant(op="finish")
    assert same(here, there)
    # the scenario really went places: flows, faults, a long closed stretch
    final = dict(zip(here["rows"][0], here["rows"][1], strict=True))
    assert final["t_s"] == pytest.approx(3660.0)
    assert final["ch2_faults"] == "fast_leak=0.05|sensor_offset=1.0|vent_stuck_open"
    assert final["ch1_gas_used_kg"] > 0.005
    assert compared == 12000


def test_cost_per_advance(mpy_plant):
    """Figures only (run with -s to see them); speed is not asserted."""
    there = mpy_plant(op="bench", n=300)
    here = load_trace_module().bench(plant, 300)
    print()
    print("plant cost, default rig (4 channels), us per 20 ms advance / per signal():")
    for name in ("closed", "fill_ch1", "vent_ch1", "fill_ch3", "signal"):
        print(f"  {name:9s} MicroPython {there[name]:8.1f}   CPython {here[name]:8.1f}")
    assert all(v > 0 for v in [*there.values(), *here.values()])
