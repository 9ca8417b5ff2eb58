"""The `isopress` commands that talk to a running bridge over its HTTP API.

    isopress status  [--device D] [--json]
    isopress set     DEVICE CHANNEL PRESSURE [--unit U] [--rate R] [--wait]
    isopress profile load|start|stop|advance|show DEVICE CHANNEL [FILE.toml]
    isopress profile check FILE.toml
    isopress isolate DEVICE CHANNEL
    isopress vent    DEVICE CHANNEL [--floor P] [--yes]
    isopress ack     DEVICE CHANNEL [ALARM ...]
    isopress config  DEVICE KEY [VALUE] [--channel C] [--raw]
    isopress events  [DEVICE] [--channel C] [--kind K] [--since T] [--last N]
    isopress leak-test DEVICE CHANNEL [--pressure P] [--minutes M] [--max-rate PA_S]

Every one takes `--url` (default $ISOPRESS_URL, else the bridge's own
default) and `--token` (default $ISOPRESS_TOKEN; needed for anything that
changes the board). Pressure is MPa everywhere inside; `--unit kPa|bar|psi`
converts at this edge only, in both directions.

Exit codes: 0 done; 1 the bridge or the board refused or failed it, or a
test did not pass; 2 bad usage, including an unknown device, channel or key
and a missing or wrong token (the message says what exists); 3 a file named
on the command line is missing.

Profile files (TOML). One `[[step]]` table per step, in order, at most 17;
each has exactly one action key and only that action's options:

    # activation then target: 5 MPa until the cycler's first cycle end, then 2 MPa
    name = "activation-then-target"     # optional, shown by `profile show`
    unit = "MPa"                        # optional: MPa (default), kPa, bar, psi

    [[step]]
    set = 5.0          # go to 5 MPa at the channel's ramp limit; the next step starts at once
    [[step]]
    wait = "host"      # until `isopress profile advance` or the cycler's cycle-end event
    [[step]]
    ramp = 2.0         # ramp to 2 MPa; done when the setpoint gets there
    rate = 0.05        # unit per second; absent or 0: the channel's ramp limit
    [[step]]
    hold = "2 h"       # seconds as a number, or a string with s, min, h or d

`set` and `ramp` take `rate`; `wait` ("host" or "trigger") takes `timeout`
(a duration as for `hold`; absent or 0: wait for ever). Anything else is an
error naming the step and the key, and nothing is sent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
import tomllib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isopress import client as client_mod
from isopress.client import ApiError, Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3

MAX_STEPS = 17  # one PROFILE_LOAD frame's worth (protocol/PROTOCOL.md)
MAX_DURATION_S = 0xFFFFFFFF / 1000  # a u32 of milliseconds, 49.7 days

# At the user's edge only: factors to MPa.
UNITS: dict[str, float] = {"MPa": 1.0, "kPa": 1e-3, "bar": 0.1, "psi": 0.006894757293168361}
# Decimals that show about 0.1 kPa in each unit.
DECIMALS: dict[str, int] = {"MPa": 4, "kPa": 1, "bar": 3, "psi": 2}
DURATION_UNITS: dict[str, float] = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def default_url() -> str:
    return os.environ.get("ISOPRESS_URL") or client_mod.DEFAULT_URL


# -- units ------------------------------------------------------------------------


def unit_name(text: str, units: Collection[str] = UNITS) -> str:
    """A unit (a pressure unit unless told) as the user typed it, in its canonical spelling."""
    for name in units:
        if text.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"{text!r}: the units are {', '.join(units)}")


def to_mpa(value: float, unit: str) -> float:
    return value * UNITS[unit]


def from_mpa(mpa: float, unit: str) -> float:
    return mpa / UNITS[unit]


def show(mpa: float | None, unit: str = "MPa", with_unit: bool = True) -> str:
    """A pressure for people; '-' when there is none."""
    if mpa is None:
        return "-"
    text = f"{from_mpa(mpa, unit):.{DECIMALS[unit]}f}"
    return f"{text} {unit}" if with_unit else text


def number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def non_negative(text: str) -> float:
    v = number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return v


def positive(text: str) -> float:
    v = number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return v


def count(text: str, what: str = "") -> int:
    """A whole number, at least 1 (of `what`, for the message)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1 {what}".rstrip())
    return n


def channel_number(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: channels are numbered 1, 2, ... as on the rig"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: channels are numbered from 1, as on the rig")
    return n


def duration_s(value: Any, where: str) -> float:
    """Seconds from a number or a string such as '90 s', '5 min', '2 h', '1.5 d'."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: give seconds or a text such as '5 min', not {value!r}")
    if isinstance(value, int | float):
        s = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|min|h|d)?\s*", value)
        if not m:
            raise ValueError(
                f"{where}: {value!r} is not a duration; write e.g. 300, '90 s', '5 min', '2 h'"
            )
        s = float(m.group(1)) * DURATION_UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"{where}: give seconds or a text such as '5 min', not {value!r}")
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{where}: {value!r} must be 0 or more")
    if s > MAX_DURATION_S:
        raise ValueError(f"{where}: {value!r} is longer than the board counts (49.7 days)")
    return s


def show_duration(s: float) -> str:
    if s >= 86400 and s % 3600 == 0:
        return f"{s / 86400:g} d"
    if s >= 3600:
        return f"{s / 3600:g} h"
    if s >= 60:
        return f"{s / 60:g} min"
    return f"{s:g} s"


# -- the profile file ----------------------------------------------------------------

_ACTIONS = ("set", "ramp", "hold", "wait")
_OPTIONS = {"set": {"rate"}, "ramp": {"rate"}, "hold": set(), "wait": {"timeout"}}
_TOP_KEYS = {"name", "unit", "step"}


class ProfileError(ValueError):
    """A profile file that cannot be loaded; the message names the step and the key."""


@dataclass(frozen=True)
class Profile:
    name: str
    steps: list[dict[str, Any]]  # as the API takes them: MPa, MPa/s, s


def _pressure_value(value: Any, where: str, unit: str, per_s: bool = False) -> float:
    """A pressure (or, per_s, a rate) in `unit` from the file, as MPa (MPa/s)."""
    shown = f"{unit}/s" if per_s else unit
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{where}: expected a number of {shown}, not {value!r}")
    if value < 0:
        raise ProfileError(f"{where}: {value} {shown} is below 0")
    return to_mpa(float(value), unit)


def parse_profile(data: dict[str, Any], source: str = "profile") -> Profile:
    """A profile from the file's TOML (as tomllib gives it); ProfileError if it is not one."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ProfileError(
            f"{source}: unknown key {sorted(unknown)[0]!r} (allowed: name, unit, [[step]])"
        )
    unit = data.get("unit", "MPa")
    try:
        unit = unit_name(unit) if isinstance(unit, str) else unit_name(repr(unit))
    except argparse.ArgumentTypeError as e:
        raise ProfileError(f"{source}: unit {e}") from None
    name = data.get("name", "")
    if not isinstance(name, str):
        raise ProfileError(f"{source}: name must be text, not {name!r}")
    raw = data.get("step")
    if not isinstance(raw, list) or not raw:
        raise ProfileError(f"{source}: no steps; write one [[step]] table per step")
    if len(raw) > MAX_STEPS:
        raise ProfileError(f"{source}: {len(raw)} steps; a board takes at most {MAX_STEPS}")
    steps = []
    for i, s in enumerate(raw):
        where = f"{source}: step {i}"
        if not isinstance(s, dict):
            raise ProfileError(f"{where}: expected a [[step]] table")
        actions = [a for a in _ACTIONS if a in s]
        if len(actions) != 1:
            got = ", ".join(actions) if actions else "none"
            raise ProfileError(f"{where}: give exactly one of set, ramp, hold, wait (found {got})")
        action = actions[0]
        extra = set(s) - {action} - _OPTIONS[action]
        if extra:
            allowed = ", ".join(sorted(_OPTIONS[action])) or "nothing else"
            raise ProfileError(
                f"{where}: {action} does not take {sorted(extra)[0]!r} (it takes {allowed})"
            )
        if action in ("set", "ramp"):
            step: dict[str, Any] = {
                "kind": action.upper(),
                "target_mpa": _pressure_value(s[action], f"{where}: {action}", unit),
                "rate_mpa_s": _pressure_value(s.get("rate", 0), f"{where}: rate", unit, True),
            }
        elif action == "hold":
            try:
                step = {"kind": "HOLD", "duration_s": duration_s(s["hold"], f"{where}: hold")}
            except ValueError as e:
                raise ProfileError(str(e)) from None
        else:
            what = s["wait"]
            if not isinstance(what, str) or what.lower() not in ("host", "trigger"):
                raise ProfileError(f'{where}: wait = "host" or "trigger", not {what!r}')
            try:
                timeout = duration_s(s.get("timeout", 0), f"{where}: timeout")
            except ValueError as e:
                raise ProfileError(str(e)) from None
            step = {"kind": "WAIT", "wait_for": what.upper(), "timeout_s": timeout}
        steps.append(step)
    return Profile(name, steps)


def load_profile_file(path: Path) -> Profile:
    """ProfileError for a file that is not a profile; FileNotFoundError if it is missing."""
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ProfileError(f"{path}: not valid TOML: {e}") from None
    return parse_profile(data, str(path))


def describe_step(step: dict[str, Any], unit: str = "MPa") -> str:
    kind = step.get("kind")
    if kind in ("SET", "RAMP"):
        rate = step.get("rate_mpa_s") or 0
        how = f"at {show(rate, unit)}/s" if rate else "at the ramp limit"
        verb = "set" if kind == "SET" else "ramp to"
        return f"{verb} {show(step['target_mpa'], unit)} {how}"
    if kind == "HOLD":
        return f"hold {show_duration(step['duration_s'])}"
    if kind == "WAIT":
        who = "the host (cycle end or advance)" if step["wait_for"] == "HOST" else "the trigger"
        t = step.get("timeout_s") or 0
        return f"wait for {who}" + (f", at most {show_duration(t)}" if t else "")
    return str(step)


# -- talking to the bridge ------------------------------------------------------------


def make_client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token, name="cli")


def api_exit(e: ApiError, command: str) -> int:
    """Print a refusal the way a person can act on it; its exit code."""
    text = e.message or e.error
    if e.status == 0:
        print(
            f"isopress {command}: {text}\n  is `isopress bridge` running there? (--url, "
            "$ISOPRESS_URL)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    hint = ""
    if e.status == 401:
        hint = "\n  give the bridge's write token: --token T or $ISOPRESS_TOKEN"
    elif e.status == 403:
        hint = "\n  the token is not the bridge's: check --token / $ISOPRESS_TOKEN"
    known = e.detail.get("known") if isinstance(e.detail, dict) else None
    if known:
        hint += f"\n  known: {', '.join(str(k) for k in known)}"
    print(f"isopress {command}: {text}{hint}", file=sys.stderr)
    if e.status in (400, 401, 403, 404):
        return EXIT_USAGE
    return EXIT_FAILED


def _guard(command: str, fn: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ApiError as e:
            return api_exit(e, command)

    return run


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


# -- status -----------------------------------------------------------------------------


def _table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _ago(utc: float | None, now: float) -> str:
    if utc is None:
        return "-"
    d = max(0.0, now - utc)
    if d < 60:
        return f"{d:.1f} s"
    if d < 3600:
        return f"{d / 60:.0f} min"
    return f"{d / 3600:.1f} h"


def _uptime(s: float) -> str:
    h, rest = divmod(int(s), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def valves_text(valves: dict[str, bool] | None) -> str:
    if not valves:
        return "-"
    on = [name for name in ("fill", "vent") if valves.get(name)]
    return "+".join(on) if on else "closed"


def profile_text(p: dict[str, Any] | None) -> str:
    if not p or not p.get("steps"):
        return "-"
    n = len(p["steps"])
    if not p.get("running"):
        return f"loaded ({n} steps)"
    step = p.get("step")
    where = f"step {step}/{n - 1}" if step is not None else "running"
    return where + (" waits for host" if p.get("waiting_for_host") else "")


def cmd_status(args: argparse.Namespace) -> int:
    c = make_client(args)
    status = c.status()
    links = status.get("links", {})
    if args.device and args.device not in links:
        raise ApiError(
            404, "unknown_device", f"no device {args.device!r}", {"known": sorted(links)}
        )
    names = [args.device] if args.device else sorted(links)
    views = {n: c.device(n) for n in names}
    if args.json:
        print(json.dumps({"status": status, "devices": views}, indent=2))
        return EXIT_OK
    unit = args.unit
    now = time.time()
    store = status.get("store", {})
    health = "ok" if status.get("ok", True) else f"FAILING: {store.get('error')}"
    print(
        f"bridge {args.url}  isopress {status.get('version', '?')}  "
        f"up {_uptime(status.get('uptime_s', 0))}"
    )
    print(f"store  {store.get('path', '?')}  {health}  pending rows {store.get('pending_rows', 0)}")
    if not names:
        print("no boards yet (the bridge looks for them on USB, or give it --device)")
        return EXIT_OK
    print()
    rows = []
    for n in names:
        link = links[n]
        stats = link.get("stats") or {}
        clock = link.get("clock") or {}
        err = clock.get("error_ms")
        drops = sum((stats.get("drops") or {}).values())
        rows.append(
            [
                n,
                str(link.get("state", "?")),
                str(link.get("board_id") or "-"),
                str(link.get("firmware") or "-"),
                "-" if err is None else f"±{err:.0f} ms",
                f"{stats.get('frames_in', 0)}/{stats.get('frames_out', 0)}",
                str(drops),
                str(stats.get("retransmits", 0)),
                f"{stats.get('gap_records', 0)} ({stats.get('lost_samples', 0)} lost)",
            ]
        )
    print(
        _table(
            rows,
            ["DEVICE", "LINK", "BOARD", "FW", "CLOCK", "FRAMES IN/OUT", "DROPS", "RETX", "GAPS"],
        )
    )
    for n in names:
        detail = links[n].get("detail")
        if links[n].get("state") != "connected" and detail:
            print(f"  {n}: {detail}")
    print()
    rows = []
    for n in names:
        for ch in views[n].get("channel_states", []):
            rows.append(
                [
                    n,
                    str(ch["channel"]),
                    str(ch.get("kind") or "-"),
                    show(ch.get("pressure_mpa"), unit),
                    show(ch.get("setpoint_mpa"), unit),
                    str(ch.get("mode") or "-"),
                    valves_text(ch.get("valves")),
                    ",".join(ch.get("alarms") or []) or "-",
                    profile_text(ch.get("profile")),
                    _ago(ch.get("utc"), now),
                ]
            )
    head = ["DEVICE", "CH", "KIND", "PRESSURE", "SETPOINT", "MODE", "VALVES", "ALARMS"]
    print(_table(rows, [*head, "PROFILE", "AGE"]))
    latched = [r for r in rows if "LATCHED" in r[7]]
    for r in latched:
        print(
            f"  {r[0]} channel {r[1]}: latched alarm; find the cause, then "
            f"`isopress ack {r[0]} {r[1]}`"
        )
    return EXIT_OK


# -- set and wait ------------------------------------------------------------------------


def reached(view: dict[str, Any], target: float, band: float) -> bool:
    p = view.get("pressure_mpa")
    return (
        p is not None
        and view.get("mode") == "HOLD"
        and abs((view.get("setpoint_mpa") or 0) - target) < 2e-6  # the board keeps whole Pa
        and abs(p - target) <= band
    )


def wait_until_reached(
    c: Client,
    device: str,
    channel: int,
    target: float,
    band: float,
    timeout_s: float,
    unit: str = "MPa",
    out: Any = None,
) -> dict[str, Any]:
    """Polls the channel until it holds `target` within `band` (MPa); TimeoutError."""
    out = out or sys.stdout
    deadline = time.monotonic() + timeout_s
    last_print = 0.0
    while True:
        view = c.channel(device, channel)
        if reached(view, target, band):
            return view
        if "LATCHED" in (view.get("alarms") or []):
            raise RuntimeError(
                f"{device} channel {channel} latched {', '.join(view['alarms'])} "
                f"at {show(view.get('pressure_mpa'), unit)}"
            )
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(
                f"{device} channel {channel} did not reach {show(target, unit)} within "
                f"{timeout_s:g} s (at {show(view.get('pressure_mpa'), unit)}, "
                f"mode {view.get('mode')})"
            )
        if now - last_print >= 5:
            last_print = now
            print(
                f"  {show(view.get('pressure_mpa'), unit)} ({view.get('mode')}), "
                f"setpoint {show(view.get('setpoint_mpa'), unit)}",
                file=out,
                flush=True,
            )
        time.sleep(0.2)


def band_for(view: dict[str, Any], target: float, pct: float) -> float:
    """The `--within` band in MPa: pct of the target, at least 0.1 % of full scale."""
    fs = view.get("full_scale_mpa") or 0.0
    return max(abs(target) * pct / 100, fs * 0.001)


def cmd_set(args: argparse.Namespace) -> int:
    c = make_client(args)
    target = to_mpa(args.pressure, args.unit)
    rate = None if args.rate is None else to_mpa(args.rate, args.unit)
    before = c.channel(args.device, args.channel)
    c.set_pressure(args.device, args.channel, target, rate)
    how = "the channel's ramp limit" if not rate else f"{show(rate, args.unit)}/s"
    print(
        f"{args.device} channel {args.channel}: setpoint {show(target, args.unit)} "
        f"(was {show(before.get('setpoint_mpa'), args.unit)}, at "
        f"{show(before.get('pressure_mpa'), args.unit)}), at {how}"
    )
    if not args.wait:
        return EXIT_OK
    band = band_for(before, target, args.within)
    try:
        view = wait_until_reached(
            c, args.device, args.channel, target, band, args.timeout, args.unit
        )
    except (TimeoutError, RuntimeError) as e:
        print(f"isopress set: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"reached: {show(view['pressure_mpa'], args.unit)}, holding")
    return EXIT_OK


# -- profiles -------------------------------------------------------------------------


def _print_profile(
    steps: list[dict[str, Any]],
    unit: str,
    current: int | None = None,
    waiting: bool = False,
    out: Any = None,
) -> None:
    out = out or sys.stdout
    for i, s in enumerate(steps):
        mark = "->" if i == current else "  "
        note = "  (waiting for the host)" if i == current and waiting else ""
        print(f"{mark} {i:2d}  {describe_step(s, unit)}{note}", file=out)


def cmd_profile(args: argparse.Namespace) -> int:
    action = args.action
    if action == "check":
        prof = _read_profile(args.target)
        if prof is None:
            return EXIT_USAGE
        label = f" {prof.name!r}" if prof.name else ""
        print(f"{args.target}: profile{label}, {len(prof.steps)} steps, fits one board")
        _print_profile(prof.steps, args.unit)
        return EXIT_OK
    c = make_client(args)
    d, ch = args.device, args.channel
    if action == "load":
        prof = _read_profile(args.file)
        if prof is None:
            return EXIT_USAGE
        c.load_profile(d, ch, prof.steps)
        label = f" {prof.name!r}" if prof.name else ""
        print(f"{d} channel {ch}: loaded profile{label}, {len(prof.steps)} steps (not started)")
        _print_profile(prof.steps, args.unit)
        print(f"start it with: isopress profile start {d} {ch}")
    elif action == "start":
        c.start_profile(d, ch, args.from_step)
        print(f"{d} channel {ch}: profile started at step {args.from_step}")
    elif action == "stop":
        c.stop_profile(d, ch)
        print(f"{d} channel {ch}: profile stopped; the channel holds its present setpoint")
    elif action == "advance":
        r = c.advance_profile(d, ch, args.from_step, args.cycle)
        print(f"{d} channel {ch}: profile left step {r.get('from_step')} (cycle {args.cycle})")
    else:  # show
        p = c.profile(d, ch)
        steps = p.get("steps")
        if not steps:
            print(f"{d} channel {ch}: no profile loaded (through this bridge)")
            return EXIT_OK
        state = "running" if p.get("running") else "not running"
        print(f"{d} channel {ch}: profile {state}, {len(steps)} steps")
        _print_profile(steps, args.unit, p.get("step"), bool(p.get("waiting_for_host")))
    return EXIT_OK


def _read_profile(path: Path) -> Profile | None:
    try:
        return load_profile_file(path)
    except FileNotFoundError:
        raise MissingFile(f"no profile file {path}") from None
    except ProfileError as e:
        print(f"isopress profile: {e}", file=sys.stderr)
        return None


class MissingFile(Exception):
    """A file named on the command line does not exist (exit 3)."""


# -- isolate, vent, ack, config ---------------------------------------------------------------


def cmd_isolate(args: argparse.Namespace) -> int:
    c = make_client(args)
    c.isolate(args.device, args.channel)
    view = c.channel(args.device, args.channel)
    print(
        f"{args.device} channel {args.channel}: isolated, every valve closed, holding "
        f"{show(view.get('pressure_mpa'), args.unit)}; `isopress set` resumes regulation"
    )
    return EXIT_OK


def cmd_vent(args: argparse.Namespace) -> int:
    c = make_client(args)
    floor = to_mpa(args.floor, args.unit)
    view = c.channel(args.device, args.channel)
    p = view.get("pressure_mpa")
    if not args.yes:
        question = (
            f"vent {args.device} channel {args.channel} from {show(p, args.unit)} down to "
            f"{show(floor, args.unit)}? A cell in the holder loses its pressure."
        )
        if not sys.stdin.isatty():
            print(
                f"isopress vent: {question}\n  not asked (no terminal): give --yes to vent",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not _ask(question):
            print("not vented")
            return EXIT_FAILED
    c.vent(args.device, args.channel, floor)
    print(f"{args.device} channel {args.channel}: venting to {show(floor, args.unit)}")
    return EXIT_OK


def cmd_ack(args: argparse.Namespace) -> int:
    c = make_client(args)
    names = [a.upper() for a in args.alarms]
    if not names:
        active = c.channel(args.device, args.channel).get("alarms") or []
        names = [a for a in active if a != "LATCHED"]
        if not names:
            print(f"{args.device} channel {args.channel}: no alarm to acknowledge")
            return EXIT_OK
    c.ack_alarms(args.device, args.channel, names)
    print(f"{args.device} channel {args.channel}: acknowledged {', '.join(names)}")
    time.sleep(0.3)  # the board's next telemetry shows what is left
    view = c.channel(args.device, args.channel)
    left = [a for a in view.get("alarms") or [] if a != "LATCHED"]
    if left:
        print(
            f"  still active: {', '.join(left)} (an alarm that is not latched stays while its "
            "cause does)"
        )
    if view.get("mode") == "ISOLATED":
        print("  the channel stays isolated until it gets a setpoint (`isopress set`)")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    c = make_client(args)
    where = f"{args.device}" + (f" channel {args.channel}" if args.channel else "")
    if args.value is None:
        r = c.config(args.device, args.key, args.channel)
    elif args.raw:
        try:
            raw = int(args.value)
        except ValueError:
            print(f"isopress config: --raw takes an integer, not {args.value!r}", file=sys.stderr)
            return EXIT_USAGE
        r = c.set_config(args.device, args.key, channel=args.channel, raw=raw)
    else:
        r = c.set_config(args.device, args.key, number(args.value), channel=args.channel)
    unit = r.get("unit") or ""
    unit = "" if unit in ("-", "") else f" {unit}"
    verb = "=" if args.value is None else "set to"
    print(f"{where} {r.get('key', args.key)} {verb} {r.get('value')}{unit} (raw {r.get('raw')})")
    return EXIT_OK


# -- events ------------------------------------------------------------------------------------


def cmd_events(args: argparse.Namespace) -> int:
    c = make_client(args)
    # the API answers oldest first: a start bounds what it has to send
    since = args.since if args.since is not None else time.time() - 86400
    rows = c.events(since=since, device=args.device, channel=args.channel, limit=None)
    kinds = {k.upper() for k in args.kind or []}
    if kinds:
        rows = [e for e in rows if e.get("kind") in kinds]
    rows = rows[-args.last :]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no events match")
        return EXIT_OK
    for e in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["utc"])) if e.get("utc") else "-"
        print(f"{when}Z  {e.get('device')}  {e.get('text') or e.get('kind')}")
    return EXIT_OK


# -- leak-down test -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakResult:
    rate_pa_s: float  # change of the end windows' means per second (negative = falling)
    fit_pa_s: float  # least-squares slope over the whole test
    start_mpa: float
    end_mpa: float
    seconds: float  # device time between the two windows' middles
    samples: int


def leak_rate(points: Iterable[tuple[float, float]], window_s: float) -> LeakResult:
    """(device time s, pressure MPa) pairs -> the fall rate, from the means of the
    first and the last `window_s` (so noise averages out and an oven swing of
    the test's length cancels) and, as a check, a least-squares slope."""
    pts = sorted(points)
    if len(pts) < 4:
        raise ValueError("too few samples to work out a leak rate")
    t0, t1 = pts[0][0], pts[-1][0]
    if t1 - t0 < 2 * window_s:
        window_s = (t1 - t0) / 4
    head = [p for p in pts if p[0] <= t0 + window_s]
    tail = [p for p in pts if p[0] >= t1 - window_s]
    ta, pa = statistics.fmean(t for t, _ in head), statistics.fmean(p for _, p in head)
    tb, pb = statistics.fmean(t for t, _ in tail), statistics.fmean(p for _, p in tail)
    slope = statistics.linear_regression([t for t, _ in pts], [p for _, p in pts]).slope
    return LeakResult((pb - pa) * 1e6 / (tb - ta), slope * 1e6, pa, pb, tb - ta, len(pts))


def _device_time(view: dict[str, Any]) -> float | None:
    return view.get("device_time")


class _Watch:
    """A long wait's wall-clock deadline, and when to say how it is going."""

    EVERY_S = 30.0

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what, self.timeout_s = what, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.last_print = time.monotonic()

    def report_due(self) -> bool:
        """TimeoutError past the deadline; else whether to print progress now."""
        now = time.monotonic()
        if now > self.deadline:
            raise TimeoutError(
                f"{self.what} did not finish within {self.timeout_s:g} s of wall time"
            )
        if now - self.last_print < self.EVERY_S:
            return False
        self.last_print = now
        return True


def _wait_device_seconds(
    c: Client,
    device: str,
    channel: int,
    seconds: float,
    timeout_s: float,
    what: str,
    unit: str,
) -> dict[str, Any]:
    """Waits until the board's own clock has moved `seconds` (a simulated board
    may run faster than the wall clock); checks for latched alarms on the way."""
    start = _device_time(c.channel(device, channel))
    if start is None:
        raise RuntimeError(f"{device} channel {channel} has no samples")
    watch = _Watch(what, timeout_s)
    while True:
        view = c.channel(device, channel)
        now = _device_time(view) or start
        if now - start >= seconds:
            return view
        if "LATCHED" in (view.get("alarms") or []):
            raise RuntimeError(
                f"{device} channel {channel} latched {', '.join(view['alarms'])} during {what}"
            )
        if watch.report_due():
            print(
                f"  {what}: {now - start:.0f} of {seconds:.0f} s, "
                f"{show(view.get('pressure_mpa'), unit)}",
                flush=True,
            )
        time.sleep(0.2)


def collect_isolated(
    c: Client,
    device: str,
    channel: int,
    rest: float,
    seconds: float,
    timeout_s: float,
    unit: str,
) -> list[tuple[float, float]]:
    """(board time s, MPa) of the isolated channel for `seconds` of the board's
    clock after `rest` seconds, from the live stream. By the board's clock, not
    by UTC: a sample's UTC is the bridge's mapping of it, which a simulated
    board's fast clock bends."""
    points: dict[int, tuple[float, float]] = {}
    start: float | None = None
    watch = _Watch("the test", timeout_s)
    for m in c.stream(device=device, channel=channel, kinds="samples", timeout=30.0):
        if m.kind == "overflow":
            raise RuntimeError("this command fell behind the bridge's stream")
        if m.kind != "sample":
            continue
        d = m.data
        if d.get("mode") != "ISOLATED":
            if points and d["seq"] > max(points):
                raise RuntimeError(f"the channel left ISOLATED ({d.get('mode')}) during the test")
            continue
        if "LATCHED" in (d.get("alarms") or []):
            raise RuntimeError(f"the channel latched {', '.join(d['alarms'])} during the test")
        t = d["device_time"]
        start = t if start is None else min(start, t)
        if t - start >= rest:
            points[d["seq"]] = (t, d["pressure_mpa"])
        if t - start >= rest + seconds:
            return sorted(points.values())
        if watch.report_due():
            print(
                f"  leak-down: {t - start:.0f} of {rest + seconds:.0f} s, "
                f"{show(d.get('pressure_mpa'), unit)}",
                flush=True,
            )
    raise RuntimeError("the bridge closed its stream during the test")


def cmd_leak_test(args: argparse.Namespace) -> int:
    c = make_client(args)
    d, ch, unit = args.device, args.channel, args.unit
    target = to_mpa(args.pressure, unit)
    view = c.channel(d, ch)
    if view.get("kind") == "MONITOR":
        print(f"isopress leak-test: {d} channel {ch} is a monitor channel: no gas", file=sys.stderr)
        return EXIT_USAGE
    seconds = args.minutes * 60
    print(
        f"leak-down test, {d} channel {ch}: fill to {show(target, unit)}, settle "
        f"{args.settle:g} s, isolate, rest {args.rest:g} s, measure for "
        f"{show_duration(seconds)}; pass if it falls slower than {args.max_rate:g} Pa/s"
    )
    try:
        c.set_pressure(d, ch, target)
        band = band_for(view, target, 0.5)
        wait_until_reached(c, d, ch, target, band, args.timeout, unit)
        _wait_device_seconds(c, d, ch, args.settle, args.timeout, "settling", unit)
        c.isolate(d, ch)
        print(f"isolated at {show(c.channel(d, ch).get('pressure_mpa'), unit)}", flush=True)
        points = collect_isolated(
            c, d, ch, args.rest, seconds, (args.rest + seconds) * 2 + args.timeout, unit
        )
    except (TimeoutError, RuntimeError) as e:
        print(f"isopress leak-test: {e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        r = leak_rate(points, min(60.0, seconds / 10))
    except ValueError as e:
        print(f"isopress leak-test: {e}", file=sys.stderr)
        return EXIT_FAILED
    per_day = -r.rate_pa_s * 86400 / (r.start_mpa * 1e6) * 100 if r.start_mpa > 0 else 0.0
    print(
        f"start {show(r.start_mpa, unit)}, end {show(r.end_mpa, unit)} after "
        f"{show_duration(round(r.seconds))}: {r.rate_pa_s:+.2f} Pa/s ({per_day:.2f} %/day of "
        f"the start pressure; least-squares slope {r.fit_pa_s:+.2f} Pa/s, {r.samples} samples)"
    )
    passed = -r.rate_pa_s <= args.max_rate
    if args.leave_isolated:
        print("the channel stays isolated; `isopress set` resumes regulation")
    else:
        c.set_pressure(d, ch, target)
        print(f"regulating again at {show(target, unit)}")
    if passed:
        print(f"PASS: falls {max(0.0, -r.rate_pa_s):.2f} Pa/s <= {args.max_rate:g} Pa/s")
        return EXIT_OK
    print(
        f"FAIL: falls {-r.rate_pa_s:.2f} Pa/s > {args.max_rate:g} Pa/s: find the leak (snoop "
        "liquid on every fitting, the fill valve's seat, the vent valve's seat)"
    )
    return EXIT_FAILED


# -- the parsers ----------------------------------------------------------------------------


def common() -> argparse.ArgumentParser:
    """--url and --token, shared by every command that talks to a bridge."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--url",
        default=default_url(),
        help="the bridge's address (default $ISOPRESS_URL, else %(default)s)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("ISOPRESS_TOKEN"),
        help="the bridge's write token (default $ISOPRESS_TOKEN)",
    )
    return p


def unit_option(p: argparse.ArgumentParser, what: str = "pressures") -> None:
    p.add_argument(
        "--unit",
        type=unit_name,
        default="MPa",
        metavar="U",
        help=f"unit of {what}: MPa (default), kPa, bar or psi",
    )


def _device_channel(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", metavar="DEVICE", help="device name, as `isopress status` lists")
    p.add_argument("channel", type=channel_number, metavar="CHANNEL", help="channel number")


def _command(
    sub: Any, name: str, run: Callable[[argparse.Namespace], int], **kw: Any
) -> argparse.ArgumentParser:
    """A command that talks to a bridge; the bridge's refusals print under its name."""
    p = sub.add_parser(name, parents=[common()], **kw)
    p.set_defaults(func=_guard(name, run))
    return p


def add_parsers(sub: Any) -> None:
    """Registers status, set, profile, isolate, vent, ack, config, events, leak-test."""
    p = _command(
        sub,
        "status",
        cmd_status,
        help="devices, channels, live state, alarms and link figures",
        description="Show the bridge, its boards and links, and every channel's live state.",
    )
    p.add_argument("--device", metavar="D", help="only this device")
    p.add_argument("--json", action="store_true", help="print the bridge's answers as JSON")
    unit_option(p)

    p = _command(
        sub,
        "set",
        cmd_set,
        help="give a channel a setpoint",
        description=(
            "Give a channel a pressure setpoint. The board ramps to it at --rate (default: "
            "the channel's ramp limit), approaching a lower setpoint from above."
        ),
    )
    _device_channel(p)
    p.add_argument("pressure", type=non_negative, metavar="PRESSURE", help="setpoint (gauge)")
    unit_option(p, "PRESSURE and --rate")
    p.add_argument("--rate", type=positive, metavar="R", help="ramp rate, unit per second")
    p.add_argument("--wait", action="store_true", help="wait until the channel holds it")
    p.add_argument(
        "--within",
        type=positive,
        default=0.5,
        metavar="PCT",
        help="--wait: reached within this %% of the setpoint (0.5)",
    )
    p.add_argument(
        "--timeout", type=positive, default=600.0, metavar="S", help="--wait: give up after S s"
    )

    p = sub.add_parser(
        "profile",
        parents=[common()],
        help="load, start, stop, advance or show a channel's pressure profile",
        description=(
            "A channel's pressure profile runs on the board. FILE is TOML, one [[step]] "
            "table per step: set = P, ramp = P (rate = R), hold = DURATION, "
            'wait = "host" | "trigger" (timeout = DURATION). `profile check FILE` '
            "checks a file without a bridge."
        ),
        epilog=(
            "examples: isopress profile load rig1 1 activation.toml; isopress profile start "
            "rig1 1; isopress profile advance rig1 1 --cycle 1; isopress profile check x.toml"
        ),
    )
    p.add_argument(
        "action",
        choices=("load", "start", "stop", "advance", "show", "check"),
        metavar="ACTION",
        help="load, start, stop, advance, show, or check FILE",
    )
    p.add_argument("target", metavar="DEVICE|FILE", help="device name (check: the file)")
    p.add_argument("channel", type=channel_number, nargs="?", metavar="CHANNEL")
    p.add_argument("file", type=Path, nargs="?", metavar="FILE.toml", help="load: the profile")
    p.add_argument("--from-step", type=int, default=None, metavar="N", help="start, advance")
    p.add_argument("--cycle", type=int, default=0, metavar="N", help="advance: cycle count")
    unit_option(p, "what is shown")
    p.set_defaults(func=_profile_entry(p))

    p = _command(
        sub,
        "isolate",
        cmd_isolate,
        help="close every valve of a channel and hold its pressure",
        description="Close the channel's fill and vent valves; the pressure is held.",
    )
    _device_channel(p)
    unit_option(p)

    p = _command(
        sub,
        "vent",
        cmd_vent,
        help="vent a channel down to a floor pressure and hold it",
        description=(
            "Vent the channel to --floor and hold it there. A cell in the holder loses "
            "pressure, which harms it for good: asks first unless --yes."
        ),
    )
    _device_channel(p)
    p.add_argument("--floor", type=non_negative, default=0.0, metavar="P", help="(0)")
    p.add_argument("--yes", action="store_true", help="do not ask")
    unit_option(p)

    p = _command(
        sub,
        "ack",
        cmd_ack,
        help="clear latched alarms whose cause has gone",
        description=(
            "Acknowledge latched alarms (default: every active one). An alarm whose cause "
            "is still there stays latched; the command then fails and says which."
        ),
    )
    _device_channel(p)
    p.add_argument("alarms", nargs="*", metavar="ALARM", help="e.g. OVERPRESSURE SENSOR_FAULT")

    p = _command(
        sub,
        "config",
        cmd_config,
        help="read or set a configuration key of a board or a channel",
        description=(
            "Read KEY, or set it to VALUE in its own unit (protocol/PROTOCOL.md lists the "
            "keys: trip, max_working, tolerance, analog_fs, tick_hz, ...)."
        ),
    )
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("key", metavar="KEY", help="name or number")
    p.add_argument("value", nargs="?", metavar="VALUE", help="set it to this")
    p.add_argument(
        "--channel",
        type=channel_number,
        default=0,
        metavar="C",
        help="a channel's key (default: a board key)",
    )
    p.add_argument("--raw", action="store_true", help="VALUE is the wire integer")

    p = _command(
        sub,
        "events",
        cmd_events,
        help="the boards' recorded events: alarms, trips, leak rates, profile steps",
        description=(
            "List recorded device events, oldest first, with their text (PROTOCOL.md "
            "section 5 says what each kind's numbers mean)."
        ),
    )
    p.add_argument("device", nargs="?", metavar="DEVICE", help="only this device")
    p.add_argument("--channel", type=channel_number, metavar="C", help="only this channel")
    p.add_argument(
        "--kind", action="append", metavar="K", help="only this kind, e.g. LEAK_RATE (repeatable)"
    )
    p.add_argument(
        "--since", type=_utc, metavar="T", help="UTC seconds or ISO 8601 (default: 24 h ago)"
    )
    p.add_argument("--last", type=count, default=50, metavar="N", help="the last N (50)")
    p.add_argument("--json", action="store_true", help="as JSON")

    p = _command(
        sub,
        "leak-test",
        cmd_leak_test,
        help="leak-down test: fill, settle, isolate, measure the fall",
        description=(
            "Fill the channel to --pressure, let the gas settle while it regulates, isolate "
            "it, let it rest, and measure how fast the pressure falls, by the board's clock. "
            "Measure for a whole oven period so the oven's swing cancels. Passes when the "
            "fall is at most --max-rate."
        ),
    )
    _device_channel(p)
    p.add_argument("--pressure", type=positive, default=5.0, metavar="P", help="(5 MPa)")
    p.add_argument("--minutes", type=positive, default=60.0, metavar="M", help="isolated (60)")
    p.add_argument(
        "--settle", type=non_negative, default=120.0, metavar="S", help="regulating (120 s)"
    )
    p.add_argument(
        "--rest",
        type=non_negative,
        default=60.0,
        metavar="S",
        help="isolated before measuring: the last fill's heat goes (60 s)",
    )
    p.add_argument(
        "--max-rate", type=non_negative, default=2.0, metavar="PA_S", help="pass limit (2 Pa/s)"
    )
    p.add_argument(
        "--timeout", type=positive, default=900.0, metavar="S", help="fill and settle (900 s)"
    )
    p.add_argument("--leave-isolated", action="store_true", help="do not regulate afterwards")
    unit_option(p, "--pressure and what is shown")


def _utc(text: str) -> float:
    from isopress.export import parse_time

    return parse_time(text)


def _profile_entry(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    guarded = _guard("profile", cmd_profile)

    def run(args: argparse.Namespace) -> int:
        # argparse cannot say which positionals each action needs; say it here.
        if args.action == "check":
            if args.channel is not None:
                p.error("profile check takes only FILE")
            args.target = Path(args.target)
        else:
            args.device = args.target
            if args.channel is None:
                p.error(f"profile {args.action} needs DEVICE CHANNEL")
            if args.action == "load" and args.file is None:
                p.error("profile load needs DEVICE CHANNEL FILE.toml")
            if args.action != "load" and args.file is not None:
                p.error(f"profile {args.action} takes no FILE")
            if args.action == "start" and args.from_step is None:
                args.from_step = 0
            if args.action not in ("start", "advance") and args.from_step is not None:
                p.error("--from-step goes with start or advance")
        try:
            return guarded(args)
        except MissingFile as e:
            print(f"isopress profile: {e}", file=sys.stderr)
            return EXIT_MISSING

    return run
