# Safety cut-offs for one channel. Runs every tick after the measurement and
# before the regulator, and can override it: the regulator only ever sees a
# channel the supervisor has left in HOLD, RAMP or VENT.
#
# What trips, and what the channel does then (DESIGN.md invariant 1):
#   over-pressure above `trip` for `trip_persist` ms -> TRIPPED: fill closed,
#       vent open until below `trip_reset`, then every valve closed; latched.
#       The only fault that vents: over-pressure is the hazard to people.
#   sensor fault (after the sensor's N bad samples) -> ISOLATED, latched.
#   fill time-out: fill open for `fill_timeout` ms (summed over pulses)
#       without a rise of `fill_min_rise` -> supply lost or a leak the fill
#       cannot beat: ISOLATED, latched. Like a 3D printer's heater watch.
#   rise with the fill closed (a leaking fill seat: gas entering that the
#       regulator has to vent, minute after minute), or a vent that does not
#       lower the pressure (stuck closed): alarm; the regulator vents back.
#   leak: the fall the regulator had to make up over `leak_window`, as a
#       LEAK_RATE event; alarm when faster than `leak_alarm`.
#   excursion below setpoint - `tolerance`: an EXCURSION event with start,
#       minimum and duration when it ends (not while the setpoint is rising:
#       a rise is approached from below by design).
#   below `min_alarm` (when set): alarm.
# Latched alarms clear only with ACK_ALARM (channel.acknowledge), and then
# only once their cause has gone; the channel stays safe until then.
# Non-latched alarms come and go with their cause, with hysteresis, and each
# change is an ALARM_RAISED / ALARM_CLEARED event.
import wire
from micropython import const

_A = wire.codes(wire.ALARMS)
OVERPRESSURE = const(1 << 0)
SENSOR_FAULT = const(1 << 1)
FILL_TIMEOUT = const(1 << 2)
RISE_FILL_CLOSED = const(1 << 3)
LEAK = const(1 << 4)
BELOW_MIN = const(1 << 5)
EXCURSION = const(1 << 6)
CONFIG = const(1 << 7)
LATCHED = const(1 << 15)
LATCHING = OVERPRESSURE | SENSOR_FAULT | FILL_TIMEOUT | CONFIG
assert _A["OVERPRESSURE"] == 0 and _A["EXCURSION"] == 6 and _A["LATCHED"] == 15

_E = wire.codes(wire.EVENTS)
EV_RAISED = _E["ALARM_RAISED"]
EV_CLEARED = _E["ALARM_CLEARED"]
EV_TRIP = _E["TRIP"]
EV_EXCURSION = _E["EXCURSION"]
EV_LEAK_RATE = _E["LEAK_RATE"]

_M = wire.codes(wire.MODES)
IDLE = _M["IDLE"]
HOLD = _M["HOLD"]
RAMP = _M["RAMP"]
ISOLATED = _M["ISOLATED"]
TRIPPED = _M["TRIPPED"]
VENT = _M["VENT"]
MONITOR = _M["MONITOR"]

RISE_WINDOW = const(600000)  # ms: a rise of rise_alarm over this long alarms
RISE_PARTS = const(3)  # ...when each third of it (or a shorter part) saw its share

_BIT = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)


def bit_number(mask):
    for b in _BIT:
        if mask == 1 << b:
            return b
    return 0


class Supervisor:
    def __init__(self, ch):
        self.ch = ch
        self.trip_persist = 200
        # The excursion average: 2**exc_k ticks, about a second.
        n = 1000 // ch.tick_ms
        k = 0
        while (2 << k) <= n:
            k += 1
        self.exc_k = k
        self.tolerance = 0
        self.fill_timeout = 10000
        self.fill_min_rise = 0
        self.rise_alarm = 0
        self.leak_alarm = 10  # Pa/s
        self.leak_window = 3600000  # ms
        self.reset()

    def reset(self):
        self.over_ms = 0  # how long above trip, ms
        self.fill_open_ms = 0  # fill open time in the present window
        self.fill_idle_ms = 0  # fill closed since, ms
        self.fill_base = 0  # pressure when the window began
        self.rise_ms = 0  # the present part of the rise watch, ms (0: none)
        self.rise_base = 0  # settled pressure when the part began, Pa
        self.rise_run = 0  # parts in a row that each saw their share of inflow
        self.rise_rate = 0  # the last one's inflow, Pa per 1.024 s
        self.rise_in = False  # gas came in with the fill closed
        self.vent_ms = 0  # far vent open time in the present window, ms
        self.vent_idle_ms = 0
        self.vent_base = 0  # settled pressure when the window began, Pa
        self.vent_need = 0  # the fall that shows the vent works, Pa
        self.vent_bad = False  # the vent did not lower the pressure
        self.exc_on = False
        self.exc_armed = False
        self.exc_sp = 0
        self.exc_ms = 0
        self.exc_min = 0
        self.exc_p = 0  # the average, Pa
        self.exc_new = True  # the average starts at the next sample
        self.leak_ms = 0
        self.leak_start = 0
        self.leak_flow = 0

    def _raise(self, mask, a, b):
        ch = self.ch
        if ch.alarms & mask:
            return
        ch.alarms |= mask
        ch.emit(EV_RAISED, ch.number, bit_number(mask), a, b, 0)

    def _clear(self, mask):
        ch = self.ch
        if ch.alarms & mask:
            ch.alarms &= ~mask
            ch.emit(EV_CLEARED, ch.number, bit_number(mask), ch.pressure, 0, 0)

    def latch(self, mask, mode, a, b):
        # A latching fault: record it, put the channel in its safe mode.
        ch = self.ch
        first = not (ch.alarms & mask)
        ch.alarms |= mask | LATCHED
        ch.stop_regulating(mode)
        if first:
            ch.emit(EV_RAISED, ch.number, bit_number(mask), a, b, 0)

    def check(self, dt):
        # One tick of checks; dt = tick length in ms. Pressure is Pa.
        ch = self.ch
        p = ch.pressure
        # Sensor first: every other check needs a pressure it can trust.
        if ch.sensor_fault:
            self.latch(SENSOR_FAULT, ISOLATED, p, ch.sensor_fault)
            return
        # Over-pressure, with a persistence window so one noise spike does
        # not vent a cell.
        if p > ch.trip:
            self.over_ms += dt
            if self.over_ms >= self.trip_persist and ch.mode != TRIPPED:
                if ch.kind_monitor:
                    self.latch(OVERPRESSURE, MONITOR, p, ch.trip)
                else:
                    first = not (ch.alarms & OVERPRESSURE)
                    ch.alarms |= OVERPRESSURE | LATCHED
                    ch.stop_regulating(TRIPPED)
                    if first:
                        ch.emit(EV_TRIP, ch.number, 0, p, ch.trip, self.over_ms)
        else:
            self.over_ms = 0
        if ch.mode == TRIPPED:
            # Vent to the reset level, then hold; vent again if it climbs
            # back (a hot oven) above trip.
            if p > ch.trip_reset:
                ch.force_vent = True
            elif p < ch.trip_reset - (ch.trip - ch.trip_reset) // 4:
                ch.force_vent = False
            return
        if ch.kind_monitor:
            self._below_min(p)
            return
        regulating = ch.mode == HOLD or ch.mode == RAMP or ch.mode == VENT
        self._fill_watch(dt, p)
        if ch.alarms & LATCHED:
            return
        if not regulating:
            self._excursion_end(p)
            self.exc_new = True
            self.rise_ms = 0
            self.vent_ms = 0
            return
        sp = ch.setpoint
        # The alarms below judge the filtered pressure, not one noisy sample.
        pf = ch.filtered_pa()
        # Rise with the fill closed: the regulator vents it back; this says
        # why (_rise, _vent_watch).
        if self.rise_alarm:
            self._rise(dt, pf)
            self._vent_watch(dt, pf)
        self._below_min(pf)
        # Excursions on the samples the spike gate accepted (outlier.py),
        # averaged over about a second (_excursion), not on the regulator's
        # filter: that leans on its model, which a fault (a vent stuck open)
        # or a slow tick makes wrong.
        self._excursion(dt, ch.accepted, sp)
        self._leak(dt, pf)

    def _fill_watch(self, dt, p):
        ch = self.ch
        if ch.fill_ms_last:
            if self.fill_open_ms == 0:
                self.fill_base = p
            self.fill_open_ms += ch.fill_ms_last
            self.fill_idle_ms = 0
            if p - self.fill_base >= self.fill_min_rise:
                # Progress: a new window starts with the next opening.
                self.fill_open_ms = 0
            elif self.fill_open_ms >= self.fill_timeout:
                self.fill_open_ms = 0
                self.latch(FILL_TIMEOUT, ISOLATED, p, self.fill_base)
        else:
            # Holding pulses come minutes apart; a window that saw no fill
            # for a while is over (otherwise a week of 5 ms pulses would add
            # up to a time-out).
            self.fill_idle_ms += dt
            if self.fill_idle_ms > 6 * self.fill_timeout:
                self.fill_open_ms = 0

    def _rise(self, dt, pf):
        # Gas entering with the fill closed: the rise of the settled pressure,
        # the gas the regulator vented included (it hides the rise by venting
        # it), summed over parts of at least 2.5 thermal time constants.
        # Alarm when RISE_PARTS parts in a row each saw rise_alarm / RISE_PARTS
        # and the inflow did not die away from one part to the next (a part
        # that has its share ends at once, so a fast leak alarms within
        # RISE_PARTS x 2.5 tau; a slow one within RISE_WINDOW). A leaking
        # fill seat keeps coming; what else raises the settled pressure is
        # over within a few time constants: the gas warming back after a step
        # down (the model's error on it), a hot oven (+60 K is 1 MPa at
        # 5 MPa), the vented gas mis-counted during a fast step. Such a
        # transient falls by e**2.5 = 12x from one part to the next, which
        # ends the run (a fall below a quarter). The oven's swing, +-1 K an
        # hour, moves 5 MPa by at most 9 kPa in a part of 200 s, below the
        # share of the default rise_alarm (0.5 % FS: 17 kPa a part).
        ch = self.ch
        reg = ch.reg
        if ch.fill_ms_last or self.rise_ms == 0:
            # The fill let gas in on purpose: start again.
            self.rise_run = 0
            self.rise_rate = 0
            self._rise_part()
            return
        self.rise_ms += dt
        if self.rise_ms < 5 * reg.tau // 2:
            return
        share = self.rise_alarm // RISE_PARTS
        rise = ch.settled_pa() - self.rise_base - (reg.vent_sum << reg.shift)
        if rise >= share:
            rate = rise // ((self.rise_ms >> 10) + 1)
            if rate < self.rise_rate // 4:
                self.rise_run = 0  # dying away: a transient's tail
            self.rise_run += 1
            self.rise_rate = rate
            if self.rise_run >= RISE_PARTS:
                self.rise_in = True
                self._raise(RISE_FILL_CLOSED, pf, self.rise_base + share)
            self._rise_part()
        elif self.rise_ms >= RISE_WINDOW // RISE_PARTS:
            self.rise_run = 0
            self.rise_rate = 0
            if rise < share // 2:
                self.rise_in = False
                if not self.vent_bad:
                    self._clear(RISE_FILL_CLOSED)
            self._rise_part()

    def _rise_part(self):
        reg = self.ch.reg
        self.rise_ms = 1
        self.rise_base = self.ch.settled_pa()
        reg.vent_sum = 0

    def _vent_watch(self, dt, pf):
        # A vent that does not lower the pressure (stuck closed, or gas coming
        # in faster than it leaves): the fill watch's mirror. While the
        # regulator vents towards a setpoint well below (not a holding pulse),
        # the settled pressure must fall by fill_min_rise (or half the way to
        # the setpoint, whichever is less) within fill_timeout of open vent.
        # The settled pressure, not the present one: after a step down the
        # vent only takes off what the gas gains as it warms back, and the
        # present pressure stays put while the settled one falls.
        ch = self.ch
        reg = ch.reg
        if not ch.vent_ms_last or reg.holding:
            self.vent_idle_ms += dt
            if self.vent_idle_ms > 6 * self.fill_timeout:
                self.vent_ms = 0
            return
        s = ch.settled_pa()
        if self.vent_ms == 0:
            self.vent_base = s
            need = (s - ch.setpoint) // 2
            self.vent_need = need if need < self.fill_min_rise else self.fill_min_rise
        self.vent_ms += ch.vent_ms_last
        self.vent_idle_ms = 0
        if self.vent_base - s >= self.vent_need:
            # It works: a new window starts with the next far vent.
            self.vent_ms = 0
            if self.vent_bad:
                self.vent_bad = False
                if not self.rise_in:
                    self._clear(RISE_FILL_CLOSED)
        elif self.vent_ms >= self.fill_timeout:
            self.vent_ms = 0
            self.vent_bad = True
            self._raise(RISE_FILL_CLOSED, pf, self.vent_base - self.vent_need)

    def _below_min(self, p):
        ch = self.ch
        if ch.min_alarm <= 0:
            return
        if p < ch.min_alarm:
            self._raise(BELOW_MIN, p, ch.min_alarm)
        elif p > ch.min_alarm + self.tolerance // 2:
            self._clear(BELOW_MIN)

    def _excursion(self, dt, p, sp):
        # Judged on the samples averaged over about a second: one sample is
        # the pressure plus the sensor's noise (0.05 % FS RMS), and a
        # pressure that sits inside the tolerance (0.25 % FS) near its edge,
        # as the gas cools after a slow ramp, would cross it on a noisy
        # sample. The average takes the noise down to a fifth and follows a
        # real fall within a second; the minimum is the samples' own.
        # Armed once the pressure has reached the setpoint band: the climb
        # after a raised setpoint is not an excursion, a fall after it is.
        ch = self.ch
        if self.exc_new:
            self.exc_new = False
            self.exc_p = p
        self.exc_p += (p - self.exc_p) >> self.exc_k
        pa = self.exc_p
        rising = ch.target > sp
        if not self.exc_armed:
            if pa >= sp - self.tolerance // 2 and not rising:
                self.exc_armed = True
            return
        if not self.exc_on:
            if pa < sp - self.tolerance and not rising:
                self.exc_on = True
                self.exc_ms = 0
                self.exc_min = p
                self.exc_sp = sp
                self._raise(EXCURSION, pa, sp - self.tolerance)
            return
        self.exc_ms += dt
        if p < self.exc_min:
            self.exc_min = p
        if pa >= sp - self.tolerance // 2 or rising:
            self._excursion_end(pa)

    def _excursion_end(self, p):
        if not self.exc_on:
            return
        self.exc_on = False
        ch = self.ch
        ch.emit(EV_EXCURSION, ch.number, 0, self.exc_min, self.exc_sp, self.exc_ms)
        self._clear(EXCURSION)

    def _leak(self, dt, p):
        # Leak rate = what the pressure did over the window, less what the
        # valves did to it (the regulator's settled flow sum): the oven's
        # swing cancels over a window of its period or longer.
        ch = self.ch
        reg = ch.reg
        # A window starts only while holding (after a step the gas is still
        # settling and the model's view of the flow is at its roughest) and
        # runs while the channel stays in HOLD, whatever the regulator does
        # in between (a fast leak keeps it busy).
        if ch.mode != HOLD:
            self.leak_ms = 0
            return
        if self.leak_ms == 0:
            if not reg.holding:
                return
            self.leak_start = ch.settled_pa()
            reg.flow_sum = 0
        self.leak_ms += dt
        if self.leak_ms < self.leak_window:
            return
        change = ch.settled_pa() - self.leak_start - (reg.flow_sum << reg.shift)
        rate = change * 1000 // self.leak_ms  # Pa/s
        ch.emit(EV_LEAK_RATE, ch.number, 0, rate, p, self.leak_ms)
        self.leak_ms = 0
        if -rate > self.leak_alarm:
            self._raise(LEAK, p, rate)
        elif -rate < self.leak_alarm // 2:
            self._clear(LEAK)

    def acknowledge(self, mask):
        # Clear the latched alarms in mask whose cause has gone. Returns the
        # bits that stay latched.
        ch = self.ch
        mask &= LATCHING
        gone = 0
        if mask & OVERPRESSURE and ch.pressure < ch.trip_reset:
            gone |= OVERPRESSURE
        if mask & SENSOR_FAULT and not ch.sensor_fault:
            gone |= SENSOR_FAULT
        if mask & FILL_TIMEOUT:
            gone |= FILL_TIMEOUT
        if mask & CONFIG and not ch.config_bad:
            gone |= CONFIG
        for b in _BIT:
            if gone & (1 << b) and ch.alarms & (1 << b):
                self._clear(1 << b)
        if not (ch.alarms & LATCHING):
            ch.alarms &= ~LATCHED
            self.reset()
        return ch.alarms & LATCHING & mask
