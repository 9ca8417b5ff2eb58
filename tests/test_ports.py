"""The rp2 and esp32 HAL ports, hal.py and main.py.

Two kinds of check:
- Behaviour: the port modules run in the real MicroPython interpreter (unix
  port) against a fake board: `machine`, `time`, `micropython`, `select` and
  `sys` replaced in `sys.modules` by objects that keep the boards' rules (ticks
  wrap at 2**30 ms, one-shot timers whose callbacks run while the main code
  sleeps and can be lost, pins with modes and pulls, a console that fills).
- API: pyright (basedpyright) checks the ports against the published
  `micropython-rp2-stubs` and `micropython-esp32-stubs`, so calls into
  `machine` that could only fail on a board fail here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIRMWARE, PROTOCOL, ROOT, tool

PORTS = ["rp2", "esp32"]
PYRIGHT_CONFIG = ROOT / "firmware" / "pyrightconfig.json"
STUB_CACHE = ROOT / ".venv" / "isopress-stubs"
# The MicroPython release the firmware targets (the unix port here is 1.29);
# the cache folder is named after it, so a new pin installs afresh.
STUB_VERSION = "1.29"
STUB_PACKAGES = {
    "rp2": f"micropython-rp2-stubs=={STUB_VERSION}.*",
    "esp32": f"micropython-esp32-stubs=={STUB_VERSION}.*",
}
# What each port must check clean: the port itself, what both ports share, and
# the board-only drivers.
TYPED = {
    "rp2": ["port_rp2.py", "port_common.py", "hx711_pio.py", "main.py"],
    "esp32": ["port_esp32.py", "port_common.py", "main.py"],
}
# The table "HAL interface" in firmware/README.md.
HAL_NAMES = [
    "PORT", "ticks_ms", "ticks_diff", "ticks_add", "idle_until", "Out", "In", "Pin",
    "Valve", "I2C", "AnalogOut", "ADC", "WDT", "Link", "FS", "reset_cause", "unique_id",
]  # fmt: skip

# A board for the unix port. Installed before a port module is imported;
# `B` holds its state for the test snippets.
FAKE_BOARD = r"""
import sys
import json

PERIOD = 1 << 30
MASK = PERIOD - 1
HALF = PERIOD >> 1


class Board:
    def __init__(self, port):
        self.port = port
        self.now = PERIOD - 300  # every test crosses the wrap
        self.level = {}
        self.mode = {}
        self.pull = {}
        self.events = []  # (ticks, pin, level) for every output write
        self.timers = []
        self.timer_inits = 0
        self.drop_callbacks = False
        self.log = True
        self.interrupt_sleep = False
        self.kbd = 3
        self.resets = 0
        self.cause = 1
        self.slept = 0
        self.adc = {}


B = None


def ticks_add(t, d):
    return (t + d) & MASK


def ticks_diff(a, b):
    return ((a - b + HALF) & MASK) - HALF


class FakeTime:
    def ticks_ms(self):
        return B.now

    def ticks_add(self, t, d):
        return (t + d) & MASK

    def ticks_diff(self, a, b):
        return ((a - b + HALF) & MASK) - HALF

    def sleep_ms(self, ms):
        if B.interrupt_sleep:
            raise KeyboardInterrupt
        B.slept += ms
        advance(ms)


def advance(ms):
    # Scheduled (soft) timer callbacks run while the main code sleeps.
    i = 0
    while i < ms:
        B.now = (B.now + 1) & MASK
        for t in B.timers:
            if t.due is not None and ticks_diff(B.now, t.due) >= 0:
                t.due = None
                if not B.drop_callbacks:
                    t.cb(t)
        i += 1


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        if not isinstance(id, int):
            raise TypeError("pin id")
        if B.port == "esp32" and mode == Pin.OUT and 34 <= id <= 39:
            raise ValueError("pin can only be input")
        self.id = id
        if mode != -1:
            B.mode[id] = mode
        if pull != -1:
            B.pull[id] = pull
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return B.level.get(self.id, 0)
        v = 1 if v else 0
        B.level[self.id] = v
        if B.log:
            B.events.append((B.now, self.id, v))


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id):
        if B.port == "rp2" and id != -1:
            raise ValueError("Timer doesn't exist")
        if B.port == "esp32" and not 0 <= id <= 3:
            raise ValueError("invalid Timer number")
        self.id = id
        self.due = None
        self.cb = None
        B.timers.append(self)

    def init(self, *, mode=1, period=-1, callback=None):
        if mode != Timer.ONE_SHOT or period < 1 or callback is None:
            raise ValueError("test expects one-shot timers with a period and callback")
        B.timer_inits += 1
        self.due = ticks_add(B.now, period)
        self.cb = callback

    def deinit(self):
        self.due = None


class PWM:
    def __init__(self, pin, *, freq, duty_u16):
        self.pin = pin.id
        self.freq = freq
        self.duty = duty_u16

    def duty_u16(self, v):
        if not 0 <= v <= 65535:
            raise ValueError("duty")
        self.duty = v


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin, *, atten=None):
        self.pin = pin.id
        self.atten = atten

    def read_u16(self):
        return B.adc.get(self.pin, 0)


class I2C:
    def __init__(self, id, *, scl, sda, freq, timeout):
        self.args = [id, sda.id, scl.id, freq, timeout]


class WDT:
    def __init__(self, *, timeout):
        self.timeout = timeout
        self.fed = 0

    def feed(self):
        self.fed += 1


class Machine:
    Pin = Pin
    Timer = Timer
    PWM = PWM
    ADC = ADC
    I2C = I2C
    WDT = WDT

    def reset_cause(self):
        return B.cause

    def unique_id(self):
        if B.port == "rp2":
            return b"\x11\x22\x33\x44\x55\x66\x77\x88"  # flash id
        return b"\xaa\xbb\xcc\xdd\xee\xff"  # MAC

    def reset(self):
        B.resets += 1


class Micropython:
    def kbd_intr(self, c):
        B.kbd = c


class Stream:
    # One end of the console: `data` waits to be read, `room` bytes may be
    # written before the host must read.
    def __init__(self):
        self.buffer = self
        self.data = bytearray()
        self.pos = 0
        self.room = 1 << 20
        self.written = bytearray()

    def readinto(self, b):
        if self.pos >= len(self.data):
            raise OSError("read would block: the link must poll first")
        b[0] = self.data[self.pos]
        self.pos += 1
        return 1

    def write(self, buf, off, n):
        k = min(n, self.room)
        self.written.extend(bytes(buf[off:off + k]))
        self.room -= k
        return k


class Poll:
    def __init__(self):
        self.regs = []

    def register(self, obj, mask):
        self.regs.append((obj, mask))

    def ipoll(self, timeout):
        out = []
        for obj, mask in self.regs:
            ev = 0
            if mask & 1 and obj.pos < len(obj.data):
                ev |= 1
            if mask & 4 and obj.room > 0:
                ev |= 4
            if ev:
                out.append((obj, ev))
        return out


class Select:
    POLLIN = 1
    POLLOUT = 4

    def poll(self):
        return Poll()


class Sys:
    def __init__(self, platform):
        self.platform = platform
        self.stdin = Stream()
        self.stdout = Stream()
        self.modules = sys.modules

    def print_exception(self, e, f=None):
        (f or sys.stdout).write("Traceback: " + repr(e) + "\n")


def install(port, fake_sys=True):
    global B
    B = Board(port)
    sys.modules["machine"] = Machine()
    sys.modules["time"] = FakeTime()
    sys.modules["micropython"] = Micropython()
    if fake_sys:
        B.sys = Sys(port)
        sys.modules["select"] = Select()
        sys.modules["sys"] = B.sys
    return B


def done(obj):
    print(json.dumps(obj))
"""


def run_mpy(tmp_path: Path, code: str, stdin: bytes = b"") -> dict:
    """Runs `code` (after `import mpboard`) under MicroPython; returns the
    JSON object it printed last."""
    (tmp_path / "mpboard.py").write_text(FAKE_BOARD)
    script = tmp_path / "snippet.py"
    script.write_text("import mpboard\nfrom mpboard import done, advance\n" + code)
    path = os.pathsep.join(str(p) for p in (tmp_path, FIRMWARE, PROTOCOL))
    run = subprocess.run(
        [tool("micropython"), str(script)],
        input=stdin,
        capture_output=True,
        env={**os.environ, "MICROPYPATH": path},
        timeout=60,
    )
    out = run.stdout.decode(errors="replace").strip().splitlines()
    assert run.returncode == 0 and out, f"micropython failed:\n{run.stdout!r}\n{run.stderr!r}"
    return json.loads(out[-1])


def port_snippet(port: str, body: str) -> str:
    return f"B = mpboard.install({port!r})\nimport port_{port} as P\n{body}"


# --- valves ---------------------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
def test_valve_is_closed_at_construction_and_a_pulse_closes_on_time(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
B.level[6] = 1  # whatever the pin was, the valve starts closed
v = P.Valve(6)
closed_at_start = (B.mode[6], v.is_open())
start = B.now
v.pulse(30)
opened = v.is_open()
P.idle_until(P.ticks_add(start, 29))
at_29 = v.is_open()
P.idle_until(P.ticks_add(start, 40))
closes = [P.ticks_diff(t, start) for t, pin, lvl in B.events if pin == 6 and lvl == 0]
done({"start": closed_at_start, "opened": opened, "at_29": at_29, "open_end": v.is_open(),
      "closes": closes, "timer_ids": [t.id for t in B.timers]})
""",
        ),
    )
    assert got["start"] == [1, False]
    assert got["opened"] is True
    assert got["at_29"] is True
    assert got["open_end"] is False
    assert got["closes"][-1] == 30  # closed by the timer, to the millisecond
    assert got["timer_ids"] == [-1 if port == "rp2" else 0]


@pytest.mark.parametrize("port", PORTS)
def test_six_valves_share_one_timer_and_each_closes_at_its_own_time(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
pins = [6, 7, 8, 9, 10, 11]
vs = [P.Valve(p) for p in pins]
start = B.now
lengths = [50, 10, 30, 10, 70, 5]
for v, ms in zip(vs, lengths):
    v.pulse(ms)
advance(100)  # no idle_until: only the timer closes them
ends = {}
for t, pin, lvl in B.events:
    if lvl == 0 and P.ticks_diff(t, start) > 0:
        ends[str(pin)] = P.ticks_diff(t, start)
done({"ends": ends, "timers": len(B.timers), "open": [v.is_open() for v in vs]})
""",
        ),
    )
    assert got["timers"] == 1
    assert got["open"] == [False] * 6
    assert got["ends"] == {"6": 50, "7": 10, "8": 30, "9": 10, "10": 70, "11": 5}


@pytest.mark.parametrize("port", PORTS)
def test_close_cancels_a_pulse_open_holds_and_a_new_pulse_retriggers(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
a = P.Valve(6)
b = P.Valve(7)
c = P.Valve(8)
start = B.now
a.pulse(100)
b.pulse(100)
c.pulse(100)
advance(10)
a.close()
b.open()
advance(40)
c.pulse(100)  # at 50: now ends at 150
advance(60)
at_110 = [a.is_open(), b.is_open(), c.is_open()]
advance(40)
c_close = [P.ticks_diff(t, start) for t, pin, lvl in B.events if pin == 8 and lvl == 0]
done({"at_110": at_110, "at_150": [a.is_open(), b.is_open(), c.is_open()], "c": c_close})
""",
        ),
    )
    assert got["at_110"] == [False, True, True]
    assert got["at_150"] == [False, True, False]
    assert got["c"][-1] == 150


@pytest.mark.parametrize("port", PORTS)
def test_pulse_ends_on_time_even_when_the_timer_callback_is_lost(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
v = P.Valve(6)
B.drop_callbacks = True  # the scheduler queue was full when the timer fired
start = B.now
v.pulse(20)
P.idle_until(P.ticks_add(start, 100))
closes = [P.ticks_diff(t, start) for t, pin, lvl in B.events if pin == 6 and lvl == 0]
B.drop_callbacks = False
v.pulse(15)  # the stale timer must not stop a new one from being armed
s2 = B.now
advance(20)
closes2 = [P.ticks_diff(t, s2) for t, pin, lvl in B.events if pin == 6 and lvl == 0]
done({"first": closes[-1], "second": closes2[-1], "open": v.is_open()})
""",
        ),
    )
    assert got["first"] == 20
    assert got["second"] == 15
    assert got["open"] is False


@pytest.mark.parametrize("port", PORTS)
def test_pulse_rejects_bad_lengths_without_touching_the_valve(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
v = P.Valve(6)
try:
    v.pulse(P.PULSE_MAX_MS + 1)
    err = None
except ValueError as e:
    err = str(e)
after_bad = (v.is_open(), B.timer_inits)
v.open()
v.pulse(0)
done({"err": err, "after_bad": after_bad, "after_zero": v.is_open()})
""",
        ),
    )
    assert "longer than 60000 ms" in got["err"]
    assert got["after_bad"] == [False, 0]
    assert got["after_zero"] is False


@pytest.mark.parametrize("port", PORTS)
def test_pulsing_and_idling_allocate_nothing(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
import gc
vs = [P.Valve(p) for p in (6, 7, 8, 9, 10, 11)]
B.log = False  # the fake's own record would allocate


def cycle():
    t = P.ticks_ms()
    for i in range(6):
        vs[i].pulse(3 + i)
    vs[0].close()
    vs[1].open()
    P.idle_until(P.ticks_add(t, 20))
    vs[1].close()


def measure():
    cycle()
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(50):
        cycle()
    return gc.mem_alloc() - before


used = measure()
done({"bytes": used, "open": [v.is_open() for v in vs]})
""",
        ),
    )
    assert got["open"] == [False] * 6
    assert got["bytes"] == 0


# --- time -----------------------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
def test_idle_until_waits_across_the_wrap_and_is_bounded(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
start = B.now
t = P.ticks_add(start, 500)  # past the 2**30 wrap
P.idle_until(t)
first = [P.ticks_diff(B.now, start), B.now < start]
s0 = B.slept
P.idle_until(P.ticks_add(B.now, -50))  # already passed: no sleep
past = B.slept - s0
s1 = B.now
P.idle_until(P.ticks_add(B.now, 1 << 28))  # a deadline days ahead: a bug
done({"first": first, "past": past, "far": P.ticks_diff(B.now, s1),
      "max": P.IDLE_MAX_MS})
""",
        ),
    )
    assert got["first"] == [500, True]
    assert got["past"] == 0
    assert got["far"] == got["max"] == 1000


# --- pins and peripherals --------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
def test_digital_pins(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
o = P.Out(5, 1)
o0 = P.Out(4)
i = P.In(3, pull_up=True)
j = P.In(27)
B.level[27] = 1
raw = P.Pin(12)
done({"out": [B.mode[5], o.value(), o0.value()], "in": [B.mode[3], B.pull[3], B.pull[27]],
      "j": j.value(), "raw_configured": 12 in B.mode})
""",
        ),
    )
    assert got["out"] == [1, 1, 0]
    assert got["in"] == [0, 1, None]  # no pull unless asked for
    assert got["j"] == 1
    assert got["raw_configured"] is False  # bit-banging drivers set the mode


def test_esp32_refuses_a_pull_up_on_an_input_only_pin(tmp_path):
    got = run_mpy(
        tmp_path,
        port_snippet(
            "esp32",
            """
try:
    P.In(39, pull_up=True)
    err = None
except ValueError as e:
    err = str(e)
done({"err": err, "configured": 39 in B.mode, "plain": P.In(39).value()})
""",
        ),
    )
    assert "IO39 has no internal pull-up" in got["err"]
    assert got["configured"] is False
    assert got["plain"] == 0


@pytest.mark.parametrize("port", PORTS)
def test_i2c_pwm_adc(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
bus = P.I2C({"id": 0, "sda": 4, "scl": 5, "freq_hz": 100000})
try:
    P.I2C({"id": 0, "sda": 4, "freq_hz": 100000})
    err = None
except ValueError as e:
    err = str(e)
a = P.AnalogOut(16, 10000)
duties = []
for v in (-5, 0, 32768, 65535, 70000):
    a.write_u16(v)
    duties.append(a.pwm.duty)
B.adc[26] = 1234
adc = P.ADC(26)
done({"i2c": bus.args, "err": err, "freq": a.pwm.freq, "duties": duties,
      "adc": [adc.read_u16(), adc.atten]})
""",
        ),
    )
    assert got["i2c"] == [0, 4, 5, 100000, 10000]
    assert "needs the key scl" in got["err"]
    assert got["freq"] == 10000
    assert got["duties"] == [0, 0, 32768, 65535, 65535]
    assert got["adc"] == [1234, None if port == "rp2" else 3]


@pytest.mark.parametrize(
    ("port", "good", "got", "bad"),
    [
        ("rp2", [1, 500, 8388], [1, 500, 8388], [0, 8389]),
        # Older esp32 firmware counts whole seconds: shorter requests get 1 s.
        ("esp32", [500, 1000, 30000], [1000, 1000, 30000], [0, -5]),
    ],
)
def test_watchdog_limits(tmp_path, port, good, got, bad):
    result = run_mpy(
        tmp_path,
        port_snippet(
            port,
            f"""
ok = [P.WDT(ms).timeout for ms in {good}]
errs = []
for ms in {bad}:
    try:
        P.WDT(ms)
        errs.append(None)
    except ValueError as e:
        errs.append(str(e))
done({{"ok": ok, "errs": errs}})
""",
        ),
    )
    assert result["ok"] == got
    assert all(e and "watchdog timeout" in e for e in result["errs"])


@pytest.mark.parametrize("port", PORTS)
def test_identity_and_names(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            f"""
B.cause = 3
missing = [n for n in {HAL_NAMES!r} if not hasattr(P, n)]
done({{"port": P.PORT, "fs": P.FS, "cause": P.reset_cause(),
      "uid": P.unique_id().hex(), "missing": missing}})
""",
        ),
    )
    assert got["missing"] == []
    assert got["port"] == port
    assert got["fs"] == "/"
    assert got["cause"] == 3
    assert got["uid"] == ("1122334455667788" if port == "rp2" else "aabbccddeeff0000")


# --- link -----------------------------------------------------------------


@pytest.mark.parametrize("port", PORTS)
def test_link_reads_what_is_there_and_never_waits(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
link = P.Link()
kbd = B.kbd
buf = bytearray(4)
empty = link.read_into(buf)
B.sys.stdin.data.extend(b"\\x00\\x05\\x01\\x03\\x0d\\x03\\x00")  # 0x03 inside a frame
got = []
n = link.read_into(buf)
got.append(bytes(buf[:n]).hex())
n = link.read_into(buf)
got.append(bytes(buf[:n]).hex())
done({"kbd": kbd, "empty": empty, "got": got, "rest": link.read_into(buf)})
""",
        ),
    )
    assert got["kbd"] == -1  # Ctrl-C bytes are data
    assert got["empty"] == 0
    assert got["got"] == ["00050103", "0d0300"]
    assert got["rest"] == 0


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize(
    ("prefix", "quiet_ms", "stops"),
    [
        (b"", 600, True),  # mpremote after a quiet line
        (b"\x00", 0, True),  # right after a frame's delimiter
        (b"\x00\x05\x01", 0, False),  # inside a frame
        (b"\x00\x05\x01", 600, True),  # a frame cut off, then quiet
    ],
)
def test_link_stops_on_cr_ctrl_c_only_where_a_frame_would_start(
    tmp_path, port, prefix, quiet_ms, stops
):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            f"""
link = P.Link()
buf = bytearray(64)
B.sys.stdin.data.extend({prefix!r})
link.read_into(buf)
advance({quiet_ms})
B.sys.stdin.data.extend(b"\\r\\x03\\r\\x01")
try:
    n = link.read_into(buf)
    stopped = False
except KeyboardInterrupt:
    stopped = True
# what follows Ctrl-C is left for the REPL
done({{"stopped": stopped, "kbd": B.kbd, "left": bytes(B.sys.stdin.data[B.sys.stdin.pos:]).hex()}})
""",
        ),
    )
    assert got["stopped"] is stops
    if stops:
        assert got["kbd"] == 3
        assert got["left"] == "0d01"


@pytest.mark.parametrize("port", PORTS)
def test_link_write_drops_instead_of_blocking_when_the_host_does_not_read(tmp_path, port):
    got = run_mpy(
        tmp_path,
        port_snippet(
            port,
            """
link = P.Link()
out = B.sys.stdout
frame = bytes(range(1, 201))
full = link.write(frame, 200)
whole = bytes(out.written) == frame
out.room = 100  # the host stopped reading part way
part = link.write(frame, 150)
out.room = 0
none = link.write(frame, 10)
done({"full": full, "whole": whole, "part": part, "none": none, "dropped": link.dropped})
""",
        ),
    )
    assert got["full"] == 200 and got["whole"] is True
    assert got["part"] == 100
    assert got["none"] == 0
    assert got["dropped"] == 2


@pytest.mark.parametrize("port", PORTS)
def test_link_on_real_streams_moves_bytes_and_allocates_nothing(tmp_path, port):
    # The unix port's own stdin/stdout and select: the same stream API and
    # write(buf, offset, length) as the boards' USB and UART consoles.
    data = bytes(range(256)) * 4
    code = f"""
B = mpboard.install({port!r}, fake_sys=False)
import sys
import gc
import port_{port} as P
link = P.Link()
buf = bytearray(64)
got = bytearray()
while len(got) < {len(data)}:
    n = link.read_into(buf)
    got.extend(buf[:n])
frame = bytearray(b"\\x00" + bytes(range(1, 100)) + b"\\x00")
n = len(frame)


def measure():
    link.write(frame, n)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for _ in range(20):
        link.write(frame, n)
        link.read_into(buf)
    return gc.mem_alloc() - before


used = measure()
sys.stdout.write("\\n")
done({{"same": bytes(got) == {data!r}, "bytes": used, "dropped": link.dropped}})
"""
    got = run_mpy(tmp_path, code, stdin=data)
    assert got == {"same": True, "bytes": 0, "dropped": 0}


# --- hal.py ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "port"), [("rp2", "rp2"), ("esp32", "esp32"), ("linux", "sim")]
)
def test_hal_picks_the_port_by_platform(tmp_path, platform, port):
    # A stand-in for firmware/sim/port_sim.py, which has tests of its own.
    (tmp_path / "port_sim.py").write_text('PORT = "sim"\nFS = "/tmp/sim/"\n')
    got = run_mpy(
        tmp_path,
        f"""
B = mpboard.install("rp2" if {platform!r} != "esp32" else "esp32")
B.sys.platform = {platform!r}


import hal
done({{"port": hal.PORT, "fs": hal.FS, "valve": hasattr(hal, "Valve"),
      "private": hasattr(hal, "_pulses")}})
""",
    )
    assert got["port"] == port
    assert got["fs"] == ("/tmp/sim/" if port == "sim" else "/")
    assert got["valve"] is (port != "sim")
    assert got["private"] is False


# --- main.py --------------------------------------------------------------

RECORD_DEVICE = """
# Stands in for firmware/device.py: records the pins as main.py left them.
import mpboard
B = mpboard.B
B.at_import = {str(p): [B.mode.get(p), B.level.get(p)] for p in (6, 7, 8, 9, 10, 11, 2)}


def run():
    B.level[7] = 1  # a valve left open
    B.level[2] = 1  # fault line healthy
    raise {exc}("sensor bus gone")
"""


def main_snippet(profile: str, exc: str, pause: int = 5000) -> str:
    return f"""
B = mpboard.install("rp2")
for p in (6, 7, 8, 9, 10, 11):
    B.level[p] = 1  # as if left open across a soft reset
B.sys.platform = "rp2"
import main
r = main.boot({profile!r}, {pause})
done({{"r": r, "at_import": B.at_import, "resets": B.resets, "slept": B.slept, "kbd": B.kbd,
      "after": {{str(p): B.level.get(p) for p in (2, 6, 7, 10, 11)}}}})
"""


@pytest.fixture
def board_dir(tmp_path: Path) -> Path:
    profile = json.loads((ROOT / "hardware" / "boards" / "pico.json").read_text())
    (tmp_path / "board.json").write_text(json.dumps(profile))
    return tmp_path


def test_main_closes_valves_first_and_on_a_crash_faults_and_reboots(board_dir):
    (board_dir / "device.py").write_text(RECORD_DEVICE.replace("{exc}", "OSError"))
    got = run_mpy(board_dir, main_snippet(str(board_dir / "board.json"), "OSError"))
    # Every valve named in the profile was driven low before device was imported.
    for p in ("6", "7", "8", "9", "10", "11"):
        assert got["at_import"][p] == [1, 0], p
    assert got["after"] == {"2": 0, "6": 0, "7": 0, "10": 0, "11": 0}
    assert got["r"] == "reset"
    assert got["resets"] == 1
    assert got["slept"] == 5000
    assert got["kbd"] == 3  # the pause can be interrupted from the console


def test_main_ctrl_c_stops_in_the_repl_without_reboot(board_dir):
    (board_dir / "device.py").write_text(RECORD_DEVICE.replace("{exc}", "KeyboardInterrupt"))
    got = run_mpy(board_dir, main_snippet(str(board_dir / "board.json"), "KeyboardInterrupt"))
    assert got["r"] == "stopped"
    assert got["resets"] == 0
    assert got["after"]["7"] == 0 and got["after"]["2"] == 0


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_main_without_a_readable_profile_still_runs_the_device(board_dir, content):
    target = board_dir / "board.json"
    target.unlink()
    if content is not None:
        target.write_text(content)
    (board_dir / "device.py").write_text(RECORD_DEVICE.replace("{exc}", "OSError"))
    got = run_mpy(board_dir, main_snippet(str(target), "OSError", pause=10))
    assert got["at_import"]["6"] == [None, 1]  # nothing known to close
    assert got["r"] == "reset"
    assert got["slept"] == 10


def test_main_pause_before_reboot_can_be_interrupted(board_dir):
    (board_dir / "device.py").write_text(RECORD_DEVICE.replace("{exc}", "OSError"))
    code = main_snippet(str(board_dir / "board.json"), "OSError")
    code = code.replace("import main\n", "import main\nB.interrupt_sleep = True\n")
    got = run_mpy(board_dir, code)
    assert got["r"] == "stopped"
    assert got["resets"] == 0
    assert got["after"]["7"] == 0 and got["after"]["2"] == 0


def test_main_crash_report_reaches_the_log(board_dir):
    (board_dir / "device.py").write_text(RECORD_DEVICE.replace("{exc}", "ValueError"))
    code = main_snippet(str(board_dir / "board.json"), "ValueError", pause=1)
    log = board_dir / "crash.txt"
    code = code.replace("import main\n", f"import main\nmain.CRASH_LOG = {str(log)!r}\n")
    got = run_mpy(board_dir, code)
    assert got["r"] == "reset"
    assert "sensor bus gone" in log.read_text()


# --- type check against the boards' stubs ----------------------------------


def pyright() -> str:
    exe = Path(sys.executable).parent / "basedpyright"
    if not exe.exists():
        pytest.fail("basedpyright is not installed: `pip install basedpyright` (dev extra)")
    return str(exe)


def stubs(port: str) -> Path:
    """The board's stubs, installed once into .venv (pip needs the network only then)."""
    target = STUB_CACHE / f"{port}-{STUB_VERSION}"
    if (target / "machine.pyi").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-compile", "--target", str(partial), STUB_PACKAGES[port]],
        capture_output=True, text=True,
    )  # fmt: skip
    if run.returncode != 0:
        pytest.fail(f"could not install {STUB_PACKAGES[port]}:\n{run.stderr}")
    try:
        partial.rename(target)
    except OSError:  # another run got there first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def check_types(port: str, files: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    # The checked-in config holds the rules; this board's stubs are both the
    # standard library (typeshed layout under stdlib/) and the port modules.
    typeshed = stubs(port)
    config = tmp_path / f"pyright-{port}.json"
    config.write_text(
        json.dumps(
            {"extends": str(PYRIGHT_CONFIG), "typeshedPath": str(typeshed),
             "extraPaths": [str(FIRMWARE), str(PROTOCOL), str(typeshed)]}
        )
    )  # fmt: skip
    return subprocess.run(
        [pyright(), "-p", str(config), *map(str, files)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("port", PORTS)
def test_ports_type_check_against_the_board_stubs(tmp_path, port):
    files = [FIRMWARE / f for f in TYPED[port] if (FIRMWARE / f).exists()]
    run = check_types(port, files, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 errors" in run.stdout


@pytest.mark.parametrize("port", PORTS)
def test_type_check_reports_a_call_the_board_does_not_have(tmp_path, port):
    bad = tmp_path / "wrong.py"
    bad.write_text(
        "import machine\n"
        "machine.Pin(5).nonexistent()\n"
        "machine.PWM(machine.Pin(5), frequency=1000)\n"
    )
    run = check_types(port, [bad], tmp_path)
    assert run.returncode != 0
    assert '"nonexistent"' in run.stdout
    assert '"frequency"' in run.stdout
