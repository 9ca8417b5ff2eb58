# Runs under MicroPython: answers config and calibration requests from pytest,
# one JSON line in, one JSON line out, so config.py and calibration.py are
# tested in the real interpreter without an interpreter start per example.
import gc
import json
from array import array

import calibration
import config
import jsonline

state = {"cfg": None, "cal": None}


def load(req):
    with open(req["profile"]) as f:
        profile = json.load(f)
    cfg, status = config.load(req["dir"], profile)
    state["cfg"] = cfg
    return {"status": status, "crc": cfg.crc, "cfg_status": cfg.status}


def dump(cfg):
    # Every channel's effective values, keyed by str(channel) then str(key).
    out = {}
    for n in (0,) + cfg.channels:
        vals = cfg.values(n)
        out[str(n)] = dict((str(k), vals[k]) for k in vals)
    return out


def cfg_op(op, req):
    cfg = state["cfg"]
    if op == "get":
        r, v = cfg.get(req["ch"], req["key"])
        return {"result": r, "value": v}
    if op == "set":
        r, v = cfg.set(req["ch"], req["key"], req["value"])
        return {"result": r, "value": v}
    if op == "set_limits":
        r, v = cfg.set_limits(req["ch"], *req["values"])
        return {"result": r, "value": v}
    if op == "save":
        return {"ok": cfg.save(), "crc": cfg.crc}
    if op == "dump":
        return {"values": dump(cfg), "crc": cfg.crc}
    if op == "value":
        try:
            return {"value": cfg.value(req["ch"], req["name"])}
        except ValueError as e:
            return {"error": str(e)}
    if op == "calibration":
        return {"stored": cfg.calibration(req["ch"])}
    if op == "set_calibration":
        return {"result": cfg.set_calibration(req["ch"], req["stored"])}
    if op == "content":
        return {"content": cfg.content()}
    return None


def cal_new(req):
    try:
        state["cal"] = calibration.Calibration(req["kind"], req["sensor"], req.get("stored"))
    except ValueError as e:
        state["cal"] = None
        return {"error": str(e)}
    return {"unit": state["cal"].unit, "full_scale": state["cal"].full_scale}


def sweep(cal, knots, lo, hi, step):
    # Largest |value - float line through knots| for signals lo..hi.
    worst = 0.0
    at = lo
    n = len(knots)
    s = lo
    while s <= hi:
        i = 0
        while i < n - 2 and s >= knots[i + 1][0]:
            i += 1
        x0, y0 = knots[i]
        x1, y1 = knots[i + 1]
        ref = y0 + (s - x0) * (y1 - y0) / (x1 - x0)
        e = abs(cal.value(s) - ref)
        if e > worst:
            worst = e
            at = s
        s += step
    return {"max_err": worst, "at": at}


def alloc(cal, signals, rounds):
    # Called as the tick will: cal.value(...) each time, no bound method kept.
    sig = array("i", signals)
    n = len(sig)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    r = 0
    while r < rounds:
        i = 0
        while i < n:
            cal.value(sig[i])
            i += 1
        r += 1
    used = gc.mem_alloc() - before
    gc.enable()
    return {"bytes": used, "calls": rounds * n}


def cal_op(op, req):
    cal = state["cal"]
    if op == "values":
        return {"values": [cal.value(s) for s in req["signals"]]}
    if op == "tare":
        return {"result": cal.tare(req["signal"])}
    if op == "capture":
        return {"result": cal.capture(req["point"], req["signal"], req["reference"])}
    if op == "clear":
        cal.clear()
        return {}
    if op == "store":
        r, v = cal.store()
        return {"result": r, "value": v}
    if op == "to_dict":
        return {"stored": cal.to_dict()}
    if op == "per_area":
        try:
            state["cal"] = cal.per_area(req["area"])
        except ValueError as e:
            return {"error": str(e)}
        return {"unit": state["cal"].unit, "full_scale": state["cal"].full_scale}
    if op == "sweep":
        return sweep(cal, req["knots"], req["lo"], req["hi"], req["step"])
    if op == "alloc":
        return alloc(cal, req["signals"], req["rounds"])
    return None


def handle(req):
    op = req["op"]
    if op == "load":
        return load(req)
    if op == "cal_new":
        return cal_new(req)
    if op.startswith("cal_"):
        r = cal_op(op[4:], req)
    else:
        r = cfg_op(op, req)
    if r is None:
        return {"exception": "unknown op " + op}
    return r


jsonline.serve(handle)
