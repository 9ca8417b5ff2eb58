"""Metrics of one bench run, against the plant's TRUE pressure.

`read_trace` reads trace.bin (rows written by firmware/sim/scenario_run.py or
by the hardware-in-the-loop runner); `compute` turns it, with the run's events
and the scenario's options, into a flat dict of figures named as criteria
name them: `ch1.rms_error_mpa`, `link.corrupt_accepted`, `run.resets`.
`check` judges criteria against them. METRICS names every figure, its unit
and what it means; tests/scenarios/README.md repeats that table.

Definitions, per recorded channel with a protocol. The *reference* is the
protocol's setpoint as the experimenter meant it (moving at the step's rate);
the *target* is where the present step goes. A *segment* runs while the
target stays the same; it is *up*, *down* or a *hold* by the target before it.
The *band* is max(band_pct % of the target, band_mpa).

- Accuracy (`rms_error_mpa`, `max_error_mpa`, `mean_error_mpa`): true minus
  reference over the *hold windows*: from `settle_s` after the reference last
  moved until it moves again. Time-weighted.
- `settling_time_s`: per segment, from its start until the true pressure
  enters the band and stays in it for `settle_hold_s` (or to the segment's
  end); the largest over segments; None if a segment never settles.
- `overshoot_mpa`: how far the true pressure went above the target: over the
  whole of an up segment, otherwise once the pressure got to the target
  (or, if it never quite did, into the band). `undershoot_mpa` mirrors it
  below the target (over the whole of a down segment);
  `step_down_undershoot_mpa` is that over the down segments alone. A cell
  approached from above on a step down has 0 there.
- `time_below_s`: time the true pressure spent below target - band, except
  the climb of an up segment before it first gets to the target.
- Actuations: valve openings counted by the valves themselves.
- Fault figures use the earliest fault of the scenario that applies to the
  channel (its own or a board-wide one): `time_to_alarm_s` is from it to the
  channel's first ALARM_RAISED or TRIP event, `time_to_act_s` to the first row
  where the channel is latched safe (ISOLATED or TRIPPED with LATCHED).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from isopress.protocol import wire

ROW_HEAD = "<I"
ROW_CH = "<iiiiiBBHIIf"  # as firmware/sim/scenario_run.py writes them
NONE_PA = -(1 << 31)
V_FILL, V_VENT, V_FILL_GAS, V_VENT_GAS = 1, 2, 4, 8
NO_MODE = 255
_CH_FIELDS = (
    ("ref", "<i4"),
    ("target", "<i4"),
    ("true", "<i4"),
    ("meas", "<i4"),
    ("sp", "<i4"),
    ("valves", "u1"),
    ("mode", "u1"),
    ("alarms", "<u2"),
    ("fill_opens", "<u4"),
    ("vent_opens", "<u4"),
    ("gas_g", "<f4"),
)
assert struct.calcsize(ROW_CH) == sum(np.dtype(t).itemsize for _, t in _CH_FIELDS)

MODES = dict(wire.MODES)
ALARM_BITS = dict(wire.ALARMS)
LATCHED = 1 << 15
SAFE_MODES = {k for k, n in wire.MODES if n in ("ISOLATED", "TRIPPED")}

# name: (unit, meaning). Channel figures are reported as chN.<name>.
CHANNEL_METRICS: dict[str, tuple[str, str]] = {
    "rms_error_mpa": ("MPa", "RMS of true - reference over the hold windows"),
    "max_error_mpa": ("MPa", "largest |true - reference| over the hold windows"),
    "mean_error_mpa": ("MPa", "mean true - reference over the hold windows (bias)"),
    "hold_s": ("s", "length of the hold windows"),
    "settling_time_s": ("s", "longest time from a target change into the band for good"),
    "overshoot_mpa": ("MPa", "largest excursion above the target (see definitions)"),
    "undershoot_mpa": ("MPa", "largest excursion below the target (see definitions)"),
    "step_down_undershoot_mpa": ("MPa", "largest excursion below the target after a step down"),
    "time_below_s": ("s", "time below target - band, the climb after a rise excepted"),
    "time_below_pct": ("%", "time_below_s as a share of the time with a reference"),
    "fill_opens": ("1", "fill valve openings"),
    "vent_opens": ("1", "vent valve openings"),
    "actuations_per_hour": ("1/h", "fill + vent openings per hour of the run"),
    "hold_actuations_per_hour": ("1/h", "fill + vent openings per hour of hold window"),
    "gas_used_g": ("g", "gas drawn from the supply"),
    "true_min_mpa": ("MPa", "lowest true pressure once the protocol started"),
    "true_max_mpa": ("MPa", "highest true pressure"),
    "true_end_mpa": ("MPa", "true pressure at the end"),
    "target_end_mpa": ("MPa", "the protocol's target at the end"),
    "measured_error_mpa": ("MPa", "RMS of measured - true (the sensor chain)"),
    "fault_s": ("s", "time of the fault the fault figures count from"),
    "true_at_fault_mpa": ("MPa", "true pressure when the fault struck"),
    "true_min_after_fault_mpa": ("MPa", "lowest true pressure after the fault"),
    "true_max_after_fault_mpa": ("MPa", "highest true pressure after the fault"),
    "time_to_alarm_s": ("s", "fault to the first ALARM_RAISED or TRIP on the channel"),
    "time_to_trip_s": ("s", "fault to the first TRIP event"),
    "time_to_act_s": ("s", "fault to the channel being latched safe (ISOLATED/TRIPPED)"),
    "fill_opens_after_act": ("1", "fill openings after the channel was latched safe"),
    "vent_opens_after_act": ("1", "vent openings after the channel was latched safe"),
    "alarms_raised": ("names", "alarms raised during the run (ALARM_RAISED events)"),
    "alarms_end": ("names", "alarm bits set at the end"),
    "mode_end": ("name", "channel mode at the end"),
    "valves_end": ("name", "valves commanded in the last step: closed, fill, vent, both"),
    "events_seen": ("names", "event kinds the board sent for the channel or the board"),
    "excursions": ("1", "EXCURSION events (below setpoint, recorded by the board)"),
    "leak_rate_pa_s": ("Pa/s", "the last LEAK_RATE the board reported (negative: a loss)"),
}
RUN_METRICS: dict[str, tuple[str, str]] = {
    "resets": ("1", "board resets during the run"),
    "boots": ("1", "BOOT events"),
    "sim_s": ("s", "simulated time"),
    "wall_s": ("s", "wall time of the simulation"),
    "speed": ("x", "simulated seconds per wall second"),
    "rows": ("1", "trace rows"),
}
LINK_METRICS: dict[str, tuple[str, str]] = {
    "frames_sent": ("1", "frames the host sent"),
    "retries": ("1", "commands the host re-sent (no ACK in time)"),
    "acks": ("1", "ACKs the host matched to its commands"),
    "nacks": ("1", "of which NACKs"),
    "gave_up": ("1", "commands given up after every retry"),
    "host_drops": ("1", "frames the host's decoder dropped"),
    "corrupt_accepted": ("1", "frames the host decoded that the board never sent"),
    "bits_flipped": ("1", "bit errors injected"),
    "setpoint_commands": ("1", "SET_SETPOINT commands the host issued"),
    "setpoint_events": ("1", "SETPOINT events from host commands (each command once)"),
    "setpoint_unexpected": ("1", "SETPOINT events matching no command sent"),
    "board_frames_in": ("1", "frames the board accepted"),
    "board_drops_total": ("1", "frames the board's decoder dropped"),
    "board_duplicates": ("1", "re-sent commands the board answered from memory"),
    "pending": ("1", "commands not yet acknowledged at the end"),
}
METRICS: dict[str, tuple[str, str]] = {
    **{"chN." + k: v for k, v in CHANNEL_METRICS.items()},
    **{"run." + k: v for k, v in RUN_METRICS.items()},
    **{"link." + k: v for k, v in LINK_METRICS.items()},
}


def metric_known(name: str) -> bool:
    """True for chN.<channel metric> (N a number), run.<...> and link.<...>."""
    head, _, tail = name.partition(".")
    if head.startswith("ch") and head[2:].isdigit():
        return tail in CHANNEL_METRICS
    return name in METRICS


@dataclass(frozen=True)
class Options:
    band_pct: float = 0.5
    band_mpa: float = 0.01
    settle_s: float = 120.0
    settle_hold_s: float = 30.0


@dataclass
class Trace:
    """Rows of one run: t_s, and per channel arrays (pressures in MPa, NaN for none)."""

    t_s: np.ndarray
    ch: dict[int, dict[str, np.ndarray]]

    def __len__(self) -> int:
        return len(self.t_s)


def row_dtype(n_channels: int) -> np.dtype:
    fields: list[tuple[str, str]] = [("t_ms", "<u4")]
    for i in range(n_channels):
        fields += [(f"{name}{i}", t) for name, t in _CH_FIELDS]
    return np.dtype(fields)


def read_trace(path: Path, channels: Sequence[int]) -> Trace:
    raw = np.fromfile(path, dtype=row_dtype(len(channels)))
    out: dict[int, dict[str, np.ndarray]] = {}
    for i, ch in enumerate(channels):
        cols: dict[str, np.ndarray] = {}
        for name, _t in _CH_FIELDS:
            a = raw[f"{name}{i}"]
            if name in ("ref", "target", "true", "meas", "sp"):
                f = a.astype(np.float64)
                f[a == NONE_PA] = np.nan
                cols[name] = f / 1e6
            else:
                cols[name] = a.astype(np.float64) if name == "gas_g" else a.astype(np.int64)
        out[ch] = cols
    return Trace(raw["t_ms"].astype(np.float64) / 1000.0, out)


def _weights(t: np.ndarray) -> np.ndarray:
    # Row i stands for the time since the row before (the first: since 0).
    dt = np.diff(t, prepend=0.0)
    return np.maximum(dt, 0.0)


def _opt(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _segments(target: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) row ranges of constant target (rows without one left out)."""
    segs: list[tuple[int, int]] = []
    n = len(target)
    i = 0
    while i < n:
        if math.isnan(target[i]):
            i += 1
            continue
        j = i + 1
        while j < n and target[j] == target[i]:
            j += 1
        segs.append((i, j))
        i = j
    return segs


def _channel(
    t: np.ndarray, c: dict[str, np.ndarray], opts: Options, fault_s: float | None
) -> dict[str, Any]:
    w = _weights(t)
    true = c["true"]
    ref = c["ref"]
    target = c["target"]
    out: dict[str, Any] = {}
    has_ref = ~np.isnan(ref)
    started = np.argmax(has_ref) if has_ref.any() else len(t)
    dur_h = (t[-1] - (t[0] - w[0])) / 3600.0 if len(t) else 0.0
    # hold windows: the reference has not moved for settle_s
    moved_at = np.full(len(t), np.nan)
    last = math.nan
    prev = math.nan
    for i in range(len(t)):
        r = ref[i]
        if math.isnan(r):
            last = math.nan
        elif r != prev:
            last = t[i]
        moved_at[i] = last
        prev = r
    hold = has_ref & (t - moved_at >= opts.settle_s)
    err = true - ref
    hw = w * hold
    if hw.sum() > 0:
        out["rms_error_mpa"] = float(np.sqrt(np.sum(err[hold] ** 2 * w[hold]) / hw.sum()))
        out["max_error_mpa"] = float(np.max(np.abs(err[hold])))
        out["mean_error_mpa"] = float(np.sum(err[hold] * w[hold]) / hw.sum())
    else:
        out["rms_error_mpa"] = out["max_error_mpa"] = out["mean_error_mpa"] = None
    out["hold_s"] = float(hw.sum())

    settle: list[float | None] = []
    over = 0.0
    under = 0.0
    down_under = 0.0
    below = np.zeros(len(t), dtype=bool)
    before = true[started] if started < len(t) else math.nan
    for a, b in _segments(target):
        tgt = target[a]
        band = max(opts.band_pct / 100.0 * abs(tgt), opts.band_mpa)
        start_t = t[a] - w[a]
        up = tgt > before + 1e-12
        down = tgt < before - 1e-12
        seg = true[a:b]
        inside = np.abs(seg - tgt) <= band
        reached = (seg >= tgt - band) if up else (seg <= tgt + band) if down else inside
        first = _first(reached, b - a)
        # Excursions past the target count from when the move got there:
        # the target itself, or its band if it never quite did.
        at = (seg >= tgt) if up else (seg <= tgt) if down else np.ones(b - a, dtype=bool)
        there = _first(at, first)
        over_seg = seg if up else seg[there:]
        under_seg = seg if down else seg[there:]
        if len(over_seg):
            over = max(over, float(np.max(over_seg - tgt)))
        if len(under_seg):
            under = max(under, float(np.max(tgt - under_seg)))
            if down:
                down_under = max(down_under, float(np.max(tgt - under_seg)))
        below[a + there : b] = seg[there:] < tgt - band
        if not up:
            below[a:b] |= seg < tgt - band
        settle.append(_settled(t[a:b], inside, start_t, opts.settle_hold_s))
        before = tgt
    done = [s for s in settle if s is not None]
    out["settling_time_s"] = max(done) if settle and len(done) == len(settle) else None
    out["overshoot_mpa"] = max(over, 0.0) if started < len(t) else None
    out["undershoot_mpa"] = max(under, 0.0) if started < len(t) else None
    out["step_down_undershoot_mpa"] = max(down_under, 0.0) if started < len(t) else None
    ref_time = float(np.sum(w[has_ref]))
    out["time_below_s"] = float(np.sum(w[below]))
    out["time_below_pct"] = 100.0 * out["time_below_s"] / ref_time if ref_time else None

    fo, vo = c["fill_opens"], c["vent_opens"]
    out["fill_opens"] = int(fo[-1]) if len(t) else 0
    out["vent_opens"] = int(vo[-1]) if len(t) else 0
    total = out["fill_opens"] + out["vent_opens"]
    out["actuations_per_hour"] = float(total / dur_h) if dur_h > 0 else None
    d_open = np.diff(fo + vo, prepend=0)
    hold_h = out["hold_s"] / 3600.0
    out["hold_actuations_per_hour"] = float(np.sum(d_open[hold])) / hold_h if hold_h > 0 else None
    out["gas_used_g"] = float(c["gas_g"][-1]) if len(t) else 0.0
    live = slice(started, len(t)) if started < len(t) else slice(0, len(t))
    out["true_min_mpa"] = float(np.min(true[live])) if len(t) else None
    out["true_max_mpa"] = float(np.max(true[live])) if len(t) else None
    out["true_end_mpa"] = float(true[-1]) if len(t) else None
    out["target_end_mpa"] = _opt(float(target[-1])) if len(t) else None
    meas = c["meas"]
    ok = ~np.isnan(meas)
    out["measured_error_mpa"] = (
        float(np.sqrt(np.mean((meas[ok] - true[ok]) ** 2))) if ok.any() else None
    )
    out["fault_s"] = fault_s
    if fault_s is not None and len(t):
        k = int(np.searchsorted(t, fault_s))
        k0 = max(k - 1, 0)
        out["true_at_fault_mpa"] = float(true[k0])
        tail = true[k:] if k < len(t) else true[-1:]
        out["true_min_after_fault_mpa"] = float(np.min(tail))
        out["true_max_after_fault_mpa"] = float(np.max(tail))
        safe = (np.isin(c["mode"], list(SAFE_MODES))) & ((c["alarms"] & LATCHED) != 0)
        safe[:k] = False
        if safe.any():
            i = int(np.argmax(safe))
            out["time_to_act_s"] = float(t[i] - fault_s)
            out["fill_opens_after_act"] = int(fo[-1] - fo[i])
            out["vent_opens_after_act"] = int(vo[-1] - vo[i])
        else:
            out["time_to_act_s"] = None
            out["fill_opens_after_act"] = out["vent_opens_after_act"] = None
    modes = c["mode"]
    if len(t) and modes[-1] != NO_MODE:
        out["mode_end"] = MODES.get(int(modes[-1]), str(int(modes[-1])))
        out["alarms_end"] = alarm_names(int(c["alarms"][-1]))
    else:
        out["mode_end"] = None
        out["alarms_end"] = []
    if len(t):
        v = int(c["valves"][-1])
        f, vv = bool(v & V_FILL), bool(v & V_VENT)
        out["valves_end"] = "both" if f and vv else "fill" if f else "vent" if vv else "closed"
    return out


def _first(mask: np.ndarray, default: int) -> int:
    return int(np.argmax(mask)) if mask.any() else default


def _settled(t: np.ndarray, inside: np.ndarray, start: float, hold_s: float) -> float | None:
    """Time from start until inside the band for hold_s (or to the end)."""
    n = len(t)
    if n == 0:
        return None
    entry = None
    for i in range(n):
        if inside[i]:
            if entry is None:
                entry = i
            if t[i] - (t[entry - 1] if entry > 0 else start) >= hold_s:
                break
        else:
            entry = None
    if entry is None:
        return None
    return float((t[entry - 1] if entry > 0 else start) - start)


def alarm_names(bits: int) -> list[str]:
    return [name for b, name in wire.ALARMS if bits & (1 << b)]


def _event_figures(
    ch: int, events: Sequence[Sequence[Any]], fault_s: float | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raised: set[str] = set()
    seen: set[str] = set()
    excursions = 0
    first_alarm = None
    first_trip = None
    leak = None
    for t_ms, e_ch, kind, code, *_rest in events:
        if e_ch not in (ch, 0):
            continue
        seen.add(kind)
        t = t_ms / 1000.0
        if e_ch != ch:
            continue
        if kind == "ALARM_RAISED":
            raised.add(ALARM_BITS.get(code, str(code)))
        if kind == "EXCURSION":
            excursions += 1
        if kind == "LEAK_RATE":
            leak = float(_rest[0])
        if fault_s is not None and t >= fault_s:
            if kind in ("ALARM_RAISED", "TRIP") and first_alarm is None:
                first_alarm = t
            if kind == "TRIP" and first_trip is None:
                first_trip = t
        if kind == "TRIP":
            raised.add("OVERPRESSURE")
    out["alarms_raised"] = sorted(raised)
    out["events_seen"] = sorted(seen)
    out["excursions"] = excursions
    out["leak_rate_pa_s"] = leak
    if fault_s is not None:
        out["time_to_alarm_s"] = None if first_alarm is None else first_alarm - fault_s
        out["time_to_trip_s"] = None if first_trip is None else first_trip - fault_s
    return out


def compute(
    result: Mapping[str, Any],
    trace: Trace,
    opts: Options,
    faults: Mapping[int, float],
    board: bool = True,
) -> dict[str, Any]:
    """Every figure of one run. faults: channel -> time (s) of its first fault."""
    m: dict[str, Any] = {}
    for ch, cols in trace.ch.items():
        f = faults.get(ch)
        figs = _channel(trace.t_s, cols, opts, f)
        if board:
            figs.update(_event_figures(ch, result.get("events", ()), f))
        else:
            for k in ("alarms_raised", "events_seen", "alarms_end"):
                figs[k] = None
            for k in (
                "excursions",
                "time_to_alarm_s",
                "time_to_trip_s",
                "time_to_act_s",
                "leak_rate_pa_s",
            ):
                figs[k] = None
            figs["fill_opens_after_act"] = figs["vent_opens_after_act"] = None
        for k, v in figs.items():
            m[f"ch{ch}.{k}"] = v
    sim_s = float(trace.t_s[-1]) if len(trace) else 0.0
    wall = float(result.get("wall_s", 0.0))
    m["run.resets"] = int(result.get("resets", 0))
    m["run.boots"] = sum(1 for e in result.get("events", ()) if e[2] == "BOOT")
    m["run.sim_s"] = sim_s
    m["run.wall_s"] = wall
    m["run.speed"] = sim_s / wall if wall > 0 else None
    m["run.rows"] = len(trace)
    link = dict(result.get("link") or {})
    drops = link.pop("board_drops", None)
    if isinstance(drops, dict):
        link["board_drops_total"] = sum(drops.values())
    for k, v in link.items():
        if k in LINK_METRICS:
            m["link." + k] = v
    return m


@dataclass(frozen=True)
class Criterion:
    metric: str
    op: str  # max, min, equals, includes, excludes
    limit: Any
    why: str = ""

    def judge(self, value: Any) -> bool:
        if self.op in ("max", "min"):
            if value is None or isinstance(value, (list, str)):
                return False
            return value <= self.limit if self.op == "max" else value >= self.limit
        if self.op == "equals":
            return value == self.limit
        if value is None:
            return False
        have = set(value)
        if self.op == "includes":
            return set(self.limit) <= have
        return not (set(self.limit) & have)

    def text(self) -> str:
        sym = {"max": "<=", "min": ">=", "equals": "==", "includes": "has", "excludes": "lacks"}
        return f"{self.metric} {sym[self.op]} {self.limit}"


def check(criteria: Sequence[Criterion], metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each criterion with the value found and whether it held."""
    out = []
    for c in criteria:
        value = metrics.get(c.metric)
        out.append(
            {
                "metric": c.metric,
                "op": c.op,
                "limit": c.limit,
                "value": value,
                "ok": c.judge(value),
                "text": c.text(),
                "why": c.why,
            }
        )
    return out
