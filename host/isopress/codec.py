"""The host codec: wire frames to Python values and back.

Every layout comes from `isopress.protocol.wire`, the table the firmware packs
with; the `construct` definitions here are built from it and compiled once.
A frame on the wire is COBS(header + payload + CRC-16) followed by 0x00; see
protocol/PROTOCOL.md.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cobs import cobs
from construct import (
    Array,
    Bytes,
    Construct,
    ConstructError,
    Int8sl,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32sl,
    Int32ul,
    Struct,
)

from isopress.protocol import wire

_TYPES: dict[str, Construct] = {
    "B": Int8ul,
    "b": Int8sl,
    "H": Int16ul,
    "h": Int16sl,
    "I": Int32ul,
    "i": Int32sl,
}

FRAME_ERRORS: dict[int, str] = dict(wire.FRAME_ERRORS)


class CodecError(ValueError):
    """A value cannot be encoded: unknown message or field, or out of range."""


class FrameError(CodecError):
    """A received frame was dropped; `reason` is a name from wire.FRAME_ERRORS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _type(code: str) -> Construct:
    if code.endswith("s"):
        return Bytes(int(code[:-1]))
    return _TYPES[code]


def _struct(fields: Iterable[tuple[str, str, str, int]]) -> Struct:
    return Struct(*(name / _type(code) for name, code, _unit, _exp in fields))


@dataclass(frozen=True)
class Field:
    name: str
    code: str
    unit: str
    exponent: int

    @property
    def scale(self) -> float:
        """Multiply the wire integer by this to get the value in `unit`."""
        return 10.0**self.exponent


@dataclass(frozen=True)
class Message:
    id: int
    name: str
    to_device: bool
    head: tuple[Field, ...]
    item: tuple[Field, ...]
    head_size: int
    item_size: int
    max_items: int
    _head: Struct
    _item: Struct | None
    _head_layout: struct.Struct
    _item_layout: struct.Struct
    _head_names: tuple[str, ...]
    _item_names: tuple[str, ...]
    _structs: dict[int, Construct] = field(default_factory=dict, repr=False)

    def items_in(self, payload_len: int) -> int:
        """Items a payload of this size holds, or -1 if it cannot be this message."""
        rest = payload_len - self.head_size
        if rest < 0:
            return -1
        if not self.item_size:
            return 0 if rest == 0 else -1
        return -1 if rest % self.item_size else rest // self.item_size

    def construct(self, n_items: int) -> Construct:
        """The payload as a construct Struct, for building (its errors name the
        field that does not fit) and for anyone who wants to inspect it."""
        s = self._structs.get(n_items)
        if s is None:
            s = self._head
            if self._item is not None:
                s = Struct(*s.subcons, "items" / Array(n_items, self._item))
            self._structs[n_items] = s
        return s

    def parse(self, payload: bytes) -> dict[str, Any]:
        """Fields of a payload whose size items_in() accepted.

        The hot path of the bridge, so it reads with struct layouts made from
        the same table instead of construct's parser, which measured several
        times slower per frame; the tests hold the two to the same result.
        """
        fields = dict(zip(self._head_names, self._head_layout.unpack_from(payload), strict=True))
        if self.item:
            names = self._item_names
            rest = payload[self.head_size :]
            fields["items"] = [
                dict(zip(names, v, strict=True)) for v in self._item_layout.iter_unpack(rest)
            ]
        return fields


def _message(m: tuple) -> Message:
    ident, name, direction, head, item = m
    head_size = wire.fields_size(head)
    item_size = wire.fields_size(item)
    return Message(
        id=ident,
        name=name,
        to_device=direction == wire.TO_DEVICE,
        head=tuple(Field(*f) for f in head),
        item=tuple(Field(*f) for f in item),
        head_size=head_size,
        item_size=item_size,
        max_items=(wire.MAX_PAYLOAD - head_size) // item_size if item_size else 0,
        _head=_struct(head),
        _item=_struct(item) if item else None,
        _head_layout=struct.Struct("<" + "".join(f[1] for f in head)),
        _item_layout=struct.Struct("<" + "".join(f[1] for f in item)),
        _head_names=tuple(f[0] for f in head),
        _item_names=tuple(f[0] for f in item),
    )


MESSAGES: dict[str, Message] = {m[1]: _message(m) for m in wire.MESSAGES}
BY_ID: dict[int, Message] = {m.id: m for m in MESSAGES.values()}
HEADER = Struct(*(name / _type(code) for name, code in wire.HEADER))
_HEADER_LAYOUT = struct.Struct("<" + "".join(code for _name, code in wire.HEADER))
_DELIM = b"\x00"


@dataclass(frozen=True, slots=True)
class Frame:
    """A checked frame: message name, header sequence and flags, and fields.

    `fields` maps each head field to its wire integer (bytes for `Ns` fields);
    messages with item fields also have "items", a list of such mappings.
    """

    message: str
    seq: int
    flags: int
    fields: Mapping[str, Any]


def crc16(data: bytes) -> int:
    """CRC-16/IBM-3740 of data (check value 0x29B1 for b"123456789")."""
    return binascii.crc_hqx(data, wire.CRC_INIT)


def encode(message: str, fields: Mapping[str, Any], seq: int = 0, flags: int = 0) -> bytes:
    """Wire bytes ready for the link: 0x00, COBS(header, payload, CRC), 0x00."""
    msg = MESSAGES.get(message)
    if msg is None:
        raise CodecError(f"unknown message {message!r}")
    names = {f.name for f in msg.head} | ({"items"} if msg.item else set())
    unknown = set(fields) - names
    if unknown:
        raise CodecError(f"{message}: unknown field(s) {sorted(unknown)}")
    missing = names - set(fields)
    if missing:
        raise CodecError(f"{message}: missing field(s) {sorted(missing)}")
    items = fields.get("items", ())
    if len(items) > msg.max_items:
        raise CodecError(f"{message}: {len(items)} items, at most {msg.max_items} fit")
    try:
        payload = msg.construct(len(items)).build(fields)
        head = HEADER.build(
            {
                "version": wire.VERSION,
                "msg": msg.id,
                "seq": seq,
                "flags": flags,
                "length": len(payload),
            }
        )
    except (ConstructError, KeyError, TypeError) as e:
        raise CodecError(f"{message}: {e}".replace("\n", " ")) from None
    raw = head + payload
    raw += crc16(raw).to_bytes(2, "little")
    return _DELIM + cobs.encode(raw) + _DELIM


def unpack(raw: bytes) -> Frame:
    """Checks and decodes an unstuffed frame (header, payload, CRC)."""
    n = len(raw)
    if n < wire.HEADER_SIZE + wire.CRC_SIZE:
        raise FrameError("SHORT", f"{n} bytes")
    if n > wire.MAX_FRAME:
        raise FrameError("TOO_LONG", f"{n} bytes")
    if crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise FrameError("CRC")
    version, ident, seq, flags, length = _HEADER_LAYOUT.unpack_from(raw)
    if version != wire.VERSION and ident not in wire.FROZEN:
        raise FrameError("VERSION", f"protocol {version}, this host reads {wire.VERSION}")
    if length != n - wire.HEADER_SIZE - wire.CRC_SIZE:
        raise FrameError("LENGTH", f"header says {length}, frame holds {n - 8}")
    msg = BY_ID.get(ident)
    if msg is None:
        raise FrameError("UNKNOWN_MESSAGE", f"id 0x{ident:02x}")
    count = msg.items_in(length)
    if count < 0:
        raise FrameError("LAYOUT", f"{msg.name} cannot be {length} bytes")
    return Frame(msg.name, seq, flags, msg.parse(raw[wire.HEADER_SIZE : -wire.CRC_SIZE]))


def decode(stuffed: bytes) -> Frame:
    """Decodes the bytes between two delimiters. Raises FrameError, only."""
    if not stuffed:
        raise FrameError("SHORT", "nothing between two delimiters")
    if len(stuffed) > wire.MAX_WIRE - 2:
        raise FrameError("TOO_LONG", f"{len(stuffed)} bytes")
    try:
        raw = cobs.decode(stuffed)
    except cobs.DecodeError as e:
        raise FrameError("STUFFING", str(e)) from None
    return unpack(raw)


@dataclass
class StreamDecoder:
    """Splits a byte stream at 0x00 and decodes each frame.

    Garbage costs at most the frame it lands in. Errors are counted by reason
    in `errors`, never raised, so a noisy link cannot stop the reader.
    """

    frames: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _pending: bytearray = field(default_factory=bytearray)
    _overflow: bool = False

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        *complete, tail = data.split(_DELIM)
        for chunk in complete:
            if self._pending or self._overflow:
                stuffed = bytes(self._pending) + chunk
                self._pending.clear()
                if self._overflow:
                    self._overflow = False
                    self._count("TOO_LONG")
                    continue
            else:  # the usual case: the whole frame arrived in this read
                stuffed = chunk
            if not stuffed:
                continue  # two delimiters in a row: between frames
            try:
                out.append(decode(stuffed))
            except FrameError as e:
                self._count(e.reason)
        # No delimiter after the tail yet: keep it, but never more than a frame.
        if self._overflow or len(self._pending) + len(tail) > wire.MAX_WIRE - 2:
            self._overflow = True
            self._pending.clear()
        else:
            self._pending += tail
        self.frames += len(out)
        return out

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1
