# Entry point of the simulated board under the MicroPython unix port; the
# `isopress sim` launcher starts it as
#
#     micropython run.py SETTINGS.json
#
# with the board's serial link on stdin/stdout (the launcher connects those to
# a pty). SETTINGS holds: profile (board profile dict), plant (plant
# parameters dict, or null for the default rig), fs (directory standing in for
# the board's flash, ending in "/"), speed (simulated seconds per wall second,
# 0 = as fast as possible), truth (CSV path or null), truth_every_ms,
# seconds (stop after this much simulated time, or null = run until stdin
# closes).
import json
import sys

import port_sim
from harness import Sim


class Truth:
    # What the plant really did, beside what the firmware measured and meant.
    def __init__(self, path, every_ms, sim):
        self.f = open(path, "w")
        self.every = every_ms
        self.next = 0
        head = sim.plant.truth_header()
        cols = []
        for ch in sim.dev.channels:
            n = str(ch.number)
            cols.append("ch" + n + "_measured_pa")
            cols.append("ch" + n + "_setpoint_pa")
            cols.append("ch" + n + "_mode")
            cols.append("ch" + n + "_alarms")
        self.f.write(",".join(head + cols) + "\n")

    def __call__(self, sim):
        t = port_sim.now_ms()
        if t < self.next:
            return
        self.next = t + self.every
        row = [repr(x) if isinstance(x, float) else str(x) for x in sim.plant.truth_row()]
        for ch in sim.dev.channels:
            row.append(str(ch.pressure))
            row.append(str(ch.setpoint))
            row.append(str(ch.mode))
            row.append(str(ch.alarms))
        self.f.write(",".join(row) + "\n")

    def close(self):
        self.f.close()


def main(path):
    with open(path) as f:
        s = json.load(f)
    link = port_sim.StdioLink()
    sim = Sim(s["profile"], s.get("plant"), s["fs"], link, s.get("speed", 1))
    truth = None
    if s.get("truth"):
        truth = Truth(s["truth"], s.get("truth_every_ms", 1000), sim)
    seconds = s.get("seconds")
    end = None if seconds is None else port_sim.now_ms() + int(seconds * 1000)
    try:
        while not link.closed and (end is None or port_sim.now_ms() < end):
            sim.step(truth)
    finally:
        if truth is not None:
            truth.close()


if __name__ == "__main__":
    main(sys.argv[1])
