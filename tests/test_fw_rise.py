"""RISE_FILL_CLOSED only for gas that really comes in with the fill closed.

The firmware in real MicroPython against the plant (tests/mpy/sim_server.py).
On a healthy holder the settled pressure also rises with the fill closed:
the gas warms back after a step down (it cooled as it expanded), a hot oven
heats it. Those are over within a few thermal time constants; a leaking fill
seat keeps coming, and a vent stuck closed never lowers the pressure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_firmware_sim import MPA, Board, kinds

from conftest import ROOT, MicroPython

VENT = 2
RISE_BIT, EXCURSION_BIT = 3, 6
RISE, LATCHED = 1 << RISE_BIT, 1 << 15


@pytest.fixture(scope="module")
def sim_mp() -> Iterator[MicroPython]:
    mp = MicroPython(ROOT / "tests" / "mpy" / "sim_server.py", heap="8M")
    yield mp
    mp.close()


@pytest.fixture
def board(sim_mp: MicroPython, tmp_path) -> Board:
    return Board(sim_mp, str(tmp_path) + "/")


def raised(r: dict, bit: int) -> list[dict]:
    return [e for e in r["events"] if e["kind_name"] == "ALARM_RAISED" and e["code"] == bit]


def setpoint(board: Board, mpa: float) -> None:
    r = board.cmd("SET_SETPOINT", channel=1, pressure=int(mpa * MPA), rate=0)
    assert r["result"] == "OK", r


def test_step_down_then_holding_raises_no_rise(board: Board) -> None:
    # 5 -> 2 MPa: the vent cools the gas by several hundred kPa, which then
    # warms back with the fill closed; the regulator vents that too.
    board.boot()
    board.hold(5, 300)
    setpoint(board, 2)
    r = board.run(600)
    assert not raised(r, RISE_BIT), r["events"]
    assert not raised(r, EXCURSION_BIT), r["events"]
    assert r["alarms"] == 0 and r["mode"] == "HOLD"
    assert r["valves_seen"] & VENT
    assert abs(r["true"] - 2 * MPA) < 10_000
    assert r["p_min"] > 2 * MPA - 4_000  # approached from above


def test_hot_oven_is_not_a_leaking_fill(board: Board) -> None:
    # +60 K on the oven lifts a 5 MPa chamber by about 1 MPa within a minute;
    # the regulator vents it back. A bounded rise, not gas coming in.
    board.boot()
    board.hold(5, 300)
    board.inject(1, "oven_step", 60.0)
    r = board.run(600)
    assert not raised(r, RISE_BIT), r["events"]
    assert r["valves_seen"] & VENT
    assert r["mode"] == "HOLD" and r["alarms"] == 0
    assert abs(r["true"] - 5 * MPA) < 20_000


def test_leaking_fill_seat_alarms_and_is_vented_back(board: Board) -> None:
    # 0.01 mm from the 12 MPa supply: about 0.4 kPa/s with the fill closed.
    board.boot()
    board.hold(5, 300)
    board.inject(1, "fill_seat_leak", 0.01)
    r = board.run(400)
    ev = raised(r, RISE_BIT)
    assert ev, kinds(r["events"])
    assert r["alarms"] & RISE and not r["alarms"] & LATCHED
    assert r["mode"] == "HOLD"
    assert r["valves_seen"] & VENT
    # Vented back as it comes: never far above the setpoint, never below.
    assert r["p_max"] < 5 * MPA + 20_000
    assert r["p_min"] > 5 * MPA - 25_000
    assert abs(r["true"] - 5 * MPA) < 15_000


def test_vent_stuck_closed_is_flagged_and_clears_when_it_works(board: Board) -> None:
    board.boot()
    board.hold(5, 300)
    board.inject(1, "vent_stuck_closed", True)
    setpoint(board, 2)
    r = board.run(30)
    assert raised(r, RISE_BIT), kinds(r["events"])
    assert r["alarms"] & RISE and not r["alarms"] & LATCHED
    assert r["p_max"] < 5 * MPA + 50_000  # it never filled
    # The vent frees up: the step down happens and the alarm goes.
    board.mp(op="clear", ch=1, fault="vent_stuck_closed")
    r = board.run(120)
    assert not r["alarms"] & RISE
    assert "ALARM_CLEARED" in kinds(r["events"])
    assert abs(r["true"] - 2 * MPA) < 20_000
