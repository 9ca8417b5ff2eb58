# Boot entry on a board: MicroPython runs main.py (kept as source; it does not
# run main.mpy) after every reset.
#
# 1. Close every valve named in /board.json, before importing anything that
#    could fail: the gate pull-downs hold the valves closed while the pins
#    float, and this makes it so with the pins driven as well.
# 2. import device; device.run(), which never returns while all is well.
# 3. If it raises: close the valves again (run may have left one open), drive
#    the fault line to FAULT so the cycler stops, report, and reboot after a
#    pause. The reboot is what lets an unattended week-long hold come back
#    from a transient fault (a latched I2C bus, a fragmented heap) through the
#    one path that is tested to start safely. The pause keeps a fault that
#    recurs at once from turning into a reset storm that floods the host with
#    reconnects, leaves the message readable on the console, and gives a
#    person or mpremote time to press Ctrl-C and keep the board in the REPL.
# 4. Ctrl-C (KeyboardInterrupt; see Link in the ports) stops the same way but
#    stays in the REPL, so files can be copied: `isopress flash` relies on it.
#
# Only built-in modules are imported here, so nothing in this file can fail to
# load.
import gc
import json
import sys
import time

import machine
import micropython

BOARD = "/board.json"
CRASH_LOG = "/crash.txt"
RESTART_PAUSE_MS = 5000


def read_profile(path):
    try:
        with open(path) as f:
            profile = json.load(f)
    except Exception:  # missing, unreadable or not JSON: nothing to go by
        return {}
    return profile if isinstance(profile, dict) else {}


def valve_pins(profile):
    pins = []
    channels = profile.get("channels")
    if not isinstance(channels, list):
        return pins
    for ch in channels:
        if isinstance(ch, dict):
            prop = ch.get("proportional")
            iso = prop.get("isolate_pin") if isinstance(prop, dict) else None
            for pin in (ch.get("fill_pin"), ch.get("vent_pin"), iso):
                if isinstance(pin, int) and pin not in pins:
                    pins.append(pin)
    return pins


def close_valves(pins):
    for pin in pins:
        try:
            machine.Pin(pin, machine.Pin.OUT, value=0)
        except Exception:  # one bad pin number must not leave the rest open
            pass


def assert_fault(profile):
    pin = profile.get("fault_out_pin")
    if not isinstance(pin, int):
        return  # unknown: the relay is de-energised while the pin floats anyway
    level = profile.get("fault_out_active_level", 0)
    try:
        machine.Pin(pin, machine.Pin.OUT, value=level)
    except Exception:
        pass


def stop(profile, pins):
    gc.collect()  # after a MemoryError, make room for the calls below
    close_valves(pins)
    assert_fault(profile)


def report(exc):
    sys.print_exception(exc)
    try:
        with open(CRASH_LOG, "w") as f:
            sys.print_exception(exc, f)
    except Exception:
        pass


def boot(path=BOARD, pause_ms=RESTART_PAUSE_MS):
    profile = read_profile(path)
    pins = valve_pins(profile)
    close_valves(pins)
    try:
        import device

        device.run()
        stop(profile, pins)
        print("isopress: device.run() returned")
    except KeyboardInterrupt:
        stop(profile, pins)
        print("isopress: stopped (Ctrl-C), valves closed, fault set; machine.reset() restarts")
        return "stopped"
    except Exception as e:
        stop(profile, pins)
        report(e)
    micropython.kbd_intr(3)
    print("isopress: valves closed, fault line set; restarting in %d ms" % pause_ms)
    try:
        time.sleep_ms(pause_ms)
    except KeyboardInterrupt:
        print("isopress: restart cancelled; machine.reset() restarts")
        return "stopped"
    machine.reset()
    return "reset"  # only where reset() returns: a test's fake machine


if __name__ == "__main__":
    boot()
