# The analog control mode: a proportional electro-pneumatic regulator holds
# the channel's pressure instead of the fill and vent valves (config key
# `control` = 1 on a channel whose board profile has a `proportional` block).
#
#   setpoint (the channel's ramp) + trim -> command Pa -> PWM duty -> RC filter
#     -> amplifier -> 0-10 V command -> regulator -> isolation valve -> chamber
#   regulator monitor 0-10 V -> divider -> MCU ADC -> monitor Pa
#
# Why each part is there:
# - The trim. The regulator controls its own outlet sensor, not the chamber's
#   transducer, so its offset and span errors (0.5 % FS is typical) would be
#   the chamber's. A slow integral of setpoint minus the chamber's pressure,
#   clamped to 2 % FS, takes them out: the transducer the experiment reports
#   is the one that meets the setpoint. It starts at the regulator's stated
#   accuracy above zero, so a regulator that has not been trimmed yet errs
#   high, never low.
# - A target lowered by more than that accuracy first adds it to the trim
#   again (a trim learned at the old pressure is off by the regulator's
#   linearity error at the new one), and the integral then takes it off
#   slowly: a step down is approached from above (DOMAIN.md: a drop below the
#   setpoint damages the cell for good). A rise takes the accuracy off once
#   its ramp is over, so it ends below the target rather than above it.
# - The monitor, the regulator's own reading of its outlet, is compared with
#   what it should read by now: the command through a first-order lag of the
#   regulator's response time. Beyond the tolerance for longer than the
#   persistence it is a REGULATOR fault (stuck, supply gone, monitor wire
#   open): the channel isolates, latched, and the command holds the pressure
#   the chamber had. It never goes to zero, which a relieving regulator would
#   answer by venting the cell.
# - The isolation valve (normally closed, between regulator and chamber). A
#   reset drops the PWM pin and so the command to 0 V; the valve keeps the
#   cell sealed until the command is back at the chamber's pressure and the
#   monitor confirms the outlet follows it. It also makes ISOLATED real when
#   what failed is the regulator itself.
# - Over-pressure (the supervisor trips): the command goes to the reset level
#   (never above the present pressure, so a trip never fills), the valve opens
#   while the regulator is healthy so that it relieves, and the vent valve,
#   where fitted, vents as in valve mode.
#
#     prop = Proportional(ch, block, analog_out, hal, isolation_valve)  # device.py
#     prop.set_enabled(control)     # cold: the config key
#     prop.tick()                   # each channel tick, after the supervisor
#     prop.healthy() -> bool        # ACK_ALARM: may REGULATOR clear
#     prop.pf                       # filtered chamber pressure, Pa (the channel's, in control 1)
#     Scale(den, num).apply(x)      # round(x * num / den) in small ints
#
# Integers only in the tick, no allocation; pressures in Pa.
import wire
from mcu_adc import MCUADC
from micropython import const
from supervisor import HOLD, IDLE, ISOLATED, LATCHED, RAMP, TRIPPED, VENT

REGULATOR = const(1 << 10)
assert wire.codes(wire.ALARMS)["REGULATOR"] == 10
EV_RAISED = wire.codes(wire.EVENTS)["ALARM_RAISED"]
ISOSTATIC = wire.codes(wire.CHANNEL_KINDS)["ISOSTATIC"]

FULL = 65535
TRIM_FS_DIV = 50  # the trim stays within FS / 50 = 2 % FS
TRIM_MS = 10000  # the trim's integral time
SETTLE_MS = 3000  # after a move, the chamber settles before the trim learns
ENGAGE_MS = 300  # the monitor follows this long before the isolation valve opens
ADC_SAMPLES = 4
_BAND_MAX = 1000000  # |error| the trim integrates; x tick_ms (<= 1000) < 2**30
_CAP = 1 << 20  # ms counters stop here


class Scale:
    # x in 0..den -> round(x * num / den), within 2 counts, in small ints.
    # num / den is kept as K / 2**s with 2**14 <= K < 2**15, and x is taken
    # as (x >> c) < 2**15 plus its low c bits, so no product reaches 2**30
    # (the boards' small-int range: a bigger intermediate allocates).
    def __init__(self, den, num):
        if not (0 < den < 1 << 30 and 0 <= num < 1 << 30):
            raise ValueError("scale %r / %r: both must be below 2**30" % (num, den))
        self.den = den
        self.num = num
        c = 0
        while (den >> c) >= 1 << 15:
            c += 1
        s = 0
        k = 0
        if num:
            # smallest s with num * 2**s / den >= 2**14 (s < 0 for big ratios)
            s = -40
            while (num << (s + 40)) < (den << 54):
                s += 1
            if s >= 0:
                k = ((num << s) + (den >> 1)) // den
            else:
                d = den << -s
                k = (num + (d >> 1)) // d
            if k >= 1 << 15:  # rounded up to 2**15: one bit less
                s -= 1
                k = (k + 1) >> 1
        self.c = c
        self.mask = (1 << c) - 1
        self.k = k
        self.s = s

    def apply(self, x):
        if x <= 0:
            return 0
        if x >= self.den:
            return self.num
        c = self.c
        s = self.s
        k = self.k
        hi = (x >> c) * k
        lo = (x & self.mask) * k
        # x * K = hi * 2**c + lo; the result is that over 2**s, rounded
        if s >= c:
            t = hi + (lo >> c)
            d = s - c
            if d:
                t = ((t >> (d - 1)) + 1) >> 1
        else:
            t = hi << (c - s)
            if s > 0:
                t += ((lo >> (s - 1)) + 1) >> 1
            else:
                t += lo << -s
        if t > self.num:
            return self.num
        return t


def _need(block, key, where):
    v = block.get(key)
    if type(v) not in (int, float) or not v > 0:
        raise ValueError(where + ": " + key + " must be a positive number")
    return v


class Proportional:
    def __init__(self, ch, block, analog_out, hal, valve):
        # block: the channel's `proportional` profile block; analog_out: the
        # profile's (PWM frequency and high level); valve: the isolation
        # valve, a hal.Valve the device built with the other valves.
        where = "board profile: channel %d proportional" % ch.number
        if not isinstance(block, dict) or not isinstance(analog_out, dict):
            raise ValueError(where + ": expected an object")
        if ch.kind != ISOSTATIC:
            raise ValueError(where + ": an isostatic channel only (its pressure is the gas's)")
        for key in ("command_pin", "monitor_pin", "isolate_pin"):
            if type(block.get(key)) is not int:
                raise ValueError(where + ": " + key + " must be a pin number")
        if valve is None:
            raise ValueError(where + ": no isolation valve built")
        rng = int(_need(block, "range_mpa", where) * 1000000 + 0.5)
        if rng >= 1 << 30:
            raise ValueError(where + ": range_mpa above 1073 MPa does not fit")
        full_v = _need(block, "command_full_v", where)
        reach = _need(analog_out, "pwm_v_high", where) * _need(block, "amp_gain", where)
        duty_full = int(full_v / reach * FULL + 0.5)
        if duty_full > FULL:
            raise ValueError(
                where + ": command_full_v %r V is beyond the %r V that pwm_v_high x amp_gain reach"
                % (full_v, reach)
            )
        vref = _need(block, "adc_vref_v", where)
        mon_v = _need(block, "monitor_full_v", where) * _need(block, "monitor_divider_ratio", where)
        counts_full = int(mon_v / vref * FULL + 0.5)
        if counts_full > FULL or counts_full < 1:
            raise ValueError(
                where + ": monitor full scale at the pin is %r V, beyond adc_vref_v" % mon_v
            )
        self.range = rng
        self.duty_full = duty_full
        self.counts_full = counts_full
        self.to_duty = Scale(rng, duty_full)
        self.to_pa = Scale(counts_full, rng)
        self.tolerance = int(rng * _need(block, "monitor_tolerance_pct_fs", where) / 100)
        self.persist = int(_need(block, "monitor_persist_ms", where))
        self.response = int(_need(block, "response_ms", where))
        self.accuracy = int(rng * _need(block, "accuracy_pct_fs", where) / 100)
        self.trim_max = rng // TRIM_FS_DIV
        if self.accuracy > self.trim_max:
            raise ValueError(where + ": accuracy_pct_fs above the trim's 2 % FS")
        self.ch = ch
        self.tick_ms = ch.tick_ms
        self.k_resp = (self.response + ch.tick_ms) // ch.tick_ms
        self.band = self.trim_max if self.trim_max < _BAND_MAX else _BAND_MAX
        self.out = hal.AnalogOut(block["command_pin"], analog_out.get("pwm_freq_hz", 10000))
        self.adc = MCUADC(hal.ADC(block["monitor_pin"]), vref, ADC_SAMPLES)
        self.valve = valve
        valve.close()
        self.enabled = False  # config key control == 1
        self.trim = self.accuracy  # Pa added to the setpoint
        self._acc = 0  # the trim integral's remainder, Pa ms
        self.cmd = 0  # Pa asked of the regulator
        self.duty = -1  # last written; -1: write next time
        self.model = 0  # Pa the monitor should read by now
        self.monitor = 0  # Pa the monitor reads
        self.bad_ms = 0  # monitor outside tolerance since, ms
        self.agree_ms = 0  # monitor inside tolerance since, ms
        self.engaged = False  # regulating with the isolation valve open
        self.open = False
        self.pf = 0  # filtered chamber pressure
        self.primed = False
        self.quiet_ms = 0  # HOLD since, ms, with the valve open
        self.last_target = 0
        self.rising = False  # a rise is under way: end it below the target
        self.active = False  # regulating or tripped on the last tick
        self._write(0)

    # ---- cold path ---------------------------------------------------------

    def set_enabled(self, on):
        # Config key control. Switching either way starts from a closed valve;
        # a switch to 1 engages at the next regulating tick.
        on = bool(on)
        if on != self.enabled:
            self.enabled = on
            self.engaged = False
            self.bad_ms = 0
            self.agree_ms = 0
            self._valve(False)

    def healthy(self):
        # The monitor has followed the command for a whole persistence; in
        # valve mode the regulator is out of use, so its fault is moot.
        return not self.enabled or self.agree_ms >= self.persist

    # ---- the tick (no allocation) ------------------------------------------

    def tick(self):
        ch = self.ch
        dt = self.tick_ms
        p = ch.pressure
        if ch.measured:
            if not self.primed:
                self.pf = p
                self.primed = True
            self.pf += (p - self.pf) >> 3
        if not self.enabled:
            # Valve mode: the regulator idles, sealed off.
            self._valve(False)
            self._command(0)
            self.model = 0
            self.active = False
            return
        mode = ch.mode
        regulating = (mode == HOLD or mode == RAMP or mode == VENT) and ch.measured
        if mode == TRIPPED:
            tgt = ch.trip_reset
            if self.pf < tgt:
                tgt = self.pf
            self._command(tgt + self.trim)
            self.engaged = False
            self._valve(not (ch.alarms & REGULATOR))
            self.active = True
        elif regulating:
            self._regulate(ch, dt)
            self.active = True
        else:
            # IDLE follows the chamber, so that regulation starts where the
            # pressure is; ISOLATED and the rest hold what the chamber had
            # when regulation stopped.
            if self.active or (mode == IDLE and ch.measured):
                self._command(self.pf + self.trim)
            self.engaged = False
            self._valve(False)
            self.active = False
        self._watch(ch, dt)

    def _regulate(self, ch, dt):
        tgt = ch.target
        acc = self.accuracy
        if tgt != self.last_target or not self.active:
            self.rising = tgt > ch.setpoint + acc
            if tgt < ch.setpoint - acc:
                # Lowering further than the trim can be trusted to carry:
                # approach from above.
                self._trim_by(acc)
            self.last_target = tgt
            self.quiet_ms = 0
        if self.rising and ch.setpoint == tgt:
            # A rise ends below, not above: taken off only now that the
            # ramp is over, so the start of a rise never relieves the cell.
            self.rising = False
            self._trim_by(-acc)
        self._command(ch.setpoint + self.trim)
        if not self.engaged:
            # Open once the regulator demonstrably follows and its outlet is
            # where the command is (or behind it by what a ramp explains).
            lag = self.tolerance >> 2
            if ch.setpoint != tgt:
                r = ch.rate if ch.rate < _CAP else _CAP
                lag += (r >> 10) * self.response
            d = self.cmd - self.model
            if self.agree_ms >= ENGAGE_MS and -lag <= d <= lag:
                self.engaged = True
                self.quiet_ms = 0
                self._valve(True)
            return
        if ch.setpoint != tgt:
            self.quiet_ms = 0
            return
        if self.quiet_ms < SETTLE_MS:
            self.quiet_ms += dt
            return
        # The trim: a slow integral of the chamber's error, on the raw
        # samples (it averages their noise), within a band so a transient it
        # should not learn from does not wind it up.
        err = ch.setpoint - ch.pressure
        band = self.band
        if -band < err < band:
            acc = self._acc + err * dt
            step = acc // TRIM_MS
            self._acc = acc - step * TRIM_MS
            self._trim_by(step)

    def _trim_by(self, d):
        t = self.trim + d
        m = self.trim_max
        self.trim = -m if t < -m else (m if t > m else t)

    def _watch(self, ch, dt):
        # The monitor against the command's lagged copy.
        self.model += (self.cmd - self.model) // self.k_resp
        m = self.to_pa.apply(self.adc.read())
        self.monitor = m
        d = m - self.model
        tol = self.tolerance
        if -tol <= d <= tol:
            self.bad_ms = 0
            if self.agree_ms < _CAP:
                self.agree_ms += dt
            return
        self.agree_ms = 0
        if self.bad_ms < _CAP:
            self.bad_ms += dt
        if self.bad_ms >= self.persist and not (ch.alarms & REGULATOR):
            self._fault(ch, m)

    def _fault(self, ch, m):
        # Hold the pressure the chamber has, sealed off; latched.
        self._command(self.pf + self.trim)
        self.engaged = False
        self._valve(False)
        if ch.mode == TRIPPED:
            # Over-pressure keeps its own handling; the fault is recorded.
            ch.alarms |= REGULATOR | LATCHED
            ch.emit(EV_RAISED, ch.number, 10, m, self.model, 0)
        else:
            ch.sup.latch(REGULATOR, ISOLATED, m, self.model)
        self.active = False

    def _command(self, pa):
        if pa < 0:
            pa = 0
        elif pa > self.range:
            pa = self.range
        self.cmd = pa
        self._write(self.to_duty.apply(pa))

    def _write(self, d):
        if d != self.duty:
            self.duty = d
            self.out.write_u16(d)

    def _valve(self, on):
        if on != self.open:
            self.open = on
            if on:
                self.valve.open()
            else:
                self.valve.close()
