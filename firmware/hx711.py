# HX711 24-bit bridge ADC, bit-banged on two GPIOs (DOUT in, PD_SCK out).
#
#     hx = HX711(pin_dout, pin_sck, gain=128, clock=hal)
#     if hx.ready():              # DOUT low: a conversion is waiting
#         counts = hx.read()      # signed 24-bit; hx.data_gain = its gain
#
# The chip picks the gain and input of its *next* conversion from the number
# of clock pulses that end a read: 25 = A/128, 26 = B/32, 27 = A/64. A read
# therefore returns data converted with the gain the previous read asked
# for; `data_gain` says which, so a caller can drop the one reading after a
# change. After power-up the chip starts at A/128.
#
# PD_SCK held high for more than 60 us powers the chip down, which would
# corrupt a read, so on the boards the 24 + 1..3 pulses run with interrupts
# off (about 100 us on an RP2040 at 125 MHz). Each pulse is two pin writes.
import time

try:
    from machine import disable_irq, enable_irq
except ImportError:  # the unix port has no interrupts to mask

    def disable_irq():
        return 0

    def enable_irq(state):
        pass


# gain -> extra pulses after the 24 data bits; gain 32 selects input B.
_PULSES = {128: 1, 32: 2, 64: 3}

OK = 0
ERR_TIMEOUT = 2  # DOUT did not go low within the wait's time-out
ERR_NOT_READY = 4  # read() called with no conversion waiting

MAX_COUNTS = 0x7FFFFF
MIN_COUNTS = -0x800000


class HX711Base:
    # What the bit-banged HX711 below and hx711_pio.HX711PIO share: the error
    # codes, which gain each reading was converted with, waiting with a
    # time-out, and the power cycle that puts the chip in a known state. A
    # driver provides ready(), read(), power_down() and power_up().
    def __init__(self, clock):
        self._ticks = clock.ticks_ms
        self._diff = clock.ticks_diff
        self.error = OK
        # A freshly powered chip converts at A/128 until told otherwise.
        self.data_gain = 128
        self._next_gain = 128

    def set_gain(self, gain):
        # 128 or 64 on input A, 32 on input B; takes effect from the
        # conversion after the next read, which ends with _extra pulses.
        if gain not in _PULSES:
            raise ValueError("HX711 gain %r: 128 or 64 (input A), 32 (input B)" % gain)
        self.gain = gain
        self._extra = _PULSES[gain]

    def _took_conversion(self):
        # A read that clocked out a conversion asked for the next one's gain.
        self.data_gain = self._next_gain
        self._next_gain = self.gain

    def _woke(self):
        # Power-up resets the chip to A/128, whatever it was asked before.
        self.data_gain = 128
        self._next_gain = 128

    def ready(self):
        raise NotImplementedError

    def read(self):
        raise NotImplementedError

    def power_down(self):
        raise NotImplementedError

    def power_up(self):
        raise NotImplementedError

    def wait_ready(self, timeout_ms):
        # For boot and tools: True once a conversion waits, False (error
        # ERR_TIMEOUT) after timeout_ms.
        t0 = self._ticks()
        while not self.ready():
            if self._diff(self._ticks(), t0) >= timeout_ms:
                self.error = ERR_TIMEOUT
                return False
            time.sleep_us(200)
        return True

    def read_blocking(self, timeout_ms):
        # Signed counts, or None with `.error` set (ERR_TIMEOUT).
        if not self.wait_ready(timeout_ms):
            return None
        return self.read()

    def reset(self):
        # A power cycle puts the chip in a known state (A/128) whatever a
        # previous run (before a soft reset) left it at.
        self.power_down()
        time.sleep_us(100)
        self.power_up()


def signed24(v):
    # The chip's 24-bit two's complement as a signed int.
    if v & 0x800000:
        v -= 0x1000000
    return v


class HX711(HX711Base):
    def __init__(self, dout, sck, gain=128, clock=time):
        sck.init(sck.OUT, value=0)
        dout.init(dout.IN)
        self._sck = sck.value
        self._dout = dout.value
        super().__init__(clock)
        self.set_gain(gain)
        self.reset()

    def ready(self):
        return self._dout() == 0

    def read(self):
        # Signed counts of the waiting conversion, or None (error
        # ERR_NOT_READY) if there is none: clocking then would read garbage.
        if self._dout():
            self.error = ERR_NOT_READY
            return None
        sck = self._sck
        dout = self._dout
        v = 0
        irq = disable_irq()
        try:
            i = 0
            while i < 24:
                sck(1)
                sck(0)
                v = (v << 1) | dout()
                i += 1
            i = self._extra
            while i:
                sck(1)
                sck(0)
                i -= 1
        finally:
            enable_irq(irq)
        self._took_conversion()
        self.error = OK
        return signed24(v)

    def power_down(self):
        # SCK left high: the chip sleeps once 60 us have passed.
        self._sck(0)
        self._sck(1)

    def power_up(self):
        # SCK low wakes and resets the chip: gain A/128, and the first
        # conversion after its settling time (4 periods: 400 ms at 10 SPS).
        self._sck(0)
        self._woke()
