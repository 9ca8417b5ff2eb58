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

import hx711
import rp2
from hx711 import OK, HX711Base, signed24
from machine import Pin

# The type checker reads the PIO assembler's names from the board stubs;
# on the board the block never runs (rp2.asm_pio provides them there).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from rp2.asm_pio import *

# hx711's error codes and count limits, for callers that import only this.
ERR_TIMEOUT = hx711.ERR_TIMEOUT
ERR_NOT_READY = hx711.ERR_NOT_READY
MAX_COUNTS = hx711.MAX_COUNTS
MIN_COUNTS = hx711.MIN_COUNTS

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


class HX711PIO(HX711Base):
    def __init__(self, dout, sck, gain=128, sm_id=0, clock=time):
        self._dout_pin = dout
        self._sck_pin = sck
        self._sm = rp2.StateMachine(sm_id)
        super().__init__(clock)
        self.set_gain(gain)

    def set_gain(self, gain):
        # The state machine takes the gain pulses once, at its start: a new
        # gain restarts it (a power cycle, so the chip is at A/128 first).
        super().set_gain(gain)
        self.reset()

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
            self._took_conversion()
        self.error = OK
        return signed24(v)

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
        sm.put(self._extra - 1)
        sm.active(1)
        self._woke()
