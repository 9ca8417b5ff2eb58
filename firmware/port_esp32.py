# The HAL on the ESP32 DevKitC (ESP32-WROOM-32), with the esp32 port's machine
# API. The names and their meaning are the table "HAL interface" in README.md;
# what both boards do alike (valves and their pulse timer, the link, pins, I2C,
# PWM) is port_common.py, and this file adds what the ESP32 does its own way.
# port_rp2.py provides the same names, and tests/test_ports.py runs the two
# against the same fake board and type-checks them against the boards' stubs.
import machine
import port_common
from port_common import *  # noqa: F403

PORT = "esp32"

# Older esp32 firmware takes the watchdog time-out in whole seconds (a shorter
# one becomes 0 and is refused); from 1 s up it means the same everywhere.
# The config allows 500 ms, so a shorter request gets this: a board that
# resets a little later on a hang beats one that cannot boot.
WDT_MIN_MS = 1000
# IO34-IO39 are input-only and have no pull resistors.
NO_PULL_PINS = (34, 35, 36, 37, 38, 39)


class Valve(port_common.PulsedValve):
    # Hardware timer for valve pulses. Virtual timers (-1) run on the FreeRTOS
    # tick, 10 ms by default, and older firmware has none.
    TIMER_ID = 0


def In(pin, pull_up=False):
    if pull_up and pin in NO_PULL_PINS:
        raise ValueError(
            "IO%d has no internal pull-up: fit an external one and set the "
            "profile's pull to external" % pin
        )
    return port_common.In(pin, pull_up)


def ADC(pin):
    # 11 dB attenuation: the full 0-3.1 V range instead of 0-1.1 V.
    return machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)


def WDT(timeout_ms):
    if timeout_ms < 1:
        raise ValueError("watchdog timeout %d ms: must be positive" % timeout_ms)
    if timeout_ms < WDT_MIN_MS:
        timeout_ms = WDT_MIN_MS
    return machine.WDT(timeout=timeout_ms)
