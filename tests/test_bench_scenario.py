"""Bench scenario files: the library loads, bad files are refused with the
file and key named, and a plan carries what the file says in wire units."""

from __future__ import annotations

from pathlib import Path

import pytest

from isopress.bench import scenario
from isopress.bench.scenario import ScenarioError

from conftest import ROOT

LIBRARY = ROOT / "tests" / "scenarios"
FILES = sorted(LIBRARY.glob("*.toml"))
# The fault catalogue of the bench issue, each with its scenario file.
CATALOGUE = {
    "transducer unplugged": "fault_transducer_unplugged",
    "transducer stuck": "fault_transducer_stuck",
    "noise spikes": "fault_noise_spikes",
    "load cell saturated": "fault_load_cell_saturated",
    "supply lost": "fault_supply_lost",
    "slow leak": "fault_slow_leak",
    "fast leak": "fault_fast_leak",
    "fill valve stuck open": "fault_fill_stuck_open",
    "fill valve seat leaking": "fault_fill_seat_leak",
    "vent valve stuck closed": "fault_vent_stuck_closed",
    "over-pressure from heating": "fault_overpressure_heating",
    "host gone for an hour": "fault_host_gone",
    "board reset mid-profile": "fault_board_reset",
    "config file corrupted": "fault_config_corrupt",
    "serial bit errors": "fault_serial_bit_errors",
}
PROTOCOLS = ("activation", "uniaxial_steps", "press_recipe", "depress_repress", "week_hold")


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


MINIMAL = """
duration_s = 100.0
channels = [1]
[[protocol]]
channel = 1
steps = [{ set_mpa = 5.0, rate_mpa_s = 1.0 }]
"""


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_library_file_loads(path: Path) -> None:
    s = scenario.load(path)
    assert s.name == path.stem
    assert s.criteria, "a scenario without criteria proves nothing"
    assert s.description


def test_library_covers_protocols_and_every_fault() -> None:
    names = {p.stem for p in FILES}
    assert set(PROTOCOLS) <= names
    for fault, name in CATALOGUE.items():
        assert name in names, fault
        s = scenario.load(LIBRARY / f"{name}.toml")
        assert s.faults, f"{name} injects no fault"
    # The README lists every file of the library.
    readme = (LIBRARY / "README.md").read_text()
    for p in FILES:
        assert f"`{p.name}`" in readme, p.name


def test_week_hold_uses_a_coarse_tick_and_is_tagged_slow() -> None:
    s = scenario.load(LIBRARY / "week_hold.toml")
    assert s.duration_s == 7 * 86400
    assert s.config["0"]["tick_hz"] == 1
    assert "slow" in s.tags


def test_plan_in_wire_units(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
name = "units"
duration_s = 1000.0
channels = [1, 3]
[config]
tick_hz = 10
[config.1]
leak_window = 1800.0
[rig.channel.1]
initial_mpa = 2.5
[disturbance.oven]
swing_k = 2.0
step = [{ at_s = 50.0, offset_k = 5.0 }]
[cycler]
period_s = 100.0
count = 3
[[protocol]]
channel = 1
start_s = 5.0
steps = [
  { ramp_mpa = 5.0, rate_mpa_s = 0.25 },
  { hold_s = 60.5 },
  { wait = "cycle", cycles = 2, timeout_s = 30.0 },
]
[[fault]]
at_s = 200.0
channel = 1
kind = "leak"
value = 20.0
duration_s = 10.0
[[fault]]
at_s = 300.0
kind = "reset"
cause = "power"
[[action]]
at_s = 400.0
do = "setpoint"
channel = 3
target_mpa = 50.0
""",
    )
    s = scenario.load(p)
    plan = s.plan("isopress", tmp_path / "out", tmp_path / "flash")
    assert plan["duration_ms"] == 1_000_000
    assert plan["config"] == {"0": {"tick_hz": 10}, "1": {"leak_window": 1_800_000}}
    assert [c["channel"] for c in plan["board"]["channels"]] == [1, 3]
    assert sorted(plan["plant"]["channel"]) == ["1", "3"]
    assert plan["plant"]["channel"]["1"]["initial_mpa"] == 2.5
    assert plan["plant"]["plant"]["oven_swing_k"] == 2.0
    # plant faults and oven steps go into the plant's own schedule
    faults1 = plan["plant"]["channel"]["1"]["fault"]
    assert {"at_s": 200.0, "kind": "leak", "value": 20.0, "duration_s": 10.0} in faults1
    assert {"at_s": 50.0, "kind": "oven_step", "value": 5.0} in faults1
    assert {"at_s": 50.0, "kind": "oven_step", "value": 5.0} in plan["plant"]["channel"]["3"][
        "fault"
    ]
    steps = plan["protocols"]["1"]["steps"]
    assert steps == [
        [1, 5_000_000, 250_000, 0, 0],
        [2, 0, 0, 60_500, 0],
        [3, 0, 0, 30_000, 1],
        [3, 0, 0, 30_000, 1],
    ]
    assert plan["protocols"]["1"]["start_ms"] == 5000
    actions = plan["actions"]
    assert [a[:2] for a in actions] == [
        [100_000, "cycle"],
        [200_000, "cycle"],
        [300_000, "cycle"],
        [300_000, "reset"],
        [400_000, "command"],
    ]
    assert actions[3][2] == {"cause": 1}
    assert actions[4][2] == {"msg": "SET_SETPOINT", "values": [3, 50_000_000, 0]}
    assert s.faults == {1: 200.0, 3: 300.0}
    assert s.record == [1, 3]


def test_reference_rig_is_the_default(tmp_path: Path) -> None:
    s = scenario.load(write(tmp_path, MINIMAL))
    assert s.rig["channel"]["1"]["volume_l"] == 0.5
    assert s.rig["plant"]["oven_c"] == 30.0
    assert s.record == [1]
    assert s.options.band_pct == 0.5 and s.options.settle_s == 120.0


BAD = [
    ("duration_s = 10.0\nbogus = 1\n", "bogus: unknown key"),
    ("channels = [1]\n", "duration_s: missing"),
    ("duration_s = -1.0\n", "duration_s: = -1.0"),
    ("duration_s = 10.0\nchannels = [9]\n", "channels: = [9]"),
    (MINIMAL + "[rig.channel.1]\nvolume_l = 0.0\n", "channel.1.volume_l = 0.0"),
    (MINIMAL + "[rig.channel.2]\nvolume_l = 1.0\n", "rig.channel.2: not one of"),
    (
        "duration_s = 10.0\nchannels = [1]\n[[protocol]]\nchannel = 1\n"
        "steps = [{ set_mpa = 5.0 }]\n",
        "protocol[0].steps[0].rate_mpa_s: missing",
    ),
    (
        "duration_s = 10.0\nchannels = [1]\n[[protocol]]\nchannel = 1\n"
        "steps = [{ set_mpa = 5.0, hold_s = 3.0 }]\n",
        "exactly one of set_mpa",
    ),
    (
        "duration_s = 10.0\nchannels = [4]\n[[protocol]]\nchannel = 4\n"
        "steps = [{ hold_s = 1.0 }]\n",
        "channel 4 is a monitor",
    ),
    (
        "duration_s = 10.0\nchannels = [1]\n[[protocol]]\nchannel = 1\n"
        "steps = [{ wait = 'cycle' }]\n",
        "waits for cycles but no [cycler]",
    ),
    (
        "duration_s = 10.0\nchannels = [1]\n[cycler]\nperiod_s = 1.0\n[[protocol]]\nchannel = 1\n"
        "steps = [{ wait = 'cycle', cycles = 17 }, { hold_s = 1.0 }]\n",
        "a profile holds at most 17",
    ),
    (MINIMAL + "[[fault]]\nat_s = 5.0\nchannel = 1\nkind = 'melted'\n", "fault[0].kind"),
    (MINIMAL + "[[fault]]\nat_s = 5.0\nchannel = 1\nkind = 'leak'\n", "needs a value"),
    (
        MINIMAL + "[[fault]]\nat_s = 5.0\nchannel = 1\nkind = 'load_cell_saturated'\n",
        "does not apply to a isostatic holder",
    ),
    (MINIMAL + "[[fault]]\nat_s = 500.0\nchannel = 1\nkind = 'sensor_stuck'\n", "fault[0].at_s"),
    (MINIMAL + "[[fault]]\nat_s = 5.0\nkind = 'host_gone'\n", "needs a host on the link"),
    (MINIMAL + "[config]\ntick_hz = 2.5\n", "config.tick_hz: = 2.5: a whole number"),
    (MINIMAL + "[config]\ntick_hz = 500\n", "config.tick_hz: = 500"),
    (MINIMAL + "[config]\nleak_window = 60.0\n", "unknown board config key"),
    (MINIMAL + "[[criteria]]\nmetric = 'ch1.happiness'\nmax = 1\n", "not a metric"),
    (MINIMAL + "[[criteria]]\nmetric = 'ch3.rms_error_mpa'\nmax = 1\n", "not recorded"),
    (MINIMAL + "[[criteria]]\nmetric = 'ch1.rms_error_mpa'\n", "exactly one of max"),
    (MINIMAL + "[[criteria]]\nmetric = 'ch1.rms_error_mpa'\nmax = 'low'\n", "expected a number"),
    (MINIMAL + "[[action]]\nat_s = 1.0\ndo = 'dance'\nchannel = 1\n", "action[0].do"),
    (
        MINIMAL + "[[action]]\nat_s = 1.0\ndo = 'ack_alarm'\nchannel = 1\nalarms = ['NOPE']\n",
        "action[0].alarms",
    ),
    ("duration_s = 10.0\n[[[", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_scenario_named_and_refused(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        scenario.load(p)
    assert str(p) in str(e.value)
    assert message in str(e.value)


def test_missing_file_and_unknown_controller(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        scenario.load(tmp_path / "nope.toml")
    s = scenario.load(write(tmp_path, MINIMAL))
    with pytest.raises(ScenarioError, match="controller 'pid'"):
        s.plan("pid", tmp_path, tmp_path)


def test_find_expands_directories(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "b.toml")
    write(tmp_path, MINIMAL, "a.toml")
    (tmp_path / "notes.md").write_text("x")
    assert [p.name for p in scenario.find([str(tmp_path)])] == ["a.toml", "b.toml"]
