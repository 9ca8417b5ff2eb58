"""`isopress monitor`: a live terminal view of every channel, from the bridge's stream.

    isopress monitor [--url URL] [--device D] [--channel C] [--unit U]
                     [--once | --count N] [--interval S] [--plain]

Per channel: pressure, setpoint, valves, mode, alarms and a sparkline of the
recent pressure; below, the latest events. On a terminal the view is redrawn
in place with plain ANSI escapes (no curses); piped, or with --plain, each
frame is printed after the last. Ctrl-C leaves it (exit 0).

The view is fed only by committed records (the bridge's stream), so what it
shows is already in the database. `Monitor` keeps the state and draws it;
the demo drives the same class.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from isopress import commands
from isopress.client import ApiError, Client, StreamMessage

SPARKS = "▁▂▃▄▅▆▇█"
HISTORY = 48  # sparkline width, in samples
EVENTS = 6  # event lines kept under the table

RED, YELLOW, GREEN, DIM, BOLD, RESET = (
    "\x1b[31m",
    "\x1b[33m",
    "\x1b[32m",
    "\x1b[2m",
    "\x1b[1m",
    "\x1b[0m",
)
# Home, each line cleared to its end, then the rest of the screen: no full
# clear per frame, so the view does not flicker.
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_ALL = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def sparkline(values: Iterable[float], min_span: float = 0.0) -> str:
    """Unicode bars from the lowest to the highest value; a flat series (less
    than `min_span` from end to end, so noise does not fill the bars) sits in
    the middle."""
    vs = list(values)
    if not vs:
        return ""
    lo, hi = min(vs), max(vs)
    span = hi - lo
    if span < min_span:
        mid = (lo + hi) / 2
        lo, span = mid - min_span / 2, min_span
    if span <= 0:
        return SPARKS[len(SPARKS) // 2 - 1] * len(vs)
    top = len(SPARKS) - 1
    return "".join(SPARKS[min(top, max(0, round((v - lo) / span * top)))] for v in vs)


@dataclass
class ChannelView:
    device: str
    channel: int
    kind: str = "-"
    full_scale: float | None = None  # MPa
    pressure: float | None = None
    setpoint: float | None = None
    mode: str | None = None
    fill: bool = False
    vent: bool = False
    alarms: list[str] = field(default_factory=list)
    seq: int = -1
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))


class Monitor:
    """State from stream messages, drawn as text. Thread-safe: one thread may
    feed while another draws."""

    def __init__(
        self,
        unit: str = "MPa",
        color: bool = False,
        devices: set[str] | None = None,
        channels: set[int] | None = None,
    ) -> None:
        self.unit = unit
        self.color = color
        self.devices = devices
        self.channels_wanted = channels
        self.channels: dict[tuple[str, int], ChannelView] = {}
        self.links: dict[str, str] = {}
        self.events: deque[str] = deque(maxlen=EVENTS)
        self.samples = 0  # sample messages taken
        self.changed = False
        self._lock = threading.Lock()

    def wants(self, device: str, channel: int | None = None) -> bool:
        if self.devices and device not in self.devices:
            return False
        return channel is None or not self.channels_wanted or channel in self.channels_wanted

    def _view(self, device: str, channel: int) -> ChannelView:
        key = (device, channel)
        v = self.channels.get(key)
        if v is None:
            v = self.channels[key] = ChannelView(device, channel)
        return v

    # -- input -----------------------------------------------------------------

    def seed(self, device: dict[str, Any]) -> None:
        """A device as GET /devices/D gives it, so the view starts full."""
        name = device["name"]
        if not self.wants(name):
            return
        with self._lock:
            self.links[name] = device.get("state", "?")
            for ch in device.get("channel_states", []):
                if not self.wants(name, ch["channel"]):
                    continue
                v = self._view(name, ch["channel"])
                v.kind = ch.get("kind") or "-"
                v.full_scale = ch.get("full_scale_mpa")
                pressure = ch.get("pressure_mpa")
                if pressure is not None:
                    v.pressure = pressure
                    v.setpoint = ch.get("setpoint_mpa")
                    v.mode = ch.get("mode")
                    valves = ch.get("valves") or {}
                    v.fill, v.vent = bool(valves.get("fill")), bool(valves.get("vent"))
                    v.alarms = list(ch.get("alarms") or [])
                    v.seq = ch.get("seq") if ch.get("seq") is not None else -1
                    v.history.append(pressure)
            self.changed = True

    def feed(self, m: StreamMessage) -> None:
        with self._lock:
            if m.kind == "sample":
                self._sample(m.data)
            elif m.kind == "event":
                d = m.data
                if self.wants(d.get("device", ""), d.get("channel") or None):
                    self.note(d.get("device", "?"), d.get("utc"), d.get("text") or d.get("kind"))
            elif m.kind == "link":
                d = m.data
                if self.wants(d.get("device", "")):
                    self.links[d["device"]] = d.get("state", "?")
                    detail = f" ({d['detail']})" if d.get("detail") else ""
                    self.note(d["device"], d.get("utc"), f"link {d.get('state')}{detail}")
            elif m.kind == "gap":
                d = m.data
                if self.wants(d.get("device", "")):
                    self.note(d.get("device", "?"), d.get("utc"), f"GAP {_gap_text(d)}")
            elif m.kind == "cycler_event":
                d = m.data
                if self.wants(d.get("device", ""), d.get("channel")):
                    self.note(
                        d["device"],
                        d.get("utc"),
                        f"cycler {d.get('kind')} cycle {d.get('cycle')} on ch {d.get('channel')}",
                    )
            elif m.kind == "overflow":
                self.note("bridge", time.time(), "the view fell behind; some samples skipped")
            self.changed = True

    def _sample(self, d: dict[str, Any]) -> None:
        device, channel = d.get("device", "?"), d.get("channel", 0)
        if not self.wants(device, channel):
            return
        v = self._view(device, channel)
        seq = d.get("seq", 0)
        self.samples += 1
        if seq <= v.seq:
            return  # a replayed sample already shown: the view keeps the newest
        v.seq = seq
        v.pressure = d.get("pressure_mpa")
        v.setpoint = d.get("setpoint_mpa")
        v.mode = d.get("mode")
        v.fill, v.vent = bool(d.get("fill")), bool(d.get("vent"))
        v.alarms = list(d.get("alarms") or [])
        if v.pressure is not None:
            v.history.append(v.pressure)

    def note(self, device: str, utc: float | None, text: str) -> None:
        when = time.strftime("%H:%M:%S", time.localtime(utc or time.time()))
        self.events.append(f"{when} {device}: {text}")

    # -- output ------------------------------------------------------------------

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def render(self) -> list[str]:
        """The view as lines of text (with ANSI colours when `color`)."""
        with self._lock:
            self.changed = False
            return self._render()

    def _render(self) -> list[str]:
        u = self.unit
        title = time.strftime("%Y-%m-%d %H:%M:%S")
        links = "  ".join(
            f"{name} {self._c(GREEN if s == 'connected' else RED, s)}"
            for name, s in sorted(self.links.items())
        )
        lines = [self._c(BOLD, f"isopress monitor  {title}") + (f"  {links}" if links else "")]
        head = (
            f"{'DEVICE':<10} {'CH':>2}  {'KIND':<9}  {'PRESSURE':>13}  {'SETPOINT':>13}  "
            f"{'MODE':<8}  {'VALVES':<9}  {'ALARMS':<16}  RECENT"
        )
        lines.append(self._c(DIM, head))
        if not self.channels:
            lines.append("  (no channels yet: waiting for the bridge's first samples)")
        for key in sorted(self.channels):
            v = self.channels[key]
            valves = commands.valves_text({"fill": v.fill, "vent": v.vent})
            alarms = ",".join(a for a in v.alarms if a != "LATCHED") or "-"
            if "LATCHED" in v.alarms:
                alarms += " (latched)"
            mode = v.mode or "-"
            min_span = (v.full_scale or 0) * 0.001  # 0.1 % FS: noise stays low
            spark = sparkline(v.history, min_span)
            rng = ""
            if v.history:
                rng = (
                    f" {commands.show(min(v.history), u, False)}.."
                    f"{commands.show(max(v.history), u, False)}"
                )
            row = (
                f"{v.device:<10} {v.channel:>2}  {v.kind[:9]:<9}  "
                f"{commands.show(v.pressure, u):>13}  {commands.show(v.setpoint, u):>13}  "
                f"{self._paint_mode(mode):<8}  {valves:<9}  "
            )
            row += self._c(RED, f"{alarms:<16}") if alarms != "-" else f"{alarms:<16}"
            lines.append(f"{row}  {spark}{self._c(DIM, rng)}")
        if self.events:
            lines.append("")
            lines.extend(self.events)
        return lines

    def _paint_mode(self, mode: str) -> str:
        if not self.color:
            return mode
        code = {"TRIPPED": RED, "ISOLATED": YELLOW, "VENT": YELLOW, "HOLD": GREEN}.get(mode)
        # pad before colouring so the escape codes do not upset the column
        return f"{code}{mode:<8}{RESET}" if code else mode


def _gap_text(d: dict[str, Any]) -> str:
    first, last = d.get("first_seq"), d.get("last_seq")
    what = d.get("stream", "samples")
    span = f"{first}..{last}" if last is not None else f"from {first}"
    return f"{what} {span} lost ({d.get('reason', '?')})"


class Screen:
    """Where frames go: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, out: TextIO, in_place: bool) -> None:
        self.out = out
        self.in_place = in_place
        self.frames = 0

    def __enter__(self) -> Screen:
        if self.in_place:
            self.out.write(CLEAR_ALL + HIDE_CURSOR)
        return self

    def draw(self, lines: list[str]) -> None:
        if self.in_place:
            body = "".join(line + CLEAR_LINE + "\n" for line in lines)
            self.out.write(HOME + body + CLEAR_BELOW)
        else:
            if self.frames:
                self.out.write("\n")
            self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.frames += 1

    def __exit__(self, *exc: object) -> None:
        if self.in_place:
            self.out.write(SHOW_CURSOR)
            self.out.flush()


def run(args: argparse.Namespace) -> int:
    c = Client(args.url, args.token, name="monitor")
    out = sys.stdout
    tty = out.isatty() and not args.plain
    devices = {args.device} if args.device else None
    m = Monitor(args.unit, color=tty, devices=devices, channels=set(args.channel or []) or None)
    try:
        known = [d["name"] for d in c.devices()]
        if args.device and args.device not in known:
            print(
                f"isopress monitor: no device {args.device!r}; known: {', '.join(known) or 'none'}",
                file=sys.stderr,
            )
            return commands.EXIT_USAGE
        for name in known:
            if m.wants(name):
                m.seed(c.device(name))
    except ApiError as e:
        return commands.api_exit(e, "monitor")
    frames = 1 if args.once else args.count
    try:
        with Screen(out, tty) as screen:
            screen.draw(m.render())
            if frames is not None and screen.frames >= frames:
                return commands.EXIT_OK
            return _follow(c, m, screen, args, frames)
    except KeyboardInterrupt:
        return commands.EXIT_OK


def _follow(
    c: Client, m: Monitor, screen: Screen, args: argparse.Namespace, frames: int | None
) -> int:
    kinds = "samples,event,link,gap,cycler_event"
    last = time.monotonic()
    while True:
        try:
            for msg in c.stream(device=args.device, kinds=kinds, timeout=30.0):
                m.feed(msg)
                now = time.monotonic()
                if m.changed and now - last >= args.interval:
                    last = now
                    screen.draw(m.render())
                    if frames is not None and screen.frames >= frames:
                        return commands.EXIT_OK
        except ApiError as e:
            if frames is not None:
                return commands.api_exit(e, "monitor")
            # live view: say so in the view and keep trying, like a gauge on the wall
            m.note("bridge", time.time(), f"stream lost: {e.message}; retrying")
            screen.draw(m.render())
        time.sleep(2.0)


def _frames(text: str) -> int:
    return commands.count(text, "frame")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "monitor",
        parents=[commands.common()],
        help="live terminal view of every channel",
        description=(
            "A live view of every channel from the bridge's stream: pressure, setpoint, "
            "valves, mode, alarms and a sparkline of recent pressure, with the latest "
            "events. Ctrl-C leaves."
        ),
    )
    p.add_argument("--device", metavar="D", help="only this device")
    p.add_argument(
        "--channel", type=commands.channel_number, action="append", metavar="C", help="repeatable"
    )
    commands.unit_option(p)
    once = p.add_mutually_exclusive_group()
    once.add_argument("--once", action="store_true", help="print one frame and exit")
    once.add_argument("--count", type=_frames, metavar="N", help="exit after N frames")
    p.add_argument(
        "--interval", type=commands.positive, default=0.5, metavar="S", help="redraw period (0.5)"
    )
    p.add_argument("--plain", action="store_true", help="no colours, no redrawing in place")
    p.set_defaults(func=run)
    return p
