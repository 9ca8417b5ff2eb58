"""firmware/profile.py under real MicroPython, against a fake channel in
virtual time: the experiment profiles from DOMAIN.md, every validation rule,
the host and trigger waits, persistence across a reset, and the tick's
allocation. The virtual clock starts 3 s before the 2**30 wrap, so every run
crosses it."""

from __future__ import annotations

import binascii
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from isopress.protocol import wire

from conftest import ROOT, MicroPython

R = {name: code for code, name in wire.RESULTS}
EV = {name: code for code, name in wire.EVENTS}
SET, RAMP, HOLD, WAIT = 0, 1, 2, 3
NONE, HOST, TRIGGER = 0, 1, 2
MPA = 1_000_000
ISO = {"number": 1, "max_working": 10 * MPA, "ramp_up": MPA, "ramp_down": MPA // 2}
UNI = {"number": 3, "max_working": 150 * MPA, "ramp_up": 2 * MPA, "ramp_down": MPA}


@pytest.fixture(scope="module")
def mp() -> Iterator[MicroPython]:
    m = MicroPython(ROOT / "tests" / "mpy" / "profile_server.py")
    yield m
    m.close()


class Rig:
    """One channel and its profile in the MicroPython process."""

    def __init__(
        self, mp: MicroPython, fs: Path, channel: dict, setpoint: int = 0, **kw: object
    ) -> None:
        self.mp = mp
        self.file = fs / f"profile{channel['number']}.json"
        self.commands: list[list[int]] = []
        self.events: list[list[int]] = []
        self.state: dict = {}
        self("new", fs=str(fs) + "/", setpoint=setpoint, **channel, **kw)

    def __call__(self, op: str, **kw: object) -> dict:
        r = self.mp(op=op, **kw)
        self.commands += r["commands"]
        self.events += r["events"]
        self.state = r["state"]
        return r

    def load(self, steps: list[list[int]], **kw: object) -> tuple[int, int]:
        r = self("load", steps=steps, **kw)
        return r["result"], r["value"]

    def take(self) -> tuple[list[list[int]], list[list[int]]]:
        """Commands (ms, target, rate, source, result) and events
        (ms, kind, channel, code, a, b, c) since the last take."""
        out = self.commands, self.events
        self.commands, self.events = [], []
        return out

    def saved(self) -> dict:
        return json.loads(self.file.read_text().split("\n", 1)[1])


def step_events(events: list[list[int]]) -> list[tuple[int, int, int, int]]:
    """(ms, step, target, cycle) of each PROFILE_STEP."""
    return [(e[0], e[3], e[4], e[5]) for e in events if e[1] == EV["PROFILE_STEP"]]


def done_events(events: list[list[int]]) -> list[tuple[int, int, int]]:
    """(ms, steps run, reason) of each PROFILE_DONE."""
    return [(e[0], e[3], e[4]) for e in events if e[1] == EV["PROFILE_DONE"]]


# --- the experiments DOMAIN.md asks for ---


def test_five_mpa_until_the_event_then_two(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    assert rig.load([[SET, NONE, 5 * MPA, 0, 0], [WAIT, HOST, 0, 0, 0], [SET, NONE, 2 * MPA, 0, 0]])
    assert rig("start", from_step=0)["result"] == R["OK"]
    rig("run", ms=60_000)
    assert rig.state["setpoint"] == 5 * MPA  # reached at the channel's limit, 1 MPa/s
    assert rig.state["running"] and rig.state["step"] == 1 and rig.state["waiting"] == HOST
    rig("run", ms=3_600_000, dt=1000)  # an hour later it still waits
    assert rig.state["step"] == 1
    assert rig("advance", from_step=1, cycle=3)["result"] == R["OK"]
    rig("run", ms=60_000)
    commands, events = rig.take()
    assert [c[:4] for c in commands] == [[0, 5 * MPA, 0, 1], [3_660_000, 2 * MPA, 0, 1]]
    assert step_events(events) == [
        (0, 0, 5 * MPA, 0),
        (0, 1, 5 * MPA, 0),
        (3_660_000, 2, 2 * MPA, 3),
    ]
    assert done_events(events) == [(3_660_000, 3, 0)]
    assert not rig.state["running"] and rig.state["step"] == 3
    assert rig.state["setpoint"] == 2 * MPA


def test_press_recipe_ramp_hold_release(mp, tmp_path):
    # "ramp to 120 MPa at 1 MPa/s, hold 5 min, release at 0.2 MPa/s" (uniaxial)
    rig = Rig(mp, tmp_path, UNI)
    steps = [
        [RAMP, NONE, 120 * MPA, MPA, 0],
        [HOLD, NONE, 0, 0, 300_000],
        [RAMP, NONE, 0, 200_000, 0],
    ]
    assert rig.load(steps) == (R["OK"], 0)
    rig("start", from_step=0)
    rig("run", ms=60_000, dt=100)
    assert rig.state["setpoint"] == 60 * MPA  # half way, at the profile's rate
    rig("run", ms=2_000_000, dt=100, until="idle")
    commands, events = rig.take()
    assert [c[:4] for c in commands] == [[0, 120 * MPA, MPA, 1], [420_000, 0, 200_000, 1]]
    assert step_events(events) == [
        (0, 0, 120 * MPA, 0),
        (120_000, 1, 120 * MPA, 0),
        (420_000, 2, 0, 0),
    ]
    assert done_events(events) == [(1_020_000, 3, 0)]
    assert rig.state["setpoint"] == 0 and not rig.state["running"]


def test_step_up_every_two_cycles(mp, tmp_path):
    # "every 2 cycles step 6, 12, 25, 50, 100 MPa": the cycler advances.
    rig = Rig(mp, tmp_path, UNI)
    targets = [6, 12, 25, 50, 100]
    steps: list[list[int]] = []
    for t in targets:
        steps += [[SET, NONE, t * MPA, 0, 0], [WAIT, HOST, 0, 0, 0]]
    steps.pop()
    assert rig.load(steps) == (R["OK"], 0)
    rig("start", from_step=0)
    for k, cycle in enumerate((2, 4, 6, 8)):
        rig("run", ms=120_000, dt=100)
        assert rig.state["setpoint"] == targets[k] * MPA
        assert rig.state["waiting"] == HOST and rig.state["step"] == 2 * k + 1
        assert rig("advance", from_step=2 * k + 1, cycle=cycle)["result"] == R["OK"]
    rig("run", ms=120_000, dt=100)
    commands, events = rig.take()
    assert [c[1] for c in commands] == [t * MPA for t in targets]
    sets = [(s, a, b) for _, s, a, b in step_events(events) if s % 2 == 0]
    assert sets == [
        (0, 6 * MPA, 0),
        (2, 12 * MPA, 2),
        (4, 25 * MPA, 4),
        (6, 50 * MPA, 6),
        (8, 100 * MPA, 8),
    ]
    assert done_events(events)[0][1:] == (9, 0)
    assert rig.state["setpoint"] == 100 * MPA and rig.state["cycle"] == 8


# --- validation: every rule, and nothing changes on a rejection ---

GOOD = [[SET, NONE, 3 * MPA, 0, 0], [WAIT, HOST, 0, 0, 0], [SET, NONE, MPA, 0, 0]]


@pytest.mark.parametrize(
    ("steps", "result", "value"),
    [
        ([[4, NONE, MPA, 0, 0]], "BAD_PROFILE", 0),
        ([[SET, NONE, MPA, 0, 0], [WAIT, 3, 0, 0, 0]], "BAD_PROFILE", 1),
        ([[SET, NONE, MPA, 0, 0], [WAIT, NONE, 0, 0, 5000]], "BAD_PROFILE", 1),
        ([[SET, HOST, MPA, 0, 0]], "BAD_PROFILE", 0),
        ([[HOLD, TRIGGER, 0, 0, 1000]], "BAD_PROFILE", 0),
        ([[HOLD, NONE, MPA, 0, 1000]], "BAD_PROFILE", 0),  # a HOLD keeps the target in force
        ([[WAIT, HOST, 0, 1000, 0]], "BAD_PROFILE", 0),
        ([[RAMP, NONE, MPA, 0, 60_000]], "BAD_PROFILE", 0),  # a RAMP's time is its rate
        ([[SET, NONE, 10 * MPA + 1, 0, 0]], "OUT_OF_RANGE", 10 * MPA),
        ([[SET, NONE, -1, 0, 0]], "OUT_OF_RANGE", 0),
        ([[RAMP, NONE, 5 * MPA, -1, 0]], "OUT_OF_RANGE", 0),
        ([[RAMP, NONE, 5 * MPA, MPA + 1, 0]], "OUT_OF_RANGE", MPA),
        # rising at 0.8 MPa/s is fine, falling at it is over ramp_down (0.5 MPa/s)
        (
            [[RAMP, NONE, 5 * MPA, 800_000, 0], [RAMP, NONE, MPA, 800_000, 0]],
            "OUT_OF_RANGE",
            MPA // 2,
        ),
        (
            [[SET, NONE, 2 * MPA, 600_000, 0], [SET, NONE, MPA, 600_000, 0]],
            "OUT_OF_RANGE",
            MPA // 2,
        ),
        ([[HOLD, NONE, 0, 0, -1]], "OUT_OF_RANGE", 0),
        ([[WAIT, TRIGGER, 0, 0, 1 << 32]], "OUT_OF_RANGE", (1 << 32) - 1),
        ([[HOLD, NONE, 0, 0, 1000]] * 18, "BAD_PROFILE", 17),
        ([], "BAD_PROFILE", 17),
    ],
)
def test_bad_profile_is_refused_and_changes_nothing(mp, tmp_path, steps, result, value):
    rig = Rig(mp, tmp_path, ISO)
    assert rig.load(GOOD) == (R["OK"], 0)
    before = rig.file.read_bytes()
    assert rig.load(steps) == (R[result], value)
    assert rig.file.read_bytes() == before
    assert rig.state["n"] == 3
    rig("start", from_step=0)
    assert rig.take()[0][0][1] == 3 * MPA  # still the first profile


def test_longest_profile_and_zero_rates_are_accepted(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    steps = [[SET, NONE, (k % 5) * MPA, 0, 0] for k in range(16)] + [[WAIT, TRIGGER, 0, 0, 0]]
    assert rig.load(steps) == (R["OK"], 0)
    assert rig.state["n"] == 17
    steps = [
        [RAMP, NONE, 8 * MPA, MPA, 0],
        [RAMP, NONE, 0, MPA // 2, 0],
        [HOLD, NONE, 0, 0, (1 << 32) - 1],
    ]
    assert rig.load(steps) == (R["OK"], 0)


def test_load_names_its_channel(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    assert rig.load(GOOD, channel=2) == (R["UNKNOWN_CHANNEL"], 0)
    assert rig.state["n"] == 0 and not rig.file.exists()


def test_loading_while_running_is_refused(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load(GOOD)
    rig("start", from_step=0)
    before = rig.file.read_bytes()
    assert rig.load([[SET, NONE, 7 * MPA, 0, 0]]) == (R["BAD_STATE"], 0)
    assert rig.file.read_bytes() == before
    assert rig.state["n"] == 3 and rig.state["step"] == 1


def test_a_flash_that_refuses_the_write_refuses_the_load(mp, tmp_path):
    rig = Rig(mp, tmp_path / "missing", ISO)
    assert rig.load(GOOD) == (R["STORAGE"], 0)
    assert rig.state["n"] == 0
    assert rig("start", from_step=0)["result"] == R["BAD_STATE"]


# --- start, stop, advance ---


def test_start_needs_a_profile_and_a_step_it_has(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    assert rig("start", from_step=0)["result"] == R["BAD_STATE"]
    rig.load(GOOD)
    assert rig("start", from_step=3)["result"] == R["OUT_OF_RANGE"]
    assert rig("start", from_step=2)["result"] == R["OK"]
    commands, events = rig.take()
    assert [c[1] for c in commands] == [MPA]
    assert done_events(events) == [(0, 1, 0)]


def test_start_in_the_middle_of_a_run_is_refused(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load(GOOD)
    rig("start", from_step=0)
    rig.take()
    assert rig("start", from_step=0)["result"] == R["BAD_STATE"]
    assert rig.take() == ([], [])


def test_advance_is_idempotent_and_names_its_step(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    steps = [
        [SET, NONE, 5 * MPA, 0, 0],
        [WAIT, HOST, 0, 0, 0],
        [HOLD, NONE, 0, 0, 10_000],
        [WAIT, TRIGGER, 0, 0, 0],
        [SET, NONE, 2 * MPA, 0, 0],
    ]
    rig.load(steps)
    assert rig("advance", from_step=1, cycle=1)["result"] == R["BAD_STATE"]  # not started
    rig("start", from_step=0)
    assert rig("advance", from_step=0, cycle=1)["result"] == R["BAD_STATE"]  # waits at 1
    assert rig("advance", from_step=2, cycle=1)["result"] == R["BAD_STATE"]
    rig.take()
    assert rig("advance", from_step=1, cycle=12)["result"] == R["OK"]
    assert rig.state["step"] == 2
    assert step_events(rig.take()[1]) == [(0, 2, 5 * MPA, 12)]
    # the same advance again (a retry after a device reset): refused, no change
    assert rig("advance", from_step=1, cycle=12)["result"] == R["BAD_STATE"]
    assert rig("advance", from_step=2, cycle=13)["result"] == R["BAD_STATE"]  # a HOLD
    assert rig.take() == ([], [])
    assert rig.state["step"] == 2
    rig("run", ms=10_000)
    assert rig.state["step"] == 3 and rig.state["waiting"] == TRIGGER
    assert rig("advance", from_step=3, cycle=14)["result"] == R["BAD_STATE"]  # the trigger's wait
    assert rig.state["step"] == 3


def test_trigger_advances_only_a_trigger_wait(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    steps = [
        [SET, NONE, 3 * MPA, 0, 0],
        [WAIT, HOST, 0, 0, 0],
        [WAIT, TRIGGER, 0, 0, 0],
        [SET, NONE, 4 * MPA, 0, 0],
    ]
    rig.load(steps)
    rig("trigger")
    rig("start", from_step=0)
    rig("trigger")
    assert rig.state["step"] == 1  # a host wait ignores the trigger
    rig("advance", from_step=1, cycle=5)
    rig("run", ms=5000)
    assert rig.state["waiting"] == TRIGGER
    rig.take()
    rig("trigger")
    commands, events = rig.take()
    assert [c[1] for c in commands] == [4 * MPA]
    assert step_events(events) == [(5000, 3, 4 * MPA, 0)]
    assert done_events(events) == [(5000, 4, 0)]
    rig("trigger")
    assert rig.take() == ([], [])


def test_wait_times_out_and_goes_on(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[SET, NONE, 3 * MPA, 0, 0], [WAIT, HOST, 0, 0, 5000], [SET, NONE, MPA, 0, 0]])
    rig("start", from_step=0)
    rig("run", ms=4990)
    assert rig.state["step"] == 1
    rig("run", ms=10)
    assert rig.state["step"] == 3
    assert step_events(rig.take()[1])[-1] == (5000, 2, MPA, 0)


def test_an_advance_before_the_time_out_wins_once(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    steps = [[WAIT, TRIGGER, 0, 0, 5000], [HOLD, NONE, 0, 0, 20_000], [SET, NONE, MPA, 0, 0]]
    rig.load(steps)
    rig("start", from_step=0)
    rig("run", ms=2000)
    rig("trigger")
    rig("run", ms=10_000)
    assert rig.state["step"] == 1  # the time-out did not fire as well
    rig("run", ms=10_000)
    assert step_events(rig.take()[1]) == [(0, 0, 0, 0), (2000, 1, 0, 0), (22_000, 2, MPA, 0)]


def test_stop_holds_the_present_setpoint(mp, tmp_path):
    rig = Rig(mp, tmp_path, UNI)
    rig.load([[RAMP, NONE, 100 * MPA, MPA, 0], [SET, NONE, 0, 0, 0]])
    rig("start", from_step=0)
    rig("run", ms=30_000, dt=100)
    rig.take()
    assert rig("stop")["result"] == R["OK"]
    assert rig.take()[0] == [[30_000, 30 * MPA, 0, 1, 0]]
    rig("run", ms=60_000, dt=100)
    assert rig.state["setpoint"] == 30 * MPA and not rig.state["running"]
    assert rig.state["step"] == 0
    assert rig("stop")["result"] == R["OK"]  # stopping a stopped profile changes nothing
    assert rig.take() == ([], [])
    assert rig.saved()["run"] == 0
    assert rig("start", from_step=0)["result"] == R["OK"]  # and it can run again
    rig("run", ms=100_000, dt=100, until="idle")
    commands, _ = rig.take()
    assert [c[:3] for c in commands] == [[90_000, 100 * MPA, MPA], [160_000, 0, 0]]


def test_a_host_setpoint_takes_the_channel_from_the_profile(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[SET, NONE, 5 * MPA, 0, 0], [HOLD, NONE, 0, 0, 60_000], [SET, NONE, 0, 0, 0]])
    rig("start", from_step=0)
    rig("run", ms=10_000)
    rig("host_set", target=4 * MPA)
    rig("run", ms=120_000)
    commands, events = rig.take()
    assert [c[1] for c in commands] == [5 * MPA, 4 * MPA]  # the profile never set 0 MPa
    assert done_events(events) == [(10_010, 2, R["BAD_STATE"])]
    assert not rig.state["running"] and rig.state["setpoint"] == 4 * MPA


def test_a_step_the_channel_refuses_ends_the_run(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load(GOOD)
    rig("latch", on=True)
    assert rig("start", from_step=0)["result"] == R["LATCHED"]
    assert not rig.state["running"]
    rig("latch", on=False)
    assert rig("start", from_step=0)["result"] == R["OK"]
    rig("latch", on=True)
    rig.take()
    assert rig("advance", from_step=1, cycle=2)["result"] == R["OK"]  # the wait was left
    commands, events = rig.take()
    assert commands[0][4] == R["LATCHED"]
    assert done_events(events) == [(0, 2, R["LATCHED"])]  # SET and WAIT ran
    assert not rig.state["running"] and rig.state["step"] == 2


# --- persistence and a reset in the middle of each kind of step ---


def test_state_is_saved_on_load_start_and_step_change(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load(GOOD)
    assert rig.saved() == {
        "v": 1,
        "channel": 1,
        "steps": GOOD,
        "run": 0,
        "step": 0,
        "cycle": 0,
        "hold": 0,
        "hold_rate": 0,
    }
    rig("start", from_step=0)
    assert rig.saved()["run"] == 1 and rig.saved()["step"] == 1
    assert rig.saved()["hold"] == 3 * MPA
    rig("advance", from_step=1, cycle=9)
    assert rig.saved()["run"] == 0 and rig.saved()["step"] == 3 and rig.saved()["cycle"] == 9


def test_reset_during_a_rising_ramp_never_drops_the_pressure(mp, tmp_path):
    rig = Rig(mp, tmp_path, UNI)
    rig.load([[RAMP, NONE, 120 * MPA, MPA, 0], [HOLD, NONE, 0, 0, 300_000]])
    rig("start", from_step=0)
    rig("run", ms=25_000, dt=100)
    at_reset = rig.state["setpoint"]
    assert at_reset == 25 * MPA
    hold = rig.saved()["hold"]
    assert at_reset <= hold <= at_reset + 10 * MPA  # at most 10 s of ramp ahead
    rig.take()
    rig("reset", setpoint=at_reset)  # the channel comes back at the measured pressure
    commands, events = rig.take()
    assert commands == [[25_000, hold, MPA, 1, 0]]
    assert step_events(events) == [(25_000, 0, hold, 0)]
    assert not rig.state["running"] and rig.state["step"] == 0
    rig("run", ms=60_000, dt=100)
    assert rig.state["setpoint"] == hold  # paused: the ramp does not go on by itself
    assert rig.take() == ([], [])
    assert rig("start", from_step=0)["result"] == R["OK"]
    rig("run", ms=200_000, dt=100, until="step", step=1)
    assert rig.state["setpoint"] == 120 * MPA and rig.state["running"]


def test_reset_during_a_falling_ramp_restores_a_setpoint_above_the_pressure(mp, tmp_path):
    rig = Rig(mp, tmp_path, UNI, setpoint=120 * MPA)
    rig.load([[RAMP, NONE, 0, 200_000, 0]])
    rig("start", from_step=0)
    for _ in range(4):
        rig("run", ms=7_000, dt=100)
        at_reset = rig.state["setpoint"]
        hold = rig.saved()["hold"]
        assert at_reset <= hold <= at_reset + 2 * MPA  # 10 s at 0.2 MPa/s
    rig.take()
    rig("reset", setpoint=at_reset)
    commands, events = rig.take()
    assert commands == [[28_000, hold, 0, 1, 0]]
    assert step_events(events) == [(28_000, 0, hold, 0)]


def test_reset_during_a_hold_pauses_it_and_start_restarts_it_in_full(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[SET, NONE, 5 * MPA, 0, 0], [HOLD, NONE, 0, 0, 60_000], [SET, NONE, 2 * MPA, 0, 0]])
    rig("start", from_step=0)
    rig("run", ms=30_000)
    rig.take()
    rig("reset", setpoint=5 * MPA)
    commands, events = rig.take()
    assert commands == [[30_000, 5 * MPA, 0, 1, 0]]
    assert step_events(events) == [(30_000, 1, 5 * MPA, 0)]
    rig("run", ms=120_000)
    assert rig.state["step"] == 1 and not rig.state["running"]
    assert rig.take() == ([], [])
    rig("start", from_step=1)
    rig("run", ms=59_990)
    assert rig.state["step"] == 1
    rig("run", ms=10)
    commands, events = rig.take()
    assert commands[-1][:2] == [210_000, 2 * MPA]


def test_reset_during_a_host_wait_keeps_waiting(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[SET, NONE, 5 * MPA, 0, 0], [WAIT, HOST, 0, 0, 0], [SET, NONE, 2 * MPA, 0, 0]])
    rig("start", from_step=0)
    rig("run", ms=20_000)
    rig.take()
    rig("reset", setpoint=5 * MPA)
    commands, events = rig.take()
    assert commands == [[20_000, 5 * MPA, 0, 1, 0]]
    assert step_events(events) == [(20_000, 1, 5 * MPA, 0)]
    assert rig.state["waiting"] == HOST and not rig.state["running"]
    # The cycler's advance at its next cycle boundary still moves the profile on.
    assert rig("advance", from_step=1, cycle=6)["result"] == R["OK"]
    commands, events = rig.take()
    assert [c[1] for c in commands] == [2 * MPA]
    assert step_events(events) == [(20_000, 2, 2 * MPA, 6)]
    assert done_events(events) == [(20_000, 1, 0)]


def test_reset_during_a_timed_trigger_wait(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load(
        [[SET, NONE, 4 * MPA, 0, 0], [WAIT, TRIGGER, 0, 0, 30_000], [SET, NONE, 2 * MPA, 0, 0]]
    )
    rig("start", from_step=0)
    rig("run", ms=20_000)
    rig("reset", setpoint=4 * MPA)
    rig("run", ms=60_000)  # the time-out does not run while paused
    assert rig.state["step"] == 1 and rig.state["waiting"] == TRIGGER
    rig.take()
    rig("trigger")
    commands, _ = rig.take()
    assert [c[1] for c in commands] == [2 * MPA]


def test_a_restored_hold_waits_for_the_channels_first_sample(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[SET, NONE, 5 * MPA, 0, 0], [HOLD, NONE, 0, 0, 60_000]])
    rig("start", from_step=0)
    rig("run", ms=10_000)
    rig.take()
    rig("reset", setpoint=5 * MPA, measured=False)
    rig("run", ms=30)
    commands, events = rig.take()
    assert commands == [[10_000 + t, 5 * MPA, 0, 1, R["BAD_STATE"]] for t in (0, 10, 20, 30)]
    assert step_events(events) == [(10_000, 1, 5 * MPA, 0)]
    rig("measured")
    rig("run", ms=1000)
    assert rig.take()[0] == [[10_040, 5 * MPA, 0, 1, R["OK"]]]  # asked once more, then done


def test_a_restored_ramp_hold_on_the_far_side_drops_the_steps_rate(mp, tmp_path):
    # Rising at 1.5 MPa/s, which is over ramp_down: if the channel comes back
    # above the saved point, the hold is asked for at the channel's own limit.
    rig = Rig(mp, tmp_path, UNI)
    rig.load([[RAMP, NONE, 120 * MPA, 1_500_000, 0]])
    rig("start", from_step=0)
    rig("run", ms=25_000, dt=100)
    hold = rig.saved()["hold"]
    rig.take()
    rig("reset", setpoint=hold + 5 * MPA)
    commands, _ = rig.take()
    assert commands == [
        [25_000, hold, 1_500_000, 1, R["OUT_OF_RANGE"]],
        [25_000, hold, 0, 1, R["OK"]],
    ]
    rig("run", ms=10_000)
    assert rig.take() == ([], [])


def test_two_resets_in_a_row_come_back_to_the_same_step(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[SET, NONE, 5 * MPA, 0, 0], [HOLD, NONE, 0, 0, 60_000]])
    rig("start", from_step=0)
    rig("reset", setpoint=3 * MPA)
    assert rig.saved()["run"] == 2  # PAUSED
    rig.take()
    rig("reset", setpoint=5 * MPA)
    commands, events = rig.take()
    assert commands == [[0, 5 * MPA, 0, 1, 0]]
    assert step_events(events) == [(0, 1, 5 * MPA, 0)]


def test_a_stopped_or_finished_profile_is_not_replayed(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[SET, NONE, 5 * MPA, 0, 0], [HOLD, NONE, 0, 0, 1000]])
    rig("start", from_step=0)
    rig("stop")
    rig.take()
    rig("reset", setpoint=5 * MPA)
    assert rig.state["n"] == 2 and rig.state["restore_status"] == 0
    assert rig.take() == ([], [])
    rig("start", from_step=0)
    rig("run", ms=2000)
    assert done_events(rig.take()[1]) == [(1000, 2, 0)]
    rig("reset", setpoint=5 * MPA)
    assert rig.take() == ([], [])
    assert not rig.state["running"] and rig.state["step"] == 2


@pytest.mark.parametrize(
    ("text", "status"),
    [
        (None, 1),  # MISSING
        ("00000000\n{}", 2),  # CRC
        ("not a checked file", 3),  # UNREADABLE
    ],
)
def test_a_missing_or_damaged_file_restores_nothing(mp, tmp_path, text, status):
    rig = Rig(mp, tmp_path, ISO, setpoint=5 * MPA)
    if text is not None:
        rig.file.write_text(text)
    rig("reset", setpoint=5 * MPA)
    assert rig.state["restore_status"] == status and rig.state["n"] == 0
    assert rig.take() == ([], [])


def test_a_well_checked_file_with_nonsense_inside_restores_nothing(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO)
    rig.load(GOOD)
    rig("start", from_step=0)
    good = rig.saved()
    for bad in (
        {**good, "steps": [[9, 0, 0, 0, 0]]},
        {**good, "step": 7},
        {**good, "hold": "5"},
        {**good, "run": 5},
        [1, 2, 3],
    ):
        body = json.dumps(bad)
        crc = binascii.crc32(body.encode())
        rig.file.write_text(f"{crc:08x}\n{body}")
        rig.take()
        rig("reset", setpoint=3 * MPA)
        assert rig.state["restore_status"] == 3, bad
        assert rig.take() == ([], [])


# --- the tick: no allocation, wrapping ticks, long durations ---


@pytest.mark.parametrize(
    ("steps", "settle_ms"),
    [
        ([[RAMP, NONE, 100 * MPA, MPA, 0]], 10),  # between two saves of the ramp
        ([[RAMP, NONE, 0, MPA, 0]], 10),
        ([[HOLD, NONE, 0, 0, 600_000]], 10),
        ([[WAIT, HOST, 0, 0, 600_000]], 10),
        ([[WAIT, TRIGGER, 0, 0, 0]], 10),
    ],
)
def test_tick_allocates_nothing(mp, tmp_path, steps, settle_ms):
    rig = Rig(mp, tmp_path, UNI, setpoint=50 * MPA)
    rig.load([*steps, [SET, NONE, MPA, 0, 0]])
    rig("start", from_step=0)
    rig("run", ms=settle_ms)
    r = rig("alloc", ms=5000, dt=10)
    assert r["ticks"] == 500
    assert r["bytes"] == 0
    assert rig.state["running"] and rig.state["step"] == 0


def test_tick_allocates_nothing_when_not_running(mp, tmp_path):
    rig = Rig(mp, tmp_path, UNI)
    rig.load(GOOD)
    assert rig("alloc", ms=5000, dt=10)["bytes"] == 0


def test_hold_across_the_tick_wrap(mp, tmp_path):
    rig = Rig(mp, tmp_path, ISO, t0=(1 << 30) - 1000)
    rig.load([[HOLD, NONE, 0, 0, 5000], [SET, NONE, MPA, 0, 0]])
    rig("start", from_step=0)
    r = rig("run", ms=10_000, dt=7)
    assert r["wrapped"]
    assert done_events(rig.take()[1]) == [(5005, 2, 0)]  # the first 7 ms tick at or past 5 s


def test_a_hold_longer_than_half_the_tick_period(mp, tmp_path):
    # 7 days is more than 2**29 ms, the most one ticks_diff can measure.
    week = 7 * 24 * 3_600_000
    rig = Rig(mp, tmp_path, ISO)
    rig.load([[HOLD, NONE, 0, 0, week], [SET, NONE, MPA, 0, 0]])
    rig("start", from_step=0)
    rig("run", ms=week - 60_000, dt=60_000)
    assert rig.state["step"] == 0
    rig("run", ms=60_000, dt=60_000)
    assert done_events(rig.take()[1]) == [(week, 2, 0)]
