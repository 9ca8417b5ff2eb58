# One channel's profile: a short list of steps (SET, RAMP, HOLD, WAIT) that
# the board runs on its own, so an experiment's pressure schedule does not
# depend on the host staying connected.
#
#     prof = Profile(ch, emit, fs_dir)          # ticks_diff=hal.ticks_diff
#     result, value = prof.load(values, n_items) # PROFILE_LOAD, as frame.unpack fills it
#     prof.start(from_step, now); prof.stop(now); prof.advance(from_step, cycle, now)
#     prof.trigger(now)                          # a debounced trigger-input edge
#     prof.tick(now)                             # every control tick, allocates nothing
#     prof.restore(now)                          # at boot, once the channel exists
#
# Which fields a step uses (any other field must be 0, so nothing a host sends
# is silently ignored):
#     SET   target, rate   command the target and go on at once
#     RAMP  target, rate   command the target, go on when the channel's ramped
#                          setpoint has reached it
#     HOLD  duration       keep the target in force for `duration` ms
#     WAIT  wait_for,      until a PROFILE_ADVANCE naming this step (HOST) or a
#           duration       trigger edge (TRIGGER); a non-zero duration is a
#                          time-out after which the profile goes on
# rate 0 = the channel's ramp limit in that direction. Durations are full u32
# ms (49 days): they are counted down in seconds and milliseconds, not as one
# ticks_diff from the step's start, which only reaches 2**29 ms.
#
# Reset policy. Steps and run state are saved with storage (fs_dir +
# "profile<N>.json") on load, start, stop and step change, never per tick. A
# reset in the middle of a profile comes back PAUSED at the step it was in,
# with the channel commanded to hold that step's setpoint, and a PROFILE_STEP
# event says so:
#   - SET, HOLD, WAIT: the target in force when the step was entered;
#   - RAMP: the setpoint saved during the ramp. A falling ramp saves its
#     present setpoint every 10 s of ramp; a rising ramp saves the point it
#     will reach 10 s of ramp ahead (capped at the target) and saves again when
#     it gets there. Either way the saved value is never below the pressure at
#     the reset, so the reset itself never drops the pressure (DOMAIN.md: a
#     drop damages the cell for good); the channel goes to it at the step's rate.
# A channel with no sample yet answers the hold with BAD_STATE: it is asked
# again every tick until it takes it.
# PROFILE_START resumes: a HOLD restarts its full duration, a RAMP ramps on to
# its target. A WAIT keeps waiting while paused: the PROFILE_ADVANCE (or the
# trigger edge) the cycler sends at its cycle boundary still moves the profile
# on, so a reset between two cycles does not lose the step. Its time-out only
# runs again from a PROFILE_START. A profile that was stopped or had finished
# is not replayed: the channel keeps its own setpoint.
#
# A profile ends early, with PROFILE_DONE's `a` set to the reason, when the
# channel refuses a step (LATCHED, OUT_OF_RANGE after a limit change, ...) or
# when something else moves the channel's target (a host setpoint, a vent):
# the profile then no longer owns the channel and must not fight it.
import array

import storage
import wire

_R = wire.codes(wire.RESULTS)
OK = _R["OK"]
UNKNOWN_CHANNEL = _R["UNKNOWN_CHANNEL"]
OUT_OF_RANGE = _R["OUT_OF_RANGE"]
BAD_STATE = _R["BAD_STATE"]
BAD_PROFILE = _R["BAD_PROFILE"]
STORAGE = _R["STORAGE"]

_S = wire.codes(wire.STEPS)
SET = _S["SET"]
RAMP = _S["RAMP"]
HOLD = _S["HOLD"]
WAIT = _S["WAIT"]

_W = wire.codes(wire.WAITS)
NONE = _W["NONE"]
HOST = _W["HOST"]
TRIGGER = _W["TRIGGER"]

_E = wire.codes(wire.EVENTS)
EV_STEP = _E["PROFILE_STEP"]
EV_DONE = _E["PROFILE_DONE"]

SOURCE_PROFILE = 1  # ch.command's source: 0 host, 1 profile

# As many steps as one PROFILE_LOAD frame carries.
for _m in wire.MESSAGES:
    if _m[1] == "PROFILE_LOAD":
        _ITEM = len(_m[4])
        MAX_STEPS = (wire.MAX_PAYLOAD - wire.fields_size(_m[3])) // wire.fields_size(_m[4])
MAX_DURATION = 0xFFFFFFFF  # u32 ms on the wire

SAVE_S = 10  # a ramp's saved setpoint trails (or leads) it by at most this much ramp

# Run states as saved; in memory `running` and `step` say the same.
IDLE = 0  # loaded, stopped or finished: nothing to replay after a reset
RUNNING = 1
PAUSED = 2  # came back from a reset mid-profile; PROFILE_START resumes


def check(values, n_items, ch):
    # (result, value) for a PROFILE_LOAD's items against the channel's limits;
    # value is the limit broken (OUT_OF_RANGE) or the step at fault
    # (BAD_PROFILE; MAX_STEPS when the count is wrong).
    if n_items < 1 or n_items > MAX_STEPS:
        return BAD_PROFILE, MAX_STEPS
    if len(values) < 1 + n_items * _ITEM:
        return BAD_PROFILE, MAX_STEPS
    up = ch.ramp_up
    down = ch.ramp_down
    prev = ch.target  # the direction of the first move is from where the channel is going now
    i = 0
    while i < n_items:
        k = 1 + i * _ITEM
        kind = values[k]
        wait = values[k + 1]
        target = values[k + 2]
        rate = values[k + 3]
        dur = values[k + 4]
        if kind == WAIT:
            if wait != HOST and wait != TRIGGER:
                return BAD_PROFILE, i
        elif kind not in (SET, RAMP, HOLD) or wait != NONE:
            return BAD_PROFILE, i
        if kind == SET or kind == RAMP:
            if dur != 0:
                return BAD_PROFILE, i
            if target < 0:
                return OUT_OF_RANGE, 0
            if target > ch.max_working:
                return OUT_OF_RANGE, ch.max_working
            limit = up if target >= prev else down
            if rate < 0:
                return OUT_OF_RANGE, 0
            if rate > limit:
                return OUT_OF_RANGE, limit
            prev = target
        else:
            if target != 0 or rate != 0:
                return BAD_PROFILE, i
            if dur < 0:
                return OUT_OF_RANGE, 0
            if dur > MAX_DURATION:
                return OUT_OF_RANGE, MAX_DURATION
        i += 1
    return OK, 0


def _items(values, n_items):
    out = []
    i = 0
    while i < n_items:
        k = 1 + i * _ITEM
        out.append([values[k + j] for j in range(_ITEM)])
        i += 1
    return out


def _well_formed(steps):
    # A saved file is only trusted if it still reads as steps this module
    # could have written; limits are checked again when each step is entered.
    if not isinstance(steps, list) or not 0 < len(steps) <= MAX_STEPS:
        return False
    for s in steps:
        if not isinstance(s, list) or len(s) != _ITEM:
            return False
        for v in s:
            if not isinstance(v, int) or v < 0:
                return False
        if s[0] not in (SET, RAMP, HOLD, WAIT) or s[4] > MAX_DURATION:
            return False
        if (s[0] == WAIT) != (s[1] in (HOST, TRIGGER)) or s[1] > TRIGGER:
            return False
    return True


class Profile:
    def __init__(self, ch, emit, fs_dir, ticks_diff=None):
        if ticks_diff is None:
            import hal

            ticks_diff = hal.ticks_diff
        self._td = ticks_diff
        self.ch = ch
        self._emit = emit
        self.path = fs_dir + "profile%d.json" % ch.number
        n = MAX_STEPS
        self._kind = bytearray(n)
        self._wait = bytearray(n)
        self._target = array.array("i", [0] * n)
        self._rate = array.array("i", [0] * n)
        # u32 ms as seconds + ms: each part stays a small int on the boards.
        self._dur_s = array.array("i", [0] * n)
        self._dur_ms = array.array("i", [0] * n)
        self.n = 0
        self.running = False
        self.step = 0  # == n once the profile has run to its end
        self.waiting = NONE  # wait_for of the WAIT step it waits in, else NONE
        self.cycle = 0  # the cycle number of the last advance
        self._state = IDLE
        self._cmd = 0  # the target the profile put in force
        self._hold = 0  # setpoint to hold after a reset
        self._hold_rate = 0
        self._up = True  # direction of the present ramp
        self._span = 0  # Pa of ramp between saves
        self._timed = False  # the present step counts time down
        self._rem_s = 0
        self._rem_ms = 0
        self._last = 0
        self._entered = 0  # steps entered since the run started
        self._pending = False  # a restored hold the channel could not take yet
        self.save_errors = 0  # saves the flash refused (the run goes on)
        self.restore_status = storage.MISSING

    # --- commands (cold path) ---

    def load(self, values, n_items):
        ch = self.ch
        if self.running:
            return BAD_STATE, 0
        if values[0] != ch.number:
            return UNKNOWN_CHANNEL, 0
        result, value = check(values, n_items, ch)
        if result != OK:
            return result, value
        steps = _items(values, n_items)
        if not storage.write(self.path, self._doc(steps, IDLE, 0, 0, 0, 0)):
            return STORAGE, 0
        self._set_steps(steps)
        self._state = IDLE
        self._pending = False
        self.step = 0
        self.waiting = NONE
        self.cycle = 0
        return OK, 0

    def start(self, from_step, now):
        if self.n == 0 or self.running:
            return BAD_STATE
        if from_step < 0 or from_step >= self.n:
            return OUT_OF_RANGE
        # Rewrite the present state first: a flash that refuses it refuses
        # the start, before the channel is touched.
        if not self._save():
            return STORAGE
        self.running = True
        self._state = RUNNING
        self._pending = False
        self.cycle = 0
        self._entered = 0
        result = self._enter(from_step, 0, now)
        if self._entered == 0:
            return result  # the channel refused the first step (e.g. LATCHED)
        return OK

    def stop(self, now):
        if not self.running and self._state != PAUSED:
            return OK  # already stopped: commands set states, so this is no error
        self.running = False
        self.waiting = NONE
        self._state = IDLE
        self._pending = False
        ch = self.ch
        if ch.ramping:
            ch.command(ch.setpoint, 0, SOURCE_PROFILE)
        self._save()
        return OK

    def advance(self, from_step, cycle, now):
        # Names the step it leaves, so a repeat after the profile moved on is
        # refused and changes nothing.
        if self.waiting != HOST or self.step != from_step:
            return BAD_STATE
        self._go_on(cycle, now)
        return OK

    def trigger(self, now):
        if self.waiting == TRIGGER:
            self._go_on(0, now)

    def restore(self, now):
        obj, status = storage.read(self.path)
        self.restore_status = status
        if status != storage.OK:
            return
        try:
            steps = obj["steps"]
            state = obj["run"]
            step = obj["step"]
            cycle = obj["cycle"]
            hold = obj["hold"]
            hold_rate = obj["hold_rate"]
            good = _well_formed(steps) and state in (IDLE, RUNNING, PAUSED)
            for v in (step, cycle, hold, hold_rate):
                good = good and isinstance(v, int) and v >= 0
            good = good and step <= len(steps)
        except (KeyError, TypeError):
            good = False
        if not good:
            self.restore_status = storage.UNREADABLE
            return
        self._set_steps(steps)
        self.step = step
        self.cycle = cycle
        self.running = False
        self.waiting = NONE
        self._entered = 0
        if state == IDLE or step >= self.n:
            self._state = IDLE
            return
        self._state = PAUSED
        if self._kind[step] == WAIT:
            self.waiting = self._wait[step]
        self._hold = hold
        self._hold_rate = hold_rate
        self._cmd = hold
        ch = self.ch
        self._pending = True
        self._take_hold()
        self._emit(EV_STEP, ch.number, step, hold, cycle, 0)
        if state == RUNNING:
            self._save()

    def _take_hold(self):
        # A channel with no sample since boot answers BAD_STATE: ask again
        # every tick until it has one, so the hold is not lost to the order
        # of boot. A refusal for a limit ends the asking (the channel keeps
        # its own setpoint); the step's rate is dropped first, since the
        # channel may now lie on the other side of the hold.
        ch = self.ch
        r = ch.command(self._hold, self._hold_rate, SOURCE_PROFILE)
        if r == OUT_OF_RANGE and self._hold_rate:
            r = ch.command(self._hold, 0, SOURCE_PROFILE)
        if r != BAD_STATE:
            self._pending = False

    # --- the control tick: no allocation unless a step changes ---

    def tick(self, now):
        if not self.running:
            if self._pending:
                self._take_hold()
            return
        ch = self.ch
        if ch.target != self._cmd:
            self._finish(BAD_STATE)
            return
        i = self.step
        kind = self._kind[i]
        if kind == RAMP:
            sp = ch.setpoint
            if sp == self._cmd:
                self._enter(i + 1, 0, now)
            elif self._up:
                if sp >= self._hold and self._hold != self._cmd:
                    self._hold = self._ahead(sp)
                    self._save()
            elif self._hold - sp >= self._span:
                self._hold = sp
                self._save()
            return
        if self._timed:
            d = self._td(now, self._last)
            self._last = now
            if d > 0 and self._count_down(d):
                self.waiting = NONE
                self._enter(i + 1, 0, now)

    def _count_down(self, d):
        # True once the step's time is up; the remaining time is _rem_s s +
        # _rem_ms ms with 0 < _rem_ms <= 1000, so neither part grows past a
        # small int.
        ms = self._rem_ms - d
        if ms > 0:
            self._rem_ms = ms
            return False
        borrow = (-ms) // 1000 + 1
        if borrow > self._rem_s:
            return True
        self._rem_s -= borrow
        self._rem_ms = ms + borrow * 1000
        return False

    # --- step changes (rare: saving allocates) ---

    def _go_on(self, cycle, now):
        self.cycle = cycle
        self.running = True
        self._state = RUNNING
        self._pending = False
        self.waiting = NONE
        self._enter(self.step + 1, cycle, now)

    def _enter(self, i, cycle, now):
        # Enters step i and each following step that is done as soon as it
        # starts (SET, a RAMP already there, a zero HOLD), then saves once.
        # Returns OK, or the channel's result if it refused a step.
        ch = self.ch
        while True:
            if i >= self.n:
                self.step = self.n
                self._finish(OK)
                return OK
            self.step = i
            kind = self._kind[i]
            if kind == SET or kind == RAMP:
                target = self._target[i]
                result = ch.command(target, self._rate[i], SOURCE_PROFILE)
                if result != OK:
                    self._finish(result)
                    return result
                self._cmd = target
            else:
                self._cmd = ch.target
            self._entered += 1
            self._emit(EV_STEP, ch.number, i, self._cmd, cycle, 0)
            cycle = 0
            self._timed = False
            self._last = now
            self._hold = self._cmd
            self._hold_rate = 0
            if kind == SET:
                i += 1
                continue
            if kind == RAMP:
                sp = ch.setpoint
                if sp == self._cmd:
                    i += 1
                    continue
                self._start_ramp(i, sp)
            else:
                self._rem_s = self._dur_s[i]
                self._rem_ms = self._dur_ms[i]
                if self._rem_ms == 0 and self._rem_s > 0:
                    self._rem_s -= 1
                    self._rem_ms = 1000
                counted = self._rem_ms > 0
                if kind == HOLD:
                    if not counted:
                        i += 1
                        continue
                    self._timed = True
                else:
                    self.waiting = self._wait[i]
                    self._timed = counted
            self._save()
            return OK

    def _start_ramp(self, i, sp):
        ch = self.ch
        self._up = self._cmd > sp
        rate = self._rate[i]
        if rate == 0:
            rate = ch.ramp_up if self._up else ch.ramp_down
        span = ch.max_working
        if rate < span // SAVE_S:
            span = rate * SAVE_S
        self._span = span
        if self._up:
            # Back to the saved point at the step's own rate; a falling ramp's
            # saved point lies above the pressure, reached at the channel's
            # limit (the step's rate was checked against ramp_down only).
            self._hold_rate = self._rate[i]
            self._hold = self._ahead(sp)
        else:
            self._hold = sp

    def _ahead(self, sp):
        if self._cmd - sp <= self._span:
            return self._cmd
        return sp + self._span

    def _finish(self, result):
        # The run is over: to its end (OK) or cut short for `result`.
        self.running = False
        self.waiting = NONE
        self._state = IDLE
        self._save()
        self._emit(EV_DONE, self.ch.number, self._entered, result, 0, 0)

    # --- persistence ---

    def _set_steps(self, steps):
        self.n = len(steps)
        i = 0
        for s in steps:
            self._kind[i] = s[0]
            self._wait[i] = s[1]
            self._target[i] = s[2]
            self._rate[i] = s[3]
            self._dur_s[i] = s[4] // 1000
            self._dur_ms[i] = s[4] % 1000
            i += 1

    def _steps(self):
        out = []
        i = 0
        while i < self.n:
            dur = self._dur_s[i] * 1000 + self._dur_ms[i]
            out.append([self._kind[i], self._wait[i], self._target[i], self._rate[i], dur])
            i += 1
        return out

    def _doc(self, steps, state, step, cycle, hold, hold_rate):
        return {
            "v": 1,
            "channel": self.ch.number,
            "steps": self._steps() if steps is None else steps,
            "run": state,
            "step": step,
            "cycle": cycle,
            "hold": hold,
            "hold_rate": hold_rate,
        }

    def _save(self):
        doc = self._doc(None, self._state, self.step, self.cycle, self._hold, self._hold_rate)
        if storage.write(self.path, doc):
            return True
        self.save_errors += 1
        return False
