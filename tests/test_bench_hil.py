"""The hardware-in-the-loop interface (docs/hil.md) against the simulated
board: the plant on the host feeds the board's sensors over the HIL line and
takes its valve outputs, in lock-step and in real time; the line's rules."""

from __future__ import annotations

import json
import os
import select
import tty
from pathlib import Path

import pytest

from isopress import hil
from isopress.bench import metrics, runner, scenario
from isopress.sim import plant

SCENARIO = """
description = "HIL: hold, step down, transducer unplugged"
duration_s = 150.0
channels = [1, 3]

[rig.channel.1]
initial_mpa = 4.0

[[protocol]]
channel = 1
steps = [
  { set_mpa = 5.0, rate_mpa_s = 1.0 },
  { hold_s = 60.0 },
  { set_mpa = 3.0, rate_mpa_s = 0.5 },
]

[[protocol]]
channel = 3
steps = [{ set_mpa = 30.0, rate_mpa_s = 2.0 }]

[metrics]
settle_s = 30.0

[[fault]]
at_s = 120.0
channel = 1
kind = "sensor_unplugged"

[[criteria]]
metric = "ch1.alarms_raised"
includes = ["SENSOR_FAULT"]

[[criteria]]
metric = "ch1.time_to_act_s"
max = 1.0

[[criteria]]
metric = "ch1.vent_opens_after_act"
max = 0

[[criteria]]
metric = "ch1.step_down_undershoot_mpa"
max = 0.01

[[criteria]]
metric = "ch3.true_end_mpa"
min = 28.0
"""


def run_bench(tmp_path: Path, *extra: str) -> dict:
    p = tmp_path / "hilcheck.toml"
    p.write_text(SCENARIO)
    out = tmp_path / "r.json"
    code = runner.main(["run", str(p), "--json", str(out), "--quiet", *extra])
    data = json.loads(out.read_text())[0]
    assert code == 0, data
    return data


def test_lockstep_meets_the_criteria_like_the_simulator(tmp_path: Path) -> None:
    via_hil = run_bench(tmp_path, "--hil", "sim-lockstep")
    assert via_hil["hil"] == "sim-lockstep"
    in_process = run_bench(tmp_path)
    a, b = via_hil["metrics"], in_process["metrics"]
    # Not the same noise draws (the host samples every channel at each
    # question), so not the same numbers; the same behaviour.
    for m in (a, b):
        assert "SENSOR_FAULT" in m["ch1.alarms_raised"]
        assert m["ch1.mode_end"] == "ISOLATED"
        assert m["ch1.rms_error_mpa"] < 0.02
        assert m["ch1.target_end_mpa"] == 3.0
        assert abs(m["ch3.true_end_mpa"] - 30.0) < 2.0
    assert abs(a["ch1.time_to_act_s"] - b["ch1.time_to_act_s"]) <= 0.15
    assert abs(a["ch1.true_at_fault_mpa"] - b["ch1.true_at_fault_mpa"]) < 0.01
    assert a["ch1.fill_opens"] > 0 and a["ch1.vent_opens"] > 0
    assert "BOOT" in a["ch1.events_seen"] and "PROFILE_DONE" in a["ch1.events_seen"]


def test_realtime_regulates(tmp_path: Path) -> None:
    p = tmp_path / "rt.toml"
    p.write_text(
        "duration_s = 60.0\nchannels = [1]\n[rig.channel.1]\ninitial_mpa = 4.5\n"
        "[[protocol]]\nchannel = 1\nsteps = [{ set_mpa = 5.0, rate_mpa_s = 1.0 }]\n"
        "[metrics]\nsettle_s = 20.0\n"
        "[[criteria]]\nmetric = 'ch1.true_end_mpa'\nmin = 4.95\n"
        "[[criteria]]\nmetric = 'ch1.true_end_mpa'\nmax = 5.05\n"
    )
    out = tmp_path / "r.json"
    code = runner.main(
        ["run", str(p), "--hil", "sim-realtime", "--hil-speed", "5", "--json", str(out), "--quiet"]
    )
    r = json.loads(out.read_text())[0]
    assert code == 0, r
    m = r["metrics"]
    assert m["run.wall_s"] == pytest.approx(12.0, abs=3.0)  # 60 s at 5x
    assert m["ch1.fill_opens"] > 0


# ---- the line's rules, against a board the test plays ---------------------------


class FakeBoard:
    """The test on the far side of the HIL line and of the serial link."""

    def __init__(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        self.hil = hil.LineLink(master)
        self.far = slave
        r, w = os.pipe()
        self.cmd_out = r
        self._w = w
        os.set_blocking(r, False)
        self.written = b""

    def say(self, *lines: str) -> None:
        os.write(self.far, "".join(x + "\n" for x in lines).encode())

    def heard(self) -> str:
        # everything the host wrote: the pty may hand it over in pieces
        out = b""
        while select.select([self.far], [], [], 0.2)[0]:
            data = os.read(self.far, 65536)
            if not data:
                break
            out += data
        return out.decode()

    def read_link(self) -> bytes:
        try:
            return os.read(self.cmd_out, 65536)
        except BlockingIOError:
            return b""

    def write_link(self, data: bytes) -> None:
        self.written += data

    def alive(self) -> bool:
        return True

    def stderr(self) -> str:
        return ""


def plan_for(tmp_path: Path, text: str = "duration_s = 5.0\nchannels = [1]\n") -> dict:
    p = tmp_path / "p.toml"
    p.write_text(text)
    s = scenario.load(p)
    return s.plan("isopress", tmp_path, tmp_path / "flash")


def test_plant_server_counts_valves_and_formats_signals() -> None:
    p = plant.Plant()
    server = hil.PlantServer(p, [1, 3])
    server.valve(1, True, False)
    server.valve(1, True, False)
    server.valve(1, False, True)
    assert server.opens[1] == [1, 1]
    assert p.holder(1).vent and not p.holder(1).fill
    line = server.signals(1234).split()
    assert line[:2] == ["S", "1234"]
    ch, sig, sup = line[2].split(":")
    assert ch == "1" and 0.4 < float(sig) < 0.6 and float(sup) == 5.0
    p.inject(3, "sensor_unplugged", True)
    assert server.signals(1235).split()[3].split(":")[1] == "-"  # the HX711 is gone
    with pytest.raises(ValueError, match="unknown channel 9"):
        hil.PlantServer(p, [9])


def test_board_with_other_channels_is_refused(tmp_path: Path) -> None:
    board = FakeBoard()
    board.say("H isopress-hil 1 1,2")
    run = hil.HilRun(plan_for(tmp_path), "lockstep")
    with pytest.raises(hil.HilError, match=r"channels \[1, 2\], the plan has \[1\]"):
        run.run(board, tmp_path)  # type: ignore[arg-type]
    assert board.heard().startswith("H isopress-hil 1 lockstep\n")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["H isopress-hil 2 1"], "hello is"),
        (["H isopress-hil 1 1", "Q 100", "Q 50"], "asked for time 50 ms after 100 ms"),
        (["H isopress-hil 1 1", "V 10 7 1 0"], "channel 7"),
        (["H isopress-hil 1 1", "hello there"], "unexpected HIL line"),
    ],
)
def test_line_rules(tmp_path: Path, lines: list[str], message: str) -> None:
    board = FakeBoard()
    board.say(*lines)
    run = hil.HilRun(plan_for(tmp_path), "lockstep")
    with pytest.raises(hil.HilError, match=message):
        run.run(board, tmp_path)  # type: ignore[arg-type]


def test_lockstep_answers_each_question_at_its_time(tmp_path: Path) -> None:
    board = FakeBoard()
    board.say("H isopress-hil 1 1", "V 0 1 1 0", "V 5 1 0 0", "Q 50", "Q 5000")
    run = hil.HilRun(plan_for(tmp_path), "lockstep")
    result = run.run(board, tmp_path)  # type: ignore[arg-type]
    said = board.heard().splitlines()
    assert said[0] == "H isopress-hil 1 lockstep"
    assert [x.split()[:2] for x in said[1:]] == [["S", "0"], ["S", "50"], ["S", "5000"]]
    # 5 ms of fill from 0 gauge: about 5 kPa into the 0.5 L chamber
    assert 2e3 < run.plant.holder(1).pressure < 9e3
    assert result["rows"] == 2
    tr = metrics.read_trace(tmp_path / "trace.bin", [1])
    assert list(tr.t_s) == [0.05, 5.0]
    assert list(tr.ch[1]["fill_opens"]) == [1, 1]
    assert tr.ch[1]["valves"][0] & 1  # the fill was open during the first step


def test_plans_that_act_on_the_board_are_refused(tmp_path: Path) -> None:
    plan = plan_for(
        tmp_path,
        "duration_s = 50.0\nchannels = [1]\n[[fault]]\nat_s = 5.0\nkind = 'reset'\n",
    )
    with pytest.raises(hil.HilError, match="simulator only"):
        hil.HilRun(plan, "lockstep")
    with pytest.raises(hil.HilError, match="mode 'fast'"):
        hil.HilRun(plan_for(tmp_path), "fast")
