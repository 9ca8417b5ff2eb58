"""The host's link to one board: handshake, commands, telemetry, replay, clock.

Concurrency: one asyncio event loop runs every link of a bridge, with the HTTP
API and the store beside them. Each link's port is watched by the loop's
selector (`isopress.transport`: `add_reader` on the port's file descriptor; a
reader thread only for ports that have none), so bytes are decoded, sequence
numbers tracked, and callbacks called on the loop thread, and a link's state
needs no locks. Why not a thread per board: 32 boards x 50 Hz is 1600 frames/s,
about 3% of a core to decode; with threads the rest of the bridge would have to
lock every shared structure and 32 threads would contend for the GIL, while one
loop waking per arriving chunk costs a selector call and a read. Callbacks must
therefore return quickly (queue to the store, do not write to disk inline), and
`send` must be awaited on the loop (from another thread, use
`asyncio.run_coroutine_threadsafe`).

What a link does, per protocol/PROTOCOL.md:
- opens the port (a device path or a pyserial URL), sends IDENTIFY and reads
  HELLO; a protocol or schema mismatch stops the link with a message naming
  the side to update, and nothing is retried, because no retry can fix it;
- numbers commands 1, 2, 3, ... (mod 2**16) per session, keeps at most 4
  unacknowledged, retransmits with the same seq and FLAG_RETRY on an RFC 6298
  time-out, and declares the link down after 5 transmissions;
- extends sample_seq, event_seq and device time to 64 bits, detects gaps, asks
  the board's ring buffer for a REPLAY, and reports what the board no longer
  holds as a Gap record, never papering over it; replayed frames already seen
  are delivered with `duplicate=True` so the store can ignore them;
- sends CLOCK_QUERY every second (the board's host heartbeat too) and hands
  each exchange to the clock-sync object;
- reconnects after an unplug or any read/write error with exponential
  back-off, redoes the handshake, and replays from the last sequence numbers
  seen; a new boot_id means the board reset, and the old boot's unknown tail
  is reported as a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import serial

from isopress import codec
from isopress.protocol import wire
from isopress.transport import PORT_ERRORS, Transport

log = logging.getLogger(__name__)

WINDOW = 4  # commands unacknowledged at once
MAX_TRANSMISSIONS = 5  # the first and 4 retries, then the link is down
RTO_INITIAL_S = 0.25
RTO_MIN_S = 0.05
RTO_MAX_S = 2.0
HEARTBEAT_S = 1.0  # CLOCK_QUERY period
SILENCE_S = 5.0  # nothing received for this long: the link is down
BACKOFF_S = (0.1, 5.0)  # reconnect delay: first, doubling up to the last
REPLAY_ALL = 0xFFFF  # REPLAY.count meaning "as many as held"
REPLAY_STALLED_ROUNDS = 3  # rounds without progress before a range is given up
CLOCK_TOKEN_TTL_S = 10.0  # an unanswered CLOCK_QUERY is forgotten after this
# Events are sparse: losing the last ones before a quiet spell shows no jump
# until the next event, so the link asks now and then what the board holds
# (a REPLAY from the next expected event; REPLAY_DONE's last_seq tells).
EVENT_PROBE_S = 10.0

TELEMETRY, EVENT = 0, 1  # REPLAY.stream
STREAM_NAMES: dict[int, str] = dict(wire.STREAMS)
RESULT_NAMES: dict[int, str] = dict(wire.RESULTS)
EVENT_KINDS: dict[int, str] = dict(wire.EVENTS)
CHANNEL_KINDS: dict[int, str] = dict(wire.CHANNEL_KINDS)
SENSORS: dict[int, str] = dict(wire.SENSORS)
_EVENT_BOOT = {name: n for n, name in wire.EVENTS}["BOOT"]
_NOT_COMMANDS = frozenset({"IDENTIFY", "CLOCK_QUERY"})  # answered by HELLO / CLOCK, not ACK
_M32 = 0xFFFFFFFF


# -- errors -------------------------------------------------------------------


class LinkError(Exception):
    """Something about a board link; the message says what to check."""


class VersionMismatch(LinkError):
    """The board and this bridge speak different layouts; retrying cannot help."""


class LinkDown(LinkError):
    """The command did not complete because the connection was lost; a command
    that was sent may or may not have been executed (commands are idempotent:
    sending it again is safe)."""


class NotConnected(LinkDown):
    """The link has no connection now; nothing was sent."""


class HandshakeFailed(LinkError):
    """The port opened but no usable HELLO came back; the link retries."""


class Nack(LinkError):
    """The board refused a command and changed nothing; `ack.result` says why."""

    def __init__(self, link: str, ack: Ack) -> None:
        what = "limit" if ack.result == "OUT_OF_RANGE" else "value"
        extra = f" ({what} {ack.value})" if ack.value or ack.result == "OUT_OF_RANGE" else ""
        super().__init__(f"{link}: {ack.message} refused by the board: {ack.result}{extra}")
        self.ack = ack
        self.result = ack.result
        self.value = ack.value


# -- records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    channel: int  # numbered from 1, as on the rig
    kind: str  # CHANNEL_KINDS name (a number as text if this host does not know it)
    sensor: str  # SENSORS name
    full_scale: int  # Pa (1e-6 MPa)


@dataclass(frozen=True, slots=True)
class Hello:
    """What the board said about itself in HELLO."""

    firmware: str  # "major.minor.patch"
    protocol: int
    schema_hash: int
    board_id: str  # the MCU's unique id, hex
    boot_id: int  # random per boot: a new one means the board reset
    config_crc: int
    telemetry_hz: int  # Hz
    ring_samples: int  # replay depth in telemetry ticks
    channels: tuple[ChannelInfo, ...]

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> Hello:
        return cls(
            firmware=f"{f['fw_major']}.{f['fw_minor']}.{f['fw_patch']}",
            protocol=f["protocol"],
            schema_hash=f["schema_hash"],
            board_id=f["board_id"].hex(),
            boot_id=f["boot_id"],
            config_crc=f["config_crc"],
            telemetry_hz=f["telemetry_hz"],
            ring_samples=f["ring_samples"],
            channels=tuple(
                ChannelInfo(
                    i["channel"],
                    CHANNEL_KINDS.get(i["kind"], str(i["kind"])),
                    SENSORS.get(i["sensor"], str(i["sensor"])),
                    i["full_scale"],
                )
                for i in f["items"]
            ),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """A command's answer. `result` is a wire.RESULTS name ("OK" when done)."""

    message: str
    seq: int
    result: str
    value: int  # GET_CONFIG's value; for OUT_OF_RANGE the limit broken
    client: object = None  # whoever sent it, as given to send()
    transmissions: int = 1
    rtt_s: float = 0.0  # first transmission to ACK

    @property
    def ok(self) -> bool:
        return self.result == "OK"


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry tick. `seq` and `device_ms` are 64-bit, counted from the
    board's boot `boot_id`; `utc` is None until the clock has a fit."""

    link: str
    boot_id: int
    seq: int
    device_ms: int
    utc: float | None
    replayed: bool  # re-sent from the board's ring buffer
    duplicate: bool  # already delivered once: the store ignores it
    channels: list[dict[str, int]]  # TELEMETRY items: channel, pressure (Pa), raw, ...


@dataclass(frozen=True, slots=True)
class Event:
    link: str
    boot_id: int
    seq: int
    device_ms: int
    utc: float | None
    replayed: bool
    duplicate: bool
    channel: int  # 0 for the board
    kind: str  # EVENT_KINDS name (a number as text if unknown)
    code: int
    a: int
    b: int
    c: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers of `stream` in boot `boot_id` that will never arrive.

    `last` is None when the end is unknown: after a reset, whatever the old
    boot produced after `first - 1` (perhaps nothing) could not be asked for.
    reason: "not_held" (the ring had overwritten them), "not_replayed" (the
    board held them but repeated replays did not deliver them), "reset".
    """

    link: str
    boot_id: int
    stream: str  # "TELEMETRY" or "EVENT"
    first: int
    last: int | None
    reason: str

    @property
    def count(self) -> int | None:
        return None if self.last is None else self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Resume:
    """Where the record of a board stopped, e.g. read from the store when the
    bridge restarts: if the board has not reset since, the link replays from
    here instead of from the ring's start."""

    boot_id: int
    sample_next: int  # first 64-bit sample_seq not recorded
    event_next: int
    board_id: str | None = None  # hex; None matches any board


@dataclass
class LinkStats:
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # by wire.FRAME_ERRORS name
    ignored: int = 0  # well-formed but not for a host (device-bound ids)
    before_hello: int = 0  # frames of a connection before its HELLO (replay recovers them)
    commands: int = 0
    acks: int = 0
    nacks: int = 0
    retransmits: int = 0
    timeouts: int = 0
    duplicate_acks: int = 0  # a second ACK for a retransmitted command, or stray
    write_stalls: int = 0
    max_in_flight: int = 0
    samples: int = 0
    events: int = 0
    replayed: int = 0
    duplicates: int = 0
    gaps: int = 0  # sequence jumps seen in the live streams
    replays: int = 0  # REPLAY requests sent
    replay_timeouts: int = 0
    gap_records: int = 0
    lost_samples: int = 0  # in gap records with a known end
    lost_events: int = 0
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    resets: int = 0  # new boot_id seen
    clock_queries: int = 0
    clock_replies: int = 0
    callback_errors: int = 0
    srtt_s: float | None = None
    rttvar_s: float | None = None
    rto_s: float = RTO_INITIAL_S

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- pieces ---------------------------------------------------------------------


class RtoEstimator:
    """RFC 6298 retransmission time-out from acknowledged round trips."""

    def __init__(
        self, initial: float = RTO_INITIAL_S, lo: float = RTO_MIN_S, hi: float = RTO_MAX_S
    ) -> None:
        self.lo, self.hi = lo, hi
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto = initial

    def sample(self, rtt: float) -> None:
        """One round trip of a command sent once (Karn: never a retransmitted one)."""
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(self.hi, max(self.lo, self.srtt + 4 * self.rttvar))

    def backoff(self) -> None:
        self.rto = min(self.hi, self.rto * 2)


# SeqTracker.receive results
IN_ORDER, JUMP, FILLED, DUPLICATE, BACKWARDS = range(5)


class SeqTracker:
    """One stream's 32-bit sequence numbers extended to 64 bits, and the ranges
    not yet received. `next` is one past the highest seen; `missing` holds
    sorted, disjoint [first, last] ranges below it."""

    __slots__ = ("missing", "next")

    def __init__(self, next_seq: int = 0) -> None:
        self.next = next_seq
        self.missing: list[list[int]] = []

    def extend(self, seq32: int) -> int:
        d = (seq32 - self.next) & _M32
        return self.next + d if d < 0x80000000 else self.next + d - 0x100000000

    def receive(self, seq32: int, replayed: bool) -> tuple[int, int]:
        s = self.extend(seq32)
        if s == self.next:
            self.next = s + 1
            return s, IN_ORDER
        if s > self.next:
            self.missing.append([self.next, s - 1])
            self.next = s + 1
            return s, JUMP
        for i, r in enumerate(self.missing):
            if s < r[0]:
                break
            if s <= r[1]:
                if r[0] == r[1]:
                    del self.missing[i]
                elif s == r[0]:
                    r[0] += 1
                elif s == r[1]:
                    r[1] -= 1
                else:
                    self.missing.insert(i + 1, [s + 1, r[1]])
                    r[1] = s - 1
                return s, FILLED
        # one boot sends each live frame once: a live frame already seen is a new boot
        return s, DUPLICATE if replayed else BACKWARDS

    def note_upto(self, last: int) -> bool:
        """The board has produced up to `last`: anything beyond what was seen is
        missing. True if that opened a new gap."""
        if last < self.next:
            return False
        self.missing.append([self.next, last])
        self.next = last + 1
        return True

    def first_wanted(self) -> int:
        return self.missing[0][0] if self.missing else self.next

    def take_before(self, first_held: int) -> list[tuple[int, int]]:
        """Removes and returns the missing ranges below `first_held`."""
        lost: list[tuple[int, int]] = []
        while self.missing and self.missing[0][0] < first_held:
            r = self.missing[0]
            if r[1] < first_held:
                lost.append((r[0], r[1]))
                del self.missing[0]
            else:
                lost.append((r[0], first_held - 1))
                r[0] = first_held
        return lost

    def give_up_first(self) -> tuple[int, int]:
        r = self.missing.pop(0)
        return r[0], r[1]


class Clock(Protocol):
    """The clock-sync interface (isopress.clocksync): device ms to UTC."""

    error_s: float

    def add(self, sent_host_s: float, device_ms64: int, received_host_s: float) -> None: ...

    def extend(self, ticks_u32: int) -> int: ...

    def utc(self, device_ms64: int) -> float: ...


class DeviceTime:
    """Used when no clock-sync is given: extends device time, maps nothing to UTC."""

    error_s = float("inf")

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, sent_host_s: float, device_ms64: int, received_host_s: float) -> None:
        return None

    def extend(self, ticks_u32: int) -> int:
        last = self._last
        if last is None:
            self._last = ticks_u32
            return ticks_u32
        d = (ticks_u32 - last) & _M32
        v = last + d if d < 0x80000000 else last + d - 0x100000000
        if v > last:
            self._last = v
        return v

    def utc(self, device_ms64: int) -> float | None:  # type: ignore[override]
        return None


def compatibility_error(name: str, hello: Hello) -> str | None:
    """None if this bridge can talk to the board, else what the user must do."""
    ours, theirs = wire.VERSION, hello.protocol
    if theirs > ours:
        return (
            f"{name}: board firmware speaks protocol {theirs}, this bridge {ours}: "
            "update the bridge (the isopress host software), or flash the firmware "
            "that matches this bridge (`isopress flash`)"
        )
    if theirs < ours:
        return (
            f"{name}: board firmware speaks protocol {theirs}, this bridge {ours}: "
            "update the board firmware (`isopress flash`)"
        )
    if hello.schema_hash != wire.schema_hash():
        return (
            f"{name}: board firmware and this bridge both speak protocol {ours} but their "
            f"layouts differ (schema hash: board 0x{hello.schema_hash:08X}, bridge "
            f"0x{wire.schema_hash():08X}), so one side is a development build: flash the "
            "firmware built from this bridge's sources (`isopress flash`)"
        )
    return None


@dataclass(eq=False)
class _Command:
    message: str
    fields: dict[str, Any]
    client: object
    check: bool
    future: asyncio.Future[Ack]
    seq: int = -1
    transmissions: int = 0
    first_sent: float = 0.0
    deadline: float = 0.0
    rto_sent: float = 0.0  # the RTO this transmission was timed with


@dataclass
class _Replay:
    pending: bool = False  # a REPLAY is out and its REPLAY_DONE not yet in
    request: int = 0  # numbers requests, so a late ACK of an old one is ignored
    stalled: int = 0  # rounds that ended with the same first missing seq
    first_asked: int | None = None
    timer: asyncio.TimerHandle | None = None


SampleCallback = Callable[[Sample], None]
EventCallback = Callable[[Event], None]
GapCallback = Callable[[Gap], None]
StateCallback = Callable[["Link", str, str], None]


# -- the link -------------------------------------------------------------------


class Link:
    """The bridge's connection to one board, reconnecting until closed.

    Callbacks run on the event loop thread and must not block. `clock` is a
    factory (e.g. the clock-sync class): the link makes a new clock per board
    boot, since a reset restarts the device's millisecond counter.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        on_sample: SampleCallback | None = None,
        on_event: EventCallback | None = None,
        on_gap: GapCallback | None = None,
        on_state: StateCallback | None = None,
        clock: Callable[[], Clock] | None = None,
        resume: Resume | None = None,
        baudrate: int = 115200,
        heartbeat_s: float = HEARTBEAT_S,
        silence_s: float = SILENCE_S,
        backoff_s: tuple[float, float] = BACKOFF_S,
        event_probe_s: float = EVENT_PROBE_S,
    ) -> None:
        self.name = name
        self.url = url
        self.baudrate = baudrate
        self.heartbeat_s = heartbeat_s
        self.silence_s = silence_s
        self.backoff_s = backoff_s
        self.event_probe_s = event_probe_s
        self._probe_at = 0.0
        self._on_sample = on_sample
        self._on_event = on_event
        self._on_gap = on_gap
        self._on_state = on_state
        self._clock_factory: Callable[[], Clock] = clock or DeviceTime
        self._resume = resume

        self.hello: Hello | None = None  # the board's last HELLO (kept across reconnects)
        self.error: LinkError | None = None  # why run() stopped for good
        self.state = "stopped"
        self.clock: Clock = self._clock_factory()
        self._clock_ready = False
        self._stats = LinkStats()
        self._drops_before: dict[str, int] = {}

        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._stopped = asyncio.Event()
        self._transport: Transport | None = None
        self._decoder = codec.StreamDecoder()
        self._lost: asyncio.Future[str] | None = None
        self._hello_waiter: asyncio.Future[Hello] | None = None
        self._live = False  # this connection has its HELLO: frames are trusted
        self._last_rx = 0.0

        self._samples = SeqTracker()
        self._events = SeqTracker()
        self._boot_id = -1
        self._replays = {TELEMETRY: _Replay(), EVENT: _Replay()}

        self._next_seq = 1
        self._rto = RtoEstimator()
        self._queue: deque[_Command] = deque()
        self._in_flight: dict[int, _Command] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._clock_token = 0
        self._clock_sent: dict[int, float] = {}
        self._handlers: dict[str, Callable[[codec.Frame], None]] = {
            "TELEMETRY": self._on_telemetry,
            "EVENT": self._on_event_frame,
            "ACK": self._on_ack,
            "CLOCK": self._on_clock,
            "REPLAY_DONE": self._on_replay_done,
            "HELLO": self._on_hello,
        }

    def __repr__(self) -> str:
        return f"<Link {self.name} {self.url} {self.state}>"

    # -- public ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._live

    @property
    def stats(self) -> LinkStats:
        s = self._stats
        drops = dict(self._drops_before)
        for k, v in self._decoder.errors.items():
            drops[k] = drops.get(k, 0) + v
        s.drops = drops
        s.srtt_s, s.rttvar_s, s.rto_s = self._rto.srtt, self._rto.rttvar, self._rto.rto
        return s

    @property
    def replay_pending(self) -> bool:
        """True while a replay is out or sequence numbers are still missing."""
        return any(r.pending for r in self._replays.values()) or bool(
            self._samples.missing or self._events.missing
        )

    @property
    def resume_point(self) -> Resume | None:
        """Where this link's record of the present boot ends (see Resume)."""
        if self.hello is None:
            return None
        return Resume(
            self._boot_id,
            self._samples.first_wanted(),
            self._events.first_wanted(),
            self.hello.board_id,
        )

    def start(self) -> asyncio.Task[None]:
        """Runs the link as a task of the running loop (again, after close())."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)
        return self._task

    async def close(self) -> None:
        """Stops the link: the port is closed, pending commands fail with LinkDown."""
        self._closing = True
        self._wake.set()
        self._lose("link closed")
        if self._task is not None and self._task is not asyncio.current_task():
            with contextlib.suppress(LinkError, asyncio.CancelledError):
                await self._task

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Returns once the link has a connection; raises the link's error if
        run() stopped, TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not self._live:
                if self._stopped.is_set():
                    raise self.error or NotConnected(f"{self.name}: link stopped")
                up = asyncio.ensure_future(self._up.wait())
                stopped = asyncio.ensure_future(self._stopped.wait())
                try:
                    await asyncio.wait({up, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    up.cancel()
                    stopped.cancel()
                if self.error is not None:
                    raise self.error

    def submit(
        self,
        message: str,
        fields: Mapping[str, Any],
        client: object = None,
        *,
        check: bool = True,
    ) -> asyncio.Future[Ack]:
        """Queues a command; the future gives its Ack. Raises at once, sending
        nothing, for a message that is not a command, fields that do not fit
        (codec.CodecError), or no connection (NotConnected). With check=True a
        NACK fails the future with Nack; with check=False it is an Ack too."""
        msg = codec.MESSAGES.get(message)
        if msg is None or not msg.to_device or message in _NOT_COMMANDS:
            raise codec.CodecError(f"{message!r} is not a command a host can send")
        codec.encode(message, fields)  # the codec names the field that does not fit
        if not self._live:
            raise NotConnected(f"{self.name}: not connected ({self.state}); {message} not sent")
        return self._enqueue(message, dict(fields), client, check)

    async def send(
        self,
        message: str,
        fields: Mapping[str, Any],
        client: object = None,
        *,
        check: bool = True,
    ) -> Ack:
        """Sends a command and waits for its Ack (see submit)."""
        return await self.submit(message, fields, client, check=check)

    async def run(self) -> None:
        """Connects and reconnects until close(). Raises VersionMismatch (or
        LinkError for a port name pyserial cannot use) when retrying is useless."""
        self._loop = asyncio.get_running_loop()
        self.error = None
        self._stopped.clear()
        lo, hi = self.backoff_s
        delay = lo
        try:
            while not self._closing:
                started = self._loop.time()
                try:
                    await self._connect()
                except VersionMismatch as e:
                    self._fatal(e, "incompatible")
                    raise
                except ValueError as e:  # pyserial: an unknown URL scheme or bad setting
                    err = LinkError(f"{self.name}: cannot open {self.url!r}: {e}")
                    self._fatal(err, "failed")
                    raise err from None
                except (*PORT_ERRORS, HandshakeFailed) as e:
                    self._teardown(str(e))
                    if self._closing:
                        break
                    self._stats.connect_failures += 1
                    self._set_state("waiting", f"{e}; retry in {delay:.1f} s")
                    await self._pause(delay)
                    delay = min(hi, delay * 2)
                    continue
                assert self._lost is not None
                reason = await self._lost
                self._teardown(reason)
                if self._closing:
                    break
                # a board that keeps dropping right after connecting gets no fast retries
                if self._loop.time() - started >= hi:
                    delay = lo
                else:
                    self._set_state("waiting", f"{reason}; retry in {delay:.1f} s")
                    await self._pause(delay)
                    delay = min(hi, delay * 2)
        finally:
            self._teardown("link stopped")
            self._stopped.set()
            if self.error is None:
                self._set_state("stopped", "")

    # -- connection ----------------------------------------------------------

    async def _connect(self) -> None:
        loop = self._loop
        assert loop is not None
        self._lost = loop.create_future()
        self._decoder = codec.StreamDecoder()
        self._set_state("opening", self.url)
        transport = Transport(self.url, self.baudrate)
        transport.open(loop, self._on_data, self._on_port_lost)
        self._transport = transport
        self._last_rx = loop.time()
        self._set_state("handshake", "")
        hello = await self._handshake()
        problem = compatibility_error(self.name, hello)
        if problem:
            self.hello = hello
            raise VersionMismatch(problem)
        self._start_session(hello)

    async def _handshake(self) -> Hello:
        loop = self._loop
        assert loop is not None and self._lost is not None
        self._hello_waiter = waiter = loop.create_future()
        rto = RTO_INITIAL_S
        identify = {"host_version": wire.VERSION}
        for attempt in range(MAX_TRANSMISSIONS):
            flags = wire.FLAG_RETRY if attempt else 0
            self._write(codec.encode("IDENTIFY", identify, seq=0, flags=flags))
            await asyncio.wait({waiter, self._lost}, timeout=rto)
            if self._lost.done():
                raise HandshakeFailed(f"{self.name}: {self._lost.result()} during handshake")
            if waiter.done():
                return waiter.result()
            rto = min(RTO_MAX_S, rto * 2)
        raise HandshakeFailed(
            f"{self.name}: no HELLO from {self.url} after {MAX_TRANSMISSIONS} IDENTIFY: "
            "is an isopress board on this port, and is its firmware running?"
        )

    def _start_session(self, hello: Hello) -> None:
        if self._boot_id < 0:  # this link's first HELLO
            resume, self._resume = self._resume, None
            self._boot_id = hello.boot_id
            if resume is not None and resume.board_id in (None, hello.board_id):
                self._samples = SeqTracker(resume.sample_next)
                self._events = SeqTracker(resume.event_next)
                if resume.boot_id != hello.boot_id:
                    self._boot_id = resume.boot_id
                    self._new_boot(hello)
        elif self.hello is None or (self.hello.board_id, self._boot_id) != (
            hello.board_id,
            hello.boot_id,
        ):
            self._new_boot(hello)
        self.hello = hello
        self._next_seq = 1
        self._rto = RtoEstimator()
        self._live = True
        self._stats.connects += 1
        if self._stats.connects > 1:
            self._stats.reconnects += 1
        self._up.set()
        self._set_state("connected", f"board {hello.board_id} boot {hello.boot_id}")
        assert self._loop is not None
        self._probe_at = self._loop.time() + self.event_probe_s  # the replays below probe
        self._beat()
        for stream, tracker in ((TELEMETRY, self._samples), (EVENT, self._events)):
            if self._live:
                self._request_replay(stream, tracker.first_wanted(), REPLAY_ALL)

    def _new_boot(self, hello: Hello) -> None:
        """The board reset (or another board is on the port): close the old
        boot's record with gaps, and count the new boot from 0."""
        old = self._boot_id
        for stream, tracker in ((TELEMETRY, self._samples), (EVENT, self._events)):
            for a, b in tracker.missing:
                self._gap(old, stream, a, b, "reset")
            self._gap(old, stream, tracker.next, None, "reset")
        self._stats.resets += 1
        log.warning(
            "%s: board %s reset (boot %d -> %d)", self.name, hello.board_id, old, hello.boot_id
        )
        self._boot_id = hello.boot_id
        self._samples = SeqTracker()
        self._events = SeqTracker()
        self.clock = self._clock_factory()
        self._clock_ready = False

    def _lose(self, reason: str) -> None:
        """The connection is over: stop reading now; run() reconnects."""
        if self._lost is not None and not self._lost.done():
            log.info("%s: connection lost: %s", self.name, reason)
            self._lost.set_result(reason)
        self._teardown(reason)

    def _on_port_lost(self, exc: BaseException) -> None:
        self._lose(f"port lost ({exc})")

    def _teardown(self, reason: str) -> None:
        self._live = False
        self._up.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for k, v in self._decoder.errors.items():
            self._drops_before[k] = self._drops_before.get(k, 0) + v
        self._decoder = codec.StreamDecoder()
        for handle in (self._timer, self._heartbeat):
            if handle is not None:
                handle.cancel()
        self._timer = self._heartbeat = None
        for r in self._replays.values():
            r.pending = False
            if r.timer is not None:
                r.timer.cancel()
                r.timer = None
        self._clock_sent.clear()
        commands = list(self._in_flight.values()) + list(self._queue)
        self._in_flight.clear()
        self._queue.clear()
        for c in commands:
            if not c.future.done():
                sent = "sent, not acknowledged" if c.transmissions else "not sent"
                c.future.set_exception(LinkDown(f"{self.name}: {c.message} {sent}: {reason}"))

    def _fatal(self, err: LinkError, state: str) -> None:
        self.error = err
        self._teardown(str(err))
        self._set_state(state, str(err))
        log.error("%s", err)

    async def _pause(self, seconds: float) -> None:
        if self._closing:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _set_state(self, state: str, detail: str) -> None:
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(self, state, detail)
            except Exception:
                self._stats.callback_errors += 1
                log.exception("%s: on_state callback failed", self.name)

    def _write(self, data: bytes) -> None:
        t = self._transport
        if t is None:
            return
        try:
            t.write(data)
        except serial.SerialTimeoutException:
            # the board is not reading; the frame is dropped, a command is retransmitted
            self._stats.write_stalls += 1
            return
        except PORT_ERRORS as e:
            self._lose(f"write failed ({e})")
            return
        self._stats.bytes_out += len(data)
        self._stats.frames_out += 1

    # -- receiving -------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        st = self._stats
        st.bytes_in += len(data)
        assert self._loop is not None
        self._last_rx = self._loop.time()
        frames = self._decoder.feed(data)
        st.frames_in += len(frames)
        handlers = self._handlers
        for frame in frames:
            handler = handlers.get(frame.message)
            if handler is None:
                st.ignored += 1
                continue
            if not self._live and frame.message != "HELLO":
                st.before_hello += 1
                continue
            try:
                handler(frame)
            except Exception:
                st.callback_errors += 1
                log.exception("%s: handling %s failed", self.name, frame.message)
            if self._transport is None:
                break  # the connection ended inside the handler

    def _utc(self, ms: int) -> float | None:
        if not self._clock_ready:
            return None
        try:
            return self.clock.utc(ms)
        except (ArithmeticError, ValueError, RuntimeError):
            return None

    def _sequenced(
        self, frame: codec.Frame, tracker: SeqTracker, field: str
    ) -> tuple[int, int, bool] | None:
        """The frame's extended sequence number, its status and whether it was
        replayed; None, with the connection lost, if the sequence went back."""
        replayed = bool(frame.flags & wire.FLAG_REPLAY)
        seq, status = tracker.receive(frame.fields[field], replayed)
        if status == BACKWARDS:
            self._lose(f"{field} went back to {seq} after {tracker.next - 1}: board reset")
            return None
        return seq, status, replayed

    def _accepted(
        self, frame: codec.Frame, seq: int, status: int, replayed: bool
    ) -> tuple[str, int, int, int, float | None, bool, bool]:
        """Counts a sequenced frame that is handed on; returns the fields
        Sample and Event both start with (link to duplicate)."""
        st = self._stats
        st.replayed += replayed
        duplicate = status == DUPLICATE
        st.duplicates += duplicate
        ms = self.clock.extend(frame.fields["time"])
        return (self.name, self._boot_id, seq, ms, self._utc(ms), replayed, duplicate)

    def _replay_jump(self, status: int, stream: int) -> None:
        """Asks for the frames a jump in the sequence skipped."""
        if status == JUMP:
            self._stats.gaps += 1
            self._want_replay(stream)

    def _on_telemetry(self, frame: codec.Frame) -> None:
        got = self._sequenced(frame, self._samples, "sample_seq")
        if got is None:
            return
        seq, status, replayed = got
        self._stats.samples += 1
        head = self._accepted(frame, seq, status, replayed)
        if self._on_sample is not None:
            self._on_sample(Sample(*head, frame.fields["items"]))
        self._replay_jump(status, TELEMETRY)

    def _on_event_frame(self, frame: codec.Frame) -> None:
        got = self._sequenced(frame, self._events, "event_seq")
        if got is None:
            return
        seq, status, replayed = got
        f = frame.fields
        kind = f["kind"]
        if kind == _EVENT_BOOT and not replayed and (f["b"] & 0xFFFF) != self._boot_id:
            self._lose(f"BOOT event of boot {f['b'] & 0xFFFF}, connected to {self._boot_id}")
            return
        self._stats.events += 1
        head = self._accepted(frame, seq, status, replayed)
        if self._on_event is not None:
            self._on_event(
                Event(
                    *head,
                    f["channel"],
                    EVENT_KINDS.get(kind, str(kind)),
                    f["code"],
                    f["a"],
                    f["b"],
                    f["c"],
                )
            )
        self._replay_jump(status, EVENT)

    def _on_hello(self, frame: codec.Frame) -> None:
        hello = Hello.from_fields(frame.fields)
        waiter = self._hello_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(hello)
        elif self._live and hello.boot_id != self._boot_id:
            self._lose(f"HELLO of boot {hello.boot_id}, connected to {self._boot_id}")

    def _on_clock(self, frame: codec.Frame) -> None:
        sent = self._clock_sent.pop(frame.fields["token"], None)
        if sent is None:
            return  # answer to a query already forgotten
        received = time.time()
        self._stats.clock_replies += 1
        self.clock.add(sent, self.clock.extend(frame.fields["ticks"]), received)
        self._clock_ready = True

    def _beat(self) -> None:
        """Heartbeat: a CLOCK_QUERY now, a silence check, and the next beat."""
        loop = self._loop
        if not self._live or loop is None:
            return
        now = loop.time()
        if now - self._last_rx > self.silence_s:
            self._lose(f"nothing received for {now - self._last_rx:.1f} s")
            return
        wall = time.time()
        for token in [t for t, s in self._clock_sent.items() if wall - s > CLOCK_TOKEN_TTL_S]:
            del self._clock_sent[token]
        self._clock_token = (self._clock_token + 1) & _M32
        self._clock_sent[self._clock_token] = wall
        self._stats.clock_queries += 1
        self._write(codec.encode("CLOCK_QUERY", {"token": self._clock_token}))
        if self._live and now >= self._probe_at and not self._replays[EVENT].pending:
            self._probe_at = now + self.event_probe_s
            self._request_replay(EVENT, self._events.first_wanted(), REPLAY_ALL)
        if self._live:
            self._heartbeat = loop.call_later(self.heartbeat_s, self._beat)

    # -- commands ----------------------------------------------------------------

    def _enqueue(
        self, message: str, fields: dict[str, Any], client: object, check: bool
    ) -> asyncio.Future[Ack]:
        assert self._loop is not None
        cmd = _Command(message, fields, client, check, self._loop.create_future())
        if not self._live:  # the connection ended while its own setup was queuing
            cmd.future.set_exception(NotConnected(f"{self.name}: {message} not sent"))
            return cmd.future
        self._queue.append(cmd)
        self._stats.commands += 1
        self._pump()
        return cmd.future

    def _pump(self) -> None:
        while self._queue and len(self._in_flight) < WINDOW and self._live:
            cmd = self._queue.popleft()
            if cmd.future.done():  # cancelled by its sender before it went out
                continue
            cmd.seq = self._next_seq
            self._next_seq = (self._next_seq + 1) & 0xFFFF
            self._in_flight[cmd.seq] = cmd
            n = len(self._in_flight)
            if n > self._stats.max_in_flight:
                self._stats.max_in_flight = n
            self._transmit(cmd)
        self._arm_timer()

    def _transmit(self, cmd: _Command) -> None:
        assert self._loop is not None
        flags = wire.FLAG_RETRY if cmd.transmissions else 0
        data = codec.encode(cmd.message, cmd.fields, seq=cmd.seq, flags=flags)
        now = self._loop.time()
        if not cmd.transmissions:
            cmd.first_sent = now
        cmd.transmissions += 1
        cmd.rto_sent = self._rto.rto
        cmd.deadline = now + cmd.rto_sent
        self._write(data)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight and self._loop is not None:
            due = min(c.deadline for c in self._in_flight.values())
            self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        expired = [c for c in self._in_flight.values() if c.deadline <= now]
        for cmd in expired:
            if cmd.transmissions >= MAX_TRANSMISSIONS:
                self._stats.timeouts += 1
                self._lose(
                    f"{cmd.message} (seq {cmd.seq}) not acknowledged after "
                    f"{MAX_TRANSMISSIONS} transmissions: link down"
                )
                return
        for cmd in expired:
            self._stats.timeouts += 1
            # one doubling per RTO found too short, not one per command sent with it
            if cmd.rto_sent >= self._rto.rto:
                self._rto.backoff()
            self._stats.retransmits += 1
            self._transmit(cmd)
            if not self._live:
                return
        self._arm_timer()

    def _on_ack(self, frame: codec.Frame) -> None:
        f = frame.fields
        cmd = self._in_flight.get(f["cmd_seq"])
        if cmd is None or codec.MESSAGES[cmd.message].id != f["cmd"]:
            self._stats.duplicate_acks += 1
            return
        del self._in_flight[cmd.seq]
        assert self._loop is not None
        rtt = self._loop.time() - cmd.first_sent
        if cmd.transmissions == 1:  # Karn: a retransmitted command's ACK is ambiguous
            self._rto.sample(rtt)
        result = RESULT_NAMES.get(f["result"], str(f["result"]))
        ack = Ack(cmd.message, cmd.seq, result, f["value"], cmd.client, cmd.transmissions, rtt)
        if result == "OK":
            self._stats.acks += 1
        else:
            self._stats.nacks += 1
        if not cmd.future.done():
            if ack.ok or not cmd.check:
                cmd.future.set_result(ack)
            else:
                cmd.future.set_exception(Nack(self.name, ack))
        self._pump()

    # -- replay --------------------------------------------------------------------

    def _want_replay(self, stream: int) -> None:
        """Asks for what is missing, unless a replay of this stream is already out."""
        r = self._replays[stream]
        tracker = self._samples if stream == TELEMETRY else self._events
        if r.pending or not self._live or not tracker.missing:
            return
        first, last = tracker.missing[0][0], tracker.missing[-1][1]
        self._request_replay(stream, first, min(REPLAY_ALL, last - first + 1))

    def _request_replay(self, stream: int, first: int, count: int) -> None:
        r = self._replays[stream]
        r.pending = True
        r.request += 1
        r.first_asked = first
        self._stats.replays += 1
        fut = self._enqueue(
            "REPLAY", {"stream": stream, "from_seq": first & _M32, "count": count}, "link", False
        )
        request = r.request
        fut.add_done_callback(lambda f: self._replay_acked(stream, request, f))

    def _replay_acked(self, stream: int, request: int, fut: asyncio.Future[Ack]) -> None:
        r = self._replays[stream]
        if fut.cancelled() or fut.exception() is not None:
            return  # the connection ended; the next one asks again
        if r.request != request or not r.pending or self._loop is None:
            return  # its REPLAY_DONE came before the ACK (the first ACK was lost)
        ack = fut.result()
        if not ack.ok:
            log.warning("%s: REPLAY of %s refused: %s", self.name, STREAM_NAMES[stream], ack.result)
            r.pending = False
            r.timer = self._loop.call_later(1.0, self._retry_replay, stream)
            return
        ring = self.hello.ring_samples if self.hello else 0
        r.timer = self._loop.call_later(max(5.0, 0.01 * ring), self._replay_timed_out, stream)

    def _retry_replay(self, stream: int) -> None:
        self._replays[stream].timer = None
        self._want_replay(stream)

    def _replay_timed_out(self, stream: int) -> None:
        r = self._replays[stream]
        r.timer = None
        r.pending = False
        self._stats.replay_timeouts += 1
        self._want_replay(stream)

    def _on_replay_done(self, frame: codec.Frame) -> None:
        f = frame.fields
        stream = f["stream"]
        if stream not in self._replays:
            self._stats.ignored += 1
            return
        r = self._replays[stream]
        tracker = self._samples if stream == TELEMETRY else self._events
        r.pending = False
        if r.timer is not None:
            r.timer.cancel()
            r.timer = None
        # the board no longer holds anything older than its first_seq
        for a, b in tracker.take_before(tracker.extend(f["first_seq"])):
            self._gap(self._boot_id, stream, a, b, "not_held")
        # and it has produced up to last_seq: every live frame up to there was
        # written before this REPLAY_DONE, so what has not arrived was lost
        opened = tracker.note_upto(tracker.extend(f["last_seq"]))
        self._stats.gaps += opened
        if not tracker.missing:
            r.stalled = 0
            return
        first = tracker.missing[0][0]
        r.stalled = r.stalled + 1 if first == r.first_asked and not opened else 0
        if r.stalled >= REPLAY_STALLED_ROUNDS:
            # held by the board, asked for again and again, never delivered
            a, b = tracker.give_up_first()
            self._gap(self._boot_id, stream, a, b, "not_replayed")
            r.stalled = 0
        if self._loop is not None:
            delay = 0.5 if r.stalled else 0.0
            r.timer = self._loop.call_later(delay, self._retry_replay, stream)

    def _gap(self, boot_id: int, stream: int, first: int, last: int | None, reason: str) -> None:
        st = self._stats
        st.gap_records += 1
        if last is not None:
            if stream == TELEMETRY:
                st.lost_samples += last - first + 1
            else:
                st.lost_events += last - first + 1
        gap = Gap(self.name, boot_id, STREAM_NAMES[stream], first, last, reason)
        log.warning("%s: gap %s", self.name, gap)
        if self._on_gap is not None:
            try:
                self._on_gap(gap)
            except Exception:
                st.callback_errors += 1
                log.exception("%s: on_gap callback failed", self.name)
