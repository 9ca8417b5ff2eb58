# The board's wires to the battery cycler: one pressure-proportional analog
# output per channel (PWM through an RC filter and a buffer, hardware/WIRING.md),
# the fault line to the cycler's emergency-stop input, and the cycler's
# trigger output.
#
#     io = CyclerIO(board_profile, hal, channel_numbers)
#     io.analog(ch, pressure_pa)     # every tick, allocates nothing
#     io.fault(active)               # every tick: the line is driven, never left
#     io.trigger_edge(now) -> bool   # every tick: True once per debounced edge
#     io.set_scale(ch, fs_pa, fs_mv) -> (result, value)   # cold: a new full scale
#
# Output volts = clamp(p, 0, fs) / fs x full-scale volts, duty = volts /
# (pwm_v_high x amp_gain). The tick computes it with small integers: the ratio
# duty per Pa is kept as K / 2**(a + b) with K < 2**16 and the pressure taken
# as (p >> a) < 2**14 plus its low a bits, so no product reaches 2**30 (the
# boards' small-int range) and the result is within 2 counts of 65535 of the
# exact value; the PWM itself resolves about 12500 steps at 10 kHz on the
# RP2040, so that is below what the pin can show.
import array

import wire

_R = wire.codes(wire.RESULTS)
OK = _R["OK"]
UNKNOWN_CHANNEL = _R["UNKNOWN_CHANNEL"]
OUT_OF_RANGE = _R["OUT_OF_RANGE"]
NOT_SUPPORTED = _R["NOT_SUPPORTED"]

DEBOUNCE_MS = 20
FULL = 65535
# Full scale from 0.1 MPa (so the duty per Pa stays below 4 per 2**a Pa, see
# _coefficients) to the small-int limit.
MIN_FS_PA = 100000
MAX_FS_PA = (1 << 30) - 1


def _coefficients(fs_pa, d_full):
    # (a, K, b): duty = p * d_full / fs_pa ~= p * K / 2**(a + b), with
    # fs_pa >> a < 2**14 and K as large as fits below 2**16 for precision.
    # fs_pa >= MIN_FS_PA makes a >= 3 and fs_pa >= 2**(a + 13), so
    # d_full * 2**a / fs_pa < 8 and K reaches at least 2**15.
    a = 0
    while (fs_pa >> a) >= 1 << 14:
        a += 1
    b = 0
    k = 0
    while b < 48:
        nk = ((d_full << (a + b + 1)) + fs_pa) // (2 * fs_pa)
        if nk >= 1 << 16:
            break
        k = nk
        b += 1
    return a, k, b - 1


class CyclerIO:
    def __init__(self, profile, hal, channel_numbers):
        self._td = hal.ticks_diff
        ao = profile.get("analog_out") or {}
        # Output volts at 100 % duty, in uV.
        self._v_max_uv = int(ao.get("pwm_v_high", 3.3) * ao.get("amp_gain", 1.0) * 1e6 + 0.5)
        freq = ao.get("pwm_freq_hz", 10000)
        n = 1 + max(channel_numbers) if channel_numbers else 1
        self._out = [None] * n
        self._fs = array.array("i", [0] * n)  # full-scale pressure, Pa
        self._full = array.array("i", [0] * n)  # duty at full scale
        self._a = array.array("i", [0] * n)
        self._k = array.array("i", [0] * n)
        self._b = array.array("i", [0] * n)
        self._duty = array.array("i", [-1] * n)  # last written, -1 = write next time
        for c in profile.get("channels", ()):
            num = c["channel"]
            if num not in channel_numbers or "analog_out_pin" not in c:
                continue
            sc = c["analog_out_scale"]
            fs_pa = int(sc["full_scale_mpa"] * 1e6 + 0.5)
            fs_mv = int(sc["full_scale_v"] * 1000 + 0.5)
            self._out[num] = hal.AnalogOut(c["analog_out_pin"], freq)
            result, limit = self.set_scale(num, fs_pa, fs_mv)
            if result != OK:
                raise ValueError(
                    "board profile: channel %d analog_out_scale %d Pa -> %d mV is outside"
                    " %d..%d Pa, 1..%d mV (pwm_v_high x amp_gain)"
                    % (num, fs_pa, fs_mv, MIN_FS_PA, MAX_FS_PA, self._v_max_uv // 1000)
                )
            self.analog(num, 0)

        self._fault = None
        if "fault_out_pin" in profile:
            self._f_on = profile.get("fault_out_active_level", 0)
            self._f_off = 1 - self._f_on
            # Asserted from construction until the device declares itself
            # healthy: a board still booting is not one the cycler should trust.
            self._fault = hal.Out(profile["fault_out_pin"], self._f_on)

        self._trig = None
        if "trigger_in_pin" in profile:
            self._t_act = profile.get("trigger_in_active_level", 0)
            pull = profile.get("trigger_in_pull", "internal") == "internal"
            self._trig = hal.In(profile["trigger_in_pin"], pull)
            # A trigger already asserted at boot is a level, not an edge.
            self._t_state = self._trig.value() == self._t_act
            self._t_cand = self._t_state
            self._t_since = hal.ticks_ms()

    def set_scale(self, ch, fs_pa, fs_mv):
        # (result, value): value is the limit broken for OUT_OF_RANGE.
        if ch < 0 or ch >= len(self._out):
            return UNKNOWN_CHANNEL, 0
        if self._out[ch] is None:
            return NOT_SUPPORTED, 0
        if fs_pa < MIN_FS_PA:
            return OUT_OF_RANGE, MIN_FS_PA
        if fs_pa > MAX_FS_PA:
            return OUT_OF_RANGE, MAX_FS_PA
        v_max_mv = self._v_max_uv // 1000
        if fs_mv < 1:
            return OUT_OF_RANGE, 1
        if fs_mv > v_max_mv:
            return OUT_OF_RANGE, v_max_mv  # the output cannot reach that voltage
        d_full = (fs_mv * 1000 * FULL * 2 + self._v_max_uv) // (2 * self._v_max_uv)
        a, k, b = _coefficients(fs_pa, d_full)
        self._fs[ch] = fs_pa
        self._full[ch] = d_full
        self._a[ch] = a
        self._k[ch] = k
        self._b[ch] = b
        self._duty[ch] = -1
        return OK, 0

    def analog(self, ch, pressure_pa):
        if ch < 0 or ch >= len(self._out):
            return
        out = self._out[ch]
        if out is None:
            return
        p = pressure_pa
        if p <= 0:
            d = 0
        elif p >= self._fs[ch]:
            d = self._full[ch]
        else:
            # (p >> a) * k < 2**30; the low a bits of p add less than 8
            # counts, so a K cut to 14 bits is precise enough for them and
            # keeps their product below 2**30 too.
            a = self._a[ch]
            k = self._k[ch]
            x = (p >> a) * k + (((p & ((1 << a) - 1)) * (k >> 2)) >> (a - 2))
            d = ((x >> (self._b[ch] - 1)) + 1) >> 1  # rounded
            if d > self._full[ch]:
                d = self._full[ch]
        if d != self._duty[ch]:
            self._duty[ch] = d
            out.write_u16(d)

    def duty(self, ch):
        # The duty last written to channel ch's output, for status and tests.
        return self._duty[ch]

    def fault(self, active):
        if self._fault is not None:
            self._fault.value(self._f_on if active else self._f_off)

    def trigger_edge(self, now):
        # A level counts once it has held for DEBOUNCE_MS: contact bounce
        # and glitches shorter than that change nothing.
        if self._trig is None:
            return False
        act = self._trig.value() == self._t_act
        if act != self._t_cand:
            self._t_cand = act
            self._t_since = now
            return False
        if act != self._t_state and self._td(now, self._t_since) >= DEBOUNCE_MS:
            self._t_state = act
            return act
        return False
