# The spike gate: one channel's fresh samples are judged against the
# regulator's own prediction before the regulator learns from them, so that a
# single wild sample (a transducer glitch, EMI on the cable, a converter
# hiccup) does not open a valve.
#
#     gate = SpikeGate(reg)                      # the channel's Regulator
#     ok = gate.judge(p_u, fresh, fill_ms, vent_ms)   # every tick, before observe
#
# Why a model gate and not a median of three: a median delays *every* change
# by one sample, the valves' own included, and the regulator learns its flow
# rates by pairing each sample with the flow of the ticks before it; a late
# sample teaches it the wrong rate. The regulator already predicts the next
# sample (p_fast, the disturbance slope, the thermal relaxation and the flow
# it commanded), so a sample that lands near that prediction is taken at once,
# and only a sample that the model cannot explain is held back.
#
# The rule, in regulator units u:
#   band  = K x the residual noise (running mean of |sample - prediction| of
#           accepted samples while no valve was open, over about 64 samples;
#           at K = 8 that is about
#           6.4 sigma for gaussian noise, so a good sample is practically never
#           held) + the predicted flow of every tick since the last accepted
#           sample (a learned rate may be off by that much: unlearned guesses
#           are high, so the real flow is below the prediction).
#   inside the band: accepted.
#   outside: held back (the regulator sees a tick without a sample and only
#           advances its model). A sample outside is accepted only once
#           CONFIRM more samples in a row, all on the same side, agree that
#           the model is wrong: a real step, a fault, an unmodelled flow.
#           Then the gate stays open (accepting everything) until a sample
#           lands inside the band again, so a change the model is slow to
#           follow is not thinned out to one sample in three.
# One spike per 100 samples (the fault catalogue) therefore never reaches the
# regulator; two in a row on the same side are still held (one in 10**4
# samples at that rate), three in a row (one in 4 x 10**6) get through.
# A real change reaches the regulator CONFIRM samples late (two samples:
# 300 ms on an ADS1115 shared by three inputs at 20 Hz).
#
# The gate is for the regulator only. The channel's `pressure` stays what the
# sensor said (telemetry, the log, the over-pressure trip with its own
# persistence window and the sensor-fault checks see every sample), so the
# safety cut-offs do not depend on this model.
#
# Integers only, nothing allocated: every value is in u (below 2**24 by the
# regulator's choice of shift), the noise mean x16 stays below 2**28.
from micropython import const

_BIG = const(1 << 24)
K = const(8)  # band = K x mean |residual|
CONFIRM = const(2)  # samples that must agree before a jump is believed
MAX_HELD = const(4)  # held in a row, whatever their sides, before one is taken


class SpikeGate:
    def __init__(self, reg):
        self.reg = reg
        fs = reg.full_scale
        # Floor and ceiling of the noise band: 0.1 % FS below (quantisation,
        # a very quiet transducer), 6 % FS above (the catalogue's spikes are
        # 15 % FS; a mean that a fault inflated must not open the gate wide).
        self.floor = fs >> 10
        self.noise_max = (fs >> 7) * 16
        self.reset()

    def reset(self):
        # Start lenient (0.2 % FS mean, a band of 1.6 % FS): the mean
        # settles on the real noise in a few tens of samples.
        self.noise = (self.reg.full_scale >> 9) * 16  # mean |residual|, u x16
        self.flow = 0  # predicted flow since the last accepted sample, u
        self.held = 0  # samples held back in a row
        self.run = 0  # ... of them on the same side
        self.side = 0  # +1 above the prediction, -1 below
        self.armed = True  # False while following a confirmed change
        self.rejected = 0  # samples never accepted (wraps at 2**30)
        self.residual = 0  # of the last fresh sample, u

    def band(self):
        b = (self.noise >> 4) * K
        if b < self.floor:
            b = self.floor
        return b + self.flow

    def judge(self, p, fresh, fill_ms, vent_ms):
        # Every tick, before Regulator.observe with the same fill_ms /
        # vent_ms (the valves' openings during the tick that just ended).
        # Returns True when p (u) is a fresh sample the regulator may use.
        reg = self.reg
        if fill_ms:
            self.flow += (reg.fill_rate * fill_ms) >> 4
        if vent_ms:
            self.flow += (reg.vent_rate(reg.p_fast) * vent_ms) >> 4
        if self.flow > _BIG:
            self.flow = _BIG
        if not fresh:
            return False
        if not reg.primed:
            self.flow = 0
            return True
        # The prediction Regulator.observe makes for this tick.
        pred = reg.p_fast + reg.v_fast // reg.per_s - (reg.e // 16) // reg.n_tau
        if fill_ms:
            pred += (reg.fill_rate * fill_ms) >> 4
        if vent_ms:
            pred -= (reg.vent_rate(reg.p_fast) * vent_ms) >> 4
        r = p - pred
        self.residual = r
        a = r if r >= 0 else -r
        b = self.band()
        if a > b:
            side = 1 if r > 0 else -1
            if self.armed:
                if self.held and side == self.side:
                    self.run += 1
                else:
                    self.run = 1
                    self.side = side
                if self.run <= CONFIRM and self.held < MAX_HELD:
                    self.held += 1
                    self.rejected = (self.rejected + 1) & 0x3FFFFFFF
                    return False
                # Confirmed: the model is wrong, not the sensor. Follow.
                self.armed = False
        else:
            self.armed = True
        if self.held:
            # The held samples were outliers after all, or a step now taken.
            self.held = 0
            self.run = 0
        if self.flow == 0:
            # Winsorised at 3 x the mean: gaussian noise hardly notices
            # (the mean comes out 1 % low), but a run of outliers that the
            # gate had to let through raises the band by 3 % a sample, not
            # 11 %, so a few seconds of a fault do not leave it wide open.
            m = (self.noise * 3) >> 4
            if m < self.floor:
                m = self.floor
            if a > m:
                a = m
            self.noise += (a * 16 - self.noise) >> 6
            if self.noise > self.noise_max:
                self.noise = self.noise_max
        self.flow = 0
        return True
