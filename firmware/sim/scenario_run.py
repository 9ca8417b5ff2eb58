# One bench scenario in virtual time, under the MicroPython unix port:
#
#     micropython -X heapsize=8M scenario_run.py PLAN.json
#
# The plan (written by host/isopress/bench/scenario.py from a scenario file,
# tests/scenarios/README.md) names the plant, the board profile and config,
# the controller (isopress: the unchanged firmware on the sim HAL; bangbang
# or manual: baseline.py), each channel's protocol, the cycler's events and
# the board and link faults. Plant faults and disturbances are already in
# the plant parameters, so the plant fires them at their exact times,
# whatever the controller.
#
# It writes, into plan["out"]:
#   trace.bin    one row per control step: ROW_HEAD then ROW_CH per recorded
#                channel (little-endian, packed), the plant's TRUE state
#                beside what the controller measured and meant
#   result.json  events the board sent (decoded from its link), the actions
#                taken and what the board answered, link figures, resets
# The host turns them into metrics (host/isopress/bench/metrics.py).
#
# Schedule and Recorder import nothing MicroPython-only, so the host's
# hardware-in-the-loop runner (host/isopress/hil.py) uses them as well.
import json
import struct

SET = 0  # step kinds, as wire.STEPS
RAMP = 1
HOLD = 2
WAIT = 3

ROW_HEAD = "<I"  # t_ms since the start
# per channel: reference Pa, target Pa, true Pa, measured Pa, controller's
# setpoint Pa, valve bits, mode, alarms, fill openings, vent openings (both
# counted since the start), gas used g
ROW_CH = "<iiiiiBBHIIf"
NONE_PA = -(1 << 31)  # no reference (before the protocol starts)
# valve bits of a row: commanded open at some time in the step (1, 2), gas
# passing at the end of the step (4, 8: a stuck valve passes uncommanded)
V_FILL = 1
V_VENT = 2
V_FILL_GAS = 4
V_VENT_GAS = 8
NO_MODE = 255  # a baseline has no modes or alarms

CAUSES = {"power": 1, "watchdog": 3}


def _pa(x):
    if x is None:
        return NONE_PA
    x = int(x + 0.5) if x >= 0 else -int(0.5 - x)
    if x > 2147483647:
        return 2147483647
    if x < -2147483647:
        return -2147483647
    return x


class Schedule:
    # One channel's protocol as the experimenter meant it: the reference
    # every controller is judged against. Steps are PROFILE_LOAD's
    # [kind, target Pa, rate Pa/s, duration ms, wait_for]. The reference
    # moves at `rate` towards each SET or RAMP target; a SET step ends at
    # once (the move goes on under the next steps), a RAMP step when the
    # reference gets there, a HOLD after its duration, a WAIT at the next
    # cycle event (or its duration, when one is given).
    def __init__(self, steps, start_ms):
        self.steps = steps
        self.start_ms = start_ms
        self.i = -1
        self.ref = None  # Pa, None before the start
        self.target = None
        self.rate = 0.0
        self.t = float(start_ms)
        self.step_end = None
        self.waiting = False
        self.done = False
        self.entered = []  # steps entered since the caller last took them

    def begin(self, p0):
        # Starts at start_ms from the pressure p0 (Pa) the holder has then.
        self.ref = float(p0)
        self.target = float(p0)
        self._enter(0, float(self.start_ms))

    @property
    def started(self):
        return self.i >= 0

    @property
    def moving(self):
        return self.ref is not None and self.ref != self.target

    def next_event_ms(self):
        # When the reference next reaches a target or a step ends (None: no
        # such time is known; a WAIT without time-out waits for a cycle).
        t = None
        if self.moving:
            t = self.t + abs(self.target - self.ref) / self.rate * 1000.0
        if self.step_end is not None and (t is None or self.step_end < t):
            t = self.step_end
        return t

    def update(self, t_ms):
        if self.i < 0 or t_ms <= self.t:
            return
        while True:
            nxt = self.next_event_ms()
            if nxt is None or nxt > t_ms:
                self._move(t_ms)
                return
            left = abs(self.target - self.ref) / self.rate * 1000.0 if self.moving else 0.0
            reached = self.moving and nxt >= self.t + left
            self._move(nxt)
            if reached:
                self.ref = self.target
                if not self.done and self.steps[self.i][0] == RAMP:
                    self._enter(self.i + 1, nxt)
            if self.step_end is not None and self.step_end <= nxt:
                self.step_end = None
                self.waiting = False
                self._enter(self.i + 1, nxt)

    def cycle(self, t_ms):
        # A cycle boundary: a WAIT step goes on. True if one did.
        self.update(t_ms)
        if not self.waiting:
            return False
        self.waiting = False
        self.step_end = None
        self._enter(self.i + 1, float(t_ms))
        return True

    def _move(self, t):
        if self.moving:
            d = self.rate * (t - self.t) / 1000.0
            if self.target > self.ref:
                self.ref = self.ref + d if self.ref + d < self.target else self.target
            else:
                self.ref = self.ref - d if self.ref - d > self.target else self.target
        self.t = t

    def _enter(self, i, t):
        n = len(self.steps)
        while True:
            if i >= n:
                self.i = n
                self.done = True
                return
            self.i = i
            kind, target, rate, dur, _wait = self.steps[i]
            self.entered.append(i)
            if kind == SET or kind == RAMP:
                self.target = float(target)
                self.rate = float(rate)
                if rate <= 0:
                    self.ref = self.target  # no rate: a step, not a ramp
                if kind == SET or self.ref == self.target:
                    i += 1
                    continue
                return
            if kind == HOLD:
                if dur <= 0:
                    i += 1
                    continue
                self.step_end = t + dur
                return
            self.waiting = True
            self.step_end = t + dur if dur else None
            return

    def take_entered(self):
        e = self.entered
        self.entered = []
        return e


class Recorder:
    # trace.bin writer: rows buffered in one preallocated block.
    def __init__(self, path, channels, block=512):
        self.f = open(path, "wb")
        self.channels = channels
        self.head = struct.calcsize(ROW_HEAD)
        self.per = struct.calcsize(ROW_CH)
        self.size = self.head + self.per * len(channels)
        self.buf = bytearray(self.size * block)
        self.block = block
        self.n = 0
        self.rows = 0

    def row(self, t_ms, values):
        # values: per channel (ref, target, true, measured, setpoint, valves,
        # mode, alarms, fill_opens, vent_opens, gas_g), pressures in Pa.
        off = self.n * self.size
        buf = self.buf
        struct.pack_into(ROW_HEAD, buf, off, t_ms)
        off += self.head
        for v in values:
            struct.pack_into(
                ROW_CH, buf, off, _pa(v[0]), _pa(v[1]), _pa(v[2]), _pa(v[3]), _pa(v[4]),
                v[5], v[6], v[7], v[8], v[9], v[10],
            )  # fmt: skip
            off += self.per
        self.n += 1
        self.rows += 1
        if self.n == self.block:
            self.flush()

    def flush(self):
        if self.n:
            self.f.write(memoryview(self.buf)[: self.n * self.size])
            self.n = 0

    def close(self):
        self.flush()
        self.f.close()


class BitErrors:
    # Flips each bit of a byte stream with probability `ber`, from its own
    # xorshift32 generator so a seed repeats the same errors.
    def __init__(self, ber, seed):
        import math

        self.log = math.log
        self.ber = ber
        self.s = (seed or 1) & 0xFFFFFFFF
        self.flips = 0
        self.skip = self._gap()

    def _rand(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return (s + 1) / 4294967297.0

    def _gap(self):
        # bits to the next flip: geometric, so a clean byte costs nothing
        return int(self.log(self._rand()) / self.log(1.0 - self.ber))

    def apply(self, data):
        n = len(data)
        bits = n * 8
        if self.skip >= bits:
            self.skip -= bits
            return data
        out = bytearray(data)
        pos = self.skip
        while pos < bits:
            out[pos >> 3] ^= 1 << (pos & 7)
            self.flips += 1
            pos += 1 + self._gap()
        self.skip = pos - bits
        return out


# ------------------------------------------------------------ controllers


def configure(sim, wanted):
    # Config keys from the scenario ({channel: {name: wire value}}), as
    # `isopress flash` or a host would set them; the board then reboots to
    # take the board keys (tick_hz).
    if not wanted:
        return
    import config

    cfg = sim.dev.cfg
    todo = []
    for ch in wanted:
        for name in wanted[ch]:
            todo.append((int(ch), name, wanted[ch][name]))
    # A key may wait for another (telemetry_hz <= tick_hz): retry what was
    # refused while something else still changes.
    while todo:
        left = []
        for ch, name, value in todo:
            r, v = cfg.set(ch, config.NAMES[name], value)
            if r:
                left.append((ch, name, value, r, v))
        if len(left) == len(todo):
            ch, name, value, r, v = left[0]
            raise ValueError(
                "config %s = %d on channel %d refused (result %d, nearest %d)"
                % (name, value, ch, r, v)
            )
        todo = [x[:3] for x in left]
    if not cfg.save():
        raise ValueError("config could not be saved to " + sim.fs)
    sim.reboot(0)


class _Board:
    # The isopress controller: the unchanged firmware (device.py on the sim
    # HAL) against the run's plant, and a host on its link.
    name = "isopress"

    def __init__(self, run, plan):
        import frame
        import harness
        import port_sim
        import wire

        self.run = run
        self.frame = frame
        self.port_sim = port_sim
        self.profile = plan["board"]
        self.link = port_sim.MemoryLink()
        self.sim = harness.Sim(self.profile, None, plan["fs"], self.link, 0, run.plant)
        configure(self.sim, plan.get("config") or {})
        self.ev_names = dict(wire.EVENTS)
        self.flag_retry = wire.FLAG_RETRY
        self.ev_id = frame.BY_NAME["EVENT"].id
        self.ack_id = frame.BY_NAME["ACK"].id
        self.clean = frame.Deframer()
        self.pins = {}
        for c in self.profile["channels"]:
            self.pins[c["channel"]] = (c.get("fill_pin"), c.get("vent_pin"))
        self.base = {}
        self.last = {}
        for ch in self.pins:
            self.base[ch] = [0, 0]
            self.last[ch] = [0, 0]
        self.dev = None
        self._valves()
        self.step_of = {}  # channel -> step of its last PROFILE_STEP event
        self.host = Host(self, plan.get("host") or {})
        self.resets = 0
        self.trigger_pin = self.profile.get("trigger_in_pin")
        self.trigger_level = self.profile.get("trigger_in_active_level", 0)

    def _valves(self):
        # Openings are counted by the HAL's valves, which a reboot replaces:
        # keep what the old ones counted.
        dev = self.sim.dev
        if dev is self.dev:
            return
        if self.dev is not None:
            for ch in self.pins:
                b = self.base[ch]
                b[0] += self.last[ch][0]
                b[1] += self.last[ch][1]
                self.last[ch] = [0, 0]
        self.dev = dev
        self.vobj = {}
        for ch in self.pins:
            f, v = self.pins[ch]
            self.vobj[ch] = (dev.valves.get(f), dev.valves.get(v))

    def now_ms(self):
        return self.port_sim.now_ms()

    def step(self, until_ms):
        t = self.now_ms()
        self.sim.step()
        if self.sim.dev is not self.dev:
            self.resets += 1
            self._valves()
        self._drain(t)

    def _drain(self, t):
        out = self.link.tx
        if not out:
            self.host.poll(t, b"")
            return
        self.link.tx = bytearray()
        dec = self.clean
        feed = dec.feed
        for b in out:
            n = feed(b)
            if n > 0:
                raw = dec.buf
                if raw[1] == self.ev_id:
                    self._event(t, raw)
                if self.host.checking:
                    self.host.clean_frame(bytes(raw[:n]))
        self.host.poll(t, out)

    def _event(self, t, raw):
        # EVENT: time, seq, channel, kind, code, a, b, c
        _tm, _seq, ch, kind, code, a, b, c = struct.unpack_from("<IIBBHiii", raw, 6)
        name = self.ev_names.get(kind, str(kind))
        self.run.events.append([t, ch, name, code, a, b, c])
        if name == "PROFILE_STEP":
            self.step_of[ch] = code
        elif name == "SETPOINT" and code == 0:
            self.host.setpoint_seen(a, b)

    def measured(self, ch):
        return self.sim.dev.by_number[ch].measured

    def state(self, ch):
        # (measured, setpoint, valve bits, mode, alarms, fill opens, vent opens)
        c = self.sim.dev.by_number.get(ch)
        f, v = self.vobj[ch]
        b = self.base[ch]
        fo = f.opened if f is not None else 0
        vo = v.opened if v is not None else 0
        last = self.last[ch]
        bits = 0
        if fo != last[0] or (f is not None and f.is_open()):
            bits |= V_FILL
        if vo != last[1] or (v is not None and v.is_open()):
            bits |= V_VENT
        last[0] = fo
        last[1] = vo
        return (c.pressure, c.setpoint, bits, c.mode, c.alarms, b[0] + fo, b[1] + vo)

    # -- actions --

    def command(self, t, name, values, n_items=0):
        lay = self.frame.BY_NAME[name]
        self.host.command(t, lay, values, n_items)

    def profile_load(self, t, ch, steps):
        vals = [ch]
        for kind, target, rate, dur, wait in steps:
            vals.extend((kind, wait, int(target), int(rate), int(dur)))
        self.command(t, "PROFILE_LOAD", vals, len(steps))
        self.command(t, "PROFILE_START", [ch, 0])

    def cycle(self, t, ch, n, via):
        if via == "trigger":
            return  # one edge on the shared input, see trigger()
        self.command(t, "PROFILE_ADVANCE", [ch, self.step_of.get(ch, 0), n])

    def trigger(self, level):
        if self.trigger_pin is None:
            raise ValueError("the board profile has no trigger_in_pin")
        on = self.trigger_level
        self.port_sim.set_input(self.trigger_pin, on if level else 1 - on)

    def reset(self, cause):
        if cause == CAUSES["watchdog"]:
            # The loop stops feeding the watchdog: a hang, which the
            # hardware watchdog turns into a reset.
            self.sim.dev.wdt.feed = _nothing
        else:
            self.sim.reboot(cause)
            self.resets += 1
            self._valves()

    def corrupt_config(self):
        path = self.sim.fs + "config.json"
        with open(path) as f:
            text = f.read()
        i = len(text) // 2
        with open(path, "w") as f:
            f.write(text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1 :])
        self.reset(CAUSES["power"])

    def summary(self):
        st = self.sim.dev.endpoint.stats()
        out = self.host.summary()
        out["board_frames_in"] = st["frames_in"]
        out["board_drops"] = st["drops"]
        out["board_duplicates"] = st["duplicates"]
        out["board_commands"] = st["commands"]
        return out


def _nothing():
    pass


class Host:
    # The host on the board's link. "direct": commands go to Device.command
    # (as the firmware tests drive it) and the board's frames are only read.
    # "frames": a host like the bridge: IDENTIFY, a CLOCK_QUERY every
    # keepalive, commands as frames with a sequence number, re-sent with
    # FLAG_RETRY and the same number until their ACK comes; it can go away
    # (host_gone) and its bytes can suffer bit errors both ways.
    def __init__(self, board, opts):
        self.board = board
        self.mode = opts.get("link", "direct")
        self.keepalive = opts.get("keepalive_ms", 1000)
        self.retry = opts.get("retry_ms", 500)
        self.tries_max = opts.get("tries", 20)
        self.seed = opts.get("seed", 1)
        self.run = board.run
        fr = board.frame
        self.fr = fr
        self.framer = fr.Framer()
        self.dec = fr.Deframer()
        self.seq = 0
        self.queue = []  # [layout, values, n_items]
        self.inflight = None  # [seq, wire bytes, sent_ms, tries, name, values]
        self.next_keep = 0
        self.gone_until = -1
        self.err = None
        self.err_until = -1
        self.checking = False
        self.clean = {}
        self.clean_old = {}
        self.n = {
            "frames_sent": 0,
            "retries": 0,
            "acks": 0,
            "nacks": 0,
            "gave_up": 0,
            "host_drops": 0,
            "corrupt_accepted": 0,
            "bits_flipped": 0,
            "setpoint_commands": 0,
            "setpoint_events": 0,
            "setpoint_unexpected": 0,
        }
        self.sent_setpoints = []
        self.started = False

    def present(self, t):
        return t >= self.gone_until

    def command(self, t, layout, values, n_items):
        if layout.name == "SET_SETPOINT":
            self.n["setpoint_commands"] += 1
            self.sent_setpoints.append((values[1], values[2]))
        if self.mode == "direct":
            r = self.board.sim.dev.command(layout.id, values, n_items)
            self.run.log(t, layout.name, values[:3], r)
            return
        self.queue.append([layout, list(values), n_items])

    def setpoint_seen(self, target, rate):
        # A SETPOINT event from a host command: it must be one we sent.
        self.n["setpoint_events"] += 1
        if (target, rate) not in self.sent_setpoints:
            self.n["setpoint_unexpected"] += 1

    def clean_frame(self, raw):
        self.clean[raw] = True
        if len(self.clean) > 2000:
            self.clean_old = self.clean
            self.clean = {}

    def bit_errors(self, ber, until):
        self.err = BitErrors(ber, self.seed)
        self.err_until = until
        self.checking = True

    def poll(self, t, out):
        if self.mode == "direct":
            return
        if not self.present(t):
            return  # nobody reads: what the board sent is lost
        noisy = self.err is not None and t < self.err_until
        if out:
            if noisy:
                out = self.err.apply(out)
            dec = self.dec
            for b in out:
                n = dec.feed(b)
                if n > 0:
                    raw = dec.buf
                    if self.checking:
                        key = bytes(raw[:n])
                        if key not in self.clean and key not in self.clean_old:
                            self.n["corrupt_accepted"] += 1
                    if raw[1] == self.board.ack_id:
                        self._ack(t, raw)
                elif n < 0:
                    self.n["host_drops"] += 1
        send = bytearray()
        if not self.started:
            self.started = True
            send.extend(self._frame("IDENTIFY", [1], 0))
        if t >= self.next_keep:
            self.next_keep = t + self.keepalive
            send.extend(self._frame("CLOCK_QUERY", [t & 0xFFFFFFFF], 0))
        inf = self.inflight
        if inf is not None and t - inf[2] >= self.retry:
            if inf[3] >= self.tries_max:
                self.n["gave_up"] += 1
                self.run.log(t, inf[4], inf[5][:3], "GAVE_UP")
                self.inflight = None
            else:
                inf[2] = t
                inf[3] += 1
                self.n["retries"] += 1
                send.extend(self._frame(inf[4], inf[5], inf[6], self.board.flag_retry, inf[0]))
        if self.inflight is None and self.queue:
            lay, values, n_items = self.queue.pop(0)
            seq = self.seq
            self.seq = (seq + 1) & 0xFFFF
            self.inflight = [seq, None, t, 1, lay.name, values, n_items]
            send.extend(self._frame(lay.name, values, n_items, 0, seq))
        if send:
            if noisy:
                send = self.err.apply(send)
            self.board.link.rx.extend(send)

    def _frame(self, name, values, n_items, flags=0, seq=-1):
        lay = self.fr.BY_NAME[name]
        if seq < 0:
            seq = 0xFFFF  # keepalives: any number outside the command window
        n = self.framer.put(lay, values, n_items, flags, seq)
        self.n["frames_sent"] += 1
        return bytes(self.framer.wire[:n])

    def _ack(self, t, raw):
        seq, cmd, result, _value = struct.unpack_from("<HBBi", raw, 6)
        inf = self.inflight
        if inf is None or seq != inf[0]:
            return
        self.n["acks"] += 1
        if result:
            self.n["nacks"] += 1
        self.run.log(t, inf[4], inf[5][:3], result)
        self.inflight = None

    def summary(self):
        out = dict(self.n)
        out["mode"] = self.mode
        if self.err is not None:
            out["bits_flipped"] = self.err.flips
        out["pending"] = len(self.queue) + (1 if self.inflight else 0)
        return out


class _Baseline:
    # bangbang or manual (baseline.py) on the run's plant, no firmware.
    def __init__(self, run, plan):
        import baseline

        self.run = run
        self.plant = run.plant
        chans = [int(c) for c in plan["protocols"]]
        self.ctl = baseline.make(plan["controller"], run.plant, chans, plan.get("baseline") or {})
        self.name = self.ctl.name
        self.t = 0
        self.last = {}
        for ch in self.ctl.valves:
            self.last[ch] = [0, 0]
        self.resets = 0

    def now_ms(self):
        return self.t

    def step(self, until_ms):
        run = self.run
        moving = False
        for ch in self.ctl.valves:
            s = run.schedules.get(ch)
            if s is None:
                continue
            s.update(self.t)
            if s.moving:
                moving = True
            self.ctl.control(ch, s.ref, s.target if s.started else None)
        dt = int(self.ctl.next_step() * 1000 + 0.5)
        if moving and dt > self.ctl.tick_s * 1000:
            dt = int(self.ctl.tick_s * 1000 + 0.5)
        if dt < 1:
            dt = 1
        t1 = self.t + dt
        if until_ms > self.t and t1 > until_ms:
            t1 = until_ms
        self.plant.advance_to(t1 / 1000.0)
        self.t = t1

    def state(self, ch):
        v = self.ctl.valves.get(ch)
        p = self.ctl.reading.get(ch)
        if v is None:
            return (p, None, 0, NO_MODE, 0, 0, 0)
        last = self.last[ch]
        bits = 0
        if v.fill_opens != last[0] or v.h.fill:
            bits |= V_FILL
        if v.vent_opens != last[1] or v.h.vent:
            bits |= V_VENT
        last[0] = v.fill_opens
        last[1] = v.vent_opens
        s = self.run.schedules.get(ch)
        return (p, s.ref if s else None, bits, NO_MODE, 0, v.fill_opens, v.vent_opens)

    # Board and host actions mean nothing to a holder without a board.
    def command(self, t, name, values, n_items=0):
        pass

    def profile_load(self, t, ch, steps):
        pass

    def cycle(self, t, ch, n, via):
        pass

    def summary(self):
        return {}


# ------------------------------------------------------------------ the run


class Run:
    def __init__(self, plan):
        import plant as plant_mod

        self.plan = plan
        self.plant = plant_mod.Plant(plan["plant"])
        self.events = []
        self.actions = []
        self.schedules = {}
        self.protocols = {}
        for ch in plan["protocols"]:
            p = plan["protocols"][ch]
            self.protocols[int(ch)] = p
            self.schedules[int(ch)] = Schedule(p["steps"], p["start_ms"])
        self.todo = []
        for a in plan.get("actions", ()):
            self.todo.append(list(a))
        for ch in self.protocols:
            self.todo.append([self.protocols[ch]["start_ms"], "protocol_start", {"channel": ch}])
        self.todo.sort(key=lambda a: a[0])
        if plan["controller"] == "isopress":
            self.ctl = _Board(self, plan)
        else:
            self.ctl = _Baseline(self, plan)
        self.record = plan["record"]

    def log(self, t, what, args, result):
        self.actions.append([t, what, args, result])

    def _act(self, t):
        # Every action due by t, in time order (an action may add another).
        while self.todo and self.todo[0][0] <= t:
            at, what, a = self.todo.pop(0)
            self._do(t, what, a)

    def _later(self, at, what, a):
        self.todo.append([at, what, a])
        self.todo.sort(key=lambda x: x[0])

    def _do(self, t, what, a):
        ctl = self.ctl
        board = isinstance(ctl, _Board)
        if what == "protocol_start":
            ch = a["channel"]
            if board and not ctl.measured(ch):
                # As a host waits for the board's first samples (a slow
                # tick or a load cell takes a while): try again next tick.
                self._later(t + 1, what, a)
                return
            s = self.schedules[ch]
            s.begin(self.plant.holder(ch).pressure)
            if self.protocols[ch]["run"] == "profile":
                ctl.profile_load(t, ch, s.steps)
                s.take_entered()
            else:
                self._host_steps(t, ch)
            self.log(t, what, [ch], 0)
        elif what == "cycle":
            if a.get("via") == "trigger" and board:
                ctl.trigger(True)
                self._later(t + 200, "trigger_release", {})
            for ch in a["channels"]:
                s = self.schedules.get(ch)
                moved = s.cycle(t) if s is not None else False
                if self.protocols.get(ch, {}).get("run") == "host":
                    self._host_steps(t, ch)
                else:
                    ctl.cycle(t, ch, a["n"], a.get("via", "host"))
                self.log(t, what, [ch, a["n"]], 0 if moved else "NOT_WAITING")
        elif what == "trigger_release":
            ctl.trigger(False)
        elif not board:
            self.log(t, what, [], "SKIPPED")  # board and link faults need a board
        elif what == "command":
            ctl.command(t, a["msg"], a["values"], a.get("n_items", 0))
        elif what == "profile_resume":
            ch = a["channel"]
            ctl.command(t, "PROFILE_START", [ch, ctl.step_of.get(ch, 0)])
        elif what == "reset":
            ctl.reset(a["cause"])
            self.log(t, what, [a["cause"]], 0)
        elif what == "config_corrupt":
            ctl.corrupt_config()
            self.log(t, what, [], 0)
        elif what == "host_gone":
            ctl.host.gone_until = a["until_ms"]
            self.log(t, what, [a["until_ms"]], 0)
        elif what == "bit_errors":
            ctl.host.bit_errors(a["ber"], a["until_ms"])
            self.log(t, what, [a["until_ms"]], 0)
        else:
            raise ValueError("unknown action " + what)

    def _host_steps(self, t, ch):
        # A protocol the host runs: each SET or RAMP step entered is a
        # SET_SETPOINT now.
        s = self.schedules[ch]
        s.update(t)
        for i in s.take_entered():
            kind, target, rate = s.steps[i][0], s.steps[i][1], s.steps[i][2]
            if kind == SET or kind == RAMP:
                self.ctl.command(t, "SET_SETPOINT", [ch, int(target), int(rate)])

    def run(self, out_dir):
        end = self.plan["duration_ms"]
        ctl = self.ctl
        rec = Recorder(out_dir + "trace.bin", self.record)
        plant = self.plant
        host_run = []
        for ch in self.protocols:
            if self.protocols[ch]["run"] == "host":
                host_run.append(ch)
        rows = [None] * len(self.record)
        t = ctl.now_ms()
        while t < end:
            self._act(t)
            nxt = self.todo[0][0] if self.todo else end
            ctl.step(nxt if nxt < end else end)
            t = ctl.now_ms()
            for ch in host_run:
                self._host_steps(t, ch)
            i = 0
            for ch in self.record:
                h = plant.holder(ch)
                s = self.schedules.get(ch)
                if s is not None:
                    s.update(t)
                meas, sp, bits, mode, alarms, fo, vo = ctl.state(ch)
                if h.fill_open:
                    bits |= V_FILL_GAS
                if h.vent_open:
                    bits |= V_VENT_GAS
                ref = s.ref if s is not None else None
                tgt = s.target if (s is not None and s.started) else None
                rows[i] = (ref, tgt, h.pressure, meas, sp, bits, mode, alarms, fo, vo,
                           h.gas_used * 1000.0)  # fmt: skip
                i += 1
            rec.row(t, rows)
        rec.close()
        return rec.rows


def main(path):
    import time

    with open(path) as f:
        plan = json.load(f)
    out = plan["out"]
    t0 = time.ticks_ms()
    result = {"name": plan["name"], "controller": plan["controller"]}
    try:
        run = Run(plan)
        result["rows"] = run.run(out)
        result["events"] = run.events
        result["actions"] = run.actions
        result["link"] = run.ctl.summary()
        result["resets"] = run.ctl.resets
        result["end_ms"] = run.ctl.now_ms()
        if isinstance(run.ctl, _Board):
            result["tick_ms"] = run.ctl.sim.dev.tick_ms
    except Exception as e:  # the host reports it; the traceback goes to stderr
        import sys

        sys.print_exception(e)
        result["error"] = "%s: %s" % (type(e).__name__, e)
    result["wall_s"] = time.ticks_diff(time.ticks_ms(), t0) / 1000.0
    with open(out + "result.json", "w") as f:
        json.dump(result, f)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1]))
