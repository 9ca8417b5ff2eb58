# The firmware's codec: frames built in and parsed from preallocated buffers,
# every layout taken from the table in wire.py.
#
# Hot path (telemetry every tick), zero allocation:
#     off = framer.payload()                       # offset of the payload
#     struct.pack_into(TELEMETRY.head_fmt, framer.raw, off, t_ms, seq)
#     struct.pack_into(TELEMETRY.item_fmt, framer.raw, off + ..., ch, p, ...)
#     n = framer.finish(TELEMETRY.id, flags, payload_len)
#     uart.write(framer.wire, ...)                 # first n bytes
# Cold path (acks, events, tests): framer.put(layout, values, n_items, flags),
# which packs field by field from a flat list, also without allocating.
import struct

import cobs
import wire
from crc16 import crc16

HEADER_FMT = "<" + "".join(f[1] for f in wire.HEADER)
_HS = wire.HEADER_SIZE

_ERR = wire.codes(wire.FRAME_ERRORS)
E_TOO_LONG = _ERR["TOO_LONG"]
E_STUFFING = _ERR["STUFFING"]
E_SHORT = _ERR["SHORT"]
E_CRC = _ERR["CRC"]
E_VERSION = _ERR["VERSION"]
E_LENGTH = _ERR["LENGTH"]
E_UNKNOWN_MESSAGE = _ERR["UNKNOWN_MESSAGE"]
E_LAYOUT = _ERR["LAYOUT"]


class Layout:
    # One message's layout: whole-struct formats for the hot path, per-field
    # formats for the generic packers.
    def __init__(self, m):
        self.id = m[0]
        self.name = m[1]
        self.direction = m[2]
        self.head_names = tuple(f[0] for f in m[3])
        self.item_names = tuple(f[0] for f in m[4])
        self.head_codes = tuple("<" + f[1] for f in m[3])
        self.item_codes = tuple("<" + f[1] for f in m[4])
        self.head_fmt = "<" + "".join(f[1] for f in m[3])
        self.item_fmt = "<" + "".join(f[1] for f in m[4])
        self.head_size = wire.fields_size(m[3])
        self.item_size = wire.fields_size(m[4])
        if self.item_size:
            self.max_items = (wire.MAX_PAYLOAD - self.head_size) // self.item_size
        else:
            self.max_items = 0
        # Length of the flat value list unpack() fills for the largest frame.
        self.max_values = len(m[3]) + self.max_items * len(m[4])

    def items_in(self, payload_len):
        # Number of items a payload of this size holds, or -1 if it cannot be
        # this message.
        rest = payload_len - self.head_size
        if rest < 0:
            return -1
        if not self.item_size:
            return 0 if rest == 0 else -1
        if rest % self.item_size:
            return -1
        return rest // self.item_size


LAYOUTS = {}
BY_NAME = {}
for _m in wire.MESSAGES:
    _l = Layout(_m)
    LAYOUTS[_l.id] = _l
    BY_NAME[_l.name] = _l


class Framer:
    # Builds outgoing frames. `raw` holds header + payload + CRC, `wire` the
    # stuffed bytes ready for the UART. Not re-entrant: one writer owns it.
    def __init__(self):
        self.raw = bytearray(wire.MAX_FRAME)
        self.wire = bytearray(wire.MAX_WIRE)  # wire[0] stays the leading 0x00
        self.seq = 0  # device frame counter, wraps at 2**16

    def payload(self):
        return _HS

    def finish(self, msg_id, flags, payload_len, seq=-1):
        # Header, CRC and stuffing around a payload already packed at
        # payload(); returns the number of bytes in self.wire.
        if seq < 0:
            seq = self.seq
            self.seq = (seq + 1) & 0xFFFF
        raw = self.raw
        struct.pack_into(HEADER_FMT, raw, 0, wire.VERSION, msg_id, seq, flags, payload_len)
        end = _HS + payload_len
        crc = crc16(raw, 0, end)
        raw[end] = crc & 0xFF
        raw[end + 1] = crc >> 8
        return cobs.encode(raw, end + 2, self.wire, 1)

    def put(self, layout, values, n_items, flags=0, seq=-1):
        # Generic encoder: values is a flat list, head fields then the fields
        # of each item in turn.
        raw = self.raw
        off = _HS
        k = 0
        for code in layout.head_codes:
            struct.pack_into(code, raw, off, values[k])
            off += struct.calcsize(code)
            k += 1
        i = 0
        while i < n_items:
            for code in layout.item_codes:
                struct.pack_into(code, raw, off, values[k])
                off += struct.calcsize(code)
                k += 1
            i += 1
        return self.finish(layout.id, flags, off - _HS, seq)


def check(buf, n):
    # Validates a decoded frame in buf[:n]. Returns 0, or an E_* code. The CRC
    # comes first: no other field of a frame that fails it is trusted.
    if n < _HS + wire.CRC_SIZE:
        return E_SHORT
    if n > wire.MAX_FRAME:
        return E_TOO_LONG
    if crc16(buf, 0, n - 2) != buf[n - 2] | (buf[n - 1] << 8):
        return E_CRC
    if buf[0] != wire.VERSION and buf[1] not in wire.FROZEN:
        return E_VERSION
    if buf[5] != n - _HS - wire.CRC_SIZE:
        return E_LENGTH
    layout = LAYOUTS.get(buf[1])
    if layout is None:
        return E_UNKNOWN_MESSAGE
    if layout.items_in(buf[5]) < 0:
        return E_LAYOUT
    return 0


class Deframer:
    # Collects stuffed bytes up to the next 0x00 and checks the frame. Garbage
    # costs at most the frame it lands in: the next delimiter starts afresh, and
    # every frame is sent with a delimiter before it.
    def __init__(self):
        self.buf = bytearray(wire.MAX_WIRE)
        self.n = 0
        self.overflow = False
        self.errors = [0] * (len(wire.FRAME_ERRORS) + 1)  # by E_* code
        self.frames = 0

    def feed(self, b):
        # One byte in. Returns the decoded frame's length (> 0) when a valid
        # frame is in self.buf, 0 while a frame is incomplete, or -E_* when the
        # delimiter closed a bad one.
        if b:
            if self.n < wire.MAX_WIRE - 2:
                self.buf[self.n] = b
                self.n += 1
            else:
                self.overflow = True
            return 0
        n = self.n
        self.n = 0
        if self.overflow:
            self.overflow = False
            return self._bad(E_TOO_LONG)
        if n == 0:
            return 0  # two delimiters in a row: between frames, not an error
        m = cobs.decode(self.buf, n)
        if m < 0:
            return self._bad(E_STUFFING)
        err = check(self.buf, m)
        if err:
            return self._bad(err)
        self.frames += 1
        return m

    def _bad(self, code):
        self.errors[code] += 1
        return -code


def header(buf):
    # (msg id, seq, flags, payload length) of a checked frame.
    return buf[1], buf[2] | (buf[3] << 8), buf[4], buf[5]


def unpack(buf, out):
    # Generic decoder for a checked frame: fills `out` (a list) with the head
    # fields then each item's fields, flat; returns the item count. Used for
    # commands, which are rare, so unpack_from's small tuples are acceptable.
    layout = LAYOUTS[buf[1]]
    n_items = layout.items_in(buf[5])
    off = _HS
    k = 0
    for group, count in ((layout.head_codes, 1), (layout.item_codes, n_items)):
        i = 0
        while i < count:
            for code in group:
                out[k] = struct.unpack_from(code, buf, off)[0]
                off += struct.calcsize(code)
                k += 1
            i += 1
    return n_items
