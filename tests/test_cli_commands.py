"""The user-facing commands: status, set, profile, isolate, vent, ack, config,
leak-test, monitor and calibrate, run as `isopress ...` against the real
firmware in MicroPython (SimProcess) and a real bridge with its HTTP API.

The simulated board runs at SPEED times real time, so a minute of the
board's time is three seconds of ours. Its plant has no oven swing (so a
minute's leak-down is a straight line) and a fast leak on channel 2 (99 %
of the gauge pressure per day: about 160 Pa/s at 3 MPa) with a quiet sensor.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isopress import calibrate, cli, commands, monitor
from isopress.client import ApiError, Client, StreamMessage
from isopress.demo import BridgeThread
from isopress.link import Link
from isopress.sim import plant as plant_mod
from isopress.simulator import SimProcess

SPEED = 20.0
TOKEN = "cli-test-token"
COMMANDS = [
    "status", "set", "profile", "isolate", "vent", "ack", "config", "leak-test",
    "monitor", "calibrate", "demo", "events",
]  # fmt: skip


def run(argv: list[str]) -> int:
    """`isopress argv` in this process; argparse's own exits become their codes."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def wait_for(cond: Any, timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
        except ApiError:  # e.g. the channels are not known until the board's HELLO
            v = None
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


# -- without a bridge -------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    assert run([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: isopress {command}" in out
    assert "--help" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["set", "rig", "0", "2"], "channels are numbered from 1"),
        (["set", "rig", "x", "2"], "numbered 1, 2"),
        (["set", "rig", "1", "-1"], "must be 0 or more"),
        (["set", "rig", "1", "two"], "is not a number"),
        (["set", "rig", "1", "2", "--unit", "atm"], "the units are MPa, kPa, bar, psi"),
        (["set", "rig", "1", "2", "--rate", "0"], "must be above 0"),
        (["set", "rig", "1"], "required"),
        (["profile", "load", "rig", "1"], "needs DEVICE CHANNEL FILE.toml"),
        (["profile", "start", "rig"], "needs DEVICE CHANNEL"),
        (["profile", "stop", "rig", "1", "extra.toml"], "takes no FILE"),
        (["profile", "show", "rig", "1", "--from-step", "1"], "--from-step goes with"),
        (["profile", "check", "a.toml", "1"], "takes only FILE"),
        (["profile", "jump", "rig", "1"], "invalid choice"),
        (["monitor", "--count", "0"], "at least 1 frame"),
        (["monitor", "--once", "--count", "2"], "not allowed with"),
        (["calibrate", "1"], "--port"),
        (["calibrate", "--port", "/dev/null", "1", "--yes"], "--yes asks nothing"),
        (
            [
                "calibrate",
                "--port",
                "/dev/null",
                "1",
                "--apply",
                "2",
                "--apply",
                "3",
                "--reference",
                "2",
            ],
            "one --reference for each --apply",
        ),
        (["calibrate", "--port", "/dev/null", "1", "--unit", "furlong"], "the units are"),
        (["calibrate", "--port", "/dev/null", "1", "--apply", "2", "--yes"], "--reference V"),
        (["calibrate", "--port", "/dev/null", "4", "--zero-only", "--reference", "1"], "takes no"),
        (["demo", "--seconds", "2"], "at least 8"),
        (["demo", "--speed", "500"], "--speed is 1 to 50"),
        (["leak-test", "rig", "1", "--minutes", "0"], "must be above 0"),
        (["config"], "required"),
    ],
)
def test_bad_usage_exits_2_with_a_message(argv, words, capsys):
    assert run(argv) == commands.EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err


def test_a_missing_file_or_port_exits_3(tmp_path, capsys):
    assert run(["profile", "check", str(tmp_path / "none.toml")]) == commands.EXIT_MISSING
    assert "no profile file" in capsys.readouterr().err
    assert run(["calibrate", "--port", str(tmp_path / "tty"), "1"]) == commands.EXIT_MISSING
    assert "no port" in capsys.readouterr().err


def test_no_bridge_is_a_failure_that_says_where_it_looked(capsys):
    assert run(["status", "--url", "http://127.0.0.1:9"]) == commands.EXIT_FAILED
    err = capsys.readouterr().err
    assert "cannot reach the bridge at http://127.0.0.1:9" in err
    assert "isopress bridge" in err


ACTIVATION = """\
# activation then target
name = "activation"
[[step]]
set = 3.0
[[step]]
wait = "host"
[[step]]
ramp = 2.5
rate = 0.5
[[step]]
hold = "1 min"
"""


def test_a_profile_file_reads_in_its_unit_and_durations():
    p = commands.parse_profile(
        {
            "unit": "bar",
            "step": [
                {"set": 50},
                {"wait": "trigger", "timeout": "2 h"},
                {"ramp": 20, "rate": 1},
                {"hold": 90},
                {"hold": "1.5 d"},
            ],
        }
    )
    assert p.steps == [
        {"kind": "SET", "target_mpa": pytest.approx(5.0), "rate_mpa_s": 0.0},
        {"kind": "WAIT", "wait_for": "TRIGGER", "timeout_s": 7200.0},
        {"kind": "RAMP", "target_mpa": pytest.approx(2.0), "rate_mpa_s": pytest.approx(0.1)},
        {"kind": "HOLD", "duration_s": 90.0},
        {"kind": "HOLD", "duration_s": 129600.0},
    ]


@pytest.mark.parametrize(
    "text, words",
    [
        ("[[step]]\nset = 5\nhold = 3\n", "step 0: give exactly one of set, ramp, hold, wait"),
        ("[[step]]\nset = 5\ntimeout = 3\n", "step 0: set does not take 'timeout'"),
        ("[[step]]\nset = 5\n[[step]]\nhold = 'soon'\n", "step 1: hold: 'soon' is not a duration"),
        ("[[step]]\nset = -1\n", "step 0: set: -1 MPa is below 0"),
        ("[[step]]\nset = 'high'\n", "expected a number of MPa"),
        ("[[step]]\nwait = 'sometimes'\n", 'wait = "host" or "trigger"'),
        ("[[step]]\nhold = 5000000\n", "longer than the board counts"),
        ("unit = 'atm'\n[[step]]\nset = 5\n", "unit 'atm'"),
        ("colour = 'red'\n[[step]]\nset = 5\n", "unknown key 'colour'"),
        ("name = 'empty'\n", "no steps"),
        ("[[step]]\nset = 1\n" * 18, "18 steps; a board takes at most 17"),
        ("[[step]\nset = 1\n", "not valid TOML"),
    ],
)
def test_a_bad_profile_file_is_refused_naming_the_step(tmp_path, capsys, text, words):
    f = tmp_path / "p.toml"
    f.write_text(text)
    assert run(["profile", "check", str(f)]) == commands.EXIT_USAGE
    assert words in capsys.readouterr().err


def test_profile_check_lists_the_steps(tmp_path, capsys):
    f = tmp_path / "p.toml"
    f.write_text(ACTIVATION)
    assert run(["profile", "check", str(f)]) == 0
    out = capsys.readouterr().out
    assert "profile 'activation', 4 steps" in out
    assert "set 3.0000 MPa at the ramp limit" in out
    assert "wait for the host" in out
    assert "ramp to 2.5000 MPa at 0.5000 MPa/s" in out
    assert "hold 1 min" in out


def test_the_leak_rate_comes_from_the_ends_and_the_slope():
    pts = [(t / 10, 3.0 - 160e-6 * t / 10) for t in range(6000)]  # 160 Pa/s for 10 min
    r = commands.leak_rate(pts, 60)
    assert r.rate_pa_s == pytest.approx(-160, rel=1e-6)
    assert r.fit_pa_s == pytest.approx(-160, rel=1e-6)
    with pytest.raises(ValueError):
        commands.leak_rate(pts[:3], 60)


def test_pressure_units_convert_only_at_the_edge():
    assert commands.to_mpa(300, "psi") == pytest.approx(2.0684, abs=1e-4)
    assert commands.from_mpa(2.0, "bar") == pytest.approx(20.0)
    assert commands.show(2.0, "kPa") == "2000.0 kPa"
    assert commands.show(None) == "-"


def test_a_sparkline_spans_the_window_and_keeps_noise_flat():
    assert monitor.sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == "▁▂▃▄▅▆▇█"
    flat = monitor.sparkline([2.0, 2.0001, 1.9999, 2.0], min_span=0.01)
    assert set(flat) <= {"▄", "▅"}  # the middle, not the whole height
    assert monitor.sparkline([]) == ""


def test_the_monitor_keeps_the_newest_sample_and_marks_latched_alarms():
    m = monitor.Monitor()
    base = {"device": "rig", "channel": 1, "setpoint_mpa": 5.0, "fill": 1, "vent": 0}
    m.feed(StreamMessage("sample", {**base, "seq": 10, "pressure_mpa": 4.9, "mode": "RAMP"}))
    late = {**base, "seq": 9, "pressure_mpa": 1.0, "mode": "IDLE", "flags": 1}  # a replay
    m.feed(StreamMessage("sample", late))
    alarms = ["OVERPRESSURE", "LATCHED"]
    m.feed(StreamMessage("sample", {**base, "seq": 11, "pressure_mpa": 8.1, "mode": "TRIPPED",
                                    "alarms": alarms, "vent": 1}))  # fmt: skip
    m.feed(StreamMessage("event", {"device": "rig", "channel": 1, "utc": 0.0,
                                   "kind": "TRIP", "text": "ch 1 TRIP at 8.1 MPa"}))  # fmt: skip
    text = "\n".join(m.render())
    row = next(line for line in text.splitlines() if line.startswith("rig"))
    assert "8.1000 MPa" in row and "5.0000 MPa" in row and "TRIPPED" in row
    assert "fill+vent" in row and "OVERPRESSURE (latched)" in row
    assert "1.0000" not in row  # the replayed, older sample did not replace the newer
    assert "rig: ch 1 TRIP at 8.1 MPa" in text


def test_the_screen_redraws_in_place_on_a_terminal():
    buf = io.StringIO()
    with monitor.Screen(buf, in_place=True) as screen:
        screen.draw(["one", "two"])
        screen.draw(["three"])
    text = buf.getvalue()
    assert text.startswith("\x1b[2J\x1b[?25l")  # cleared once, cursor hidden
    assert "\x1b[Hthree\x1b[K\n\x1b[J" in text  # home, the line, the rest cleared
    assert text.endswith("\x1b[?25h")  # the cursor comes back


# -- against a bridge and a simulated board ----------------------------------------------------


def plant_params() -> dict[str, Any]:
    p = plant_mod.default_params()
    p["plant"]["oven_swing_k"] = 0.0
    p["channel"]["2"]["leak_pct_per_day"] = 99.0
    p["channel"]["2"]["sensor"]["noise_pct_fs"] = 0.01  # a minute's slope to a few Pa/s
    return p


@pytest.fixture(scope="class")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("cli")
    sim = SimProcess(d / "link", plant=plant_params(), speed=SPEED).start()
    bridge = BridgeThread(d / "rec.sqlite", {"sim": str(d / "link")}, TOKEN, SPEED)
    try:
        bridge.start()
        c = bridge.client()
        wait_for(lambda: c.channel("sim", 1)["connected"], what="the link")
        wait_for(lambda: c.limits("sim", 2)["max_working_mpa"] is not None, what="limits")
        wait_for(lambda: c.channel("sim", 2)["seq"] is not None, what="a sample")
        yield {"url": bridge.url, "client": c, "dir": d}
    finally:
        bridge.stop()
        sim.stop()


def api(rig: dict[str, Any], *argv: str) -> list[str]:
    return [*argv, "--url", rig["url"], "--token", TOKEN]


class TestAgainstABridge:
    def test_set_waits_until_the_channel_holds_it(self, rig, capsys):
        c: Client = rig["client"]
        assert run(api(rig, "set", "sim", "1", "2", "--wait", "--timeout", "60")) == 0
        out = capsys.readouterr().out
        assert "sim channel 1: setpoint 2.0000 MPa" in out
        assert "reached:" in out
        view = c.channel("sim", 1)
        assert view["setpoint_mpa"] == 2.0 and abs(view["pressure_mpa"] - 2.0) < 0.02

    def test_set_in_another_unit_reaches_the_board_in_mpa(self, rig, capsys):
        c: Client = rig["client"]
        assert run(api(rig, "set", "sim", "1", "300", "--unit", "psi")) == 0
        assert "setpoint 300.00 psi" in capsys.readouterr().out
        sp = wait_for(lambda: c.channel("sim", 1)["setpoint_mpa"] > 2.05 and c.channel("sim", 1))
        assert sp["setpoint_mpa"] == pytest.approx(2.068427, abs=2e-6)

    def test_refusals_name_the_problem(self, rig, capsys):
        c: Client = rig["client"]
        before = c.channel("sim", 1)["setpoint_mpa"]
        assert run(api(rig, "set", "sim", "1", "9")) == commands.EXIT_FAILED
        assert "above sim channel 1's max working of 7 MPa" in capsys.readouterr().err
        assert run(api(rig, "set", "nope", "1", "2")) == commands.EXIT_USAGE
        assert "known: sim" in capsys.readouterr().err
        assert run(api(rig, "set", "sim", "9", "2")) == commands.EXIT_USAGE
        assert run(["set", "sim", "1", "2", "--url", rig["url"], "--token", ""]) == 2
        assert "--token" in capsys.readouterr().err
        assert run(["set", "sim", "1", "2", "--url", rig["url"], "--token", "wrong"]) == 2
        assert "not the bridge's" in capsys.readouterr().err
        assert c.channel("sim", 1)["setpoint_mpa"] == before  # nothing changed

    def test_status_shows_links_and_every_channel(self, rig, capsys):
        assert run(["status", "--url", rig["url"]]) == 0
        out = capsys.readouterr().out
        assert "store" in out and "rec.sqlite" in out
        assert re.search(r"^sim\s+connected\s+53494d3030303031", out, re.M)
        for ch, kind in ((1, "ISOSTATIC"), (3, "UNIAXIAL"), (4, "MONITOR")):
            assert re.search(rf"^sim\s+{ch}\s+{kind}\s+-?\d+\.\d{{4}} MPa", out, re.M), out
        assert run(["status", "--url", rig["url"], "--json"]) == 0
        assert '"links"' in capsys.readouterr().out
        assert run(["status", "--url", rig["url"], "--device", "nope"]) == 2

    def test_a_profile_loads_runs_advances_and_stops(self, rig, capsys, tmp_path):
        c: Client = rig["client"]
        f = tmp_path / "act.toml"
        f.write_text(ACTIVATION)
        assert run(api(rig, "profile", "load", "sim", "1", str(f))) == 0
        assert "loaded profile 'activation', 4 steps" in capsys.readouterr().out
        assert run(api(rig, "profile", "start", "sim", "1")) == 0
        wait_for(lambda: c.profile("sim", 1)["waiting_for_host"], what="the WAIT step")
        assert run(api(rig, "profile", "show", "sim", "1")) == 0
        out = capsys.readouterr().out
        assert "profile running, 4 steps" in out
        assert "->  1  wait for the host (cycle end or advance)  (waiting for the host)" in out
        assert run(api(rig, "profile", "advance", "sim", "1", "--cycle", "7")) == 0
        assert "left step 1 (cycle 7)" in capsys.readouterr().out
        wait_for(lambda: c.channel("sim", 1)["setpoint_mpa"] < 3.0, what="the ramp down")
        argv = ["events", "sim", "--channel", "1", "--kind", "profile_step", "--url", rig["url"]]
        assert run(argv) == 0
        steps = capsys.readouterr().out
        assert "sim  ch 1 PROFILE_STEP: step 2, target 2.5 MPa, cycle 7" in steps
        # the profile has left step 1: a second advance is refused and changes nothing
        assert run(api(rig, "profile", "advance", "sim", "1", "--from-step", "1")) == 1
        assert "not waiting for the host at step 1" in capsys.readouterr().err
        assert run(api(rig, "profile", "stop", "sim", "1")) == 0
        assert not c.profile("sim", 1)["running"]

    def test_monitor_draws_frames_from_the_stream(self, rig, capsys):
        argv = ["monitor", "--url", rig["url"], "--count", "3", "--interval", "0.1"]
        assert run(argv) == 0
        out = capsys.readouterr().out
        assert out.count("isopress monitor") == 3
        assert "\x1b[" not in out  # not a terminal: plain frames, one after another
        rows = [line for line in out.splitlines() if line.startswith("sim ")]
        assert len(rows) == 3 * 4
        assert any(ch in out for ch in "▁▂▃▄▅▆▇█")
        assert run(["monitor", "--url", rig["url"], "--once", "--channel", "2"]) == 0
        once = capsys.readouterr().out
        assert once.count("isopress monitor") == 1
        assert [line.split()[1] for line in once.splitlines() if line.startswith("sim ")] == ["2"]
        assert run(["monitor", "--url", rig["url"], "--device", "nope", "--once"]) == 2

    def test_isolate_vent_ack_and_config(self, rig, capsys):
        c: Client = rig["client"]
        assert run(api(rig, "isolate", "sim", "1")) == 0
        assert "isolated, every valve closed" in capsys.readouterr().out
        wait_for(lambda: c.channel("sim", 1)["mode"] == "ISOLATED", what="ISOLATED")
        # venting needs a yes: without a terminal to ask on, it is refused
        assert run(api(rig, "vent", "sim", "1", "--floor", "1")) == commands.EXIT_USAGE
        assert "give --yes" in capsys.readouterr().err
        assert c.channel("sim", 1)["mode"] == "ISOLATED"
        assert run(api(rig, "vent", "sim", "1", "--floor", "1", "--yes")) == 0
        wait_for(lambda: c.channel("sim", 1)["mode"] == "VENT", what="VENT")
        assert run(api(rig, "vent", "sim", "4", "--yes")) == commands.EXIT_FAILED
        assert "monitor channel" in capsys.readouterr().err
        assert run(api(rig, "ack", "sim", "3")) == 0
        assert "no alarm to acknowledge" in capsys.readouterr().out
        assert run(["config", "sim", "tick_hz", "--url", rig["url"]]) == 0
        assert "sim tick_hz = 20 Hz (raw 20)" in capsys.readouterr().out
        assert run(["config", "sim", "trip", "--channel", "1", "--url", rig["url"]]) == 0
        assert "sim channel 1 trip = 8.0 MPa (raw 8000000)" in capsys.readouterr().out
        assert run(api(rig, "config", "sim", "colour", "--channel", "1")) == 2

    @pytest.mark.parametrize("limit, code", [(40.0, 1), (400.0, 0)])
    def test_leak_test_measures_the_fall_and_judges_it(self, rig, capsys, limit, code):
        c: Client = rig["client"]
        argv = api(rig, "leak-test", "sim", "2", "--pressure", "3", "--minutes", "1")
        # two minutes in HOLD first: the gas the fill heated is at the wall's temperature
        assert run([*argv, "--settle", "120", "--rest", "30", "--max-rate", str(limit)]) == code
        out = capsys.readouterr().out
        found = re.search(r"after \d+ s: ([-+]\d+\.\d+) Pa/s", out)
        assert found, out
        rate = float(found.group(1))
        # 99 %/day of 3 MPa is 160 Pa/s
        assert -185 < rate < -135, out
        assert ("PASS" if code == 0 else "FAIL") in out
        assert "regulating again at 3.0000 MPa" in out
        wait_for(lambda: c.channel("sim", 2)["mode"] in ("HOLD", "RAMP"), what="regulation")


# -- calibration, straight to the board -------------------------------------------------------


def calibration_plant() -> dict[str, Any]:
    p = plant_mod.default_params()
    p["plant"]["oven_swing_k"] = 0.0
    p["channel"]["1"]["leak_pct_per_day"] = 0.0
    p["channel"]["1"]["sensor"]["offset_pct_fs"] = 1.0  # reads 0.1 MPa high
    return p


@pytest.fixture(scope="class")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("cal")
    truth = d / "truth.csv"
    sim = SimProcess(
        d / "link", plant=calibration_plant(), speed=SPEED, truth=truth, truth_every_ms=200
    ).start()
    try:
        yield {"port": str(d / "link"), "truth": truth}
    finally:
        sim.stop()


def true_pa(truth: Path, channel: int = 1) -> float:
    with open(truth, newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1][f"ch{channel}_pressure_pa"])


def reading_pa(port: str, channel: int = 1, seconds: float = 0.5) -> float:
    """Mean pressure over `seconds` of our time, read over a link of our own."""
    got: list[int] = []

    def on_sample(s: Any) -> None:
        got.extend(i["pressure"] for i in s.channels if i["channel"] == channel)

    async def go() -> None:
        link = Link("check", port, on_sample=on_sample)
        link.start()
        await link.wait_connected(10)
        got.clear()
        await asyncio.sleep(seconds)
        await link.close()

    asyncio.run(go())
    return sum(got) / len(got)


def held_reading(port: str, truth: Path, pa: int) -> tuple[float, float]:
    """Regulates channel 1 to `pa`, isolates it, lets it settle; (reading, true) in Pa."""
    got: list[int] = []

    def on_sample(s: Any) -> None:
        got.extend(i["pressure"] for i in s.channels if i["channel"] == 1)

    async def go() -> tuple[float, float]:
        link = Link("check", port, on_sample=on_sample)
        link.start()
        await link.wait_connected(10)
        await link.send("SET_SETPOINT", {"channel": 1, "pressure": pa, "rate": 0})
        await asyncio.sleep(3.0)  # a minute of the board's time: filled, mostly settled
        await link.send("ISOLATE", {"channel": 1})
        await asyncio.sleep(2.0)  # 40 s more: the gas at the wall's temperature
        got.clear()
        await asyncio.sleep(0.5)
        measured, true = sum(got) / len(got), true_pa(truth)
        await link.close()
        return measured, true

    return asyncio.run(go())


class TestCalibrate:
    def test_a_wrong_reference_is_refused_before_anything_changes(self, board, capsys):
        before = reading_pa(board["port"])
        argv = ["calibrate", "--port", board["port"], "1", "--apply", "2", "--reference", "3"]
        assert run([*argv, "--yes"]) == commands.EXIT_FAILED
        err = capsys.readouterr().err
        assert "--reference 3 MPa for --apply 2" in err
        assert "the channel will be held at 2.0000 MPa" in err
        assert "Check the reference's unit (MPa)" in err
        assert "nothing was changed on the board" in err
        assert abs(reading_pa(board["port"]) - before) < 20_000  # still the old zero

    def test_guided_calibration_stores_a_span_that_changes_the_reading(
        self, board, monkeypatch, capsys
    ):
        truth = board["truth"]
        span = 1.02  # the "reference gauge" reads 2 % above the plant: the fit must follow it
        prompts: list[str] = []
        wrong = iter(["3"])  # a typo at the first reference: refused, asked again
        true_at: dict[str, float] = {}  # the plant's pressure when each reference was read

        def answer(prompt: str) -> str:
            prompts.append(prompt)
            if "[y/N]" in prompt:
                return "y"
            if "Reference pressure at point 1" in prompt:
                typo = next(wrong, None)
                if typo:
                    return typo
                true_at["capture"] = true_pa(truth)
                return f"{true_at['capture'] * span / 1e6:.6f}"
            if "Reference now" in prompt:
                true_at["check"] = true_pa(truth)
                return f"{true_at['check'] * span / 1e6:.6f}"
            return ""

        monkeypatch.setattr("builtins.input", answer)
        # zero on the vented holder reads the plant's 1 % FS offset
        assert reading_pa(board["port"]) == pytest.approx(100_000, abs=15_000)
        code = run(["calibrate", "--port", board["port"], "1", "--apply", "2", "--settle", "5"])
        out, err = capsys.readouterr()
        assert code == 0, out + err
        assert "steady at 0.09" in out or "steady at 0.10" in out  # the offset, before the tare
        assert "refused: the channel reads" in out and "below the reference" in out
        assert sum("Reference pressure at point 1" in p for p in prompts) == 2
        assert "span correction +" in out
        assert "Stored." in out and "PASS" in out
        table = re.search(r"^\s+1\s+(\d\.\d+) MPa\s+(\d\.\d+) MPa\s+(\d\.\d+) MPa", out, re.M)
        assert table, out
        reference, before, after = (float(x) for x in table.groups())
        # Captured after the tare: it read the plant's pressure, the 0.1 MPa offset gone.
        assert before == pytest.approx(true_at["capture"] / 1e6, abs=0.012)
        # Read back after STORE: the reference gauge's, 2 % above the plant's.
        assert reference == pytest.approx(true_at["check"] * span / 1e6, abs=1e-4)
        assert after == pytest.approx(reference, abs=0.005)
        assert "left venting at 0" in out
        # Independently: a pressure the board holds now reads on the reference's
        # scale, 2 % above the plant's true pressure (it read 0.1 MPa high before).
        measured, true = held_reading(board["port"], board["truth"], 3_000_000)
        assert measured / true == pytest.approx(span, abs=0.004)

    def test_zero_only_refuses_a_loaded_cell_and_changes_nothing(self, board, capsys):
        # channel 4: a bolted stack under 5 kN, so its load cell is not unloaded
        before = reading_pa(board["port"], 4)
        assert run(["calibrate", "--port", board["port"], "4", "--zero-only", "--yes"]) == 1
        err = capsys.readouterr().err
        assert "a zero error beyond 5 % FS means it is not unloaded" in err
        assert "nothing was changed on the board" in err
        assert reading_pa(board["port"], 4) == pytest.approx(before, rel=0.01)

    def test_a_monitor_channel_cannot_apply(self, board, capsys):
        argv = ["calibrate", "--port", board["port"], "4", "--apply", "1", "--reference", "1"]
        assert run([*argv, "--yes"]) == commands.EXIT_USAGE
        assert "monitor-only (no valves)" in capsys.readouterr().err


def test_calibrate_scales_load_cells_in_newtons():
    s = calibrate.Scale("kN", True, full_scale=20_000_000.0, area_mm2=78.54)
    assert s.to_wire(10.0) == 10_000_000  # mN
    assert s.from_telemetry(127_324_000) == pytest.approx(10_000_000, rel=1e-4)
    assert s.show(10_000_000) == "10.0000 kN"
    p = calibrate.Scale("bar", False, full_scale=10e6)
    assert p.to_wire(20) == 2_000_000
    assert p.pct_fs(100_000) == pytest.approx(1.0)
