"""Clock sync against a synthetic device clock: offset, drift, jitter, slow trips, wraps."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isopress.clocksync import ClockSync, ClockSyncError, Extender

T0 = 1_760_000_000.0
WRAP = 2**32


@dataclass
class Link:
    """A device whose ms counter runs at (1 + drift) of true time, over a link
    with fixed and random delays each way and occasional stalls."""

    drift_ppm: float
    start_ms: float  # the device's counter at T0 (real, before truncation)
    up_s: float = 0.0004
    down_s: float = 0.0004
    jitter_s: float = 0.0002
    p_slow: float = 0.05
    seed: int = 0
    host_step_s: float = 0.0
    stall_side: str = "either"

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed)
        self.last_count = 0  # the untruncated counter behind the last ticks
        self.epoch = 0  # counter - extended value: whole periods before the first reading

    def extended(self, cs: ClockSync, ticks: int) -> int:
        x = cs.extend(ticks)
        if cs.accepted == 0 and cs.rejected == 0:
            self.epoch = self.last_count - x
        return x

    def counter(self, t: float) -> float:
        return self.start_ms + (t - T0) * 1000.0 * (1 + self.drift_ppm * 1e-6)

    def truth(self, device_ms64: int) -> float:
        """True UTC of a reading: the middle of that counter millisecond."""
        count = device_ms64 + self.epoch + 0.5
        return T0 + (count - self.start_ms) / (1000.0 * (1 + self.drift_ppm * 1e-6))

    def exchange(self, t: float) -> tuple[float, int, float]:
        """(sent host time, u32 ticks, received host time) for a query sent at t."""
        up = self.up_s + self.rnd.expovariate(1 / self.jitter_s)
        down = self.down_s + self.rnd.expovariate(1 / self.jitter_s)
        if self.rnd.random() < self.p_slow:
            stall = self.rnd.uniform(0.005, 0.1)
            if self.stall_side == "up" or self.rnd.random() < 0.5:
                up += stall
            else:
                down += stall
        self.last_count = math.floor(self.counter(t + up))
        return t + self.host_step_s, self.last_count % WRAP, t + up + down + self.host_step_s


def run(cs: ClockSync, link: Link, n: int, t: float, interval: float = 1.0) -> float:
    for _ in range(n):
        t += interval * link.rnd.uniform(0.8, 1.2)
        sent, ticks, received = link.exchange(t)
        cs.add(sent, link.extended(cs, ticks), received)
    return t


def worst_error(cs: ClockSync, link: Link, span_ms: int = 10_000) -> float:
    """Largest |utc - truth| over device times in the last span_ms."""
    latest = cs.latest_ms
    assert latest is not None
    return max(abs(cs.utc(x) - link.truth(x)) for x in range(latest - span_ms, latest + 1, 250))


def test_extend_crosses_the_wrap_both_ways():
    ext = Extender()
    assert ext(WRAP - 10) == WRAP - 10
    assert ext(5) == WRAP + 5
    assert ext(WRAP - 20) == WRAP - 20  # an older reading (a replay) stays older
    assert ext(6) == WRAP + 6
    assert ext(WRAP // 2 + 5) == WRAP + WRAP // 2 + 5  # just under half a period on
    assert ext(4) == 2 * WRAP + 4
    # Before the first reading and across a wrap: negative, still in order.
    early = Extender()
    assert early(3) == 3
    assert early(WRAP - 2) == -2


def test_extend_continues_from_a_stored_value():
    ext = Extender(last=5 * WRAP + 100)
    assert ext(90) == 5 * WRAP + 90
    assert ext(WRAP - 1) == 5 * WRAP - 1
    assert ext(200) == 5 * WRAP + 200


@pytest.mark.parametrize("bad", [-1, WRAP, 1.5, "7", True])
def test_extend_rejects_what_is_not_a_u32(bad):
    ext = Extender()
    ext(100)
    with pytest.raises(ValueError):
        ext(bad)
    assert ext.last == 100


@given(
    start=st.integers(0, WRAP - 1),
    steps=st.lists(st.integers(-(2**31) + 1, 2**31 - 1), min_size=1, max_size=60),
)
def test_extend_recovers_any_walk_with_steps_under_half_a_period(start, steps):
    ext = Extender()
    assert ext(start) == start
    newest = true = start
    for step in steps:
        # Steps are relative to the newest reading, as the half-range rule needs.
        true = newest + step
        assert ext(true % WRAP) == true
        newest = max(newest, true)


def test_no_exchange_no_utc():
    cs = ClockSync()
    with pytest.raises(ClockSyncError):
        cs.utc(0)
    assert cs.error_s == math.inf
    assert not cs.ready


def test_bad_exchanges_are_refused_and_change_nothing():
    cs = ClockSync()
    cs.add(T0, 1000, T0 + 0.001)
    before = cs.utc(2000)
    with pytest.raises(ValueError, match="before the query was sent"):
        cs.add(T0 + 1, 2000, T0 + 0.9)
    with pytest.raises(ValueError):
        cs.add(float("nan"), 2000, T0 + 1)
    with pytest.raises(ValueError):
        cs.add(T0 + 1, 2000.0, T0 + 1.001)  # type: ignore[arg-type]
    assert cs.utc(2000) == before
    assert cs.accepted == 1


@pytest.mark.parametrize("drift", [-100.0, 0.0, 100.0])
def test_converges_below_a_millisecond_and_the_bound_holds(drift):
    link = Link(drift_ppm=drift, start_ms=WRAP - 30_000.3, seed=int(drift))  # wraps at 30 s
    cs = ClockSync()
    t = run(cs, link, 90, T0)
    assert cs.latest_ms is not None and cs.latest_ms > WRAP  # the wrap was crossed
    err = worst_error(cs, link)
    assert err < 1e-3
    assert err <= cs.error_s
    assert abs(cs.drift_ppm - drift) < 10
    assert cs.rejected > 0  # the slow round trips were noticed
    # Between exchanges, telemetry moves the present on: the bound grows with it.
    ahead = cs.extend(math.floor(link.counter(t + 0.9)) % WRAP)
    assert abs(cs.utc(ahead) - link.truth(ahead)) <= cs.error_s


def test_slow_round_trips_are_dropped_not_averaged():
    # Stalls on the way up only: each one moves the midpoint late, the worst
    # case for a fit that believed them.
    link = Link(drift_ppm=30, start_ms=1e6, p_slow=0.4, stall_side="up", seed=3)
    cs = ClockSync()
    run(cs, link, 120, T0)
    assert cs.rejected > 20
    assert worst_error(cs, link) < 1e-3
    # A slow exchange, however far off, leaves the fit as it was.
    latest = cs.latest_ms
    assert latest is not None
    before = cs.utc(latest)
    assert not cs.add(T0 + 500, latest + 1000, T0 + 500.03)
    assert cs.utc(latest) == before


def test_a_host_clock_step_restarts_the_fit():
    link = Link(drift_ppm=-60, start_ms=5e8, seed=9)
    cs = ClockSync()
    t = run(cs, link, 60, T0)
    assert worst_error(cs, link) < 1e-3
    link.host_step_s = 2.0  # NTP steps the host's clock
    t = run(cs, link, 80, t)
    assert cs.restarts == 1
    stepped = Link(drift_ppm=-60, start_ms=link.start_ms - 2000 * (1 - 60e-6))
    stepped.epoch = link.epoch
    assert worst_error(cs, stepped) < 1e-3


def test_error_bound_is_honest_about_an_asymmetric_link():
    # 1.6 ms up, nothing down: the midpoint is 0.8 ms late and nothing in the
    # exchanges can show it; the bound must still cover it.
    link = Link(drift_ppm=10, start_ms=0, up_s=0.0016, down_s=0.0, jitter_s=0.0001, seed=4)
    cs = ClockSync()
    run(cs, link, 80, T0)
    err = worst_error(cs, link)
    assert 0.6e-3 < err <= cs.error_s


@settings(max_examples=60, deadline=None)
@given(
    drift=st.floats(-100, 100),
    start=st.floats(0, WRAP - 1),
    up=st.floats(0, 0.0008),
    down=st.floats(0, 0.0008),
    jitter=st.floats(1e-5, 0.0004),
    p_slow=st.floats(0, 0.3),
    interval=st.floats(0.25, 3.0),
    seed=st.integers(0, 2**32),
)
def test_converged_error_is_under_a_millisecond_and_bounded(
    drift, start, up, down, jitter, p_slow, interval, seed
):
    link = Link(drift, start, up, down, jitter, p_slow, seed)
    cs = ClockSync()
    run(cs, link, 80, T0, interval)
    err = worst_error(cs, link, span_ms=int(10_000 * interval))
    assert err < 1e-3
    assert err <= cs.error_s
    assert cs.error_s < 5e-3
