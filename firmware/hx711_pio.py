# ruff: noqa: F403, F405, F821  (PIO assembler names exist only inside rp2.asm_pio)
# HX711 on the RP2040 with a PIO state machine: the same interface as
# hx711.HX711, but the clocking runs in hardware, so the SCK high time is
# exactly 2 us whatever the CPU does and interrupts stay on.
#
#     hx = HX711PIO(pin_dout, pin_sck, gain=128, sm_id=4, clock=hal)
#     if hx.ready():
#         counts = hx.read()
#
# The state machine waits for DOUT low, clocks 24 bits in and 1-3 gain
# pulses out, pushes the word to its RX FIFO and waits again. If nobody
# reads, it stalls on the full FIFO with SCK low (no power-down); read()
# drains the FIFO and returns the newest conversion.
import time

import rp2
from machine import Pin

# The type checker reads the PIO assembler's names from the board stubs;
# on the board the block never runs (rp2.asm_pio provides them there).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from rp2.asm_pio import *

OK = 0
ERR_TIMEOUT = 2
ERR_NOT_READY = 4

MAX_COUNTS = 0x7FFFFF
MIN_COUNTS = -0x800000

_PULSES = {128: 1, 32: 2, 64: 3}
_FREQ = 1000000  # 1 us per PIO cycle


@rp2.asm_pio(sideset_init=rp2.PIO.OUT_LOW, in_shiftdir=rp2.PIO.SHIFT_LEFT)
def _hx711():
    pull(block).side(0)  # gain pulses - 1, once after each (re)start
    mov(x, osr).side(0)
    wrap_target()
    wait(0, pin, 0).side(0)  # DOUT low: a conversion is waiting
    set(y, 23).side(0)
    label("bit")
    nop().side(1)[1]  # SCK high 2 us; the chip shifts the next bit out
    in_(pins, 1).side(0)
    jmp(y_dec, "bit").side(0)
    mov(y, x).side(0)
    label("gain")
    nop().side(1)[1]
    jmp(y_dec, "gain").side(0)[1]
    push(block).side(0)
    wrap()


class HX711PIO:
    def __init__(self, dout, sck, gain=128, sm_id=0, clock=time):
        self._dout_pin = dout
        self._sck_pin = sck
        self._sm = rp2.StateMachine(sm_id)
        self._ticks = clock.ticks_ms
        self._diff = clock.ticks_diff
        self.error = OK
        self.data_gain = 128
        self._next_gain = 128
        self.set_gain(gain)

    def _start(self):
        # A power cycle, then the state machine from its first instruction:
        # the chip is then at A/128 for its first conversion, whatever it was.
        self.power_down()
        time.sleep_us(100)
        self.power_up()

    def set_gain(self, gain):
        if gain not in _PULSES:
            raise ValueError("HX711 gain %r: 128 or 64 (input A), 32 (input B)" % gain)
        self.gain = gain
        self._start()

    def ready(self):
        return self._sm.rx_fifo() > 0

    def read(self):
        # Newest conversion as signed counts, or None (ERR_NOT_READY).
        sm = self._sm
        if not sm.rx_fifo():
            self.error = ERR_NOT_READY
            return None
        v = 0
        while sm.rx_fifo():
            v = sm.get() & 0xFFFFFF
            self.data_gain = self._next_gain
            self._next_gain = self.gain
        self.error = OK
        if v & 0x800000:
            v -= 0x1000000
        return v

    def wait_ready(self, timeout_ms):
        t0 = self._ticks()
        while not self._sm.rx_fifo():
            if self._diff(self._ticks(), t0) >= timeout_ms:
                self.error = ERR_TIMEOUT
                return False
            time.sleep_us(200)
        return True

    def read_blocking(self, timeout_ms):
        if not self.wait_ready(timeout_ms):
            return None
        return self.read()

    def power_down(self):
        # Stop the state machine and hold SCK high from the CPU: the chip
        # sleeps after 60 us.
        self._sm.active(0)
        self._sck_pin.init(Pin.OUT, value=1)

    def power_up(self):
        # SCK goes low when the state machine takes the pin back; the chip
        # wakes at A/128 and this driver's pulses set the gain from then on.
        sm = self._sm
        sm.init(_hx711, freq=_FREQ, sideset_base=self._sck_pin, in_base=self._dout_pin)
        while sm.rx_fifo():
            sm.get()  # words from before the restart
        sm.put(_PULSES[self.gain] - 1)
        sm.active(1)
        self.data_gain = 128
        self._next_gain = 128

    def reset(self):
        self._start()
