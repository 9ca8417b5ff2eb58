"""The generated part of protocol/PROTOCOL.md: layouts and vocabularies as
tables, written from wire.py so the prose can never disagree with the codecs.
`make vectors` rewrites it; test_protocol_doc checks it is current."""

from __future__ import annotations

import re
from pathlib import Path

from isopress.protocol import wire

DOC = Path(__file__).resolve().parent.parent / "protocol" / "PROTOCOL.md"
BEGIN = "<!-- BEGIN GENERATED from protocol/wire.py by `make vectors`; do not edit -->"
END = "<!-- END GENERATED -->"
TYPES = {
    "B": "u8", "b": "i8", "H": "u16", "h": "i16", "I": "u32", "i": "i32",
}  # fmt: skip


def _type(code: str) -> str:
    return f"{code[:-1]} bytes" if code.endswith("s") else TYPES[code]


def _scale(unit: str, exp: int) -> str:
    if unit == "1":
        return "-"
    return f"{unit}" if exp == 0 else f"1e{exp} {unit}"


def _rows(fields, start: int) -> list[str]:
    out = ["| offset | field | type | value = integer x |", "|---:|---|---|---|"]
    off = start
    for name, code, unit, exp in fields:
        out.append(f"| {off} | `{name}` | {_type(code)} | {_scale(unit, exp)} |")
        off += wire.code_size(code)
    return out


def layouts() -> str:
    out = []
    for ident, name, direction, head, item in wire.MESSAGES:
        arrow = "device to host" if direction == wire.TO_HOST else "host to device"
        head_size = wire.fields_size(head)
        out += ["", f"#### 0x{ident:02X} {name} ({arrow})", ""]
        if head:
            out += [
                f"Head, {head_size} bytes; offsets from the start of the payload (frame byte 6):",
                "",
            ]
            out += _rows(head, 0)
        else:
            out.append("No payload.")
        if item:
            size = wire.fields_size(item)
            most = (wire.MAX_PAYLOAD - head_size) // size
            out += [
                "",
                f"Then 0 to {most} items of {size} bytes each (item count = "
                f"(length - {head_size}) / {size}); offsets within an item:",
                "",
            ]
            out += _rows(item, 0)
    return "\n".join(out)


def vocabularies() -> str:
    sections = [
        ("ACK `result` (0 acknowledges, anything else is a NACK)", wire.RESULTS),
        ("Frame errors (why a receiver dropped a frame)", wire.FRAME_ERRORS),
        ("`stream` (REPLAY, REPLAY_DONE)", wire.STREAMS),
        ("HELLO item `kind`", wire.CHANNEL_KINDS),
        ("HELLO item `sensor`", wire.SENSORS),
        ("TELEMETRY item `mode`", wire.MODES),
        ("TELEMETRY item `valves` (bit number: 1 = open)", wire.VALVES),
        ("TELEMETRY item `alarms` (bit number: 1 = active)", wire.ALARMS),
        ("EVENT `kind`", wire.EVENTS),
        ("PROFILE_LOAD item `step`", wire.STEPS),
        ("PROFILE_LOAD item `wait_for`", wire.WAITS),
        ("CALIBRATE `action`", wire.CALIBRATIONS),
    ]
    out = []
    for title, table in sections:
        out += ["", f"#### {title}", "", "| value | name |", "|---:|---|"]
        out += [f"| {code} | `{name}` |" for code, name in table]
    return "\n".join(out)


def _bound(v: int | None) -> str:
    return "profile" if v is None else str(v)


def config_keys() -> str:
    out = [
        "",
        "Values are integers in the unit shown, as every field; `profile`: worked out from the",
        "board profile as section 5 says under GET_CONFIG / SET_CONFIG.",
        "",
        "| key | name | channel | value = integer x | min | max | default |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    for key, name, scope, unit, exp, lo, hi, default in wire.CONFIG_KEYS:
        where = "0" if scope == "board" else "1..n"
        out.append(
            f"| {key} | `{name}` | {where} | {_scale(unit, exp)} "
            f"| {_bound(lo)} | {_bound(hi)} | {_bound(default)} |"
        )
    return "\n".join(out)


def generated() -> str:
    return "\n".join(
        [
            BEGIN,
            "",
            f"Protocol version {wire.VERSION}; schema hash 0x{wire.schema_hash():08X}.",
            "",
            "### Message layouts",
            layouts(),
            "",
            "### Numbered values",
            vocabularies(),
            "",
            "### Configuration keys (GET_CONFIG, SET_CONFIG `key`)",
            config_keys(),
            "",
            END,
        ]
    )


def current_block(text: str) -> str:
    m = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), text, re.S)
    if not m:
        raise SystemExit(f"{DOC}: no generated block between the markers")
    return m.group(0)


def rewrite() -> None:
    text = DOC.read_text()
    DOC.write_text(text.replace(current_block(text), generated()))
