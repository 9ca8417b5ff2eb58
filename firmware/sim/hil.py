# The simulated board as a hardware-in-the-loop device: the unchanged
# firmware on the sim HAL, but with no plant of its own. Its sensor signals
# come from the host's plant model and its valve outputs go to it, over a
# second serial line (docs/hil.md has the protocol); its own serial link (the
# protocol of protocol/PROTOCOL.md) is stdin/stdout, as under `isopress sim`.
#
#     micropython hil.py SETTINGS.json
#
# SETTINGS: profile (board profile dict), fs (flash directory, ending in
# "/"), config ({channel: {key name: wire value}}, optional), hil (path of the
# pty the host made raw), mode ("lockstep" or "realtime"), speed (realtime:
# simulated seconds per wall second).
#
# This is what an HIL adapter does for a real board (docs/hil.md): report
# each valve output when it changes and supply the sensor inputs. Here the
# adapter and the board are one process: RemotePlant stands where the sim
# HAL expects the plant, so the simulated ADC and HX711 sample the host's
# signals and the HAL's valves land on the wire.
#
# Lock-step: time is the board's virtual clock. Before a sensor samples at a
# new time the board sends every valve change up to it and asks (Q); it waits
# for the answer (S), so the run is repeatable and as fast as both sides go.
# Real time: the board runs on its clock at `speed`, sends valve changes as
# they happen and uses the newest signals the host has streamed.
import json
import select
import sys

import port_sim
from harness import Sim
from scenario_run import configure

MAGIC = b"isopress-hil"
VERSION = b"1"


class HilError(Exception):
    pass


class RemoteHolder:
    # What the sim HAL reads and writes on a holder, backed by the wire.
    regulator = None  # no proportional regulator travels over the HIL line (yet)

    def __init__(self, plant, ch):
        self._p = plant
        self.ch = ch
        self._fill = False
        self._vent = False
        self.sig = None  # the last signal the host sent (V, mA, mV/V), None = no answer
        self.supply = 0.0

    @property
    def fill(self):
        return self._fill

    @fill.setter
    def fill(self, on):
        if on != self._fill:
            self._fill = on
            self._p.valve(self)

    @property
    def vent(self):
        return self._vent

    @vent.setter
    def vent(self, on):
        if on != self._vent:
            self._vent = on
            self._p.valve(self)

    def signal(self):
        self._p.sync()
        return self.sig

    @property
    def supply_v(self):
        self._p.sync()
        return self.supply


class RemotePlant:
    def __init__(self, f, mode):
        self.f = f
        self.lockstep = mode == "lockstep"
        self.ms = 0  # the board's virtual time, ms
        self.synced = -1  # time of the last S
        self.closed = False
        self._holders = {}
        self._out = bytearray()
        self._in = bytearray()
        self._one = bytearray(1)
        self._poll = select.poll()
        self._poll.register(f, select.POLLIN)
        self.t = 0.0

    def holder(self, ch):
        h = self._holders.get(ch)
        if h is None:
            h = RemoteHolder(self, ch)
            self._holders[ch] = h
        return h

    @property
    def channels(self):
        return sorted(self._holders)

    def advance(self, dt):
        # The sim HAL moves time in segments between valve events.
        self.ms += int(dt * 1000 + 0.5)
        self.t = self.ms / 1000.0

    def advance_to(self, t_s):
        self.ms = int(t_s * 1000 + 0.5)
        self.t = self.ms / 1000.0

    def valve(self, h):
        line = b"V %d %d %d %d\n" % (self.ms, h.ch, 1 if h._fill else 0, 1 if h._vent else 0)
        self._out.extend(line)
        if not self.lockstep:
            self._flush()

    def _flush(self):
        if self._out:
            self.f.write(self._out)
            self._out = bytearray()

    def sync(self):
        if self.closed:
            return
        if self.lockstep:
            if self.ms == self.synced:
                return
            self._out.extend(b"Q %d\n" % self.ms)
            self._flush()
            while not self.closed:
                if self._line(self._read_line()) == self.ms:
                    break
        else:
            while self._poll.poll(0) and not self.closed:
                n = self.f.readinto(self._one)
                if not n:
                    self.closed = True
                    break
                b = self._one[0]
                if b == 10:
                    self._line(bytes(self._in))
                    self._in = bytearray()
                else:
                    self._in.append(b)

    def _read_line(self):
        # Blocking: lock-step waits for the host by design.
        buf = bytearray()
        while True:
            n = self.f.readinto(self._one)
            if not n:
                self.closed = True
                return b""
            if self._one[0] == 10:
                return bytes(buf)
            buf.append(self._one[0])

    def _line(self, line):
        # S <t_ms> <ch>:<signal>:<supply_v> ...; X = stop. Returns S's time.
        parts = line.split()
        if not parts:
            return -1
        if parts[0] == b"X":
            self.closed = True
            return -1
        if parts[0] != b"S" or len(parts) < 2:
            raise HilError("unexpected line from the host: %r" % (line,))
        t = int(parts[1])
        for p in parts[2:]:
            ch, sig, sup = p.split(b":")
            h = self.holder(int(ch))
            h.sig = None if sig == b"-" else float(sig)
            h.supply = float(sup)
        self.synced = t
        return t

    def hello(self, channels):
        # H isopress-hil 1 <mode> from the host, H isopress-hil 1 <channels> back.
        line = self._read_line().split()
        if len(line) < 4 or line[0] != b"H" or line[1] != MAGIC or line[2] != VERSION:
            raise HilError("no HIL hello from the host: %r" % (line,))
        mode = line[3].decode()
        if mode not in ("lockstep", "realtime"):
            raise HilError("unknown HIL mode %r" % mode)
        self.lockstep = mode == "lockstep"
        names = b",".join(b"%d" % c for c in channels)
        self.f.write(b"H " + MAGIC + b" " + VERSION + b" " + names + b"\n")
        for c in channels:
            self.holder(c)
        # the first signals, so the board boots on real values
        self._line(self._read_line())


def main(path):
    with open(path) as f:
        s = json.load(f)
    profile = s["profile"]
    hil = open(s["hil"], "r+b")
    plant = RemotePlant(hil, s.get("mode", "lockstep"))
    plant.hello([c["channel"] for c in profile["channels"]])
    link = port_sim.StdioLink()
    speed = 0 if plant.lockstep else s.get("speed", 1)
    sim = Sim(profile, None, s["fs"], link, speed, plant)
    configure(sim, s.get("config") or {})
    while not link.closed and not plant.closed:
        sim.step()
    hil.close()


if __name__ == "__main__":
    main(sys.argv[1])
