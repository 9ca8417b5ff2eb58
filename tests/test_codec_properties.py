"""Properties of both codecs over the full range of every field, and of both
receivers against garbage, truncation and bit errors."""

from __future__ import annotations

import crcmod.predefined
import pytest
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isopress import codec
from isopress.protocol import wire

from strategies import any_message, int_range, wire_frames
from test_vectors import plain

CRC = crcmod.predefined.mkPredefinedCrcFun("crc-ccitt-false")
# Firmware examples cross a pipe to MicroPython: fewer, and no deadline.
FW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def extreme(msg: codec.Message, high: bool) -> dict:
    def pick(f: codec.Field):
        if f.code.endswith("s"):
            return bytes([0xFF if high else 0x00]) * int(f.code[:-1])
        lo, hi = int_range(f.code)
        return hi if high else lo

    out = {f.name: pick(f) for f in msg.head}
    if msg.item:
        out["items"] = [{f.name: pick(f) for f in msg.item}] * msg.max_items
    return out


@pytest.mark.parametrize("high", [False, True], ids=["min", "max"])
@pytest.mark.parametrize("name", sorted(codec.MESSAGES))
def test_every_field_at_its_limits_round_trips_in_both_codecs(fw_codec, name, high):
    fields = extreme(codec.MESSAGES[name], high)
    seq, flags = (0xFFFF, 0xFF) if high else (0, 0)
    data = codec.encode(name, fields, seq=seq, flags=flags)
    assert len(data) <= wire.MAX_WIRE
    back = codec.decode(data[1:-1])
    assert (back.message, back.seq, back.flags, back.fields) == (name, seq, flags, fields)
    fw = fw_codec(op="decode", hex=data.hex())
    assert fw["errors"] == {}
    assert fw["frames"][0]["fields"] == plain(fields)
    shown = plain(fields)
    assert (
        fw_codec(op="encode", message=name, fields=shown, seq=seq, flags=flags)["hex"] == data.hex()
    )


@settings(max_examples=500)
@given(any_message)
def test_host_round_trip(m):
    name, fields, seq, flags = m
    back = codec.decode(codec.encode(name, fields, seq=seq, flags=flags)[1:-1])
    assert (back.message, back.seq, back.flags, back.fields) == (name, seq, flags, fields)


@FW
@given(any_message)
def test_firmware_agrees_with_host(fw_codec, m):
    name, fields, seq, flags = m
    data = codec.encode(name, fields, seq=seq, flags=flags)
    shown = plain(fields)
    assert (
        fw_codec(op="encode", message=name, fields=shown, seq=seq, flags=flags)["hex"] == data.hex()
    )
    got = fw_codec(op="decode", hex=data.hex())
    assert got["errors"] == {}
    [frame] = got["frames"]
    assert (frame["message"], frame["seq"], frame["flags"], frame["fields"]) == (
        name,
        seq,
        flags,
        shown,
    )


def _valid(raw: bytes) -> bool:
    return CRC(raw[:-2]) == int.from_bytes(raw[-2:], "little")


@settings(max_examples=1000)
@given(st.binary(max_size=600))
def test_host_decoder_only_raises_frame_error(data):
    try:
        frame = codec.decode(data)
    except codec.FrameError as e:
        assert e.reason in dict(wire.FRAME_ERRORS).values()
    else:  # possible in principle; then it must be a frame that checks
        assert _valid(cobs.decode(data))
        assert frame.message in codec.MESSAGES
    stream = codec.StreamDecoder()
    for f in stream.feed(data):
        assert f.message in codec.MESSAGES
    assert set(stream.errors) <= set(dict(wire.FRAME_ERRORS).values())


@FW
@given(st.binary(max_size=600))
def test_firmware_decoder_survives_arbitrary_bytes(fw_codec, data):
    got = fw_codec(op="decode", hex=data.hex())
    for f in got["frames"]:
        assert _valid(bytes.fromhex(f["raw_hex"]))
    assert set(got["errors"]) <= set(dict(wire.FRAME_ERRORS).values())


garbage = st.binary(max_size=300)


def _interleave(frames: list[bytes], junk: list[bytes]) -> bytes:
    out = bytearray(junk[0])
    for f, j in zip(frames, junk[1:], strict=False):
        out += f + j
    return bytes(out)


@settings(max_examples=300)
@given(wire_frames(), st.lists(garbage, min_size=6, max_size=6))
def test_host_recovers_every_frame_between_garbage(frames, junk):
    got = codec.StreamDecoder().feed(_interleave(frames, junk))
    assert [codec.encode(f.message, f.fields, f.seq, f.flags) for f in got] == frames


@FW
@given(wire_frames(3), st.lists(garbage, min_size=4, max_size=4))
def test_firmware_recovers_every_frame_between_garbage(fw_codec, frames, junk):
    got = fw_codec(op="decode", hex=_interleave(frames, junk).hex())
    assert [f["raw_hex"] for f in got["frames"]] == [cobs.decode(f[1:-1]).hex() for f in frames]


@st.composite
def flipped_stream(draw, max_frames=5):
    frames = draw(wire_frames(max_frames))
    data = bytearray(b"".join(frames))
    flips = draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=4))
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    return frames, bytes(data)


@settings(max_examples=500)
@given(flipped_stream())
def test_host_never_accepts_a_corrupted_frame(case):
    frames, data = case
    for f in codec.StreamDecoder().feed(data):
        assert codec.encode(f.message, f.fields, f.seq, f.flags) in frames


@FW
@given(flipped_stream(3))
def test_firmware_never_accepts_a_corrupted_frame(fw_codec, case):
    frames, data = case
    sent = {cobs.decode(f[1:-1]).hex() for f in frames}
    for f in fw_codec(op="decode", hex=data.hex())["frames"]:
        assert f["raw_hex"] in sent


def test_split_reads_reassemble():
    # A serial read can end anywhere; a frame fed a byte at a time still arrives.
    data = codec.encode("ISOLATE", {"channel": 2}, seq=9)
    stream = codec.StreamDecoder()
    got = [f for i in range(len(data)) for f in stream.feed(data[i : i + 1])]
    assert [(f.message, f.fields["channel"]) for f in got] == [("ISOLATE", 2)]
    assert stream.errors == {}


@pytest.mark.parametrize(
    "message, fields, complaint",
    [
        ("NOPE", {}, "unknown message"),
        ("ISOLATE", {}, "missing field(s) ['channel']"),
        ("ISOLATE", {"channel": 1, "colour": 2}, "unknown field(s) ['colour']"),
        ("ISOLATE", {"channel": 256}, "ISOLATE"),
        ("SET_SETPOINT", {"channel": 1, "pressure": 2**31, "rate": 0}, "pressure"),
        ("PROFILE_LOAD", {"channel": 1, "items": [{}] * 18}, "at most 17"),
    ],
)
def test_encoder_rejects_bad_values_by_name(message, fields, complaint):
    with pytest.raises(codec.CodecError) as e:
        codec.encode(message, fields)
    assert complaint in str(e.value)


def _public(value):
    # construct's interpreted parse adds its stream as "_io"; the fields are the rest.
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


@settings(max_examples=300)
@given(any_message)
def test_construct_definition_and_fast_parser_agree(m):
    name, fields, _seq, _flags = m
    msg = codec.MESSAGES[name]
    definition = msg.construct(len(fields.get("items", ())))
    payload = definition.build(fields)
    assert _public(definition.parse(payload)) == msg.parse(payload) == fields


def _as_version(frame: bytes, version: int) -> bytes:
    raw = bytearray(cobs.decode(frame[1:-1]))
    raw[0] = version
    raw[-2:] = codec.crc16(bytes(raw[:-2])).to_bytes(2, "little")
    return b"\x00" + cobs.encode(bytes(raw)) + b"\x00"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_identify_and_hello_are_read_whatever_the_version(fw_codec, version):
    # The handshake must work between versions, so the host can say which
    # side to update; any other message of another version is dropped.
    hello = {
        **extreme(codec.MESSAGES["HELLO"], high=False),
        "protocol": version,
        "items": [{"channel": 1, "kind": 1, "sensor": 1, "full_scale": 10_000_000}],
    }
    for name, fields in [("HELLO", hello), ("IDENTIFY", {"host_version": version})]:
        data = _as_version(codec.encode(name, fields), version)
        assert codec.decode(data[1:-1]).fields == fields
        assert fw_codec(op="decode", hex=data.hex())["frames"][0]["message"] == name
    other = _as_version(codec.encode("ISOLATE", {"channel": 1}), version)
    with pytest.raises(codec.FrameError, match="VERSION"):
        codec.decode(other[1:-1])
    assert fw_codec(op="decode", hex=other.hex())["errors"] == {"VERSION": 1}
