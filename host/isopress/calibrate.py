"""`isopress calibrate`: guided sensor calibration, straight to a board.

    isopress calibrate --port PATH CHANNEL [--reference V ...] [--apply P ...]
                       [--unit U] [--yes] [--zero-only]

The bridge must not hold that port: this talks to the board over a link of
its own (isopress.link), so it also works on a bench with nothing else.

The steps, on the board's TARE and CALIBRATE commands (PROTOCOL.md, 5):

1. **Zero.** The holder is vented (isostatic) or unloaded (load cell). Once
   the reading is steady it must be within 5 % of full scale of zero (the
   board's own TARE limit), or nothing is changed. Then the old calibration
   is cleared (CLEAR), the zero taken (TARE), and the zero captured as point
   0 with reference 0 (STORE fits through the points, so this keeps it).
2. **Span points.** A known pressure (a reference gauge teed into the
   manifold, a dead-weight tester) or force (a reference load cell) is
   applied; once the reading is steady, its reference value is captured as
   the next point (up to 7). A reference further from the reading than
   `--max-correction` % of itself plus 0.5 % FS is refused as a mistake (a
   wrong unit, a pressure not applied, a typo) before it is captured;
   interactively it is asked for again.
3. **Store.** The board fits the points (a line through two, a piecewise
   linear table through more), saves them, and answers with its largest
   error at the points.
4. **Check.** The calibrated reading at the last point is read back against
   its reference, and the zero after venting again (with `--apply`, or when
   the operator vents it); each error is shown in % FS and must be within
   `--accept` % FS.

`--apply P` (channels with valves) lets the board make each point itself:
it vents for the zero and regulates to each P before the reference is read.
The channel is left venting at 0 afterwards.

The board captures a single sample, so each capture is checked against the
steady reading: one whose raw count is more than half a standard deviation
from the steady mean is taken again (up to 8 times).

A wrong reference, a refused step, Ctrl-C: the command stops, says what has
changed on the board (nothing, or "cleared and zeroed, not stored") and exits
1. Exit 2 is bad usage, 3 a port that does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from isopress import commands
from isopress.link import ChannelInfo, Event, Link, LinkError, Nack, Sample
from isopress.protocol import wire

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3

ACTIONS = {name: n for n, name in wire.CALIBRATIONS}
MODES = dict(wire.MODES)
ALARMS = {name: 1 << bit for bit, name in wire.ALARMS}
AREA_KEY = next(k[0] for k in wire.CONFIG_KEYS if k[1] == "area")
MAX_POINTS = 8  # the board keeps points 0..7
TARE_PERCENT = 5.0  # firmware/calibration.py: a zero further out is not a zero
ZERO_ALLOWANCE_PCT_FS = 0.5  # added to --max-correction: noise and zero error
CAPTURE_TRIES = 8
FORCE_UNITS = {"N": 1e3, "kN": 1e6}  # mN per unit: a load cell's reference is in mN


class CalibrationError(Exception):
    """A step failed; the message says what to check."""


class Aborted(Exception):
    """The operator stopped, or a reference was refused in a scripted run."""


# -- quantities ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """The user's unit and the board's: Pa for pressure sensors, mN for load
    cells (whose telemetry is stack pressure = force / area)."""

    unit: str
    load_cell: bool
    full_scale: float  # in wire units (Pa or mN)
    area_mm2: float = 0.0  # load cells: the electrode area the board divides by

    def to_wire(self, value: float) -> int:
        if self.load_cell:
            return round(value * FORCE_UNITS[self.unit])
        return round(commands.to_mpa(value, self.unit) * 1e6)

    def from_wire(self, wire_value: float) -> float:
        if self.load_cell:
            return wire_value / FORCE_UNITS[self.unit]
        return commands.from_mpa(wire_value / 1e6, self.unit)

    def from_telemetry(self, pa: float) -> float:
        """A telemetry pressure (Pa) in wire units (Pa, or mN of force)."""
        return pa * self.area_mm2 / 1e3 if self.load_cell else pa

    def show(self, wire_value: float | None, with_unit: bool = True) -> str:
        if wire_value is None:
            return "-"
        if self.load_cell:
            digits = 1 if self.unit == "N" else 4
            text = f"{self.from_wire(wire_value):.{digits}f}"
        else:
            text = commands.show(wire_value / 1e6, self.unit, with_unit=False)
        return f"{text} {self.unit}" if with_unit else text

    def pct_fs(self, wire_value: float) -> float:
        return wire_value / self.full_scale * 100


@dataclass(frozen=True)
class Reading:
    """A steady reading: means over one window of the board's samples."""

    value: float  # wire units
    std: float
    raw: float
    raw_std: float
    samples: int


@dataclass
class Point:
    number: int
    reference: int  # wire units
    before: float  # the reading when it was captured (wire units)
    after: float | None = None  # the calibrated reading, read back
    check: int | None = None  # the reference when read back, if read again

    @property
    def compared_to(self) -> int:
        return self.reference if self.check is None else self.check


# -- the board --------------------------------------------------------------------------


class Board:
    """One channel of a board over a direct link: its live samples, its
    CALIBRATION events, and commands that raise CalibrationError when refused."""

    def __init__(self, port: str, channel: int) -> None:
        self.port = port
        self.channel = channel
        # (device ms, pressure Pa, raw, mode, setpoint Pa, alarms, valves)
        self.samples: deque[tuple[int, int, int, int, int, int, int]] = deque(maxlen=20_000)
        self.captures: list[Event] = []
        self._new = asyncio.Event()
        self.full_scale_pa = 0
        self.link = Link(port, port, on_sample=self._on_sample, on_event=self._on_event)

    def _on_sample(self, s: Sample) -> None:
        if s.replayed or s.duplicate:
            return  # the past is not what the holder does now
        for it in s.channels:
            if it["channel"] == self.channel:
                self.samples.append(
                    (
                        s.device_ms,
                        it["pressure"],
                        it["raw"],
                        it["mode"],
                        it["setpoint"],
                        it["alarms"],
                        it["valves"],
                    )
                )
                self._new.set()

    def _on_event(self, e: Event) -> None:
        if e.kind == "CALIBRATION" and e.channel == self.channel and not e.duplicate:
            self.captures.append(e)
            self._new.set()

    async def open(self, timeout: float) -> ChannelInfo:
        self.link.start()
        try:
            await self.link.wait_connected(timeout)
        except TimeoutError:
            raise CalibrationError(
                f"no board answered on {self.port} within {timeout:g} s: is it plugged in, and "
                "is nothing else (a bridge, a terminal) holding the port?"
            ) from None
        except LinkError as e:
            raise CalibrationError(str(e)) from None
        assert self.link.hello is not None
        for info in self.link.hello.channels:
            if info.channel == self.channel:
                self.full_scale_pa = info.full_scale
                return info
        have = ", ".join(str(c.channel) for c in self.link.hello.channels)
        raise UsageError(f"the board on {self.port} has no channel {self.channel} (it has {have})")

    async def close(self) -> None:
        await self.link.close()

    async def send(self, message: str, what: str, **fields: int) -> int:
        """Sends a command; its ACK value. CalibrationError says why it was refused."""
        try:
            ack = await asyncio.wait_for(self.link.send(message, fields), 20)
        except Nack as e:
            raise CalibrationError(f"{what}: the board refused it: {_nack_text(e)}") from None
        except TimeoutError:
            raise CalibrationError(f"{what}: no answer from the board") from None
        except LinkError as e:
            raise CalibrationError(f"{what}: {e}") from None
        return ack.value

    async def next_sample(self, timeout: float = 5.0) -> None:
        self._new.clear()
        try:
            await asyncio.wait_for(self._new.wait(), timeout)
        except TimeoutError:
            raise CalibrationError(
                f"no telemetry from the board for {timeout:g} s: check the link"
            ) from None

    def _windows(self, n: int, window_ms: float) -> list[list[tuple[int, ...]]]:
        """The last n windows of samples, oldest first."""
        now = self.samples[-1][0]
        out = []
        for k in range(n, 0, -1):
            lo, hi = now - k * window_ms, now - (k - 1) * window_ms
            out.append([x for x in self.samples if lo < x[0] <= hi])
        return out

    def _check_sensor(self, what: str) -> None:
        if self.samples[-1][5] & ALARMS["SENSOR_FAULT"]:
            raise CalibrationError(
                f"{what}: the sensor is faulted (SENSOR_FAULT): check its wiring, then "
                "acknowledge the alarm"
            )

    async def steady(self, scale: Scale, window_s: float, timeout: float, what: str) -> Reading:
        """Waits until three consecutive windows (board time) have means within
        their noise of each other: two would agree at the top of an overshoot,
        three do not. Returns the last window's figures."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        window_ms = window_s * 1000
        await self.next_sample()
        since = self.samples[-1][0]
        floor = scale.full_scale * 1e-4  # 0.01 % FS: below that a difference is nothing
        while True:
            self._check_sensor(what)
            latest = self.samples[-1]
            if latest[0] - since >= 3 * window_ms:
                ws = [[scale.from_telemetry(x[1]) for x in w] for w in self._windows(3, window_ms)]
                if all(len(w) >= 5 for w in ws):
                    means = [statistics.fmean(w) for w in ws]
                    noise = max(
                        math.sqrt(
                            statistics.pvariance(a) / len(a) + statistics.pvariance(b) / len(b)
                        )
                        for a, b in ((ws[0], ws[1]), (ws[1], ws[2]), (ws[0], ws[2]))
                    )
                    if max(means) - min(means) <= max(floor, 4 * noise):
                        last = self._windows(1, window_ms)[0]
                        raws = [x[2] for x in last]
                        return Reading(
                            means[2],
                            statistics.pstdev(ws[2]),
                            statistics.fmean(raws),
                            statistics.pstdev(raws),
                            len(last),
                        )
            if loop.time() > deadline:
                raise CalibrationError(
                    f"{what}: the reading did not settle within {timeout:g} s "
                    f"(now {scale.show(scale.from_telemetry(latest[1]))}, mode "
                    f"{MODES.get(latest[3], latest[3])}): a leak, a load still moving, or "
                    "raise --timeout"
                )
            await self.next_sample()

    async def reach(self, target_pa: int, window_s: float, timeout: float, what: str) -> None:
        """Waits until the regulator holds `target_pa`: three windows in HOLD, each
        mean within 1 % of the target (or 0.25 % FS, if more). The gas heated by
        the fill has cooled most of the way by then, so the pressure stays near
        the target once the channel is isolated."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        window_ms = window_s * 1000
        band = max(abs(target_pa) / 100, self.full_scale_pa * 0.0025)
        await self.next_sample()
        since = self.samples[-1][0]
        while True:
            self._check_sensor(what)
            latest = self.samples[-1]
            if latest[0] - since >= 3 * window_ms and all(
                len(w) >= 5
                and all(MODES.get(x[3]) == "HOLD" for x in w)
                and abs(statistics.fmean(x[1] for x in w) - target_pa) <= band
                for w in self._windows(3, window_ms)
            ):
                return
            if latest[5] & ALARMS["LATCHED"]:
                raise CalibrationError(
                    f"{what}: the channel latched an alarm (alarms {latest[5]:#x})"
                )
            if loop.time() > deadline:
                raise CalibrationError(
                    f"{what}: the channel did not reach {target_pa / 1e6:g} MPa within "
                    f"{timeout:g} s (at {latest[1] / 1e6:g} MPa, mode {MODES.get(latest[3])})"
                )
            await self.next_sample()

    async def capture(self, point: int, reference: int, reading: Reading) -> tuple[int, int]:
        """CAPTURE until the sample taken is close to the steady mean; (raw, tries)."""
        raw = 0
        for attempt in range(1, CAPTURE_TRIES + 1):
            seen = len(self.captures)
            await self.send(
                "CALIBRATE",
                f"capture point {point}",
                channel=self.channel,
                action=ACTIONS["CAPTURE"],
                point=point,
                reference=reference,
            )
            raw = (await self._capture_event(seen, point)).a
            if abs(raw - reading.raw) <= max(1.0, reading.raw_std / 2):
                return raw, attempt
            await self.next_sample()
        return raw, CAPTURE_TRIES

    async def _capture_event(self, seen: int, point: int) -> Event:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            for e in self.captures[seen:]:
                if e.code == point:
                    return e
            if loop.time() > deadline:
                raise CalibrationError(
                    f"capture point {point}: the board acknowledged it but sent no CALIBRATION "
                    "event"
                )
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), max(0.05, deadline - loop.time()))


def _nack_text(e: Nack) -> str:
    hints = {
        "OUT_OF_RANGE": "a value beyond what the board accepts",
        "BAD_STATE": "the sensor is faulted, or there is nothing to store",
        "LATCHED": "a latched alarm: find its cause and acknowledge it first",
        "STORAGE": "the board could not write its flash",
        "NOT_SUPPORTED": "this channel cannot do that",
        "UNKNOWN_CHANNEL": "no such channel",
    }
    extra = f" (value {e.value})" if e.value else ""
    return f"{e.result}{extra}: {hints.get(e.result, 'see PROTOCOL.md, ACK result')}"


class UsageError(Exception):
    """The command line asks for something this board or channel cannot do."""


# -- the procedure -----------------------------------------------------------------------------


Ask = Callable[[str], Awaitable[str]]


async def ask_stdin(prompt: str) -> str:
    """input() on a thread, so the link keeps its heartbeat while a person thinks."""
    try:
        return await asyncio.to_thread(input, prompt)
    except EOFError:
        raise Aborted(
            "no answer (stdin is closed): for a scripted run give --yes and --reference"
        ) from None


@dataclass
class Options:
    port: str
    channel: int
    references: list[float]
    apply: list[float]
    unit: str | None
    yes: bool
    zero_only: bool
    max_correction: float  # %
    accept: float  # % FS
    settle: float  # s of board time per window
    timeout: float  # s of wall time per steady reading


class Session:
    def __init__(self, opts: Options, ask: Ask = ask_stdin, out: TextIO | None = None) -> None:
        self.o = opts
        self.ask = ask
        self.out = out or sys.stdout
        self.board = Board(opts.port, opts.channel)
        self.scale: Scale | None = None
        self.info: ChannelInfo | None = None
        self.cleared = False
        self.stored = False
        self.tared = False
        self.points: list[Point] = []
        self.isolated = False

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def confirm(self, question: str) -> bool:
        if self.o.yes:
            return True
        answer = await self.ask(f"{question} [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    async def pause(self, text: str) -> None:
        if not self.o.yes:
            await self.ask(f"{text} Press Enter when ready. ")

    # -- what changed ---------------------------------------------------------

    def state(self) -> str:
        ch = f"channel {self.o.channel}"
        if self.stored:
            return f"{ch}'s new calibration is stored"
        if self.cleared:
            return (
                f"{ch}'s earlier calibration was cleared at the zero step and nothing was "
                "stored: it reads with the sensor's nominal transfer function, zeroed at "
                "step 1. Run `isopress calibrate` again to finish."
            )
        if self.tared:
            return f"{ch} was zeroed (tare); its span is unchanged"
        return "nothing was changed on the board"

    # -- the steps -----------------------------------------------------------

    async def run(self) -> int:
        o = self.o
        self.info = await self.board.open(15)
        self.scale = await self._scale(self.info)
        self._check_usage()
        s = self.scale
        kind = self.info.kind
        what = "force" if s.load_cell else "pressure"
        self.say(
            f"Calibrating channel {o.channel} on {o.port}: {kind}, {self.info.sensor}, "
            f"full scale {s.show(s.full_scale)}"
        )
        if o.zero_only:
            self.say("Zero only: the span stays as it is.")
        else:
            self.say(
                "This replaces the channel's calibration: the old one is cleared once the "
                "zero is taken."
            )
        if not await self.confirm("Continue?"):
            raise Aborted("stopped before anything was sent")
        await self.board.next_sample(10)
        await self.zero_step()
        if o.zero_only:
            return await self.check_zero_only()
        n = 1
        while n < MAX_POINTS:
            done = await self.span_point(n, what)
            if done:
                break
            n += 1
        if len(self.points) == 1:
            self.say("Only the zero was captured: the span stays the sensor's nominal one.")
        self.preview()
        if not await self.confirm("Store this calibration on the board?"):
            raise Aborted("not stored")
        await self.hold_still()
        worst = await self.board.send(
            "CALIBRATE",
            "store",
            channel=o.channel,
            action=ACTIONS["STORE"],
            point=0,
            reference=0,
        )
        self.stored = True
        self.say(f"Stored. The board's fit passes within {s.show(worst)} of every captured point.")
        return await self.verify()

    async def _scale(self, info: ChannelInfo) -> Scale:
        load_cell = info.sensor == "LOAD_CELL"
        unit = self.o.unit or ("N" if load_cell else "MPa")
        if load_cell and unit not in FORCE_UNITS:
            raise UsageError(f"channel {self.o.channel} has a load cell: give --unit N or kN")
        if not load_cell and unit not in commands.UNITS:
            raise UsageError(
                f"channel {self.o.channel} reads pressure: --unit is one of "
                f"{', '.join(commands.UNITS)}"
            )
        if not load_cell:
            return Scale(unit, False, float(info.full_scale))
        raw_area = await self.board.send(
            "GET_CONFIG", "read the electrode area", channel=self.o.channel, key=AREA_KEY
        )
        area = raw_area / 100  # the key is in 0.01 mm2
        return Scale(unit, True, info.full_scale * area / 1e3, area)

    def _check_usage(self) -> None:
        o, s = self.o, self.scale
        assert s is not None and self.info is not None
        if o.apply and self.info.kind == "MONITOR":
            raise UsageError(
                f"channel {o.channel} is monitor-only (no valves): it cannot --apply; load it "
                "by hand and leave --apply out"
            )
        if o.zero_only and (o.references or o.apply):
            raise UsageError("--zero-only takes no --reference or --apply")
        if len(o.references) > MAX_POINTS - 1 or len(o.apply) > MAX_POINTS - 1:
            raise UsageError(f"at most {MAX_POINTS - 1} span points (the zero is point 0)")
        # With --apply the reading at each point is known before anything is
        # sent, so a reference that cannot belong to it is refused now.
        for ref, target in zip(o.references, o.apply, strict=False):
            if s.load_cell:
                continue  # --apply is a stack pressure, the reference a force
            problem = self._implausible(s.to_wire(ref), s.to_wire(target), "will be held at")
            if problem:
                raise Aborted(f"--reference {ref:g} {s.unit} for --apply {target:g}: {problem}")

    def _implausible(self, reference: float, reading: float, reads: str = "reads") -> str | None:
        s = self.scale
        assert s is not None
        allowed = self.o.max_correction / 100 * abs(reference) + s.full_scale * (
            ZERO_ALLOWANCE_PCT_FS / 100
        )
        off = reference - reading
        if abs(off) <= allowed:
            return None
        return (
            f"the channel {reads} {s.show(reading)}, {s.show(abs(off))} "
            f"({abs(s.pct_fs(off)):.1f} % FS) {'below' if off > 0 else 'above'} the reference; "
            f"a calibration corrects at most {self.o.max_correction:g} % plus "
            f"{ZERO_ALLOWANCE_PCT_FS:g} % FS. Check the reference's unit ({s.unit}), that it "
            "is applied, and the reference instrument"
        )

    async def zero_step(self) -> None:
        o, s = self.o, self.scale
        assert s is not None
        ch = o.channel
        if o.apply:
            await self.board.send("VENT", "vent for the zero", channel=ch, floor=0)
            self.say("Step 1, zero: venting the channel to 0.")
        else:
            held = "unload the holder" if s.load_cell else "vent the holder to atmosphere"
            self.say(f"Step 1, zero: {held} (the mechanical gauge reads 0).")
            await self.pause("")
        r = await self.board.steady(s, o.settle, o.timeout, "zero")
        if o.apply:
            await self._at_atmosphere(r)
        limit = s.full_scale * TARE_PERCENT / 100
        if abs(r.value) > limit:
            state = "unloaded" if s.load_cell else "vented"
            raise Aborted(
                f"zero: the channel reads {s.show(r.value)} ({s.pct_fs(r.value):+.1f} % FS) "
                f"{state}; a zero error beyond {TARE_PERCENT:g} % FS means it is not {state}, "
                "or the sensor is not the one in the board profile"
            )
        self.say(f"  steady at {s.show(r.value)} ({s.pct_fs(r.value):+.3f} % FS)")
        if o.zero_only:
            await self.board.send("TARE", "tare", channel=ch)
            self.tared = True
            self.points.append(Point(0, 0, r.value))
            return
        await self.board.send(
            "CALIBRATE", "clear", channel=ch, action=ACTIONS["CLEAR"], point=0, reference=0
        )
        self.cleared = True
        await self.board.send("TARE", "tare", channel=ch)
        tared = await self.board.steady(s, o.settle, o.timeout, "zero after the tare")
        raw, tries = await self.board.capture(0, 0, tared)
        self.points.append(Point(0, 0, r.value))
        self.say(f"  zero taken and captured as point 0 (raw {raw}{_tries(tries)})")

    async def _at_atmosphere(self, r: Reading) -> None:
        # The board vents by its own reading, the thing being calibrated: one
        # that reads low closes the vent with pressure still in the holder.
        # A vent still opening at the end is the sign it reached atmosphere.
        s = self.scale
        assert s is not None
        window_ms = self.o.settle * 1000
        now = self.board.samples[-1][0]
        recent = [x for x in self.board.samples if x[0] > now - window_ms]
        if any(x[6] & 2 for x in recent):
            return
        text = (
            f"the vent closed at a reading of {s.show(r.value)}; if the sensor reads low the "
            "holder still holds that much"
        )
        if self.o.yes:
            self.say(f"  note: {text}; open the manual bleed valve and run again to be sure")
        else:
            await self.pause(f"  {text}: open the manual bleed valve (MV) now.")

    async def span_point(self, n: int, what: str) -> bool:
        """Captures point n; True when there are no more points.

        The reference is read only once the reading is steady, and captured at
        once: a gas that is still cooling after a fill would otherwise move
        between the two."""
        o, s = self.o, self.scale
        assert s is not None
        given = o.references[n - 1] if n - 1 < len(o.references) else None
        target = o.apply[n - 1] if n - 1 < len(o.apply) else None
        if (o.references and given is None) or (o.apply and target is None):
            return True  # every point given on the command line is done
        if target is not None:
            await self.apply(n, target)
        elif given is not None:
            await self.pause(
                f"Step {n + 1}: apply {given:g} {s.unit}, close the supply, let it settle."
            )
        else:
            answer = await self.ask(
                f"Step {n + 1}: apply a known {what}, close the supply, and press Enter "
                "(or type done: no more points): "
            )
            if answer.strip().lower() in ("done", "d", "q"):
                return True
        while True:
            r = await self.board.steady(s, o.settle, o.timeout, f"point {n}")
            self.say(f"  steady at {s.show(r.value)}")
            if given is not None:
                reference = s.to_wire(given)
            else:
                value = await self._ask_number(f"  Reference {what} at point {n} in {s.unit}: ")
                reference = s.to_wire(value)
            problem = self._implausible(reference, r.value) or self._out_of_order(reference, r)
            if problem is None:
                break
            if given is not None or o.yes:
                raise Aborted(f"point {n}: reference {s.show(reference)}: {problem}")
            self.say(f"  refused: {problem}.")
        raw, tries = await self.board.capture(n, reference, r)
        self.points.append(Point(n, reference, r.value))
        self.say(
            f"  point {n}: reference {s.show(reference)}, reading {s.show(r.value)} "
            f"(noise {s.show(r.std)}), raw {raw}{_tries(tries)}"
        )
        return False

    async def apply(self, n: int, target: float) -> None:
        """The board makes point n: regulate to it, then isolate, so the reading
        that is captured and read back is of a pressure nothing moves."""
        o, s = self.o, self.scale
        assert s is not None
        pa = round(commands.to_mpa(target, "MPa" if s.load_cell else s.unit) * 1e6)
        self.say(f"Step {n + 1}: the board regulates to {commands.show(pa / 1e6, 'MPa')}.")
        await self.board.send(
            "SET_SETPOINT", f"apply point {n}", channel=o.channel, pressure=pa, rate=0
        )
        await self.board.reach(pa, o.settle, o.timeout, f"point {n}")
        await self.board.send("ISOLATE", f"isolate at point {n}", channel=o.channel)
        self.isolated = True
        self.say("  reached; isolated, waiting for the gas to settle")

    async def _ask_number(self, prompt: str, default: float | None = None) -> float:
        while True:
            text = (await self.ask(prompt)).strip()
            if not text and default is not None:
                return default
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value >= 0:
                return value
            self.say(f"  {text!r} is not a number of {self.scale.unit if self.scale else ''}")

    def _out_of_order(self, reference: int, r: Reading) -> str | None:
        s = self.scale
        assert s is not None
        prev = self.points[-1]
        step = s.full_scale / 100
        if reference - prev.reference < step or r.value - prev.before < step:
            return (
                f"each point must be at least 1 % FS ({s.show(step)}) above the one before "
                f"(point {prev.number}: reference {s.show(prev.reference)}, reading "
                f"{s.show(prev.before)}), so the points make one rising line"
            )
        return None

    def preview(self) -> None:
        s = self.scale
        assert s is not None
        self.say()
        self.say("Captured:")
        for p in self.points:
            self.say(
                f"  point {p.number}: reference {s.show(p.reference):>14}   reading "
                f"{s.show(p.before):>14}"
            )
        last = self.points[-1]
        if last.number and last.before:
            # span readings were taken after the tare, so they are zero-based
            self.say(f"  span correction {100 * (last.reference / last.before - 1):+.2f} %")

    async def hold_still(self) -> None:
        """A regulating channel would chase the reading that STORE changes, and
        move the pressure away from the reference just read: isolate it."""
        mode = MODES.get(self.board.samples[-1][3])
        if mode in ("HOLD", "RAMP", "VENT"):
            await self.board.send("ISOLATE", "isolate", channel=self.o.channel)
            self.isolated = True
            self.say(
                f"Isolated channel {self.o.channel} (it was {mode}), so the pressure stays at "
                "the reference while its reading changes."
            )

    async def verify(self) -> int:
        o, s = self.o, self.scale
        assert s is not None
        self.say()
        self.say("Check: the calibrated reading against the references.")
        last = self.points[-1]
        if last.number != 0:
            r = await self.board.steady(s, o.settle, o.timeout, f"point {last.number} check")
            last.after = r.value
            if not o.yes:
                # the pressure may have crept since the capture: compare with the reference now
                value = await self._ask_number(
                    f"  Reads {s.show(r.value)}. Reference now in {s.unit} "
                    f"(Enter: {s.show(last.reference, with_unit=False)} as captured): ",
                    s.from_wire(last.reference),
                )
                last.check = s.to_wire(value)
        zero = self.points[0]
        if o.apply:
            await self.board.send("VENT", "vent to check the zero", channel=o.channel, floor=0)
            self.say("  venting to check the zero")
        if o.yes:
            if o.apply:
                # the board vents by its own reading: in a scripted run there is
                # no one to open the bleed valve, so the zero is not known to be 0
                self.say("  zero not read back: open the bleed valve and check it by hand")
        else:
            answer = await self.ask(
                "  Vent/unload the holder fully (bleed valve open) to check the zero, then "
                "press Enter (s: skip): "
            )
            if answer.strip().lower() != "s":
                zero.after = (await self.board.steady(s, o.settle, o.timeout, "zero check")).value
        return self.report()

    def report(self) -> int:
        s = self.scale
        assert s is not None
        self.say()
        head = f"  {'point':>5}  {'reference':>14}  {'before':>14}  {'after':>14}  error"
        self.say(head)
        worst = 0.0
        checked = 0
        for p in self.points:
            if p.after is None:
                err = "not read back"
            else:
                e = p.after - p.compared_to
                worst = max(worst, abs(s.pct_fs(e)))
                checked += 1
                err = f"{s.show(e)} ({s.pct_fs(e):+.3f} % FS)"
            self.say(
                f"  {p.number:>5}  {s.show(p.compared_to):>14}  {s.show(p.before):>14}  "
                f"{s.show(p.after):>14}  {err}"
            )
        self.say()
        if checked and worst > self.o.accept:
            self.say(
                f"FAIL: an error of {worst:.3f} % FS is beyond --accept {self.o.accept:g} % FS. "
                "Was the reference steady? Calibrate again; if it stays, check the sensor."
            )
            return EXIT_FAILED
        if checked:
            self.say(f"PASS: every point read back within {worst:.3f} % FS")
        if self.o.apply:
            self.say(f"Channel {self.o.channel} is left venting at 0; `isopress set` to use it.")
        elif self.isolated:
            self.say(f"Channel {self.o.channel} is left isolated; `isopress set` resumes it.")
        return EXIT_OK

    async def check_zero_only(self) -> int:
        s = self.scale
        assert s is not None
        r = await self.board.steady(s, self.o.settle, self.o.timeout, "zero check")
        self.points[0].after = r.value
        self.say(f"Zeroed: now reads {s.show(r.value)}.")
        return self.report()


def _tries(n: int) -> str:
    return "" if n == 1 else f", taken {n} times to get a typical sample"


async def calibrate(opts: Options, ask: Ask = ask_stdin, out: TextIO | None = None) -> int:
    """The whole procedure; an exit code. Says what changed whenever it stops early."""
    session = Session(opts, ask, out)
    err = sys.stderr
    try:
        return await session.run()
    except UsageError as e:
        print(f"isopress calibrate: {e}", file=err)
        return EXIT_USAGE
    except Aborted as e:
        print(f"isopress calibrate: {e}; {session.state()}", file=err)
        return EXIT_FAILED
    except CalibrationError as e:
        print(f"isopress calibrate: {e}; {session.state()}", file=err)
        return EXIT_FAILED
    finally:
        await session.board.close()


def _port_exists(port: str) -> bool:
    return "://" in port or Path(port).exists()


def run(args: argparse.Namespace) -> int:
    if not _port_exists(args.port):
        print(f"isopress calibrate: no port {args.port}: check --port", file=sys.stderr)
        return EXIT_MISSING
    if args.apply and args.references and len(args.apply) != len(args.references):
        print(
            "isopress calibrate: give one --reference for each --apply "
            f"({len(args.references)} and {len(args.apply)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    opts = Options(
        port=args.port,
        channel=args.channel,
        references=list(args.references or []),
        apply=list(args.apply or []),
        unit=args.unit,
        yes=args.yes,
        zero_only=args.zero_only,
        max_correction=args.max_correction,
        accept=args.accept,
        settle=args.settle,
        timeout=args.timeout,
    )
    if opts.yes and not (opts.references or opts.zero_only):
        print(
            "isopress calibrate: --yes asks nothing, so give the points: --reference V "
            "(and --apply P), or --zero-only",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if opts.zero_only and (opts.references or opts.apply):
        print("isopress calibrate: --zero-only takes no --reference or --apply", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(calibrate(opts))
    except KeyboardInterrupt:
        print(
            "\nisopress calibrate: interrupted; if the zero step had run, the old calibration "
            "was cleared and nothing was stored: run it again",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _unit(text: str) -> str:
    return commands.unit_name(text, (*commands.UNITS, *FORCE_UNITS))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate",
        help="guided calibration of a channel's sensor, straight to the board",
        description=(
            "Zero (tare), capture known pressures or forces, store the fit on the board, "
            "and read back the error at each point. Talks to the board on --port itself: "
            "stop the bridge first."
        ),
        epilog=(
            "examples: isopress calibrate --port /dev/ttyACM0 1   (asks at every step); "
            "isopress calibrate --port /dev/ttyACM0 1 --apply 5 --reference 5.012 --yes; "
            "isopress calibrate --port /dev/ttyACM0 3 --unit kN --reference 10.0; "
            "isopress calibrate --port /dev/ttyACM0 4 --zero-only"
        ),
    )
    p.add_argument("--port", required=True, metavar="PATH", help="the board's serial port")
    p.add_argument("channel", type=commands.channel_number, metavar="CHANNEL")
    p.add_argument(
        "--reference",
        dest="references",
        type=commands.non_negative,
        action="append",
        metavar="V",
        help="known value at the next span point, in --unit (repeat for more points)",
    )
    p.add_argument(
        "--apply",
        type=commands.non_negative,
        action="append",
        metavar="P",
        help="let the board regulate to P (MPa, or --unit for pressure) before each point",
    )
    p.add_argument(
        "--unit",
        type=_unit,
        metavar="U",
        help="MPa (default), kPa, bar, psi; load cells: N (default) or kN",
    )
    p.add_argument("--yes", action="store_true", help="ask nothing (give --reference)")
    p.add_argument("--zero-only", action="store_true", help="only tare; keep the span")
    p.add_argument(
        "--max-correction",
        type=commands.positive,
        default=5.0,
        metavar="PCT",
        help="refuse a reference further than this %% from the reading, plus 0.5 %% FS (5)",
    )
    p.add_argument(
        "--accept",
        type=commands.positive,
        default=0.25,
        metavar="PCT_FS",
        help="the check passes within this %% of full scale (0.25)",
    )
    p.add_argument(
        "--settle",
        type=commands.positive,
        default=10.0,
        metavar="S",
        help="steady: three windows of S s of the board's time agree (10)",
    )
    p.add_argument(
        "--timeout",
        type=commands.positive,
        default=300.0,
        metavar="S",
        help="longest wait for a steady reading (300)",
    )
    p.set_defaults(func=run)
    return p
