"""Bench metrics on traces whose answers are known, the reference schedule,
the trace format both interpreters write, and the link's bit errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from isopress.bench import metrics
from isopress.bench.metrics import Criterion, Options
from isopress.sim import scenario_run as sr

MPA = 1_000_000
HOLD, ISOLATED, TRIPPED = 1, 3, 4
LATCHED = 1 << 15


def trace_of(
    tmp_path: Path,
    t_ms: np.ndarray,
    true_mpa: np.ndarray,
    target_mpa: np.ndarray,
    ref_mpa: np.ndarray | None = None,
    mode: np.ndarray | None = None,
    alarms: np.ndarray | None = None,
    fill_opens: np.ndarray | None = None,
) -> metrics.Trace:
    """Writes one channel's rows with the Recorder and reads them back."""
    n = len(t_ms)
    ref_mpa = target_mpa if ref_mpa is None else ref_mpa
    mode = np.full(n, HOLD) if mode is None else mode
    alarms = np.zeros(n, dtype=int) if alarms is None else alarms
    fill_opens = np.zeros(n, dtype=int) if fill_opens is None else fill_opens
    path = tmp_path / "trace.bin"
    rec = sr.Recorder(str(path), [1], block=7)  # a block that does not divide n
    for i in range(n):
        ref = None if math.isnan(ref_mpa[i]) else ref_mpa[i] * MPA
        tgt = None if math.isnan(target_mpa[i]) else target_mpa[i] * MPA
        row = (ref, tgt, true_mpa[i] * MPA, true_mpa[i] * MPA + 100, tgt, 0, int(mode[i]),
               int(alarms[i]), int(fill_opens[i]), 0, 0.5 * i)  # fmt: skip
        rec.row(int(t_ms[i]), [row])
    rec.close()
    return metrics.read_trace(path, [1])


def figures(tr: metrics.Trace, opts: Options | None = None, fault: float | None = None) -> dict:
    m = metrics._channel(tr.t_s, tr.ch[1], opts or Options(), fault)
    return m


def test_trace_round_trip(tmp_path: Path) -> None:
    t = np.arange(1, 31) * 100
    true = np.linspace(0, 3, 30)
    tgt = np.full(30, np.nan)
    tgt[10:] = 3.0
    tr = trace_of(tmp_path, t, true, tgt)
    assert len(tr) == 30
    np.testing.assert_allclose(tr.t_s, t / 1000)
    np.testing.assert_allclose(tr.ch[1]["true"], true, atol=1e-6)
    assert np.isnan(tr.ch[1]["target"][:10]).all() and (tr.ch[1]["target"][10:] == 3.0).all()
    np.testing.assert_allclose(tr.ch[1]["meas"], true + 1e-4, atol=1e-6)
    assert tr.ch[1]["gas_g"][-1] == pytest.approx(14.5)


def step_response(tmp_path: Path) -> metrics.Trace:
    # 0 -> 5 MPa at t = 10 s: rises linearly to 5.05 by 20 s (50 kPa over),
    # settles to 5.0 at 30 s; holds; a step down to 2 MPa at 400 s reached at
    # 410 s with a dip to 1.99 (10 kPa under) and 2.0 from 420 s on.
    t = np.arange(1, 8001) * 100  # 0.1 s rows to 800 s
    ts = t / 1000
    true = np.zeros_like(ts)
    tgt = np.full_like(ts, np.nan)
    tgt[ts > 10] = 5.0
    tgt[ts > 400] = 2.0
    true = np.interp(ts, [0, 10, 20, 30, 400, 410, 415, 420, 800],
                     [0, 0, 5.05, 5.0, 5.0, 2.0, 1.99, 2.0, 2.0])  # fmt: skip
    return trace_of(tmp_path, t, true, tgt)


def test_overshoot_undershoot_settling(tmp_path: Path) -> None:
    m = figures(step_response(tmp_path), Options(band_pct=0.5, band_mpa=0.01, settle_hold_s=30))
    assert m["overshoot_mpa"] == pytest.approx(0.05, abs=1e-4)
    assert m["undershoot_mpa"] == pytest.approx(0.01, abs=1e-4)
    assert m["step_down_undershoot_mpa"] == pytest.approx(0.01, abs=1e-4)
    # into the 25 kPa band at 19.5 s and out of it never again... but above
    # 5.025 until 25 s: the rise settles when it comes down into the band
    assert m["settling_time_s"] == pytest.approx(25.0 - 10.0, abs=0.15)
    # the dip to 1.99 stays within the 10 kPa band of 2 MPa: no time below
    assert m["time_below_s"] == 0.0
    assert m["true_end_mpa"] == pytest.approx(2.0)
    assert m["target_end_mpa"] == 2.0


def test_hold_window_accuracy(tmp_path: Path) -> None:
    # a constant target with a known error after the settle time: +3 kPa
    # for half the window, -1 kPa for the other half
    t = np.arange(1, 6001) * 100
    ts = t / 1000
    tgt = np.full(len(t), 5.0)
    true = np.where(ts < 120, 4.0, np.where(ts < 360, 5.003, 4.999))
    m = figures(trace_of(tmp_path, t, true, tgt), Options(settle_s=120))
    assert m["hold_s"] == pytest.approx(480.0, abs=0.2)
    assert m["rms_error_mpa"] == pytest.approx(math.sqrt((0.003**2 + 0.001**2) / 2), rel=1e-3)
    assert m["max_error_mpa"] == pytest.approx(0.003, abs=1e-6)
    assert m["mean_error_mpa"] == pytest.approx(0.001, abs=1e-5)


def test_time_below_excludes_the_climb_but_counts_a_sag(tmp_path: Path) -> None:
    t = np.arange(1, 3001) * 100
    ts = t / 1000
    tgt = np.full(len(t), 5.0)
    # climbs to 5 by 50 s, sags to 4.9 from 100 s to 130 s
    true = np.interp(ts, [0, 50, 99.9, 100, 130, 130.1, 300], [0, 5, 5, 4.9, 4.9, 5, 5])
    m = figures(trace_of(tmp_path, t, true, tgt))
    assert m["time_below_s"] == pytest.approx(30.1, abs=0.2)
    assert m["undershoot_mpa"] == pytest.approx(0.1, abs=1e-4)
    assert m["time_below_pct"] == pytest.approx(100 * 30.1 / 300, abs=0.1)


def test_never_settling_is_none(tmp_path: Path) -> None:
    t = np.arange(1, 1001) * 100
    tgt = np.full(len(t), 5.0)
    true = np.full(len(t), 4.0)  # never gets there
    m = figures(trace_of(tmp_path, t, true, tgt))
    assert m["settling_time_s"] is None


def test_fault_figures(tmp_path: Path) -> None:
    # fault at 50 s; latched ISOLATED at 50.3 s; two fill openings after
    # that would be a bug the figure must show
    t = np.arange(1, 1001) * 100
    ts = t / 1000
    tgt = np.full(len(t), 5.0)
    true = np.where(ts < 60, 5.0, 4.97)
    mode = np.where(ts >= 50.3, ISOLATED, HOLD)
    alarms = np.where(ts >= 50.3, LATCHED | 2, 0)
    fills = np.where(ts >= 80, 7, 5)
    m = figures(
        trace_of(tmp_path, t, true, tgt, mode=mode, alarms=alarms, fill_opens=fills), fault=50.0
    )
    assert m["time_to_act_s"] == pytest.approx(0.3, abs=0.01)
    assert m["fill_opens_after_act"] == 2
    assert m["true_at_fault_mpa"] == pytest.approx(5.0)
    assert m["true_min_after_fault_mpa"] == pytest.approx(4.97)
    assert m["mode_end"] == "ISOLATED"
    assert m["alarms_end"] == ["SENSOR_FAULT", "LATCHED"]


def test_event_figures() -> None:
    events = [
        [0, 0, "BOOT", 0, 0, 0, 0],
        [49000, 1, "LEAK_RATE", 0, -3, 0, 0],
        [50250, 1, "ALARM_RAISED", 1, 0, 0, 0],
        [51000, 2, "TRIP", 0, 0, 0, 0],
        [52000, 1, "TRIP", 0, 0, 0, 0],
        [53000, 1, "EXCURSION", 0, 0, 0, 0],
    ]
    m = metrics._event_figures(1, events, 50.0)
    assert m["time_to_alarm_s"] == pytest.approx(0.25)
    assert m["time_to_trip_s"] == pytest.approx(2.0)
    assert m["alarms_raised"] == ["OVERPRESSURE", "SENSOR_FAULT"]
    assert m["events_seen"] == ["ALARM_RAISED", "BOOT", "EXCURSION", "LEAK_RATE", "TRIP"]
    assert m["excursions"] == 1
    assert m["leak_rate_pa_s"] == -3.0


@pytest.mark.parametrize(
    ("crit", "value", "ok"),
    [
        (Criterion("x", "max", 1.0), 1.0, True),
        (Criterion("x", "max", 1.0), 1.01, False),
        (Criterion("x", "max", 1.0), None, False),
        (Criterion("x", "min", 2), 3, True),
        (Criterion("x", "min", 2), ["A"], False),
        (Criterion("x", "equals", "HOLD"), "HOLD", True),
        (Criterion("x", "equals", "HOLD"), "IDLE", False),
        (Criterion("x", "includes", ["A", "B"]), ["B", "A", "C"], True),
        (Criterion("x", "includes", ["A", "B"]), ["A"], False),
        (Criterion("x", "excludes", ["A"]), ["B"], True),
        (Criterion("x", "excludes", ["A"]), ["A", "B"], False),
        (Criterion("x", "excludes", ["A"]), None, False),
    ],
)
def test_criterion_judges(crit: Criterion, value: object, ok: bool) -> None:
    assert metrics.check([crit], {"x": value})[0]["ok"] is ok


def test_metric_names() -> None:
    assert metrics.metric_known("ch1.rms_error_mpa")
    assert metrics.metric_known("ch12.time_to_act_s")
    assert metrics.metric_known("link.corrupt_accepted")
    assert metrics.metric_known("run.resets")
    assert not metrics.metric_known("ch.rms_error_mpa")
    assert not metrics.metric_known("chx.rms_error_mpa")
    assert not metrics.metric_known("run.happiness")


# ---- the reference schedule (firmware/sim/scenario_run.py, in CPython) ---------


def test_schedule_ramps_holds_and_waits() -> None:
    s = sr.Schedule(
        [
            [sr.RAMP, 5 * MPA, 1 * MPA, 0, 0],  # 3 s from 2 MPa
            [sr.HOLD, 0, 0, 10_000, 0],
            [sr.SET, 1 * MPA, 2 * MPA, 0, 0],  # 2 s, under the wait
            [sr.WAIT, 0, 0, 0, 1],
            [sr.SET, 3 * MPA, 1 * MPA, 0, 0],
        ],
        start_ms=1000,
    )
    s.update(500)
    assert not s.started and s.ref is None
    s.begin(2 * MPA)
    assert s.take_entered() == [0]
    s.update(2500)
    assert s.ref == pytest.approx(3.5 * MPA)
    s.update(4000)  # ramp done at 4 s, hold until 14 s
    assert s.ref == 5 * MPA and s.i == 1 and s.take_entered() == [1]
    s.update(14000)
    assert s.i == 3 and s.waiting and s.target == 1 * MPA
    s.update(15000)
    assert s.ref == pytest.approx(3 * MPA)
    assert s.cycle(15000)  # a WAIT moves on at a cycle event
    assert s.done and s.target == 3 * MPA
    s.update(100_000)
    assert s.ref == 3 * MPA
    assert not s.cycle(100_000)  # nothing waits any more


def test_schedule_wait_timeout_and_zero_rate() -> None:
    s = sr.Schedule([[sr.WAIT, 0, 0, 5000, 1], [sr.SET, 4 * MPA, 0, 0, 0]], start_ms=0)
    s.begin(1 * MPA)
    s.update(4999)
    assert s.waiting
    s.update(5000)
    assert s.done and s.ref == 4 * MPA  # no rate: a step


# ---- bit errors ---------------------------------------------------------------


def test_bit_errors_rate_and_repeatability() -> None:
    data = bytes(range(256)) * 200  # 409600 bits
    a = sr.BitErrors(1e-3, seed=7)
    out = a.apply(data)
    flipped = sum(bin(x ^ y).count("1") for x, y in zip(data, out, strict=True))
    assert flipped == a.flips
    assert 300 < flipped < 520  # 410 expected
    b = sr.BitErrors(1e-3, seed=7)
    assert b.apply(data) == out
    c = sr.BitErrors(1e-3, seed=8)
    assert c.apply(data) != out
