# The MCU's own ADC (RP2040: 12-bit, ESP32: 12-bit, both scaled to 16 by
# machine.ADC.read_u16) as a fallback when no ADS1115 is fitted.
#
#     a = MCUADC(hal.ADC(pin), vref_v=3.3, samples=8)
#     counts = a.read()       # mean of 8 read_u16() values, 0..65535
#     uv = a.to_uv(counts)    # microvolts at the pin, integer
#
# Both boards' ADCs are noisy (a few LSB of 12) and the ESP32's is non-linear
# near its ends, so averaging helps and calibration does the rest. Reading
# takes a few microseconds per sample; it does not allocate.

OK = 0
ERR_BUS = 1  # read_u16 raised OSError

FULL_SCALE = 65535  # read_u16 at or above the reference


class MCUADC:
    def __init__(self, adc, vref_v=3.3, samples=8):
        if not 0 < vref_v <= 4.0:
            raise ValueError("ADC reference %r V: above 0, at most 4.0" % vref_v)
        if not 1 <= samples <= 1024:
            raise ValueError("samples %r: 1 ... 1024" % samples)
        self._read_u16 = adc.read_u16
        self.samples = samples
        self.vref_uv = int(vref_v * 1000000 + 0.5)
        self.error = OK
        self.errno = 0

    def read(self):
        # Mean of `samples` conversions (floored); 0 with `.error` set if the
        # ADC raised.
        k = self.samples
        total = 0
        i = 0
        try:
            while i < k:
                total += self._read_u16()
                i += 1
        except OSError as e:
            self.error = ERR_BUS
            self.errno = e.errno
            return 0
        self.error = OK
        return total // k

    def to_uv(self, counts):
        # counts * vref / 65536 in microvolts, split in bytes so every product
        # stays a small int (255 * 4.0e6 < 2**30).
        vref = self.vref_uv
        hi = counts >> 8
        lo = counts & 0xFF
        return (hi * vref + ((lo * vref) >> 8)) >> 8

    def volts(self):
        # Cold path: one averaged reading in volts, a float.
        return self.to_uv(self.read()) / 1e6
