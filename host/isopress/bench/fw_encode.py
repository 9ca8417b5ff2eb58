# Runs under MicroPython: time and heap cost of encoding telemetry frames with
# the firmware codec, the way the control loop does it. Prints one JSON line.
#   micropython fw_encode.py CHANNELS COUNT
import gc
import json
import struct
import sys
import time

import frame

T = frame.BY_NAME["TELEMETRY"]


def telemetry(fr, channels, t_ms):
    # The hot path from frame.py's header comment: one pack_into per item.
    raw = fr.raw
    off = fr.payload()
    struct.pack_into(T.head_fmt, raw, off, t_ms, 7)
    off += T.head_size
    ch = 1
    while ch <= channels:
        struct.pack_into(T.item_fmt, raw, off, ch, 5000123, 12500, 5000000, 1, 1, 0)
        off += T.item_size
        ch += 1
    return fr.finish(T.id, 0, off - fr.payload())


def generic(fr, values, channels):
    return fr.put(T, values, channels)


def measure(fn, a, b, c, count):
    fn(a, b, c)  # warm: first calls intern and cache
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    start = time.ticks_us()
    i = 0
    while i < count:
        fn(a, b, c)
        i += 1
    us = time.ticks_diff(time.ticks_us(), start)
    used = gc.mem_alloc() - before
    gc.enable()
    return us / count, used / count


def main():
    channels = int(sys.argv[1])
    count = int(sys.argv[2])
    fr = frame.Framer()
    values = [1000, 7] + [1, 5000123, 12500, 5000000, 1, 1, 0] * channels
    fast_us, fast_alloc = measure(telemetry, fr, channels, 1000, count)
    gen_us, gen_alloc = measure(generic, fr, values, channels, count)
    n = telemetry(fr, channels, 1000)
    print(
        json.dumps(
            {
                "channels": channels,
                "frames": count,
                "wire_bytes": n,
                "us_per_frame": fast_us,
                "alloc_bytes_per_frame": fast_alloc,
                "generic_us_per_frame": gen_us,
                "generic_alloc_bytes_per_frame": gen_alloc,
            }
        )
    )


main()
