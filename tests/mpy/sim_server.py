# Runs under MicroPython: a simulated board (firmware + plant, virtual time)
# driven by pytest, one JSON request per line, one JSON reply per line.
#
# ops:
#   boot {plant, fs, board, config: {channel: {key_name: value}}}
#   cmd {msg, fields}            -> {result, value}   (through Device.command)
#   send_hex {hex}               -> bytes onto the link (the endpoint path)
#   run {s, ch, every_ms}        -> run s seconds; stats of channel ch and the
#                                   events sent meanwhile
#   inject {ch, fault, value}    -> the plant's fault injection
#   state {}                     -> every channel's state
#   reboot {cause}, hang {}, corrupt {file}, rx {}
import json

import frame
import jsonline
import port_sim
import wire
from harness import Sim

_EV = dict(wire.EVENTS)
_MODES = dict(wire.MODES)
S = None
PROFILE = None


def events_out(link, dec):
    # Decode every frame the board sent since last time.
    out = []
    frames = []
    buf = link.tx
    link.tx = bytearray()
    for b in buf:
        n = dec.feed(b)
        if n > 0:
            raw = dec.buf
            msg, seq, flags, plen = frame.header(raw)
            layout = frame.LAYOUTS[msg]
            vals = [0] * layout.max_values
            k = frame.unpack(raw, vals)
            if layout.name == "EVENT":
                names = layout.head_names
                e = {}
                for i in range(len(names)):
                    e[names[i]] = vals[i]
                e["kind_name"] = _EV.get(e["kind"], str(e["kind"]))
                out.append(e)
            else:
                n = len(layout.head_names) + k * len(layout.item_names)
                frames.append({"message": layout.name, "flags": flags, "values": vals[:n]})
    return out, frames


def chan_state(ch):
    return {
        "number": ch.number,
        "pressure": ch.pressure,
        "setpoint": ch.setpoint,
        "target": ch.target,
        "mode": _MODES.get(ch.mode, str(ch.mode)),
        "alarms": ch.alarms,
        "valves": ch.valve_bits(),
        "fill_count": ch.fill_count,
        "vent_count": ch.vent_count,
        "sensor_fault": ch.sensor_fault,
        "measured": ch.measured,
    }


def values_for(name, fields):
    layout = frame.BY_NAME[name]
    vals = [fields[n] for n in layout.head_names]
    items = fields.get("items", [])
    for it in items:
        for n in layout.item_names:
            vals.append(it[n])
    return layout.id, vals, len(items)


def handle(req):
    global S, PROFILE, DEC
    op = req["op"]
    if op == "boot":
        PROFILE = json.load(open(req["board"]))
        S = Sim(PROFILE, req.get("plant"), req["fs"])
        for n, kv in req.get("config", {}).items():
            cfg = S.dev.cfg
            import config

            for name, value in kv.items():
                r, v = cfg.set(int(n), config.NAMES[name], value)
                if r:
                    return {"error": "config %s=%s rejected: %d %d" % (name, value, r, v)}
            cfg.save()
        if req.get("config"):
            S.reboot(0)
        DEC = frame.Deframer()
        S.run(1.0)  # the sensors' first samples
        return {"ok": True, "tick_ms": S.dev.tick_ms}
    if op == "cmd":
        msg, vals, n = values_for(req["msg"], req["fields"])
        r = S.dev.command(msg, vals, n)
        return {"result": dict(wire.RESULTS).get(r, r), "value": S.dev.ack_value}
    if op == "send_hex":
        from binascii import unhexlify

        S.link.rx.extend(unhexlify(req["hex"]))
        return {"ok": True}
    if op == "run":
        ch = S.dev.by_number.get(req.get("ch", 1))
        st = {"p_min": None, "p_max": None, "meas_min": None, "valves_seen": 0}
        every = req.get("every_ms", 0)
        trace = []
        nxt = [0]

        evs = []
        frames = []

        def each(sim):
            # Decode what the board sent as it goes: a long run's bytes
            # would otherwise pile up in one growing buffer.
            if len(sim.link.tx) > 4096:
                e, f = events_out(sim.link, DEC)
                evs.extend(e)
                if req.get("frames"):
                    frames.extend(f)
            c = sim.dev.by_number[ch.number]
            p = sim.plant.holder(ch.number).pressure
            if st["p_min"] is None or p < st["p_min"]:
                st["p_min"] = p
            if st["p_max"] is None or p > st["p_max"]:
                st["p_max"] = p
            st["valves_seen"] |= c.valve_bits()
            if every:
                t = port_sim.now_ms()
                if t >= nxt[0]:
                    nxt[0] = t + every
                    trace.append([t, p, c.pressure, c.setpoint, c.valve_bits(), c.alarms])

        S.run(req["s"], each)
        e, f = events_out(S.link, DEC)
        evs.extend(e)
        frames.extend(f)
        out = chan_state(S.dev.by_number[ch.number])
        out.update(st)
        out["true"] = S.plant.holder(ch.number).pressure
        out["t_ms"] = port_sim.now_ms()
        out["events"] = evs
        out["resets"] = S.resets
        if every:
            out["trace"] = trace
        if req.get("frames"):
            out["frames"] = frames
        return out
    if op == "mem":
        import gc

        gc.collect()
        return {"free": gc.mem_free(), "alloc": gc.mem_alloc()}
    if op == "inject":
        S.plant.inject(req["ch"], req["fault"], req.get("value"))
        return {"ok": True}
    if op == "clear":
        S.plant.clear(req["ch"], req["fault"])
        return {"ok": True}
    if op == "state":
        return {"channels": [chan_state(c) for c in S.dev.channels], "t_ms": port_sim.now_ms()}
    if op == "reboot":
        S.reboot(req.get("cause", 1))
        return {"ok": True}
    if op == "hang":
        # The control loop stops feeding the watchdog (a firmware hang).
        S.dev.wdt.feed = lambda: None
        return {"ok": True}
    if op == "input":
        port_sim.set_input(req["pin"], req["level"])
        return {"ok": True}
    if op == "output":
        return {"value": port_sim.output(req["pin"])}
    if op == "corrupt":
        path = S.fs + req["file"]
        with open(path) as f:
            text = f.read()
        i = len(text) // 2
        with open(path, "w") as f:
            f.write(text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1 :])
        return {"ok": True}
    if op == "alloc":
        import gc

        S.run(1.0)
        dev = S.dev
        n = req.get("ticks", 200)
        gc.collect()
        a = gc.mem_alloc()
        i = 0
        while i < n:
            dev.tick(port_sim.ticks_ms())
            i += 1
        return {"alloc_per_tick": (gc.mem_alloc() - a) / n}
    return {"error": "unknown op " + op}


DEC = None
jsonline.serve(handle)
