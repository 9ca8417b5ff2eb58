"""Writes protocol/vectors/*.json, the golden frames both codecs are held to.

Run `make vectors` after a deliberate protocol change, then review the diff:
every changed byte is a change to the wire format. The tests never rewrite
these files; they only read them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from isopress import codec
from isopress.protocol import wire

import protocol_tables

OUT = Path(__file__).resolve().parent.parent / "protocol" / "vectors"
MPA = 1_000_000  # wire units per MPa
R = dict((name, code) for code, name in wire.RESULTS)
E = dict((name, code) for code, name in wire.EVENTS)


def tel_item(ch, p, sp, valves=0, mode=1, alarms=0, raw=None):
    return {
        "channel": ch,
        "pressure": p,
        "raw": raw if raw is not None else p // 400,
        "setpoint": sp,
        "valves": valves,
        "mode": mode,
        "alarms": alarms,
    }


def vec(name, message, fields, seq=0, flags=0):
    frame = codec.encode(message, fields, seq=seq, flags=flags)
    shown = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}
    return {
        "name": name,
        "message": message,
        "seq": seq,
        "flags": flags,
        "fields": shown,
        "frame_hex": frame.hex(),
    }


def hello(n):
    kinds = [1, 1, 2, 3]
    sensors = [1, 2, 3, 3]
    return {
        "fw_major": 0,
        "fw_minor": 1,
        "fw_patch": 0,
        "protocol": wire.VERSION,
        "schema_hash": wire.schema_hash(),
        "board_id": bytes.fromhex("e66118604b6e2a2c"),
        "boot_id": 0x5A17,
        "config_crc": 0xC0DE,
        "telemetry_hz": 10,
        "ring_samples": 36000,
        "items": [
            {
                "channel": c + 1,
                "kind": kinds[c % 4],
                "sensor": sensors[c % 4],
                "full_scale": 10 * MPA if c % 4 < 2 else 150 * MPA,
            }
            for c in range(n)
        ],
    }


def session():
    return [
        vec("identify", "IDENTIFY", {"host_version": 1}, seq=1),
        vec("hello 4 channels", "HELLO", hello(4), seq=0),
        vec("hello 1 channel", "HELLO", hello(1), seq=7),
        vec("clock query", "CLOCK_QUERY", {"token": 0xDEADBEEF}, seq=2),
        vec("clock answer", "CLOCK", {"token": 0xDEADBEEF, "ticks": 123_456_789}, seq=8),
        vec("clock just before wrap", "CLOCK", {"token": 1, "ticks": 0xFFFFFFFF}, seq=9),
    ]


def telemetry():
    L = codec.MESSAGES["TELEMETRY"]
    return [
        vec(
            "one channel holding 5 MPa",
            "TELEMETRY",
            {"time": 60_000, "sample_seq": 600, "items": [tel_item(1, 5_000_412, 5 * MPA)]},
            seq=100,
        ),
        vec(
            "four channels, steady telemetry",
            "TELEMETRY",
            {
                "time": 3_600_000,
                "sample_seq": 36_000,
                "items": [
                    tel_item(1, 4_999_871, 5 * MPA, valves=0),
                    tel_item(2, 2_001_230, 2 * MPA, valves=1, mode=2),
                    tel_item(3, 25_100_000, 25 * MPA, valves=2),
                    tel_item(4, 12_345_678, 0, mode=6),
                ],
            },
            seq=101,
        ),
        vec(
            "largest telemetry frame: most channel-samples that fit",
            "TELEMETRY",
            {
                "time": 0xFFFFFFFF,
                "sample_seq": 0xFFFFFFFF,
                "items": [
                    tel_item(
                        c % 8 + 1, -(2**31), 2**31 - 1, valves=3, mode=255, alarms=0xFFFF, raw=-1
                    )
                    for c in range(L.max_items)
                ],
            },
            seq=0xFFFF,
            flags=0xFF,
        ),
        vec(
            "replayed sample (REPLAY flag)",
            "TELEMETRY",
            {"time": 1000, "sample_seq": 10, "items": [tel_item(1, 5 * MPA, 5 * MPA)]},
            seq=3,
            flags=wire.FLAG_REPLAY,
        ),
        vec(
            "sensor fault, isolated",
            "TELEMETRY",
            {
                "time": 5000,
                "sample_seq": 50,
                "items": [
                    tel_item(1, -123, 5 * MPA, mode=3, alarms=(1 << 1) | (1 << 15), raw=-32768)
                ],
            },
            seq=4,
        ),
        vec(
            "stuffing: payload of zeros",
            "TELEMETRY",
            {"time": 0, "sample_seq": 0, "items": [tel_item(0, 0, 0, mode=0, raw=0)] * 3},
            seq=0,
        ),
    ]


def events():
    return [
        vec(
            "boot",
            "EVENT",
            {
                "time": 12,
                "event_seq": 0,
                "channel": 0,
                "kind": E["BOOT"],
                "code": 1,
                "a": 0xC0DE,
                "b": 0x5A17,
                "c": 0,
            },
            seq=0,
        ),
        vec(
            "over-pressure trip",
            "EVENT",
            {
                "time": 90_500,
                "event_seq": 17,
                "channel": 1,
                "kind": E["TRIP"],
                "code": 0,
                "a": 8_200_000,
                "b": 8_000_000,
                "c": 150,
            },
            seq=51,
        ),
        vec(
            "excursion below setpoint",
            "EVENT",
            {
                "time": 4_000_000,
                "event_seq": 18,
                "channel": 2,
                "kind": E["EXCURSION"],
                "code": 0,
                "a": 4_950_000,
                "b": 5_000_000,
                "c": 2_500,
            },
            seq=52,
        ),
        vec(
            "alarm raised: leak",
            "EVENT",
            {
                "time": 10,
                "event_seq": 19,
                "channel": 3,
                "kind": E["ALARM_RAISED"],
                "code": 4,
                "a": 4_990_000,
                "b": -12,
                "c": 0,
            },
            seq=53,
        ),
        vec(
            "host silent",
            "EVENT",
            {
                "time": 7_200_000,
                "event_seq": 0xFFFFFFFF,
                "channel": 0,
                "kind": E["HOST_SILENT"],
                "code": 0,
                "a": 10_000,
                "b": 0,
                "c": 0,
            },
            seq=54,
            flags=wire.FLAG_REPLAY,
        ),
    ]


def commands():
    return [
        vec(
            "set setpoint 2 MPa at 0.1 MPa/s",
            "SET_SETPOINT",
            {"channel": 1, "pressure": 2 * MPA, "rate": 100_000},
            seq=10,
        ),
        vec(
            "set limits",
            "SET_LIMITS",
            {
                "channel": 1,
                "max_working": 8 * MPA,
                "trip": 9 * MPA,
                "trip_reset": 8_500_000,
                "min_alarm": 1 * MPA,
                "ramp_up": 1 * MPA,
                "ramp_down": 200_000,
            },
            seq=11,
        ),
        vec(
            "profile: 5 MPa until the event, then 2 MPa",
            "PROFILE_LOAD",
            {
                "channel": 1,
                "items": [
                    {"step": 0, "wait_for": 0, "target": 5 * MPA, "rate": 0, "duration": 0},
                    {"step": 3, "wait_for": 1, "target": 0, "rate": 0, "duration": 0},
                    {"step": 0, "wait_for": 0, "target": 2 * MPA, "rate": 0, "duration": 0},
                ],
            },
            seq=12,
        ),
        vec(
            "largest frame: profile of 17 steps, press recipe",
            "PROFILE_LOAD",
            {
                "channel": 3,
                "items": [
                    {"step": 1, "wait_for": 0, "target": 120 * MPA, "rate": 1 * MPA, "duration": 0},
                    {"step": 2, "wait_for": 0, "target": 0, "rate": 0, "duration": 300_000},
                    {"step": 1, "wait_for": 0, "target": 0, "rate": 200_000, "duration": 0},
                ]
                + [{"step": 3, "wait_for": 2, "target": 0, "rate": 0, "duration": 0xFFFFFFFF}]
                * (codec.MESSAGES["PROFILE_LOAD"].max_items - 3),
            },
            seq=13,
        ),
        vec("profile start", "PROFILE_START", {"channel": 1, "from_step": 0}, seq=14),
        vec("profile stop", "PROFILE_STOP", {"channel": 1}, seq=15),
        vec(
            "profile advance at cycle 2",
            "PROFILE_ADVANCE",
            {"channel": 1, "from_step": 1, "cycle": 2},
            seq=16,
        ),
        vec("tare", "TARE", {"channel": 3}, seq=17),
        vec(
            "calibrate span point 9.81 kN",
            "CALIBRATE",
            {"channel": 3, "action": 0, "point": 1, "reference": 9_810_000},
            seq=18,
        ),
        vec("acknowledge all alarms", "ACK_ALARM", {"channel": 2, "alarms": 0xFFFF}, seq=19),
        vec("vent to 1 MPa", "VENT", {"channel": 1, "floor": 1 * MPA}, seq=20),
        vec("isolate", "ISOLATE", {"channel": 4}, seq=21),
        vec("get config", "GET_CONFIG", {"channel": 0, "key": 1}, seq=22),
        vec("set config", "SET_CONFIG", {"channel": 2, "key": 3, "value": -5}, seq=23),
        vec(
            "retransmitted command (RETRY flag)",
            "SET_SETPOINT",
            {"channel": 1, "pressure": 2 * MPA, "rate": 100_000},
            seq=10,
            flags=wire.FLAG_RETRY,
        ),
        vec("sequence wraps", "ISOLATE", {"channel": 1}, seq=0xFFFF),
    ]


def acks():
    out = []
    for code, name in wire.RESULTS:
        out.append(
            vec(
                f"ack result {name}",
                "ACK",
                {
                    "cmd_seq": 1000 + code,
                    "cmd": 0x20,
                    "result": code,
                    "value": 8 * MPA if name == "OUT_OF_RANGE" else 0,
                },
                seq=200 + code,
            )
        )
    return out


def replay():
    return [
        vec(
            "replay request, telemetry",
            "REPLAY",
            {"stream": 0, "from_seq": 35_000, "count": 1000},
            seq=30,
        ),
        vec(
            "replay request, events",
            "REPLAY",
            {"stream": 1, "from_seq": 0, "count": 0xFFFF},
            seq=31,
        ),
        vec(
            "replay done, part lost",
            "REPLAY_DONE",
            {"stream": 0, "first_seq": 35_500, "last_seq": 36_000, "sent": 500},
            seq=300,
        ),
    ]


def stuffed(version, msg, seq, flags, payload, length=None, crc_xor=0):
    from cobs import cobs

    n = len(payload) if length is None else length
    raw = bytes([version, msg, seq & 0xFF, seq >> 8, flags, n]) + payload
    raw += (codec.crc16(raw) ^ crc_xor).to_bytes(2, "little")
    return b"\x00" + cobs.encode(raw) + b"\x00"


def rejected():
    good = codec.encode("ISOLATE", {"channel": 1}, seq=5)
    flipped = bytearray(good)
    flipped[4] ^= 0x10
    cases = [
        (
            "more than 249 stuffed bytes between delimiters",
            bytes([0x00] + [0xFF] * wire.MAX_WIRE + [0x00]),
            "TOO_LONG",
        ),
        ("COBS code byte points past the end", bytes([0, 0x09, 1, 2, 3, 0]), "STUFFING"),
        ("shorter than header and CRC", bytes([0, 0x04, 1, 1, 1, 0]), "SHORT"),
        ("one bit flipped in transit", bytes(flipped), "CRC"),
        ("CRC of another frame", stuffed(1, 0x2A, 5, 0, b"\x01", crc_xor=0x0001), "CRC"),
        ("protocol version 2 (ISOLATE)", stuffed(2, 0x2A, 5, 0, b"\x01"), "VERSION"),
        ("header length disagrees with frame", stuffed(1, 0x2A, 5, 0, b"\x01", length=2), "LENGTH"),
        ("unknown message id 0x7F", stuffed(1, 0x7F, 5, 0, b"\x01"), "UNKNOWN_MESSAGE"),
        ("ISOLATE with two payload bytes", stuffed(1, 0x2A, 5, 0, b"\x01\x02"), "LAYOUT"),
        ("TELEMETRY with half an item", stuffed(1, 0x10, 5, 0, bytes(8 + 9)), "LAYOUT"),
    ]
    return [{"name": n, "frame_hex": f.hex(), "error": e} for n, f, e in cases]


FILES = {
    "session": session,
    "telemetry": telemetry,
    "event": events,
    "command": commands,
    "ack": acks,
    "replay": replay,
}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    seen = set()
    for name, make in FILES.items():
        vectors = make()
        seen |= {v["message"] for v in vectors}
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(vectors, indent=1) + "\n")
        print(f"{path}: {len(vectors)} vectors")
    path = OUT / "invalid" / "rejected.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(rejected(), indent=1) + "\n")
    print(f"{path}: frames every receiver must drop, with the reason")
    protocol_tables.rewrite()
    print(f"{protocol_tables.DOC}: generated tables")
    missing = {m[1] for m in wire.MESSAGES} - seen
    if missing:
        print(f"no vector for {sorted(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
