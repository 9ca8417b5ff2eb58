"""`isopress bridge`: boards -> durable record -> HTTP API, on one asyncio loop.

    isopress bridge --device NAME=PATH ... --db FILE [--http HOST:PORT] [--token T]

Without --device the bridge finds boards by the USB vendor and product ids in
hardware/boards/*.json, and keeps looking every few seconds.

Concurrency: everything but the disk runs on one asyncio event loop: every
board's Link (isopress.link: bytes in through the loop's selector, decoded
and sequenced on the loop), the HTTP server (isopress.api), and the live
stream's fan-out. The loop never touches the disk for writes: callbacks
append rows to a pending batch, and a Recorder hands each batch to a single
writer thread, which commits it in one SQLite transaction (one fsync) while
the loop goes on. Batches are cut when 500 rows are pending or the oldest
has waited FLUSH_DELAY_S (10 ms), and rows that arrive while a commit runs
wait for the next one (group commit): a sample reaches the disk within tens
of milliseconds, and the disk sees at most about a hundred commits a second
however many boards there are, not thousands. Only after a batch is
committed does the loop publish it: the live channel state, the stream and
every read come from committed rows, so nothing the API has shown can be
lost by a crash. Reads (samples, events, runs) run on a small thread pool
with their own SQLite connections (WAL), so a month-long read never holds up
the writer. A failing disk (full, locked,
read-only) never stops the loop: the batch is kept, retried with back-off,
and the error is shown in GET /api/v1/status.

Sequence numbers: a board numbers samples and events from 0 at each boot.
The store keys them per device as sample_base + the board's number, with a
new base for each boot (the `boots` table, docs/store.md), so a replayed
sample is stored once and a reset never collides with earlier rows. At start
the bridge reads where each device's record stops (`Store.resume_point`) and
hands it to the link, which asks the board to replay what was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isopress import __version__, paths
from isopress.clocksync import ClockSync
from isopress.link import Ack, Event, Gap, Link, LinkDown, NotConnected, Resume, Sample
from isopress.protocol import wire
from isopress.store import SAMPLE_FIELDS, Batch, Store, StoreError, Written, event_with_text

log = logging.getLogger("isopress.bridge")

DEFAULT_HTTP = "127.0.0.1:8420"
FLUSH_DELAY_S = 0.010  # longest a row waits for its batch to be cut
FLUSH_ROWS = 500  # a batch is cut at once when this many rows are pending
RETRY_S = (0.1, 10.0)  # store back-off after a failed commit: first, doubling to the last
MAX_BACKLOG = 1_000_000  # rows kept in memory while the store refuses them
UTC_WAIT_S = 3.0  # longest a sample waits for the clock sync before an estimate
COMMAND_TIMEOUT_S = 20.0  # beyond the link's own retransmissions
RESCAN_S = 5.0  # USB discovery period

MODES: dict[int, str] = dict(wire.MODES)
ALARM_BITS: dict[int, str] = dict(wire.ALARMS)
ALARM_NUMBERS: dict[str, int] = {name: bit for bit, name in wire.ALARMS}
STEP_KINDS: dict[str, int] = {name: n for n, name in wire.STEPS}
STEP_NAMES: dict[int, str] = dict(wire.STEPS)
WAIT_KINDS: dict[str, int] = {name: n for n, name in wire.WAITS}
WAIT_NAMES: dict[int, str] = dict(wire.WAITS)
# The six SET_LIMITS values, in its order, by their config key numbers.
LIMIT_KEYS: dict[str, int] = {
    "max_working": 16,
    "trip": 17,
    "trip_reset": 18,
    "min_alarm": 19,
    "ramp_up": 20,
    "ramp_down": 21,
}
LIMIT_NAMES: dict[int, str] = {k: n for n, k in LIMIT_KEYS.items()}


@dataclass(frozen=True)
class ConfigKey:
    number: int
    name: str
    scope: str  # "board" (channel 0) or "channel"
    unit: str
    exponent: int  # value in `unit` = raw x 10**exponent
    lo: int | None  # None: worked out from the board profile, the board checks
    hi: int | None

    def value(self, raw: int) -> float | int:
        if self.exponent < 0:
            return raw / 10 ** (-self.exponent)  # a division rounds as the decimal reads
        return raw * 10**self.exponent

    def raw(self, value: float) -> int:
        return round(value * 10 ** (-self.exponent)) if self.exponent else round(value)


CONFIG_KEYS: dict[str, ConfigKey] = {
    k[1]: ConfigKey(k[0], k[1], k[2], k[3], k[4], k[5], k[6]) for k in wire.CONFIG_KEYS
}
CONFIG_BY_NUMBER: dict[int, ConfigKey] = {k.number: k for k in CONFIG_KEYS.values()}
MAX_STEPS = (wire.MAX_PAYLOAD - 1) // 14  # PROFILE_LOAD: 1-byte head, 14-byte steps
U32 = 0xFFFFFFFF
I32 = 0x7FFFFFFF


@functools.lru_cache(maxsize=1024)
def alarm_names(bits: int) -> tuple[str, ...]:
    """An alarm bit set as names; bits this host does not know as `BIT<n>`."""
    return tuple(ALARM_BITS.get(b, f"BIT{b}") for b in range(16) if bits >> b & 1)


def mode_name(mode: int) -> str:
    return MODES.get(mode, str(mode))


def mpa(pa: int | None) -> float | None:
    return None if pa is None else pa / 1e6


# -- errors ------------------------------------------------------------------------


class Rejected(Exception):
    """A request refused by the bridge or by the board; nothing was changed.

    `code` names the problem (the API maps it to an HTTP status, api.STATUS);
    `detail` says which field, which limit, what the board answered.
    """

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


# A board's NACK as a Rejected code.
NACK_CODES: dict[str, str] = {
    "UNKNOWN_CHANNEL": "unknown_channel",
    "OUT_OF_RANGE": "out_of_range",
    "BAD_STATE": "bad_state",
    "LATCHED": "latched",
    "NOT_SUPPORTED": "not_supported",
    "BAD_PROFILE": "bad_profile",
    "UNKNOWN_KEY": "unknown_key",
    "STORAGE": "board_storage",
    "BUSY": "busy",
}


# -- the writer ----------------------------------------------------------------------


@dataclass
class StoreHealth:
    ok: bool = True
    error: str | None = None
    reason: str | None = None  # StoreError.reason of the last failure
    failing_since_utc: float | None = None
    retries: int = 0  # failed commits in the present failure
    failures: int = 0  # failed commits ever
    batches: int = 0
    rows: int = 0
    samples_added: int = 0
    events_added: int = 0
    last_commit_utc: float | None = None
    last_commit_ms: float | None = None
    dropped_samples: int = 0  # refused for lack of memory while the store was down

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Recorder:
    """Collects rows on the loop and commits them in batches on one writer thread.

    `batch` is the open batch: loop code appends to its lists and calls
    `poke()`. `on_commit(batch, written)` runs on the loop after each commit.
    """

    def __init__(
        self,
        store: Store,
        on_commit: Callable[[Batch, Written], None],
        *,
        delay_s: float = FLUSH_DELAY_S,
        max_rows: int = FLUSH_ROWS,
        retry_s: tuple[float, float] = RETRY_S,
    ) -> None:
        self.store = store
        self.on_commit = on_commit
        self.delay_s = delay_s
        self.max_rows = max_rows
        self.retry_s = retry_s
        self.batch = Batch()
        self.health = StoreHealth()
        self._retrying: Batch | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="isopress-writer")
        self._command_ids: dict[Any, int] = {}  # owned by the writer thread
        self._rows = 0
        self._first_at = 0.0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def backlog(self) -> int:
        """Rows not yet committed."""
        return self._rows + (len(self._retrying) if self._retrying is not None else 0)

    def poke(self, n: int = 1) -> None:
        if not self._rows:
            self._first_at = asyncio.get_running_loop().time()
            self._wake.set()
            self._idle.clear()
        self._rows += n
        if self._rows >= self.max_rows:
            self._full.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="recorder")

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Runs a store call on the writer thread, after the commits before it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    async def drain(self, timeout: float = 10.0) -> bool:
        """Waits until every row added so far is committed (False on time-out)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.backlog or not self._idle.is_set():
                    self._full.set()
                    await asyncio.sleep(0.005)
                return True
        return False

    async def close(self, timeout: float = 10.0) -> None:
        """Commits what is pending (trying for `timeout`), then stops."""
        await self.drain(timeout)
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await self._wake.wait()
            if self._rows < self.max_rows:
                wait = self._first_at + self.delay_s - loop.time()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), wait)
            batch, self.batch = self.batch, Batch()
            self._rows = 0
            self._wake.clear()
            self._full.clear()
            await self._commit(batch)
            if not self._rows:
                self._idle.set()

    async def _commit(self, batch: Batch) -> None:
        loop = asyncio.get_running_loop()
        delay = self.retry_s[0]
        h = self.health
        while True:
            t0 = time.perf_counter()
            try:
                written = await loop.run_in_executor(
                    self._pool, self.store.write_batch, batch, self._command_ids
                )
            except StoreError as e:
                self._retrying = batch
                h.failures += 1
                h.retries += 1
                if h.ok or h.error != str(e):
                    log.error("store: %s (retrying in %.1f s)", e, delay)
                h.ok, h.error, h.reason = False, str(e), e.reason
                if h.failing_since_utc is None:
                    h.failing_since_utc = time.time()
                await asyncio.sleep(delay)
                delay = min(self.retry_s[1], delay * 2)
                # rows added meanwhile go behind this batch: order is kept
                batch.extend(self.batch)
                self.batch = Batch()
                self._rows = 0
                self._wake.clear()
                continue
            except Exception as e:  # a bug, not the disk: keep the loop alive, say so
                log.exception("store: batch of %d rows failed", len(batch))
                self._retrying = batch
                h.ok, h.error, h.reason = False, f"{type(e).__name__}: {e}", "other"
                await asyncio.sleep(delay)
                delay = min(self.retry_s[1], delay * 2)
                continue
            break
        self._retrying = None
        if not h.ok:
            log.warning("store: writing again after %d failed attempts", h.retries)
        h.ok, h.error, h.reason, h.failing_since_utc, h.retries = True, None, None, None, 0
        h.batches += 1
        h.rows += len(batch)
        h.samples_added += written.samples
        h.events_added += written.events
        h.last_commit_utc = time.time()
        h.last_commit_ms = (time.perf_counter() - t0) * 1000
        try:
            self.on_commit(batch, written)
        except Exception:
            log.exception("store: after-commit handling failed")


# -- the live stream ----------------------------------------------------------------


class Subscriber:
    """One client of GET /api/v1/stream: a bounded queue of SSE messages."""

    def __init__(
        self,
        devices: frozenset[str] | None,
        channels: frozenset[int] | None,
        kinds: frozenset[str] | None,
        size: int,
    ) -> None:
        self.devices, self.channels, self.kinds = devices, channels, kinds
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.overflowed = False
        self.closed = False  # the bridge is stopping: end the response

    def wants(self, kind: str, device: str | None, channel: int | None) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.devices is not None and device is not None and device not in self.devices:
            return False
        return not (self.channels is not None and channel and channel not in self.channels)

    def put(self, message: bytes) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            # a reader this slow gets told and cut off; it reconnects and
            # reads what it missed from GET .../samples
            self.overflowed = True


class Hub:
    """Fan-out of committed records to stream subscribers; a message is
    encoded once per batch and filter, however many subscribers share it."""

    KINDS = ("samples", "event", "gap", "link", "command", "cycler_event")

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)

    def subscribe(
        self,
        devices: frozenset[str] | None = None,
        channels: frozenset[int] | None = None,
        kinds: frozenset[str] | None = None,
    ) -> Subscriber:
        s = Subscriber(devices, channels, kinds, self.queue_size)
        self.subscribers.add(s)
        return s

    def unsubscribe(self, s: Subscriber) -> None:
        self.subscribers.discard(s)

    def close(self) -> None:
        """Ends every stream (the bridge is stopping); b"" wakes a waiting reader."""
        for s in list(self.subscribers):
            s.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                s.queue.put_nowait(b"")

    def _message(self, kind: str, data: Any) -> bytes:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
        return f"id: {next(self._ids)}\nevent: {kind}\ndata: {text}\n\n".encode()

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        device, channel = data.get("device"), data.get("channel")
        message: bytes | None = None
        for s in self.subscribers:
            if s.wants(kind, device, channel):
                message = message or self._message(kind, data)
                s.put(message)

    def publish_samples(self, groups: dict[tuple[str, int], list[str]]) -> None:
        """Samples of one batch as JSON texts (sample_json), by (device, channel)."""
        if not self.subscribers:
            return
        cache: dict[tuple, bytes] = {}
        for s in self.subscribers:
            if s.kinds is not None and "samples" not in s.kinds:
                continue
            keys = tuple(
                k
                for k in groups
                if (s.devices is None or k[0] in s.devices)
                and (s.channels is None or k[1] in s.channels)
            )
            if not keys:
                continue
            message = cache.get(keys)
            if message is None:
                text = ",".join(t for k in keys for t in groups[k])
                message = f"id: {next(self._ids)}\nevent: samples\ndata: [{text}]\n\n".encode()
                cache[keys] = message
            s.put(message)


# -- per board state --------------------------------------------------------------


@dataclass
class Epoch:
    """One boot of a board in the record: stored seq = base + the board's seq."""

    number: int
    boot_id: int
    board_id: str
    sample_base: int
    event_base: int


@dataclass
class ChannelState:
    number: int
    kind: str = "NONE"
    sensor: str = "NONE"
    full_scale_pa: int = 0
    limits: dict[str, int] = field(default_factory=dict)  # wire integers, as read or set
    last: tuple | None = None  # newest committed sample row (Batch.samples layout)
    steps: list[dict[str, int]] | None = None  # the profile as loaded (wire integers)
    step: int | None = None  # the step the profile is in (PROFILE_STEP), None if none runs
    running: bool = False
    profile_event: int = -1  # stored seq of the event that set step/running
    cycle: int | None = None  # the last cycle a cycler event reported


@dataclass
class _Held:
    """A sample or event waiting for the clock sync to give its UTC."""

    record: Sample | Event
    epoch: Epoch
    arrived: float  # host UTC at arrival


class Board:
    """One board of the bridge: its link, its record's epochs, its channels."""

    def __init__(self, bridge: Bridge, name: str, url: str, board: str | None = None) -> None:
        self.bridge = bridge
        self.name = name
        self.url = url
        self.board = board
        self.id = -1  # devices.id
        self.epoch: Epoch | None = None
        self.previous: Epoch | None = None
        self.next_sample = 0  # lowest stored seq a new boot may start from
        self.next_event = 0
        self.channels: dict[int, ChannelState] = {}
        self.state = "stopped"
        self.detail = ""
        self.held: list[_Held] = []
        self.limits_read = False
        self.link: Link | None = None
        self._dropping: dict[str, list[int]] = {}  # stream -> [first, last] being dropped

    # -- set-up from the store ------------------------------------------------

    def load(self, store: Store) -> Resume | None:
        """Reads this board's epochs, channels and profile state from the store."""
        self.id = store.upsert_device(self.name, utc=time.time(), board=self.board)
        point = store.resume_point(self.name)
        last_s = store.last_seq(self.name, "TELEMETRY")
        last_e = store.last_seq(self.name, "EVENT")
        self.next_sample = 0 if last_s is None else last_s + 1
        self.next_event = 0 if last_e is None else last_e + 1
        for c in store.channels(self.name):
            ch = self.channel(c["channel"])
            ch.kind, ch.sensor, ch.full_scale_pa = c["kind"], c["sensor"], c["full_scale_pa"]
            last = store.last_sample(self.name, ch.number)
            if last is not None:
                ch.last = (self.id, *(last[k] for k in SAMPLE_FIELDS[1:]), last["flags"])
            load = store.last_command(self.name, ch.number, "PROFILE_LOAD")
            if load is not None:
                ch.steps = list(load["args"].get("items", []))
            ev = store.last_event(self.name, ch.number, ("PROFILE_STEP", "PROFILE_DONE"))
            if ev is not None:
                ch.profile_event = ev["event_seq"]
                ch.running = ev["kind"] == "PROFILE_STEP"
                ch.step = ev["code"] if ch.running else None
        if point is None:
            return None
        self.epoch = Epoch(
            point["epoch"],
            point["boot_id"],
            point["board_id"],
            point["sample_base"],
            point["event_base"],
        )
        return Resume(
            point["boot_id"],
            point["sample_next"],
            point["event_next"],
            point["board_id"] or None,
        )

    def channel(self, number: int) -> ChannelState:
        ch = self.channels.get(number)
        if ch is None:
            ch = self.channels[number] = ChannelState(number)
        return ch

    # -- epochs -----------------------------------------------------------------

    def _epoch_for(self, boot_id: int) -> Epoch:
        if self.epoch is not None and self.epoch.boot_id == boot_id:
            return self.epoch
        if self.previous is not None and self.previous.boot_id == boot_id:
            return self.previous
        assert self.link is not None and self.link.hello is not None
        return self._begin_epoch(boot_id, self.link.hello.board_id)

    def _begin_epoch(self, boot_id: int, board_id: str) -> Epoch:
        number = self.epoch.number + 1 if self.epoch is not None else 1
        ep = Epoch(number, boot_id, board_id, self.next_sample, self.next_event)
        self.previous, self.epoch = self.epoch, ep
        self.bridge.recorder.batch.boots.append(
            (self.id, number, boot_id, board_id, ep.sample_base, ep.event_base, time.time())
        )
        self.bridge.recorder.poke()
        log.info(
            "%s: boot %d of board %s is epoch %d (samples from %d, events from %d)",
            self.name,
            boot_id,
            board_id,
            number,
            ep.sample_base,
            ep.event_base,
        )
        return ep

    # -- link callbacks (on the loop; quick, no disk) -----------------------------

    def on_state(self, link: Link, state: str, detail: str) -> None:
        self.state, self.detail = state, detail
        self.bridge.hub.publish(
            "link", {"device": self.name, "state": state, "detail": detail, "utc": time.time()}
        )
        if state != "connected" or link.hello is None:
            if state != "connected":
                self.limits_read = False
            return
        hello = link.hello
        now = time.time()
        ep = self.epoch
        if ep is None or (ep.boot_id, ep.board_id) != (hello.boot_id, hello.board_id):
            if ep is not None and not ep.board_id and ep.boot_id == hello.boot_id:
                ep.board_id = hello.board_id  # an epoch from before board ids were kept
            else:
                self._begin_epoch(hello.boot_id, hello.board_id)
        rec = self.bridge.recorder
        rec.batch.devices.append(
            {
                "name": self.name,
                "utc": now,
                "board": self.board,
                "board_id": hello.board_id,
                "fw_version": hello.firmware,
                "protocol": hello.protocol,
                "schema_hash": hello.schema_hash,
                "boot_id": hello.boot_id,
                "config_crc": hello.config_crc,
                "telemetry_hz": hello.telemetry_hz,
            }
        )
        for c in hello.channels:
            ch = self.channel(c.channel)
            ch.kind, ch.sensor, ch.full_scale_pa = c.kind, c.sensor, c.full_scale
            rec.batch.channels.append((self.id, c.channel, c.kind, c.sensor, c.full_scale, now))
        rec.poke(1 + len(hello.channels))
        self.bridge.spawn(self._read_limits(link), f"{self.name}: reading limits")

    async def _read_limits(self, link: Link) -> None:
        """The limits host-side checks need, read once per connection."""
        assert link.hello is not None
        asks = []
        for c in link.hello.channels:
            if c.kind == "NONE":
                continue
            for name, key in LIMIT_KEYS.items():
                try:
                    fut = link.submit("GET_CONFIG", {"channel": c.channel, "key": key}, "bridge")
                except NotConnected:
                    return
                asks.append((c.channel, name, fut))
        for number, name, fut in asks:
            try:
                ack = await fut
            except (LinkDown, NotConnected):
                return
            except Exception as e:  # a NACK: the board lacks the key; the board checks then
                log.info("%s: channel %d %s not read: %s", self.name, number, name, e)
                continue
            self.channel(number).limits[name] = ack.value
        self.limits_read = True

    def on_sample(self, s: Sample) -> None:
        if not s.duplicate:
            self._take(s, self._epoch_for(s.boot_id))

    def on_event(self, e: Event) -> None:
        if e.duplicate:
            return
        ep = self._epoch_for(e.boot_id)
        self._track(e, ep.event_base + e.seq)
        self._take(e, ep)

    def _take(self, r: Sample | Event, ep: Epoch) -> None:
        """Records `r` now, or holds it until it has a UTC; behind held
        records it waits too, so the record keeps the board's order."""
        if r.utc is None or self.held:
            self.held.append(_Held(r, ep, time.time()))
            self.resolve_held()
        else:
            self._record(r, ep, r.utc)

    def on_gap(self, g: Gap) -> None:
        ep = self._epoch_for_gap(g.boot_id)
        base = ep.sample_base if g.stream == "TELEMETRY" else ep.event_base
        last = None if g.last is None else base + g.last
        self.bridge.recorder.batch.gaps.append(
            (self.id, g.stream, base + g.first, last, time.time(), g.reason)
        )
        self.bridge.recorder.poke()

    def _epoch_for_gap(self, boot_id: int) -> Epoch:
        for ep in (self.epoch, self.previous):
            if ep is not None and ep.boot_id == boot_id:
                return ep
        if self.epoch is None:
            assert self.link is not None and self.link.hello is not None
            return self._begin_epoch(boot_id, self.link.hello.board_id)
        return self.epoch

    def _track(self, e: Event, seq: int) -> None:
        """What events say about state the bridge checks commands against."""
        ch = self.channels.get(e.channel) if e.channel else None
        if ch is None:
            return
        if e.kind in ("PROFILE_STEP", "PROFILE_DONE") and seq > ch.profile_event:
            ch.profile_event = seq
            ch.running = e.kind == "PROFILE_STEP"
            ch.step = e.code if ch.running else None
        elif e.kind == "CONFIG_CHANGED" and e.code in LIMIT_NAMES:
            ch.limits[LIMIT_NAMES[e.code]] = e.a

    def resolve_held(self, now: float | None = None) -> None:
        """Gives held records their UTC once the clock sync has a fit, or an
        estimate from their arrival once they have waited UTC_WAIT_S."""
        if not self.held:
            return
        link = self.link
        clock = link.clock if link is not None else None
        ready = bool(getattr(clock, "ready", False))
        now = time.time() if now is None else now
        if not ready and now - self.held[0].arrived < UTC_WAIT_S:
            return
        held, self.held = self.held, []
        newest = held[-1]
        anchor_utc, anchor_ms = newest.arrived, newest.record.device_ms
        boot = link.hello.boot_id if link is not None and link.hello is not None else None
        estimated = 0
        for h in held:
            utc = None
            if ready and clock is not None and h.epoch.boot_id == boot:
                with contextlib.suppress(ArithmeticError, ValueError, RuntimeError):
                    utc = clock.utc(h.record.device_ms)
            if utc is None:
                utc = anchor_utc - (anchor_ms - h.record.device_ms) / 1000
                estimated += 1
            self._record(h.record, h.epoch, utc)
        if estimated:
            log.warning(
                "%s: %d records stored with UTC estimated from their arrival: "
                "the board did not answer CLOCK_QUERY in %.0f s",
                self.name,
                estimated,
                UTC_WAIT_S,
            )

    def _record(self, r: Sample | Event, ep: Epoch, utc: float) -> None:
        if isinstance(r, Sample):
            self._record_sample(r, ep, utc)
        else:
            self._record_event(r, ep, utc)

    def _record_sample(self, s: Sample, ep: Epoch, utc: float) -> None:
        seq = ep.sample_base + s.seq
        if seq >= self.next_sample:
            self.next_sample = seq + 1
        rec = self.bridge.recorder
        if rec.backlog >= self.bridge.max_backlog:
            self._drop("TELEMETRY", seq)
            return
        self._flush_dropped()
        flags = 1 if s.replayed else 0
        dev, ms = self.id, s.device_ms
        rows = rec.batch.samples
        for i in s.channels:
            rows.append(
                (
                    dev,
                    i["channel"],
                    seq,
                    ms,
                    utc,
                    i["pressure"],
                    i["raw"],
                    i["setpoint"],
                    i["valves"],
                    i["mode"],
                    i["alarms"],
                    flags,
                )
            )
        rec.poke(len(s.channels))

    def _record_event(self, e: Event, ep: Epoch, utc: float) -> None:
        seq = ep.event_base + e.seq
        if seq >= self.next_event:
            self.next_event = seq + 1
        rec = self.bridge.recorder
        rec.batch.events.append(
            (self.id, seq, e.device_ms, utc, e.kind, e.channel, e.code, e.a, e.b, e.c, None)
        )
        rec.poke()

    def _drop(self, stream: str, seq: int) -> None:
        """Memory is full of rows the store has refused: this one is not kept,
        and is recorded as a gap once the store takes writes again."""
        self.bridge.recorder.health.dropped_samples += 1
        r = self._dropping.get(stream)
        if r is not None and r[1] + 1 == seq:
            r[1] = seq
            return
        self._flush_dropped()
        self._dropping[stream] = [seq, seq]

    def _flush_dropped(self) -> None:
        if not self._dropping:
            return
        rec = self.bridge.recorder
        for stream, (a, b) in self._dropping.items():
            rec.batch.gaps.append((self.id, stream, a, b, time.time(), "store_unavailable"))
            rec.poke()
        self._dropping.clear()

    # -- views -----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        link = self.link
        hello = link.hello if link is not None else None
        return {
            "name": self.name,
            "url": self.url,
            "board": self.board,
            "state": self.state,
            "detail": self.detail,
            "connected": bool(link is not None and link.connected),
            "board_id": hello.board_id if hello else (self.epoch.board_id if self.epoch else None),
            "boot_id": hello.boot_id if hello else (self.epoch.boot_id if self.epoch else None),
            "firmware": hello.firmware if hello else None,
            "protocol": hello.protocol if hello else None,
            "telemetry_hz": hello.telemetry_hz if hello else None,
            "channels": sorted(self.channels),
        }

    def channel_view(self, number: int) -> dict[str, Any]:
        ch = self.channels[number]
        last = ch.last
        view: dict[str, Any] = {
            "device": self.name,
            "channel": number,
            "kind": ch.kind,
            "sensor": ch.sensor,
            "full_scale_mpa": mpa(ch.full_scale_pa),
            "link": self.state,
            "connected": bool(self.link is not None and self.link.connected),
            "utc": None,
            "seq": None,
            "device_time": None,
            "pressure_mpa": None,
            "setpoint_mpa": None,
            "mode": None,
            "valves": None,
            "alarms": [],
            "alarm_bits": 0,
            "limits": limits_view(ch.limits),
            "profile": profile_view(ch),
            "cycle": ch.cycle,
        }
        if last is not None:
            view.update(
                utc=last[4],
                seq=last[2],
                device_time=last[3] / 1000,
                pressure_mpa=last[5] / 1e6,
                setpoint_mpa=last[7] / 1e6,
                mode=mode_name(last[9]),
                valves={"fill": bool(last[8] & 1), "vent": bool(last[8] & 2)},
                alarms=list(alarm_names(last[10])),
                alarm_bits=last[10],
            )
        return view


def limits_view(limits: Mapping[str, int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in LIMIT_KEYS:
        unit = "_mpa_s" if name.startswith("ramp") else "_mpa"
        out[name + unit] = mpa(limits.get(name))
    return out


def step_view(s: Mapping[str, int]) -> dict[str, Any]:
    kind = STEP_NAMES.get(s["step"], str(s["step"]))
    out: dict[str, Any] = {"kind": kind}
    if kind in ("SET", "RAMP"):
        out["target_mpa"] = s["target"] / 1e6
        out["rate_mpa_s"] = s["rate"] / 1e6
    elif kind == "HOLD":
        out["duration_s"] = s["duration"] / 1000
    elif kind == "WAIT":
        out["wait_for"] = WAIT_NAMES.get(s["wait_for"], str(s["wait_for"]))
        out["timeout_s"] = s["duration"] / 1000
    return out


def profile_view(ch: ChannelState) -> dict[str, Any]:
    steps = ch.steps
    waiting = False
    if ch.running and steps is not None and ch.step is not None and ch.step < len(steps):
        s = steps[ch.step]
        waiting = s["step"] == STEP_KINDS["WAIT"] and s["wait_for"] == WAIT_KINDS["HOST"]
    return {
        "steps": None if steps is None else [step_view(s) for s in steps],
        "running": ch.running,
        "step": ch.step,
        "waiting_for_host": waiting,
    }


def sample_view(row: tuple, device: str | None = None) -> dict[str, Any]:
    """A stored sample (Batch.samples layout) as the API shows it."""
    out: dict[str, Any] = {}
    if device is not None:
        out["device"] = device
        out["channel"] = row[1]
    out.update(
        seq=row[2],
        utc=row[4],
        device_time=row[3] / 1000,
        pressure_mpa=row[5] / 1e6,
        setpoint_mpa=row[7] / 1e6,
        raw=row[6],
        fill=row[8] & 1,
        vent=row[8] >> 1 & 1,
        mode=mode_name(row[9]),
        alarms=list(alarm_names(row[10])),
        flags=row[11],
    )
    return out


# The stream carries thousands of samples a second: their JSON is written
# with one format per sample (the same text json.dumps(sample_view(...)) gives
# in meaning), with mode and alarm lists encoded once per value.
_SAMPLE_JSON = (
    '"seq":%d,"utc":%r,"device_time":%r,"pressure_mpa":%r,"setpoint_mpa":%r,"raw":%d,'
    '"fill":%d,"vent":%d,"mode":%s,"alarms":%s,"flags":%d}'
)


@functools.lru_cache(maxsize=256)
def _mode_json(mode: int) -> str:
    return json.dumps(mode_name(mode))


@functools.lru_cache(maxsize=1024)
def _alarms_json(bits: int) -> str:
    return json.dumps(list(alarm_names(bits)))


@functools.lru_cache(maxsize=4096)
def _sample_head(device: str | None, channel: int) -> str:
    if device is None:
        return "{"
    return '{"device":' + json.dumps(device) + f',"channel":{int(channel)},'


def sample_json(row: tuple, device: str | None = None) -> str:
    """sample_view(row, device) as JSON text, quickly."""
    if not (math.isfinite(row[4])):
        return json.dumps(sample_view(row, device), allow_nan=False)
    return _sample_head(device, row[1]) + _SAMPLE_JSON % (
        row[2],
        row[4],
        row[3] / 1000,
        row[5] / 1e6,
        row[7] / 1e6,
        row[6],
        row[8] & 1,
        row[8] >> 1 & 1,
        _mode_json(row[9]),
        _alarms_json(row[10]),
        row[11],
    )


def event_view(row: tuple | Mapping[str, Any], device: str | None = None) -> dict[str, Any]:
    """A stored event (Batch.events layout, or a Store.events dict)."""
    if isinstance(row, Mapping):
        r = row
        return {
            "device": r["device"],
            "seq": r["event_seq"],
            "utc": r["utc"],
            "device_time": r["device_time_ms"] / 1000,
            "kind": r["kind"],
            "channel": r["channel"],
            "code": r["code"],
            "a": r["a"],
            "b": r["b"],
            "c": r["c"],
            "text": r["text"],
        }
    return {
        "device": device,
        "seq": row[1],
        "utc": row[3],
        "device_time": row[2] / 1000,
        "kind": row[4],
        "channel": row[5],
        "code": row[6],
        "a": row[7],
        "b": row[8],
        "c": row[9],
        "text": row[10],
    }


# -- the bridge ------------------------------------------------------------------------


class Bridge:
    """Boards, the record and what the API needs, on the running loop.

    `start()` opens every link (resuming from the store) and the writer;
    `stop()` closes the links and commits what is pending.
    """

    def __init__(
        self,
        store: Store,
        devices: Mapping[str, str] | None = None,
        *,
        boards: Mapping[str, str] | None = None,
        discover: bool = False,
        clock: Callable[[], Any] = ClockSync,
        flush_delay_s: float = FLUSH_DELAY_S,
        flush_rows: int = FLUSH_ROWS,
        retry_s: tuple[float, float] = RETRY_S,
        max_backlog: int = MAX_BACKLOG,
        link_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.hub = Hub()
        self.recorder = Recorder(
            store, self._committed, delay_s=flush_delay_s, max_rows=flush_rows, retry_s=retry_s
        )
        self.max_backlog = max_backlog
        self.clock = clock
        self.discover = discover
        self.link_options = dict(link_options or {})
        self.boards: dict[str, Board] = {}
        self._by_id: dict[int, Board] = {}
        for name, url in (devices or {}).items():
            self.boards[name] = Board(self, name, url, (boards or {}).get(name))
        self.started_utc = time.time()
        self._keys = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False

    # -- life ------------------------------------------------------------------

    async def start(self) -> None:
        self.recorder.start()
        for board in list(self.boards.values()):
            await self._open(board)
        self._running = True
        self.spawn(self._housekeeping(), "housekeeping")
        if self.discover:
            self.spawn(self._discovery(), "USB discovery")

    async def _open(self, board: Board) -> None:
        resume = await self.recorder.call(board.load, self.store)
        self._by_id[board.id] = board
        if resume is not None:
            log.info(
                "%s: resuming boot %d from sample %d, event %d",
                board.name,
                resume.boot_id,
                resume.sample_next,
                resume.event_next,
            )
        board.link = Link(
            board.name,
            board.url,
            on_sample=board.on_sample,
            on_event=board.on_event,
            on_gap=board.on_gap,
            on_state=board.on_state,
            clock=self.clock,
            resume=resume,
            **self.link_options,
        )
        board.link.start()

    async def add_device(self, name: str, url: str, board: str | None = None) -> Board:
        """Adds a board while running (USB discovery)."""
        b = self.boards[name] = Board(self, name, url, board)
        await self._open(b)
        return b

    async def stop(self) -> None:
        self._running = False
        for t in list(self._tasks):
            t.cancel()
        for board in self.boards.values():
            if board.link is not None:
                await board.link.close()
            board.resolve_held(now=math.inf)  # what waited for a clock is kept, estimated
        await self.recorder.close()

    def spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=what)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %r", what, t.exception())

        task.add_done_callback(done)
        return task

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            for board in self.boards.values():
                board.resolve_held()

    async def _discovery(self) -> None:
        while True:
            try:
                found = await asyncio.get_running_loop().run_in_executor(None, discover_boards)
            except Exception as e:
                log.warning("USB discovery failed: %s", e)
                found = {}
            for name, (url, board) in found.items():
                known = self.boards.get(name)
                if known is None:
                    log.info("found %s (%s) on %s", name, board, url)
                    await self.add_device(name, url, board)
                elif known.url != url and known.link is not None:
                    # re-enumerated under another path: the next reconnect uses it
                    log.info("%s moved from %s to %s", name, known.url, url)
                    known.url = known.link.url = url
            await asyncio.sleep(RESCAN_S)

    def _committed(self, batch: Batch, written: Written) -> None:
        """After a commit, on the loop: live state and the stream see it now."""
        by_id = self._by_id
        groups: dict[tuple[str, int], list[str]] = {}
        want_stream = bool(self.hub.subscribers)
        for r in batch.samples:
            board = by_id.get(r[0])
            if board is None:
                continue
            ch = board.channels.get(r[1])
            if ch is not None and (ch.last is None or r[2] >= ch.last[2]):
                ch.last = r
            if want_stream:
                key = (board.name, r[1])
                g = groups.get(key)
                if g is None:
                    g = groups[key] = []
                g.append(sample_json(r, board.name))
        if groups:
            self.hub.publish_samples(groups)
        if want_stream:
            for r in batch.events:
                board = by_id.get(r[0])
                if board is not None:
                    self.hub.publish("event", event_view(event_with_text(r), board.name))
            for g in written.gaps:
                board = by_id.get(g["device_id"])
                if board is not None:
                    self.hub.publish(
                        "gap",
                        {
                            "device": board.name,
                            "stream": g["stream"],
                            "first_seq": g["first_seq"],
                            "last_seq": g["last_seq"],
                            "reason": g["reason"],
                            "utc": g["detected_utc"],
                        },
                    )

    # -- lookups ----------------------------------------------------------------

    def board(self, device: str) -> Board:
        b = self.boards.get(device)
        if b is None:
            raise Rejected(
                "unknown_device",
                f"no device named {device!r} (devices: {', '.join(sorted(self.boards)) or 'none'})",
                device=device,
                known=sorted(self.boards),
            )
        return b

    def channel(self, device: str, channel: int) -> tuple[Board, ChannelState]:
        b = self.board(device)
        ch = b.channels.get(channel)
        if ch is None:
            raise Rejected(
                "unknown_channel",
                f"device {device!r} has no channel {channel} "
                f"(channels: {', '.join(map(str, sorted(b.channels))) or 'none known yet'})",
                device=device,
                channel=channel,
                known=sorted(b.channels),
            )
        return b, ch

    def devices(self) -> list[dict[str, Any]]:
        return [self.boards[n].describe() for n in sorted(self.boards)]

    def channel_state(self, device: str, channel: int) -> dict[str, Any]:
        b, _ = self.channel(device, channel)
        return b.channel_view(channel)

    def status(self) -> dict[str, Any]:
        links = {}
        for name, b in sorted(self.boards.items()):
            link = b.link
            clock = link.clock if link is not None else None
            err = getattr(clock, "error_s", math.inf)
            links[name] = {
                **b.describe(),
                "epoch": None if b.epoch is None else b.epoch.number,
                "held_for_clock": len(b.held),
                "limits_read": b.limits_read,
                "clock": {
                    "ready": bool(getattr(clock, "ready", False)),
                    "error_ms": err * 1000 if math.isfinite(err) else None,
                    "drift_ppm": getattr(clock, "drift_ppm", None)
                    if getattr(clock, "ready", False)
                    else None,
                },
                "stats": link.stats.as_dict() if link is not None else {},
            }
        return {
            "version": __version__,
            "started_utc": self.started_utc,
            "uptime_s": time.time() - self.started_utc,
            "ok": self.recorder.health.ok,
            "links": links,
            "store": {
                "path": str(self.store.path),
                "sync": self.store.sync,
                "pending_rows": self.recorder.backlog,
                **self.recorder.health.as_dict(),
            },
            "stream": {"subscribers": len(self.hub.subscribers)},
            # the bridge process's own CPU use, for `isopress bench bridge` and operators
            "process": {"pid": os.getpid(), "cpu_s": time.process_time()},
        }

    # -- commands -----------------------------------------------------------------

    async def command(
        self,
        board: Board,
        message: str,
        fields: dict[str, Any],
        client: str,
        channel: int | None = None,
    ) -> Ack:
        """Sends a command, logs it and its answer in the record, and raises
        Rejected for anything but OK (the board's NACK mapped, with its value)."""
        link = board.link
        if link is None or not link.connected:
            raise Rejected(
                "not_connected",
                f"{board.name} is not connected ({board.state}"
                f"{': ' + board.detail if board.detail else ''}); {message} not sent",
                device=board.name,
                state=board.state,
            )
        key = next(self._keys)
        rec = self.recorder
        rec.batch.commands.append(
            (key, time.time(), client, board.id, channel, message, fields, None)
        )
        rec.poke()
        try:
            ack = await asyncio.wait_for(
                link.send(message, fields, client, check=False), COMMAND_TIMEOUT_S
            )
        except NotConnected as e:
            self._result(key, "NOT_SENT", None, None)
            raise Rejected("not_connected", str(e), device=board.name) from None
        except LinkDown as e:
            self._result(key, "LINK_DOWN", None, None)
            raise Rejected(
                "link_down",
                f"{e}; it may or may not have been done: commands set states, so "
                "sending it again is safe",
                device=board.name,
            ) from None
        except TimeoutError:
            self._result(key, "TIMEOUT", None, None)
            raise Rejected(
                "timeout", f"{board.name}: no answer to {message} in {COMMAND_TIMEOUT_S:g} s"
            ) from None
        self._result(key, ack.result, ack.seq, ack.value)
        self.hub.publish(
            "command",
            {
                "device": board.name,
                "channel": channel,
                "message": message,
                "client": client,
                "result": ack.result,
                "value": ack.value,
                "utc": time.time(),
            },
        )
        if not ack.ok:
            code = NACK_CODES.get(ack.result, "board_error")
            raise Rejected(
                code,
                f"{board.name}: {message} refused by the board: {ack.result}",
                result=ack.result,
                value=ack.value,
                source="board",
            )
        return ack

    def _result(self, key: int, result: str, seq: int | None, value: int | None) -> None:
        self.recorder.batch.results.append((key, result, seq, time.time(), value))
        self.recorder.poke()

    def _regulated(self, b: Board, ch: ChannelState, what: str) -> None:
        if ch.kind == "MONITOR":
            raise Rejected(
                "not_supported",
                f"{b.name} channel {ch.number} is a monitor channel (no valves): it cannot {what}",
                kind=ch.kind,
            )

    def _pressure(self, b: Board, ch: ChannelState, field: str, value: float) -> int:
        pa = round(value * 1e6)
        if pa < 0:
            raise Rejected(
                "out_of_range",
                f"{field} {value} MPa is below 0",
                field=field,
                limit=0.0,
                unit="MPa",
                source="host",
            )
        limit = ch.limits.get("max_working")
        name = "max_working"
        if limit is None and ch.full_scale_pa:
            limit, name = ch.full_scale_pa, "full_scale"
        if limit is not None and pa > limit:
            raise Rejected(
                "out_of_range",
                f"{field} {value:g} MPa is above {b.name} channel {ch.number}'s "
                f"{name.replace('_', ' ')} of {limit / 1e6:g} MPa",
                field=field,
                limit=limit / 1e6,
                limit_name=name,
                unit="MPa",
                source="host",
            )
        return pa

    async def set_setpoint(
        self, device: str, channel: int, pressure_mpa: float, rate_mpa_s: float | None, client: str
    ) -> dict[str, Any]:
        b, ch = self.channel(device, channel)
        self._regulated(b, ch, "take a setpoint")
        pa = self._pressure(b, ch, "pressure_mpa", pressure_mpa)
        rate = 0 if rate_mpa_s is None else _rate("rate_mpa_s", rate_mpa_s)
        fastest = max(ch.limits.get("ramp_up", 0), ch.limits.get("ramp_down", 0))
        if rate and fastest and rate > fastest:
            raise Rejected(
                "out_of_range",
                f"rate_mpa_s {rate_mpa_s:g} is above the channel's ramp limits "
                f"({fastest / 1e6:g} MPa/s)",
                field="rate_mpa_s",
                limit=fastest / 1e6,
                unit="MPa/s",
                source="host",
            )
        fields = {"channel": channel, "pressure": pa, "rate": rate}
        try:
            ack = await self.command(b, "SET_SETPOINT", fields, client, channel)
        except Rejected as e:
            if e.code == "out_of_range":
                # the board names the limit, not the field; it checks the
                # pressure against max_working before the rate against a ramp
                value = e.detail["value"]
                if rate == 0 or (pa > value) != (rate > value):
                    over_pressure = pa > value or rate == 0
                else:  # both above the value: was the pressure within max_working?
                    known = ch.limits.get("max_working")
                    over_pressure = known is None or pa > known
                e.detail.update(
                    field="pressure_mpa" if over_pressure else "rate_mpa_s",
                    limit=value / 1e6,
                    unit="MPa" if over_pressure else "MPa/s",
                )
                e.message += f" (limit {value / 1e6:g} {e.detail['unit']})"
            elif e.code == "bad_state":
                e.message += (
                    ": a profile runs on this channel (stop it first), or the channel "
                    "has no measurement yet"
                )
            raise
        return {
            "ok": True,
            "result": ack.result,
            "pressure_mpa": pa / 1e6,
            "rate_mpa_s": rate / 1e6,
        }

    async def set_limits(
        self, device: str, channel: int, given: Mapping[str, float], client: str
    ) -> dict[str, Any]:
        """`given`: some of limits_view's keys (MPa, MPa/s); the rest as the board has them."""
        b, ch = self.channel(device, channel)
        values: dict[str, int] = {}
        for name in LIMIT_KEYS:
            key = name + ("_mpa_s" if name.startswith("ramp") else "_mpa")
            if key in given:
                v = round(given[key] * 1e6)
                lo = CONFIG_KEYS[name].lo or 0
                if v < lo or v > I32:
                    raise Rejected(
                        "out_of_range",
                        f"{key} {given[key]} is outside {lo / 1e6:g} to {I32 / 1e6:g}",
                        field=key,
                        limit=lo / 1e6 if v < lo else I32 / 1e6,
                        source="host",
                    )
                values[name] = v
            elif name in ch.limits:
                values[name] = ch.limits[name]
            else:
                raise Rejected(
                    "bad_request",
                    f"{key} is needed: the bridge has not read this channel's present "
                    "limits, so give all six",
                    field=key,
                    problem="missing",
                )
        for low, high in (("trip_reset", "trip"), ("max_working", "trip")):
            if values[low] >= values[high]:
                raise Rejected(
                    "out_of_range",
                    f"{low} ({values[low] / 1e6:g} MPa) must be below {high} "
                    f"({values[high] / 1e6:g} MPa)",
                    field=low + "_mpa",
                    limit=values[high] / 1e6,
                    unit="MPa",
                    source="host",
                )
        if values["min_alarm"] and values["min_alarm"] >= values["max_working"]:
            raise Rejected(
                "out_of_range",
                f"min_alarm ({values['min_alarm'] / 1e6:g} MPa) must be below max_working "
                f"({values['max_working'] / 1e6:g} MPa)",
                field="min_alarm_mpa",
                limit=values["max_working"] / 1e6,
                unit="MPa",
                source="host",
            )
        await self.command(b, "SET_LIMITS", {"channel": channel, **values}, client, channel)
        ch.limits.update(values)
        return {"ok": True, "limits": limits_view(ch.limits)}

    def limits(self, device: str, channel: int) -> dict[str, Any]:
        b, ch = self.channel(device, channel)
        return {"device": b.name, "channel": channel, **limits_view(ch.limits)}

    async def load_profile(
        self, device: str, channel: int, steps: list[dict[str, Any]], client: str
    ) -> dict[str, Any]:
        """`steps`: dicts with kind SET|RAMP|HOLD|WAIT and their fields in MPa, MPa/s, s."""
        b, ch = self.channel(device, channel)
        self._regulated(b, ch, "run a profile")
        if not 1 <= len(steps) <= MAX_STEPS:
            raise Rejected(
                "bad_request",
                f"a profile has 1 to {MAX_STEPS} steps, not {len(steps)}",
                field="steps",
                problem="count",
            )
        items = []
        for i, s in enumerate(steps):
            where = f"steps[{i}]"
            kind = s["kind"]
            item = {"step": STEP_KINDS[kind], "wait_for": 0, "target": 0, "rate": 0, "duration": 0}
            if kind in ("SET", "RAMP"):
                item["target"] = self._pressure(b, ch, where + ".target_mpa", s["target_mpa"])
                item["rate"] = _rate(where + ".rate_mpa_s", s.get("rate_mpa_s") or 0.0)
            elif kind == "HOLD":
                item["duration"] = _duration(where + ".duration_s", s["duration_s"])
            else:
                item["wait_for"] = WAIT_KINDS[s.get("wait_for", "HOST")]
                item["duration"] = _duration(where + ".timeout_s", s.get("timeout_s") or 0.0)
            items.append(item)
        try:
            await self.command(
                b, "PROFILE_LOAD", {"channel": channel, "items": items}, client, channel
            )
        except Rejected as e:
            if e.code == "bad_profile":
                e.detail["step"] = e.detail["value"]
                e.message += f" at step {e.detail['value']}"
            elif e.code == "bad_state":
                e.message += ": a profile runs on this channel; stop it first"
            raise
        ch.steps = items
        ch.running, ch.step = False, None
        return {"ok": True, "profile": profile_view(ch)}

    def profile(self, device: str, channel: int) -> dict[str, Any]:
        b, ch = self.channel(device, channel)
        return {"device": b.name, "channel": channel, **profile_view(ch)}

    async def start_profile(
        self, device: str, channel: int, from_step: int, client: str
    ) -> dict[str, Any]:
        b, ch = self.channel(device, channel)
        self._regulated(b, ch, "run a profile")
        if ch.steps is not None and not 0 <= from_step < len(ch.steps):
            raise Rejected(
                "out_of_range",
                f"from_step {from_step}: the profile has steps 0 to {len(ch.steps) - 1}",
                field="from_step",
                limit=len(ch.steps) - 1,
                source="host",
            )
        try:
            await self.command(
                b, "PROFILE_START", {"channel": channel, "from_step": from_step}, client, channel
            )
        except Rejected as e:
            if e.code == "bad_state":
                e.message += ": no profile is loaded, or one is already running"
            raise
        return {"ok": True, "profile": profile_view(ch)}

    async def stop_profile(self, device: str, channel: int, client: str) -> dict[str, Any]:
        b, ch = self.channel(device, channel)
        await self.command(b, "PROFILE_STOP", {"channel": channel}, client, channel)
        ch.running, ch.step = False, None
        return {"ok": True, "profile": profile_view(ch)}

    async def advance_profile(
        self, device: str, channel: int, from_step: int | None, cycle: int, client: str
    ) -> dict[str, Any]:
        """PROFILE_ADVANCE from `from_step`, or from the step the profile is in."""
        b, ch = self.channel(device, channel)
        step = ch.step if from_step is None else from_step
        if step is None:
            raise Rejected(
                "bad_state",
                f"{b.name} channel {channel}: no profile is running, so none waits for the host",
                profile=profile_view(ch),
            )
        try:
            await self.command(
                b,
                "PROFILE_ADVANCE",
                {"channel": channel, "from_step": step, "cycle": cycle},
                client,
                channel,
            )
        except Rejected as e:
            if e.code == "bad_state":
                e.message = (
                    f"{b.name} channel {channel}: the profile is not waiting for the host "
                    f"at step {step} (the board answered BAD_STATE); nothing changed"
                )
                e.detail["from_step"] = step
            raise
        return {"ok": True, "from_step": step}

    async def cycler_event(
        self,
        device: str,
        channel: int,
        kind: str,
        cycle: int | None,
        advance: bool | None,
        client: str,
    ) -> dict[str, Any]:
        """Records what the cycler reported, then (for cycle_end, unless told
        otherwise) advances a profile waiting for the host. The record is kept
        whether or not the profile could advance: it is what the cycler saw."""
        b, ch = self.channel(device, channel)
        now = time.time()
        rec = self.recorder
        rec.batch.cycler_events.append((b.id, channel, now, kind, cycle))
        rec.poke()
        if cycle is not None:
            ch.cycle = cycle
        self.hub.publish(
            "cycler_event",
            {"device": b.name, "channel": channel, "kind": kind, "cycle": cycle, "utc": now},
        )
        out: dict[str, Any] = {"ok": True, "recorded": True, "advanced": False}
        if advance is None:
            advance = kind == "cycle_end"
        if advance:
            try:
                r = await self.advance_profile(device, channel, None, cycle or 0, client)
            except Rejected as e:
                e.detail["recorded"] = True
                raise
            out.update(advanced=True, from_step=r["from_step"])
        return out

    async def ack_alarms(
        self, device: str, channel: int, names: list[str], client: str
    ) -> dict[str, Any]:
        b, _ = self.channel(device, channel)
        mask = 0
        for n in names:
            mask |= 1 << ALARM_NUMBERS[n]
        try:
            await self.command(
                b, "ACK_ALARM", {"channel": channel, "alarms": mask}, client, channel
            )
        except Rejected as e:
            if e.code == "bad_state":
                left = list(alarm_names(e.detail["value"]))
                e.detail["still_active"] = left
                e.message = (
                    f"{b.name} channel {channel}: {', '.join(left)} not cleared: "
                    "the cause has not gone; the others were cleared"
                )
            raise
        return {"ok": True, "cleared": names}

    async def vent(
        self, device: str, channel: int, floor_mpa: float, client: str
    ) -> dict[str, Any]:
        b, ch = self.channel(device, channel)
        self._regulated(b, ch, "vent")
        floor = self._pressure(b, ch, "floor_mpa", floor_mpa)
        await self.command(b, "VENT", {"channel": channel, "floor": floor}, client, channel)
        return {"ok": True, "floor_mpa": floor / 1e6}

    async def isolate(self, device: str, channel: int, client: str) -> dict[str, Any]:
        b, ch = self.channel(device, channel)
        self._regulated(b, ch, "isolate")
        await self.command(b, "ISOLATE", {"channel": channel}, client, channel)
        return {"ok": True}

    def config_key(self, key: str, channel: int) -> ConfigKey:
        k = CONFIG_KEYS.get(key)
        if k is None and key.isdigit():
            k = CONFIG_BY_NUMBER.get(int(key))
        scope = "board" if channel == 0 else "channel"
        if k is None or k.scope != scope:
            known = sorted(n for n, c in CONFIG_KEYS.items() if c.scope == scope)
            raise Rejected(
                "unknown_key",
                f"no {scope} config key {key!r}; {scope} keys: {', '.join(known)}",
                key=key,
                known=known,
            )
        return k

    def _config_target(self, device: str, channel: int) -> Board:
        if channel == 0:
            return self.board(device)
        return self.channel(device, channel)[0]

    async def get_config(self, device: str, channel: int, key: str, client: str) -> dict[str, Any]:
        k = self.config_key(key, channel)
        b = self._config_target(device, channel)
        ack = await self.command(
            b, "GET_CONFIG", {"channel": channel, "key": k.number}, client, channel
        )
        if channel and k.number in LIMIT_NAMES:
            b.channel(channel).limits[LIMIT_NAMES[k.number]] = ack.value
        return config_view(k, ack.value)

    async def set_config(
        self,
        device: str,
        channel: int,
        key: str,
        value: float | None,
        raw: int | None,
        client: str,
    ) -> dict[str, Any]:
        k = self.config_key(key, channel)
        b = self._config_target(device, channel)
        if raw is None:
            assert value is not None
            raw = k.raw(value)
        field_name = "raw" if value is None else "value"
        bound = None
        if k.lo is not None and raw < k.lo:
            bound = k.lo
        elif k.hi is not None and raw > k.hi:
            bound = k.hi
        if bound is not None:
            raise Rejected(
                "out_of_range",
                f"{k.name} {k.value(raw)} {k.unit} is outside "
                f"{k.value(k.lo) if k.lo is not None else '-'} to "
                f"{k.value(k.hi) if k.hi is not None else '(board profile)'} {k.unit}",
                field=field_name,
                limit=k.value(bound),
                unit=k.unit,
                source="host",
            )
        if not -I32 - 1 <= raw <= I32:
            raise Rejected("out_of_range", f"{k.name}: {raw} does not fit", field=field_name)
        try:
            await self.command(
                b,
                "SET_CONFIG",
                {"channel": channel, "key": k.number, "value": raw},
                client,
                channel,
            )
        except Rejected as e:
            if e.code == "out_of_range":
                e.detail.update(field=field_name, limit=k.value(e.detail["value"]), unit=k.unit)
                e.message += f" (nearest accepted: {k.value(e.detail['value'])} {k.unit})"
            raise
        if channel and k.number in LIMIT_NAMES:
            b.channel(channel).limits[LIMIT_NAMES[k.number]] = raw
        return config_view(k, raw)

    # -- runs -------------------------------------------------------------------------

    async def start_run(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        device, channel = fields["device"], fields["channel"]
        if device in self.boards:
            self.channel(device, channel)
        return await self._store(self._add_run, dict(fields))

    def _add_run(self, f: dict[str, Any]) -> dict[str, Any]:
        self.store.check_channel(f["device"], f["channel"])
        run_id = self.store.add_run(started_utc=time.time(), **f)
        return self.store.run(run_id)

    async def stop_run(self, run_id: int) -> dict[str, Any]:
        def stop() -> dict[str, Any]:
            self.store.stop_run(run_id, time.time())
            return self.store.run(run_id)

        return await self._store(stop)

    async def _store(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A store call on the writer thread, StoreError as Rejected."""
        try:
            return await self.recorder.call(fn, *args)
        except StoreError as e:
            raise store_rejected(e) from None


def store_rejected(e: StoreError) -> Rejected:
    if e.reason == "unknown":
        text = str(e)
        if "no device named" in text:
            return Rejected("unknown_device", text)
        if "has no channel" in text:
            return Rejected("unknown_channel", text)
        return Rejected("not_found", text)
    if e.reason == "invalid":
        return Rejected("conflict", str(e))
    return Rejected("store_unavailable", str(e), reason=e.reason)


def config_view(k: ConfigKey, raw: int) -> dict[str, Any]:
    return {"key": k.name, "number": k.number, "value": k.value(raw), "unit": k.unit, "raw": raw}


def _wire(field: str, value: float, unit: str, scale: float, most: int) -> int:
    """`value` in `unit` as the wire's integer (value * scale), which must be 0 to `most`."""
    n = round(value * scale)
    if not 0 <= n <= most:
        raise Rejected(
            "out_of_range",
            f"{field} {value} {unit} is outside 0 to {most / scale:g} {unit}",
            field=field,
            limit=0.0 if n < 0 else most / scale,
            unit=unit,
            source="host",
        )
    return n


def _rate(field: str, mpa_s: float) -> int:
    return _wire(field, mpa_s, "MPa/s", 1e6, I32)


def _duration(field: str, seconds: float) -> int:
    return _wire(field, seconds, "s", 1000, U32)


# -- USB discovery -------------------------------------------------------------------


def usb_ids(boards_dir: Path = paths.BOARDS) -> dict[tuple[int, int], str]:
    """(vid, pid) -> board profile name, from the profiles' "usb" entries."""
    ids: dict[tuple[int, int], str] = {}
    for p in sorted(boards_dir.glob("*.json")):
        usb = json.loads(p.read_text()).get("usb")
        if usb:
            ids[(usb["vid"], usb["pid"])] = p.stem
    return ids


def discover_boards(
    ports: Iterator[Any] | None = None, boards_dir: Path = paths.BOARDS
) -> dict[str, tuple[str, str]]:
    """Boards on USB serial ports: name -> (port path, board profile name).

    A board is named `<profile>-<USB serial number>` (or the port's name when
    it has none), so the same board keeps its name, and its record, on any port.
    """
    if ports is None:
        from serial.tools import list_ports

        ports = iter(list_ports.comports())
    ids = usb_ids(boards_dir)
    found: dict[str, tuple[str, str]] = {}
    for p in ports:
        board = ids.get((p.vid, p.pid)) if p.vid is not None else None
        if board is None:
            continue
        tag = p.serial_number or Path(p.device).name
        found[f"{board.replace('_', '-')}-{tag}"] = (p.device, board)
    return found


# -- the command ---------------------------------------------------------------------


def _device_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=PATH, e.g. rig1=/dev/ttyACM0")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise argparse.ArgumentTypeError(
            f"{name!r}: device names use letters, digits, '-', '_' and '.' (they appear in URLs)"
        )
    return name, path


def _http_arg(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        n = int(port)
    except ValueError:
        n = -1
    if not sep or not host or not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT, e.g. {DEFAULT_HTTP}")
    return host.strip("[]"), n


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds `bridge` to the `isopress` command's subparsers."""
    p = subparsers.add_parser(
        "bridge",
        help="connect boards, record everything, serve the HTTP API",
        description=(
            "Connect to isopress boards, record every sample, event and command in "
            "a SQLite database, and serve the HTTP API (OpenAPI at /openapi.json). "
            "Without --device, boards are found by USB vendor/product id."
        ),
    )
    p.add_argument(
        "--device",
        action="append",
        type=_device_arg,
        default=[],
        metavar="NAME=PATH",
        help="a board: a name and its serial port or pyserial URL (repeat for more)",
    )
    p.add_argument("--db", required=True, type=Path, metavar="FILE", help="the record (SQLite)")
    p.add_argument(
        "--http",
        type=_http_arg,
        default=_http_arg(DEFAULT_HTTP),
        metavar="HOST:PORT",
        help=f"where the API listens ({DEFAULT_HTTP}; port 0 picks a free one)",
    )
    p.add_argument(
        "--token", help="bearer token for writes (default: $ISOPRESS_TOKEN, else a new one)"
    )
    p.add_argument(
        "--sync",
        choices=("full", "normal"),
        default="full",
        help="full: fsync every commit (default); normal: survive a crash of the bridge only",
    )
    p.add_argument(
        "--flush-ms",
        type=float,
        default=FLUSH_DELAY_S * 1000,
        metavar="MS",
        help=f"longest a sample waits for its commit ({FLUSH_DELAY_S * 1000:g})",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=run)
    return p


def token_from(args_token: str | None) -> tuple[str, bool]:
    """The write token, and whether it was made up now (so it must be shown)."""
    if args_token:
        return args_token, False
    env = os.environ.get("ISOPRESS_TOKEN")
    if env:
        return env, False
    return secrets.token_urlsafe(24), True


async def serve(
    store: Store,
    devices: Mapping[str, str],
    host: str,
    port: int,
    token: str,
    *,
    discover: bool = False,
    flush_delay_s: float = FLUSH_DELAY_S,
    ready: Callable[[Bridge, int], None] | None = None,
    stop: asyncio.Event | None = None,
    link_options: Mapping[str, Any] | None = None,
) -> None:
    """Runs a bridge and its API until `stop` is set (or the task is cancelled)."""
    from aiohttp import web

    from isopress import api

    bridge = Bridge(
        store,
        devices,
        discover=discover,
        flush_delay_s=flush_delay_s,
        link_options=link_options,
    )
    await bridge.start()
    # streams are ended before the server stops, so a short grace is enough
    runner = web.AppRunner(api.make_app(bridge, token), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addresses = runner.addresses
        bound = addresses[0][1] if addresses else port
        if ready is not None:
            ready(bridge, bound)
        await (stop or asyncio.Event()).wait()
    finally:
        bridge.hub.close()
        await runner.cleanup()
        await bridge.stop()


def run(args: argparse.Namespace) -> int:
    """`isopress bridge`: 0 after a clean stop (Ctrl-C, SIGTERM); 1 the store
    or the HTTP port could not be opened; 2 bad usage."""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    devices: dict[str, str] = {}
    for name, path in args.device:
        if name in devices:
            print(f"isopress bridge: device {name!r} given twice", file=sys.stderr)
            return 2
        devices[name] = path
    token, made = token_from(args.token)
    host, port = args.http
    try:
        store = Store(args.db, sync=args.sync)
    except StoreError as e:
        print(f"isopress bridge: {e}", file=sys.stderr)
        return 1

    def ready(bridge: Bridge, bound: int) -> None:
        where = f"[{host}]" if ":" in host else host
        print(f"isopress bridge: API on http://{where}:{bound}/api/v1 (OpenAPI /openapi.json)")
        if made:
            print(f"isopress bridge: write token (set ISOPRESS_TOKEN to choose one): {token}")
        if devices:
            for name, path in devices.items():
                print(f"isopress bridge: {name} on {path}")
        else:
            print(f"isopress bridge: looking for boards on USB every {RESCAN_S:g} s")
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(
            store,
            devices,
            host,
            port,
            token,
            discover=not devices,
            flush_delay_s=args.flush_ms / 1000,
            ready=ready,
            stop=stop,
        )

    try:
        asyncio.run(main())
    except OSError as e:
        print(f"isopress bridge: cannot serve on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isopress")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bridge", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    # Run as `python -m isopress.bridge`, this file is __main__; the API imports
    # isopress.bridge, so run that module's main for one set of classes.
    from isopress.bridge import main as _main

    sys.exit(_main())
