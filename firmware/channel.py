# One holder channel: its measurement, setpoint, limits, mode and alarms, and
# the order of one control tick:
#
#   measure -> supervisor (may override) -> setpoint ramp -> regulator -> valves
#
# Pressure is Pa (gauge) everywhere, as an int; for a load cell it is the
# stack pressure, force / electrode area, which the calibration produces
# directly (the device builds it with the area folded in).
#
# Two views of the measurement: `pressure` is what the sensor said (telemetry,
# the log, the over-pressure trip, whose persistence window is its own spike
# filter), `accepted` the last sample the spike gate (outlier.py) let through
# to the regulator, which the excursion record also judges, so that one wild
# sample neither opens a valve nor writes a false excursion into the record.
import wire
from cylinder import Cylinder
from micropython import const
from outlier import SpikeGate
from regulator import Regulator
from supervisor import (
    HOLD,
    IDLE,
    ISOLATED,
    LATCHED,
    MONITOR,
    RAMP,
    TRIPPED,
    VENT,
    Supervisor,
)

_K = wire.codes(wire.CHANNEL_KINDS)
ISOSTATIC = _K["ISOSTATIC"]
UNIAXIAL = _K["UNIAXIAL"]
MONITOR_KIND = _K["MONITOR"]

_R = wire.codes(wire.RESULTS)
OK = _R["OK"]
OUT_OF_RANGE = _R["OUT_OF_RANGE"]
LATCHED_RESULT = _R["LATCHED"]
NOT_SUPPORTED = _R["NOT_SUPPORTED"]
BAD_STATE = _R["BAD_STATE"]

_E = wire.codes(wire.EVENTS)
EV_SETPOINT = _E["SETPOINT"]
EV_CLEARED = _E["ALARM_CLEARED"]
REGULATOR = const(1 << 10)  # proportional.REGULATOR

FILL_BIT = const(1)
VENT_BIT = const(2)


class Channel:
    def __init__(self, number, kind, sensor, cal, fill, vent, tick_ms, full_scale, emit):
        self.number = number
        self.kind = kind
        self.kind_monitor = kind == MONITOR_KIND
        self.sensor = sensor  # sensor.Sensor (poll, signal, raw, fault)
        self.cal = cal  # signal -> Pa
        self.fill = fill  # hal.Valve, or None on a monitor channel
        self.vent = vent
        self.tick_ms = tick_ms
        self.full_scale = full_scale
        self.emit = emit  # emit(kind, channel, code, a, b, c)
        # Limits, Pa and Pa/s (config.py sets them).
        self.max_working = full_scale * 7 // 10
        self.trip = full_scale * 8 // 10
        self.trip_reset = full_scale * 3 // 4
        self.min_alarm = 0
        self.ramp_up = 1000000
        self.ramp_down = 500000
        # State.
        self.pressure = 0
        self.accepted = 0
        self.raw = 0
        self.sensor_fault = 0
        self.config_bad = False
        self.measured = False  # a good sample since boot
        self.setpoint = 0
        self.target = 0
        self.rate = 0
        self._step = 0  # Pa per tick of the ramp, and the remainder in ms*Pa/s
        self._rem = 0
        self._acc = 0
        self.mode = MONITOR if self.kind_monitor else IDLE
        self.alarms = 0
        self.valves = 0
        self.force_vent = False
        self.fill_open = False
        self.fill_ms_last = 0
        self.vent_ms_last = 0
        self.fill_count = 0  # actuations (openings) since boot
        self.vent_count = 0
        self.source = 0  # who set the target: 0 host, 1 profile
        self.reg = (Cylinder if kind == UNIAXIAL else Regulator)(tick_ms, full_scale)
        self.gate = SpikeGate(self.reg)
        self.sup = Supervisor(self)
        self.on_change = None  # called (cold path) when target or mode changes
        # Analog control mode (proportional.py): the device fits `prop` where
        # the profile has a regulator and sets `control` from the config.
        self.prop = None
        self.control = 0

    # ---- commands (cold path) ---------------------------------------------

    def command(self, target, rate, source):
        # Move to target (Pa) at rate (Pa/s; 0 = the channel's limit),
        # approaching from above when lowering. Returns a RESULTS code; the
        # limit that was broken is left in self.limit_value.
        self.limit_value = 0
        if self.kind_monitor:
            return NOT_SUPPORTED
        if self.alarms & LATCHED:
            return LATCHED_RESULT
        if target < 0:
            return OUT_OF_RANGE
        if target > self.max_working:
            self.limit_value = self.max_working
            return OUT_OF_RANGE
        if rate < 0:
            return OUT_OF_RANGE
        start = self.setpoint
        if self.mode not in (HOLD, RAMP, VENT):
            # From rest the ramp starts where the pressure is (not where a
            # spike said it was).
            start = self.accepted if self.measured else 0
        limit = self.ramp_up if target >= start else self.ramp_down
        if rate == 0:
            rate = limit
        if rate > limit:
            self.limit_value = limit
            return OUT_OF_RANGE
        if not self.measured:
            return BAD_STATE
        self.setpoint = start
        self.target = target
        self.rate = rate
        prod = rate * self.tick_ms
        self._step = prod // 1000
        self._rem = prod % 1000
        self._acc = 0
        self.source = source
        if target > start:
            self.sup.exc_armed = False  # the climb is not an excursion
        self.mode = RAMP if start != target else HOLD
        self.emit(EV_SETPOINT, self.number, source, target, rate, 0)
        self._changed()
        return OK

    def vent_to(self, floor):
        # VENT: down to floor and hold it there.
        if self.kind_monitor:
            return NOT_SUPPORTED
        if floor < 0 or floor > self.max_working:
            self.limit_value = self.max_working
            return OUT_OF_RANGE
        r = self.command(floor, self.ramp_down if floor < self.setpoint else 0, 0)
        if r == OK:
            self.mode = VENT
            self._changed()
        return r

    def isolate(self):
        if self.kind_monitor:
            return NOT_SUPPORTED
        if self.mode != TRIPPED:
            self.stop_regulating(ISOLATED)
        return OK

    def acknowledge(self, mask):
        # ACK_ALARM: returns the bits that could not be cleared (0 = all).
        # A regulator fault clears once its monitor follows the command again.
        held = 0
        if self.alarms & REGULATOR:
            if mask & REGULATOR and self.prop is not None and self.prop.healthy():
                self.alarms &= ~REGULATOR
                self.emit(EV_CLEARED, self.number, 10, self.pressure, 0, 0)
            else:
                held = REGULATOR
        left = self.sup.acknowledge(mask)
        if held:
            self.alarms |= LATCHED  # the supervisor knows only its own latches
            left |= held & mask
        if not (self.alarms & LATCHED) and self.mode in (TRIPPED, ISOLATED):
            # Safe, not regulating: the host sets a setpoint to resume.
            self.stop_regulating(MONITOR if self.kind_monitor else ISOLATED)
        return left

    def stop_regulating(self, mode):
        # Every valve closed (a TRIPPED channel then vents under the
        # supervisor's control), no target.
        self.mode = mode
        self.target = self.setpoint
        self.force_vent = False
        self._close()
        self._changed()

    def _changed(self):
        if self.on_change:
            self.on_change(self)

    def filtered_pa(self):
        if self.control:
            # The valve regulator's filters model flow through the valves;
            # the proportional regulator's flow they would take for a drift.
            return self.prop.pf
        reg = self.reg
        return reg.p_fast << reg.shift

    def settled_pa(self):
        if self.control:
            return self.prop.pf  # the regulator holds the present pressure
        reg = self.reg
        return reg.settled(reg.holding) << reg.shift

    # ---- the tick (no allocation) -----------------------------------------

    def measure(self, now):
        s = self.sensor
        fresh = s.poll(now)
        self.sensor_fault = s.fault
        if fresh:
            self.raw = s.raw
            self.pressure = self.cal.value(s.signal)
            if not self.measured:
                self.measured = True
                self.accepted = self.pressure
                self.setpoint = self.pressure
                self.target = self.pressure
        return fresh

    def tick(self, now):
        # One control tick. The regulator sees a sample each tick (the last
        # good one if the sensor had nothing new: sensors run at their own
        # rate, and a stale sample only slows the filters).
        fresh = self.measure(now)
        reg = self.reg
        sh = reg.shift
        if self.measured:
            fm = self.fill_ms_last
            vm = self.vent_ms_last
            if self.control:
                # The proportional regulator moves the pressure without the
                # valves the model knows of: nothing to judge against.
                ok = fresh
            else:
                # A held-back sample is, for the regulator, a tick without
                # one: the model advances and the flow waits for the next.
                ok = self.gate.judge(self.pressure >> sh, fresh, fm, vm)
            if ok:
                self.accepted = self.pressure
            reg.observe(self.accepted >> sh, fm, vm, ok)
        self.sup.check(self.tick_ms)
        mode = self.mode
        fill_ms = 0
        vent_ms = 0
        if mode == TRIPPED:
            if self.force_vent and self.vent is not None:
                vent_ms = 4 * self.tick_ms
        elif (mode == HOLD or mode == RAMP or mode == VENT) and self.measured:
            self._ramp()
            if not self.control:
                reg.step(self.setpoint >> sh, self.setpoint != self.target)
                fill_ms = reg.out_fill
                vent_ms = reg.out_vent
        if self.prop is not None:
            # In control 1 it drives the regulator and the valves stay shut
            # (a trip still vents them); in control 0 it keeps it sealed off.
            self.prop.tick()
        self._apply(fill_ms, vent_ms)

    def _ramp(self):
        sp = self.setpoint
        tgt = self.target
        if sp == tgt:
            if self.mode == RAMP:
                self.mode = HOLD
            return
        step = self._step
        self._acc += self._rem
        if self._acc >= 1000:
            self._acc -= 1000
            step += 1
        if sp < tgt:
            sp += step
            if sp > tgt:
                sp = tgt
        else:
            sp -= step
            if sp < tgt:
                sp = tgt
        self.setpoint = sp

    def _apply(self, fill_ms, vent_ms):
        tick = self.tick_ms
        f = self.fill
        v = self.vent
        if f is not None:
            if fill_ms > 0:
                if not f.is_open():
                    self.fill_count += 1
                f.pulse(fill_ms)
            else:
                f.close()
        if v is not None:
            if vent_ms > 0:
                if not v.is_open():
                    self.vent_count += 1
                v.pulse(vent_ms)
            else:
                v.close()
        self.fill_ms_last = fill_ms if fill_ms < tick else tick
        self.vent_ms_last = vent_ms if vent_ms < tick else tick
        self.fill_open = fill_ms > 0

    def _close(self):
        if self.fill is not None:
            self.fill.close()
        if self.vent is not None:
            self.vent.close()
        self.fill_ms_last = 0
        self.vent_ms_last = 0
        self.fill_open = False

    def valve_bits(self):
        b = 0
        if self.fill is not None and self.fill.is_open():
            b |= FILL_BIT
        if self.vent is not None and self.vent.is_open():
            b |= VENT_BIT
        return b

    @property
    def ramping(self):
        return self.setpoint != self.target
