# Simulated buses and sensor chips for the sim port: the real drivers run
# against register- and pin-level models, so what the firmware does on a
# board (I2C transfers, HX711 clocking) is what it does here.
#
#     bus = SimI2C(now_ms)
#     adc = ADS1115Model(now_ms, volts)        # volts(i) -> float V at AINi
#     bus.attach(0x48, adc)
#     cell = HX711Model(now_ms, mv_per_v)      # mv_per_v() -> float, or None
#     hx = hx711.HX711(cell.dout, cell.sck)
#     mcu = SimADC(now_ms, volts)              # machine.ADC-like read_u16()
#
# `now_ms` is a callable giving the virtual time in ms (int or float, never
# wrapping). The models convert lazily: a conversion due by now is done when
# a register or pin is next touched, or by sync(). A harness that measures
# the firmware's allocations calls sync() after moving the clock, so the
# models' float arithmetic happens outside the measured call; register and
# pin accesses themselves allocate nothing.
#
# Fault switches: `present = False` (I2C: no ACK, OSError ENODEV), `stuck`
# (the result never changes), `hung` (ADS1115: conversions never finish),
# `mv_per_v()` returning None (HX711 gone: DOUT stays high), SimI2C
# `fail_errno` (every transfer fails, as with SDA held low).

ENODEV = 19
EIO = 5

_EMPTY = b""


class SimI2C:
    # machine.I2C's controller methods over attached models. A device object
    # has `present`, `pointer`, `write(reg, data)` and `read(reg, buf)`.
    def __init__(self, now_ms=None, freq_hz=100000, missing_errno=ENODEV):
        self._now = now_ms
        self.freq_hz = freq_hz
        self.missing_errno = missing_errno
        self.fail_errno = 0
        self._devices = {}
        self.transfers = 0
        self.bus_us = 0  # bus time the transfers would take at freq_hz

    def attach(self, addr, device):
        if not 0 <= addr <= 0x7F:
            raise ValueError("I2C address %r: 0 ... 127" % addr)
        self._devices[addr] = device

    def detach(self, addr):
        self._devices.pop(addr, None)

    def _device(self, addr, nbytes):
        # The addressed device if it ACKs, else OSError as machine.I2C raises.
        if self.fail_errno:
            raise OSError(self.fail_errno)
        d = self._devices.get(addr)
        if d is None or not d.present:
            raise OSError(self.missing_errno)
        self.transfers += 1
        # 9 clocks per byte plus start/stop: what the transfer costs the bus.
        self.bus_us += ((nbytes + 1) * 9 + 2) * 1000000 // self.freq_hz
        return d

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        d = self._device(addr, len(buf) + 2)
        d.write(memaddr, _EMPTY)
        d.read(memaddr, buf)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        d = self._device(addr, len(buf) + 1)
        d.write(memaddr, buf)

    def writeto(self, addr, buf, stop=True):
        # First byte sets the register pointer, the rest are written to it.
        d = self._device(addr, len(buf))
        if len(buf):
            d.write(buf[0], bytes(buf[1:]))
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        d = self._device(addr, len(buf))
        d.read(d.pointer, buf)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf)
        return bytes(buf)

    def scan(self):
        if self.fail_errno:
            return []
        return sorted(a for a, d in self._devices.items() if d.present)


def _lcg(seed):
    return (seed * 1103515245 + 12345) & 0x7FFFFFFF


def _uniform(seed):
    # A number in [-1, 1) from the generator state.
    return seed / 1073741824.0 - 1.0


# ADS1x15 config register fields.
_OS = 0x8000
_MODE = 0x0100
_MUX_PAIRS = ((0, 1), (0, 3), (1, 3), (2, 3), (0, -1), (1, -1), (2, -1), (3, -1))
_FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)
_RATES = {
    "ads1115": (8, 16, 32, 64, 128, 250, 475, 860),
    "ads1015": (128, 250, 490, 920, 1600, 2400, 3300, 3300),
}
_IDLE = 0
_SINGLE = 1
_CONTINUOUS = 2


class ADS1115Model:
    # Register-level ADS1115 / ADS1015: config (OS, MUX, PGA, MODE, DR),
    # conversion, and the two threshold registers. A conversion takes 1/DR
    # and samples `volts` when it completes; results are rounded to the
    # nearest code, clipped at +/-FSR (0x7FFF / 0x8000), and left-justified
    # 12-bit on the ADS1015. The comparator is not modelled.
    def __init__(self, now_ms, volts, kind="ads1115", noise_lsb=1.0, seed=12345):
        if kind not in _RATES:
            raise ValueError("kind %r: ads1115 or ads1015" % kind)
        self._now_ms = now_ms
        self._volts = volts
        self.kind = kind
        self.bits = 16 if kind == "ads1115" else 12
        self.rates = _RATES[kind]
        # Uniform noise of +/- noise_lsb before rounding; a real ADS1115 at
        # 128 SPS with a transducer on it moves by about one code.
        self.noise_lsb = noise_lsb
        self._seed = seed
        self.present = True
        self.stuck = False
        self.hung = False
        self.pointer = 0
        self.config = 0x0583  # reset value without OS (OS is read from state)
        self.conversion = 0
        self.lo_thresh = 0x8000
        self.hi_thresh = 0x7FFF
        self.conversions = 0
        self.ignored_starts = 0  # OS=1 written while a single conversion ran
        self.history = None  # set to a list to log (mux, pga, dr, code) per conversion
        self._mode = _IDLE
        self._due_us = 0
        self._period_us = 1

    def _now_us(self):
        return int(self._now_ms() * 1000)

    def period_us(self, config=None):
        # One conversion at the data rate in `config` (default: the present one).
        if config is None:
            config = self.config
        return 1000000 // self.rates[(config >> 5) & 7]

    def sync(self):
        # Completes whatever conversion is due by now.
        if self._mode == _IDLE or self.hung:
            return
        t = self._now_us()
        if t < self._due_us:
            return
        if self._mode == _SINGLE:
            self._mode = _IDLE
        else:
            # Conversions missed while nobody looked leave only the last one.
            self._due_us += ((t - self._due_us) // self._period_us + 1) * self._period_us
        self._convert()

    def _convert(self):
        cfg = self.config
        mux = (cfg >> 12) & 7
        pga = (cfg >> 9) & 7
        p, n = _MUX_PAIRS[mux]
        v = self._volts(p)
        if n >= 0:
            v -= self._volts(n)
        half = 1 << (self.bits - 1)
        x = v / _FSR_V[pga] * half
        if self.noise_lsb:
            self._seed = _lcg(self._seed)
            x += self.noise_lsb * _uniform(self._seed)
        code = int(x + 0.5) if x >= 0 else -int(0.5 - x)
        if code > half - 1:
            code = half - 1
        elif code < -half:
            code = -half
        if not self.stuck:
            self.conversion = (code << (16 - self.bits)) & 0xFFFF
        self.conversions += 1
        if self.history is not None:
            self.history.append((mux, pga, (cfg >> 5) & 7, code))

    def write(self, reg, data):
        self.pointer = reg & 3
        if len(data) < 2:
            return
        v = (data[0] << 8) | data[1]
        self.sync()
        if self.pointer == 1:
            self._write_config(v)
        elif self.pointer == 2:
            self.lo_thresh = v
        elif self.pointer == 3:
            self.hi_thresh = v

    def _write_config(self, v):
        t = self._now_us()
        self.config = v & 0x7FFF
        if not v & _MODE:
            self._mode = _CONTINUOUS
            self._period_us = self.period_us()
            self._due_us = t + self._period_us
        elif v & _OS and self._mode != _SINGLE:
            # OS=1 is ignored while a single conversion runs, as on the chip;
            # from continuous mode it stops that and starts this one.
            self._mode = _SINGLE
            self._due_us = t + self.period_us()
        elif self._mode == _CONTINUOUS:
            self._mode = _IDLE
        elif v & _OS:
            self.ignored_starts += 1

    def read(self, reg, buf):
        self.sync()
        if reg == 0:
            v = self.conversion
        elif reg == 1:
            v = self.config | (_OS if self._mode == _IDLE else 0)
        elif reg == 2:
            v = self.lo_thresh
        else:
            v = self.hi_thresh
        n = len(buf)
        if n > 0:
            buf[0] = v >> 8
        if n > 1:
            buf[1] = v & 0xFF


class _PinModel:
    # The machine.Pin subset the drivers use; mode arguments are accepted
    # and ignored (the direction is fixed by the model).
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2

    def init(self, mode=-1, pull=-1, value=None):
        if value is not None:
            self.value(value)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class _Dout(_PinModel):
    def __init__(self, model):
        self._m = model

    def value(self, v=None):
        return self._m._dout_level()


class _Sck(_PinModel):
    def __init__(self, model):
        self._m = model

    def value(self, v=None):
        if v is None:
            return self._m._sck
        self._m._sck_write(1 if v else 0)
        return None


_HX_GAIN = {25: 128, 26: 32, 27: 64}


class HX711Model:
    # Pin-level HX711. Converts every 1/rate s while powered (the first
    # result 4 periods after power-up, its settling time); DOUT low means a
    # result is waiting. A read latches it, shifts it out MSB first on SCK
    # rising edges, and pulse 25, 26 or 27 picks A/128, B/32 or A/64 for the
    # conversions after it. SCK high for more than 60 us powers it down; SCK
    # low again resets it to A/128. Full scale is +/-0.5 * AVDD / gain, so
    # +/-3.90625 mV/V at gain 128 is +/-2**23 counts, clamped at the rails.
    def __init__(
        self, now_ms, mv_per_v, rate=10, now_us=None, mv_per_v_b=None, noise_counts=20, seed=4321
    ):
        if rate not in (10, 80):
            raise ValueError("HX711 rate %r: 10 or 80 SPS" % rate)
        self._now_ms = now_ms
        self._now_us_fn = now_us
        self._mv_a = mv_per_v
        self._mv_b = mv_per_v_b
        self.rate = rate
        self.period_us = 1000000 // rate
        self.noise_counts = noise_counts
        self._seed = seed
        self.stuck = False
        self.gone = False
        self.powered = True
        self.conversions = 0
        self.reads = 0
        self.power_downs = 0
        self.dout = _Dout(self)
        self.sck = _Sck(self)
        self._sck = 0
        self._sck_t = self._now_us()
        self._gain_pulses = 25
        self._data = 0
        self._latched = 0
        self._ready = False
        self._pulses = 0
        self._next_us = self._sck_t + 4 * self.period_us

    def _now_us(self):
        if self._now_us_fn is not None:
            return self._now_us_fn()
        return int(self._now_ms() * 1000)

    @property
    def gain(self):
        # The gain (and input: 32 is B) the next conversion uses.
        return _HX_GAIN[self._gain_pulses]

    def sync(self):
        t = self._now_us()
        if self.powered and self._sck and t - self._sck_t > 60:
            self._power_down()
        if not self.powered or t < self._next_us:
            return
        self._next_us += ((t - self._next_us) // self.period_us + 1) * self.period_us
        self._convert()

    def _convert(self):
        b = self._gain_pulses == 26
        src = self._mv_b if b else self._mv_a
        mv = 0.0 if src is None else src()
        if mv is None:
            self.gone = True
            self._ready = False
            return
        self.gone = False
        x = mv * _HX_GAIN[self._gain_pulses] / 500.0 * 8388608
        if self.noise_counts:
            self._seed = _lcg(self._seed)
            x += self.noise_counts * _uniform(self._seed)
        code = int(x + 0.5) if x >= 0 else -int(0.5 - x)
        if code > 0x7FFFFF:
            code = 0x7FFFFF
        elif code < -0x800000:
            code = -0x800000
        if not self.stuck:
            self._data = code
        self._ready = True
        if self._pulses == 0 or self._pulses >= 25:
            self._pulses = 0
        self.conversions += 1

    def _power_down(self):
        self.powered = False
        self._ready = False
        self._pulses = 0
        self.power_downs += 1

    def _power_up(self, t):
        self.powered = True
        self._gain_pulses = 25
        self._next_us = t + 4 * self.period_us

    def _dout_level(self):
        self.sync()
        if not self.powered or self.gone:
            return 1
        p = self._pulses
        if 1 <= p <= 24:
            return (self._latched >> (24 - p)) & 1
        return 0 if self._ready else 1

    def _sck_write(self, v):
        self.sync()
        if v == self._sck:
            return
        t = self._now_us()
        self._sck = v
        if not v:
            if not self.powered:
                self._power_up(t)
            return
        self._sck_t = t
        if not self.powered or self.gone:
            return
        p = self._pulses
        if p == 0:
            if not self._ready:
                return  # no result waiting: the chip ignores the pulse
            self._latched = self._data & 0xFFFFFF
            self._ready = False
            self._pulses = 1
            self.reads += 1
        else:
            self._pulses = p + 1
            if self._pulses >= 25:
                self._gain_pulses = 27 if self._pulses > 27 else self._pulses


class SimADC:
    # machine.ADC-like MCU input: `bits`-bit converter scaled to 16 bits by
    # read_u16 as MicroPython does (code << (16 - bits), plus the top bits
    # repeated). The voltage is sampled once per virtual millisecond; noise
    # of +/- noise_lsb codes is added per read with integer arithmetic.
    def __init__(self, now_ms, volts, vref_v=3.3, bits=12, noise_lsb=1):
        self._now_ms = now_ms
        self._volts = volts
        self.vref_v = vref_v
        self.bits = bits
        self.noise_lsb = noise_lsb
        self._seed = 777
        self._t = None
        self._code = 0
        self.reads = 0

    def sync(self):
        t = self._now_ms()
        if t == self._t:
            return
        self._t = t
        top = (1 << self.bits) - 1
        x = self._volts() / self.vref_v * (top + 1)
        code = int(x) if x > 0 else 0
        self._code = top if code > top else code

    def read_u16(self):
        self.sync()
        code = self._code
        if self.noise_lsb:
            self._seed = _lcg(self._seed)
            code += self._seed % (2 * self.noise_lsb + 1) - self.noise_lsb
        top = (1 << self.bits) - 1
        if code < 0:
            code = 0
        elif code > top:
            code = top
        self.reads += 1
        s = 16 - self.bits
        return (code << s) | (code >> (self.bits - s))
