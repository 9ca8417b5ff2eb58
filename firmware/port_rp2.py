# The HAL on the Raspberry Pi Pico (RP2040), with the rp2 port's machine API.
# The names and their meaning are the table "HAL interface" in README.md; what
# both boards do alike (valves and their pulse timer, the link, pins, I2C,
# PWM) is port_common.py, and this file adds what the RP2040 does its own way.
# port_esp32.py provides the same names, and tests/test_ports.py runs the two
# against the same fake board and type-checks them against the boards' stubs.
import machine
import port_common
from port_common import *  # noqa: F403

PORT = "rp2"

# Pulses end by a virtual timer (-1): the rp2 port runs it on a hardware alarm.
Valve = port_common.PulsedValve

# The RP2040 watchdog counts 24 bits of microseconds at most.
WDT_MAX_MS = 8388


def ADC(pin):
    return machine.ADC(machine.Pin(pin))


def WDT(timeout_ms):
    if not 1 <= timeout_ms <= WDT_MAX_MS:
        raise ValueError(
            "watchdog timeout %d ms: the RP2040 allows 1 to %d" % (timeout_ms, WDT_MAX_MS)
        )
    return machine.WDT(timeout=timeout_ms)
