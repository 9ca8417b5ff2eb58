# Runs under MicroPython: the sensor drivers and sensor.py against the
# simulated buses, driven by pytest one JSON request per line (see
# tests/test_drivers.py and tests/test_sensor.py for what each op checks).
import gc

import ads1x15
import hx711
import jsonline
import mcu_adc
import sensor
from drivers_rig import Clock, Rig
from sim import simbus

# ---- drivers


def _ads_model(clock, kind, noise=0.0):
    vs = [0.0, 0.0, 0.0, 0.0]

    def volts(i):
        return vs[i]

    m = simbus.ADS1115Model(clock.now_ms, volts, kind, noise_lsb=noise)
    bus = simbus.SimI2C(clock.now_ms)
    bus.attach(0x48, m)
    return m, bus, vs


def ads_sweep(req):
    # Every input at one gain and rate: the conversion is not ready before
    # 1/DR has passed, is ready after, and reads the model's voltage.
    clock = Clock()
    m, bus, vs = _ads_model(clock, req["kind"])
    vs[:] = req["volts"]
    adc = ads1x15.make(req["kind"], bus, 0x48, req["gain"], req["rate"], clock)
    period_us = m.period_us(req["rate"] << 5)
    out = []
    for inp in range(8):
        ok = adc.start(inp)
        t0 = clock.t
        clock.t = t0 + (period_us - 1) // 1000
        early = adc.ready()
        clock.t = t0 + (period_us + 999) // 1000
        late = adc.ready()
        counts = adc.read()
        out.append(
            {
                "input": inp,
                "started": ok,
                "ready_early": early,
                "ready_late": late,
                "counts": counts,
                "uv": adc.to_uv(counts),
                "volts": adc.to_volts(counts),
                "error": adc.error,
            }
        )
        clock.t += 3
    return {"results": out, "conversions": m.conversions, "conversion_ms": adc.conversion_ms()}


def ads_continuous(req):
    # Continuous mode follows a changing input with one start; stop() goes
    # back to single-shot.
    clock = Clock()
    m, bus, vs = _ads_model(clock, req["kind"])
    adc = ads1x15.make(req["kind"], bus, 0x48, req["gain"], req["rate"], clock)
    steps = []
    vs[req["input"]] = req["volts"][0]
    ok = adc.continuous(req["input"])
    writes = bus.transfers
    for v in req["volts"]:
        vs[req["input"]] = v
        just_read = adc.ready()
        clock.t += req["step_ms"]
        ready = adc.ready()
        steps.append({"counts": adc.read(), "ready": ready, "ready_at_0": just_read})
    cont_writes = bus.transfers - writes
    stopped = adc.stop()
    clock.t += 200
    vs[req["input"]] = req["volts"][0]
    clock.auto = 1  # the blocking read's wait advances virtual time
    single = adc.read_blocking(req["input"])
    return {
        "started": ok,
        "steps": steps,
        "transfers": cont_writes,
        "conversions": m.conversions,
        "stopped": stopped,
        "single": single,
    }


def ads_missing(req):
    # No device, a device that stops answering, a bus stuck low: error codes,
    # never an exception, and recovery when the device is back.
    clock = Clock(auto=1)
    m, bus, vs = _ads_model(clock, "ads1115")
    vs[0] = 1.0
    adc = ads1x15.ADS1115(bus, 0x49, clock=clock)  # nothing at 0x49
    r = {}
    r["absent_start"] = adc.start(0)
    r["absent_error"] = adc.error
    r["absent_errno"] = adc.errno
    r["absent_ready"] = adc.ready()
    r["absent_read"] = adc.read()
    r["absent_blocking"] = adc.read_blocking(0)
    r["absent_scan"] = bus.scan()
    adc = ads1x15.ADS1115(bus, 0x48, clock=clock)
    r["present"] = adc.read_blocking(0)
    r["present_error"] = adc.error
    m.present = False
    r["gone"] = adc.read_blocking(0)
    r["gone_error"] = adc.error
    r["gone_errno"] = adc.errno
    m.present = True
    r["back"] = adc.read_blocking(0)
    r["back_error"] = adc.error
    bus.fail_errno = simbus.EIO
    r["stuck_bus_start"] = adc.start(0)
    r["stuck_bus_errno"] = adc.errno
    bus.fail_errno = 0
    m.hung = True
    t0 = clock.t
    r["hung"] = adc.read_blocking(0, 50)
    r["hung_error"] = adc.error
    r["hung_waited_ms"] = clock.t - t0
    m.hung = False
    r["bad_input_start"] = adc.start(8)
    r["bad_input_error"] = adc.error
    return r


def ads_bad_config(req):
    out = {}
    for name, call in (
        ("gain", lambda: ads1x15.ADS1115(None, gain=6)),
        ("rate", lambda: ads1x15.ADS1115(None, rate=8)),
        ("fsr", lambda: ads1x15.gain_index(5.0)),
        ("sps", lambda: ads1x15.ADS1115.rate_index(100)),
        ("kind", lambda: ads1x15.make("ads1234", None)),
    ):
        try:
            call()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out


def _hx(clock, req, noise=0, now_us=None):
    box = {"a": req.get("mv", 0.0), "b": req.get("mv_b", 0.0)}
    m = simbus.HX711Model(
        clock.now_ms,
        lambda: box["a"],
        req.get("rate", 10),
        now_us=now_us,
        mv_per_v_b=lambda: box["b"],
        noise_counts=noise,
    )
    return m, box


def _next_reading(clock, hx, limit_ms=1000):
    t0 = clock.t
    while not hx.ready():
        clock.t += 1
        if clock.t - t0 > limit_ms:
            return None, clock.t - t0
    return hx.read(), clock.t - t0


def hx_read(req):
    # Readings at each gain in turn; each entry is one read after set_gain.
    clock = Clock()
    m, box = _hx(clock, req)
    hx = hx711.HX711(m.dout, m.sck, req["gains"][0], clock)
    out = []
    for g in req["gains"]:
        hx.set_gain(g)
        for _ in range(req.get("reads", 2)):
            v, waited = _next_reading(clock, hx)
            out.append({"gain": g, "value": v, "data_gain": hx.data_gain, "waited_ms": waited})
    return {"reads": out, "model_reads": m.reads, "power_downs": m.power_downs}


def hx_timeout(req):
    clock = Clock(auto=1)
    m, box = _hx(clock, req)
    box["a"] = None  # chip gone: DOUT stays high
    hx = hx711.HX711(m.dout, m.sck, 128, clock)
    t0 = clock.t
    r = {"value": hx.read_blocking(req["timeout_ms"])}
    r["waited_ms"] = clock.t - t0
    r["error"] = hx.error
    r["direct"] = hx.read()
    r["direct_error"] = hx.error
    r["ready"] = hx.ready()
    return r


def hx_power(req):
    # Power-down needs SCK high for more than 60 us; power-up resets the chip
    # to A/128 and the first result comes after 4 periods of settling.
    clock = Clock()
    m, box = _hx(clock, {"mv": 1.0, "rate": req["rate"]})
    hx = hx711.HX711(m.dout, m.sck, 64, clock)
    v, _ = _next_reading(clock, hx)
    v, _ = _next_reading(clock, hx)
    r = {"gain_before": m.gain, "first": v}
    hx.power_down()
    r["powered_at_0"] = m.powered
    clock.t += 1
    m.sync()
    r["powered_after_1ms"] = m.powered
    r["ready_while_down"] = hx.ready()
    clock.t += 5000
    r["ready_after_5s_down"] = hx.ready()
    hx.power_up()
    r["powered_up"] = m.powered
    r["gain_after"] = m.gain
    v, waited = _next_reading(clock, hx)
    r["settle_ms"] = waited
    r["after_value"] = v
    r["after_data_gain"] = hx.data_gain
    r["power_downs"] = m.power_downs
    return r


def hx_sck_high(req):
    # With every pin access taking `us_per_access` microseconds, the
    # driver's reads never hold SCK high long enough to power the chip down.
    clock = Clock()
    us = [0]

    def now_us():
        us[0] += req["us_per_access"]
        return clock.t * 1000 + us[0]

    m, box = _hx(clock, {"mv": -0.7}, now_us=now_us)
    hx = hx711.HX711(m.dout, m.sck, 128, clock)
    values = []
    for _ in range(req["reads"]):
        v, _ = _next_reading(clock, hx)
        values.append(v)
    return {"values": values, "power_downs": m.power_downs, "reads": m.reads}


def mcu_read(req):
    seq = req["values"]
    pos = [0]

    class FakeADC:
        def read_u16(self):
            v = seq[pos[0] % len(seq)]
            pos[0] += 1
            return v

    a = mcu_adc.MCUADC(FakeADC(), req["vref"], req["samples"])
    c = a.read()
    return {"counts": c, "uv": a.to_uv(c), "reads": pos[0], "error": a.error}


def mcu_errors(req):
    class Broken:
        def read_u16(self):
            raise OSError(5)

    a = mcu_adc.MCUADC(Broken(), 3.3, 4)
    out = {"counts": a.read(), "error": a.error, "errno": a.errno}
    for name, args in (("vref", (5.0, 4)), ("samples", (3.3, 0))):
        try:
            mcu_adc.MCUADC(Broken(), *args)
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out


def simbus_i2c(req):
    clock = Clock()
    m, bus, vs = _ads_model(clock, "ads1115")
    r = {"scan": bus.scan()}
    bus.writeto(0x48, bytes([1, 0xC3, 0x83]))  # config: AIN0, 4.096 V, single, start
    bus.writeto(0x48, bytes([1]))
    buf = bytearray(2)
    bus.readfrom_into(0x48, buf)
    r["config_busy"] = (buf[0] << 8) | buf[1]
    clock.t += 10
    r["config_idle"] = int.from_bytes(bus.readfrom_mem(0x48, 1, 2), "big")
    try:
        bus.readfrom_mem(0x50, 0, 2)
        r["missing"] = None
    except OSError as e:
        r["missing"] = e.errno
    m2 = simbus.ADS1115Model(clock.now_ms, lambda i: 0.0)
    bus2 = simbus.SimI2C(clock.now_ms, missing_errno=simbus.EIO)
    bus2.attach(0x48, m2)
    m2.present = False
    try:
        bus2.writeto_mem(0x48, 1, bytearray(2))
        r["absent"] = None
    except OSError as e:
        r["absent"] = e.errno
    r["transfers"] = bus.transfers
    r["bus_us"] = bus.bus_us
    return r


# ---- sensor.py on a simulated board

_rig = None
_sensors = None
_log = {}


def _instrument(ch, s):
    # Logs every sample the sensor judges: its classification and the
    # sensor's state after it.
    log = _log[ch] = []
    judge = s._judge

    def logged(code, value):
        ok = judge(code, value)
        log.append([code, s.fault, s.fault_value, s.signal, s.raw])
        return ok

    s._judge = logged


def sensor_setup(req):
    global _rig, _sensors
    _rig = Rig(
        req["profile"], ads_noise=req.get("ads_noise", 1.0), hx_noise=req.get("hx_noise", 20)
    )
    for name, vs in req.get("volts", {}).items():
        _rig.volts[name][:] = vs
    for ch, mv in req.get("mv", {}).items():
        _rig.mv[int(ch)][0] = mv
    for pin, v in req.get("mcu_volts", {}).items():
        _rig.mcu_volts[int(pin)][0] = v
    _sensors = sensor.build(req["profile"], _rig)
    _log.clear()
    out = {}
    for ch, s in _sensors.items():
        _instrument(ch, s)
        out[str(ch)] = {
            "kind": s.kind,
            "unit": s.unit,
            "period_ms": s.period_ms,
            "bad_samples": s.bad_samples,
            "stuck_samples": s.stuck_samples,
        }
    return {"sensors": out}


def sensor_build_error(req):
    # build() on a bad profile: the error, and proof no hardware was touched.
    rig = Rig(req["profile"])
    try:
        sensor.build(req["profile"], rig)
        err = None
    except ValueError as e:
        err = str(e)
    return {"error": err, "hal_calls": rig.hal_calls}


def sensor_set(req):
    if "adc" in req:
        m = _rig.ads[req["adc"]]
        if "input" in req:
            _rig.volts[req["adc"]][req["input"]] = req["v"]
        for k in ("present", "stuck", "hung"):
            if k in req:
                setattr(m, k, req[k])
        if req.get("history"):
            m.history = []
    if "channel" in req:
        ch = req["channel"]
        if "mv" in req:
            _rig.mv[ch][0] = req["mv"]
        if "hx_stuck" in req:
            _rig.hx[ch].stuck = req["hx_stuck"]
    if "pin" in req:
        _rig.mcu_volts[req["pin"]][0] = req["v"]
    if "bus" in req:
        _rig.buses[req["bus"]].fail_errno = req["fail_errno"]
    return {}


def sensor_run(req):
    # Advance `ms` virtual milliseconds, one poll of every sensor per
    # `tick_ms`. Returns each channel's judged samples since the last run and
    # how many polls returned True.
    for ch in _log:
        del _log[ch][:]
    tick = req.get("tick_ms", 1)
    good = {}
    chans = sorted(_sensors)
    for ch in chans:
        good[ch] = 0
    t_end = _rig.t + req["ms"]
    raised = None
    while _rig.t < t_end:
        _rig.t += tick
        now = _rig.ticks_ms()
        for ch in chans:
            try:
                if _sensors[ch].poll(now):
                    good[ch] += 1
            except Exception as e:  # poll must never raise; report it
                raised = "%s: %s" % (type(e).__name__, e)
    out = {}
    for ch in chans:
        s = _sensors[ch]
        out[str(ch)] = {
            "samples": _log[ch][:],
            "good_polls": good[ch],
            "fault": s.fault,
            "fault_value": s.fault_value,
            "signal": s.signal,
            "raw": s.raw,
        }
    return {"channels": out, "raised": raised, "ticks": _rig.ticks_ms()}


def sensor_history(req):
    m = _rig.ads[req["adc"]]
    return {
        "history": [list(h) for h in (m.history or [])],
        "ignored_starts": m.ignored_starts,
        "conversions": m.conversions,
    }


def sensor_break(req):
    # A driver whose bus raises something other than OSError: poll() must
    # still return, reporting MISSING.
    class Broken:
        def writeto_mem(self, *a):
            raise ValueError("broken")

        def readfrom_mem_into(self, *a):
            raise ValueError("broken")

    for s in _sensors.values():
        if isinstance(s, sensor.AdsSensor):
            s._share.ads._i2c = Broken()
    return {}


def sensor_freeze_share(req):
    # The ADS share stops converting: nobody's poll drives it any more.
    for s in _sensors.values():
        if isinstance(s, sensor.AdsSensor):
            s._share_poll = lambda now: None
    return {}


def sensor_alloc(req):
    # Heap bytes allocated by poll() of every sensor over `ms` 1-ms ticks in
    # steady state. The models convert in _rig.sync(), outside the measured
    # calls; gc stays off so nothing is freed in between.
    chans = sorted(_sensors)
    objs = [_sensors[ch] for ch in chans]
    n = len(objs)
    polls = [s.poll for s in objs]
    for s in objs:
        try:
            del s._judge  # the logging wrapper allocates; measure the sensor alone
        except AttributeError:
            pass
    ms = req["ms"]
    good = [0] * n
    gc.collect()
    gc.disable()
    used = 0
    k = 0
    while k < ms:
        _rig.t += 1
        _rig.sync()
        now = _rig.ticks_ms()
        before = gc.mem_alloc()
        i = 0
        while i < n:
            if polls[i](now):
                good[i] += 1
            i += 1
        used += gc.mem_alloc() - before
        k += 1
    gc.enable()
    faults = [s.fault for s in objs]
    return {"bytes": used, "good": good, "faults": faults}


OPS = {
    "ads_sweep": ads_sweep,
    "ads_continuous": ads_continuous,
    "ads_missing": ads_missing,
    "ads_bad_config": ads_bad_config,
    "hx_read": hx_read,
    "hx_timeout": hx_timeout,
    "hx_power": hx_power,
    "hx_sck_high": hx_sck_high,
    "mcu_read": mcu_read,
    "mcu_errors": mcu_errors,
    "simbus_i2c": simbus_i2c,
    "sensor_setup": sensor_setup,
    "sensor_set": sensor_set,
    "sensor_build_error": sensor_build_error,
    "sensor_run": sensor_run,
    "sensor_history": sensor_history,
    "sensor_break": sensor_break,
    "sensor_freeze_share": sensor_freeze_share,
    "sensor_alloc": sensor_alloc,
}


jsonline.serve(OPS)
