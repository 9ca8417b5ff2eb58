# What the two boards' HALs do the same way, on the machine API the rp2 and
# esp32 ports share. port_rp2.py and port_esp32.py take these names with
# `from port_common import *` and add what their board does its own way (and
# their Valve, from PulsedValve); the names and their meaning are the table
# "HAL interface" in README.md.
# Imported only on a board (or under tests/test_ports.py's fake board): the
# sim port has a HAL of its own.
import select
import sys
import time

import machine
import micropython

# Littlefs is mounted at "/" on the boards. An absolute prefix keeps the
# config where it belongs even if something changes the working directory.
FS = "/"

ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff
ticks_add = time.ticks_add

# A deadline further ahead than this is a caller's bug or a corrupted tick;
# coming back after this long keeps the loop, and the watchdog feed, alive.
IDLE_MAX_MS = 1000
# Longer than any fill or vent pulse the regulator asks for; anything longer is
# a bug that must not hold a valve open.
PULSE_MAX_MS = 60000
# A wedged I2C device (held SDA, clock stretching) must not stall the tick.
I2C_TIMEOUT_US = 10000
# Link writes go out in pieces of 64 bytes, so a write never stalls the tick
# for long: on the rp2 that is one USB full-speed packet, and when the host
# stops reading the CDC buffer fills and the rest is dropped instead of one big
# write waiting out the USB stack's time-out; on the ESP32 the console drains
# at the baud rate whether or not the host reads, and a piece takes 5.6 ms at
# 115200 baud.
LINK_CHUNK = 64
# The host writes each frame in one piece; this much silence means the next
# byte starts a new frame (see Link).
LINK_QUIET_MS = 500


def idle_until(t):
    wait = time.ticks_diff(t, time.ticks_ms())
    if wait > IDLE_MAX_MS:
        t = time.ticks_add(time.ticks_ms(), IDLE_MAX_MS)
    while True:
        # Pulses end on time even if their timer callback was lost.
        step = _service_pulses()
        wait = time.ticks_diff(t, time.ticks_ms())
        if wait <= 0:
            return
        if 0 < step < wait:
            wait = step
        # sleep_ms services USB (rp2) or yields to FreeRTOS (esp32), and runs
        # scheduled timer callbacks meanwhile.
        time.sleep_ms(wait)


def Out(pin, level=0):
    return machine.Pin(pin, machine.Pin.OUT, value=level)


def In(pin, pull_up=False):
    if pull_up:
        return machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP)
    # None switches the pull off, whatever the pin had before: the RP2040
    # resets with its pull-downs on, which would load an external pull-up. The
    # stubs type `pull` as int only.
    return machine.Pin(pin, machine.Pin.IN, None)  # pyright: ignore[reportArgumentType]


def Pin(pin):
    return machine.Pin(pin)


class _Pulses:
    # Closes pulsed valves on time with one one-shot timer for all of them.
    # Timer callbacks are scheduled (soft; the ESP32 refuses "hard") through a
    # queue only a few entries deep: one timer per valve could overflow it when
    # several pulses end together, and a dropped callback would leave a valve
    # open (the ESP32 also has only four hardware timers for six valves). With
    # one timer there is at most one callback in flight, and idle_until()
    # closes valves itself, waking at each pulse's end, in case even that one
    # was lost.
    def __init__(self, timer_id):
        self.valves = []
        self.timer = machine.Timer(timer_id)
        self.armed = False
        self.due = 0
        self._fire = self.fire  # bound once: arming must not allocate

    def fire(self, _timer):
        self.armed = False
        self.service()

    def service(self):
        # Closes the valves whose pulse has ended; returns the ms to the next
        # end, -1 if none is pending.
        now = time.ticks_ms()
        nearest = -1
        for v in self.valves:
            if v.pulsing:
                left = time.ticks_diff(v.until, now)
                if left <= 0:
                    v.pin.value(0)
                    v.pulsing = False
                elif nearest < 0 or left < nearest:
                    nearest = left
        if nearest > 0:
            self.arm(now, nearest)
        return nearest

    def arm(self, now, ms):
        due = time.ticks_add(now, ms)
        # A timer already set to fire no later is enough, unless its time has
        # passed without the callback (lost): then set it again.
        if (
            self.armed
            and time.ticks_diff(self.due, due) <= 0
            and time.ticks_diff(self.due, now) >= 0
        ):
            return
        self.due = due
        self.armed = True
        self.timer.init(mode=machine.Timer.ONE_SHOT, period=ms, callback=self._fire)


_pulses = None


def _service_pulses():
    if _pulses is None:
        return -1
    return _pulses.service()


class PulsedValve:
    # The HAL's Valve: a normally-closed solenoid on a low-side MOSFET, pin
    # high = open. The gate pull-down keeps it closed while the pin floats
    # (reset, boot). A port takes it as its Valve, or a subclass naming the
    # machine.Timer that ends every valve's pulses: -1, a virtual timer, here.
    TIMER_ID = -1

    def __init__(self, pin):
        global _pulses
        self.pin = machine.Pin(pin, machine.Pin.OUT, value=0)
        self.pulsing = False
        self.until = 0
        if _pulses is None:
            _pulses = _Pulses(self.TIMER_ID)
        _pulses.valves.append(self)

    def open(self):
        self.pulsing = False
        self.pin.value(1)

    def close(self):
        self.pulsing = False
        self.pin.value(0)

    def pulse(self, ms):
        if ms <= 0:
            self.close()
            return
        if ms > PULSE_MAX_MS:
            raise ValueError("valve pulse of %d ms: longer than %d ms" % (ms, PULSE_MAX_MS))
        now = time.ticks_ms()
        self.until = time.ticks_add(now, ms)
        self.pulsing = True
        self.pin.value(1)
        if _pulses is not None:
            _pulses.arm(now, ms)

    def is_open(self):
        return self.pin.value() == 1


def _bus_key(bus, key):
    if not isinstance(bus, dict) or key not in bus:
        raise ValueError("i2c bus entry (board profile i2c[]) needs the key %s" % key)
    return bus[key]


def I2C(bus):
    return machine.I2C(
        _bus_key(bus, "id"),
        sda=machine.Pin(_bus_key(bus, "sda")),
        scl=machine.Pin(_bus_key(bus, "scl")),
        freq=_bus_key(bus, "freq_hz"),
        timeout=I2C_TIMEOUT_US,
    )


class AnalogOut:
    def __init__(self, pin, freq_hz):
        self.pwm = machine.PWM(machine.Pin(pin), freq=freq_hz, duty_u16=0)

    def write_u16(self, v):
        if v < 0:
            v = 0
        elif v > 65535:
            v = 65535
        self.pwm.duty_u16(v)


class Link:
    # The board's console carries the binary frames: USB CDC on the rp2, UART0
    # through the board's USB bridge on the ESP32.
    #
    # Ctrl-C: the REPL would turn every 0x03 byte into a KeyboardInterrupt,
    # and 0x03 occurs inside frames, so interception is switched off. The
    # sequence CR, Ctrl-C where a frame would start (after a 0x00 delimiter, or
    # after LINK_QUIET_MS of silence) cannot be protocol traffic: every frame
    # starts with 0x00, and after a delimiter 0x0D 0x03 would be COBS code 13
    # followed by protocol version 3. It is what mpremote (and so `isopress
    # flash`) sends first, so the link raises KeyboardInterrupt there and
    # main.py stops with the valves closed and the REPL free.
    def __init__(self):
        micropython.kbd_intr(-1)
        self.inp = sys.stdin.buffer
        self.out = sys.stdout.buffer
        self.rpoll = select.poll()
        self.rpoll.register(sys.stdin, select.POLLIN)
        self.wpoll = select.poll()
        self.wpoll.register(sys.stdout, select.POLLOUT)
        self.one = bytearray(1)
        self.last_rx = time.ticks_ms()
        self.at_start = True
        self.cr = False
        self.dropped = 0  # writes cut short because the host was not reading

    def _ready(self, poller, event):
        for _obj, ev in poller.ipoll(0):
            if ev & event:
                return True
        return False

    def read_into(self, buf):
        now = time.ticks_ms()
        if time.ticks_diff(now, self.last_rx) >= LINK_QUIET_MS:
            self.at_start = True
            # Held at the threshold so a silence of days cannot wrap the diff.
            self.last_rx = time.ticks_add(now, -LINK_QUIET_MS)
        n = 0
        size = len(buf)
        one = self.one
        # Byte by byte: a stdio read blocks until it has all it asked for.
        while n < size and self._ready(self.rpoll, select.POLLIN):
            if self.inp.readinto(one) != 1:
                break
            b = one[0]
            if b == 3 and self.cr:
                micropython.kbd_intr(3)
                raise KeyboardInterrupt
            self.cr = b == 13 and self.at_start
            self.at_start = b == 0
            buf[n] = b
            n += 1
        if n:
            self.last_rx = now
        return n

    def write(self, buf, n):
        off = 0
        while off < n:
            if not self._ready(self.wpoll, select.POLLOUT):
                self.dropped += 1
                return off
            k = n - off
            if k > LINK_CHUNK:
                k = LINK_CHUNK
            # MicroPython streams take write(buf, offset, length): no slice
            # object to allocate.
            w = self.out.write(buf, off, k)
            if not w:
                self.dropped += 1
                return off
            off += w
        return off


def reset_cause():
    return machine.reset_cause()


def unique_id():
    # The RP2040 reports its flash chip's 8-byte id, the ESP32 its 6-byte
    # base MAC address: padded or cut to 8 either way.
    uid = bytes(machine.unique_id())
    return (uid + bytes(8))[:8]
