# The sim HAL: the same names as port_rp2 / port_esp32 (firmware/README.md,
# "HAL interface"), backed by a virtual clock, the plant model and simulated
# buses, so the unchanged firmware runs in the MicroPython unix port.
#
# Time is virtual: idle_until() advances it, steps the plant in segments
# between valve events (a 5 ms pulse inside a 50 ms tick is 5 ms of flow),
# and, when a speed is set, sleeps so that simulated time runs `speed` times
# faster than the wall clock. The millisecond counter starts a minute before
# its 2**30 wrap, so every run longer than a minute crosses it, as a board
# does after 12.4 days.
#
#     port_sim.setup(profile, plant, fs="/tmp/x/", link=None, speed=0)
#     import hal   # -> this module's names
import sys
import time

import plant as _plant_mod  # noqa: F401  (documents the dependency)
import simbus

PORT = "sim"
_PERIOD = 1 << 30
_MASK = _PERIOD - 1
_HALF = _PERIOD >> 1
_START = _PERIOD - 60000

FS = ""
_now = 0  # virtual ms since boot (not wrapped)
_plant = None
_speed = 0
_wall0 = 0
_sim0 = 0
_valves = []  # every Valve, to close at its time
_pins = {}  # pin number -> simulated pin (HX711 pins)
_buses = {}  # i2c id -> SimI2C
_adcs = {}  # pin -> callable returning volts
_outputs = {}  # pin -> last level / duty, for tests and the truth log
_inputs = {}  # pin -> level, set by tests or scenarios (trigger input)
_link = None
_reset_cause = 0
_wdt = None
_hooks = []  # called with the virtual time after each advance (truth log)


class WatchdogReset(Exception):
    # The simulated hardware watchdog fired: the runner reboots the device.
    pass


def ticks_ms():
    return (_START + _now) & _MASK


def ticks_diff(a, b):
    return ((a - b + _HALF) & _MASK) - _HALF


def ticks_add(t, d):
    return (t + d) & _MASK


def now_ms():
    # Virtual ms since boot, unwrapped (sim only: models and logs).
    return _now


def _advance_plant(to):
    global _now
    while _now < to:
        # Next valve event before `to`.
        nxt = to
        for v in _valves:
            if v._open and v._close_at < nxt:
                nxt = v._close_at
        if nxt > _now:
            _now = nxt
            _plant.advance_to(_now / 1000.0)
        for v in _valves:
            if v._open and v._close_at <= _now:
                v._set(False)
    for h in _hooks:
        h(_now)


def idle_until(t):
    d = ticks_diff(t, ticks_ms())
    if d <= 0:
        return
    target = _now + d
    if _wdt is not None and target - _wdt.fed > _wdt.timeout:
        # The loop did not feed in time: the board resets at that moment.
        _advance_plant(_wdt.fed + _wdt.timeout)
        raise WatchdogReset()
    _advance_plant(target)
    if _speed:
        wall = time.ticks_ms()
        due = time.ticks_add(_wall0, int((_now - _sim0) / _speed))
        wait = time.ticks_diff(due, wall)
        if wait > 0:
            time.sleep_ms(wait)


def advance(ms):
    # Sim only: let time pass without a tick (tests, boot delays).
    _advance_plant(_now + ms)


class Valve:
    def __init__(self, pin):
        self.pin = pin
        self._holder, self._attr = _valve_map.get(pin, (None, None))
        self._open = False
        self._close_at = 0
        self.opened = 0  # openings, for tests
        _valves.append(self)
        self._set(False)

    def _set(self, on):
        self._open = on
        _outputs[self.pin] = 1 if on else 0
        if self._holder is not None:
            setattr(self._holder, self._attr, on)

    def open(self):
        self._close_at = 1 << 62
        if not self._open:
            self.opened += 1
        self._set(True)

    def pulse(self, ms):
        if not self._open:
            self.opened += 1
        self._close_at = _now + ms
        self._set(True)

    def close(self):
        if self._open:
            self._set(False)

    def is_open(self):
        return self._open


class Out:
    def __init__(self, pin, level=0):
        self.pin = pin
        _outputs[pin] = level

    def value(self, v=None):
        if v is None:
            return _outputs[self.pin]
        _outputs[self.pin] = 1 if v else 0


class In:
    def __init__(self, pin, pull_up=False):
        self.pin = pin
        if pin not in _inputs:
            _inputs[pin] = 1 if pull_up else 0

    def value(self):
        return _inputs[self.pin]


def set_input(pin, level):
    _inputs[pin] = level


def output(pin):
    return _outputs.get(pin)


def Pin(pin):
    return _pins[pin]


def I2C(bus):
    return _buses[bus["id"]]


class AnalogOut:
    def __init__(self, pin, freq_hz):
        self.pin = pin
        # (regulator, V per count) where the pin is a regulator's command
        self._sink = _analog_map.get(pin)
        _outputs[pin] = 0

    def write_u16(self, v):
        _outputs[self.pin] = v
        if self._sink is not None:
            reg, k = self._sink
            reg.command_v = v * k


class ADC:
    def __init__(self, pin):
        self._volts = _adcs.get(pin)

    def read_u16(self):
        if self._volts is None:
            return 0
        v = int(self._volts() / 3.3 * 65535)
        return 0 if v < 0 else (65535 if v > 65535 else v)


class WDT:
    def __init__(self, timeout_ms):
        global _wdt
        self.timeout = timeout_ms
        self.fed = _now
        _wdt = self

    def feed(self):
        self.fed = _now


def Link():
    return _link


def reset_cause():
    return _reset_cause


def unique_id():
    return b"SIM00001"


class StdioLink:
    # The board's USB serial as the sim sees it: stdin and stdout, which the
    # `isopress sim` launcher connects to a pty. Reads never block.
    def __init__(self):
        import select

        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._one = bytearray(1)
        self.closed = False

    def read_into(self, buf):
        n = 0
        size = len(buf)
        while n < size and self._poll.poll(0):
            if self._in.readinto(self._one) != 1:
                self.closed = True  # the launcher went away
                break
            buf[n] = self._one[0]
            n += 1
        return n

    def write(self, buf, n):
        self._out.write(memoryview(buf)[:n])
        self._out.flush()


class NullLink:
    # A link nobody listens to: long runs (benchmarks) that need no frames.
    def __init__(self):
        self.written = 0

    def read_into(self, buf):
        return 0

    def write(self, buf, n):
        self.written += n


class MemoryLink:
    # In-process link for tests and benchmarks: bytes in, bytes out.
    def __init__(self):
        self.rx = bytearray()
        self.tx = bytearray()

    def read_into(self, buf):
        n = len(self.rx)
        if not n:
            return 0
        if n > len(buf):
            n = len(buf)
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def write(self, buf, n):
        self.tx.extend(memoryview(buf)[:n])


_valve_map = {}
_analog_map = {}  # command pin -> (plant regulator, V per duty count)


def _signal_volts(holder, sensor, supply=False):
    # The voltage at the ADC pin for a transducer on this holder.
    if supply:
        r = sensor.get("supply_divider_ratio", 1.0)
        return lambda: holder.supply_v * r
    sig = sensor.get("signal")
    if sig == "current_4_20ma":
        shunt = sensor.get("shunt_ohm", 100.0)

        def amps():
            s = holder.signal()
            return 0.0 if s is None else s / 1000.0 * shunt

        return amps
    r = sensor.get("divider_ratio", 1.0)

    def volts():
        s = holder.signal()
        return 0.0 if s is None else s * r

    return volts


def _route_regulator(profile, c, h):
    # A proportional regulator: PWM duty through the filter and amplifier to
    # its command input, its monitor through the divider to the ADC pin, and
    # its isolation valve. A profile block without a regulator in the plant
    # drives nothing and reads 0 V, as an unplugged one would.
    pb = c.get("proportional")
    reg = h.regulator
    if not pb or reg is None:
        return
    reg.command_v = 0.0  # a reset leaves the PWM pin low until the firmware writes
    ao = profile.get("analog_out") or {}
    _analog_map[pb["command_pin"]] = (reg, ao.get("pwm_v_high", 3.3) * pb["amp_gain"] / 65535.0)
    r = pb["monitor_divider_ratio"]
    _adcs[pb["monitor_pin"]] = lambda: reg.monitor_v() * r
    _valve_map[pb["isolate_pin"]] = (reg, "valve")


def setup(profile, plant, fs="", link=None, speed=0, reset_cause=0, keep_time=False):
    # Build the simulated board for this profile around this plant. With
    # keep_time the virtual clock goes on (a reboot: the plant does not stop).
    global _plant, FS, _link, _speed, _wall0, _sim0, _reset_cause, _wdt, _now
    _plant = plant
    FS = fs
    _link = link
    _speed = speed
    _reset_cause = reset_cause
    _wdt = None
    if not keep_time:
        _now = 0
    _wall0 = time.ticks_ms()
    _sim0 = _now
    del _valves[:]
    _pins.clear()
    _buses.clear()
    _valve_map.clear()
    _analog_map.clear()
    _adcs.clear()
    for bus in profile.get("i2c", ()):
        _buses[bus["id"]] = simbus.SimI2C(now_ms, bus.get("freq_hz", 100000))
    adcs = {}
    for a in profile.get("adcs", ()):
        adcs[a["name"]] = a
    inputs_of = {}  # adc name -> {input: volts callable}
    for c in profile["channels"]:
        n = c["channel"]
        h = plant.holder(n)
        if "fill_pin" in c:
            _valve_map[c["fill_pin"]] = (h, "fill")
        if "vent_pin" in c:
            _valve_map[c["vent_pin"]] = (h, "vent")
        s = c["sensor"]
        t = s["type"]
        if t in ("ads1115", "ads1015"):
            d = inputs_of.setdefault(s["adc"], {})
            d[s["input"]] = _signal_volts(h, s)
            if "supply_input" in s:
                d[s["supply_input"]] = _signal_volts(h, s, supply=True)
        elif t == "hx711":
            rate = s.get("rate_hz", 10)
            m = simbus.HX711Model(now_ms, h.signal, rate=rate, seed=1000 + n)
            _pins[s["dout"]] = m.dout
            _pins[s["sck"]] = m.sck
        elif t == "mcu_adc":
            _adcs[s["pin"]] = _signal_volts(h, s)
        _route_regulator(profile, c, h)
    for name, inputs in inputs_of.items():
        a = adcs[name]

        def volts(i, inputs=inputs):
            f = inputs.get(i)
            return f() if f is not None else 0.0

        model = simbus.ADS1115Model(now_ms, volts, kind=a.get("type", "ads1115"))
        _buses[a["bus"]].attach(a["address"], model)
