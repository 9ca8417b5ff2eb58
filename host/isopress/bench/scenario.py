"""Bench scenario files: load, check, and turn into a run plan.

A scenario (TOML; every key, its unit and default in tests/scenarios/README.md)
says which rig (the reference plant plus overrides), which board channels,
the protocol each channel runs, the disturbances and faults and when they
strike, the host's commands, and the criteria a run must meet. `load` checks
all of it before anything runs and raises ScenarioError naming the file and
the key; `Scenario.plan` gives the JSON that firmware/sim/scenario_run.py
executes in MicroPython (or host/isopress/hil.py against a board).

Plant faults and disturbances become entries of the plant's own fault
schedule (firmware/sim/PLANT.md), so the plant fires them at their exact time
whatever controller runs; board and link faults (reset, config_corrupt,
host_gone, bit_errors) and host commands become timed actions.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isopress import paths
from isopress.bench.metrics import Criterion, Options, metric_known
from isopress.protocol import wire
from isopress.sim import plant as plant_mod

REFERENCE = paths.FIRMWARE / "sim" / "reference.toml"
CONTROLLERS = ("isopress", "bangbang", "manual")
BOARD_FAULTS = ("reset", "config_corrupt", "host_gone", "bit_errors")
ACTIONS = ("setpoint", "ack_alarm", "isolate", "vent", "profile_resume", "profile_stop")
STEP_KINDS = dict((name, code) for code, name in wire.STEPS)
WAITS = dict((name, code) for code, name in wire.WAITS)
ALARMS = dict((name, bit) for bit, name in wire.ALARMS)
CONFIG = {k[1]: k for k in wire.CONFIG_KEYS}
for _m in wire.MESSAGES:
    if _m[1] == "PROFILE_LOAD":
        MAX_STEPS = (wire.MAX_PAYLOAD - wire.fields_size(_m[3])) // wire.fields_size(_m[4])
MPA = 1_000_000

_TOP = {
    "name", "description", "duration_s", "channels", "record", "tags", "board", "rig",
    "config", "disturbance", "protocol", "cycler", "fault", "action", "host", "metrics",
    "baseline", "criteria",
}  # fmt: skip


class ScenarioError(ValueError):
    """A scenario file that cannot run: names the file and the key."""


@dataclass(frozen=True)
class Step:
    kind: int  # wire.STEPS
    target_pa: int = 0
    rate_pa_s: int = 0
    duration_ms: int = 0
    wait_for: int = 0

    def row(self) -> list[int]:
        return [self.kind, self.target_pa, self.rate_pa_s, self.duration_ms, self.wait_for]


@dataclass(frozen=True)
class Protocol:
    channel: int
    run: str  # "profile" or "host"
    start_s: float
    steps: tuple[Step, ...]


@dataclass
class Scenario:
    path: Path
    name: str
    description: str
    duration_s: float
    channels: list[int]
    record: list[int]
    tags: list[str]
    board: dict[str, Any]
    rig: dict[str, Any]
    config: dict[str, dict[str, int]]
    protocols: list[Protocol]
    actions: list[list[Any]]
    faults: dict[int, float]  # channel -> first fault (s), for the fault figures
    host: dict[str, Any]
    options: Options
    baseline: dict[str, float]
    criteria: list[Criterion]
    board_faults: list[str] = field(default_factory=list)

    def plan(self, controller: str, out_dir: Path, fs_dir: Path) -> dict[str, Any]:
        """The JSON firmware/sim/scenario_run.py runs (directories end in '/')."""
        if controller not in CONTROLLERS:
            raise ScenarioError(f"controller {controller!r}: one of {', '.join(CONTROLLERS)}")
        return {
            "name": self.name,
            "controller": controller,
            "duration_ms": round(self.duration_s * 1000),
            "board": self.board,
            "plant": self.rig,
            "config": self.config,
            "record": self.record,
            "protocols": {
                str(p.channel): {
                    "run": p.run,
                    "start_ms": round(p.start_s * 1000),
                    "steps": [s.row() for s in p.steps],
                }
                for p in self.protocols
            },
            "actions": self.actions,
            "host": self.host,
            "baseline": self.baseline,
            "fs": str(fs_dir) + "/",
            "out": str(out_dir) + "/",
        }


# ---------------------------------------------------------------- checking


class _Where:
    """Builds 'file: key.path: problem' messages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.path}: {key}: {problem}")


def _table(w: _Where, key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise w.fail(key, f"expected a table, got {v!r}")
    return v


def _keys(w: _Where, key: str, t: Mapping[str, Any], allowed: set[str]) -> None:
    for k in t:
        if k not in allowed:
            raise w.fail(
                f"{key}.{k}" if key else k, f"unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _num(
    w: _Where, key: str, v: Any, lo: float, hi: float, unit: str = "", lo_open: bool = False
) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        span = f"{'above ' if lo_open else ''}{lo:g}..{hi:g}{' ' + unit if unit else ''}"
        raise w.fail(key, f"= {v!r}: expected a number in {span}")
    return float(v)


def _int(w: _Where, key: str, v: Any, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise w.fail(key, f"= {v!r}: expected an integer in {lo}..{hi}")
    return v


def _str(w: _Where, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise w.fail(key, f"= {v!r}: expected one of {', '.join(choices)}")
    return v


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


def load(path: Path | str) -> Scenario:
    """Reads and checks a scenario file; ScenarioError says what is wrong."""
    path = Path(path)
    w = _Where(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    _keys(w, "", doc, _TOP)
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ "):
        raise w.fail("name", f"= {name!r}: a word without spaces or slashes")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise w.fail("description", "expected a string")
    if "duration_s" not in doc:
        raise w.fail("duration_s", "missing: how long the run lasts, simulated seconds")
    duration = _num(w, "duration_s", doc["duration_s"], 0.0, 4.0e6, "s", lo_open=True)
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
        raise w.fail("tags", "expected a list of strings")

    board = paths.board_profile(_str(w, "board", doc.get("board", "sim"), ("sim",)), ScenarioError)
    have = [c["channel"] for c in board["channels"]]
    channels = doc.get("channels", have)
    if (
        not isinstance(channels, list)
        or not channels
        or any(c not in have for c in channels)
        or len(set(channels)) != len(channels)
    ):
        raise w.fail("channels", f"= {channels!r}: a list of distinct channels from {have}")
    channels = sorted(channels)
    board = copy.deepcopy(board)
    board["channels"] = [c for c in board["channels"] if c["channel"] in channels]
    kinds = {c["channel"]: c["kind"] for c in board["channels"]}

    rig = _rig(w, doc.get("rig", {}), path, channels)
    _disturbances(w, doc.get("disturbance", {}), rig, channels)
    protocols = _protocols(w, doc.get("protocol", []), channels, kinds, duration, doc)
    actions: list[list[Any]] = []
    cyc = _cycler(w, doc.get("cycler"), protocols, duration, actions)
    _check_waits(w, protocols, cyc)
    host = _host(w, doc.get("host", {}))
    faults, board_faults = _faults(w, doc.get("fault", []), rig, channels, duration, host, actions)
    _actions(w, doc.get("action", []), channels, kinds, duration, actions)
    actions.sort(key=lambda a: a[0])
    try:
        plant_mod.check_params(rig)  # the plan keeps the file's form; the plant checks again
    except ValueError as e:
        raise w.fail("rig", str(e)) from None
    config = _config(w, doc.get("config", {}), channels)
    record = doc.get("record")
    if record is None:
        acted = {a[2]["values"][0] for a in actions if a[1] == "command"}
        acted |= {a[2]["channel"] for a in actions if a[1] == "profile_resume"}
        record = sorted({p.channel for p in protocols} | acted | set(faults) - {0}) or channels
    elif not isinstance(record, list) or not record or any(c not in channels for c in record):
        raise w.fail("record", f"= {record!r}: a list of channels from {channels}")
    first = {}
    for ch in record:
        times = [t for c, t in faults.items() if c in (ch, 0)]
        if times:
            first[ch] = min(times)
    options = _options(w, doc.get("metrics", {}))
    baseline = _baseline(w, doc.get("baseline", {}))
    criteria = _criteria(w, doc.get("criteria", []), record)
    return Scenario(
        path=path,
        name=name,
        description=description,
        duration_s=duration,
        channels=channels,
        record=sorted(record),
        tags=tags,
        board=board,
        rig=rig,
        config=config,
        protocols=protocols,
        actions=actions,
        faults=first,
        host=host,
        options=options,
        baseline=baseline,
        criteria=criteria,
        board_faults=board_faults,
    )


def _rig(w: _Where, t: Any, path: Path, channels: list[int]) -> dict[str, Any]:
    t = _table(w, "rig", t)
    _keys(w, "rig", t, {"base", "plant", "channel"})
    base = t.get("base", "reference")
    if not isinstance(base, str):
        raise w.fail("rig.base", "expected 'reference' or a plant file path")
    src = REFERENCE if base == "reference" else (path.parent / base)
    try:
        with open(src, "rb") as f:
            rig = tomllib.load(f)
    except OSError as e:
        raise w.fail("rig.base", f"cannot read {src}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise w.fail("rig.base", f"{src} is not valid TOML: {e}") from None
    over: dict[str, Any] = {}
    if "plant" in t:
        over["plant"] = _table(w, "rig.plant", t["plant"])
    if "channel" in t:
        chans = _table(w, "rig.channel", t["channel"])
        for k in chans:
            if not (k.isdigit() and int(k) in channels):
                raise w.fail(f"rig.channel.{k}", f"not one of this scenario's channels {channels}")
            _table(w, f"rig.channel.{k}", chans[k])
        over["channel"] = chans
    _merge(rig, over)
    # Only the channels the board simulates: the others cost time.
    rig["channel"] = {k: v for k, v in rig.get("channel", {}).items() if int(k) in channels}
    missing = [c for c in channels if str(c) not in rig["channel"]]
    if missing:
        raise w.fail("rig", f"the plant has no channel {missing[0]} for the board's channel")
    try:
        plant_mod.check_params(rig)
    except ValueError as e:
        raise w.fail("rig", str(e)) from None
    return rig


def _fault_entry(rig: dict[str, Any], ch: int, entry: dict[str, Any]) -> None:
    rig["channel"][str(ch)].setdefault("fault", []).append(entry)


def _disturbances(w: _Where, t: Any, rig: dict[str, Any], channels: list[int]) -> None:
    t = _table(w, "disturbance", t)
    _keys(w, "disturbance", t, {"oven", "leak", "breathing"})
    if "oven" in t:
        oven = _table(w, "disturbance.oven", t["oven"])
        _keys(w, "disturbance.oven", oven, {"set_c", "swing_k", "period_s", "step"})
        p = rig.setdefault("plant", {})
        if "set_c" in oven:
            p["oven_c"] = _num(w, "disturbance.oven.set_c", oven["set_c"], -40, 300, "C")
        if "swing_k" in oven:
            p["oven_swing_k"] = _num(w, "disturbance.oven.swing_k", oven["swing_k"], 0, 50, "K")
        if "period_s" in oven:
            p["oven_period_s"] = _num(w, "disturbance.oven.period_s", oven["period_s"], 1, 1e7, "s")
        steps = oven.get("step", [])
        if not isinstance(steps, list):
            raise w.fail("disturbance.oven.step", "expected [[disturbance.oven.step]] tables")
        for i, s in enumerate(steps):
            k = f"disturbance.oven.step[{i}]"
            s = _table(w, k, s)
            _keys(w, k, s, {"at_s", "offset_k"})
            at = _num(w, k + ".at_s", s.get("at_s"), 0, 1e12, "s")
            off = _num(w, k + ".offset_k", s.get("offset_k"), -100, 100, "K")
            for ch in channels:
                if off == 0:
                    entry = {"at_s": at, "kind": "oven_step", "clear": True}
                else:
                    entry = {"at_s": at, "kind": "oven_step", "value": off}
                _fault_entry(rig, ch, entry)
    for name, keys in (("leak", {"channel", "at_s", "pct_per_day"}),
                       ("breathing", {"channel", "amplitude_n", "period_s"})):  # fmt: skip
        items = t.get(name, [])
        if not isinstance(items, list):
            raise w.fail(f"disturbance.{name}", f"expected [[disturbance.{name}]] tables")
        for i, d in enumerate(items):
            k = f"disturbance.{name}[{i}]"
            d = _table(w, k, d)
            _keys(w, k, d, keys)
            ch = d.get("channel")
            if ch not in channels:
                raise w.fail(k + ".channel", f"= {ch!r}: one of {channels}")
            c = rig["channel"][str(ch)]
            kind = c.get("kind")
            if name == "leak":
                if kind == "monitor":
                    raise w.fail(k, "a monitor holder has no gas to leak")
                pct = _num(w, k + ".pct_per_day", d.get("pct_per_day"), 0, 99, "%/day")
                if "at_s" in d:
                    at = _num(w, k + ".at_s", d["at_s"], 0, 1e12, "s")
                    _fault_entry(rig, ch, {"at_s": at, "kind": "leak", "value": pct})
                else:
                    c["leak_pct_per_day"] = pct
            else:
                if kind == "isostatic":
                    raise w.fail(k, "an isostatic holder has no stack to breathe")
                c["breathing_n"] = _num(w, k + ".amplitude_n", d.get("amplitude_n"), 0, 1e6, "N")
                c["breathing_period_s"] = _num(w, k + ".period_s", d.get("period_s"), 1, 1e9, "s")


def _protocols(
    w: _Where,
    items: Any,
    channels: list[int],
    kinds: dict[int, str],
    duration: float,
    doc: Mapping[str, Any],
) -> list[Protocol]:
    if not isinstance(items, list):
        raise w.fail("protocol", "expected [[protocol]] tables")
    via = "host"
    if isinstance(doc.get("cycler"), dict):
        via = doc["cycler"].get("via", "host")
    out: list[Protocol] = []
    seen: set[int] = set()
    for i, p in enumerate(items):
        k = f"protocol[{i}]"
        p = _table(w, k, p)
        _keys(w, k, p, {"channel", "run", "start_s", "steps"})
        ch = p.get("channel")
        if ch not in channels:
            raise w.fail(k + ".channel", f"= {ch!r}: one of {channels}")
        if kinds[ch] == "monitor":
            raise w.fail(k + ".channel", f"channel {ch} is a monitor: it has no valves")
        if ch in seen:
            raise w.fail(k + ".channel", f"channel {ch} has a protocol already")
        seen.add(ch)
        run = _str(w, k + ".run", p.get("run", "profile"), ("profile", "host"))
        start = _num(w, k + ".start_s", p.get("start_s", 2.0), 1.0, duration, "s")
        raw = p.get("steps")
        if not isinstance(raw, list) or not raw:
            raise w.fail(k + ".steps", "expected a non-empty list of steps")
        steps: list[Step] = []
        for j, s in enumerate(raw):
            steps.extend(_step(w, f"{k}.steps[{j}]", s, via))
        if run == "profile" and len(steps) > MAX_STEPS:
            raise w.fail(
                k + ".steps",
                f"{len(steps)} board steps (waits count once per cycle): a profile holds "
                f'at most {MAX_STEPS}; use run = "host" for longer protocols',
            )
        out.append(Protocol(ch, run, start, tuple(steps)))
    return out


def _step(w: _Where, k: str, s: Any, via: str) -> list[Step]:
    s = _table(w, k, s)
    forms = {
        "set_mpa": {"set_mpa", "rate_mpa_s"},
        "ramp_mpa": {"ramp_mpa", "rate_mpa_s"},
        "hold_s": {"hold_s"},
        "wait": {"wait", "cycles", "timeout_s"},
    }
    which = [f for f in forms if f in s]
    if len(which) != 1:
        raise w.fail(k, "a step has exactly one of set_mpa, ramp_mpa, hold_s, wait")
    form = which[0]
    _keys(w, k, s, forms[form])
    if form in ("set_mpa", "ramp_mpa"):
        target = _num(w, f"{k}.{form}", s[form], 0, 1000, "MPa")
        if "rate_mpa_s" not in s:
            raise w.fail(k + ".rate_mpa_s", "missing: the reference moves at this rate")
        rate = _num(w, k + ".rate_mpa_s", s["rate_mpa_s"], 0, 1000, "MPa/s", lo_open=True)
        kind = STEP_KINDS["SET" if form == "set_mpa" else "RAMP"]
        return [Step(kind, round(target * MPA), round(rate * MPA))]
    if form == "hold_s":
        dur = _num(w, k + ".hold_s", s["hold_s"], 0, 4294967.295, "s")
        return [Step(STEP_KINDS["HOLD"], duration_ms=round(dur * 1000))]
    _str(w, k + ".wait", s["wait"], ("cycle",))
    n = _int(w, k + ".cycles", s.get("cycles", 1), 1, MAX_STEPS)
    timeout = _num(w, k + ".timeout_s", s.get("timeout_s", 0), 0, 4294967.295, "s")
    wait = WAITS["TRIGGER" if via == "trigger" else "HOST"]
    return [
        Step(STEP_KINDS["WAIT"], duration_ms=round(timeout * 1000), wait_for=wait) for _ in range(n)
    ]


def _cycler(
    w: _Where, t: Any, protocols: list[Protocol], duration: float, actions: list[list[Any]]
) -> dict[str, Any] | None:
    if t is None:
        return None
    t = _table(w, "cycler", t)
    _keys(w, "cycler", t, {"period_s", "first_s", "count", "via", "channels"})
    period = _num(w, "cycler.period_s", t.get("period_s"), 0, 1e9, "s", lo_open=True)
    first = _num(w, "cycler.first_s", t.get("first_s", period), 0, duration, "s")
    count = _int(w, "cycler.count", t.get("count", 1), 1, 100000)
    via = _str(w, "cycler.via", t.get("via", "host"), ("host", "trigger"))
    with_waits = [
        p.channel for p in protocols if any(s.kind == STEP_KINDS["WAIT"] for s in p.steps)
    ]
    chans = t.get("channels", with_waits)
    known = [p.channel for p in protocols]
    if not isinstance(chans, list) or any(c not in known for c in chans):
        raise w.fail("cycler.channels", f"= {chans!r}: channels with a protocol, from {known}")
    if via == "trigger":
        for p in protocols:
            if p.channel in chans and p.run != "profile":
                raise w.fail("cycler.via", 'a trigger edge moves board profiles (run = "profile")')
    for n in range(1, count + 1):
        at = first + (n - 1) * period
        if at >= duration:
            break
        actions.append([round(at * 1000), "cycle", {"n": n, "via": via, "channels": chans}])
    return {"via": via, "channels": chans}


def _check_waits(w: _Where, protocols: list[Protocol], cyc: dict[str, Any] | None) -> None:
    for p in protocols:
        if any(s.kind == STEP_KINDS["WAIT"] for s in p.steps) and (
            cyc is None or p.channel not in cyc["channels"]
        ):
            raise w.fail(
                "cycler",
                f"channel {p.channel}'s protocol waits for cycles but no [cycler] drives it",
            )


def _host(w: _Where, t: Any) -> dict[str, Any]:
    t = _table(w, "host", t)
    _keys(w, "host", t, {"link", "keepalive_s", "retry_s", "tries", "seed"})
    return {
        "link": _str(w, "host.link", t.get("link", "direct"), ("direct", "frames")),
        "keepalive_ms": round(
            _num(w, "host.keepalive_s", t.get("keepalive_s", 1.0), 0.05, 60) * 1000
        ),
        "retry_ms": round(_num(w, "host.retry_s", t.get("retry_s", 0.5), 0.05, 60) * 1000),
        "tries": _int(w, "host.tries", t.get("tries", 20), 1, 1000),
        "seed": _int(w, "host.seed", t.get("seed", 1), 1, 2**32 - 1),
    }


def _faults(
    w: _Where,
    items: Any,
    rig: dict[str, Any],
    channels: list[int],
    duration: float,
    host: dict[str, Any],
    actions: list[list[Any]],
) -> tuple[dict[int, float], list[str]]:
    """Plant faults into the rig's schedule, board faults into actions.
    Returns channel (0: the whole board) -> time of its first fault."""
    if not isinstance(items, list):
        raise w.fail("fault", "expected [[fault]] tables")
    first: dict[int, float] = {}
    board_faults: list[str] = []
    for i, f in enumerate(items):
        k = f"fault[{i}]"
        f = _table(w, k, f)
        kind = f.get("kind")
        at = _num(w, k + ".at_s", f.get("at_s"), 0, duration, "s")
        if kind in BOARD_FAULTS:
            allowed = {"kind", "at_s", "duration_s"}
            if kind == "reset":
                allowed.add("cause")
            if kind == "bit_errors":
                allowed.add("ber")
            _keys(w, k, f, allowed)
            until = duration
            if "duration_s" in f:
                until = at + _num(w, k + ".duration_s", f["duration_s"], 0, 1e9, "s", lo_open=True)
            if kind in ("host_gone", "bit_errors") and host["link"] != "frames":
                raise w.fail(k, f'{kind} needs a host on the link: [host] link = "frames"')
            args: dict[str, Any] = {}
            if kind == "reset":
                cause = _str(w, k + ".cause", f.get("cause", "watchdog"), ("watchdog", "power"))
                args["cause"] = {"power": 1, "watchdog": 3}[cause]
            elif kind in ("host_gone", "bit_errors"):
                args["until_ms"] = round(until * 1000)
                if kind == "bit_errors":
                    args["ber"] = _num(w, k + ".ber", f.get("ber"), 0, 0.1, lo_open=True)
            actions.append([round(at * 1000), kind, args])
            board_faults.append(kind)
            first[0] = min(first.get(0, at), at)
            continue
        if kind not in plant_mod.FAULTS:
            known = ", ".join(sorted([*plant_mod.FAULTS, *BOARD_FAULTS]))
            raise w.fail(k + ".kind", f"= {kind!r}: expected one of {known}")
        _keys(w, k, f, {"kind", "at_s", "channel", "value", "duration_s", "clear"})
        ch = f.get("channel")
        if ch not in channels:
            raise w.fail(k + ".channel", f"= {ch!r}: one of {channels}")
        entry: dict[str, Any] = {"at_s": at, "kind": kind}
        for key in ("value", "duration_s", "clear"):
            if key in f:
                entry[key] = f[key]
        hk = rig["channel"][str(ch)]["kind"]
        try:
            if f.get("clear") is True:
                if "value" in f or "duration_s" in f:
                    raise ValueError("clear = true takes no value or duration_s")
            else:
                plant_mod.check_fault(hk, kind, f.get("value"), k)
        except ValueError as e:
            raise w.fail(k, str(e)) from None
        _fault_entry(rig, ch, entry)
        if not f.get("clear"):
            first[ch] = min(first.get(ch, at), at)
    return first, board_faults


def _actions(
    w: _Where,
    items: Any,
    channels: list[int],
    kinds: dict[int, str],
    duration: float,
    actions: list[list[Any]],
) -> None:
    if not isinstance(items, list):
        raise w.fail("action", "expected [[action]] tables")
    for i, a in enumerate(items):
        k = f"action[{i}]"
        a = _table(w, k, a)
        do = _str(w, k + ".do", a.get("do"), ACTIONS)
        keys = {
            "setpoint": {"target_mpa", "rate_mpa_s"},
            "ack_alarm": {"alarms"},
            "vent": {"floor_mpa"},
        }.get(do, set())
        _keys(w, k, a, {"at_s", "do", "channel", *keys})
        at = round(_num(w, k + ".at_s", a.get("at_s"), 0, duration, "s") * 1000)
        ch = a.get("channel")
        if ch not in channels:
            raise w.fail(k + ".channel", f"= {ch!r}: one of {channels}")
        if do == "setpoint":
            target = _num(w, k + ".target_mpa", a.get("target_mpa"), 0, 1000, "MPa")
            rate = _num(w, k + ".rate_mpa_s", a.get("rate_mpa_s", 0), 0, 1000, "MPa/s")
            values = [ch, round(target * MPA), round(rate * MPA)]
            actions.append([at, "command", {"msg": "SET_SETPOINT", "values": values}])
        elif do == "ack_alarm":
            names = a.get("alarms", ["LATCHED"])
            if not isinstance(names, list) or any(n not in ALARMS for n in names):
                raise w.fail(k + ".alarms", f"= {names!r}: names from {', '.join(ALARMS)}")
            mask = sum(1 << ALARMS[n] for n in set(names))
            actions.append([at, "command", {"msg": "ACK_ALARM", "values": [ch, mask]}])
        elif do == "isolate":
            actions.append([at, "command", {"msg": "ISOLATE", "values": [ch]}])
        elif do == "vent":
            floor = _num(w, k + ".floor_mpa", a.get("floor_mpa"), 0, 1000, "MPa")
            actions.append([at, "command", {"msg": "VENT", "values": [ch, round(floor * MPA)]}])
        elif do == "profile_stop":
            actions.append([at, "command", {"msg": "PROFILE_STOP", "values": [ch]}])
        else:
            actions.append([at, "profile_resume", {"channel": ch}])


def _config(w: _Where, t: Any, channels: list[int]) -> dict[str, dict[str, int]]:
    """Config keys in their wire.CONFIG_KEYS unit -> wire integers, by channel."""
    t = _table(w, "config", t)
    out: dict[str, dict[str, int]] = {}
    for name, v in t.items():
        if isinstance(v, dict):
            if not (name.isdigit() and int(name) in channels):
                raise w.fail(f"config.{name}", f"channel tables are numbered from {channels}")
            for key, value in v.items():
                out.setdefault(name, {})[key] = _config_value(
                    w, f"config.{name}.{key}", key, value, "channel"
                )
        else:
            out.setdefault("0", {})[name] = _config_value(w, f"config.{name}", name, v, "board")
    return out


def _config_value(w: _Where, k: str, name: str, value: Any, scope: str) -> int:
    entry = CONFIG.get(name)
    if entry is None or entry[2] != scope:
        known = ", ".join(n for n, e in CONFIG.items() if e[2] == scope)
        raise w.fail(k, f"unknown {scope} config key (known: {known})")
    _key, _name, _scope, unit, exp, lo, hi, _default = entry
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise w.fail(k, f"= {value!r}: expected a number in {unit}")
    scaled = value / 10.0**exp
    n = round(scaled)
    if abs(scaled - n) > 1e-6 * max(1.0, abs(scaled)):
        raise w.fail(k, f"= {value!r}: a whole number of {10.0**exp:g} {unit}")
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        span = f"{(lo or 0) * 10.0**exp:g}..{'' if hi is None else f'{hi * 10.0**exp:g}'}"
        raise w.fail(k, f"= {value!r}: expected {span} {unit}")
    return n


def _options(w: _Where, t: Any) -> Options:
    t = _table(w, "metrics", t)
    _keys(w, "metrics", t, {"band_pct", "band_mpa", "settle_s", "settle_hold_s"})
    d = Options()
    return Options(
        band_pct=_num(w, "metrics.band_pct", t.get("band_pct", d.band_pct), 0, 100, "%"),
        band_mpa=_num(w, "metrics.band_mpa", t.get("band_mpa", d.band_mpa), 0, 1000, "MPa"),
        settle_s=_num(w, "metrics.settle_s", t.get("settle_s", d.settle_s), 0, 1e9, "s"),
        settle_hold_s=_num(
            w, "metrics.settle_hold_s", t.get("settle_hold_s", d.settle_hold_s), 0, 1e9, "s"
        ),
    )


def _baseline(w: _Where, t: Any) -> dict[str, float]:
    t = _table(w, "baseline", t)
    _keys(w, "baseline", t, {"hysteresis_pct_fs", "check_s", "tick_s"})
    return {
        "hysteresis_pct_fs": _num(
            w,
            "baseline.hysteresis_pct_fs",
            t.get("hysteresis_pct_fs", 0.5),
            0,
            50,
            "% FS",
            lo_open=True,
        ),
        "check_s": _num(w, "baseline.check_s", t.get("check_s", 120.0), 0, 1e6, "s"),
        "tick_s": _num(w, "baseline.tick_s", t.get("tick_s", 0.05), 0.001, 10, "s"),
    }


def _criteria(w: _Where, items: Any, record: list[int]) -> list[Criterion]:
    if not isinstance(items, list):
        raise w.fail("criteria", "expected [[criteria]] tables")
    out: list[Criterion] = []
    ops = ("max", "min", "equals", "includes", "excludes")
    for i, c in enumerate(items):
        k = f"criteria[{i}]"
        c = _table(w, k, c)
        _keys(w, k, c, {"metric", "why", *ops})
        metric = c.get("metric")
        if not isinstance(metric, str) or not metric_known(metric):
            raise w.fail(
                k + ".metric",
                f"= {metric!r}: not a metric (chN.<name>, run.<name>, link.<name>; "
                "tests/scenarios/README.md lists them)",
            )
        head = metric.split(".")[0]
        if head.startswith("ch") and int(head[2:]) not in record:
            raise w.fail(k + ".metric", f"channel {head[2:]} is not recorded (record = {record})")
        given = [op for op in ops if op in c]
        if len(given) != 1:
            raise w.fail(k, f"exactly one of {', '.join(ops)}")
        op = given[0]
        limit = c[op]
        if op in ("max", "min") and (
            not isinstance(limit, (int, float)) or isinstance(limit, bool)
        ):
            raise w.fail(f"{k}.{op}", f"= {limit!r}: expected a number")
        if op in ("includes", "excludes") and (
            not isinstance(limit, list) or not all(isinstance(x, str) for x in limit)
        ):
            raise w.fail(f"{k}.{op}", f"= {limit!r}: expected a list of names")
        why = c.get("why", "")
        if not isinstance(why, str):
            raise w.fail(k + ".why", "expected a string")
        out.append(Criterion(metric, op, limit, why))
    return out


def find(args: list[str]) -> list[Path]:
    """Scenario files from paths: files as given, directories' *.toml sorted."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out.extend(sorted(p.glob("*.toml")))
        else:
            out.append(p)
    return out
