# Runs under MicroPython: one firmware Endpoint on an in-memory link, a fake
# device and a settable clock, driven by pytest one JSON line at a time. The
# reply carries every byte the endpoint wrote since the last request, as hex,
# for the host codec to decode.
import gc
from binascii import hexlify, unhexlify

import clock
import endpoint
import frame
import jsonline

PERIOD = 1 << 30  # the boards' ticks period
HALF = 1 << 29


class Time:
    # The boards' wrapping ticks, set by the test.
    def __init__(self, t):
        self.t = t

    def ticks_ms(self):
        return self.t

    def ticks_diff(self, a, b):
        return ((a - b + HALF) % PERIOD) - HALF

    def ticks_add(self, t, ms):
        return (t + ms) % PERIOD


class Link:
    # Input queued by the test, read `chunk` bytes at a time as a UART would
    # deliver it; output copied byte by byte into a preallocated buffer, so
    # the link itself allocates nothing.
    def __init__(self, chunk):
        self.inbuf = b""
        self.inpos = 0
        self.chunk = chunk
        self.out = bytearray(1 << 17)
        self.outpos = 0
        self.overflow = False
        self.reads = 0

    def read_into(self, buf):
        self.reads += 1
        n = len(self.inbuf) - self.inpos
        if n > len(buf):
            n = len(buf)
        if n > self.chunk:
            n = self.chunk
        i = 0
        while i < n:
            buf[i] = self.inbuf[self.inpos]
            self.inpos += 1
            i += 1
        return n

    def write(self, buf, n):
        out = self.out
        o = self.outpos
        if o + n > len(out):
            self.overflow = True
            return
        i = 0
        while i < n:
            out[o] = buf[i]
            o += 1
            i += 1
        self.outpos = o

    def drain(self):
        if self.overflow:
            raise RuntimeError("test link output overflowed")
        data = bytes(self.out[: self.outpos])
        self.outpos = 0
        return data


class Device:
    # Records every command it is given; answers the result and value the
    # test scripted for that message id (default OK, 0).
    def __init__(self, hello_head, hello_items):
        self.hello_head = hello_head
        self.hello_items = hello_items
        self.ack_value = 0
        self.log = []
        self.script = {}
        self.raise_on = -1

    def command(self, msg_id, values, n_items):
        layout = frame.LAYOUTS[msg_id]
        k = len(layout.head_names) + n_items * len(layout.item_names)
        self.log.append([msg_id, values[:k], n_items])
        if msg_id == self.raise_on:
            raise RuntimeError("device handler failed")
        r = self.script.get(msg_id)
        if r is None:
            return 0
        self.ack_value = r[1]
        return r[0]


class Chan:
    def __init__(self, v):
        self.set(v)

    def set(self, v):
        self.number = v[0]
        self.pressure = v[1]
        self.raw = v[2]
        self.setpoint = v[3]
        self.valves = v[4]
        self.mode = v[5]
        self.alarms = v[6]


S = {}


def hx(b):
    return hexlify(b).decode()


def op_new(req):
    tm = Time(req.get("t0", 0))
    clk = clock.Clock(tm.ticks_ms, tm.ticks_diff)
    clk.wraps = req.get("wraps", 0)
    link = Link(req.get("chunk", 64))
    head = req["hello_head"]
    head[5] = unhexlify(head[5])
    dev = Device(head, req["hello_items"])
    ep = endpoint.Endpoint(
        link,
        dev,
        clk,
        req["ring_bytes"],
        req["n_channels"],
        req["silence_ms"],
        req.get("n_events", endpoint.EVENTS_HELD),
        req.get("burst", endpoint.REPLAY_BURST),
    )
    if "sample_seq" in req:
        ep.telemetry_ring.next.set_int(req["sample_seq"])
    if "event_seq" in req:
        ep.event_ring.next.set_int(req["event_seq"])
    S.update(time=tm, clock=clk, link=link, dev=dev, ep=ep, chans=[])
    return {"ring_samples": ep.ring_samples}


def _at(req):
    if "t" in req:
        S["time"].t = req["t"]
    return S["time"].t


def op_rx(req):
    # Queue bytes, then poll until the link is drained (and `polls` times at
    # least), answering what was written.
    link = S["link"]
    link.inbuf = link.inbuf[link.inpos :] + unhexlify(req.get("hex", ""))
    link.inpos = 0
    now = _at(req)
    polls = 0
    while polls < req.get("polls", 1) or link.inpos < len(link.inbuf):
        S["ep"].poll(now)
        polls += 1
    return {"out": hx(S["link"].drain()), "polls": polls}


def op_script(req):
    dev = S["dev"]
    for k, v in req.get("results", {}).items():
        dev.script[int(k)] = v
    if "raise_on" in req:
        dev.raise_on = req["raise_on"]
    return {}


def op_telemetry(req):
    # `count` telemetry ticks `dt` ms apart, starting at t; each channel's
    # pressure goes up by one per tick so records can be told apart.
    tm = S["time"]
    ep = S["ep"]
    chans = [Chan(v) for v in req["chans"]]
    tm.t = _at(req)
    out = []
    i = 0
    while i < req.get("count", 1):
        if req.get("poll", False):
            ep.poll(tm.t)
        ep.telemetry(tm.t, chans)
        for c in chans:
            c.pressure += 1
        tm.t = tm.ticks_add(tm.t, req.get("dt", 100))
        i += 1
    out.append(S["link"].drain())
    return {"out": hx(out[0]), "t": tm.t}


def op_event(req):
    now = _at(req)
    e = req["e"]
    S["ep"].event(now, e[0], e[1], e[2], e[3], e[4], e[5])
    return {"out": hx(S["link"].drain())}


def op_state(req):
    ep = S["ep"]
    dev = S["dev"]
    log = dev.log
    dev.log = []
    return {
        "log": log,
        "stats": ep.stats(),
        "host_silent": ep.host_silent,
        "last_error": repr(ep.last_error) if ep.last_error else None,
        "wire_time": S["clock"].wire_time(S["time"].t),
    }


# The last command's fields, as received: u32 fields of a command may be boxed
# on a board, which is fine on the command path.
NOT_TICK_STATE = ("_values",)


def _ints(obj, where, bad):
    for name in dir(obj):
        if name.startswith("__") or name in NOT_TICK_STATE:
            continue
        v = getattr(obj, name)
        if isinstance(v, int) and not isinstance(v, bool):
            if not -clock.MASK30 - 1 <= v <= clock.MASK30:
                bad.append(where + "." + name + "=" + str(v))
        elif isinstance(v, clock.U32):
            _ints(v, where + "." + name, bad)
        elif isinstance(v, list) and v and isinstance(v[0], int):
            for x in v:
                if not -clock.MASK30 - 1 <= x <= clock.MASK30:
                    bad.append(where + "." + name + "[]=" + str(x))


def op_small_ints(req):
    # Every int the endpoint keeps must be a small int on a 32-bit board.
    ep = S["ep"]
    bad = []
    _ints(ep, "ep", bad)
    _ints(ep.clock, "clock", bad)
    _ints(ep.telemetry_ring, "telemetry_ring", bad)
    _ints(ep.event_ring, "event_ring", bad)
    for rp in ep._replays:
        _ints(rp, "replay", bad)
    return {"bad": bad}


def op_alloc(req):
    # Heap bytes allocated by `rounds` steady-state ticks: poll (with a
    # replay being paced if one is running), telemetry and an event.
    ep = S["ep"]
    tm = S["time"]
    link = S["link"]
    chans = tuple(Chan(v) for v in req["chans"])
    rounds = req["rounds"]
    ev_every = req.get("event_every", 1)
    now = tm.t
    ep.poll(now)
    ep.telemetry(now, chans)
    ep.event(now, 2, 1, 0, 1, 2, 3)
    link.outpos = 0
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    i = 0
    while i < rounds:
        now = tm.ticks_add(now, 100)
        tm.t = now
        ep.poll(now)
        ep.telemetry(now, chans)
        if i % ev_every == 0:
            ep.event(now, 2, 1, 0, i, 2, 3)
        if link.outpos > 60000:
            link.outpos = 0
        i += 1
    used = gc.mem_alloc() - before
    gc.enable()
    link.outpos = 0
    return {"bytes": used, "t": now}


OPS = {
    "new": op_new,
    "rx": op_rx,
    "script": op_script,
    "telemetry": op_telemetry,
    "event": op_event,
    "state": op_state,
    "small_ints": op_small_ints,
    "alloc": op_alloc,
}


jsonline.serve(OPS)
