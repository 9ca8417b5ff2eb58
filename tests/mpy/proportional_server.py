# Runs under MicroPython for tests/test_proportional.py: a simulated board
# (device.py on the sim HAL) with channel 1 of a board profile only, against
# a plant whose channel 1 has a proportional regulator, in virtual time. One
# JSON request per line, one JSON reply per line.
#
# ops:
#   boot {board, fs, plant, config: {key_name: value}} -> channel 1 booted with config set,
#                                 or {error} with the message of a profile the device refused
#   cmd {msg, fields}          -> {result, value}   (through Device.command)
#   run {s, every_ms}          -> s seconds: channel, controller and true-plant stats,
#                                 and the events sent meanwhile
#   inject {fault, value}      -> the plant's fault injection on channel 1 (value null clears)
#   reset {down_ms}            -> a board reset: pins low (command 0 V, valves shut) for
#                                 down_ms while the plant goes on, then the device boots again
#   command {pa}               -> the controller commands pa; the duty on the pin
#                                 and the volts at the regulator's input
#   scale {den, num, xs}       -> proportional.Scale(den, num).apply(x) for each x
#   alloc {ticks}              -> bytes the controller's tick and channel 1's tick
#                                 allocate, the simulated parts taken out
#   plant_trace {s}            -> proportional_trace.run(): the plant's regulator alone
import gc
import json
import sys

import frame
import port_sim
import proportional
import wire
from harness import Sim

_EV = dict(wire.EVENTS)
_MODES = dict(wire.MODES)
S = None
DEC = None
PROFILE = None


def events_out():
    out = []
    buf = S.link.tx
    S.link.tx = bytearray()
    for b in buf:
        if DEC.feed(b) > 0:
            raw = DEC.buf
            msg = frame.header(raw)[0]
            layout = frame.LAYOUTS[msg]
            if layout.name != "EVENT":
                continue
            vals = [0] * layout.max_values
            frame.unpack(raw, vals)
            e = {}
            names = layout.head_names
            for i in range(len(names)):
                e[names[i]] = vals[i]
            e["kind_name"] = _EV.get(e["kind"], str(e["kind"]))
            e["t_ms"] = port_sim.now_ms()
            out.append(e)
    return out


def state():
    ch = S.dev.by_number[1]
    h = S.plant.holder(1)
    out = {
        "mode": _MODES.get(ch.mode, str(ch.mode)),
        "alarms": ch.alarms,
        "pressure": ch.pressure,
        "setpoint": ch.setpoint,
        "target": ch.target,
        "valves": ch.valve_bits(),
        "control": ch.control,
        "true": h.pressure,
        "t_ms": port_sim.now_ms(),
    }
    pr = ch.prop
    if pr is not None:
        pins = PROFILE["channels"][0]["proportional"]
        out["cmd"] = pr.cmd
        out["duty"] = pr.duty
        out["pin_duty"] = port_sim.output(pins["command_pin"])
        out["trim"] = pr.trim
        out["model"] = pr.model
        out["monitor"] = pr.monitor
        out["open"] = pr.open
        out["engaged"] = pr.engaged
        out["iso_pin"] = port_sim.output(pins["isolate_pin"])
    if h.regulator is not None:
        out["reg_out"] = h.regulator.out
    return out


def run(req):
    ch = S.dev.by_number[1]
    h = S.plant.holder(1)
    st = {"p_min": None, "p_max": None, "valves_seen": 0, "open_seen": False,
          "duty_min": None, "duty_max": None}  # fmt: skip
    every = req.get("every_ms", 0)
    trace = []
    nxt = [0]

    def each(sim):
        p = h.pressure
        if st["p_min"] is None or p < st["p_min"]:
            st["p_min"] = p
        if st["p_max"] is None or p > st["p_max"]:
            st["p_max"] = p
        d = ch.prop.duty
        if st["duty_min"] is None or d < st["duty_min"]:
            st["duty_min"] = d
        if st["duty_max"] is None or d > st["duty_max"]:
            st["duty_max"] = d
        st["valves_seen"] |= ch.valve_bits()
        st["open_seen"] = st["open_seen"] or ch.prop.open
        if every:
            t = port_sim.now_ms()
            if t >= nxt[0]:
                nxt[0] = t + every
                pr = ch.prop
                trace.append([t, p, ch.pressure, ch.setpoint, pr.cmd, pr.trim, pr.monitor,
                              pr.model, 1 if pr.open else 0, ch.alarms])  # fmt: skip

    S.run(req["s"], each)
    out = state()
    out.update(st)
    out["events"] = events_out()
    if every:
        out["trace"] = trace
    return out


def channel_one(profile):
    p = dict(profile)
    p["channels"] = [c for c in profile["channels"] if c["channel"] == 1]
    return p


def alloc(n):
    # The simulated parts (buses, ADC, PWM, valves) compute in floats; their
    # allocation is counted around each entry point and taken out, and the
    # plant advances outside the measured part.
    import simbus

    sim_alloc = [0]
    undo = []

    def wrap(cls, name, nargs):
        orig = getattr(cls, name)
        undo.append((cls, name, orig))

        def w1(self, a):
            m = gc.mem_alloc()
            r = orig(self, a)
            sim_alloc[0] += gc.mem_alloc() - m
            return r

        def w3(self, a, b, c):
            m = gc.mem_alloc()
            r = orig(self, a, b, c)
            sim_alloc[0] += gc.mem_alloc() - m
            return r

        setattr(cls, name, w1 if nargs == 1 else w3)

    wrap(simbus.SimI2C, "readfrom_mem_into", 3)
    wrap(simbus.SimI2C, "writeto_mem", 3)
    wrap(port_sim.AnalogOut, "write_u16", 1)
    wrap(port_sim.Valve, "_set", 1)
    dev = S.dev
    ch = dev.by_number[1]
    adc = ch.prop.adc
    read = adc._read_u16  # bound at construction: wrap the bound method itself

    def counted():
        m = gc.mem_alloc()
        r = read()
        sim_alloc[0] += gc.mem_alloc() - m
        return r

    adc._read_u16 = counted
    tick = dev.tick_ms
    out = {}
    for what in ("prop", "channel"):
        total = 0
        i = 0
        while i < n:
            # A collection inside the measured tick would hide what it
            # allocated: start each one on a collected heap.
            gc.collect()
            now = port_sim.ticks_ms()
            sim_alloc[0] = 0
            m = gc.mem_alloc()
            if what == "prop":
                ch.prop.tick()
            else:
                ch.tick(now)
            total += gc.mem_alloc() - m - sim_alloc[0]
            port_sim.advance(tick)
            i += 1
        out[what] = total
    for cls, name, orig in undo:
        setattr(cls, name, orig)
    adc._read_u16 = read
    # The meter itself: a tick's worth of a list does show.
    gc.collect()
    m = gc.mem_alloc()
    probe = [0, 0, 0, 0]
    out["probe"] = gc.mem_alloc() - m
    out["ticks"] = n + 0 * len(probe)
    return out


def handle(req):
    global S, DEC, PROFILE
    op = req["op"]
    if op == "boot":
        with open(req["board"]) as f:
            PROFILE = channel_one(json.load(f))
        try:
            S = Sim(PROFILE, req["plant"], req["fs"])
        except ValueError as e:
            return {"error": str(e)}
        kv = req.get("config") or {}
        if kv:
            import config

            cfg = S.dev.cfg
            for name, value in kv.items():
                r, v = cfg.set(1, config.NAMES[name], value)
                if r:
                    return {"error": "config %s=%s rejected: %d %d" % (name, value, r, v)}
            cfg.save()
            S.reboot(0)
        DEC = frame.Deframer()
        S.run(1.0)  # the sensors' first samples
        events_out()
        return {"ok": True, "tick_ms": S.dev.tick_ms, "state": state()}
    if op == "cmd":
        layout = frame.BY_NAME[req["msg"]]
        vals = [req["fields"][n] for n in layout.head_names]
        r = S.dev.command(layout.id, vals, 0)
        return {"result": dict(wire.RESULTS).get(r, r), "value": S.dev.ack_value}
    if op == "run":
        return run(req)
    if op == "inject":
        S.plant.inject(1, req["fault"], req.get("value"))
        return {"ok": True}
    if op == "state":
        return state()
    if op == "reset":
        reg = S.plant.holder(1).regulator
        reg.command_v = 0.0
        reg.valve = False
        port_sim.advance(req.get("down_ms", 1000))
        S.reboot(3)
        events_out()
        return state()
    if op == "command":
        pr = S.dev.by_number[1].prop
        pr._command(req["pa"])
        return {"duty": pr.duty, "pin": port_sim.output(PROFILE["channels"][0]["proportional"]
                ["command_pin"]), "volts": S.plant.holder(1).regulator.command_v}  # fmt: skip
    if op == "scale":
        sc = proportional.Scale(req["den"], req["num"])
        return {"out": [sc.apply(x) for x in req["xs"]], "k": sc.k, "s": sc.s, "c": sc.c}
    if op == "alloc":
        return alloc(req.get("ticks", 200))
    if op == "plant_trace":
        import plant
        import proportional_trace

        return proportional_trace.run(plant, req["s"])
    return {"error": "unknown op " + op}


for line in sys.stdin:
    try:
        reply = handle(json.loads(line))
    except Exception as e:  # report, keep serving
        sys.print_exception(e, sys.stderr)
        reply = {"exception": repr(e)}
    gc.collect()
    json.dump(reply, sys.stdout)  # streamed: a long trace needs no one big string
    sys.stdout.write("\n")
    sys.stdout.flush()
