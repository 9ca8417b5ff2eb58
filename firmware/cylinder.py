# Fill/vent pulse regulator for a uniaxial holder: a single-acting pneumatic
# cylinder pressing the stack through a load cell. Integers only, no
# allocation; the interface is regulator.Regulator's, whose filters, counters
# and config it inherits.
#
# The seal is the difficulty, not the gas. Seal friction holds the piston
# until the gas force differs from the stack force by more than the friction
# f, so the force follows the gas through a play of width 2f (backlash):
#
#   G - F = s, |s| <= f         G the gas force, F the stack force (the load
#                               cell), both in units of stack pressure
#   filling raises G: F stays until s reaches +f, then F = G - f
#   venting lowers G: F stays until s reaches -f, then F = G + f
#
# So a pulse that reverses the direction of the last one first crosses the
# play (2f: 4.6 MPa of stack pressure at 100 MPa on the reference rig, a
# 50 ms fill) and moves nothing; a short pulse after it moves the stack at
# once, by the whole of its flow. A regulator without this model either
# crawls through the play in deadband-sized pulses or, sized for the last
# response, breaks away with everything at once (stick-slip overshoot).
#
# The model tracks where the gas sits in the play: `edge`, the side it last
# slid on (+1 pushing, -1 yielding back), and `x`, the gas moved away from
# that edge since. Flow (learned rates, Pa of stack pressure per ms of open
# valve while the piston slides) moves x; so does the gas's thermal
# relaxation after a pulse (as in regulator.py, but it goes into the play,
# not the force, until it exceeds it); so does a force change the valves did
# not cause (the cell breathing, the stack creeping), which is measured. On
# the side it yields to, the stack follows such a change with the piston
# (the cylinder's gas is a soft spring next to the stack) and the force
# barely moves; on the other it is held rigidly and the force follows it.
#
# The friction is learned: each time the piston breaks away on the side
# opposite the one it last slid on, the gas that had to cross the play is
# 2f at that force. It is modelled as f = k (F + FS/16) (a constant seal
# drag plus a share of the gas force), and k follows the crossings; it
# starts low (1 %), so that the first crossings fall short.
#
# A pulse is planned so that the force cannot pass its limit even if the
# play ends at the near end of what is known of it: the side the piston last
# slid on is known to within the thermal model's error, the other to within
# the friction's (2f/8). An underestimated play costs a second, small pulse
# rather than an overshoot. No pulse is longer than the limit allows at the
# edge either, so the band is never widened to a minimum pulse's step: at
# 6 MPa that step (0.45 MPa) is twice the band the cell needs.
#
# Decisions follow regulator.py (far: tracking, the present force limited
# to half a deadband above setpoint and vented to two above it; holding: the
# band, min_off between pulses), except that a ramp is followed in pulses
# that wait until the force lags by 1/64 of the setpoint (at least eight
# deadbands), and that the thermal time constant (config `thermal_tau`)
# should be the cylinder's own: a small gas volume settles faster (5 s on
# the reference rig) than the 10 s default for a chamber.
#
# Units as regulator.py: u = Pa >> shift. Every product is bounded by a clamp
# written next to it.
from micropython import const
from regulator import Regulator, _clamp

# As regulator.py's (a const with a leading underscore is not importable).
_BIG = const(1 << 24)
_MAX_RATE = const(1 << 20)
_GAMMA = const(45)
_SHARE = const(13)
_K0 = const(164)  # friction share x16384 to start: 1 %, below any real seal
_FK_MAX = const(4095)  # 25 %: keeps (force >> 8) x fk below 2**30
_VK0 = const(1000)


class Cylinder(Regulator):
    def __init__(self, tick_ms, full_scale_pa):
        Regulator.__init__(self, tick_ms, full_scale_pa)
        # Gas force at atmosphere in stack units: the cylinder's bore over
        # the electrode (about 26 MPa on the reference rig); it only shapes
        # how the learned vent rate scales with pressure.
        self.p0 = self.full_scale >> 3

    def reset_rates(self):
        # Guesses above the reference rig's (fill ~90 kPa/ms, vent ~50
        # kPa/ms at 100 MPa), so that unlearned pulses fall short; the
        # friction below it, so that an unlearned crossing falls short.
        self.fill_rate = _clamp((self.full_scale >> 10) * 16, 16, _MAX_RATE)
        self.vent_k = _VK0
        self.fk = _K0
        self.learned_fill = 0
        self.learned_vent = 0
        self.learned_f = 0

    def reset(self, p):
        Regulator.reset(self, p)
        self.edge = -1  # unknown: the middle of the play
        self.x = 0
        self.seen = 0  # the edge a valve last made the piston slide on
        self.eg = 0  # thermal excess of the gas, u x16
        self.p_set = p  # settled force
        self.p_obs = p  # force at the last fresh sample
        self.edge0 = -1  # the play at the last fresh sample
        self.x0 = 0
        self.g_int = 0  # gas moved since the last fresh sample, u
        self.m_int = 0  # force the model moved since then, u
        self.last_fill = 0  # what step() asked for last tick, ms
        self.last_vent = 0
        self.half = 0  # f at the present force, cached per tick
        self.sa = 0
        self.sb = 0

    # ---- model ------------------------------------------------------------

    def fric(self, p):
        # Half the play (u) at force p.
        q = p + (self.full_scale >> 4)
        if q < 0:
            q = 0
        return _clamp(((q >> 8) * self.fk) >> 6, 1, self.full_scale >> 2)

    def vent_rate(self, p):
        # u/ms x16 at force p: choked flow, proportional to the absolute gas
        # pressure.
        q = (p + self.p0) >> 10
        if q < 1:
            q = 1
        return _clamp((q * self.vent_k) >> 6, 1, _MAX_RATE)

    def _gas(self, d, f2):
        # The gas force moves by d (u); returns how far the stack force
        # follows (the part beyond the play).
        x = self.x
        if self.edge > 0:
            x -= d
            if x < 0:
                self.x = 0
                return -x
            if x > f2:
                self.edge = -1
                self.x = 0
                return f2 - x
        else:
            x += d
            if x < 0:
                self.x = 0
                return x
            if x > f2:
                self.edge = 1
                self.x = 0
                return x - f2
        self.x = x
        return 0

    def _slack(self, f2):
        # Gas to add before the piston moves forward (sa), and to remove
        # before it moves back (sb), u; attributes, as a tuple would allocate.
        if self.edge > 0:
            self.sa = self.x
            self.sb = f2 - self.x
        else:
            self.sa = f2 - self.x
            self.sb = self.x

    def observe(self, p, fill_ms, vent_ms, fresh=True):
        if not self.primed:
            self.p_fast = p
            self.p_slow = p * 16
            self.p_obs = p
            self.p_set = p
            self.edge = -1
            self.half = self.fric(p)
            self.x = self.half
            self.edge0 = -1
            self.x0 = self.x
            self.primed = True
            return
        f2 = 2 * self.half
        # Below this force the piston is taken to be off the stack.
        touch = (self.full_scale >> 10) + 2 * self.deadband
        dg = 0
        if fill_ms:
            d = _clamp((self.fill_rate * fill_ms) >> 4, 0, _BIG)
            dg += d
            self.eg = _clamp(self.eg + (d * _SHARE // _GAMMA) * 16, -_BIG * 16, _BIG * 16)
        if vent_ms:
            d = _clamp((self.vent_rate(self.p_fast) * vent_ms) >> 4, 0, _BIG)
            dg -= d
            share = _SHARE + (self.eg // 16) * 32 // (self.p_fast + self.p0 + 1)
            if share > 0:
                self.eg = _clamp(self.eg - (d * share // _GAMMA) * 16, -_BIG * 16, _BIG * 16)
        relax = (self.eg // 16) // self.n_tau
        self.eg -= relax * 16
        dg -= relax
        if self.p_fast < touch:
            # Not pressing yet (the piston still travels): the gas's heat
            # has nothing to act on.
            self.eg = 0
        move = self._gas(dg, f2)
        self.g_int = _clamp(self.g_int + dg, -_BIG, _BIG)
        self.m_int += move
        pred = self.p_fast + move
        if not fresh:
            self.p_fast = pred
            self.acc_fill += fill_ms
            self.acc_vent += vent_ms
            self._settle()
            self._count(fill_ms, vent_ms)
            return
        af = self.acc_fill + fill_ms
        av = self.acc_vent + vent_ms
        self.acc_fill = 0
        self.acc_vent = 0
        obs = p - self.p_obs  # what the force did since the last sample
        r = p - pred
        thr = self.deadband // 2 + (self.full_scale >> 14)
        contact = self.p_obs > touch
        if af and not av:
            if obs > 0:
                self.flow_sum = _clamp(self.flow_sum + obs, -_BIG, _BIG)
            if contact:
                self._learn(1, af, obs, r, thr, f2)
        elif av and not af:
            if obs < 0:
                self.flow_sum = _clamp(self.flow_sum + obs, -_BIG, _BIG)
                self.vent_sum = _clamp(self.vent_sum + obs, -_BIG, 0)
            if contact:
                self._learn(-1, av, -obs, -r, thr, f2)
        elif not af and not av:
            # A force change no valve made: the stack moved the piston or
            # pressed against it, which moves the gas within the play.
            c = r if (r > thr or r < -thr) else r // 2
            self._gas(-c, f2)
            pred += c
            r = 0
        self.p_fast = pred + r
        self.p_obs = self.p_fast
        self.p_slow = self.p_fast * 16
        self.half = self.fric(self.p_fast)
        self.edge0 = self.edge
        self.x0 = self.x
        self.g_int = 0
        self.m_int = 0
        self._settle()
        self._count(fill_ms, vent_ms)

    def _learn(self, d, ms, obs, r, thr, f2):
        # A sample after flow in one direction d (+1 fill, -1 vent); obs the
        # force's move that way since the last sample, r what the model
        # missed (that way), g the gas moved that way.
        g = self.g_int if d > 0 else -self.g_int
        pm = self.m_int if d > 0 else -self.m_int
        n = self.learned_fill if d > 0 else self.learned_vent
        if obs > thr:
            if self.edge0 == d and pm > 0 and 2 * self.x0 <= g:
                # Sliding (all but the thermal model's share of the play,
                # which is small): the residual is the flow rate's.
                k = 1 if n < 4 else 3
                dr = _clamp((r * 16 // ms) >> k, -(1 << 18), 1 << 18)
                if d > 0:
                    self.fill_rate = _clamp(self.fill_rate + dr, 16, _MAX_RATE)
                    self.learned_fill += 1
                else:
                    q = (self.p_fast + self.p0) >> 10
                    if q > 0:
                        self.vent_k = _clamp(self.vent_k + (dr << 6) // q, 1, 16383)
                    self.learned_vent += 1
            elif self.edge0 == -d and self.seen == -d and n > 1:
                # Broke away on the other side: the play crossed is the gas
                # moved less what went into the stack.
                self._learn_f(self.x0 + g - obs, False)
            self.edge = d
            self.x = 0
            self.seen = d
        elif pm > 0:
            # The model said it would slide and it did not.
            if self.edge0 == -d:
                if self.seen == -d and n > 1:
                    self._learn_f(self.x0 + g, True)
                    f2 = 2 * self.fric(self.p_fast)
                self.edge = -d
                self.x = _clamp(self.x0 + g, 0, f2)
            else:
                self.x = 0

    def _learn_f(self, play, bound):
        # play = 2f seen at the present force; bound: only a lower bound.
        q = (self.p_fast + (self.full_scale >> 4)) >> 8
        if q < 1 or play <= 0:
            return
        k = _clamp((play * 32) // q, 1, _FK_MAX)
        if bound:
            if k > self.fk:
                self.fk = k
            return
        n = 1 if self.learned_f < 3 else 2
        self.fk = _clamp(self.fk + ((k - self.fk) >> n), 1, _FK_MAX)
        self.learned_f += 1

    def _settle(self):
        # The settled force: the gas's thermal excess relaxes into the play
        # first and moves the stack only with what is left beyond it.
        e = self.eg // 16
        self._slack(2 * self.half)
        a = self.sa
        b = self.sb
        s = self.p_fast
        if e > b:
            s -= e - b
        elif -e > a:
            s += -e - a
        self.p_set = s

    def settled(self, holding):
        return self.p_set

    # ---- decision ---------------------------------------------------------

    def step(self, sp, ramping):
        # This tick's openings (ms) for setpoint sp (u), in out_fill and
        # out_vent. Decided on the settled force; the present force is
        # what the limits protect.
        self.out_fill = 0
        self.out_vent = 0
        db = self.deadband
        p = self.p_fast
        ps = self.p_set
        f2 = 2 * self.half
        self._slack(f2)
        a = self.sa
        b = self.sb
        # The play ahead of each valve is known to within the thermal
        # model's error (a share of the heat still to relax) on the side the
        # piston last slid on, and to within the friction's on the other: a
        # pulse is planned so that it cannot push the force past its limit
        # even if the play ends at the near end of that range.
        e = self.eg // 16
        if e < 0:
            e = -e
        da = (a >> 3) + (e >> 2)
        dbk = (b >> 3) + (e >> 2)
        if self.edge < 0:
            da += f2 >> 3
        else:
            dbk += f2 >> 3
        if da > a >> 1:
            da = a >> 1
        if dbk > b >> 1:
            dbk = b >> 1
        far = ramping or ps < sp - 8 * db or ps > sp + 8 * db
        self.holding = not far
        fstep = (self.fill_rate * self.min_pulse) >> 4
        # While ramping the present force is compared (the settled one
        # lags it by the gas's heat, which the end of the ramp settles).
        pt = p if ramping else ps
        if far:
            # While the setpoint ramps, pulses wait until the force lags by
            # a tolerance (1/64 of the setpoint, at least 8 deadbands), so
            # a ramp takes tens of pulses rather than one every tick.
            tol = (sp >> 6) if ramping else 0
            if ramping and tol < 8 * db:
                tol = 8 * db
            lo = sp - tol
            hi = sp + tol
            top = sp + db // 2
            floor = sp + 2 * db
        else:
            lo = sp - (db * self.band_lo) // 6
            hi = sp + (db * self.band_hi) // 6
            top = hi
            floor = sp + self.guard
        going = self.last_fill > self.tick_ms or self.last_vent > self.tick_ms
        if not going and self.closed_ms < (self.tick_ms if far else self.min_off):
            self.last_fill = 0
            self.last_vent = 0
            return
        cap = 4 * self.tick_ms
        if pt < lo and self.last_vent <= self.tick_ms:
            want = (sp if far else sp + (db * self.fill_aim) // 6) - ps
            room = top - p
            if want > room:
                want = room
            if want > 0:
                gas = a + want
                if gas > a - da + room:
                    gas = a - da + room
                w = (_clamp(gas, 0, _BIG) * 16) // self.fill_rate
                if w < self.min_pulse:
                    ok = fstep - a + da <= room or self.learned_fill < 2
                    w = self.min_pulse if ok else 0
                self.out_fill = w if w < cap else cap
        elif pt > hi and self.last_fill <= self.tick_ms:
            want = ps - sp
            room = p - floor
            if want > room:
                want = room
            if want > 0:
                rate = self.vent_rate(p)
                gas = b + want
                if gas > b - dbk + room:
                    gas = b - dbk + room
                w = (_clamp(gas, 0, _BIG) * 16) // rate
                if w < self.min_pulse:
                    ok = ((rate * self.min_pulse) >> 4) - b + dbk <= room or self.learned_vent < 2
                    w = self.min_pulse if ok else 0
                self.out_vent = w if w < cap else cap
        self.last_fill = self.out_fill
        self.last_vent = self.out_vent
