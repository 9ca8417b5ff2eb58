# The device end of the wire protocol (protocol/PROTOCOL.md sections 1-5):
# receives and answers commands at most once, sends telemetry and events with
# their u32 sequence numbers, keeps both in replay rings, re-sends from them on
# REPLAY without blocking the tick, and notices a silent host.
#
#     ep = Endpoint(link, dev, clock, ring_bytes, n_channels, host_silence_ms)
#     ep.poll(now)                                 # every tick
#     ep.telemetry(now, chans)                     # every telemetry tick
#     ep.event(now, kind, channel, code, a, b, c)
#
# `link`: read_into(buf) -> n (non-blocking), write(buf, n).
# `dev`: command(msg_id, values, n_items) -> ACK result code, with ack_value
# (int) set for the ACK's value; hello_head (10 ints, bytes for board_id) and
# hello_items ([channel, kind, sensor, full_scale] each) for HELLO. `values`
# is one list reused for every command: copy what must be kept.
#
# poll(), telemetry() and event() allocate nothing in steady state; a command
# arriving does (frame.unpack, the device's own work), which is rare.
import struct

import frame
import wire
from clock import MASK30, U32
from ring import Ring

_L = frame.BY_NAME
_HS = wire.HEADER_SIZE
_TELEMETRY = _L["TELEMETRY"]
_EVENT = _L["EVENT"]
_ACK = _L["ACK"]
_HELLO = _L["HELLO"]
_CLOCK = _L["CLOCK"]
_REPLAY_DONE = _L["REPLAY_DONE"]
IDENTIFY = _L["IDENTIFY"].id
CLOCK_QUERY = _L["CLOCK_QUERY"].id
REPLAY = _L["REPLAY"].id

_R = wire.codes(wire.RESULTS)
OK = _R["OK"]
UNKNOWN_MESSAGE = _R["UNKNOWN_MESSAGE"]
BAD_LENGTH = _R["BAD_LENGTH"]
OUT_OF_RANGE = _R["OUT_OF_RANGE"]
BAD_STATE = _R["BAD_STATE"]
BUSY = _R["BUSY"]
VERSION = _R["VERSION"]

_EV = wire.codes(wire.EVENTS)
EV_HOST_SILENT = _EV["HOST_SILENT"]
EV_HOST_BACK = _EV["HOST_BACK"]

# The ACK result for each frame error after the CRC (PROTOCOL.md section 1,
# "Receiving"): those frames' sequence numbers can be trusted, so they are
# NACKed. Earlier errors are only counted.
_NACK_FOR = {
    frame.E_VERSION: VERSION,
    frame.E_LENGTH: BAD_LENGTH,
    frame.E_UNKNOWN_MESSAGE: UNKNOWN_MESSAGE,
    frame.E_LAYOUT: BAD_LENGTH,
}

STREAM_TELEMETRY = 0
STREAM_EVENT = 1
COUNT_ALL = 0xFFFF  # REPLAY count meaning "as many as held"

REMEMBERED = 16  # commands whose ACK is kept: more than the host's window of 4
READ_SIZE = 64
READS_PER_POLL = 4  # bounds the bytes one poll takes in, so a flood cannot stall the tick
REPLAY_BURST = 4  # replayed frames per stream per poll
EVENTS_HELD = 64

_MAX_VALUES = 0
for _m in frame.LAYOUTS.values():
    if _m.direction == wire.TO_DEVICE and _m.max_values > _MAX_VALUES:
        _MAX_VALUES = _m.max_values


class _Replay:
    # One stream's replay in progress: the next sequence number to re-send and
    # how many of the requested ones remain.
    def __init__(self, stream, ring, msg_id):
        self.stream = stream
        self.ring = ring
        self.msg_id = msg_id
        self.active = False
        self.cur = U32()
        self.left = 0
        self.sent = 0

    def start(self, from_seq, count):
        # Cold path. Limits the request to what is held now; newer records are
        # going out live anyway. Ages, not sequence numbers, are compared, as
        # those are small and do not wrap.
        ring = self.ring
        self.cur.set_int(from_seq)
        a_from = ring.next.since(self.cur) - 1  # age from_seq would have
        self.left = 0
        self.sent = 0
        self.active = True
        if ring.held == 0 or a_from < 0 or count == 0:
            return
        newest = a_from if a_from < ring.held else ring.held - 1
        oldest = 0 if count == COUNT_ALL else a_from - count + 1
        if oldest < 0:
            oldest = 0
        if newest < oldest:
            return
        left = newest - oldest + 1
        self.left = left if left < 0xFFFF else 0xFFFF
        ring.seq_at(newest, self.cur)


class Endpoint:
    def __init__(
        self,
        link,
        dev,
        clock,
        ring_bytes,
        n_channels,
        host_silence_ms,
        n_events=EVENTS_HELD,
        replay_burst=REPLAY_BURST,
    ):
        if not 1 <= n_channels <= _TELEMETRY.max_items:
            raise ValueError("n_channels must be 1 to %d" % _TELEMETRY.max_items)
        if not 0 <= host_silence_ms < 1 << 29:
            raise ValueError("host_silence_ms must be 0 (off) to 2**29 - 1")
        if replay_burst < 1:
            raise ValueError("replay_burst must be at least 1")
        self.link = link
        self.dev = dev
        self.clock = clock
        self.n_channels = n_channels
        self.host_silence_ms = host_silence_ms
        self.replay_burst = replay_burst

        tel_size = _TELEMETRY.head_size + n_channels * _TELEMETRY.item_size
        if ring_bytes < tel_size:
            raise ValueError("ring_bytes must hold one telemetry tick: %d bytes" % tel_size)
        self.telemetry_ring = Ring(tel_size, ring_bytes // tel_size)
        self.event_ring = Ring(_EVENT.head_size, n_events)
        self.ring_samples = self.telemetry_ring.capacity

        self.framer = frame.Framer()
        self.deframer = frame.Deframer()
        raw = self.framer.raw
        # Fixed windows on the payload being built, made once: the ring copies
        # from them without allocating.
        self._tel_view = memoryview(raw)[_HS : _HS + tel_size]
        self._ev_view = memoryview(raw)[_HS : _HS + _EVENT.head_size]
        self._rx = bytearray(READ_SIZE)
        self._values = [0] * _MAX_VALUES
        self._ack = [0, 0, 0, 0]
        self._feed = self.deframer.feed
        self._seq = U32()  # scratch for REPLAY_DONE

        # The last REMEMBERED commands: seq (-1 = empty), id, result, value.
        self._seen_seq = [-1] * REMEMBERED
        self._seen_cmd = [0] * REMEMBERED
        self._seen_result = [0] * REMEMBERED
        self._seen_value = [0] * REMEMBERED
        self._seen_next = 0

        self._replays = (
            _Replay(STREAM_TELEMETRY, self.telemetry_ring, _TELEMETRY.id),
            _Replay(STREAM_EVENT, self.event_ring, _EVENT.id),
        )

        self.host_silent = False
        self._heard_at = clock.last  # boot counts as hearing the host
        self._silence_mark = 0
        self._silence_ms = 0

        self.frames_out = 0
        self.commands = 0
        self.duplicates = 0
        self.nacks = 0
        self.replays = 0
        self.replayed = 0  # frames re-sent
        self.command_errors = 0
        self.last_error = None
        self.host_version = -1

    # -- tick entry points ------------------------------------------------

    def poll(self, now):
        self.clock.update(now)
        rx = self._rx
        feed = self._feed
        reads = 0
        while reads < READS_PER_POLL:
            n = self.link.read_into(rx)
            if not n:
                break
            i = 0
            while i < n:
                r = feed(rx[i])
                if r > 0:
                    self._frame(now)
                elif r < 0 and -r >= frame.E_VERSION:
                    self._heard(now)
                    self._nack_frame(-r)
                i += 1
            reads += 1
        for rp in self._replays:
            if rp.active:
                self._pace(now, rp)
        if self.host_silence_ms:
            self._watch_silence(now)

    def telemetry(self, now, chans):
        if len(chans) != self.n_channels:
            raise ValueError("telemetry needs one entry per channel")
        raw = self.framer.raw
        ring = self.telemetry_ring
        self.clock.pack(raw, _HS, now)
        ring.next.pack(raw, _HS + 4)
        fmt = _TELEMETRY.item_fmt
        step = _TELEMETRY.item_size
        off = _HS + _TELEMETRY.head_size
        for ch in chans:
            struct.pack_into(
                fmt, raw, off, ch.number, ch.pressure, ch.raw, ch.setpoint,
                ch.valves, ch.mode, ch.alarms,
            )  # fmt: skip
            off += step
        ring.put(self._tel_view)
        self._send(_TELEMETRY.id, 0, ring.size)

    def event(self, now, kind, channel, code, a, b, c):
        raw = self.framer.raw
        ring = self.event_ring
        self.clock.pack(raw, _HS, now)
        ring.next.pack(raw, _HS + 4)
        struct.pack_into("<BBHiii", raw, _HS + 8, channel, kind, code, a, b, c)
        ring.put(self._ev_view)
        self._send(_EVENT.id, 0, ring.size)

    def stats(self):
        # Cold path, for status and the bench: every counter by name.
        d = self.deframer
        drops = {}
        for code, name in wire.FRAME_ERRORS:
            drops[name] = d.errors[code]
        return {
            "frames_in": d.frames,
            "frames_out": self.frames_out,
            "drops": drops,
            "nacks": self.nacks,
            "commands": self.commands,
            "duplicates": self.duplicates,
            "command_errors": self.command_errors,
            "replays": self.replays,
            "replayed_frames": self.replayed,
            "host_silent": self.host_silent,
            "telemetry_held": self.telemetry_ring.held,
            "events_held": self.event_ring.held,
        }

    # -- sending ------------------------------------------------------------

    def _send(self, msg_id, flags, payload_len):
        n = self.framer.finish(msg_id, flags, payload_len)
        self.link.write(self.framer.wire, n)
        self.frames_out = (self.frames_out + 1) & MASK30

    def _send_ack(self, cmd_seq, cmd, result, value):
        struct.pack_into("<HBBi", self.framer.raw, _HS, cmd_seq, cmd, result, value)
        self._send(_ACK.id, 0, _ACK.head_size)
        if result:
            self.nacks = (self.nacks + 1) & MASK30

    # -- receiving ----------------------------------------------------------

    def _nack_frame(self, err):
        # A frame that passed its CRC but not the later checks: its header is
        # trusted, so the host learns at once why nothing was done.
        buf = self.deframer.buf
        self._send_ack(buf[2] | (buf[3] << 8), buf[1], _NACK_FOR[err], 0)

    def _frame(self, now):
        self._heard(now)
        buf = self.deframer.buf
        msg, seq, _flags, _n = frame.header(buf)
        if msg == IDENTIFY:
            self._identify(buf[_HS])
            return
        if msg == CLOCK_QUERY:
            self._clock_answer(buf)
            return
        if frame.LAYOUTS[msg].direction != wire.TO_DEVICE:
            self._send_ack(seq, msg, UNKNOWN_MESSAGE, 0)
            return
        k = self._remembered(seq)
        if k >= 0:
            # At most once: the command ran; only its ACK was lost.
            self.duplicates = (self.duplicates + 1) & MASK30
            self._send_ack(seq, self._seen_cmd[k], self._seen_result[k], self._seen_value[k])
            return
        values = self._values
        n_items = frame.unpack(buf, values)
        self.commands = (self.commands + 1) & MASK30
        if msg == REPLAY:
            result, value = self._replay(values[0], values[1], values[2])
        else:
            result, value = self._dispatch(msg, values, n_items)
        self._remember(seq, msg, result, value)
        self._send_ack(seq, msg, result, value)

    def _dispatch(self, msg, values, n_items):
        dev = self.dev
        dev.ack_value = 0
        try:
            result = dev.command(msg, values, n_items)
        except Exception as e:
            # The tick must go on whatever a handler does; the host gets a
            # NACK and the error is kept for status.
            self.command_errors += 1
            self.last_error = e
            return BAD_STATE, 0
        return result, dev.ack_value

    def _remembered(self, seq):
        seen = self._seen_seq
        i = 0
        while i < REMEMBERED:
            if seen[i] == seq:
                return i
            i += 1
        return -1

    def _remember(self, seq, cmd, result, value):
        k = self._seen_next
        self._seen_seq[k] = seq
        self._seen_cmd[k] = cmd
        self._seen_result[k] = result
        self._seen_value[k] = value
        self._seen_next = (k + 1) % REMEMBERED

    def _identify(self, host_version):
        # A new session: a restarted host numbers from 1 again, and replays
        # asked for by the old one are dropped unanswered.
        self.host_version = host_version
        seen = self._seen_seq
        i = 0
        while i < REMEMBERED:
            seen[i] = -1
            i += 1
        self._seen_next = 0
        for rp in self._replays:
            rp.active = False
        dev = self.dev
        head = dev.hello_head
        values = list(head)
        values[len(head) - 1] = self.ring_samples
        for item in dev.hello_items:
            values.extend(item)
        n = self.framer.put(_HELLO, values, len(dev.hello_items))
        self.link.write(self.framer.wire, n)
        self.frames_out = (self.frames_out + 1) & MASK30

    def _clock_answer(self, buf):
        # The token is copied byte for byte; the ticks are read now, not at
        # the start of the tick, as the round trip bounds the host's error.
        raw = self.framer.raw
        i = 0
        while i < 4:
            raw[_HS + i] = buf[_HS + i]
            i += 1
        clock = self.clock
        clock.pack(raw, _HS + 4, clock.now())
        self._send(_CLOCK.id, 0, _CLOCK.head_size)

    # -- replay ---------------------------------------------------------------

    def _replay(self, stream, from_seq, count):
        if stream > STREAM_EVENT:
            return OUT_OF_RANGE, STREAM_EVENT
        rp = self._replays[stream]
        if rp.active:
            return BUSY, 0
        rp.start(from_seq, count)
        self.replays = (self.replays + 1) & MASK30
        return OK, 0

    def _pace(self, now, rp):
        ring = rp.ring
        raw = self.framer.raw
        k = 0
        while rp.left > 0 and k < self.replay_burst:
            age = ring.age(rp.cur)
            if age < 0:
                # Overwritten by live records since the request: skip to the
                # oldest held; REPLAY_DONE's first_seq tells the host.
                gone = ring.next.since(rp.cur) - ring.held
                if gone <= 0 or gone >= rp.left:
                    rp.left = 0
                    break
                rp.cur.add(gone)
                rp.left -= gone
                age = ring.held - 1
            ring.copy_out(age, raw, _HS)
            self._send(rp.msg_id, wire.FLAG_REPLAY, ring.size)
            rp.cur.add(1)
            rp.left -= 1
            rp.sent += 1
            k += 1
        self.replayed = (self.replayed + k) & MASK30
        if rp.left == 0:
            seq = self._seq
            struct.pack_into("<B", raw, _HS, rp.stream)
            ring.first(seq)
            seq.pack(raw, _HS + 1)
            ring.last(seq)
            seq.pack(raw, _HS + 5)
            struct.pack_into("<H", raw, _HS + 9, rp.sent)
            self._send(_REPLAY_DONE.id, 0, _REPLAY_DONE.head_size)
            rp.active = False

    # -- host silence ---------------------------------------------------------

    def _heard(self, now):
        if self.host_silent:
            self._count_silence(now)
            self.host_silent = False
            self.event(now, EV_HOST_BACK, 0, 0, self._silence_ms, 0, 0)
        self._heard_at = now

    def _watch_silence(self, now):
        if self.host_silent:
            self._count_silence(now)
            return
        quiet = self.clock.ticks_diff(now, self._heard_at)
        if quiet >= self.host_silence_ms:
            self.host_silent = True
            self._silence_mark = now
            self._silence_ms = quiet
            self.event(now, EV_HOST_SILENT, 0, 0, quiet, 0, 0)

    def _count_silence(self, now):
        # Summed tick by tick: a single ticks_diff across a silence longer than
        # 2**29 ms would come out negative. Saturates at MASK30 (12 days).
        d = self.clock.ticks_diff(now, self._silence_mark)
        if d > 0:
            self._silence_mark = now
            if d > MASK30 - self._silence_ms:
                self._silence_ms = MASK30
            else:
                self._silence_ms += d
