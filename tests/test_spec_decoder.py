"""A clean-room isopress frame decoder written only from protocol/PROTOCOL.md.

It was written by a reader who was given the document and the vectors and
nothing else, as the check that the document is enough to write a decoder:
if the document changes and this stops passing, the document lost something.

Standard library only: COBS and CRC-16/IBM-3740 are implemented here from the
document's description (section 1), and the message layouts below are
transcribed by hand from the document's generated "Message layouts" tables.

    decode_stream(data) -> (frames, drops)

frames: list of {"message", "seq", "flags", "fields"} in arrival order, with
fields as the golden vectors show them (integers; bytes fields as lowercase
hex strings; "items": [...] for messages that have items).
drops:  {reason name: count} for every frame the receiver dropped.

The pytest tests at the bottom check the decoder against protocol/vectors.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# ---------------------------------------------------------------------------
# Constants from section 1
# ---------------------------------------------------------------------------

PROTOCOL_VERSION = 1  # "this document describes version 1"
HEADER_SIZE = 6  # version u8 | msg u8 | seq u16 | flags u8 | length u8
CRC_SIZE = 2
MAX_PAYLOAD = 240
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # 248 before stuffing
MAX_STUFFED = MAX_FRAME + 1  # 249: COBS adds one byte
MAX_WIRE = MAX_STUFFED + 2  # 251 with both delimiters

FLAG_REPLAY = 0x01
FLAG_RETRY = 0x02

# Frame errors ("Frame errors" table in the generated section).
FRAME_ERRORS = {
    1: "TOO_LONG",
    2: "STUFFING",
    3: "SHORT",
    4: "CRC",
    5: "VERSION",
    6: "LENGTH",
    7: "UNKNOWN_MESSAGE",
    8: "LAYOUT",
}

# ---------------------------------------------------------------------------
# Layouts, transcribed from the generated "Message layouts" tables.
# Each field: (offset, name, type, unit). Offsets are kept as written in the
# document so that the tests can check them against the running sum of sizes
# and against the stated head / item sizes.
# ---------------------------------------------------------------------------

# message id -> (name, direction, head size, head fields,
#                item size or None, max items or None, item fields or None)
LAYOUTS: dict[int, dict] = {
    0x01: dict(
        name="IDENTIFY",
        direction="host to device",
        head_size=1,
        head=[(0, "host_version", "u8", "-")],
    ),
    0x02: dict(
        name="HELLO",
        direction="device to host",
        head_size=25,
        head=[
            (0, "fw_major", "u8", "-"),
            (1, "fw_minor", "u8", "-"),
            (2, "fw_patch", "u8", "-"),
            (3, "protocol", "u8", "-"),
            (4, "schema_hash", "u32", "-"),
            (8, "board_id", "8 bytes", "-"),
            (16, "boot_id", "u16", "-"),
            (18, "config_crc", "u16", "-"),
            (20, "telemetry_hz", "u8", "Hz"),
            (21, "ring_samples", "u32", "-"),
        ],
        item_size=7,
        max_items=30,
        items=[
            (0, "channel", "u8", "-"),
            (1, "kind", "u8", "-"),
            (2, "sensor", "u8", "-"),
            (3, "full_scale", "i32", "1e-6 MPa"),
        ],
    ),
    0x03: dict(
        name="CLOCK_QUERY",
        direction="host to device",
        head_size=4,
        head=[(0, "token", "u32", "-")],
    ),
    0x04: dict(
        name="CLOCK",
        direction="device to host",
        head_size=8,
        head=[
            (0, "token", "u32", "-"),
            (4, "ticks", "u32", "1e-3 s"),
        ],
    ),
    0x10: dict(
        name="TELEMETRY",
        direction="device to host",
        head_size=8,
        head=[
            (0, "time", "u32", "1e-3 s"),
            (4, "sample_seq", "u32", "-"),
        ],
        item_size=17,
        max_items=13,
        items=[
            (0, "channel", "u8", "-"),
            (1, "pressure", "i32", "1e-6 MPa"),
            (5, "raw", "i32", "-"),
            (9, "setpoint", "i32", "1e-6 MPa"),
            (13, "valves", "u8", "-"),
            (14, "mode", "u8", "-"),
            (15, "alarms", "u16", "-"),
        ],
    ),
    0x11: dict(
        name="EVENT",
        direction="device to host",
        head_size=24,
        head=[
            (0, "time", "u32", "1e-3 s"),
            (4, "event_seq", "u32", "-"),
            (8, "channel", "u8", "-"),
            (9, "kind", "u8", "-"),
            (10, "code", "u16", "-"),
            (12, "a", "i32", "-"),
            (16, "b", "i32", "-"),
            (20, "c", "i32", "-"),
        ],
    ),
    0x12: dict(
        name="ACK",
        direction="device to host",
        head_size=8,
        head=[
            (0, "cmd_seq", "u16", "-"),
            (2, "cmd", "u8", "-"),
            (3, "result", "u8", "-"),
            (4, "value", "i32", "-"),
        ],
    ),
    0x13: dict(
        name="REPLAY_DONE",
        direction="device to host",
        head_size=11,
        head=[
            (0, "stream", "u8", "-"),
            (1, "first_seq", "u32", "-"),
            (5, "last_seq", "u32", "-"),
            (9, "sent", "u16", "-"),
        ],
    ),
    0x20: dict(
        name="SET_SETPOINT",
        direction="host to device",
        head_size=9,
        head=[
            (0, "channel", "u8", "-"),
            (1, "pressure", "i32", "1e-6 MPa"),
            (5, "rate", "i32", "1e-6 MPa/s"),
        ],
    ),
    0x21: dict(
        name="SET_LIMITS",
        direction="host to device",
        head_size=25,
        head=[
            (0, "channel", "u8", "-"),
            (1, "max_working", "i32", "1e-6 MPa"),
            (5, "trip", "i32", "1e-6 MPa"),
            (9, "trip_reset", "i32", "1e-6 MPa"),
            (13, "min_alarm", "i32", "1e-6 MPa"),
            (17, "ramp_up", "i32", "1e-6 MPa/s"),
            (21, "ramp_down", "i32", "1e-6 MPa/s"),
        ],
    ),
    0x22: dict(
        name="PROFILE_LOAD",
        direction="host to device",
        head_size=1,
        head=[(0, "channel", "u8", "-")],
        item_size=14,
        max_items=17,
        items=[
            (0, "step", "u8", "-"),
            (1, "wait_for", "u8", "-"),
            (2, "target", "i32", "1e-6 MPa"),
            (6, "rate", "i32", "1e-6 MPa/s"),
            (10, "duration", "u32", "1e-3 s"),
        ],
    ),
    0x23: dict(
        name="PROFILE_START",
        direction="host to device",
        head_size=2,
        head=[
            (0, "channel", "u8", "-"),
            (1, "from_step", "u8", "-"),
        ],
    ),
    0x24: dict(
        name="PROFILE_STOP",
        direction="host to device",
        head_size=1,
        head=[(0, "channel", "u8", "-")],
    ),
    0x25: dict(
        name="PROFILE_ADVANCE",
        direction="host to device",
        head_size=6,
        head=[
            (0, "channel", "u8", "-"),
            (1, "from_step", "u8", "-"),
            (2, "cycle", "u32", "-"),
        ],
    ),
    0x26: dict(
        name="TARE",
        direction="host to device",
        head_size=1,
        head=[(0, "channel", "u8", "-")],
    ),
    0x27: dict(
        name="CALIBRATE",
        direction="host to device",
        head_size=7,
        head=[
            (0, "channel", "u8", "-"),
            (1, "action", "u8", "-"),
            (2, "point", "u8", "-"),
            (3, "reference", "i32", "1e-6 MPa|kN"),
        ],
    ),
    0x28: dict(
        name="ACK_ALARM",
        direction="host to device",
        head_size=3,
        head=[
            (0, "channel", "u8", "-"),
            (1, "alarms", "u16", "-"),
        ],
    ),
    0x29: dict(
        name="VENT",
        direction="host to device",
        head_size=5,
        head=[
            (0, "channel", "u8", "-"),
            (1, "floor", "i32", "1e-6 MPa"),
        ],
    ),
    0x2A: dict(
        name="ISOLATE",
        direction="host to device",
        head_size=1,
        head=[(0, "channel", "u8", "-")],
    ),
    0x2B: dict(
        name="GET_CONFIG",
        direction="host to device",
        head_size=3,
        head=[
            (0, "channel", "u8", "-"),
            (1, "key", "u16", "-"),
        ],
    ),
    0x2C: dict(
        name="SET_CONFIG",
        direction="host to device",
        head_size=7,
        head=[
            (0, "channel", "u8", "-"),
            (1, "key", "u16", "-"),
            (3, "value", "i32", "-"),
        ],
    ),
    0x2D: dict(
        name="REPLAY",
        direction="host to device",
        head_size=7,
        head=[
            (0, "stream", "u8", "-"),
            (1, "from_seq", "u32", "-"),
            (5, "count", "u16", "-"),
        ],
    ),
}

# ACK `result` (numbered values table).
ACK_RESULTS = {
    0: "OK",
    1: "UNKNOWN_MESSAGE",
    2: "BAD_LENGTH",
    3: "UNKNOWN_CHANNEL",
    4: "OUT_OF_RANGE",
    5: "BAD_STATE",
    6: "LATCHED",
    7: "NOT_SUPPORTED",
    8: "BAD_PROFILE",
    9: "UNKNOWN_KEY",
    10: "STORAGE",
    11: "BUSY",
    12: "VERSION",
}

# Section 2: field types. "N bytes" is handled separately.
_INT_TYPES = {
    "u8": "<B",
    "i8": "<b",
    "u16": "<H",
    "i16": "<h",
    "u32": "<I",
    "i32": "<i",
}


def field_size(ftype: str) -> int:
    if ftype in _INT_TYPES:
        return struct.calcsize(_INT_TYPES[ftype])
    count, word = ftype.split()
    if word != "bytes":
        raise ValueError(f"unknown field type {ftype!r}")
    return int(count)


def _decode_fields(buf: bytes, base: int, fields) -> dict:
    out = {}
    for offset, name, ftype, _unit in fields:
        start = base + offset
        if ftype in _INT_TYPES:
            (out[name],) = struct.unpack_from(_INT_TYPES[ftype], buf, start)
        else:
            out[name] = buf[start : start + field_size(ftype)].hex()
    return out


# ---------------------------------------------------------------------------
# CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF, no reflection, xorout 0)
# ---------------------------------------------------------------------------


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = (crc << 1 ^ 4129) & 65535 if crc & 32768 else crc << 1 & 65535
    return crc


# ---------------------------------------------------------------------------
# COBS
# ---------------------------------------------------------------------------


class StuffingError(ValueError):
    pass


def cobs_decode(data: bytes) -> bytes:
    """Decode one stuffed frame (delimiters removed), as section 1 describes."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise StuffingError("code byte 0")
        i += 1
        end = i + code - 1
        if end > n:
            raise StuffingError("code byte points past the end")
        out += data[i:end]
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def cobs_encode(data: bytes) -> bytes:
    """Encoder, only for the tests (round trip of the section 6 example)."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 0xFE:
                out.append(0xFF)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


# ---------------------------------------------------------------------------
# Receiving (section 1, "Receiving", steps 2-9)
# ---------------------------------------------------------------------------


class FrameError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode_frame(stuffed: bytes) -> dict:
    """Decode one non-empty, length-checked stuffed frame or raise FrameError."""
    # 3. COBS
    try:
        raw = cobs_decode(stuffed)
    except StuffingError:
        raise FrameError("STUFFING") from None
    # 4. header and CRC present
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise FrameError("SHORT")
    # 5. CRC over all but the last two bytes, sent little-endian
    (sent_crc,) = struct.unpack_from("<H", raw, len(raw) - CRC_SIZE)
    if crc16(raw[:-CRC_SIZE]) != sent_crc:
        raise FrameError("CRC")
    version, msg, seq, flags, length = struct.unpack_from("<BBHBB", raw, 0)
    # 6. version
    if version != PROTOCOL_VERSION:
        raise FrameError("VERSION")
    # 7. length field
    payload_len = len(raw) - HEADER_SIZE - CRC_SIZE
    if length != payload_len:
        raise FrameError("LENGTH")
    # 8. message id
    layout = LAYOUTS.get(msg)
    if layout is None:
        raise FrameError("UNKNOWN_MESSAGE")
    # 9. layout
    head_size = layout["head_size"]
    item_size = layout.get("item_size")
    if item_size is None:
        if length != head_size:
            raise FrameError("LAYOUT")
        count = None
    else:
        rest = length - head_size
        if rest < 0 or rest % item_size:
            raise FrameError("LAYOUT")
        count = rest // item_size
        if count > layout["max_items"]:
            raise FrameError("LAYOUT")
    payload = raw[HEADER_SIZE : HEADER_SIZE + length]
    fields = _decode_fields(payload, 0, layout["head"])
    if count is not None:
        fields["items"] = [
            _decode_fields(payload, head_size + k * item_size, layout["items"])
            for k in range(count)
        ]
    return {"message": layout["name"], "seq": seq, "flags": flags, "fields": fields}


def decode_stream(data: bytes) -> tuple[list[dict], dict[str, int]]:
    """Decode every zero-terminated frame in `data`.

    Bytes after the last zero are an incomplete frame: not decoded, not counted.
    Bytes before the first zero are collected like any other frame (and are
    usually dropped as garbage), as a receiver started mid-stream would do.
    """
    frames: list[dict] = []
    drops: dict[str, int] = {}
    buf = bytearray()
    overflow = False

    def drop(reason: str) -> None:
        drops[reason] = drops.get(reason, 0) + 1

    for byte in data:
        if byte != 0:
            if len(buf) < MAX_STUFFED:
                buf.append(byte)
            else:
                overflow = True  # stop storing, discard until the zero
            continue
        # a delimiter
        if overflow:
            drop("TOO_LONG")
        elif buf:
            try:
                frames.append(decode_frame(bytes(buf)))
            except FrameError as exc:
                drop(exc.reason)
        # else: 1. nothing collected, the gap between frames
        buf.clear()
        overflow = False
    return frames, drops


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

VECTORS = Path(__file__).resolve().parent.parent / "protocol" / "vectors"


def _load_vectors() -> list[dict]:
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        for vec in json.loads(path.read_text()):
            out.append(dict(vec, _file=path.name))
    return out


def _load_rejected() -> list[dict]:
    return json.loads((VECTORS / "invalid" / "rejected.json").read_text())


def _ids(vectors):
    return [f"{v.get('_file', 'rejected')}:{v['name']}" for v in vectors]


try:
    import pytest
except ImportError:  # allow importing the decoder without pytest
    pytest = None

if pytest is not None:
    _VECTORS = _load_vectors()
    _REJECTED = _load_rejected()

    def test_vectors_exist():
        assert _VECTORS, f"no vectors found in {VECTORS}"
        assert _REJECTED

    @pytest.mark.parametrize("vec", _VECTORS, ids=_ids(_VECTORS))
    def test_vector_decodes(vec):
        frames, drops = decode_stream(bytes.fromhex(vec["frame_hex"]))
        assert drops == {}
        assert len(frames) == 1
        frame = frames[0]
        assert frame["message"] == vec["message"]
        assert frame["seq"] == vec["seq"]
        assert frame["flags"] == vec["flags"]
        assert frame["fields"] == vec["fields"]

    @pytest.mark.parametrize("vec", _REJECTED, ids=_ids(_REJECTED))
    def test_rejected_frame(vec):
        assert vec["error"] in FRAME_ERRORS.values()
        frames, drops = decode_stream(bytes.fromhex(vec["frame_hex"]))
        assert frames == []
        assert drops == {vec["error"]: 1}

    def test_crc_check_value():
        # "check value 0x29B1 for the ASCII bytes 123456789"
        assert crc16(b"123456789") == 0x29B1

    # --- extra consistency checks of the document against itself ----------

    def test_layout_tables_consistent():
        for msg, layout in LAYOUTS.items():
            groups = [(layout["head"], layout["head_size"])]
            if "items" in layout:
                groups.append((layout["items"], layout["item_size"]))
                biggest = layout["head_size"] + layout["max_items"] * layout["item_size"]
                assert biggest <= MAX_PAYLOAD, layout["name"]
                assert biggest + layout["item_size"] > MAX_PAYLOAD, layout["name"]
            for fields, size in groups:
                pos = 0
                for offset, name, ftype, _unit in fields:
                    assert offset == pos, (layout["name"], name)
                    pos += field_size(ftype)
                assert pos == size, layout["name"]
            assert msg <= 0xFF

    def test_every_message_and_nack_has_a_vector():
        names = {v["message"] for v in _VECTORS}
        assert names == {layout["name"] for layout in LAYOUTS.values()}
        results = {v["fields"]["result"] for v in _VECTORS if v["message"] == "ACK"}
        assert results == set(ACK_RESULTS)
        assert {v["error"] for v in _REJECTED} == set(FRAME_ERRORS.values())

    def test_section6_example():
        before = bytes.fromhex("01200a0000090180841e00a0860100656f")
        wire = bytes.fromhex("000401200a0106090180841e04a0860103656f00")
        assert crc16(before[:-2]) == 0x6F65
        assert b"\x00" + cobs_encode(before) + b"\x00" == wire
        assert cobs_decode(wire[1:-1]) == before

    def test_cobs_round_trip_on_vectors():
        for vec in _VECTORS:
            wire = bytes.fromhex(vec["frame_hex"])
            assert wire[0] == 0 and wire[-1] == 0
            assert 0 not in wire[1:-1]
            assert len(wire) <= MAX_WIRE
            raw = cobs_decode(wire[1:-1])
            assert len(wire) == len(raw) + 3  # one code byte + two delimiters
            assert cobs_encode(raw) == wire[1:-1]

    def test_steady_telemetry_size():
        # Section 1: "the steady 4-channel telemetry frame is 87 bytes"
        vec = next(v for v in _VECTORS if v["name"] == "four channels, steady telemetry")
        assert len(bytes.fromhex(vec["frame_hex"])) == 87

    def test_whole_stream_with_garbage_resynchronises():
        stream = bytearray(b"boot garbage\x01\x02")  # before any delimiter
        for vec in _VECTORS:
            stream += bytes.fromhex(vec["frame_hex"])
        for vec in _REJECTED:
            stream += bytes.fromhex(vec["frame_hex"])
        stream += bytes.fromhex(_VECTORS[0]["frame_hex"])
        stream += b"\x04\x01"  # unterminated tail: not decoded, not counted
        frames, drops = decode_stream(bytes(stream))
        assert [f["fields"] for f in frames] == [v["fields"] for v in _VECTORS + _VECTORS[:1]]
        expected: dict[str, int] = {}
        for vec in _REJECTED:
            expected[vec["error"]] = expected.get(vec["error"], 0) + 1
        garbage = decode_stream(b"boot garbage\x01\x02\x00")[1]
        assert sum(garbage.values()) == 1
        for reason, n in garbage.items():
            expected[reason] = expected.get(reason, 0) + n
        assert drops == expected

    def test_too_long_boundary():
        # 249 stuffed bytes is the longest legal; 250 is TOO_LONG.
        assert decode_stream(b"\x00" + b"\xff" * 249 + b"\x00")[1] != {"TOO_LONG": 1}
        assert decode_stream(b"\x00" + b"\xff" * 250 + b"\x00")[1] == {"TOO_LONG": 1}
