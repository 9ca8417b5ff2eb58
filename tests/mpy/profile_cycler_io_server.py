# Runs under MicroPython: drives firmware/cycler_io.py against a fake HAL for
# tests/test_cycler_io.py, one JSON request per line in, one JSON reply out.
import gc

import cycler_io
import jsonline

PERIOD = 1 << 30  # the boards' ticks_ms period
HALF = PERIOD >> 1


def ticks_add(t, ms):
    return (t + ms) & (PERIOD - 1)


def ticks_diff(a, b):
    return ((a - b + HALF) & (PERIOD - 1)) - HALF


class FakePWM:
    def __init__(self, pin, freq_hz):
        self.pin = pin
        self.freq_hz = freq_hz
        self.v = None
        self.writes = 0

    def write_u16(self, v):
        if not 0 <= v <= 65535:
            raise ValueError("duty out of range")
        self.v = v
        self.writes += 1


class FakePin:
    def __init__(self, pin, level, pull_up):
        self.pin = pin
        self.level = level
        self.pull_up = pull_up
        self.writes = 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v
        self.writes += 1


class FakeHal:
    # Shaped like the hal module: plain functions and constructors as
    # attributes, so a stored hal.ticks_diff is not a bound method.
    def __init__(self, now, trigger_level):
        self.now = now
        self.pwms = {}
        self.outs = {}
        self.ins = {}
        self.trigger_level = trigger_level
        self.ticks_diff = ticks_diff
        self.ticks_add = ticks_add
        me = self

        def ticks_ms():
            return me.now

        def AnalogOut(pin, freq_hz):
            o = FakePWM(pin, freq_hz)
            me.pwms[pin] = o
            return o

        def Out(pin, level=0):
            o = FakePin(pin, level, False)
            me.outs[pin] = o
            return o

        def In(pin, pull_up=False):
            o = FakePin(pin, me.trigger_level, pull_up)
            me.ins[pin] = o
            return o

        self.ticks_ms = ticks_ms
        self.AnalogOut = AnalogOut
        self.Out = Out
        self.In = In


class World:
    hal = None
    io = None


W = World()


def pins():
    h = W.hal
    return {
        "pwms": dict(
            (str(p), {"freq_hz": o.freq_hz, "v": o.v, "writes": o.writes})
            for p, o in h.pwms.items()
        ),
        "outs": dict((str(p), {"level": o.level, "writes": o.writes}) for p, o in h.outs.items()),
        "ins": dict((str(p), {"pull_up": o.pull_up}) for p, o in h.ins.items()),
    }


def trigger_run(req):
    # The input follows `levels` ([ms, level] change points from the start);
    # trigger_edge is called every dt ms; returns the ms of each True.
    h = W.hal
    pin = None
    for p in h.ins.values():
        pin = p
    dt = req.get("dt", 1)
    changes = req["levels"]
    k = 0
    t = 0
    edges = []
    wrapped = False
    while t <= req["ms"]:
        while pin is not None and k < len(changes) and changes[k][0] <= t:
            pin.level = changes[k][1]
            k += 1
        if W.io.trigger_edge(h.now):
            edges.append(t)
        before = h.now
        h.now = ticks_add(h.now, dt)
        if h.now < before:
            wrapped = True
        t += dt
    return {"edges": edges, "wrapped": wrapped}


def alloc(req):
    # Heap bytes the three per-tick calls allocate over `ticks` ticks, with
    # the pressure and the trigger input changing as they would.
    h = W.hal
    io = W.io
    pin = None
    for p in h.ins.values():
        pin = p
    ch = req["ch"]
    fs = req["fs_pa"]
    n = req["ticks"]
    now = h.now
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    i = 0
    while i < n:
        now = ticks_add(now, 10)
        io.analog(ch, (i * 7919) % fs)
        io.fault(i & 1)
        if pin is not None:
            pin.level = (i >> 3) & 1
        io.trigger_edge(now)
        i += 1
    used = gc.mem_alloc() - before
    gc.enable()
    h.now = now
    return {"bytes": used}


def handle(req):
    op = req["op"]
    if op == "new":
        W.hal = FakeHal(req.get("t0", PERIOD - 100), req.get("trigger_level", 1))
        try:
            W.io = cycler_io.CyclerIO(req["profile"], W.hal, req["channels"])
        except ValueError as e:
            return {"error": str(e)}
        return {}
    io = W.io
    if op == "analog":
        io.analog(req["ch"], req["p"])
        return {}
    if op == "sweep":
        out = []
        for p in req["pressures"]:
            io.analog(req["ch"], p)
            out.append(io.duty(req["ch"]))
        return {"duties": out}
    if op == "set_scale":
        r, v = io.set_scale(req["ch"], req["fs_pa"], req["fs_mv"])
        return {"result": r, "value": v}
    if op == "fault":
        io.fault(req["active"])
        return {}
    if op == "trigger":
        return trigger_run(req)
    if op == "alloc":
        return alloc(req)
    return {"exception": "unknown op " + op}


def handle_and_report(req):
    # Every reply carries the pins' levels once there is a board.
    r = handle(req)
    if "exception" not in r and W.hal is not None:
        r["pins"] = pins()
    return r


jsonline.serve(handle_and_report)
