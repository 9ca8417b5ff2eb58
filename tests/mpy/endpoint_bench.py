# Runs under MicroPython: time and heap cost of the endpoint's tick work.
# Prints one JSON line. Figures only; the tests assert behaviour.
#   micropython endpoint_bench.py CHANNELS COUNT
import gc
import json
import sys
import time

import clock
import endpoint


class Link:
    def __init__(self):
        self.bytes = 0

    def read_into(self, buf):
        return 0

    def write(self, buf, n):
        self.bytes += n


class Chan:
    def __init__(self, n):
        self.number = n
        self.pressure = 5000123
        self.raw = 12500
        self.setpoint = 5000000
        self.valves = 1
        self.mode = 1
        self.alarms = 0


class Dev:
    hello_head = [0, 1, 0, 1, 0, b"\0" * 8, 0, 0, 10, 0]
    hello_items = []
    ack_value = 0


def measure(fn, count):
    fn()
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    start = time.ticks_us()
    i = 0
    while i < count:
        fn()
        i += 1
    us = time.ticks_diff(time.ticks_us(), start)
    used = gc.mem_alloc() - before
    gc.enable()
    return us / count, used / count


def main():
    channels = int(sys.argv[1])
    count = int(sys.argv[2])
    t = [0]
    clk = clock.Clock(lambda: t[0], time.ticks_diff)
    link = Link()
    ep = endpoint.Endpoint(link, Dev(), clk, 32768, channels, 0, 64, 1)
    chans = tuple(Chan(c + 1) for c in range(channels))

    def telemetry():
        ep.telemetry(t[0], chans)

    def event():
        ep.event(t[0], 2, 1, 0, 1, 2, 3)

    def poll():
        ep.poll(t[0])

    def replay_poll():
        # One replayed frame per poll (burst 1), restarted when it finishes.
        rp = ep._replays[0]
        if not rp.active:
            rp.start(0, 0xFFFF)
        ep.poll(t[0])

    out = {"channels": channels, "ring_samples": ep.ring_samples}
    for name, fn in (
        ("telemetry", telemetry),
        ("event", event),
        ("idle_poll", poll),
        ("replay_poll", replay_poll),
    ):
        us, alloc = measure(fn, count)
        out[name + "_us"] = us
        out[name + "_alloc_bytes"] = alloc
    print(json.dumps(out))


main()
