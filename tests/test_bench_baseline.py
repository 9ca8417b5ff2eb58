"""The baselines (firmware/sim/baseline.py) against the plant, in CPython:
the gauge reads each sensor right, the bang-bang switch holds its band, the
manual holder is filled once, checked once, and left alone."""

from __future__ import annotations

import pytest

from isopress.sim import baseline, plant

MPA = 1e6


def rig(**over: object) -> plant.Plant:
    p = plant.default_params()
    for ch in p["channel"].values():
        ch.get("sensor", {})["noise_pct_fs"] = 0.0
    for k, v in over.items():
        ch, key = k.split("__")
        p["channel"][ch][key] = v
    return plant.Plant(p)


@pytest.mark.parametrize("ch", [1, 2, 3, 4])
def test_gauge_reads_true_pressure_without_noise(ch: int) -> None:
    p = rig(**{"1__initial_mpa": 4.0, "2__initial_mpa": 6.0})
    h = p.holder(ch)
    g = baseline.Gauge(h)
    assert g.read() == pytest.approx(h.pressure, rel=1e-6, abs=1.0)


def test_gauge_none_when_the_sensor_is_gone() -> None:
    p = rig()
    p.inject(3, "sensor_unplugged", True)
    assert baseline.Gauge(p.holder(3)).read() is None


def run(ctl: object, p: plant.Plant, ch: int, ref: float, seconds: float) -> list[float]:
    trace = []
    while p.t < seconds:
        ctl.control(ch, ref, ref)  # type: ignore[attr-defined]
        p.advance(ctl.next_step())  # type: ignore[attr-defined]
        trace.append(p.holder(ch).pressure)
    return trace


def test_bangbang_holds_within_its_hysteresis() -> None:
    p = rig()
    bb = baseline.BangBang(p, [1], hysteresis_pct_fs=0.5)  # 50 kPa on 10 MPa
    trace = run(bb, p, 1, 5 * MPA, 1800)
    late = trace[len(trace) // 2 :]
    assert min(late) > 5 * MPA - 60e3 and max(late) < 5 * MPA + 60e3
    v = bb.valves[1]
    assert v.fill_opens >= 1
    assert not (v.h.fill and v.h.vent)


def test_bangbang_closes_without_a_signal_or_a_setpoint() -> None:
    p = rig()
    bb = baseline.BangBang(p, [1, 3], 0.5)
    bb.control(3, 50 * MPA, 50 * MPA)
    assert p.holder(3).fill
    p.inject(3, "sensor_unplugged", True)  # the HX711 no longer answers
    bb.control(3, 50 * MPA, 50 * MPA)
    assert not p.holder(3).fill and not p.holder(3).vent
    bb.control(1, 5 * MPA, 5 * MPA)
    assert p.holder(1).fill
    bb.control(1, None, None)  # before the protocol starts
    assert not p.holder(1).fill and not p.holder(1).vent


def test_manual_fills_once_checks_once_then_leaves_it() -> None:
    p = rig()
    m = baseline.Manual(p, [1], check_s=120.0)
    trace = run(m, p, 1, 5 * MPA, 3600)
    v = m.valves[1]
    assert v.fill_opens == 2  # the fill and the one top-up after the gas cooled
    assert v.vent_opens == 0
    assert m.state[1] == "idle"
    # filled to the gauge, cooled below it, topped up, cooled less: below 5 MPa
    assert 4.5 * MPA < trace[-1] < 5 * MPA
    assert max(trace) == pytest.approx(5 * MPA, rel=0.01)


def test_manual_step_down_vents_to_the_gauge() -> None:
    p = rig(**{"1__initial_mpa": 5.0})
    m = baseline.Manual(p, [1], check_s=60.0)
    trace = run(m, p, 1, 2 * MPA, 600)
    assert m.valves[1].vent_opens >= 1 and m.valves[1].fill_opens == 0
    # vented to 2 MPa on the gauge; the cold gas warms back above it
    assert min(trace) == pytest.approx(2 * MPA, rel=0.02)
    assert trace[-1] > 2 * MPA


def test_make_rejects_unknown_and_bad_options() -> None:
    p = rig()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline.make("pid", p, [1], {})
    with pytest.raises(ValueError, match="hysteresis"):
        baseline.make("bangbang", p, [1], {"hysteresis_pct_fs": 0.0})
    assert baseline.make("manual", p, [1, 4], {}).valves.keys() == {1}  # a monitor has none
