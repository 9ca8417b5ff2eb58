# Figures for the sensor layer on the sim board (hardware/boards/sim.json),
# printed, not asserted:
#     MICROPYPATH=firmware:protocol:tests/mpy .venv/bin/micropython \
#         tests/mpy/drivers_bench.py hardware/boards/sim.json
# - I2C bus time the ADS1115 round-robin costs at 100 kHz (model's estimate),
#   per second and per sample, at a 1 ms and a 50 ms tick;
# - wall time of one poll() of every sensor in the unix port (a board is
#   some tens of times slower: compare, do not read as a board figure).
import json
import sys
import time

import sensor
from drivers_rig import Rig


def run(profile, tick_ms, seconds):
    rig = Rig(profile)
    rig.volts["adc0"][:] = [1.5, 1.2, 0.0, 3.0]
    rig.mv[3][0] = 1.0
    rig.mv[4][0] = -0.5
    sensors = sensor.build(profile, rig)
    objs = [sensors[k] for k in sorted(sensors)]
    n = len(objs)
    good = [0] * n
    bus = rig.buses[0]
    polls = 0
    spent_us = 0
    end = seconds * 1000
    while rig.t < end:
        rig.t += tick_ms
        rig.sync()
        now = rig.ticks_ms()
        t0 = time.ticks_us()
        i = 0
        while i < n:
            if objs[i].poll(now):
                good[i] += 1
            i += 1
        spent_us += time.ticks_diff(time.ticks_us(), t0)
        polls += 1
    ads_samples = good[0] + good[1]
    print(
        "tick %d ms: ADS bus %.1f ms/s (%.0f us per channel sample, %d transfers/s), "
        "samples/s ch1..4 = %s, poll of all sensors %.1f us"
        % (
            tick_ms,
            bus.bus_us / 1000 / seconds,
            bus.bus_us / ads_samples,
            bus.transfers // seconds,
            [g // seconds for g in good],
            spent_us / polls,
        )
    )


def main():
    with open(sys.argv[1]) as f:
        profile = json.load(f)
    for tick in (1, 10, 50):
        run(profile, tick, 20)


main()
