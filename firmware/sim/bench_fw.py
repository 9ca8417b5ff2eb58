# Firmware figures, measured in the MicroPython unix port (run by
# `isopress bench firmware`; one JSON object on stdout):
#
#     micropython bench_fw.py resources BOARD.json FS
#     micropython bench_fw.py heap BOARD.json FS MPY_DIR|IMAGE.romfs|source
#     micropython bench_fw.py hold|step_down|step_up BOARD.json FS HOURS
#
# resources: allocation and time per tick, simulation speed.
# heap: heap after boot, in a fresh interpreter per way of loading the modules.
# The plant and the simulated buses allocate (they compute in floats); their
# share is measured around each of their entry points and taken out, so the
# figure is the firmware's own.
# hold / step_*: the control figures on the reference plant (channel 1),
# judged against the plant's TRUE pressure, not what the sensor said.
import gc
import json
import sys
import time

import plant as plant_mod
import port_sim
import simbus
from harness import Sim, provision

MPA = 1000000
_sim_alloc = [0]


def _counted(orig):
    # A bus method (self, addr, reg, buf) whose allocation is the sim's.
    def method(self, a, b, c):
        m = gc.mem_alloc()
        r = orig(self, a, b, c)
        _sim_alloc[0] += gc.mem_alloc() - m
        return r

    return method


def instrument():
    simbus.SimI2C.readfrom_mem_into = _counted(simbus.SimI2C.readfrom_mem_into)
    simbus.SimI2C.writeto_mem = _counted(simbus.SimI2C.writeto_mem)
    for cls in (simbus._Dout, simbus._Sck):
        orig = cls.value

        def value(self, v=None, orig=orig):
            m = gc.mem_alloc()
            r = orig(self, v)
            _sim_alloc[0] += gc.mem_alloc() - m
            return r

        cls.value = value
    # The plant steps inside idle_until and inside a valve's _set.
    orig_adv = plant_mod.Plant.advance_to

    def advance_to(self, t):
        m = gc.mem_alloc()
        orig_adv(self, t)
        _sim_alloc[0] += gc.mem_alloc() - m

    plant_mod.Plant.advance_to = advance_to
    orig_set = port_sim.Valve._set

    def _set(self, on):
        m = gc.mem_alloc()
        orig_set(self, on)
        _sim_alloc[0] += gc.mem_alloc() - m

    port_sim.Valve._set = _set


def heap(board, fs, modules):
    # Heap after boot with the firmware's modules loaded the way a board
    # loads them: `modules` is a directory of the .mpy files `isopress flash`
    # copies (bytecode loaded into the heap), or a ROMFS image of them
    # (`isopress flash --romfs`: mounted, bytecode run in place), or "source"
    # (the .py files on MICROPYPATH, compiled at import).
    if modules.endswith(".romfs"):
        import vfs

        vfs.mount(vfs.VfsRom(open(modules, "rb").read()), "/rom")
        sys.path.insert(0, "/rom")
    elif modules != "source":
        sys.path.insert(0, modules)
    # The config file is already in fs (written by `isopress flash`'s own
    # code, in another process): provision() here would import the config
    # module, and the wire table with it, before the count starts.
    profile = json.load(open(board))
    link = port_sim.MemoryLink()
    port_sim.setup(profile, plant_mod.Plant(None), fs, link, 0)
    gc.collect()
    before = gc.mem_alloc()
    import device

    gc.collect()
    code = gc.mem_alloc() - before  # modules: bytecode (unless in place) and globals
    dev = device.Device(profile, fs, link)
    gc.collect()
    total = gc.mem_alloc() - before
    assert len(dev.channels) == 4
    return {"heap_bytes": total, "heap_modules_bytes": code, "heap_device_bytes": total - code}


def resources(board, fs):
    profile = json.load(open(board))
    provision(fs, profile)
    plant = plant_mod.Plant(None)
    link = port_sim.MemoryLink()
    port_sim.setup(profile, plant, fs, link, 0)
    sim = Sim(profile, None, fs, link, plant=plant, fresh=False)
    dev = sim.dev
    import device

    # Three channels regulating, one monitoring: the 4-channel hold.
    for n, p in ((1, 5 * MPA), (2, 3 * MPA), (3, 20 * MPA)):
        dev.command(device.SET_SETPOINT, [n, p, 0], 0)
    sim.run(120.0)
    link.tx = bytearray()
    # Speed of the whole simulation (firmware + plant + buses).
    t0 = time.ticks_ms()
    sim.run(300.0)
    wall = time.ticks_diff(time.ticks_ms(), t0) / 1000.0
    speedup = 300.0 / wall
    link.tx = bytearray()
    # The tick alone (the simulated buses it calls included).
    n = 400
    us = 0
    i = 0
    while i < n:
        t = time.ticks_us()
        dev.tick(port_sim.ticks_ms())
        us += time.ticks_diff(time.ticks_us(), t)
        port_sim.advance(dev.tick_ms)
        i += 1
    # Its allocation without the simulated parts: a new board built after
    # they are wrapped (drivers bind their pins' methods when made), and the
    # sim's own glue (advancing the clock) measured alone and taken out.
    # gc.mem_alloc() walks the heap, so nothing is timed from here on.
    instrument()
    link = port_sim.NullLink()  # a MemoryLink's growing buffer would count
    sim = Sim(profile, None, fs, link, fresh=False)
    dev = sim.dev
    for k, p in ((1, 5 * MPA), (2, 3 * MPA), (3, 20 * MPA)):
        dev.command(device.SET_SETPOINT, [k, p, 0], 0)
    sim.run(120.0)

    def measure(tick):
        gc.collect()
        _sim_alloc[0] = 0
        a0 = gc.mem_alloc()
        i = 0
        while i < n:
            if tick:
                dev.tick(port_sim.ticks_ms())
            port_sim.advance(dev.tick_ms)
            i += 1
        return gc.mem_alloc() - a0 - _sim_alloc[0]

    glue = measure(False)
    fw = measure(True) - glue
    return {
        "alloc_bytes_per_tick": max(0, fw) / n,
        "us_per_tick_per_channel": us / n / len(dev.channels),
        "sim_speedup": speedup,
        "tick_ms": dev.tick_ms,
        "channels": len(dev.channels),
    }


def one_channel(profile):
    # Channel 1 alone (the reference plant), so a simulated day takes minutes.
    p = dict(profile)
    p["channels"] = [c for c in profile["channels"] if c["channel"] == 1]
    return p


def control(kind, board, fs, hours):
    profile = one_channel(json.load(open(board)))
    sim = Sim(profile, None, fs, port_sim.NullLink())
    dev = sim.dev
    import device

    def setp(mpa):
        r = dev.command(device.SET_SETPOINT, [1, int(mpa * MPA), 0], 0)
        if r:
            raise RuntimeError("setpoint refused: %d" % r)

    sim.run(1.0)  # first samples
    ch = dev.by_number[1]
    h = sim.plant.holder(1)
    fs_pa = 10 * MPA
    if kind == "hold":
        setp(5)
        sim.run(600.0)
        st = [0.0, 0.0, 0, 0.0]  # sum sq, max abs, n, below-setpoint seconds
        f0 = ch.fill_count + ch.vent_count
        dt = dev.tick_ms / 1000.0

        def each(s):
            e = h.pressure - 5 * MPA
            st[0] += e * e
            if abs(e) > st[1]:
                st[1] = abs(e)
            st[2] += 1
            if e < 0:
                st[3] += dt

        t0 = time.ticks_ms()
        sim.run(hours * 3600.0, each)
        wall = time.ticks_diff(time.ticks_ms(), t0) / 1000.0
        acts = ch.fill_count + ch.vent_count - f0
        return {
            "hold_rms_error_pct_fs": (st[0] / st[2]) ** 0.5 / fs_pa * 100,
            "hold_max_error_pct_fs": st[1] / fs_pa * 100,
            "hold_actuations_per_h": acts / hours,
            "hold_below_setpoint_pct": st[3] / (hours * 36.0),
            "hold_hours": hours,
            "hold_wall_s": wall,
        }
    start, end = (5, 2) if kind == "step_down" else (1, 5)
    setp(start)
    sim.run(600.0)
    setp(end)
    target = end * MPA
    band = target * 5 // 1000
    st = [None, None, 0.0]  # min, max, last time outside the band
    t_step = port_sim.now_ms()

    def each(s):
        p = h.pressure
        if st[0] is None or p < st[0]:
            st[0] = p
        if st[1] is None or p > st[1]:
            st[1] = p
        if abs(p - target) > band:
            st[2] = (port_sim.now_ms() - t_step) / 1000.0

    sim.run(300.0, each)
    if kind == "step_down":
        return {
            "step_down_settle_s": st[2],
            "step_down_undershoot_pct": max(0.0, (target - st[0]) / target * 100),
        }
    return {
        "step_up_settle_s": st[2],
        "step_up_overshoot_pct": max(0.0, (st[1] - target) / target * 100),
    }


def main():
    what = sys.argv[1]
    board = sys.argv[2]
    fs = sys.argv[3]
    if what == "resources":
        out = resources(board, fs)
    elif what == "heap":
        out = heap(board, fs, sys.argv[4])
    else:
        out = control(what, board, fs, float(sys.argv[4]) if len(sys.argv) > 4 else 24.0)
    print(json.dumps(out))


main()
