"""Hardware in the loop: the plant model runs on the host and feeds a board.

The board under test runs its normal firmware; an HIL adapter on its sensor
inputs and valve outputs (docs/hil.md) reports each valve change and sets the
sensor signals the host's plant (`isopress.sim.plant`) computes. The host
talks to the adapter in lines of text over a second serial port (here: a
pty), and to the board over its usual link (protocol/PROTOCOL.md), so the
bench drives a real board with the same scenarios, metrics and criteria as
the simulator. Here the board is the simulated one (firmware/sim/hil.py), in
which the adapter's role is played inside the sim HAL.

    python -m isopress.hil PLAN.json [--mode lockstep|realtime] [--speed N]

runs one bench plan (host/isopress/bench/scenario.py) and writes trace.bin and
result.json as firmware/sim/scenario_run.py does; `isopress bench run --hil
sim-lockstep` uses it for every isopress run.

Lock-step (`lockstep`): the board asks for its signals at each new time and
waits; the host advances the plant exactly to that time, so the run repeats
and runs as fast as both sides go. Real time (`realtime`): both sides run on
their own clocks at `speed`; the host applies each valve change at the time
the board stamped it (never in the host's past) and streams the signals
every 20 ms of wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
import tty
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

from isopress import codec, paths
from isopress.protocol import wire
from isopress.sim import plant as plant_mod
from isopress.sim import scenario_run as sr

MAGIC = "isopress-hil"
VERSION = 1
MODES = ("lockstep", "realtime")
HIL_BOARD = paths.FIRMWARE / "sim" / "hil.py"
STREAM_S = 0.02  # real time: signals every 20 ms of wall time
SILENCE_S = 30.0  # a board that says nothing this long has failed the run
_EVENTS = dict(wire.EVENTS)
_STEPS = {0: "SET", 1: "RAMP", 2: "HOLD", 3: "WAIT"}


class HilError(RuntimeError):
    """The HIL link broke its protocol or the board stopped answering."""


class LineLink:
    """Text lines over a file descriptor (a pty master, a serial port)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._buf = b""
        self._lines: deque[str] = deque()
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def _poll(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError:  # EIO: the other side closed the pty
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for x in lines:
            text = x.decode("ascii", "replace").strip()
            if text:
                self._lines.append(text)

    def read_lines(self) -> list[str]:
        """Every whole line received so far."""
        self._poll()
        out = list(self._lines)
        self._lines.clear()
        return out

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def next_line(self) -> str | None:
        """The next whole line, leaving the rest for later, or None."""
        self._poll()
        return self._lines.popleft() if self._lines else None

    def send(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            data = data[n:]


class PlantServer:
    """The host's half of the HIL protocol around a plant: valve changes in,
    sensor signals out, valve openings counted."""

    def __init__(self, plant: plant_mod.Plant, channels: list[int]) -> None:
        for ch in channels:
            plant.holder(ch)  # ValueError for a channel the plant lacks
        self.plant = plant
        self.channels = channels
        self.opens = {ch: [0, 0] for ch in channels}
        self.seen = {ch: 0 for ch in channels}  # valve bits commanded since the last row

    def valve(self, ch: int, fill: bool, vent: bool) -> None:
        h = self.plant.holder(ch)
        o = self.opens[ch]
        if fill and not h.fill:
            o[0] += 1
        if vent and not h.vent:
            o[1] += 1
        h.fill = fill
        h.vent = vent
        self.seen[ch] |= (sr.V_FILL if fill else 0) | (sr.V_VENT if vent else 0)

    def signals(self, t_ms: int) -> str:
        parts = [f"S {t_ms}"]
        for ch in self.channels:
            h = self.plant.holder(ch)
            s = h.signal()
            parts.append(f"{ch}:{'-' if s is None else repr(float(s))}:{h.supply_v!r}")
        return " ".join(parts)


class SimBoard:
    """The simulated board in HIL mode: firmware/sim/hil.py in MicroPython,
    its HIL line on a pty, its serial link on stdin/stdout."""

    def __init__(self, plan: dict[str, Any], mode: str, speed: float) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="isopress-hil-")
        master, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave
        self.hil = LineLink(master)
        fs = Path(plan["fs"])
        fs.mkdir(parents=True, exist_ok=True)
        settings = {
            "profile": plan["board"],
            "fs": str(fs) + "/",
            "config": plan.get("config") or {},
            "hil": os.ttyname(slave),
            "mode": mode,
            "speed": speed,
        }
        path = Path(self._tmp.name) / "settings.json"
        path.write_text(json.dumps(settings))
        self._err = open(Path(self._tmp.name) / "stderr.txt", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [paths.tool("micropython"), "-X", "heapsize=8M", str(HIL_BOARD), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=paths.micropython_env(HIL_BOARD.parent),
        )
        assert self.proc.stdin and self.proc.stdout
        self.cmd_in: BinaryIO = self.proc.stdin
        self.cmd_out = self.proc.stdout.fileno()
        os.set_blocking(self.cmd_out, False)

    def read_link(self) -> bytes:
        out = b""
        while True:
            try:
                data = os.read(self.cmd_out, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            out += data
        return out

    def write_link(self, data: bytes) -> None:
        self.cmd_in.write(data)
        self.cmd_in.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)  # a board that is going away: let it finish its traceback
        self._err.flush()
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.hil.send("X")
        with contextlib.suppress(OSError):
            self.cmd_in.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.hil.fd, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._err.close()
        self._tmp.cleanup()


class HilRun:
    """One bench plan against a board through the HIL interface."""

    def __init__(self, plan: dict[str, Any], mode: str, speed: float = 1.0) -> None:
        if mode not in MODES:
            raise HilError(f"mode {mode!r}: one of {', '.join(MODES)}")
        for at, what, a in plan.get("actions", ()):
            if what not in ("cycle", "command", "profile_resume"):
                raise HilError(f"{what} at {at} ms acts on the board itself: simulator only")
            if what == "cycle" and a.get("via") == "trigger":
                raise HilError("trigger edges need the trigger wire: simulator only")
        self.plan = plan
        self.mode = mode
        self.speed = speed
        self.plant = plant_mod.Plant(plan["plant"])
        self.record: list[int] = plan["record"]
        self.protocols = {int(c): p for c, p in plan["protocols"].items()}
        self.schedules = {
            ch: sr.Schedule(p["steps"], p["start_ms"]) for ch, p in self.protocols.items()
        }
        todo = [list(a) for a in plan.get("actions", ())]
        todo += [
            [p["start_ms"], "protocol_start", {"channel": ch}] for ch, p in self.protocols.items()
        ]
        self.todo = sorted(todo, key=lambda a: a[0])
        self.events: list[list[Any]] = []
        self.actions: list[list[Any]] = []
        self.telemetry: dict[int, dict[str, int]] = {}
        self.step_of: dict[int, int] = {}
        self.seq = 0
        self.sent: dict[int, tuple[str, list[int]]] = {}
        self.decoder = codec.StreamDecoder()
        self.t_ms = 0

    # -- the board's serial link ------------------------------------------------

    def _command(self, board: SimBoard, name: str, values: list[int], n_items: int = 0) -> None:
        msg = codec.MESSAGES[name]
        names = [f.name for f in msg.head]
        fields: dict[str, Any] = dict(zip(names, values[: len(names)], strict=True))
        if msg.item:
            inames = [f.name for f in msg.item]
            rest = values[len(names) :]
            k = len(inames)
            fields["items"] = [
                dict(zip(inames, rest[i * k : (i + 1) * k], strict=True)) for i in range(n_items)
            ]
        seq = self.seq
        self.seq = (seq + 1) & 0xFFFF
        self.sent[seq] = (name, values[:3])
        board.write_link(codec.encode(name, fields, seq=seq))

    def _frames(self, data: bytes) -> None:
        for f in self.decoder.feed(data):
            if f.message == "EVENT":
                v = f.fields
                kind = _EVENTS.get(v["kind"], str(v["kind"]))
                self.events.append(
                    [self.t_ms, v["channel"], kind, v["code"], v["a"], v["b"], v["c"]]
                )
                if kind == "PROFILE_STEP":
                    self.step_of[v["channel"]] = v["code"]
            elif f.message == "TELEMETRY":
                for it in f.fields["items"]:
                    self.telemetry[it["channel"]] = it
            elif f.message == "ACK":
                name, args = self.sent.pop(f.fields["cmd_seq"], ("?", []))
                self.actions.append([self.t_ms, name, args, f.fields["result"]])

    # -- actions, as scenario_run does them -------------------------------------

    def _act(self, board: SimBoard, t: int) -> None:
        while self.todo and self.todo[0][0] <= t:
            _at, what, a = self.todo.pop(0)
            if what == "protocol_start":
                ch = a["channel"]
                s = self.schedules[ch]
                s.begin(self.plant.holder(ch).pressure)
                if self.protocols[ch]["run"] == "profile":
                    vals = [ch]
                    for kind, target, rate, dur, wait in s.steps:
                        vals += [kind, wait, int(target), int(rate), int(dur)]
                    self._command(board, "PROFILE_LOAD", vals, len(s.steps))
                    self._command(board, "PROFILE_START", [ch, 0])
                    s.take_entered()
                else:
                    self._host_steps(board, t, ch)
                self.actions.append([t, what, [ch], 0])
            elif what == "cycle":
                for ch in a["channels"]:
                    s = self.schedules.get(ch)
                    moved = s.cycle(t) if s is not None else False
                    if self.protocols.get(ch, {}).get("run") == "host":
                        self._host_steps(board, t, ch)
                    else:
                        self._command(
                            board, "PROFILE_ADVANCE", [ch, self.step_of.get(ch, 0), a["n"]]
                        )
                    self.actions.append([t, what, [ch, a["n"]], 0 if moved else "NOT_WAITING"])
            elif what == "command":
                self._command(board, a["msg"], a["values"], a.get("n_items", 0))
            elif what == "profile_resume":
                ch = a["channel"]
                self._command(board, "PROFILE_START", [ch, self.step_of.get(ch, 0)])

    def _host_steps(self, board: SimBoard, t: int, ch: int) -> None:
        s = self.schedules[ch]
        s.update(t)
        for i in s.take_entered():
            kind, target, rate = s.steps[i][0], s.steps[i][1], s.steps[i][2]
            if kind in (sr.SET, sr.RAMP):
                self._command(board, "SET_SETPOINT", [ch, int(target), int(rate)])

    # -- time ---------------------------------------------------------------

    def _advance(self, board: SimBoard, t_ms: int) -> None:
        if t_ms / 1000.0 > self.plant.t:
            self.plant.advance_to(t_ms / 1000.0)
        self.t_ms = max(self.t_ms, t_ms)
        self._act(board, self.t_ms)
        for ch, p in self.protocols.items():
            if p["run"] == "host":
                self._host_steps(board, self.t_ms, ch)

    def _row(self, server: PlantServer, rec: sr.Recorder) -> None:
        rows = []
        for ch in self.record:
            h = self.plant.holder(ch)
            s = self.schedules.get(ch)
            if s is not None:
                s.update(self.t_ms)
            tel = self.telemetry.get(ch, {})
            bits = server.seen[ch]
            server.seen[ch] = (sr.V_FILL if h.fill else 0) | (sr.V_VENT if h.vent else 0)
            if h.fill_open:
                bits |= sr.V_FILL_GAS
            if h.vent_open:
                bits |= sr.V_VENT_GAS
            o = server.opens[ch]
            rows.append((
                s.ref if s is not None else None,
                s.target if s is not None and s.started else None,
                h.pressure,
                tel.get("pressure"),
                tel.get("setpoint"),
                bits,
                tel.get("mode", sr.NO_MODE),
                tel.get("alarms", 0),
                o[0],
                o[1],
                h.gas_used * 1000.0,
            ))  # fmt: skip
        rec.row(self.t_ms, rows)

    def run(self, board: SimBoard, out: Path) -> dict[str, Any]:
        end = self.plan["duration_ms"]
        server = PlantServer(self.plant, [c["channel"] for c in self.plan["board"]["channels"]])
        rec = sr.Recorder(str(out / "trace.bin"), self.record)
        hil = board.hil
        hil.send(f"H {MAGIC} {VERSION} {self.mode}")
        hello = self._wait_line(board, "H")
        got = hello.split()
        if len(got) < 4 or got[1] != MAGIC or got[2] != str(VERSION):
            raise HilError(f"the board's HIL hello is {hello!r}")
        chans = sorted(int(c) for c in got[3].split(","))
        if chans != sorted(server.channels):
            raise HilError(f"the board reports channels {chans}, the plan has {server.channels}")
        hil.send(server.signals(0))
        sel = selectors.DefaultSelector()
        sel.register(hil.fd, selectors.EVENT_READ, "hil")
        sel.register(board.cmd_out, selectors.EVENT_READ, "link")
        wall0 = time.monotonic()
        last_heard = wall0
        next_stream = wall0
        try:
            while self.t_ms < end:
                timeout = STREAM_S if self.mode == "realtime" else 1.0
                ready = sel.select(0 if hil.pending else timeout)
                now = time.monotonic()
                for key, _ in ready:
                    last_heard = now
                    if key.data == "link":
                        self._frames(board.read_link())
                for line in hil.read_lines():
                    last_heard = now
                    self._line(board, server, rec, line)
                    if self.t_ms >= end:
                        break
                if hil.closed or not board.alive():
                    raise HilError(f"the board went away: {board.stderr().strip()[-400:]}")
                if now - last_heard > SILENCE_S:
                    raise HilError(f"no word from the board for {SILENCE_S:.0f} s")
                if self.mode == "realtime" and now >= next_stream:
                    next_stream = now + STREAM_S
                    if not self.telemetry:
                        # The board is still booting: the run's clock starts
                        # with its first telemetry, as a bridge waits for it.
                        wall0 = now
                    t = int((now - wall0) * self.speed * 1000)
                    self._advance(board, t)
                    self._row(server, rec)
                    hil.send(server.signals(self.t_ms))
        finally:
            rec.close()
        self._frames(board.read_link())
        return {
            "name": self.plan["name"],
            "controller": "isopress",
            "hil": self.mode,
            "rows": rec.rows,
            "events": self.events,
            "actions": self.actions,
            "link": {
                "frames_in": self.decoder.frames,
                "host_drops": sum(self.decoder.errors.values()),
            },
            "resets": sum(1 for e in self.events if e[2] == "BOOT" and e[0] > 0),
            "end_ms": self.t_ms,
            "wall_s": time.monotonic() - wall0,
        }

    def _line(self, board: SimBoard, server: PlantServer, rec: sr.Recorder, line: str) -> None:
        parts = line.split()
        if parts[0] == "V" and len(parts) == 5:
            t, ch, fill, vent = (int(x) for x in parts[1:])
            if ch not in server.opens:
                raise HilError(f"valve change on channel {ch}, which the plan has not got")
            # In real time the board's stamp is on its own clock: never in the host's past.
            self._advance(board, max(t, self.t_ms))
            server.valve(ch, fill == 1, vent == 1)
        elif parts[0] == "Q" and len(parts) == 2 and self.mode == "lockstep":
            t = int(parts[1])
            if t < self.t_ms:
                raise HilError(f"the board asked for time {t} ms after {self.t_ms} ms")
            # Frames the board wrote before it asked belong to the time before.
            self._frames(board.read_link())
            self._advance(board, t)
            self._row(server, rec)
            board.hil.send(server.signals(t))
        else:
            raise HilError(f"unexpected HIL line from the board: {line!r}")

    def _wait_line(self, board: SimBoard, kind: str) -> str:
        deadline = time.monotonic() + SILENCE_S
        while time.monotonic() < deadline:
            line = board.hil.next_line()
            if line is not None:
                if line.startswith(kind + " "):
                    return line
                raise HilError(f"expected {kind} from the board, got {line!r}")
            if not board.alive():
                raise HilError(f"the board exited: {board.stderr().strip()[-400:]}")
            time.sleep(0.01)
        raise HilError(f"no {kind} line from the board in {SILENCE_S:.0f} s")


def run_plan(plan_path: Path, mode: str, speed: float = 1.0) -> int:
    """Runs a bench plan with the simulated board in HIL mode; writes
    trace.bin and result.json into the plan's `out` directory."""
    plan = json.loads(Path(plan_path).read_text())
    out = Path(plan["out"])
    result: dict[str, Any]
    try:
        run = HilRun(plan, mode, speed)
        board = SimBoard(plan, mode, speed)
        try:
            result = run.run(board, out)
        finally:
            board.close()
    except (HilError, ValueError, OSError) as e:
        result = {"name": plan.get("name"), "controller": "isopress", "error": f"HIL: {e}"}
    (out / "result.json").write_text(json.dumps(result))
    return 1 if "error" in result else 0


def spawn_runner(plan_path: Path, hil: str, speed: float = 1.0) -> subprocess.Popen[bytes]:
    """The bench runner's process for one HIL run (`sim-lockstep`, `sim-realtime`)."""
    mode = hil.removeprefix("sim-")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "isopress.hil",
            str(plan_path),
            "--mode",
            mode,
            "--speed",
            str(speed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m isopress.hil", description=__doc__)
    p.add_argument(
        "plan", type=Path, help="a bench plan (JSON), as `isopress bench run --keep` leaves"
    )
    p.add_argument("--mode", choices=MODES, default="lockstep")
    p.add_argument("--speed", type=float, default=1.0, help="real time: simulated s per wall s")
    args = p.parse_args(argv)
    if args.speed <= 0:
        p.error("--speed must be > 0")
    return run_plan(args.plan, args.mode, args.speed)


if __name__ == "__main__":
    sys.exit(main())
