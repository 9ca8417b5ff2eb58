# Fill/vent pulse regulator for one channel, integers only, no allocation.
#
# The gas is the difficulty. Filling compresses the gas in the chamber and
# heats it; venting expands and cools it. Right after a valve closes the
# pressure is therefore off by a thermal excess `e` that decays with the
# gas-to-wall time constant (about 10 s in a 0.5 L chamber): after a fill the
# pressure sags, after a vent it creeps back up. A regulator that looks only at
# the present pressure either overshoots (stops filling when the hot gas reads
# right, then refills as it cools) or crawls. So this one keeps a model:
#
#   p_settled = p - e             what the pressure will be once the gas is at
#                                 wall temperature, if no valve opens
#   e += (1 - 1/gamma) * dp_flow  a flow step dp (adiabatic) leaves this much
#                                 as thermal excess...
#   e -= e * dt / tau             ...which decays towards the wall temperature
#
# and it decides on p_settled while it constrains the *present* pressure: a
# fill never lifts the present pressure above setpoint + deadband, and a vent
# never takes it below the setpoint (plus a guard for noise), so a step down is
# approached from above and the cell never sees less than the new setpoint
# while the gas warms back (DOMAIN.md: a drop below setpoint damages the cell).
#
# Pulse widths come from flow rates learned on line (Pa per ms of open valve,
# instantaneous): the fill rate is nearly constant (choked flow from a supply
# well above the chamber), the vent rate is proportional to the absolute
# chamber pressure (choked flow to atmosphere). Both are measured from the
# pressure slope whenever a valve stays open for whole ticks, and start from
# deliberately high guesses so that, before anything is learned, pulses are too
# short rather than too long.
#
# Two filters: a fast alpha-beta filter (pressure and slope, no lag on ramps)
# for tracking and the constraints, and a slow one for holding, where the
# sensor's noise (0.05 % FS RMS on the reference rig) is larger than the
# accuracy asked for (0.03 % FS RMS).
#
# Integer ranges. MicroPython's small ints are 31-bit on the boards and a
# bigger intermediate allocates, so the regulator works in units u = Pa >> shift
# with the shift chosen so that full scale fits in 2**24 (shift 0 for 10 MPa,
# 4 for a 230 MPa uniaxial stack), and every product below is bounded by a
# clamp written next to it.
from micropython import const

P_ATM = const(101325)
_BIG = const(1 << 24)
_MAX_RATE = const(1 << 20)  # u/ms x16 (65 MPa/s at shift 0)
_GAMMA = const(45)  # heat capacity ratio x32 (air: 1.4)
_SHARE = const(13)  # (gamma - 1) x32: the thermal share of a flow step is 13/45


def _clamp(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


class Regulator:
    def __init__(self, tick_ms, full_scale_pa):
        shift = 0
        while (full_scale_pa >> shift) > _BIG:
            shift += 1
        self.shift = shift
        self.full_scale = full_scale_pa >> shift
        # Tuning (config keys; the device sets them from config.py), in u.
        self.deadband = self.full_scale * 3 // 10000  # 0.03 % FS
        # present pressure kept this far above setpoint by a holding vent
        self.guard = 0
        self.min_pulse = 5  # ms: shorter openings are not repeatable on a solenoid valve
        self.min_off = 2000  # ms between pulses while holding
        # Holding band in sixths of the deadband: fill below sp - lo, aiming
        # at sp + fill_aim; vent above sp + hi, aiming at sp (never below).
        # The band is wide on the side the vent cannot use, so that each
        # pulse covers most of it: on the reference rig (oven +-1 K per hour,
        # 0.03 % FS deadband) 15 pulses an hour at 0.025 % FS RMS, against
        # 25 an hour for a band of -0.5..+1 deadband.
        self.band_lo = 6
        self.band_hi = 12
        self.fill_aim = 5
        self.tau = 10000  # ms, gas-to-wall thermal time constant
        self.p0 = P_ATM >> shift  # added to the reading: absolute pressure drives venting
        self.set_tick(tick_ms)
        self.reset_rates()
        self.reset(0)

    def set_tick(self, tick_ms):
        self.tick_ms = tick_ms
        self.per_s = 1000 // tick_ms  # ticks per second (tick_hz <= 100)
        self.n_tau = self.tau // tick_ms if self.tau > tick_ms else 1
        # slow filter: time constant ~3 s whatever the tick rate
        n = 3000 // tick_ms
        k = 1
        while (1 << (k + 1)) <= n:
            k += 1
        self.slow_shift = k
        self.ep_wait = (tick_ms << k) * 5  # five slow time constants

    def set_tau(self, tau_ms):
        self.tau = tau_ms
        self.set_tick(self.tick_ms)

    def reset_rates(self):
        # Guesses above the reference rig's rates (fill ~1100 Pa/ms, vent
        # ~450 Pa/ms at 5 MPa), so unlearned pulses fall short, not long.
        self.fill_rate = _clamp((4000 >> self.shift) * 16, 16, _MAX_RATE)
        self.vent_k = 12000  # vent rate (u/ms x16) = vent_k * (p + p0) / 1000 / 4096
        self.learned_fill = 0
        self.learned_vent = 0

    def reset(self, p):
        # Forget filter and thermal state (boot, sensor back from a fault).
        self.p_fast = p
        self.v_fast = 0  # u/s
        self.p_slow = p * 16  # u x16
        self.e = 0  # u x16, thermal excess
        self.primed = False
        self.closed_ms = 1 << 20  # time since a valve was last open, ms (capped)
        self.holding = False
        self.out_fill = 0
        self.out_vent = 0
        self.acc_fill = 0  # ms of flow since the last fresh sample
        self.acc_vent = 0
        self.flow_sum = 0  # settled effect of all flow since the supervisor last read it, u
        self.vent_sum = 0  # the same for venting alone (negative), u
        self.ep_kind = 0  # a holding pulse being watched: 1 fill, 2 vent
        self.ep_before = 0
        self.ep_pred = 0

    # ---- estimation -------------------------------------------------------

    def vent_rate(self, p):
        # u/ms x16 at pressure p (u).
        pa = (p + self.p0) // 1000
        if pa < 1:
            pa = 1
        return _clamp((pa * self.vent_k) >> 12, 1, _MAX_RATE)

    def observe(self, p, fill_ms, vent_ms, fresh=True):
        # One tick: p (u) the latest sample, fresh if it is new this tick
        # (sensors run at their own rates; a stale sample only advances the
        # model); fill_ms / vent_ms how long each valve was open during the
        # tick that just ended.
        if not self.primed:
            self.p_fast = p
            self.p_slow = p * 16
            self.primed = True
            return
        # Model: p' = p + flow step (learned rates) - thermal relaxation
        # (e / tau) + a slow disturbance slope v (oven, leak) that the filter
        # estimates. The filter's residual during flow trains the flow rates;
        # outside flow it trains p and v.
        # Thermal excess: a share of each flow step, decaying towards the
        # wall. Gas filled in arrives at wall temperature, so its share is
        # (gamma - 1) / gamma; gas vented leaves at the gas's own temperature,
        # so when the gas is already cold (e < 0) the share shrinks to
        # (gamma - 1 + e / p_abs) / gamma.
        dp = 0
        de = 0
        if fill_ms:
            d = _clamp((self.fill_rate * fill_ms) >> 4, 0, _BIG)
            dp += d
            de += d * _SHARE // _GAMMA
        if vent_ms:
            d = _clamp((self.vent_rate(self.p_fast) * vent_ms) >> 4, 0, _BIG)
            dp -= d
            self.vent_sum = _clamp(self.vent_sum - (d << 5) // _GAMMA, -_BIG, 0)
            share = _SHARE + (self.e // 16) * 32 // (self.p_fast + self.p0 + 1)
            if share > 0:
                de -= d * share // _GAMMA
        relax = (self.e // 16) // self.n_tau  # u this tick
        self.flow_sum = _clamp(self.flow_sum + (((dp << 5) // _GAMMA) if dp else 0), -_BIG, _BIG)
        pred = self.p_fast + self.v_fast // self.per_s + dp - relax
        self.e += (de - relax) * 16
        if not fresh:
            # Prediction only; the flow is remembered for the next sample's
            # residual.
            self.p_fast = pred
            self.p_slow += (dp - relax) * 16
            self.acc_fill += fill_ms
            self.acc_vent += vent_ms
            self._count(fill_ms, vent_ms)
            return
        r = _clamp(p - pred, -(1 << 20), 1 << 20)
        # A residual beyond three deadbands is the model being wrong (a
        # fault, an unlearned rate), not noise: follow the sample harder.
        big = 3 * self.deadband
        self.p_fast = pred + (r // 2 if r > big or r < -big else r // 4)
        # The residual of a fresh sample, per ms of flow since the previous
        # one, corrects that valve's rate: quickly while it is new, then
        # gently, and less for short openings. Holding pulses (a few ms) do
        # not teach this way: their residual is mostly sensor noise
        # (_learn_pulse judges them over seconds instead).
        af = self.acc_fill + fill_ms
        av = self.acc_vent + vent_ms
        self.acc_fill = 0
        self.acc_vent = 0
        half = self.tick_ms >> 1
        if af >= 10 and not av:
            k = 1 if self.learned_fill < 4 else 4
            if af < half:
                k += 1
            d = (r * 16 // af) >> k
            self.fill_rate = _clamp(self.fill_rate + d, 16, _MAX_RATE)
            self.learned_fill += 1
        elif av >= 10 and not af:
            pa = (self.p_fast + self.p0) // 1000
            if pa > 0:
                k = 1 if self.learned_vent < 4 else 4
                if av < half:
                    k += 1
                # u/ms x16; positive = vents slower than modelled
                dr = _clamp((r * 16 // av) >> k, -(1 << 17), 1 << 17)
                self.vent_k = _clamp(self.vent_k + ((-dr) << 12) // pa, 16, 32767)
                self.learned_vent += 1
        elif not fill_ms and not vent_ms:
            # The disturbance slope (oven, leak) is slow: a small beta keeps
            # sensor noise out of it.
            self.v_fast += (r * self.per_s) >> 8
        # Slow filter for holding: feed-forward the predicted step, then a
        # first-order low-pass.
        self.p_slow += (dp - relax) * 16
        self.p_slow += (p * 16 - self.p_slow) >> self.slow_shift
        self._count(fill_ms, vent_ms)

    def _count(self, fill_ms, vent_ms):
        if fill_ms or vent_ms:
            self.closed_ms = 0
        elif self.closed_ms < (1 << 20):
            self.closed_ms += self.tick_ms
            if self.ep_kind and self.closed_ms >= self.ep_wait:
                self._learn_pulse()

    def _learn_pulse(self):
        # A holding pulse's settled effect, seen once the slow filter has
        # caught up, against what the rates predicted: too noisy per tick,
        # clear over seconds. (Oven drift over those seconds is a few % of a
        # pulse's effect, below the noise.)
        obs = self.settled(True) - self.ep_before
        pred = self.ep_pred
        kind = self.ep_kind
        self.ep_kind = 0
        if kind == 2:
            obs = -obs
        if pred <= 0:
            return
        ratio = _clamp(obs * 256 // pred, 64, 1024)  # x256
        if kind == 1:
            new = ((self.fill_rate >> 2) * ratio) >> 6
            self.fill_rate = _clamp(self.fill_rate + ((new - self.fill_rate) >> 2), 16, _MAX_RATE)
            self.learned_fill += 1
        else:
            new = (self.vent_k * ratio) >> 8
            self.vent_k = _clamp(self.vent_k + ((new - self.vent_k) >> 2), 16, 32767)
            self.learned_vent += 1

    def _watch(self, kind, w):
        # Remember a holding pulse so _learn_pulse can judge it.
        self.ep_kind = kind
        self.ep_before = self.settled(True)
        if kind == 1:
            d = (self.fill_rate * w) >> 4
        else:
            d = (self.vent_rate(self.p_fast) * w) >> 4
        self.ep_pred = (_clamp(d, 0, _BIG) << 5) // _GAMMA

    def settled(self, holding):
        # Where the pressure goes once the gas is at wall temperature, if no
        # valve opens.
        if holding:
            return (self.p_slow - self.e) // 16
        return self.p_fast - self.e // 16

    # ---- decision ---------------------------------------------------------

    def step(self, sp, ramping):
        # This tick's valve openings (ms) for setpoint sp (u), left in
        # self.out_fill / self.out_vent so that nothing is allocated.
        self.out_fill = 0
        self.out_vent = 0
        db = self.deadband
        # The present pressure that the constraints protect. Holding: the
        # slow filter, quiet enough that noise does not open a valve. Far
        # (a step, and the gas settling after it): the fast filter, which
        # follows the model's errors as well as the pressure, and a vent guard
        # of two deadbands for its noise, so a step down ends above setpoint
        # and the hold band takes it the last bit of the way.
        p_now = self.p_fast
        guard = 2 * db
        ps = self.settled(False)
        far = ramping or ps < sp - 8 * db or ps > sp + 8 * db
        self.holding = not far
        if not far:
            ps = self.settled(True)
            p_now = self.p_slow // 16
            guard = self.guard
        cap = 4 * self.tick_ms  # re-decided every tick; the timer closes the valve
        # Holding band. A minimum fill pulse moves the settled pressure by
        # fill_step; the vent threshold sits above what one such pulse can
        # reach from the fill threshold, so a fill is never answered by a vent
        # (no hunting), and the band stays the deadband when pulses are fine.
        lo = sp - (db * self.band_lo) // 6
        hi = sp + (db * self.band_hi) // 6
        fill_step = (((self.fill_rate * self.min_pulse) >> 4) << 5) // _GAMMA
        if lo + fill_step + db // 4 > hi and self.learned_fill > 3:
            hi = lo + fill_step + db // 4
        if far:
            lo = sp
            hi = sp
        if ps < lo:
            # Fill, aiming half a deadband above setpoint so the next
            # disturbance has room; the present pressure never goes beyond
            # the top of the band (no overshoot from the hot gas).
            if not far and self.closed_ms < self.min_off:
                return
            want = _clamp(sp + (db * self.fill_aim) // 6 - ps, 0, _BIG)
            inst = (want * _GAMMA) >> 5  # present-pressure step for that settled gain
            # While far (a step up, the gas cooling after it) the present
            # pressure is held at most half a deadband above setpoint.
            room = (sp + db // 2 if far else hi) - p_now
            if inst > room:
                inst = room
            if inst <= 0:
                return
            w = (_clamp(inst, 0, _BIG) * 16) // self.fill_rate
            if w < self.min_pulse:
                if far:
                    return
                w = self.min_pulse
            self.out_fill = w if w < cap else cap
            if not far:
                self._watch(1, self.out_fill)
        elif ps > hi:
            # Vent towards the setpoint, never taking the present pressure
            # below setpoint + guard: approached from above.
            if not far and self.closed_ms < self.min_off:
                return
            want = _clamp(ps - sp, 0, _BIG)
            inst = (want * _GAMMA) >> 5
            room = p_now - sp - guard
            if inst > room:
                inst = room
            if inst <= 0:
                return
            rate = self.vent_rate(p_now)
            w = (_clamp(inst, 0, _BIG) * 16) // rate
            if w < self.min_pulse:
                if far or (rate * self.min_pulse) >> 4 > room:
                    return
                w = self.min_pulse
            self.out_vent = w if w < cap else cap
            if not far:
                self._watch(2, self.out_vent)
