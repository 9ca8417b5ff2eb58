# ADS1115 (16-bit) and ADS1015 (12-bit) delta-sigma ADCs on I2C.
#
#     adc = ADS1115(i2c, address=0x48, gain=GAIN_4V096, rate=4, clock=hal)
#     adc.start(AIN0)             # single-shot conversion, returns at once
#     ...                         # later ticks:
#     if adc.ready():             # OS bit set: conversion finished
#         counts = adc.read()     # signed counts; check adc.error
#     uv = adc.to_uv(counts)      # microvolts at the inputs, integer
#
# Non-blocking so one tick never waits out a conversion (7.8 ms at 128 SPS),
# and allocation-free per conversion: the two-byte buffer is preallocated.
# Bus errors are caught: `.error` says what went wrong, `.errno` carries the
# OSError's number, and the caller gets a harmless return value instead of an
# exception in its control loop.
import time

_REG_CONVERSION = 0
_REG_CONFIG = 1

_OS = 0x8000  # write: start a single conversion; read: 1 = idle
_MODE_SINGLE = 0x0100  # 1: single-shot and power-down, 0: continuous
_COMP_OFF = 0x0003  # comparator disabled, ALERT/RDY high impedance

# `gain` is an index into the PGA full-scale ranges, in millivolts.
FSR_MV = (6144, 4096, 2048, 1024, 512, 256)
GAIN_6V144 = 0
GAIN_4V096 = 1
GAIN_2V048 = 2
GAIN_1V024 = 3
GAIN_0V512 = 4
GAIN_0V256 = 5

# `input` of start()/continuous(): 0-3 single-ended AINx against GND, 4-7 the
# differential pairs the multiplexer offers (positive input first).
AIN0 = 0
AIN1 = 1
AIN2 = 2
AIN3 = 3
DIFF_0_1 = 4
DIFF_0_3 = 5
DIFF_1_3 = 6
DIFF_2_3 = 7
_MUX = (4, 5, 6, 7, 0, 1, 2, 3)  # input -> config MUX field

# `.error` values.
OK = 0
ERR_BUS = 1  # the I2C transfer raised OSError (no device, NACK, bus stuck)
ERR_TIMEOUT = 2  # the conversion did not finish in time
ERR_ARG = 3  # an input or mode the chip does not have

# One LSB in microvolts as numerator >> shift, per gain index, so that
# counts * numerator stays a small int (|counts| <= 2**15, numerator <= 3000).
_LSB_1115 = ((375, 1), (125, 0), (125, 1), (125, 2), (125, 3), (125, 4))
_LSB_1015 = ((3000, 0), (2000, 0), (1000, 0), (500, 0), (250, 0), (125, 0))


def gain_index(fsr_v):
    # The gain index for a PGA full-scale range given in volts (profiles say
    # 4.096); configuration time only.
    for i in range(len(FSR_MV)):
        if abs(FSR_MV[i] - fsr_v * 1000) < 0.5:
            return i
    raise ValueError("PGA full-scale %r V: 6.144 4.096 2.048 1.024 0.512 or 0.256" % fsr_v)


class _ADS1x15:
    BITS = 16
    RATES = ()
    _LSB = _LSB_1115

    def __init__(self, i2c, address=72, gain=GAIN_4V096, rate=4, clock=time):
        self._i2c = i2c
        self.address = address
        self.set_gain(gain)
        self.set_rate(rate)
        self.error = OK
        self.errno = 0
        self.continuous_mode = False
        self._buf = bytearray(2)
        self._ticks = clock.ticks_ms
        self._diff = clock.ticks_diff
        self._t = self._ticks()  # continuous mode: when the last result was taken
        self._shift = 16 - self.BITS
        self.max_counts = (1 << (self.BITS - 1)) - 1
        self.min_counts = -(1 << (self.BITS - 1))

    @classmethod
    def rate_index(cls, sps):
        # The rate index for a data rate in samples per second; configuration time.
        for i in range(len(cls.RATES)):
            if cls.RATES[i] == sps:
                return i
        raise ValueError("data rate %r SPS: one of %r" % (sps, cls.RATES))

    def set_gain(self, gain):
        if not 0 <= gain < len(FSR_MV):
            raise ValueError("gain index %r: 0 (6.144 V) ... 5 (0.256 V)" % gain)
        self.gain = gain

    def set_rate(self, rate):
        if not 0 <= rate < len(self.RATES):
            raise ValueError("rate index %r: 0 ... 7" % rate)
        self.rate = rate

    def conversion_ms(self):
        # Whole milliseconds one conversion takes at the present rate, rounded up.
        sps = self.RATES[self.rate]
        return (1000 + sps - 1) // sps

    def _config(self, inp, single):
        return (
            (_MUX[inp] << 12)
            | (self.gain << 9)
            | (_MODE_SINGLE if single else 0)
            | (self.rate << 5)
            | _COMP_OFF
        )

    def _write_config(self, value):
        buf = self._buf
        buf[0] = value >> 8
        buf[1] = value & 0xFF
        try:
            self._i2c.writeto_mem(self.address, _REG_CONFIG, buf)
        except OSError as e:
            self.error = ERR_BUS
            self.errno = e.errno
            return False
        self.error = OK
        return True

    def _read_reg(self, reg):
        # The register's 16 bits, or -1 after a bus error.
        buf = self._buf
        try:
            self._i2c.readfrom_mem_into(self.address, reg, buf)
        except OSError as e:
            self.error = ERR_BUS
            self.errno = e.errno
            return -1
        self.error = OK
        return (buf[0] << 8) | buf[1]

    def start(self, inp):
        # Begins one single-shot conversion of `inp` at the present gain and rate.
        if not 0 <= inp <= 7:
            self.error = ERR_ARG
            return False
        self.continuous_mode = False
        return self._write_config(_OS | self._config(inp, True))

    def continuous(self, inp):
        # Converts `inp` over and over; read() returns the latest result.
        if not 0 <= inp <= 7:
            self.error = ERR_ARG
            return False
        if not self._write_config(self._config(inp, False)):
            return False
        self.continuous_mode = True
        self._t = self._ticks()
        return True

    def stop(self):
        # Back to single-shot mode: the chip powers down after the conversion.
        self.continuous_mode = False
        return self._write_config(self._config(0, True))

    def ready(self):
        # Single-shot: the OS bit says the conversion finished. Continuous: a
        # fresh result exists once a conversion period passed since the last
        # read (the chip's OS bit reads 0 for as long as it converts).
        if self.continuous_mode:
            return self._diff(self._ticks(), self._t) >= self.conversion_ms()
        cfg = self._read_reg(_REG_CONFIG)
        return cfg >= 0 and (cfg & _OS) != 0

    def read(self):
        # The conversion register as signed counts (12-bit on the ADS1015);
        # 0 after a bus error, with `.error` set.
        v = self._read_reg(_REG_CONVERSION)
        if v < 0:
            return 0
        if self.continuous_mode:
            self._t = self._ticks()
        if v & 0x8000:
            v -= 0x10000
        return v >> self._shift

    def read_blocking(self, inp, timeout_ms=None):
        # For boot and tools: start, wait with a time-out, read. Signed counts,
        # or None with `.error` set.
        if not self.start(inp):
            return None
        if timeout_ms is None:
            timeout_ms = 2 * self.conversion_ms() + 10
        t0 = self._ticks()
        while not self.ready():
            if self.error:
                return None
            if self._diff(self._ticks(), t0) >= timeout_ms:
                self.error = ERR_TIMEOUT
                return None
            time.sleep_us(200)
        v = self.read()
        return None if self.error else v

    def to_uv(self, counts):
        # Counts at the present gain to microvolts (floored), small ints only.
        n, s = self._LSB[self.gain]
        return (counts * n) >> s

    def to_volts(self, counts):
        # Cold path (tools, boot log): a float.
        n, s = self._LSB[self.gain]
        return counts * n / (1 << s) / 1e6


class ADS1115(_ADS1x15):
    BITS = 16
    RATES = (8, 16, 32, 64, 128, 250, 475, 860)
    _LSB = _LSB_1115


class ADS1015(_ADS1x15):
    BITS = 12
    RATES = (128, 250, 490, 920, 1600, 2400, 3300, 3300)
    _LSB = _LSB_1015


def make(kind, i2c, address=72, gain=GAIN_4V096, rate=4, clock=time):
    # "ads1115" or "ads1015", as board profiles name them.
    if kind == "ads1115":
        return ADS1115(i2c, address, gain, rate, clock)
    if kind == "ads1015":
        return ADS1015(i2c, address, gain, rate, clock)
    raise ValueError("ADC type %r: ads1115 or ads1015" % kind)
