"""A CPython stand-in for an isopress board, for testing the host link.

It speaks the real protocol (layouts from isopress.codec, frames checked by its
StreamDecoder) on a real pseudo-terminal: the link opens the pty's slave
through a symlink, exactly as it would open /dev/ttyACM0, and an unplug closes
the pty and, after a pause, makes a new one behind the same symlink. A TCP mode
serves the same board on a loopback socket for `socket://` URLs.

What it does as a board: answers IDENTIFY with HELLO and CLOCK_QUERY with
CLOCK, executes commands at most once per session (the last 16 sequence numbers
and their ACKs are remembered, as the spec says), sends telemetry at
`telemetry_hz` into a ring buffer of `ring_samples` ticks and events into a
ring of `event_ring`, and replays from both on REPLAY. Knobs make it misbehave:
drop, delay or hold ACKs, corrupt or skip outgoing frames, reset (new boot_id),
unplug. Everything runs in one thread; knobs are set from the test's thread
under a lock, and actions that touch the pty are queued to the board's thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cobs import cobs

from isopress import codec
from isopress.protocol import wire

_M32 = 0xFFFFFFFF
OUT_CAP = 64 * 1024  # bytes queued for a host that is not reading, then frames are dropped
RESULT = {name: n for n, name in wire.RESULTS}
EVENT_KIND = {name: n for n, name in wire.EVENTS}
_HEADER = struct.Struct("<BBHBB")


class Packer:
    """Frames for one message from codec's layout table, with struct: the
    fake board sends thousands of frames and construct would be its bottleneck."""

    def __init__(self, message: str) -> None:
        m = codec.MESSAGES[message]
        self.id = m.id
        self.head = struct.Struct("<" + "".join(f.code for f in m.head))
        self.head_names = tuple(f.name for f in m.head)
        self.item = struct.Struct("<" + "".join(f.code for f in m.item)) if m.item else None
        self.item_names = tuple(f.name for f in m.item)

    def frame(
        self, fields: Mapping[str, Any], seq: int = 0, flags: int = 0, version: int = wire.VERSION
    ) -> bytes:
        payload = self.head.pack(*(fields[n] for n in self.head_names))
        if self.item is not None:
            names = self.item_names
            payload += b"".join(self.item.pack(*(i[n] for n in names)) for i in fields["items"])
        raw = _HEADER.pack(version, self.id, seq & 0xFFFF, flags, len(payload)) + payload
        raw += codec.crc16(raw).to_bytes(2, "little")
        return b"\x00" + cobs.encode(raw) + b"\x00"


PACKERS = {name: Packer(name) for name, m in codec.MESSAGES.items() if not m.to_device}


class FakeBoard:
    def __init__(
        self,
        path: Path | None = None,
        *,
        tcp: bool = False,
        channels: int = 4,
        telemetry_hz: float = 50,
        ring_samples: int = 256,
        event_ring: int = 64,
        boot_id: int = 0x1234,
        board_id: bytes = b"FAKEBRD1",
        protocol: int = wire.VERSION,
        schema_hash: int | None = None,
        time_start: int = 0,
        sample_seq_start: int = 0,
        full_scale: int = 10_000_000,
    ) -> None:
        if (path is None) == (not tcp):
            raise ValueError("give a symlink path for a pty board, or tcp=True")
        self.path = path
        self.tcp = tcp
        self.channels = channels
        self.telemetry_hz = telemetry_hz
        self.ring_samples = ring_samples
        self.event_ring = event_ring
        self.boot_id = boot_id
        self.board_id = board_id
        self.protocol = protocol
        self.schema_hash = wire.schema_hash() if schema_hash is None else schema_hash
        self.full_scale = full_scale
        self.time_start = time_start

        # knobs, set from the test thread
        self.lock = threading.RLock()
        self.drop_acks = 0  # the next n ACKs are not sent (the command still runs)
        self.ack_delay_s = 0.0
        self.hold_acks = False  # keep ACKs until release_acks()
        self.skip_telemetry = 0  # the next n ticks go to the ring only: a gap
        self.skip_events = 0
        self.corrupt: dict[str, int] = {}  # message -> the next n such frames get a byte flipped

        # what happened, read by the tests
        self.received: list[codec.Frame] = []  # every frame from the host, retries included
        self.executed: list[tuple[str, dict[str, Any]]] = []  # each command run, once
        self.identify_count = 0
        self.max_unacked = 0  # most commands executed and not yet acked at once
        self.frames_sent = 0
        self.frames_dropped = 0  # no host reading, or its buffer full

        self._sample = sample_seq_start  # next sample_seq (unbounded; sent mod 2**32)
        self._event = 0
        self._ring: deque[tuple[int, dict[str, Any]]] = deque(maxlen=ring_samples)
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=event_ring)
        self._setpoint = [0] * (channels + 1)
        self._session: dict[int, tuple[int, int, int]] = {}  # seq -> (cmd id, result, value)
        self._session_order: deque[int] = deque()
        self._pending_acks: list[tuple[float, dict[str, int]]] = []  # (due, ACK fields)
        self._held: list[dict[str, int]] = []
        self._frame_counter = 0
        self._t0 = time.monotonic()
        self._blast = 0

        self._calls: deque[Callable[[], None]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io: int | None = None  # fd the host's bytes come through
        self._slave: int | None = None
        self._conn: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._replug_at: float | None = None
        self._out = bytearray()
        self._decoder = codec.StreamDecoder()
        self._emit_boot_event()

    # -- life --------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.tcp:
            assert self._listener is not None
            host, port = self._listener.getsockname()[:2]
            return f"socket://{host}:{port}"
        return str(self.path)

    def start(self) -> FakeBoard:
        if self.tcp:
            self._listener = socket.socket()
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(1)
            self._listener.setblocking(False)
        else:
            self._open_pty()
        self._thread = threading.Thread(target=self._run, name="fakeboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close_io()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FakeBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- knobs that act in the board's thread ------------------------------

    def unplug(self, pause_s: float) -> None:
        """Closes the pty (the host's port vanishes) and makes a new one at the
        same path after pause_s; the board keeps running meanwhile."""
        self._call(lambda: self._unplug(pause_s))

    def reset(self, boot_id: int | None = None) -> None:
        """A reboot: new boot_id, sequence numbers and device time from 0, rings
        and the session forgotten, setpoints gone; the port stays (as through a
        USB-serial bridge chip)."""
        self._call(lambda: self._reset(boot_id))

    def release_acks(self) -> None:
        self._call(self._release_acks)

    def emit_event(
        self, kind: str, channel: int = 0, code: int = 0, a: int = 0, b: int = 0
    ) -> None:
        self._call(lambda: self._add_event(kind, channel, code, a, b, 0))

    def blast(self, n: int) -> None:
        """Sends n more telemetry ticks as fast as the host reads them."""
        self._call(lambda: setattr(self, "_blast", self._blast + n))

    def sample_seq(self) -> int:
        """The next sample_seq the board will produce (64-bit, this boot)."""
        with self.lock:
            return self._sample

    def commands(self) -> list[codec.Frame]:
        with self.lock:
            return [f for f in self.received if f.message not in ("IDENTIFY", "CLOCK_QUERY")]

    def _call(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)

    # -- the board's thread --------------------------------------------------

    def _run(self) -> None:
        period = 1.0 / self.telemetry_hz if self.telemetry_hz else None
        next_tick = time.monotonic()
        while not self._stop.is_set():
            while self._calls:
                with self.lock:
                    self._calls.popleft()()
            now = time.monotonic()
            if self._replug_at is not None and now >= self._replug_at:
                self._replug_at = None
                self._open_pty()
            wait = 0.01
            if period is not None:
                wait = min(wait, max(0.0, next_tick - now))
            rl: list[Any] = []
            wl: list[Any] = []
            if self._io is not None:
                rl.append(self._io)
                if self._out:
                    wl.append(self._io)
            if self._listener is not None:
                rl.append(self._listener)
            try:
                r, w, _ = select.select(rl, wl, [], wait)
            except (OSError, ValueError):
                r, w = [], []
            if self._listener is not None and self._listener in r:
                self._accept()
            if self._io is not None and self._io in r:
                self._read()
            if self._io is not None and (w or self._out):
                self._flush()
            now = time.monotonic()
            with self.lock:
                if period is not None:
                    while now >= next_tick:
                        self._tick()
                        next_tick += period
                while self._blast and len(self._out) < 16384 and self._io is not None:
                    self._blast -= 1
                    self._tick()
                self._send_due_acks(now)

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as sent
        os.set_blocking(master, False)
        # the board holds the slave open too, so its master never sees a hangup
        # while the host is away
        self._io, self._slave = master, slave
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        self._out.clear()
        self._decoder = codec.StreamDecoder()

    def _close_io(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        elif self._io is not None:
            os.close(self._io)
        if self._slave is not None:
            os.close(self._slave)
        self._io = self._slave = None
        self._out.clear()

    def _unplug(self, pause_s: float) -> None:
        self._close_io()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._replug_at = time.monotonic() + pause_s

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._close_io()
        conn.setblocking(False)
        self._conn, self._io = conn, conn.fileno()
        self._decoder = codec.StreamDecoder()

    def _read(self) -> None:
        assert self._io is not None
        try:
            data = os.read(self._io, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self._conn is not None:  # the TCP host went away
                self._close_io()
            return
        for frame in self._decoder.feed(data):
            with self.lock:
                self.received.append(frame)
                self._handle(frame)

    def _flush(self) -> None:
        assert self._io is not None
        if not self._out:
            return
        try:
            n = os.write(self._io, self._out)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in (errno.EIO, errno.EPIPE, errno.ECONNRESET) and self._conn is not None:
                self._close_io()
            return
        del self._out[:n]

    # -- output ------------------------------------------------------------------

    def _send(self, message: str, fields: Mapping[str, Any], flags: int = 0) -> None:
        frame = PACKERS[message].frame(fields, self._frame_counter, flags, self.protocol)
        self._frame_counter = (self._frame_counter + 1) & 0xFFFF
        left = self.corrupt.get(message, 0)
        if left:
            self.corrupt[message] = left - 1
            b = bytearray(frame)
            i = len(b) // 2
            b[i] = b[i] ^ 0x55 or 0x33  # stays non-zero: the frame keeps its length
            frame = bytes(b)
        if self._io is None or len(self._out) > OUT_CAP:
            self.frames_dropped += 1
            return
        self._out += frame
        self.frames_sent += 1

    def _device_ms(self) -> int:
        return (self.time_start + int((time.monotonic() - self._t0) * 1000)) & _M32

    def _tick(self) -> None:
        seq = self._sample
        self._sample += 1
        items = []
        for ch in range(1, self.channels + 1):
            sp = self._setpoint[ch]
            items.append(
                {
                    "channel": ch,
                    "pressure": sp + (seq % 7) - 3,
                    "raw": (sp >> 8) + seq % 5,
                    "setpoint": sp,
                    "valves": 0,
                    "mode": 1 if sp else 0,
                    "alarms": 0,
                }
            )
        fields = {"time": self._device_ms(), "sample_seq": seq & _M32, "items": items}
        self._ring.append((seq, fields))
        if self.skip_telemetry:
            self.skip_telemetry -= 1
            return
        self._send("TELEMETRY", fields)

    def _add_event(self, kind: str, channel: int, code: int, a: int, b: int, c: int) -> None:
        seq = self._event
        self._event += 1
        fields = {
            "time": self._device_ms(),
            "event_seq": seq & _M32,
            "channel": channel,
            "kind": EVENT_KIND[kind],
            "code": code,
            "a": a,
            "b": b,
            "c": c,
        }
        self._events.append((seq, fields))
        if self.skip_events:
            self.skip_events -= 1
            return
        self._send("EVENT", fields)

    def _emit_boot_event(self) -> None:
        self._add_event("BOOT", 0, 0, 0, self.boot_id, 0)

    # -- commands ----------------------------------------------------------------

    def _handle(self, frame: codec.Frame) -> None:
        name, f = frame.message, frame.fields
        if name == "IDENTIFY":
            self.identify_count += 1
            self._session.clear()
            self._session_order.clear()
            self._send("HELLO", self._hello())
            return
        if name == "CLOCK_QUERY":
            self._send("CLOCK", {"token": f["token"], "ticks": self._device_ms()})
            return
        msg = codec.MESSAGES[name]
        remembered = self._session.get(frame.seq)
        if remembered is not None and remembered[0] == msg.id:
            self._ack(frame.seq, *remembered)  # at most once: the same answer, no action
            return
        if not msg.to_device:
            result, value = RESULT["UNKNOWN_MESSAGE"], 0
        else:
            result, value = self._execute(name, dict(f))
        self._session[frame.seq] = (msg.id, result, value)
        self._session_order.append(frame.seq)
        while len(self._session_order) > 16:
            self._session.pop(self._session_order.popleft(), None)
        self._ack(frame.seq, msg.id, result, value)
        if name == "REPLAY" and result == 0:
            self._replay(f["stream"], f["from_seq"], f["count"])

    def _execute(self, name: str, f: dict[str, Any]) -> tuple[int, int]:
        ch = f.get("channel")
        lowest = 0 if name in ("GET_CONFIG", "SET_CONFIG") else 1  # config channel 0: the board
        if ch is not None and not lowest <= ch <= self.channels:
            return RESULT["UNKNOWN_CHANNEL"], 0
        if name == "SET_SETPOINT":
            if not 0 <= f["pressure"] <= self.full_scale:
                return RESULT["OUT_OF_RANGE"], self.full_scale
            self._setpoint[ch] = f["pressure"]
            self._add_event("SETPOINT", ch, 0, f["pressure"], f["rate"], 0)
        elif name == "GET_CONFIG":
            self.executed.append((name, f))
            return 0, 1000 + f["key"]
        self.executed.append((name, f))
        return 0, 0

    def _ack(self, seq: int, cmd: int, result: int, value: int) -> None:
        fields = {"cmd_seq": seq, "cmd": cmd, "result": result, "value": value}
        if self.drop_acks:
            self.drop_acks -= 1
            return
        if self.hold_acks:
            self._held.append(fields)
            unacked = len({a["cmd_seq"] for a in self._held})
            self.max_unacked = max(self.max_unacked, unacked)
            return
        if self.ack_delay_s:
            self._pending_acks.append((time.monotonic() + self.ack_delay_s, fields))
        else:
            self._send("ACK", fields)

    def _send_due_acks(self, now: float) -> None:
        if not self._pending_acks:
            return
        keep = []
        for due, fields in self._pending_acks:
            if due <= now:
                self._send("ACK", fields)
            else:
                keep.append((due, fields))
        self._pending_acks = keep

    def _release_acks(self) -> None:
        self.hold_acks = False
        held, self._held = self._held, []
        for fields in held:
            self._send("ACK", fields)

    def _replay(self, stream: int, from_seq: int, count: int) -> None:
        ring, nxt = (self._ring, self._sample) if stream == 0 else (self._events, self._event)
        limit = 0x80000000 if count == 0xFFFF else count
        message = "TELEMETRY" if stream == 0 else "EVENT"
        sent = 0
        for seq, fields in list(ring):
            if (seq - from_seq) & _M32 < limit:
                self._send(message, fields, wire.FLAG_REPLAY)
                sent += 1
        first, last = (ring[0][0], ring[-1][0]) if ring else (nxt, nxt - 1)
        self._send(
            "REPLAY_DONE",
            {"stream": stream, "first_seq": first & _M32, "last_seq": last & _M32, "sent": sent},
        )

    def _reset(self, boot_id: int | None) -> None:
        self.boot_id = (self.boot_id + 1) & 0xFFFF if boot_id is None else boot_id
        self._sample = self._event = 0
        self._ring.clear()
        self._events.clear()
        self._session.clear()
        self._session_order.clear()
        self._pending_acks.clear()
        self._held.clear()
        self._setpoint = [0] * (self.channels + 1)
        self._t0 = time.monotonic()
        self.time_start = 0
        self._emit_boot_event()

    def _hello(self) -> dict[str, Any]:
        return {
            "fw_major": 0,
            "fw_minor": 1,
            "fw_patch": 0,
            "protocol": self.protocol,
            "schema_hash": self.schema_hash,
            "board_id": self.board_id,
            "boot_id": self.boot_id,
            "config_crc": 0xBEEF,
            "telemetry_hz": int(self.telemetry_hz) & 0xFF,
            "ring_samples": self.ring_samples,
            "items": [
                {"channel": ch, "kind": 1, "sensor": 1, "full_scale": self.full_scale}
                for ch in range(1, self.channels + 1)
            ],
        }
