"""Device milliseconds to UTC: a running fit of CLOCK exchanges.

The board stamps telemetry and events with its own millisecond counter (a u32
on the wire). The bridge sends CLOCK_QUERY every second or so and notes when
it sent the query and when the CLOCK answer came back; the device read its
counter somewhere in between. As in Klipper's clocksync, the host time of the
reading is taken as the midpoint of that round trip, and an exponentially
weighted linear fit of (device ms, host time) over recent exchanges gives
offset and drift.

What limits the answer, and how each part is handled:
- Link asymmetry: the midpoint is wrong by half the difference between the
  uplink and downlink delays, at most half the round trip. Exchanges are
  weighted by the inverse of their variance (a half round trip h spreads the
  truth uniformly over +-h, variance h**2/3, plus the 1 ms counter's own
  quantisation), so fast exchanges dominate, and any whose round trip is far
  above the recent minimum (the host or device was busy) are dropped.
- The ms counter's resolution: readings of N stand for the middle of that
  millisecond on average; the fit learns that offset by itself.
- Drift: the slope is fitted, with a weak prior at the nominal rate (so the
  first few exchanges, a fraction of a second apart, do not give a wild slope)
  that the data outweighs within seconds.
- Steps in host time (NTP) or an unexpected device clock: an exchange far off
  the prediction is dropped; several in a row restart the fit.

`error_s` is a bound, not a standard deviation: the weighted mean half round
trip of the exchanges in the fit (the worst asymmetry they allow) plus three
standard errors of the fit's prediction at the latest device time seen.
"""

from __future__ import annotations

import math
from collections import deque

NOMINAL_S_PER_MS = 1e-3
# The counter's 1 ms resolution: a reading is uniform over its millisecond.
_QUANTUM_VAR = (1e-3) ** 2 / 12
_MIN_FIT = 4  # exchanges in the fit before outliers are judged against it


class ClockSyncError(RuntimeError):
    """No exchange yet: device time cannot be turned into UTC."""


class Extender:
    """Widen a wrapping counter (u32 on the wire) to an unbounded integer.

    Half-range rule: a reading is taken as the value nearest the newest one
    seen, so readings may arrive out of order (replays) by up to half a
    period either way. The first reading is taken as it is (or continued from
    `last`, e.g. a value the store kept); readings older than it across a
    wrap come out negative, which orders them correctly.
    """

    def __init__(self, period: int = 2**32, last: int | None = None) -> None:
        if period < 2 or period & (period - 1):
            raise ValueError(f"period must be a power of two, not {period}")
        self.period = period
        self.last = last

    def __call__(self, reading: int) -> int:
        if isinstance(reading, bool) or not isinstance(reading, int):
            raise ValueError(f"counter reading must be an int, not {reading!r}")
        if not 0 <= reading < self.period:
            raise ValueError(f"counter reading {reading} outside 0..{self.period - 1}")
        if self.last is None:
            self.last = reading
            return reading
        delta = (reading - self.last) % self.period
        if delta >= self.period // 2:
            delta -= self.period
        value = self.last + delta
        if delta > 0:
            self.last = value
        return value


class ClockSync:
    """One device's clock: extend its ticks, fit them to UTC.

    Host times are UTC seconds (time.time()) taken just before the query is
    written and just after the answer is read. One instance per device boot:
    a reset restarts the device counter, so the bridge starts a new ClockSync
    when HELLO shows a new boot_id.
    """

    def __init__(
        self,
        *,
        period: int = 2**32,
        decay: float = 1 / 32,
        rtt_slack_s: float = 0.002,
        rtt_window: int = 64,
        prior_ppm: float = 200.0,
        outlier_sigma: float = 5.0,
        restart_after: int = 3,
        last_device_ms: int | None = None,
    ) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be between 0 and 1, not {decay}")
        self._extend = Extender(period, last_device_ms)
        self.decay = decay
        self.rtt_slack_s = rtt_slack_s
        self.outlier_sigma = outlier_sigma
        self.restart_after = restart_after
        # Prior on the slope: nominal rate, standard deviation prior_ppm.
        self._prior = 1.0 / (prior_ppm * 1e-6 * NOMINAL_S_PER_MS) ** 2
        self._rtts: deque[float] = deque(maxlen=rtt_window)
        self.accepted = 0
        self.rejected = 0
        self.restarts = 0
        self._latest: int | None = None
        self._restart()

    def _restart(self) -> None:
        self._x0: int | None = None  # device ms and host s the fit is centred on,
        self._y0 = 0.0  # so sums stay small numbers whatever the epoch
        self._w = 0.0  # sum of (decayed) weights
        self._mx = self._my = 0.0
        self._sxx = self._sxy = 0.0
        self._h = 0.0  # weighted mean half round trip
        self._chi2 = 1.0  # running mean of squared normalised residuals
        self._n = 0
        self._outliers = 0

    # -- counter ---------------------------------------------------------

    def extend(self, ticks_u32: int) -> int:
        """The device's 64-bit ms for a u32 `time`/`ticks` from the wire."""
        value = self._extend(ticks_u32)
        if self._latest is None or value > self._latest:
            self._latest = value
        return value

    # -- fit -------------------------------------------------------------

    def add(self, sent_host_s: float, device_ms64: int, received_host_s: float) -> bool:
        """Take one CLOCK exchange; True if it went into the fit."""
        for name, v in (("sent_host_s", sent_host_s), ("received_host_s", received_host_s)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number of seconds, not {v!r}")
        if isinstance(device_ms64, bool) or not isinstance(device_ms64, int):
            raise ValueError(f"device_ms64 must be an int (from extend()), not {device_ms64!r}")
        rtt = received_host_s - sent_host_s
        if rtt < 0:
            raise ValueError(
                f"answer received ({received_host_s}) before the query was sent "
                f"({sent_host_s}): check the order of the arguments"
            )
        if self._latest is None or device_ms64 > self._latest:
            self._latest = device_ms64
        self._rtts.append(rtt)
        floor = min(self._rtts)
        if rtt > floor + max(self.rtt_slack_s, floor):
            self.rejected += 1
            return False
        half = rtt / 2
        host = sent_host_s + half
        if self._x0 is None:
            self._x0, self._y0 = device_ms64, host
        x = float(device_ms64 - self._x0)
        y = host - self._y0
        var = half * half / 3 + _QUANTUM_VAR
        if self._n >= _MIN_FIT:
            r = y - self._predict(x)
            expected = self._fit_var(x) + var
            if r * r > self.outlier_sigma**2 * expected * max(1.0, self._chi2):
                self._outliers += 1
                if self._outliers < self.restart_after:
                    self.rejected += 1
                    return False
                # Persistent disagreement: the host clock stepped or this is
                # another clock. Start again from here.
                self.restarts += 1
                self._restart()
                self._x0, self._y0 = device_ms64, host
                x, y = 0.0, 0.0
            else:
                self._outliers = 0
                self._chi2 += self.decay * (r * r / expected - self._chi2)
        self._update(x, y, 1.0 / var, half)
        self.accepted += 1
        return True

    def _update(self, x: float, y: float, w: float, half: float) -> None:
        # Weighted running mean and co-moments with exponential forgetting
        # (West's update): stable for any number of exchanges.
        keep = 1.0 - self.decay if self._n else 0.0
        total = keep * self._w + w
        k = w / total
        dx = x - self._mx
        self._mx += k * dx
        dy = y - self._my
        self._my += k * dy
        self._sxx = keep * self._sxx + w * dx * (x - self._mx)
        self._sxy = keep * self._sxy + w * dx * (y - self._my)
        self._h += k * (half - self._h)
        self._w = total
        self._n += 1

    @property
    def _slope(self) -> float:
        """Host seconds per device ms."""
        return (self._sxy + self._prior * NOMINAL_S_PER_MS) / (self._sxx + self._prior)

    def _predict(self, x: float) -> float:
        return self._my + self._slope * (x - self._mx)

    def _fit_var(self, x: float) -> float:
        # Variance of the fitted line at x if the weights are true inverse
        # variances; 1/W overstates it about twofold under forgetting.
        d = x - self._mx
        return 1.0 / self._w + d * d / (self._sxx + self._prior)

    def _prediction_var(self, x: float) -> float:
        # Scaled up when the residuals say the weights were optimistic.
        return self._fit_var(x) * max(1.0, self._chi2)

    # -- answers ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._n > 0

    def utc(self, device_ms64: int) -> float:
        """UTC seconds at which the device's counter read `device_ms64`."""
        if self._x0 is None:
            raise ClockSyncError("no CLOCK exchange yet: device time has no UTC")
        return self._y0 + self._predict(float(device_ms64 - self._x0))

    @property
    def error_s(self) -> float:
        """Bound on |utc(t) - true UTC| at the latest device time seen (inf before any)."""
        if self._x0 is None or self._latest is None:
            return math.inf
        x = float(self._latest - self._x0)
        return self._h + 3.0 * math.sqrt(self._prediction_var(x))

    @property
    def drift_ppm(self) -> float:
        """How fast the device's clock runs against the host's (+ = device fast)."""
        return (NOMINAL_S_PER_MS / self._slope - 1.0) * 1e6

    @property
    def latest_ms(self) -> int | None:
        """The newest device time seen (by extend or add): where error_s applies."""
        return self._latest

    @property
    def min_rtt_s(self) -> float:
        return min(self._rtts) if self._rtts else math.inf

    def status(self) -> dict[str, float | int]:
        """Figures for a status page."""
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "restarts": self.restarts,
            "drift_ppm": self.drift_ppm,
            "error_s": self.error_s,
            "min_rtt_s": self.min_rtt_s,
        }
