# The board: builds channels, sensors, profiles, cycler I/O and the protocol
# endpoint from the board profile and the config file, then runs the control
# tick forever. The same code runs on a board (port_rp2 / port_esp32) and in
# the simulator (port_sim).
#
#     dev = Device(profile)          # valves closed first, then the rest
#     dev.run()                      # never returns on a board
#
# Boot policy. Every valve closes before anything that can fail. A missing or
# corrupt config boots with the profile's defaults, every channel ISOLATED
# with the CONFIG alarm latched and a CONFIG_BAD event, never a crash; the
# host can then write a config and acknowledge. Otherwise each channel that
# was regulating before the reset resumes its last target (state.json, written
# whenever a target or mode changes) once its sensor has given a sample: the
# valves were closed through the reset, so the cell kept its pressure, and
# resuming is what keeps it. A profile resumes PAUSED at its step (profile.py).
import gc
from profile import Profile

import calibration
import config
import frame
import hal
import sensor as sensor_mod
import storage
import wire
from channel import Channel
from clock import Clock
from cycler_io import CyclerIO
from endpoint import Endpoint
from proportional import Proportional
from supervisor import CONFIG, HOLD, ISOLATED, LATCHED, RAMP, VENT

FIRMWARE = (0, 1, 0)
STATE = "state.json"
BOOTS = "boots.json"

_K = dict((n.lower(), k) for k, n in wire.CHANNEL_KINDS)
_R = wire.codes(wire.RESULTS)
OK = _R["OK"]
UNKNOWN_MESSAGE = _R["UNKNOWN_MESSAGE"]
UNKNOWN_CHANNEL = _R["UNKNOWN_CHANNEL"]
BAD_STATE = _R["BAD_STATE"]
STORAGE = _R["STORAGE"]
NOT_SUPPORTED = _R["NOT_SUPPORTED"]
OUT_OF_RANGE = _R["OUT_OF_RANGE"]
_E = wire.codes(wire.EVENTS)
EV_BOOT = _E["BOOT"]
EV_CONFIG_BAD = _E["CONFIG_BAD"]
EV_CONFIG_CHANGED = _E["CONFIG_CHANGED"]
EV_ACTUATIONS = _E["ACTUATIONS"]
EV_CALIBRATION = _E["CALIBRATION"]
_C = wire.codes(wire.CALIBRATIONS)
_M = frame.BY_NAME
ACTUATIONS_EVERY = 3600000  # ms between ACTUATIONS events per channel


def _id(name):
    return _M[name].id


SET_SETPOINT = _id("SET_SETPOINT")
SET_LIMITS = _id("SET_LIMITS")
PROFILE_LOAD = _id("PROFILE_LOAD")
PROFILE_START = _id("PROFILE_START")
PROFILE_STOP = _id("PROFILE_STOP")
PROFILE_ADVANCE = _id("PROFILE_ADVANCE")
TARE = _id("TARE")
CALIBRATE = _id("CALIBRATE")
ACK_ALARM = _id("ACK_ALARM")
VENT_CMD = _id("VENT")
ISOLATE = _id("ISOLATE")
GET_CONFIG = _id("GET_CONFIG")
SET_CONFIG = _id("SET_CONFIG")


class _Stack:
    # A load cell's calibration (signal -> mN) read as stack pressure (Pa):
    # calibration.per_area divides the whole function by the electrode area,
    # so the tick still does one integer value().
    def __init__(self, force, area_x100):
        self.force = force
        self.value = None
        self.rescale(area_x100)

    def rescale(self, area_x100):
        self.value = self.force.per_area(area_x100).value
        self.area_x100 = area_x100


class Device:
    def __init__(self, profile, fs=None, link=None):
        # Valves first: closed before anything that can fail.
        valves = {}
        for c in profile["channels"]:
            for key in ("fill_pin", "vent_pin"):
                if key in c:
                    valves[c[key]] = hal.Valve(c[key])
            iso = (c.get("proportional") or {}).get("isolate_pin")
            if type(iso) is int:
                valves[iso] = hal.Valve(iso)  # the regulator's isolation valve
        self.valves = valves
        self.profile = profile
        self.fs = hal.FS if fs is None else fs
        self.now = hal.ticks_ms()
        cfg, status = config.load(self.fs, profile)
        self.cfg = cfg
        self.config_status = status
        self.tick_ms = 1000 // cfg.value(0, "tick_hz")
        self.telemetry_every = cfg.value(0, "tick_hz") // cfg.value(0, "telemetry_hz")
        self.clock = Clock(hal.ticks_ms, hal.ticks_diff)
        self.clock.update(self.now)
        self.boot_id = self._next_boot()
        self.ack_value = 0
        self.channels = []
        self.by_number = {}
        self.endpoint = Endpoint(
            link if link is not None else hal.Link(),
            self,
            self.clock,
            cfg.value(0, "ring_bytes"),
            len(profile["channels"]),
            cfg.value(0, "host_silence"),
        )
        sensors = sensor_mod.build(profile, hal)
        # Before the channels: configuring a channel sets its analog scale.
        self.io = CyclerIO(profile, hal, [c["channel"] for c in profile["channels"]])
        for c in profile["channels"]:
            n = c["channel"]
            s = sensors[n]
            kind = _K[c["kind"]]
            force = calibration.Calibration(s.kind, c["sensor"], None)
            try:
                stored = cfg.calibration(n)
                if stored:
                    force = calibration.Calibration(s.kind, c["sensor"], stored)
            except ValueError:
                pass  # config.load validated it; a profile change can still orphan it
            load_cell = force.unit == "mN"
            cal = _Stack(force, cfg.value(n, "area")) if load_cell else force
            ch = Channel(
                n,
                kind,
                s,
                cal,
                valves.get(c.get("fill_pin")),
                valves.get(c.get("vent_pin")),
                self.tick_ms,
                self._full_scale(n, c, force),
                self.emit,
            )
            ch.force_cal = force
            ch.load_cell = load_cell
            if "proportional" in c:
                pb = c["proportional"]
                iso = valves.get(pb.get("isolate_pin")) if isinstance(pb, dict) else None
                ch.prop = Proportional(ch, pb, profile.get("analog_out") or {}, hal, iso)
            self._configure(ch)
            self.channels.append(ch)
            self.by_number[n] = ch
        self.chans = tuple(self.channels)
        self.profiles = {}
        for ch in self.channels:
            self.profiles[ch.number] = Profile(ch, self.emit, self.fs, hal.ticks_diff)
        # A tuple for the tick: dict.values() would allocate a view each time.
        self.profile_list = tuple(self.profiles[ch.number] for ch in self.channels)
        self._tel_count = 0
        self._act_ms = 0
        self._act_fill = [0] * len(self.channels)
        self._act_vent = [0] * len(self.channels)
        self.hello_head = [
            FIRMWARE[0], FIRMWARE[1], FIRMWARE[2], wire.VERSION, wire.schema_hash(),
            (hal.unique_id() + bytes(8))[:8], self.boot_id & 0xFFFF, cfg.crc,
            cfg.value(0, "telemetry_hz"), self.endpoint.ring_samples,
        ]  # fmt: skip
        self.hello_items = [
            [ch.number, ch.kind, ch.sensor.kind, ch.full_scale] for ch in self.channels
        ]
        self.emit(EV_BOOT, 0, hal.reset_cause(), cfg.crc, self.boot_id & 0xFFFF, 0)
        self._restore = None
        if status != config.OK:
            self.emit(EV_CONFIG_BAD, 0, status, 0, 0, 0)
            for ch in self.channels:
                ch.config_bad = True
                ch.sup.latch(CONFIG, ch.mode if ch.kind_monitor else ISOLATED, 0, status)
        else:
            self._restore = self._read_state()
            for p in self.profiles.values():
                p.restore(self.now)
        for ch in self.channels:
            ch.on_change = self._save_state
        self.wdt = hal.WDT(cfg.value(0, "watchdog"))
        gc.collect()

    # ---- build and configure (cold) --------------------------------------

    def _full_scale(self, n, c, force):
        s = c["sensor"]
        if "range_mpa" in s:
            return int(s["range_mpa"] * 1000000)
        area = self.cfg.value(n, "area")  # mm2 x100
        return int(s["capacity_n"] * 100000000 // area)

    def _configure(self, ch):
        # Copy the config into the channel, its regulator and supervisor.
        v = self.cfg.values(ch.number)
        names = config.NAMES

        def get(name, default=0):
            return v.get(names[name], default)

        ch.max_working = get("max_working")
        ch.trip = get("trip")
        ch.trip_reset = get("trip_reset")
        ch.min_alarm = get("min_alarm")
        ch.ramp_up = get("ramp_up")
        ch.ramp_down = get("ramp_down")
        sup = ch.sup
        sup.trip_persist = get("trip_persist")
        sup.tolerance = get("tolerance")
        sup.fill_timeout = get("fill_timeout", 10000)
        sup.fill_min_rise = get("fill_min_rise")
        sup.rise_alarm = get("rise_alarm")
        sup.leak_alarm = get("leak_alarm", 10)
        if "leak_window" in names:
            sup.leak_window = get("leak_window", sup.leak_window)
        reg = ch.reg
        reg.deadband = get("deadband") >> reg.shift
        reg.min_pulse = get("min_pulse", 5)
        reg.min_off = get("min_off", 2000)
        if "thermal_tau" in names:
            reg.set_tau(get("thermal_tau", reg.tau))
        if ch.load_cell and ch.cal.area_x100 != get("area", ch.cal.area_x100):
            ch.cal.rescale(get("area"))
        fs_key = names["analog_fs"]
        if fs_key in v:
            # analog_fs_v is in mV (exponent -3), as set_scale takes it.
            self.io.set_scale(ch.number, v[fs_key], v[names["analog_fs_v"]])
        if ch.prop is not None:
            ch.control = get("control")
            ch.prop.set_enabled(ch.control)
            if ch.control:
                # A rise with the fill valve shut is how a leaking fill valve
                # shows in valve mode; here every rise is the regulator's.
                sup.rise_alarm = 0

    def _next_boot(self):
        d, status = storage.read(self.fs + BOOTS)
        n = (d + 1) if (status == storage.OK and type(d) is int) else 1
        storage.write(self.fs + BOOTS, n)
        return n

    def _save_state(self, ch=None):
        s = []
        for c in self.channels:
            s.append([c.number, c.mode, c.target, c.rate])
        storage.write(self.fs + STATE, s)

    def _read_state(self):
        d, status = storage.read(self.fs + STATE)
        if status != storage.OK:
            return None
        out = {}
        try:
            for n, mode, target, rate in d:
                if mode in (HOLD, RAMP, VENT):
                    out[n] = (target, rate)
        except (TypeError, ValueError):
            return None
        return out

    # ---- the tick (no allocation in steady state) ---------------------------

    def emit(self, kind, channel, code, a, b, c):
        self.endpoint.event(self.now, kind, channel, code, a, b, c)

    def tick(self, now):
        self.now = now
        fault = self.config_status != 0
        io = self.io
        for ch in self.chans:
            ch.tick(now)
            ch.valves = ch.valve_bits()
            if ch.alarms & LATCHED:
                fault = True
            io.analog(ch.number, ch.pressure)
        if self._restore is not None:
            self._resume()
        for p in self.profile_list:
            p.tick(now)
        if io.trigger_edge(now):
            for p in self.profile_list:
                p.trigger(now)
        io.fault(fault)
        self.endpoint.poll(now)
        self._tel_count += 1
        if self._tel_count >= self.telemetry_every:
            self._tel_count = 0
            self.endpoint.telemetry(now, self.chans)
        self._act_ms += self.tick_ms
        if self._act_ms >= ACTUATIONS_EVERY:
            self._actuations()
        # Fed only here, after every channel's checks ran: a loop that hangs
        # or raises resets the board, which boots with every valve closed.
        self.wdt.feed()

    def _resume(self):
        # Once each channel has a sample, give it back its target (cold).
        left = False
        for n, (target, rate) in self._restore.items():
            ch = self.by_number.get(n)
            if ch is None or ch.mode in (HOLD, RAMP, VENT):
                continue
            if not ch.measured:
                left = True
                continue
            # The rate it had, unless that breaks the limit in the direction
            # it now has to go (the pressure may have crossed the target).
            up = target >= ch.pressure
            limit = ch.ramp_up if up else ch.ramp_down
            ch.command(target, rate if 0 < rate <= limit else 0, 1)
        if not left:
            self._restore = None

    def _actuations(self):
        i = 0
        for ch in self.chans:
            if not ch.kind_monitor:
                self.emit(
                    EV_ACTUATIONS, ch.number, 0, ch.fill_count - self._act_fill[i],
                    ch.vent_count - self._act_vent[i], self._act_ms,
                )  # fmt: skip
                self._act_fill[i] = ch.fill_count
                self._act_vent[i] = ch.vent_count
            i += 1
        self._act_ms = 0

    def run(self):
        nxt = hal.ticks_ms()
        while True:
            self.tick(hal.ticks_ms())
            nxt = hal.ticks_add(nxt, self.tick_ms)
            if hal.ticks_diff(hal.ticks_ms(), nxt) > self.tick_ms:
                nxt = hal.ticks_ms()  # overran by a tick: do not try to catch up
            hal.idle_until(nxt)

    # ---- commands (cold path) -----------------------------------------------

    def command(self, msg, v, n_items):
        self.ack_value = 0
        ch = self.by_number.get(v[0])
        if msg == GET_CONFIG or msg == SET_CONFIG:
            return self._config_cmd(msg, v)
        if ch is None:
            return UNKNOWN_CHANNEL
        prof = self.profiles[ch.number]
        now = self.now
        if msg == SET_SETPOINT:
            if prof.running:
                return BAD_STATE  # stop the profile first: one owner of the setpoint
            r = ch.command(v[1], v[2], 0)
            self.ack_value = ch.limit_value
            return r
        if msg == VENT_CMD:
            if prof.running:
                prof.stop(now)
            r = ch.vent_to(v[1])
            self.ack_value = ch.limit_value
            return r
        if msg == ISOLATE:
            if prof.running:
                prof.stop(now)
            return ch.isolate()
        if msg == ACK_ALARM:
            left = ch.acknowledge(v[1])
            self.ack_value = left
            return BAD_STATE if left else OK
        if msg == SET_LIMITS:
            r, value = self.cfg.set_limits(ch.number, v[1], v[2], v[3], v[4], v[5], v[6])
            if r == OK and ch.target > v[1]:
                r, value = OUT_OF_RANGE, ch.target  # would leave the present target above max
                self.cfg = config.load(self.fs, self.profile)[0]
            self.ack_value = value
            if r != OK:
                return r
            return self._commit(ch, config.MAX_WORKING, v[1])
        if msg == PROFILE_LOAD:
            r, value = prof.load(v, n_items)
            self.ack_value = value
            return r
        if msg == PROFILE_START:
            return prof.start(v[1], now)
        if msg == PROFILE_STOP:
            return prof.stop(now)
        if msg == PROFILE_ADVANCE:
            return prof.advance(v[1], v[2], now)
        if msg == TARE or msg == CALIBRATE:
            return self._calibrate(ch, msg, v)
        return UNKNOWN_MESSAGE

    def _commit(self, ch, key, value):
        # Save the config, apply it, tell the host. On a flash failure the
        # file is unchanged; reload it so memory matches what will boot.
        if not self.cfg.save():
            self.cfg = config.load(self.fs, self.profile)[0]
            return STORAGE
        if ch is not None:
            self._configure(ch)
        self.hello_head[7] = self.cfg.crc
        self.emit(EV_CONFIG_CHANGED, 0 if ch is None else ch.number, key, value, self.cfg.crc, 0)
        return OK

    def _config_cmd(self, msg, v):
        n = v[0]
        if msg == GET_CONFIG:
            r, value = self.cfg.get(n, v[1])
            self.ack_value = value
            return r
        r, value = self.cfg.set(n, v[1], v[2])
        self.ack_value = value
        if r != OK:
            return r
        ch = self.by_number.get(n)
        r = self._commit(ch, v[1], v[2])
        if r == OK and n == 0:
            # Rates and ring sizes take effect at the next boot.
            pass
        return r

    def _calibrate(self, ch, msg, v):
        force = ch.force_cal
        if not ch.sensor or ch.sensor_fault:
            return BAD_STATE
        signal = ch.sensor.signal
        if msg == TARE:
            r = force.tare(signal)
        else:
            action = v[1]
            ref = v[3]
            if action == _C["CAPTURE"]:
                r = force.capture(v[2], signal, ref)
                if r == OK:
                    self.emit(EV_CALIBRATION, ch.number, v[2], ch.raw, ref, 0)
                return r
            if action == _C["CLEAR"]:
                force.clear()
                r = OK
            elif action == _C["STORE"]:
                r, self.ack_value = force.store()
            else:
                return OUT_OF_RANGE
        if r != OK:
            return r
        if ch.load_cell:
            ch.cal.rescale(ch.cal.area_x100)
        r = self.cfg.set_calibration(ch.number, force.to_dict())
        if r != OK:
            return r
        return self._commit(ch, 0, 0)


def run(path="/board.json"):
    # Boot entry (main.py): the board profile from flash, then the loop.
    import json

    with open(path) as f:
        profile = json.load(f)
    Device(profile).run()
