# Runs under MicroPython: drives firmware/profile.py against a fake channel in
# virtual time for tests/test_profile.py, one JSON request per line in, one
# JSON reply out. Every reply carries the profile's state and what happened
# since the last reply: the channel commands and the events, each stamped
# with the virtual ms elapsed since "new".
import gc
import profile

import jsonline
import wire

_R = wire.codes(wire.RESULTS)
PERIOD = 1 << 30  # the boards' ticks_ms period
HALF = PERIOD >> 1


def ticks_add(t, ms):
    return (t + ms) & (PERIOD - 1)


def ticks_diff(a, b):
    return ((a - b + HALF) & (PERIOD - 1)) - HALF


class FakeChannel:
    # The interface profile.py drives, with a setpoint that ramps in virtual
    # time at the commanded rate (0 = the limit in that direction).
    def __init__(self, number, max_working, ramp_up, ramp_down, setpoint):
        self.number = number
        self.max_working = max_working
        self.ramp_up = ramp_up
        self.ramp_down = ramp_down
        self.setpoint = setpoint
        self.target = setpoint
        self.ramping = False
        self.latched = False
        self.measured = True  # False: no sample yet since boot, as a real channel at boot
        self._rate = 0
        self._acc = 0

    def command(self, target, rate, source):
        if self.latched:
            r = _R["LATCHED"]
        elif not self.measured:
            r = _R["BAD_STATE"]
        elif target < 0 or target > self.max_working:
            r = _R["OUT_OF_RANGE"]
        else:
            limit = self.ramp_up if target >= self.setpoint else self.ramp_down
            if rate < 0 or rate > limit:
                r = _R["OUT_OF_RANGE"]
            else:
                r = _R["OK"]
                self.target = target
                self._rate = rate or limit
                self._acc = 0
                self.ramping = target != self.setpoint
        COMMANDS.append([W.elapsed, target, rate, source, r])
        return r

    def tick(self, dt):
        sp = self.setpoint
        t = self.target
        if sp == t:
            self.ramping = False
            return
        self._acc += self._rate * dt
        step = self._acc // 1000
        self._acc -= step * 1000
        if t > sp:
            sp += step
            if sp > t:
                sp = t
        else:
            sp -= step
            if sp < t:
                sp = t
        self.setpoint = sp
        self.ramping = sp != t


class World:
    def __init__(self):
        self.now = 0
        self.elapsed = 0
        self.ch = None
        self.prof = None
        self.params = None
        self.fs = ""


W = World()
COMMANDS = []
EVENTS = []


def emit(kind, channel, code, a, b, c):
    EVENTS.append([W.elapsed, kind, channel, code, a, b, c])


def make_channel(setpoint):
    p = W.params
    return FakeChannel(p["number"], p["max_working"], p["ramp_up"], p["ramp_down"], setpoint)


def state():
    p = W.prof
    ch = W.ch
    return {
        "running": p.running,
        "step": p.step,
        "waiting": p.waiting,
        "cycle": p.cycle,
        "n": p.n,
        "save_errors": p.save_errors,
        "restore_status": p.restore_status,
        "setpoint": ch.setpoint,
        "target": ch.target,
        "ramping": ch.ramping,
        "now": W.now,
        "elapsed": W.elapsed,
    }


def advance_clock(dt):
    W.now = ticks_add(W.now, dt)
    W.elapsed += dt
    W.ch.tick(dt)
    W.prof.tick(W.now)


def run(req):
    # Ticks every dt ms for ms, or until the condition named by `until`.
    dt = req.get("dt", 10)
    left = req["ms"]
    until = req.get("until")
    p = W.prof
    wrapped = False
    while left > 0:
        before = W.now
        advance_clock(dt)
        if W.now < before:
            wrapped = True
        left -= dt
        if until == "idle" and not p.running:
            break
        if until == "waiting" and p.waiting:
            break
        if until == "step" and p.step == req["step"]:
            break
    return {"wrapped": wrapped}


def alloc(req):
    # Heap bytes that ticking allocates (the fake channel allocates nothing).
    dt = req.get("dt", 10)
    n = req["ms"] // dt
    ch = W.ch
    prof = W.prof
    now = W.now
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    i = 0
    while i < n:
        now = ticks_add(now, dt)
        ch.tick(dt)
        prof.tick(now)
        i += 1
    used = gc.mem_alloc() - before
    gc.enable()
    W.now = now
    W.elapsed += n * dt
    return {"bytes": used, "ticks": n}


def handle(req):
    op = req["op"]
    p = W.prof
    if op == "new":
        W.params = req
        W.fs = req["fs"]
        W.now = req.get("t0", PERIOD - 3000)
        W.elapsed = 0
        W.ch = make_channel(req.get("setpoint", 0))
        W.prof = profile.Profile(W.ch, emit, W.fs, ticks_diff)
        del COMMANDS[:]
        del EVENTS[:]
        return {}
    if op == "reset":
        # A board reset: a fresh channel (at the setpoint its own boot gives
        # it) and a fresh Profile on the same files, restored.
        W.ch = make_channel(req.get("setpoint", 0))
        W.ch.measured = req.get("measured", True)
        W.prof = profile.Profile(W.ch, emit, W.fs, ticks_diff)
        W.prof.restore(W.now)
        return {}
    if op == "load":
        steps = req["steps"]
        values = [req.get("channel", W.ch.number)]
        for s in steps:
            values.extend(s)
        # frame.unpack fills a list sized for the largest frame.
        values.extend([0] * (5 * profile.MAX_STEPS + 1 - len(values)))
        r, v = p.load(values, req.get("n_items", len(steps)))
        return {"result": r, "value": v}
    if op == "start":
        return {"result": p.start(req["from_step"], W.now)}
    if op == "stop":
        return {"result": p.stop(W.now)}
    if op == "advance":
        return {"result": p.advance(req["from_step"], req["cycle"], W.now)}
    if op == "trigger":
        p.trigger(W.now)
        return {}
    if op == "run":
        return run(req)
    if op == "alloc":
        return alloc(req)
    if op == "latch":
        W.ch.latched = req["on"]
        return {}
    if op == "measured":
        W.ch.measured = True
        return {}
    if op == "host_set":
        return {"result": W.ch.command(req["target"], req.get("rate", 0), 0)}
    if op == "state":
        return {}
    return {"exception": "unknown op " + op}


def handle_and_report(req):
    # Every reply carries the profile's state and what it asked of the
    # channel and emitted since the last request.
    r = handle(req)
    if "exception" not in r:
        r["state"] = state()
        r["commands"] = COMMANDS[:]
        r["events"] = EVENTS[:]
        del COMMANDS[:]
        del EVENTS[:]
    return r


jsonline.serve(handle_and_report)
