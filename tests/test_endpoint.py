"""The firmware's protocol endpoint under real MicroPython, talked to with the
host codec: HELLO and CLOCK, commands at most once, NACKs, dropped garbage,
telemetry and events across the 2**30 and 2**32 wraps, paced replay from the
rings, host silence, and no allocation in the tick."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from isopress import codec
from isopress.protocol import wire

from conftest import ROOT, MicroPython, load_rejected

SERVER = ROOT / "tests" / "mpy" / "endpoint_server.py"
U32 = 1 << 32
TICKS = 1 << 30  # the boards' ticks period
BOARD_ID = bytes.fromhex("e66038b7134f5a2c")
HELLO_HEAD = [1, 4, 2, wire.VERSION, wire.schema_hash(), BOARD_ID.hex(), 0xBEEF, 0x1234, 10, 0]
HELLO_ITEMS = [[1, 1, 1, 10_000_000], [2, 2, 3, 125_000_000]]
RESULT = {name: code for code, name in wire.RESULTS}
MSG = {m[1]: m[0] for m in wire.MESSAGES}
EVENT_KIND = {name: code for code, name in wire.EVENTS}
TEL_RECORD_1CH = 8 + 17  # TELEMETRY payload of one channel


def chan(number: int, pressure: int = 5_000_000) -> list[int]:
    # number, pressure, raw, setpoint, valves, mode, alarms
    return [number, pressure, 12_000 + number, 5_000_000, 1, 1, 0x0100]


def raw_frame(version: int, msg: int, seq: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame built by hand, for headers the host codec refuses to write."""
    n = len(payload) if length is None else length
    body = struct.pack("<BBHBB", version, msg, seq, 0, n) + payload
    body += codec.crc16(body).to_bytes(2, "little")
    return b"\x00" + cobs.encode(body) + b"\x00"


def cmd(name: str, seq: int, flags: int = 0, **fields: object) -> bytes:
    return codec.encode(name, fields, seq=seq, flags=flags)


def setpoint(seq: int, pressure: int = 2_000_000, flags: int = 0) -> bytes:
    return cmd("SET_SETPOINT", seq, flags, channel=1, pressure=pressure, rate=100_000)


class Board:
    """One Endpoint in the MicroPython server, seen through the host decoder."""

    def __init__(self, mp: MicroPython, **cfg: object) -> None:
        self.mp = mp
        self.decoder = codec.StreamDecoder()
        req = {
            "ring_bytes": 4096,
            "n_channels": 1,
            "silence_ms": 0,
            "hello_head": HELLO_HEAD,
            "hello_items": HELLO_ITEMS,
            **cfg,
        }
        self.ring_samples = mp(op="new", **req)["ring_samples"]

    def decode(self, hex_out: str) -> list[codec.Frame]:
        frames = self.decoder.feed(bytes.fromhex(hex_out))
        assert self.decoder.errors == {}, "the endpoint wrote a frame the host drops"
        return frames

    def send(self, *frames: bytes, t: int | None = None, polls: int = 1) -> list[codec.Frame]:
        req: dict = {"hex": b"".join(frames).hex(), "polls": polls}
        if t is not None:
            req["t"] = t
        return self.decode(self.mp(op="rx", **req)["out"])

    def poll(self, t: int | None = None) -> list[codec.Frame]:
        return self.send(t=t)

    def telemetry(self, count: int = 1, t: int | None = None, dt: int = 100, **kw) -> list:
        req: dict = {"chans": [chan(1)], "count": count, "dt": dt, **kw}
        if t is not None:
            req["t"] = t
        return self.decode(self.mp(op="telemetry", **req)["out"])

    def event(
        self, kind: int, channel: int, code: int, a: int, b: int, c: int, t: int | None = None
    ):
        req: dict = {"e": [kind, channel, code, a, b, c]}
        if t is not None:
            req["t"] = t
        return self.decode(self.mp(op="event", **req)["out"])

    def state(self) -> dict:
        return self.mp(op="state")

    def script(self, **kw: object) -> None:
        self.mp(op="script", **kw)


@pytest.fixture(scope="module")
def mp() -> Iterator[MicroPython]:
    m = MicroPython(SERVER)
    yield m
    m.close()


@pytest.fixture
def board(mp: MicroPython) -> Board:
    return Board(mp)


def ack(f: codec.Frame) -> tuple[int, int, int, int]:
    assert f.message == "ACK"
    return f.fields["cmd_seq"], f.fields["cmd"], f.fields["result"], f.fields["value"]


# -- session -------------------------------------------------------------


def test_identify_is_answered_with_hello(mp):
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 40 + 3)
    assert b.ring_samples == 40
    (hello,) = b.send(cmd("IDENTIFY", 1, host_version=1))
    assert hello.message == "HELLO" and hello.flags == 0
    f = hello.fields
    assert [f["fw_major"], f["fw_minor"], f["fw_patch"], f["protocol"]] == [1, 4, 2, 1]
    assert f["schema_hash"] == wire.schema_hash()
    assert f["board_id"] == BOARD_ID
    assert (f["boot_id"], f["config_crc"], f["telemetry_hz"]) == (0xBEEF, 0x1234, 10)
    assert f["ring_samples"] == 40
    assert [list(i.values()) for i in f["items"]] == HELLO_ITEMS
    assert b.state()["log"] == []  # answered by the endpoint, not the device


def test_identify_of_another_version_is_still_answered(board):
    (hello,) = board.send(raw_frame(7, MSG["IDENTIFY"], 3, b"\x07"))
    assert hello.message == "HELLO"
    assert board.state()["stats"]["drops"]["VERSION"] == 0


def test_identify_starts_a_new_session(board):
    (a,) = board.send(setpoint(1))
    assert ack(a) == (1, MSG["SET_SETPOINT"], 0, 0)
    board.send(cmd("IDENTIFY", 1, host_version=1))
    (a,) = board.send(setpoint(1, 3_000_000))  # a restarted host numbers from 1 again
    assert ack(a)[2] == 0
    log = board.state()["log"]
    assert [entry[1][1] for entry in log] == [2_000_000, 3_000_000]


def test_clock_query_is_answered_with_the_device_clock(mp):
    b = Board(mp, t0=TICKS - 5, wraps=2)
    (c,) = b.send(cmd("CLOCK_QUERY", 9, token=0xDEADBEEF), t=TICKS - 5)
    assert c.message == "CLOCK"
    assert c.fields == {"token": 0xDEADBEEF, "ticks": 3 * TICKS - 5}
    (c,) = b.send(cmd("CLOCK_QUERY", 10, token=1), t=7)  # the ticks wrapped
    assert c.fields == {"token": 1, "ticks": 3 * TICKS + 7}
    (c,) = b.send(cmd("CLOCK_QUERY", 9, token=2), t=8)  # a heartbeat: never deduplicated
    assert c.fields["ticks"] == 3 * TICKS + 8
    assert b.state()["log"] == []


# -- commands --------------------------------------------------------------


def test_command_is_dispatched_and_acked_with_the_device_result(board):
    board.script(results={str(MSG["GET_CONFIG"]): [0, -123_456], str(MSG["VENT"]): [6, 0]})
    frames = board.send(
        cmd("GET_CONFIG", 5, channel=2, key=17),
        setpoint(6, 4_000_000),
        cmd("VENT", 7, channel=1, floor=500_000),
    )
    assert [ack(f) for f in frames] == [
        (5, MSG["GET_CONFIG"], 0, -123_456),
        (6, MSG["SET_SETPOINT"], 0, 0),  # ack_value back to 0 for every command
        (7, MSG["VENT"], RESULT["LATCHED"], 0),
    ]
    assert board.state()["log"] == [
        [MSG["GET_CONFIG"], [2, 17], 0],
        [MSG["SET_SETPOINT"], [1, 4_000_000, 100_000], 0],
        [MSG["VENT"], [1, 500_000], 0],
    ]


def test_command_with_items_reaches_the_device_flat(board):
    steps = [
        {"step": 0, "wait_for": 0, "target": 5_000_000, "rate": 0, "duration": 0},
        {"step": 3, "wait_for": 1, "target": 0, "rate": 0, "duration": 3_000_000_000},
        {"step": 1, "wait_for": 0, "target": 2_000_000, "rate": 50_000, "duration": 0},
    ]
    (a,) = board.send(cmd("PROFILE_LOAD", 11, channel=3, items=steps))
    assert ack(a) == (11, MSG["PROFILE_LOAD"], 0, 0)
    (entry,) = board.state()["log"]
    flat = [3] + [v for s in steps for v in s.values()]
    assert entry == [MSG["PROFILE_LOAD"], flat, 3]


def test_duplicate_seq_gets_the_same_ack_and_runs_once(board):
    board.script(results={str(MSG["SET_SETPOINT"]): [4, 9_000_000]})
    first = board.send(setpoint(40, 12_000_000))
    again = board.send(setpoint(40, 12_000_000, flags=wire.FLAG_RETRY))
    assert [ack(f) for f in first] == [ack(f) for f in again]
    assert ack(first[0]) == (40, MSG["SET_SETPOINT"], RESULT["OUT_OF_RANGE"], 9_000_000)
    s = board.state()
    assert len(s["log"]) == 1
    assert s["stats"]["duplicates"] == 1 and s["stats"]["commands"] == 1


def test_sixteen_commands_later_a_seq_is_forgotten(board):
    board.send(setpoint(100))
    for seq in range(101, 116):  # 15 more: seq 100 is still one of the last 16
        board.send(setpoint(seq))
    board.send(setpoint(100, flags=wire.FLAG_RETRY))
    assert len(board.state()["log"]) == 16
    board.send(setpoint(116))  # the 17th: seq 100 drops out
    (a,) = board.send(setpoint(100, 1_000_000))
    assert ack(a) == (100, MSG["SET_SETPOINT"], 0, 0)
    log = board.state()["log"]
    assert len(log) == 2 and log[-1][1][1] == 1_000_000


def test_sequence_numbers_wrap(board):
    for seq in (65534, 65535, 0, 1):
        board.send(setpoint(seq))
    frames = board.send(*(setpoint(s, flags=wire.FLAG_RETRY) for s in (65535, 0)))
    assert [ack(f)[0] for f in frames] == [65535, 0]
    assert len(board.state()["log"]) == 4


def test_window_of_four_with_retries(board):
    # Four in flight; the ACKs of 2 and 4 are lost, so the host re-sends them
    # beside the next commands: each runs once, each gets its ACK.
    first = board.send(*(setpoint(s, 1_000_000 * s) for s in (1, 2, 3, 4)))
    assert [ack(f)[0] for f in first] == [1, 2, 3, 4]

    def retry(seq: int) -> bytes:
        return setpoint(seq, 1_000_000 * seq, flags=wire.FLAG_RETRY)

    second = board.send(retry(2), setpoint(5, 5_000_000), retry(4), setpoint(6, 6_000_000))
    assert [ack(f)[0] for f in second] == [2, 5, 4, 6]
    third = board.send(retry(4), retry(6), setpoint(7, 7_000_000))
    assert [ack(f)[0] for f in third] == [4, 6, 7]
    log = board.state()["log"]
    assert [entry[1][1] for entry in log] == [s * 1_000_000 for s in range(1, 8)]


@given(
    plan=st.lists(
        st.tuples(st.integers(0, 40), st.booleans(), st.integers(0, 6)), min_size=1, max_size=40
    )
)
@settings(max_examples=40, deadline=None)
def test_commands_run_at_most_once_against_a_model(mp, plan):
    # Any mix of new and repeated sequence numbers, against the rule "remember
    # the last 16": a remembered seq is answered from memory, anything else runs.
    b = Board(mp)
    b.script(results={str(MSG["SET_SETPOINT"]): [0, 0], str(MSG["TARE"]): [5, 77]})
    remembered: list[tuple[int, int, int]] = []  # (seq, cmd, result)
    expected_runs = 0
    batch: list[bytes] = []
    want: list[tuple[int, int, int, int]] = []
    for seq, tare, gap in plan:
        name = "TARE" if tare else "SET_SETPOINT"
        fields = {"channel": 1} if tare else {"channel": 1, "pressure": 1, "rate": 0}
        batch.append(cmd(name, seq, **fields))
        hit = next((r for r in remembered if r[0] == seq), None)
        if hit:
            want.append((seq, hit[1], hit[2], 77 if hit[2] == 5 else 0))
        else:
            expected_runs += 1
            result = 5 if tare else 0
            remembered = [*remembered, (seq, MSG[name], result)][-16:]
            want.append((seq, MSG[name], result, 77 if tare else 0))
        if gap == 0:
            got = b.send(*batch)
            assert [ack(f) for f in got] == want[-len(batch) :]
            batch = []
    got = b.send(*batch)
    assert [ack(f) for f in got] == want[len(want) - len(batch) :]
    assert len(b.state()["log"]) == expected_runs


def test_device_exception_is_nacked_and_the_endpoint_goes_on(board):
    board.script(raise_on=MSG["TARE"])
    frames = board.send(cmd("TARE", 3, channel=1), setpoint(4))
    assert [ack(f) for f in frames] == [
        (3, MSG["TARE"], RESULT["BAD_STATE"], 0),
        (4, MSG["SET_SETPOINT"], 0, 0),
    ]
    s = board.state()
    assert s["stats"]["command_errors"] == 1
    assert "device handler failed" in s["last_error"]
    (again,) = board.send(cmd("TARE", 3, channel=1))  # remembered: not run a second time
    assert ack(again) == (3, MSG["TARE"], RESULT["BAD_STATE"], 0)
    assert len(board.state()["log"]) == 0


# -- bad frames ------------------------------------------------------------

NACKED = {
    "VERSION": "VERSION",
    "LENGTH": "BAD_LENGTH",
    "UNKNOWN_MESSAGE": "UNKNOWN_MESSAGE",
    "LAYOUT": "BAD_LENGTH",
}


@pytest.mark.parametrize("v", load_rejected(), ids=lambda v: v["name"])
def test_rejected_frame_is_counted_and_nacked_as_specified(board, v):
    data = bytes.fromhex(v["frame_hex"])
    out = board.send(data)
    s = board.state()
    assert s["log"] == []
    assert s["stats"]["drops"][v["error"]] == 1
    assert sum(s["stats"]["drops"].values()) == 1
    if v["error"] in NACKED:
        raw = cobs.decode(data[1:-1])
        (nack,) = out
        assert nack.message == "ACK"
        assert ack(nack) == (raw[2] | raw[3] << 8, raw[1], RESULT[NACKED[v["error"]]], 0)
        assert s["stats"]["nacks"] == 1
    else:
        assert out == []
    # The receiver resynchronised, and a NACKed seq was not remembered.
    (a,) = board.send(setpoint(5))
    assert ack(a) == (5, MSG["SET_SETPOINT"], 0, 0)


@pytest.mark.parametrize("name", ["TELEMETRY", "HELLO", "ACK", "EVENT"])
def test_known_id_that_is_not_a_command_is_nacked_unknown(board, name):
    fields = {
        "TELEMETRY": {"time": 1, "sample_seq": 2, "items": []},
        "HELLO": {
            **{k: 0 for k in codec.MESSAGES["HELLO"]._head_names},
            "board_id": bytes(8),
            "items": [],
        },
        "ACK": {"cmd_seq": 1, "cmd": 2, "result": 0, "value": 0},
        "EVENT": dict.fromkeys(codec.MESSAGES["EVENT"]._head_names, 0),
    }[name]
    (nack,) = board.send(codec.encode(name, fields, seq=77))
    assert ack(nack) == (77, MSG[name], RESULT["UNKNOWN_MESSAGE"], 0)
    assert board.state()["log"] == []


def test_nack_of_another_version_is_in_the_devices_version(board):
    frames = board.send(raw_frame(2, MSG["SET_SETPOINT"], 12, bytes(9)))
    assert ack(frames[0]) == (12, MSG["SET_SETPOINT"], RESULT["VERSION"], 0)
    # The host decoder only accepts its own version: the NACK was version 1.


def _garbage(data: bytes) -> bytes:
    return data.replace(b"\x00", b"")


@given(
    parts=st.lists(
        st.tuples(st.binary(min_size=0, max_size=300).map(_garbage), st.integers(1, 64)),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=40, deadline=None)
def test_garbage_between_frames_is_counted_and_ignored(mp, parts):
    # Each run of garbage sits between two frames' delimiters, so it is one
    # bad frame: the device drops it for the reason the host decoder gives.
    b = Board(mp, chunk=parts[0][1])
    stream = b""
    want: dict[str, int] = {}
    for i, (junk, _) in enumerate(parts):
        if junk:
            try:
                codec.decode(junk)
            except codec.FrameError as e:
                want[e.reason] = want.get(e.reason, 0) + 1
            else:
                junk = b""  # a valid frame by chance: not garbage
        stream += junk + setpoint(i + 1, 1_000_000 + i)
    frames = b.send(stream)
    assert [ack(f)[0] for f in frames] == list(range(1, len(parts) + 1))
    s = b.state()
    assert len(s["log"]) == len(parts)
    assert {k: v for k, v in s["stats"]["drops"].items() if v} == want
    assert s["stats"]["frames_in"] == len(parts)


def test_a_frame_split_across_reads_and_polls(mp):
    b = Board(mp, chunk=3)
    data = setpoint(9)
    out = []
    for i in range(0, len(data), 5):
        out += b.send(data[i : i + 5])
    assert [ack(f)[0] for f in out] == [9]


def test_one_poll_takes_in_a_bounded_number_of_bytes(mp):
    # A flood of commands is spread over ticks instead of stalling one.
    b = Board(mp, chunk=64)
    data = b"".join(setpoint(s) for s in range(1, 31))
    r = mp(op="rx", hex=data.hex(), polls=1)
    assert r["polls"] == -(-len(data) // 256)  # 4 reads of 64 bytes a poll
    assert [ack(f)[0] for f in b.decode(r["out"])] == list(range(1, 31))


# -- telemetry and time ---------------------------------------------------------


@pytest.mark.parametrize(
    ("wraps", "seq0"),
    [(0, (1 << 30) - 2), (3, U32 - 2)],
    ids=["2**30", "2**32"],
)
def test_telemetry_seq_and_time_continue_across_the_wraps(mp, wraps, seq0):
    t0 = TICKS - 250
    b = Board(mp, t0=t0, wraps=wraps, sample_seq=seq0, ring_bytes=4096, n_channels=2)
    req = {"chans": [chan(1, 4_000_000), chan(2, -1_000)], "count": 6, "dt": 100, "t": t0}
    frames = b.decode(mp(op="telemetry", **req)["out"])
    start = wraps * TICKS + t0
    assert [f.fields["time"] for f in frames] == [(start + 100 * i) % U32 for i in range(6)]
    assert [f.fields["sample_seq"] for f in frames] == [(seq0 + i) % U32 for i in range(6)]
    assert [f.seq for f in frames] == list(range(6))  # the frame counter is separate
    item = frames[3].fields["items"]
    assert [i["channel"] for i in item] == [1, 2]
    assert item[0] == {
        "channel": 1,
        "pressure": 4_000_003,
        "raw": 12_001,
        "setpoint": 5_000_000,
        "valves": 1,
        "mode": 1,
        "alarms": 0x0100,
    }
    assert item[1]["pressure"] == -997
    assert mp(op="small_ints")["bad"] == []


def test_event_with_a_stale_now_from_before_the_wrap(mp):
    b = Board(mp, t0=TICKS - 10, wraps=1)
    b.poll(t=20)  # the clock has passed its wrap
    (e,) = b.event(EVENT_KIND["ALARM_RAISED"], 2, 5, 1_500_000, 2_000_000, 0, t=TICKS - 3)
    assert e.fields["time"] == 2 * TICKS - 3
    (e,) = b.event(EVENT_KIND["ALARM_CLEARED"], 2, 5, 1_400_000, 0, 0, t=21)
    assert e.fields == {
        "time": 2 * TICKS + 21,
        "event_seq": 1,
        "channel": 2,
        "kind": EVENT_KIND["ALARM_CLEARED"],
        "code": 5,
        "a": 1_400_000,
        "b": 0,
        "c": 0,
    }


def test_event_seq_wraps_at_2_32(mp):
    b = Board(mp, event_seq=U32 - 1)
    seqs = [b.event(3, 1, 0, -5, 6, -7)[0].fields["event_seq"] for _ in range(3)]
    assert seqs == [U32 - 1, 0, 1]
    assert mp(op="small_ints")["bad"] == []


def test_bad_configuration_is_refused(mp):
    def err(**cfg):
        req = {
            "ring_bytes": 4096,
            "n_channels": 1,
            "silence_ms": 0,
            "hello_head": HELLO_HEAD,
            "hello_items": [],
            **cfg,
        }
        return mp(op="new", expect_error=True, **req).get("error", "")

    assert "n_channels" in err(n_channels=0)
    assert "n_channels" in err(n_channels=14)
    assert "ring_bytes" in err(ring_bytes=24)
    assert "host_silence_ms" in err(silence_ms=1 << 29)
    assert "replay_burst" in err(burst=0)
    Board(mp)
    got = mp(op="telemetry", chans=[chan(1), chan(2)], expect_error=True)
    assert "one entry per channel" in got["error"]


# -- replay ----------------------------------------------------------------


def replay(seq: int, stream: int, from_seq: int, count: int) -> bytes:
    return cmd("REPLAY", seq, stream=stream, from_seq=from_seq, count=count)


def split_replay(frames: list[codec.Frame]) -> tuple[list, list, list]:
    acks = [f for f in frames if f.message == "ACK"]
    re = [f for f in frames if f.flags & wire.FLAG_REPLAY]
    done = [f for f in frames if f.message == "REPLAY_DONE"]
    return acks, re, done


def drain_replay(b: Board, polls: int = 50) -> list[codec.Frame]:
    out: list[codec.Frame] = []
    for _ in range(polls):
        got = b.poll()
        out += got
        if any(f.message == "REPLAY_DONE" for f in got):
            break
    return out


@pytest.fixture
def wrapped(mp: MicroPython) -> tuple[Board, dict[int, codec.Frame]]:
    # A ring of 10 ticks after 25: it holds 15..24.
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 10 + 7, burst=100)
    assert b.ring_samples == 10
    live = {f.fields["sample_seq"]: f for f in b.telemetry(25)}
    return b, live


@pytest.mark.parametrize(
    ("from_seq", "count", "sent"),
    [
        (18, 4, [18, 19, 20, 21]),
        (15, 10, list(range(15, 25))),
        (5, 0xFFFF, list(range(15, 25))),  # 5..14 overwritten: first_seq says so
        (5, 12, [15, 16]),
        (5, 10, []),
        (22, 0xFFFF, [22, 23, 24]),
        (24, 100, [24]),
        (25, 0xFFFF, []),  # not yet sampled
        (U32 - 3, 0xFFFF, list(range(15, 25))),  # sequence numbers are mod 2**32
        (U32 - 3, 18, []),  # -3..14: all overwritten
        (U32 - 3, 20, [15, 16]),
        (18, 0, []),
    ],
)
def test_replay_resends_what_is_held(wrapped, from_seq, count, sent):
    b, live = wrapped
    frames = b.send(replay(50, 0, from_seq, count))
    frames += drain_replay(b)
    acks, re, done = split_replay(frames)
    assert [ack(f) for f in acks] == [(50, MSG["REPLAY"], 0, 0)]
    assert frames[0].message == "ACK"  # ACK first, then the frames, then REPLAY_DONE
    assert frames[-1].message == "REPLAY_DONE"
    assert [f.fields["sample_seq"] for f in re] == sent
    for f in re:
        assert f.message == "TELEMETRY"
        assert f.fields == live[f.fields["sample_seq"]].fields
    assert [d.fields for d in done] == [
        {"stream": 0, "first_seq": 15, "last_seq": 24, "sent": len(sent)}
    ]
    assert b.state()["log"] == []


def test_replay_of_an_empty_ring_reports_nothing_held(board):
    frames = board.send(replay(1, 0, 0, 0xFFFF))
    frames += drain_replay(board)
    _, re, done = split_replay(frames)
    assert re == []
    assert done[0].fields == {"stream": 0, "first_seq": 0, "last_seq": U32 - 1, "sent": 0}


def test_replay_across_the_2_32_wrap(mp):
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 8, sample_seq=U32 - 5, burst=100)
    b.telemetry(10)  # U32-5 .. 4; holds U32-3 .. 4
    frames = b.send(replay(1, 0, U32 - 4, 5)) + drain_replay(b)
    _, re, done = split_replay(frames)
    assert [f.fields["sample_seq"] for f in re] == [U32 - 3, U32 - 2, U32 - 1, 0]
    assert done[0].fields == {"stream": 0, "first_seq": U32 - 3, "last_seq": 4, "sent": 4}


def test_replay_is_paced_over_polls(mp):
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 20, burst=3)
    b.telemetry(20)
    first = b.send(replay(2, 0, 0, 0xFFFF))
    assert [f.message for f in first] == ["ACK"] + ["TELEMETRY"] * 3
    per_poll = [len(b.poll()) for _ in range(7)]
    assert per_poll == [3, 3, 3, 3, 3, 2 + 1, 0]  # the last poll adds REPLAY_DONE
    assert b.state()["stats"]["replayed_frames"] == 20


def test_live_telemetry_flows_during_a_replay_and_overwrites_reported(mp):
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 10, burst=1)
    b.telemetry(25)  # holds 15..24
    out = b.send(replay(3, 0, 15, 0xFFFF))
    assert [f.fields.get("sample_seq") for f in out[1:]] == [15]
    live = b.telemetry(5)  # 25..29 live; 15..19 overwritten before they were re-sent
    assert [f.fields["sample_seq"] for f in live] == [25, 26, 27, 28, 29]
    assert all(not f.flags & wire.FLAG_REPLAY for f in live)
    rest = drain_replay(b)
    _, re, done = split_replay(rest)
    assert [f.fields["sample_seq"] for f in re] == [20, 21, 22, 23, 24]
    assert done[0].fields == {"stream": 0, "first_seq": 20, "last_seq": 29, "sent": 6}


def test_replay_interleaved_with_live_ticks(mp):
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 10, burst=1)
    b.telemetry(10)  # 0..9
    b.send(replay(4, 0, 0, 0xFFFF))  # sends 0
    out = b.telemetry(12, poll=True)  # each tick: one replayed, one live
    re = [f.fields["sample_seq"] for f in out if f.flags & wire.FLAG_REPLAY]
    live = [f.fields["sample_seq"] for f in out if f.message == "TELEMETRY" and not f.flags]
    assert re == list(range(1, 10))
    assert live == list(range(10, 22))
    (done,) = [f for f in out if f.message == "REPLAY_DONE"]
    assert done.fields["sent"] == 10


def test_event_replay(mp):
    b = Board(mp, n_events=8, burst=2)
    live = [b.event(11, 1, i, i * 1000, -i, 7)[0] for i in range(12)]
    frames = b.send(replay(6, 1, 0, 0xFFFF)) + drain_replay(b)
    _, re, done = split_replay(frames)
    assert [f.message for f in re] == ["EVENT"] * 8
    assert [f.fields for f in re] == [f.fields for f in live[4:]]
    assert done[0].fields == {"stream": 1, "first_seq": 4, "last_seq": 11, "sent": 8}


def test_both_streams_replay_at_once_and_a_second_replay_is_busy(mp):
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 10, n_events=4, burst=1)
    b.telemetry(10)
    for i in range(4):
        b.event(12, 0, i, 0, 0, 0)
    out = b.send(replay(1, 0, 0, 0xFFFF), replay(2, 1, 0, 0xFFFF), replay(3, 0, 5, 1))
    assert [ack(f) for f in out if f.message == "ACK"] == [
        (1, MSG["REPLAY"], 0, 0),
        (2, MSG["REPLAY"], 0, 0),
        (3, MSG["REPLAY"], RESULT["BUSY"], 0),
    ]
    out += drain_replay(b)
    out += drain_replay(b)
    done = {f.fields["stream"]: f.fields["sent"] for f in out if f.message == "REPLAY_DONE"}
    assert done == {0: 10, 1: 4}
    (a,) = b.send(replay(4, 2, 0, 1))
    assert ack(a) == (4, MSG["REPLAY"], RESULT["OUT_OF_RANGE"], 1)


def test_identify_drops_a_replay_in_progress(mp):
    # The new session asks for its own replay; the old one's would confuse it.
    b = Board(mp, ring_bytes=TEL_RECORD_1CH * 10, burst=1)
    b.telemetry(10)
    assert len(b.send(replay(1, 0, 0, 0xFFFF))) == 2
    (hello,) = b.send(cmd("IDENTIFY", 1, host_version=1))
    assert hello.message == "HELLO"
    assert b.poll() == [] and b.poll() == []
    out = b.send(replay(1, 0, 8, 0xFFFF)) + drain_replay(b)
    assert [f.message for f in out] == ["ACK", "TELEMETRY", "TELEMETRY", "REPLAY_DONE"]


def test_replay_retry_is_not_run_twice(wrapped):
    b, _ = wrapped
    frames = b.send(replay(8, 0, 20, 2)) + drain_replay(b)
    assert len(split_replay(frames)[1]) == 2
    again = b.send(replay(8, 0, 20, 2)) + drain_replay(b, 3)
    assert [f.message for f in again] == ["ACK"]
    assert b.state()["stats"]["replays"] == 1


# -- host silence ---------------------------------------------------------


def test_host_silence_and_return(mp):
    b = Board(mp, silence_ms=1000, t0=TICKS - 600)
    assert b.poll(t=TICKS - 200) == []
    assert b.poll(t=399) == []  # the ticks wrapped; 999 ms of silence
    (e,) = b.poll(t=400)
    assert e.message == "EVENT" and e.fields["kind"] == EVENT_KIND["HOST_SILENT"]
    assert (e.fields["channel"], e.fields["code"], e.fields["a"]) == (0, 0, 1000)
    assert b.state()["host_silent"]
    assert b.poll(t=5000) == [] and b.poll(t=9000) == []  # once
    # A frame that fails its CRC is not the host speaking.
    bad = bytearray(setpoint(1))
    bad[5] ^= 0x40
    assert b.send(bytes(bad), t=9500) == []
    assert b.state()["host_silent"]
    back, a = b.send(setpoint(2), t=10_600)
    assert back.fields["kind"] == EVENT_KIND["HOST_BACK"]
    assert back.fields["a"] == 10_600 + 600
    assert ack(a)[0] == 2
    s = b.state()
    assert not s["host_silent"]
    assert len(s["log"]) == 1  # the setpoint; silence itself never commands the device
    assert b.poll(t=11_000) == []
    (e,) = b.poll(t=11_600)
    assert e.fields["kind"] == EVENT_KIND["HOST_SILENT"] and e.fields["a"] == 1000
    assert b.state()["log"] == []


def test_a_nacked_frame_is_the_host_speaking(mp):
    b = Board(mp, silence_ms=100)
    b.poll(t=150)
    back, nack = b.send(raw_frame(1, 0x7F, 3, b""), t=170)
    assert back.fields["kind"] == EVENT_KIND["HOST_BACK"] and back.fields["a"] == 170
    assert ack(nack)[2] == RESULT["UNKNOWN_MESSAGE"]


def test_silence_longer_than_half_the_ticks_period(mp):
    b = Board(mp, silence_ms=60_000)
    t = 0
    for _ in range(12):  # 12 * 2**27 ms, more than 2**30: several tick wraps
        t = (t + (1 << 27)) % TICKS
        b.poll(t=t)
    (back, _) = b.send(cmd("CLOCK_QUERY", 1, token=0), t=t)
    assert back.fields["kind"] == EVENT_KIND["HOST_BACK"]
    assert back.fields["a"] == (1 << 30) - 1  # saturated, never wrapped negative


def test_no_silence_watch_when_disabled(board):
    assert board.poll(t=10**8) == []
    assert not board.state()["host_silent"]


# -- statistics and allocation ---------------------------------------------------


def test_statistics(board):
    board.send(setpoint(1), setpoint(1), b"\x00\x05\x01\x02\x03\x00", raw_frame(1, 0x7F, 2, b""))
    board.telemetry(3)
    s = board.state()["stats"]
    assert s["frames_in"] == 2
    assert s["frames_out"] == 3 + 3
    assert s["nacks"] == 1 and s["commands"] == 1 and s["duplicates"] == 1
    assert s["drops"]["STUFFING"] + s["drops"]["SHORT"] + s["drops"]["CRC"] == 1
    assert s["drops"]["UNKNOWN_MESSAGE"] == 1
    assert s["telemetry_held"] == 3 and s["events_held"] == 0


@pytest.mark.parametrize("channels", [1, 4, 13])
def test_tick_allocates_nothing(mp, channels):
    # Steady state across the 2**30 tick wrap and the 2**32 counter wraps,
    # with a replay being paced, the host going silent and every event path.
    b = Board(
        mp,
        n_channels=channels,
        ring_bytes=(8 + 17 * channels) * 150,
        silence_ms=5_000,
        t0=TICKS - 20_000,
        wraps=3,
        sample_seq=U32 - 100,
        event_seq=U32 - 30,
        burst=1,
    )
    chans = [chan(c) for c in range(1, channels + 1)]
    mp(op="telemetry", chans=chans, count=150)
    for i in range(30):
        b.event(EVENT_KIND["LEAK_RATE"], 1, 0, -i, 5_000_000, 60_000)
    b.send(replay(1, 0, U32 - 100, 0xFFFF), replay(2, 1, U32 - 30, 0xFFFF))
    got = mp(op="alloc", chans=chans, rounds=400)
    assert got["bytes"] == 0
    s = b.state()
    assert s["host_silent"]
    assert s["stats"]["replayed_frames"] == 150 + 30
    assert mp(op="small_ints")["bad"] == []
