# What labs do without isopress, run against the same plant so the bench can
# put isopress beside it (host/isopress/bench, `isopress bench run --compare`):
#
#   BangBang  a pressure switch with hysteresis on the holder's own
#             transducer: the fill opens below setpoint - h and closes at
#             the setpoint, the vent opens above setpoint + h and closes at
#             the setpoint; h is a share of the sensor's full scale, as
#             switches specify it. No filter, no model of the gas. It
#             follows the protocol's ramped setpoint, as a programmable
#             switch would.
#   Manual    the holder of the source papers (DOMAIN.md): filled by hand to
#             the target read off the gauge, valve closed, no regulation.
#             Each new target of the protocol is one more fill or vent by
#             hand; the operator checks the gauge once after `check_s` (the
#             gas has cooled by then) and tops up or bleeds that once.
#
# Both read the plant's sensor (its noise included) through the sensor's
# nominal transfer function (Gauge) and command the holder's valves directly,
# as the sim HAL does for the firmware. They run in MicroPython (the bench)
# and in CPython alike: floats and allocation are fine here, nothing below is
# firmware. Units: Pa, seconds.


class Gauge:
    # The pressure a plain gauge on this holder's sensor shows, Pa, or None
    # when the sensor gives nothing (an unplugged load cell amplifier).
    def __init__(self, holder):
        self.h = holder
        s = holder.cfg["sensor"]
        self.signal = s["signal"]
        if self.signal == "load_cell":
            self.fs = s["capacity_n"] / (holder.cfg["area_mm2"] * 1.0e-6)
            self.sens = s["sensitivity_mv_per_v"]
        else:
            self.fs = s["range_mpa"] * 1.0e6
            self.supply = s["supply_v"]

    def read(self):
        v = self.h.signal()
        if v is None:
            return None
        if self.signal == "load_cell":
            x = v / self.sens
        elif self.signal == "current_4_20ma":
            x = (v - 4.0) / 16.0
        else:
            x = (v / self.supply - 0.1) / 0.8
        return x * self.fs


class _Valves:
    # One holder's fill and vent with opening counts, set the way the HAL
    # sets them (the plant decides whether gas passes: stuck valves).
    def __init__(self, holder):
        self.h = holder
        self.fill_opens = 0
        self.vent_opens = 0

    def set(self, fill, vent):
        h = self.h
        if fill and not h.fill:
            self.fill_opens += 1
        if vent and not h.vent:
            self.vent_opens += 1
        h.fill = fill
        h.vent = vent

    def busy(self):
        return self.h.fill or self.h.vent


class BangBang:
    name = "bangbang"

    def __init__(self, plant, channels, hysteresis_pct_fs, tick_s=0.05, idle_s=1.0):
        if not hysteresis_pct_fs > 0:
            raise ValueError("hysteresis_pct_fs must be > 0")
        self.plant = plant
        self.hyst = {}
        self.tick_s = tick_s
        self.idle_s = idle_s
        self.gauges = {}
        self.valves = {}
        for ch in channels:
            h = plant.holder(ch)
            if h.kind == "monitor":
                continue
            self.gauges[ch] = Gauge(h)
            self.valves[ch] = _Valves(h)
            self.hyst[ch] = self.gauges[ch].fs * hysteresis_pct_fs / 100.0
        self.reading = {}

    def control(self, ch, ref, target):
        # ref: the protocol's (ramped) setpoint now, Pa, or None before the
        # protocol starts. The switch acts on it with its hysteresis.
        v = self.valves.get(ch)
        if v is None:
            return
        p = self.gauges[ch].read()
        self.reading[ch] = p
        if p is None or ref is None:
            v.set(False, False)  # no signal: a switch without input stays off
            return
        h = v.h
        hy = self.hyst[ch]
        fill = h.fill
        vent = h.vent
        if fill:
            fill = p < ref
        elif p < ref - hy:
            fill = True
        if vent:
            vent = p > ref
        elif p > ref + hy:
            vent = True
        if fill and vent:
            vent = False
        v.set(fill, vent)

    def next_step(self):
        # A switch reacts at once while a valve is open; between actions the
        # pressure moves slowly, and looking once a second changes nothing
        # measurable but saves the simulation most of its steps.
        for v in self.valves.values():
            if v.busy():
                return self.tick_s
        return self.idle_s


class Manual:
    name = "manual"

    def __init__(self, plant, channels, tick_s=0.05, check_s=120.0, idle_s=10.0):
        self.plant = plant
        self.tick_s = tick_s
        self.check_s = check_s
        self.idle_s = idle_s
        self.gauges = {}
        self.valves = {}
        self.want = {}  # the target the operator is working to
        self.state = {}  # "idle", "filling", "venting", "check" (waiting to look again)
        self.check_at = {}
        self.checked = {}
        for ch in channels:
            h = plant.holder(ch)
            if h.kind == "monitor":
                continue
            self.gauges[ch] = Gauge(h)
            self.valves[ch] = _Valves(h)
            self.want[ch] = None
            self.state[ch] = "idle"
        self.reading = {}

    def control(self, ch, ref, target):
        # Works to the protocol's target, not its ramp: by hand there is only
        # "open until the gauge says so".
        v = self.valves.get(ch)
        if v is None:
            return
        t = self.plant.t
        if target is not None and target != self.want[ch]:
            self.want[ch] = target
            self.checked[ch] = False
            self._start(ch, v)
        st = self.state[ch]
        if st == "idle":
            return
        p = self.gauges[ch].read()
        self.reading[ch] = p
        want = self.want[ch]
        if p is None:
            v.set(False, False)
            self.state[ch] = "idle"
            return
        if st == "filling" and p >= want or st == "venting" and p <= want:
            v.set(False, False)
            if self.checked[ch]:
                self.state[ch] = "idle"
            else:
                self.state[ch] = "check"
                self.check_at[ch] = t + self.check_s
        elif st == "check" and t >= self.check_at[ch]:
            self.checked[ch] = True
            self._start(ch, v, p)

    def _start(self, ch, v, p=None):
        if p is None:
            p = self.gauges[ch].read()
        want = self.want[ch]
        if p is None or want is None:
            self.state[ch] = "idle"
            return
        if p < want:
            self.state[ch] = "filling"
            v.set(True, False)
        elif p > want:
            self.state[ch] = "venting"
            v.set(False, True)
        else:
            self.state[ch] = "idle"

    def next_step(self):
        t = self.plant.t
        step = self.idle_s
        for ch in self.state:
            st = self.state[ch]
            if st == "filling" or st == "venting":
                return self.tick_s
            if st == "check":
                d = self.check_at[ch] - t
                if d < step:
                    step = d if d > self.tick_s else self.tick_s
        return step


def make(name, plant, channels, options):
    # A baseline by name; options as the plan gives them (Pa, seconds).
    if name == "bangbang":
        return BangBang(
            plant,
            channels,
            options.get("hysteresis_pct_fs", 0.5),
            options.get("tick_s", 0.05),
            options.get("idle_s", 1.0),
        )
    if name == "manual":
        return Manual(
            plant,
            channels,
            options.get("tick_s", 0.05),
            options.get("check_s", 120.0),
            options.get("idle_s", 10.0),
        )
    raise ValueError("unknown baseline %r (bangbang, manual)" % (name,))
