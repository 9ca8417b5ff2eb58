# Drives the plant model through one fixed scenario and times it. Runs under
# MicroPython (as a JSON-line server for tests/test_plant.py) and is imported
# by CPython too, so both interpreters execute the very same calls and the
# test can compare the traces value by value.
import gc
import json
import sys
import time


def _now_us():
    if hasattr(time, "ticks_us"):
        return time.ticks_us()
    return int(time.perf_counter() * 1e6)


def _elapsed_us(t0):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(time.ticks_us(), t0)
    return _now_us() - t0


TICK = 0.02


def _signals(p, out, k):
    for ch in p.channels:
        out[k] = p.holder(ch).signal()
        k += 1
    return k


class Scenario:
    """Signals every tick and truth rows every 10 ticks of a scenario that
    opens every flow path, pulses a valve inside a tick, and injects faults
    at run time. Run in segments: MicroPython's default heap is small."""

    def __init__(self, plant, params):
        self.p = plant.Plant(params)
        self.i = 0

    def run(self, seconds):
        p = self.p
        h1 = p.holder(1)
        h2 = p.holder(2)
        h3 = p.holder(3)
        n = int(seconds / TICK + 0.5)
        # preallocated: a list growing among boxed floats fragments the heap
        sig = [None] * (n * len(p.channels))
        rows = [None] * ((n + 9) // 10)
        k = 0
        r = 0
        end = self.i + n
        while self.i < end:
            i = self.i
            ms = i * 20
            h1.fill = ms < 2000 or 30000 <= ms < 31000
            h2.fill = 8000 <= ms < 9000
            h3.fill = ms < 1500 or 40000 <= ms < 40500
            h3.vent = 12000 <= ms < 12300
            if ms == 10000:
                p.inject(1, "noise_spikes", 5.0)
                p.inject(2, "sensor_offset", 1.0)
                p.inject(2, "fast_leak", 0.05)
            if ms == 20000:
                p.inject(4, "sensor_stuck", True)
                p.inject(3, "load_cell_saturated", 1)
            if ms == 22000:
                p.clear(3, "load_cell_saturated")
            if ms == 30000:
                p.inject(1, "supply_lost", 3.0)
            if ms == 5000:
                # a 13 ms vent pulse inside one tick, as Valve.pulse does
                h1.vent = True
                p.advance(0.013)
                h1.vent = False
                p.advance(TICK - 0.013)
            else:
                p.advance_to((ms + 20) / 1000.0)
            k = _signals(p, sig, k)
            if i % 10 == 0:
                rows[r] = p.truth_row()
                r += 1
            self.i += 1
        return {"signals": sig, "rows": rows[:r]}

    def finish(self):
        """A long closed-valve stretch in one call, then a last look."""
        p = self.p
        for ch in p.channels:
            h = p.holder(ch)
            h.fill = h.vent = False
        p.advance(3600.0)
        sig = [None] * len(p.channels)
        _signals(p, sig, 0)
        return {"signals": sig, "rows": [p.truth_header(), p.truth_row()]}


def bench(plant, n):
    """Microseconds per 20 ms advance of the default rig, and per signal()."""
    out = {}
    for name, ch, valve in (
        ("closed", 0, ""),
        ("fill_ch1", 1, "fill"),
        ("vent_ch1", 1, "vent"),
        ("fill_ch3", 3, "fill"),
    ):
        best = None
        rep = 0
        while rep < 5:
            p = plant.Plant()
            if ch:
                setattr(p.holder(ch), valve, True)
            p.advance(TICK)
            t0 = _now_us()
            k = 0
            while k < n:
                p.advance(TICK)
                k += 1
            us = _elapsed_us(t0) / n
            if best is None or us < best:
                best = us
            rep += 1
        out[name] = best
    p = plant.Plant()
    h = p.holder(1)
    t0 = _now_us()
    k = 0
    while k < n:
        h.signal()
        k += 1
    out["signal"] = _elapsed_us(t0) / n
    return out


def serve():
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    sys.path.append(here + "/../../firmware/sim")
    import plant

    scenario = None
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        req = json.loads(line)
        gc.collect()
        try:
            op = req["op"]
            if op == "start":
                scenario = Scenario(plant, req.get("params"))
                r = {}
            elif op == "run":
                r = scenario.run(req["seconds"])
            elif op == "finish":
                r = scenario.finish()
            elif op == "bench":
                r = bench(plant, req["n"])
            else:
                r = {"exception": "unknown op " + op}
        except Exception as e:  # reported to pytest, which fails the test
            r = {"exception": "%s: %s" % (type(e).__name__, e)}
        # streamed: building the whole line at once can exhaust the unix
        # port's default heap
        json.dump(r, sys.stdout)
        r = None
        sys.stdout.write("\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
