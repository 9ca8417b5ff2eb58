# One channel's sensor: non-blocking acquisition, the signal in its natural
# unit, and fault detection with persistence.
#
#     sensors = sensor.build(profile, hal)     # {channel number: Sensor}
#     s = sensors[1]
#     if s.poll(now):                          # every tick; True = new good sample
#         use(s.signal)                        # valid while s.fault == 0
#
# Signal units, integers:
#   RATIOMETRIC_0_5_4_5V  transducer output / supply, ppm (0.5 V of 5 V = 100000),
#                         against the measured supply when the profile names
#                         a supply input, else the nominal supply_v
#   CURRENT_4_20MA        loop current, uA
#   LOAD_CELL             bridge output, nV/V, signed
#   MCU_ADC               as its `signal` key says: ratiometric ppm or uA
# `raw` is the ADC's counts (as TELEMETRY.raw carries them): ADS1115 16-bit,
# ADS1015 12-bit, HX711 24-bit, MCU ADC the 16-bit read_u16 mean.
#
# Faults (`fault`, with `fault_value` the offending reading when it was set):
#   MISSING    no device, bus error, or no conversion within the time-out;
#              fault_value = the OSError errno, or 0 for a time-out
#   OPEN       below 0.25 V on a 0.5-4.5 V transducer (50000 ppm), below
#              3.6 mA on a 4-20 mA loop (NAMUR NE 43, as hardware/boards/README.md):
#              a broken wire or a dead transmitter; fault_value = signal
#   RANGE      above 4.75 V (950000 ppm) or 21 mA: a shorted or failed
#              transducer; fault_value = signal
#   SATURATED  an ADC at its rail, or a load cell beyond its safe overload;
#              fault_value = signal
#   STUCK      the same raw counts (within the converter's own noise on an
#              ADS1115) `stuck_samples` times in a row where noise is
#              expected (a frozen transducer or converter, DOUT stuck low);
#              fault_value = raw
# A fault is set after `bad_samples` (N, default 3) bad samples in a row and
# cleared after N good ones, so one glitch neither trips nor clears it. A
# different fault replaces the present one once it, too, persists N samples.
# Bad samples never update `signal`.
#
# poll() allocates nothing in steady state and never raises: a driver error
# or even a programming error is reported as MISSING (fault_value -1 for the
# latter) rather than taking the control loop down.
#
# Integers only: scale factors are fixed-point (n, s) with n in [2**16, 2**17)
# computed once from the profile's floats (relative error under 8e-6, far
# inside any transducer's accuracy, and a gain error the span calibration
# takes out); products are split so that every intermediate stays below
# 2**30, MicroPython's small-int limit on the boards.
import ads1x15
import hx711
import mcu_adc
import wire

OK = 0
MISSING = 1
OPEN = 2
RANGE = 3
SATURATED = 4
STUCK = 5
FAULTS = ((OK, "OK"), (MISSING, "MISSING"), (OPEN, "OPEN"), (RANGE, "RANGE"),
          (SATURATED, "SATURATED"), (STUCK, "STUCK"))  # fmt: skip

_SENSORS = wire.codes(wire.SENSORS)
RATIOMETRIC = _SENSORS["RATIOMETRIC_0_5_4_5V"]
CURRENT = _SENSORS["CURRENT_4_20MA"]
LOAD_CELL = _SENSORS["LOAD_CELL"]
MCU_ADC = _SENSORS["MCU_ADC"]

OPEN_PPM = 50000  # 0.25 V of 5 V
RANGE_PPM = 950000  # 4.75 V of 5 V
OPEN_UA = 3600
RANGE_UA = 21000

BAD_SAMPLES = 3
# Identical counts in a row before STUCK. An HX711 at 24 bits always moves
# by tens of counts; an ADS1115 at 128 SPS has under one code of noise of its
# own, so it gets a longer window (about 5 s per input on a shared chip) and
# the 12-bit ADS1015, which can sit on one code for good, none (0 = off).
STUCK_HX711 = 50
STUCK_ADS1115 = 200
STUCK_ADS1015 = 0
STUCK_MCU_ADC = 50

_MASK30 = 0x3FFFFFFF
_MCU_RAIL = 65535 - 32  # within one 12-bit code of the top


def _q(k):
    # k > 0 as (n, s), k ~ n / 2**s with 2**16 <= n < 2**17; configuration time.
    if not k > 0:
        raise ValueError("scale factor %r must be positive" % k)
    s = 0
    while k * (2.0**s) < 65536:
        s += 1
    while k * (2.0**s) >= 131072:
        s -= 1
    if s < 0:
        raise ValueError("scale factor %r too large" % k)
    n = int(k * (2.0**s) + 0.5)
    if n >= 131072:
        n //= 2
        s -= 1
    return n, s


def _scale(c, n, s):
    # floor(c * n / 2**s) for |c| < 2**24, n < 2**17: c is split at bit 12 so
    # no product reaches 2**30.
    h = c >> 12
    lo = c & 4095
    if s >= 12:
        return (h * n + ((lo * n) >> 12)) >> (s - 12)
    return ((h * n) << (12 - s)) + ((lo * n) >> s)


def _ppm(num, den):
    # floor(num * 10**6 / den) for 0 <= num, 0 < den < 10**8, by long
    # division one decimal digit at a time.
    q = num // den
    r = num - q * den
    i = 0
    while i < 6:
        r *= 10
        d = r // den
        q = q * 10 + d
        r -= d * den
        i += 1
    return q


class Sensor:
    # The fault bookkeeping every kind shares; subclasses acquire in _poll().
    def __init__(self, kind, unit, period_ms, diff, stuck_samples):
        self.kind = kind
        self.unit = unit
        self.period_ms = period_ms
        self.bad_samples = BAD_SAMPLES
        self.stuck_samples = stuck_samples
        # Readings within this many counts of the first of a run count as
        # "the same": a frozen transducer on an ADS1115 still shows the
        # converter's own code or two of noise.
        self.stuck_band = 0
        self.raw = 0
        self.signal = 0
        self.fault = OK
        self.fault_value = 0
        self.samples = 0  # good samples, wrapping at 2**30
        self._diff = diff
        self._good = 0
        self._bad = 0
        self._run_code = OK
        self._run = 0
        self._same = 0
        self._prev = 0

    def poll(self, now):
        try:
            return self._poll(now)
        except Exception:  # a bug must not stop regulation; it shows as MISSING
            return self._missing(-1)

    def _poll(self, now):
        return False

    def _missing(self, value):
        self._same = 0
        return self._judge(MISSING, value)

    def _reading(self, raw, code, signal):
        # A conversion arrived: `code` is its classification before the
        # stuck check, which only applies to otherwise good readings.
        self.raw = raw
        d = raw - self._prev
        if self._same and -self.stuck_band <= d <= self.stuck_band:
            if self._same < self.stuck_samples:
                self._same += 1
        else:
            self._same = 1
            self._prev = raw  # the reference the next readings are held to
        if code == OK:
            if self.stuck_samples and self._same >= self.stuck_samples:
                return self._judge(STUCK, raw)
            self.signal = signal
        return self._judge(code, signal)

    def _judge(self, code, value):
        n = self.bad_samples
        if code == OK:
            self._bad = 0
            self._run = 0
            if self._good < n:
                self._good += 1
            if self.fault and self._good >= n:
                self.fault = OK
            self.samples = (self.samples + 1) & _MASK30
            return True
        self._good = 0
        if self._bad < n:
            self._bad += 1
        if code == self._run_code:
            if self._run < n:
                self._run += 1
        else:
            self._run_code = code
            self._run = 1
        if self._bad >= n and (self.fault == OK or (code != self.fault and self._run >= n)):
            self.fault = code
            self.fault_value = value
        return False


class _Slot:
    # One input configuration an ADS1x15 converts in turn, and its latest result.
    def __init__(self, inp, gain, rate, conv_ms):
        self.inp = inp
        self.gain = gain
        self.rate = rate
        self.conv_ms = conv_ms
        self.counts = 0
        self.failed = False
        self.errno = 0
        self.ever = False  # at least one good result
        self.seq = 0  # +1 (mod 2**16) per result, good or failed


class AdsShare:
    # Round-robin over the inputs (slots) of one ADS1x15: one single-shot
    # conversion at a time, started as soon as the previous one is read, so
    # no poll ever waits for the converter. Every Sensor on the chip calls
    # poll(); calls after the first in the same tick return at once.
    def __init__(self, ads, diff):
        self.ads = ads
        self.slots = []
        self._diff = diff
        self._i = -1
        self._busy = False
        self._failed = False
        self._t0 = 0
        self._conv = 0
        self._now = 0
        self._polled = False

    def slot(self, inp, gain, rate):
        for s in self.slots:
            if s.inp == inp and s.gain == gain and s.rate == rate:
                return s
        sps = self.ads.RATES[rate]
        s = _Slot(inp, gain, rate, (1000 + sps - 1) // sps)
        self.slots.append(s)
        return s

    def round_ms(self):
        # Nominal time for every slot to be converted once.
        t = 0
        for s in self.slots:
            t += s.conv_ms
        return t

    def _start(self, now):
        i = self._i + 1
        if i >= len(self.slots):
            i = 0
        self._i = i
        s = self.slots[i]
        ads = self.ads
        ads.gain = s.gain
        ads.rate = s.rate
        self._conv = s.conv_ms
        self._t0 = now
        self._busy = True
        # A failed start is reported one conversion time later, so a missing
        # chip costs the bus what a working one does.
        self._failed = not ads.start(s.inp)

    def _done(self, s, failed, counts):
        s.failed = failed
        if failed:
            s.errno = self.ads.errno if self.ads.error == ads1x15.ERR_BUS else 0
        else:
            s.counts = counts
            s.ever = True
        s.seq = (s.seq + 1) & 0xFFFF

    def poll(self, now):
        if self._polled and now == self._now:
            return
        self._polled = True
        self._now = now
        if not self.slots:
            return
        try:
            self._step(now)
        except Exception:
            # Not an OSError (the driver catches those) but a bug or a bus
            # object misbehaving: this slot's result is lost, reported as
            # errno -1, and the next slot is tried, so every channel on the
            # chip learns of it rather than only the one that polled first.
            if self._i >= 0:
                s = self.slots[self._i]
                s.failed = True
                s.errno = -1
                s.seq = (s.seq + 1) & 0xFFFF
            self._busy = False

    def _step(self, now):
        if not self._busy:
            self._start(now)
            return
        el = self._diff(now, self._t0)
        if el < self._conv:
            return
        ads = self.ads
        s = self.slots[self._i]
        if self._failed:
            self._done(s, True, 0)
        elif ads.ready():
            c = ads.read()
            self._done(s, ads.error != ads1x15.OK, c)
        elif ads.error or el >= 2 * self._conv + 2:
            # Bus error while polling, or the chip never finished: its clock
            # runs within 10 % of nominal, so twice the time is a fault.
            if not ads.error:
                ads.error = ads1x15.ERR_TIMEOUT
            self._done(s, True, 0)
        else:
            return
        self._start(now)


class AdsSensor(Sensor):
    # A transducer on an ADS1x15 input: ratiometric 0.5-4.5 V or 4-20 mA.
    def __init__(self, kind, share, slot, supply, k, stuck, diff):
        unit = "ppm" if kind == RATIOMETRIC else "uA"
        Sensor.__init__(self, kind, unit, 0, diff, stuck)
        self._share = share
        self._share_poll = share.poll
        self._slot = slot
        self._sup = supply  # slot of the supply input, or None: nominal supply
        self._n, self._s = k
        self._seen = 0
        # No result for timeout_ms, and still none in late_polls polls after
        # that (both set once the share's slots are known), is a missing
        # chip, whatever the share's state. The share converts at most one
        # slot per poll, so after a stalled loop (a flash write) every other
        # slot needs a few more polls: that is not a missing chip.
        self.timeout_ms = 0
        self.late_polls = 0
        self._t = 0
        self._late = 0
        self._max = share.ads.max_counts
        self._min = share.ads.min_counts

    def _poll(self, now):
        self._share_poll(now)
        slot = self._slot
        if slot.seq == self._seen:
            if self._diff(now, self._t) >= self.timeout_ms:
                self._late += 1
                if self._late >= self.late_polls:
                    self._t = now
                    self._late = 0
                    return self._missing(0)
            return False
        self._seen = slot.seq
        self._t = now
        self._late = 0
        if slot.failed:
            return self._missing(slot.errno)
        c = slot.counts
        sat = c >= self._max or c <= self._min
        if self.kind == CURRENT:
            v = _scale(c, self._n, self._s)
            lo = OPEN_UA
            hi = RANGE_UA
        else:
            sup = self._sup
            if sup is None:
                v = _scale(c, self._n, self._s)
            else:
                if sup.failed:
                    return self._missing(sup.errno)
                if not sup.ever:
                    return False
                sc = sup.counts
                sat = sat or sc >= self._max
                if sc <= 0 or c <= 0:
                    v = 0  # no supply, or an output at or below ground: open
                else:
                    v = _ppm(_scale(c, self._n, self._s), sc << 11)
            lo = OPEN_PPM
            hi = RANGE_PPM
        if sat:
            code = SATURATED
        elif v < lo:
            code = OPEN
        elif v > hi:
            code = RANGE
        else:
            code = OK
        return self._reading(c, code, v)


class LoadCell(Sensor):
    # A strain-gauge load cell on an HX711 (bit-banged or PIO).
    def __init__(self, hx, rate_hz, overload_nvv, stuck, diff, start):
        Sensor.__init__(self, LOAD_CELL, "nV/V", 1000 // rate_hz, diff, stuck)
        self._hx = hx
        self._ready = hx.ready
        self._read = hx.read
        self._n, self._s = _q(500e6 / (hx.gain * 8388608))
        self._overload = overload_nvv
        # Three periods without a conversion is a missing chip; `start`
        # already allows for the settling time after power-up.
        self.timeout_ms = 3 * self.period_ms
        self._t = start

    def _poll(self, now):
        if not self._ready():
            if self._diff(now, self._t) >= self.timeout_ms:
                self._t = now
                return self._missing(0)
            return False
        c = self._read()
        self._t = now
        hx = self._hx
        if c is None or hx.data_gain != hx.gain:
            return False  # converted before this driver's gain took effect
        v = _scale(c, self._n, self._s)
        if c >= hx711.MAX_COUNTS or c <= hx711.MIN_COUNTS or abs(v) > self._overload:
            code = SATURATED
        else:
            code = OK
        return self._reading(c, code, v)


class McuAdcSensor(Sensor):
    # A transducer on the MCU's own ADC, read every period_ms.
    def __init__(self, adc, ratiometric, k, period_ms, stuck, diff, start):
        Sensor.__init__(self, MCU_ADC, "ppm" if ratiometric else "uA", period_ms, diff, stuck)
        self._adc = adc
        self._read = adc.read
        self._n, self._s = k
        if ratiometric:
            self._lo = OPEN_PPM
            self._hi = RANGE_PPM
        else:
            self._lo = OPEN_UA
            self._hi = RANGE_UA
        self._t = start

    def _poll(self, now):
        if self._diff(now, self._t) < self.period_ms:
            return False
        self._t = now
        c = self._read()
        if self._adc.error:
            return self._missing(self._adc.errno)
        v = _scale(c, self._n, self._s)
        if c >= _MCU_RAIL:
            code = SATURATED
        elif v < self._lo:
            code = OPEN
        elif v > self._hi:
            code = RANGE
        else:
            code = OK
        return self._reading(c, code, v)


# ---- construction from the board profile (boot time: floats and errors allowed)

_RATIOMETRIC = "ratiometric_0.5_4.5v"
_CURRENT = "current_4_20ma"
_ADS = {"ads1115": ads1x15.ADS1115, "ads1015": ads1x15.ADS1015}


def _num(cfg, key, lo, hi):
    v = cfg[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo < v <= hi:
        raise ValueError("%s = %r: expected a number above %r, at most %r" % (key, v, lo, hi))
    return v


def _int(cfg, key, lo, hi):
    v = cfg[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError("%s = %r: expected an integer %r ... %r" % (key, v, lo, hi))
    return v


def _one_of(cfg, key, choices):
    v = cfg[key]
    if isinstance(v, bool) or v not in choices:
        raise ValueError("%s = %r: expected one of %r" % (key, v, choices))
    return v


def _signal_kind(cfg):
    sig = cfg["signal"]
    if sig == _RATIOMETRIC:
        return RATIOMETRIC
    if sig == _CURRENT:
        return CURRENT
    raise ValueError("signal = %r: expected %r or %r" % (sig, _RATIOMETRIC, _CURRENT))


def _plan_ads(cfg, profile, claimed, ch):
    # Everything an ADS1x15 channel needs, checked, without touching hardware.
    name = cfg["adc"]
    adc = None
    for a in profile.get("adcs", []):
        if a.get("name") == name:
            adc = a
    if adc is None:
        raise ValueError("adc = %r is not in the profile's adcs list" % name)
    cls = _ADS.get(adc.get("type"))
    if cls is None:
        raise ValueError("adcs %r: type %r is not ads1115 or ads1015" % (name, adc.get("type")))
    if cfg["type"] != adc["type"]:
        raise ValueError("type = %r but %s is an %s" % (cfg["type"], name, adc["type"]))
    _int(adc, "address", 0, 127)
    bus = None
    for b in profile.get("i2c", []):
        if b.get("id") == adc.get("bus"):
            bus = b
    if bus is None:
        raise ValueError("%s is on I2C bus %r, not in the i2c list" % (name, adc.get("bus")))
    kind = _signal_kind(cfg)
    inp = _int(cfg, "input", 0, 3)
    gain = ads1x15.gain_index(_num(cfg, "pga_fsr_v", 0, 7))
    rate = cls.rate_index(cfg["data_rate_sps"])
    n_lsb, s_lsb = cls._LSB[gain]
    lsb_uv = n_lsb / (1 << s_lsb)
    sup = None
    if kind == CURRENT:
        k = _q(lsb_uv / _num(cfg, "shunt_ohm", 0, 1e6))
    else:
        div = _num(cfg, "divider_ratio", 0, 1)
        if "supply_input" in cfg:
            sup = _int(cfg, "supply_input", 0, 3)
            if sup == inp:
                raise ValueError("supply_input %d is the signal input" % sup)
            # Both inputs are read at the same gain, so output/supply is
            # (c / div) / (sc / sdiv); the factor 2**11 keeps _ppm's precision.
            k = _q(_num(cfg, "supply_divider_ratio", 0, 1) / div * 2048)
        else:
            k = _q(lsb_uv / div / (_num(cfg, "supply_v", 0, 100) * 1e6) * 1e6)
    # One channel per input; a supply input may serve several channels but
    # never carry a channel's signal.
    key = (name, inp)
    if key in claimed:
        raise ValueError("%s input %d is already used by %s" % (name, inp, claimed[key]))
    claimed[key] = "channel %d" % ch
    if sup is not None:
        skey = (name, sup)
        if claimed.get(skey, "supply") != "supply":
            raise ValueError("supply_input %d of %s is %s's signal" % (sup, name, claimed[skey]))
        claimed[skey] = "supply"
    stuck = STUCK_ADS1115 if cls.BITS == 16 else STUCK_ADS1015
    return ("ads", name, adc, bus, kind, inp, sup, gain, rate, k, stuck)


def _plan_hx711(cfg):
    gain = _one_of(cfg, "gain", (128, 64, 32))
    rate = _one_of(cfg, "rate_hz", (10, 80))
    sens = _num(cfg, "sensitivity_mv_per_v", 0, 100)
    over = _num(cfg, "safe_overload_pct", 0, 1000)
    dout = _int(cfg, "dout", 0, 255)
    sck = _int(cfg, "sck", 0, 255)
    if dout == sck:
        raise ValueError("dout and sck are both pin %d" % dout)
    pio_sm = cfg.get("pio_sm")
    if pio_sm is not None:
        _int(cfg, "pio_sm", 0, 7)
    overload = int(sens * over / 100 * 1e6)  # nV/V
    return ("hx711", dout, sck, gain, rate, overload, pio_sm)


def _plan_mcu_adc(cfg):
    kind = _signal_kind(cfg)
    pin = _int(cfg, "pin", 0, 255)
    vref = _num(cfg, "vref_v", 0, 4.0) if "vref_v" in cfg else 3.3
    samples = _int(cfg, "samples", 1, 1024) if "samples" in cfg else 8
    period = _int(cfg, "period_ms", 1, 60000) if "period_ms" in cfg else 10
    uv_per_count = vref * 1e6 / 65536
    if kind == CURRENT:
        k = _q(uv_per_count / _num(cfg, "shunt_ohm", 0, 1e6))
    else:
        div = _num(cfg, "divider_ratio", 0, 1)
        k = _q(uv_per_count / div / _num(cfg, "supply_v", 0, 100))
    return ("mcu_adc", pin, kind, vref, samples, period, k)


def _plan(profile):
    chans = profile.get("channels")
    if not isinstance(chans, list):
        raise ValueError("profile has no channels list")
    claimed = {}
    plans = []
    seen = []
    for chan in chans:
        ch = chan.get("channel")
        try:
            if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1:
                raise ValueError("channel number %r: an integer from 1" % ch)
            if ch in seen:
                raise ValueError("channel number used twice")
            seen.append(ch)
            cfg = chan["sensor"]
            t = cfg["type"]
            if t in _ADS:
                p = _plan_ads(cfg, profile, claimed, ch)
            elif t == "hx711":
                p = _plan_hx711(cfg)
            elif t == "mcu_adc":
                p = _plan_mcu_adc(cfg)
            else:
                raise ValueError("type = %r: ads1115, ads1015, hx711 or mcu_adc" % t)
            bad = _int(cfg, "bad_samples", 1, 1000) if "bad_samples" in cfg else BAD_SAMPLES
            stuck = _int(cfg, "stuck_samples", 0, 100000) if "stuck_samples" in cfg else None
            # "The same" within this many counts: a frozen transducer on an
            # ADS1115 still shows the converter's own code or two of noise,
            # so a rig whose transducer is noisier (all real ones) says so.
            band = _int(cfg, "stuck_band_counts", 0, 1000) if "stuck_band_counts" in cfg else 0
        except KeyError as e:
            raise ValueError("channel %r sensor: missing key %s" % (ch, e)) from None
        except ValueError as e:
            raise ValueError("channel %r sensor: %s" % (ch, e)) from None
        plans.append((ch, p, bad, stuck, band))
    return plans


def build(profile, hal):
    # Sensors for every channel of a board profile (hardware/boards/*.json),
    # keyed by channel number. The whole profile is checked first: an error
    # raises ValueError naming the channel and key, and no hardware has been
    # touched. `hal` provides I2C(bus_cfg), Pin(n), ADC(pin), ticks_ms,
    # ticks_diff, ticks_add (and PORT, to pick the PIO HX711 on the rp2).
    plans = _plan(profile)
    diff = hal.ticks_diff
    buses = {}
    shares = {}
    out = {}
    for ch, p, bad, stuck, band in plans:
        if p[0] == "ads":
            _, name, adc, bus, kind, inp, sup, gain, rate, k, dstuck = p
            if name not in shares:
                if bus["id"] not in buses:
                    buses[bus["id"]] = hal.I2C(bus)
                drv = ads1x15.make(adc["type"], buses[bus["id"]], adc["address"], clock=hal)
                shares[name] = AdsShare(drv, diff)
            sh = shares[name]
            # The supply's slot first, so the first round has it when the
            # signal's conversion arrives.
            supply = None if sup is None else sh.slot(sup, gain, rate)
            s = AdsSensor(kind, sh, sh.slot(inp, gain, rate), supply, k, dstuck, diff)

        elif p[0] == "hx711":
            _, dout, sck, gain, rate, overload, pio_sm = p
            if pio_sm is not None and getattr(hal, "PORT", "") == "rp2":
                import hx711_pio

                hx = hx711_pio.HX711PIO(hal.Pin(dout), hal.Pin(sck), gain, pio_sm, hal)
            else:
                hx = hx711.HX711(hal.Pin(dout), hal.Pin(sck), gain, hal)
            # The chip settles for 4 periods after power-up before its first result.
            start = hal.ticks_add(hal.ticks_ms(), 4 * (1000 // rate))
            s = LoadCell(hx, rate, overload, STUCK_HX711, diff, start)
        else:
            _, pin, kind, vref, samples, period, k = p
            adc = mcu_adc.MCUADC(hal.ADC(pin), vref, samples)
            ratio = kind == RATIOMETRIC
            s = McuAdcSensor(adc, ratio, k, period, STUCK_MCU_ADC, diff, hal.ticks_ms())
        s.bad_samples = bad
        if stuck is not None:
            s.stuck_samples = stuck
        s.stuck_band = band
        out[ch] = s
    now = hal.ticks_ms()
    for s in out.values():
        if isinstance(s, AdsSensor):
            s.period_ms = s._share.round_ms()
            s.timeout_ms = 3 * s.period_ms + 10
            s.late_polls = len(s._share.slots) + 2
            s._t = now
    return out
