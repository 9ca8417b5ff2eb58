"""Golden vectors: both codecs decode every frame to its fields and encode
every set of fields to its frame; every receiver drops the rejected frames for
the stated reason."""

from __future__ import annotations

import crcmod.predefined
import pytest
from cobs import cobs

from isopress import codec
from isopress.protocol import wire

from conftest import load_rejected, load_vectors

VECTORS = load_vectors()
REJECTED = load_rejected()
IDS = [f"{v['file']}:{v['name']}" for v in VECTORS]

# An implementation of the catalogue CRC that shares no code with ours.
CRC_REFERENCE = crcmod.predefined.mkPredefinedCrcFun("crc-ccitt-false")


def plain(value):
    """Decoded fields as JSON shows them: bytes as hex, containers as dicts."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def as_fields(message: str, shown: dict) -> dict:
    """Vector fields as the host encoder takes them: hex back to bytes."""
    msg = codec.MESSAGES[message]
    out = dict(shown)
    for f in msg.head:
        if f.code.endswith("s"):
            out[f.name] = bytes.fromhex(shown[f.name])
    return out


def test_crc_is_the_catalogue_variant(fw_codec):
    assert CRC_REFERENCE(b"123456789") == wire.CRC_CHECK == 0x29B1
    assert codec.crc16(b"123456789") == wire.CRC_CHECK
    assert fw_codec(op="crc", hex=b"123456789".hex())["crc"] == wire.CRC_CHECK


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_host_decodes_vector(v):
    frame = bytes.fromhex(v["frame_hex"])
    assert frame[0] == 0 and frame[-1] == 0 and 0 not in frame[1:-1]
    got = codec.decode(frame[1:-1])
    assert (got.message, got.seq, got.flags) == (v["message"], v["seq"], v["flags"])
    assert plain(got.fields) == v["fields"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_host_encodes_vector(v):
    fields = as_fields(v["message"], v["fields"])
    assert (
        codec.encode(v["message"], fields, seq=v["seq"], flags=v["flags"]).hex() == v["frame_hex"]
    )


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_crc_matches_reference(v):
    raw = cobs.decode(bytes.fromhex(v["frame_hex"])[1:-1])
    assert CRC_REFERENCE(raw[:-2]) == int.from_bytes(raw[-2:], "little")


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_firmware_decodes_vector(fw_codec, v):
    got = fw_codec(op="decode", hex=v["frame_hex"])
    assert got["errors"] == {}
    [frame] = got["frames"]
    assert (frame["message"], frame["seq"], frame["flags"]) == (v["message"], v["seq"], v["flags"])
    assert frame["fields"] == v["fields"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_firmware_encodes_vector(fw_codec, v):
    got = fw_codec(
        op="encode", message=v["message"], fields=v["fields"], seq=v["seq"], flags=v["flags"]
    )
    assert got["hex"] == v["frame_hex"]


@pytest.mark.parametrize("v", REJECTED, ids=[r["name"] for r in REJECTED])
def test_both_receivers_drop_rejected_frame(fw_codec, v):
    data = bytes.fromhex(v["frame_hex"])
    host = codec.StreamDecoder()
    assert host.feed(data) == []
    assert host.errors == {v["error"]: 1}
    assert fw_codec(op="decode", hex=v["frame_hex"]) == {"frames": [], "errors": {v["error"]: 1}}
    if data.count(0) == 2 and len(data) - 2 <= wire.MAX_WIRE - 2:
        with pytest.raises(codec.FrameError) as e:
            codec.decode(data[1:-1])
        assert e.value.reason == v["error"]


def test_vectors_cover_the_protocol():
    messages = {v["message"] for v in VECTORS}
    assert messages == {m[1] for m in wire.MESSAGES}
    results = {v["fields"]["result"] for v in VECTORS if v["message"] == "ACK"}
    assert results == {code for code, _ in wire.RESULTS}
    assert {r["error"] for r in REJECTED} == {name for _, name in wire.FRAME_ERRORS}
    raws = [cobs.decode(bytes.fromhex(v["frame_hex"])[1:-1]) for v in VECTORS]
    largest = (
        max(m.head_size + m.max_items * m.item_size for m in codec.MESSAGES.values())
        + wire.HEADER_SIZE
        + wire.CRC_SIZE
    )
    assert max(len(r) for r in raws) == largest  # the largest frame is there
    assert any(r.count(0) > 20 for r in raws)  # a frame that needs heavy stuffing
