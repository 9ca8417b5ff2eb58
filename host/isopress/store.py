"""The bridge's durable record: SQLite in WAL mode.

One file holds everything the bridge saw and did: devices and their channels,
calibration snapshots, runs (which cell sat in which holder when), every
telemetry sample, every device event, every command sent and its answer, the
gaps that could not be recovered, and the cycler's events. docs/store.md
documents each table and column with its unit.

Durability: every write is one transaction. With the default `sync="full"`
SQLite fsyncs the write-ahead log before a commit returns, so a sample that
`add_samples` has accepted (and so any sample a reader can see, since readers
only see committed data) is on the disk and survives `kill -9` of the bridge
and a power cut. `sync="normal"` skips that fsync: committed samples still
survive `kill -9` (they are in the operating system's cache, which the kernel
writes out), but a power cut or kernel crash may lose the last commits; the
file stays consistent either way.

Errors: anything SQLite refuses (a second writer holding the lock, a full
disk, a read-only file, a value of the wrong type) raises `StoreError` with a
message that says what to check. The failed transaction is rolled back, so a
batch is stored whole or not at all, and the same `Store` works again once the
cause is gone.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from isopress.protocol import wire

SCHEMA_VERSION = 2
_IDLE_READERS = 4  # read connections kept open between reads
# Sequence numbers searched for holes when a bridge restarts: more than any
# board's ring holds (262,144 bytes of ring over 25-byte one-channel ticks is
# about 10,500), so every hole a replay could still fill is found.
RESUME_WINDOW = 20_000

# Columns of a sample as add_samples takes them and samples() returns them
# (plus the derived fill and vent bits and the frame's flags on the way out).
_SAMPLE_HEAD = (
    "device",
    "channel",
    "seq",
    "device_time_ms",
    "utc",
    "pressure_pa",
    "raw",
    "setpoint_pa",
    "valves",
)
SAMPLE_FIELDS = (*_SAMPLE_HEAD, "mode", "alarms")
SAMPLE_COLUMNS = (*_SAMPLE_HEAD, "fill", "vent", "mode", "alarms", "flags")
EVENT_FIELDS = ("device", "event_seq", "device_time_ms", "utc", "kind", "channel", "code")

STREAMS: dict[int, str] = dict(wire.STREAMS)
EVENT_KINDS: dict[int, str] = dict(wire.EVENTS)
ALARM_BITS: dict[int, str] = dict(wire.ALARMS)
CHANNEL_KINDS: dict[int, str] = dict(wire.CHANNEL_KINDS)
SENSORS: dict[int, str] = dict(wire.SENSORS)
RESULTS: dict[int, str] = dict(wire.RESULTS)

# Each migration is a list of statements run in one transaction; the version
# table records which ran. A new schema version appends an entry, never edits
# an old one, so any older file can be brought forward.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "initial schema",
        (
            """CREATE TABLE devices (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE CHECK (name <> ''),
                board TEXT NOT NULL DEFAULT '',
                board_id TEXT NOT NULL DEFAULT '',
                fw_version TEXT NOT NULL DEFAULT '',
                protocol INTEGER,
                schema_hash INTEGER,
                boot_id INTEGER,
                config_crc INTEGER,
                telemetry_hz INTEGER,
                first_seen_utc REAL NOT NULL,
                last_seen_utc REAL NOT NULL
            ) STRICT""",
            """CREATE TABLE channels (
                device INTEGER NOT NULL REFERENCES devices(id),
                channel INTEGER NOT NULL CHECK (channel BETWEEN 1 AND 255),
                kind TEXT NOT NULL,
                sensor TEXT NOT NULL,
                full_scale_pa INTEGER NOT NULL,
                updated_utc REAL NOT NULL,
                PRIMARY KEY (device, channel)
            ) STRICT, WITHOUT ROWID""",
            """CREATE TABLE calibration_snapshots (
                id INTEGER PRIMARY KEY,
                device INTEGER NOT NULL REFERENCES devices(id),
                channel INTEGER NOT NULL CHECK (channel BETWEEN 1 AND 255),
                utc REAL NOT NULL,
                config_crc INTEGER NOT NULL CHECK (config_crc BETWEEN 0 AND 65535),
                calibration TEXT NOT NULL CHECK (json_valid(calibration))
            ) STRICT""",
            """CREATE TABLE runs (
                id INTEGER PRIMARY KEY,
                cell_id TEXT NOT NULL CHECK (cell_id <> ''),
                holder TEXT NOT NULL DEFAULT '',
                cycler TEXT NOT NULL DEFAULT '',
                cycler_channel TEXT NOT NULL DEFAULT '',
                operator TEXT NOT NULL DEFAULT '',
                notes TEXT NOT NULL DEFAULT '',
                started_utc REAL NOT NULL,
                stopped_utc REAL CHECK (stopped_utc IS NULL OR stopped_utc >= started_utc),
                device INTEGER NOT NULL REFERENCES devices(id),
                channel INTEGER NOT NULL CHECK (channel BETWEEN 1 AND 255)
            ) STRICT""",
            """CREATE TABLE samples (
                device INTEGER NOT NULL REFERENCES devices(id),
                channel INTEGER NOT NULL CHECK (channel BETWEEN 1 AND 255),
                seq INTEGER NOT NULL,
                device_time_ms INTEGER NOT NULL,
                utc REAL NOT NULL,
                pressure_pa INTEGER NOT NULL,
                raw INTEGER NOT NULL,
                setpoint_pa INTEGER NOT NULL,
                valves INTEGER NOT NULL CHECK (valves BETWEEN 0 AND 255),
                fill INTEGER GENERATED ALWAYS AS (valves & 1) VIRTUAL,
                vent INTEGER GENERATED ALWAYS AS ((valves >> 1) & 1) VIRTUAL,
                mode INTEGER NOT NULL CHECK (mode BETWEEN 0 AND 255),
                alarms INTEGER NOT NULL CHECK (alarms BETWEEN 0 AND 65535),
                flags INTEGER NOT NULL DEFAULT 0 CHECK (flags BETWEEN 0 AND 255),
                PRIMARY KEY (device, channel, seq)
            ) STRICT, WITHOUT ROWID""",
            # Time-range reads and exports walk this index in (utc, seq)
            # order, so they stream without a sort however long the range.
            "CREATE INDEX samples_by_time ON samples (device, channel, utc)",
            """CREATE TABLE events (
                device INTEGER NOT NULL REFERENCES devices(id),
                event_seq INTEGER NOT NULL,
                device_time_ms INTEGER NOT NULL,
                utc REAL NOT NULL,
                kind TEXT NOT NULL,
                channel INTEGER NOT NULL CHECK (channel BETWEEN 0 AND 255),
                code INTEGER NOT NULL,
                a INTEGER NOT NULL,
                b INTEGER NOT NULL,
                c INTEGER NOT NULL,
                text TEXT NOT NULL,
                PRIMARY KEY (device, event_seq)
            ) STRICT, WITHOUT ROWID""",
            "CREATE INDEX events_by_time ON events (utc)",
            """CREATE TABLE commands (
                id INTEGER PRIMARY KEY,
                utc REAL NOT NULL,
                client TEXT NOT NULL,
                device INTEGER NOT NULL REFERENCES devices(id),
                channel INTEGER CHECK (channel IS NULL OR channel BETWEEN 0 AND 255),
                message TEXT NOT NULL,
                args TEXT NOT NULL CHECK (json_valid(args)),
                seq INTEGER CHECK (seq IS NULL OR seq BETWEEN 0 AND 65535),
                result TEXT,
                result_utc REAL
            ) STRICT""",
            "CREATE INDEX commands_by_time ON commands (utc)",
            """CREATE TABLE gaps (
                id INTEGER PRIMARY KEY,
                device INTEGER NOT NULL REFERENCES devices(id),
                stream TEXT NOT NULL CHECK (stream IN ('TELEMETRY', 'EVENT')),
                first_seq INTEGER NOT NULL,
                last_seq INTEGER NOT NULL,
                detected_utc REAL NOT NULL,
                reason TEXT NOT NULL,
                CHECK (last_seq >= first_seq)
            ) STRICT""",
            """CREATE TABLE cycler_events (
                id INTEGER PRIMARY KEY,
                device INTEGER NOT NULL REFERENCES devices(id),
                channel INTEGER NOT NULL CHECK (channel BETWEEN 1 AND 255),
                utc REAL NOT NULL,
                kind TEXT NOT NULL CHECK (kind <> ''),
                cycle INTEGER CHECK (cycle IS NULL OR cycle >= 0)
            ) STRICT""",
            "CREATE INDEX cycler_events_by_time ON cycler_events (device, channel, utc)",
        ),
    ),
    (
        2,
        "boot epochs (samples and events numbered per device across board resets), "
        "gaps with an unknown end, ACK values of commands",
        (
            # One row per board boot the bridge saw: the stored seq of a sample
            # is sample_base + the device's sample_seq in that boot, so a reset
            # (sample_seq from 0 again) never collides with earlier rows.
            """CREATE TABLE boots (
                device INTEGER NOT NULL REFERENCES devices(id),
                epoch INTEGER NOT NULL CHECK (epoch >= 1),
                boot_id INTEGER NOT NULL CHECK (boot_id BETWEEN 0 AND 65535),
                board_id TEXT NOT NULL DEFAULT '',
                sample_base INTEGER NOT NULL CHECK (sample_base >= 0),
                event_base INTEGER NOT NULL CHECK (event_base >= 0),
                first_seen_utc REAL NOT NULL,
                PRIMARY KEY (device, epoch)
            ) STRICT, WITHOUT ROWID""",
            # Rows written before epochs existed were numbered from 0 by the
            # device: they are epoch 1 with bases 0.
            """INSERT INTO boots
                SELECT id, 1, coalesce(boot_id, 0) & 65535, board_id, 0, 0, first_seen_utc
                FROM devices d
                WHERE EXISTS (SELECT 1 FROM samples s WHERE s.device = d.id)
                   OR EXISTS (SELECT 1 FROM events e WHERE e.device = d.id)""",
            # last_seq NULL: the end is unknown (a board reset cut the stream
            # at a point the bridge never saw). SQLite cannot drop NOT NULL in
            # place, so the table is rebuilt.
            """CREATE TABLE gaps_v2 (
                id INTEGER PRIMARY KEY,
                device INTEGER NOT NULL REFERENCES devices(id),
                stream TEXT NOT NULL CHECK (stream IN ('TELEMETRY', 'EVENT')),
                first_seq INTEGER NOT NULL,
                last_seq INTEGER,
                detected_utc REAL NOT NULL,
                reason TEXT NOT NULL,
                CHECK (last_seq IS NULL OR last_seq >= first_seq)
            ) STRICT""",
            "INSERT INTO gaps_v2 SELECT id, device, stream, first_seq, last_seq, detected_utc, "
            "reason FROM gaps",
            "DROP TABLE gaps",
            "ALTER TABLE gaps_v2 RENAME TO gaps",
            "CREATE INDEX gaps_by_seq ON gaps (device, stream, first_seq)",
            "ALTER TABLE commands ADD COLUMN value INTEGER",
        ),
    ),
)


class StoreError(RuntimeError):
    """SQLite refused something; the message says what to check.

    `reason` is one of: "locked", "full", "readonly", "io", "open", "schema",
    "invalid" (bad input), "unknown" (no such device, channel or run), "closed",
    "other".
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _name(table: Mapping[int, str], value: int | str, what: str) -> str:
    """A wire vocabulary value as its name; unknown numbers stay numbers."""
    if isinstance(value, str):
        if value in table.values():
            return value
        raise StoreError("invalid", f"unknown {what} {value!r}: one of {sorted(table.values())}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreError("invalid", f"{what} must be a name or a number, not {value!r}")
    return table.get(value, str(value))


def _mpa(pa: int) -> str:
    text = f"{pa / 1e6:.6f}".rstrip("0").rstrip(".")
    return f"{text} MPa"


def _alarm(bit: int) -> str:
    return ALARM_BITS.get(bit, f"alarm bit {bit}")


_CONFIG_BAD = {1: "missing", 2: "CRC mismatch", 3: "unreadable", 4: "value out of range"}


def describe_event(kind: int | str, channel: int, code: int, a: int, b: int, c: int) -> str:
    """One line for a person, from PROTOCOL.md's table of event fields."""
    name = _name(EVENT_KINDS, kind, "event kind")
    where = f"ch {channel} " if channel else ""
    detail = {
        "BOOT": lambda: f"reset cause {code}, config CRC 0x{a & 0xFFFF:04X}, boot id {b}",
        "ALARM_RAISED": lambda: (
            f"{_alarm(code)} at {_mpa(a)}, "
            + (f"leak rate {b} Pa/s" if _alarm(code) == "LEAK" else f"threshold {_mpa(b)}")
        ),
        "ALARM_CLEARED": lambda: f"{_alarm(code)} at {_mpa(a)}",
        "TRIP": lambda: f"{_alarm(code)} at {_mpa(a)}, trip level {_mpa(b)}, after {c} ms",
        "EXCURSION": lambda: f"down to {_mpa(a)} under setpoint {_mpa(b)} for {c} ms",
        "CONFIG_CHANGED": lambda: f"key {code} = {a}, config CRC 0x{b & 0xFFFF:04X}",
        "CONFIG_BAD": lambda: _CONFIG_BAD.get(code, f"code {code}"),
        "HOST_SILENT": lambda: f"host silent for {a} ms",
        "HOST_BACK": lambda: f"host back after {a} ms",
        "SETPOINT": lambda: (
            f"{'profile' if code == 1 else 'host'} set {_mpa(a)} at {b / 1e6:g} MPa/s"
        ),
        "PROFILE_STEP": lambda: f"step {code}, target {_mpa(a)}" + (f", cycle {b}" if b else ""),
        "PROFILE_DONE": lambda: f"{code} steps run",
        "LEAK_RATE": lambda: f"{a} Pa/s at {_mpa(b)} over {c} ms",
        "ACTUATIONS": lambda: f"fill opened {a}x, vent opened {b}x in {c} ms",
        "CALIBRATION": lambda: f"point {code}: raw {a}, reference {b}e-6",
    }.get(name, lambda: f"code {code} a {a} b {b} c {c}")
    return f"{where}{name}: {detail()}"


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StoreError("invalid", f"{what} must be a finite number of seconds, not {value!r}")
    return float(value)


def _stream(stream: int | str) -> str:
    if isinstance(stream, str) and stream.upper() in STREAMS.values():
        return stream.upper()
    if isinstance(stream, int) and not isinstance(stream, bool) and stream in STREAMS:
        return STREAMS[stream]
    raise StoreError("invalid", f"unknown stream {stream!r}: one of {list(STREAMS.values())}")


class Store:
    """The record: one SQLite file, written by one bridge, read by many.

    Thread-safe: writes are serialised on one connection; reads borrow
    connections of their own, so a long read never holds up the writer (WAL).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        sync: str = "full",
        busy_timeout_s: float = 2.0,
        readonly: bool = False,
        max_bytes: int | None = None,
    ) -> None:
        if sync not in ("full", "normal"):
            raise StoreError("invalid", f"sync must be 'full' or 'normal', not {sync!r}")
        self.path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise StoreError("invalid", "the store needs a file path (readers open it again)")
        self.readonly = readonly
        self.sync = sync
        self.busy_timeout_s = busy_timeout_s
        self._max_bytes = max_bytes
        self._lock = threading.RLock()
        self._idle: list[sqlite3.Connection] = []  # pooled read connections
        self._closed = False
        if readonly and not self.path.exists():
            raise StoreError("open", f"no database at {self.path}: check the path")
        self._conn = self._connect(writer=not readonly)
        self._device_ids: dict[str, int] = {}
        if readonly:
            self._check_version(self._conn)
        else:
            self._migrate()
            if max_bytes is not None:
                self.set_max_bytes(max_bytes)
        self._load_devices()

    # -- connections and transactions ------------------------------------

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        target = f"file:{self.path}?mode={'rwc' if writer else 'ro'}"
        try:
            conn = sqlite3.connect(
                target,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout_s,
            )
        except sqlite3.Error as e:
            raise self._error(e, "opening the database") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if writer:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StoreError(
                        "open",
                        f"{self.path}: SQLite cannot use WAL mode here (got {mode!r}); "
                        "keep the database on a local disk, not a network share",
                    )
                conn.execute(f"PRAGMA synchronous = {self.sync.upper()}")
                # Keep a WAL that grew during a long export from staying large.
                conn.execute("PRAGMA journal_size_limit = 67108864")
        except sqlite3.Error as e:
            conn.close()
            raise self._error(e, "opening the database") from e
        except StoreError:
            conn.close()
            raise
        return conn

    def _error(self, e: sqlite3.Error, what: str) -> StoreError:
        text = str(e)
        low = text.lower()
        if "locked" in low or "busy" in low:
            return StoreError(
                "locked",
                f"{self.path} is locked by another writer (waited {self.busy_timeout_s:g} s) "
                f"while {what}: is a second bridge or another program writing to it? "
                "Stop it or give each bridge its own database; nothing was written.",
            )
        if "full" in low:
            cap = (
                f" or raise the store's size cap ({self._max_bytes} bytes)"
                if (self._max_bytes)
                else ""
            )
            return StoreError(
                "full",
                f"database or disk is full while {what} in {self.path}: free space on the "
                f"disk holding {self.path.parent}{cap}; nothing from this transaction was "
                "written, and the store takes writes again once there is room.",
            )
        if "readonly" in low or "read-only" in low:
            return StoreError(
                "readonly",
                f"{self.path} is read-only while {what}: check the permissions of the file "
                "and its directory (SQLite also writes -wal and -shm files beside it).",
            )
        if "unable to open" in low:
            return StoreError(
                "open",
                f"cannot open {self.path}: check that {self.path.parent} exists and is "
                "writable by this user.",
            )
        if "i/o" in low or "disk" in low or "malformed" in low or "not a database" in low:
            return StoreError(
                "io",
                f"{text} on {self.path} while {what}: check the disk and the file "
                "(is it an isopress database?).",
            )
        if isinstance(e, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            return StoreError("invalid", f"bad {what}: {text}; nothing was written.")
        return StoreError("other", f"{text} on {self.path} while {what}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("closed", f"the store for {self.path} is closed")

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it commits, or none of it."""
        self._check_open()
        if self.readonly:
            raise StoreError("readonly", f"{self.path} was opened read-only; cannot {what}")
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._error(e, what) from e
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                # SQLite rolls back by itself after some errors (full disk, I/O).
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._error(e, what) from e
                if isinstance(e, OverflowError):  # an int beyond SQLite's 64 bits
                    raise StoreError("invalid", f"bad {what}: {e}; nothing was written.") from e
                raise

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """Borrow a read connection: idle ones are pooled, so an API that runs
        each request on a new thread does not open a connection per request."""
        self._check_open()
        if self.readonly:
            with self._lock:
                yield self._conn
            return
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect(writer=False)
        try:
            yield conn
        finally:
            with self._lock:
                if self._closed or len(self._idle) >= _IDLE_READERS or conn.in_transaction:
                    conn.close()
                else:
                    self._idle.append(conn)

    def _read(self, sql: str, params: Sequence[Any] = (), what: str = "reading") -> list[tuple]:
        with self._reader() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise self._error(e, what) from e

    def _insert(self, sql: str, row: Sequence[Any], what: str) -> int:
        """Runs an INSERT ... RETURNING id in its own transaction; the new id."""
        with self._write(what) as conn:
            return conn.execute(sql, row).fetchone()[0]

    def _dicts(
        self,
        sql: str,
        params: Sequence[Any] = (),
        what: str = "reading",
        *,
        json_column: str | None = None,
    ) -> list[dict]:
        """Rows as dicts; `json_column` names a column stored as JSON text,
        returned decoded."""
        with self._reader() as conn:
            try:
                cur = conn.execute(sql, params)
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            except sqlite3.Error as e:
                raise self._error(e, what) from e
        if json_column is not None:
            for row in rows:
                row[json_column] = json.loads(row[json_column])
        return rows

    def _check_version(self, conn: sqlite3.Connection) -> int:
        try:
            have = conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
            ).fetchone()
            version = (
                conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
                if have
                else 0
            )
        except sqlite3.Error as e:
            raise self._error(e, "reading the schema version") from e
        if version > SCHEMA_VERSION:
            raise StoreError(
                "schema",
                f"{self.path} has schema version {version}, newer than this isopress knows "
                f"({SCHEMA_VERSION}): upgrade isopress to read it.",
            )
        if self.readonly and version == 0:
            raise StoreError("schema", f"{self.path} is not an isopress database (no schema)")
        return version

    def _migrate(self) -> None:
        with self._write("creating the schema") as conn:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_version (
                    version INTEGER PRIMARY KEY,
                    applied_utc REAL NOT NULL,
                    description TEXT NOT NULL
                ) STRICT"""
            )
            version = self._check_version(conn)
            for number, description, statements in MIGRATIONS:
                if number <= version:
                    continue
                for sql in statements:
                    conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?)",
                    (number, time.time(), description),
                )

    def schema_version(self) -> int:
        return self._read("SELECT max(version) FROM schema_version")[0][0]

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the database's size (None: no cap beyond the disk's).

        A write that would pass the cap fails like a full disk: `StoreError`
        with reason "full", nothing written.
        """
        self._check_open()
        with self._lock:
            page = self._conn.execute("PRAGMA page_size").fetchone()[0]
            pages = 4294967294 if max_bytes is None else max(1, max_bytes // page)
            self._conn.execute(f"PRAGMA max_page_count = {int(pages)}")
            self._max_bytes = max_bytes

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._idle:
                with suppress(sqlite3.Error):
                    conn.close()
            self._idle.clear()
            with suppress(sqlite3.Error):
                self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- devices and channels --------------------------------------------

    def _load_devices(self) -> None:
        rows = self._read("SELECT name, id FROM devices")
        self._device_ids = dict(rows)

    def _device_id(self, name: str) -> int:
        found = self._device_ids.get(name)
        if found is None:
            # Another process (the bridge) may have added it since we looked.
            self._load_devices()
            found = self._device_ids.get(name)
        if found is None:
            known = ", ".join(sorted(self._device_ids)) or "none yet"
            raise StoreError("unknown", f"no device named {name!r} in {self.path} (known: {known})")
        return found

    def _where(
        self,
        table: str,
        device: str | None = None,
        channel: int | None = None,
        since_utc: float | None = None,
        until_utc: float | None = None,
    ) -> tuple[str, list[Any]]:
        """' WHERE ...' (or '') that keeps `table`'s rows of `device` and
        `channel` with since_utc <= utc < until_utc (None: any), and its
        parameters. An unknown device raises before a bad time does."""
        where: list[str] = []
        params: list[Any] = []
        if device is not None:
            where.append(f"{table}.device = ?")
            params.append(self._device_id(device))
        if channel is not None:
            where.append(f"{table}.channel = ?")
            params.append(channel)
        if since_utc is not None:
            where.append(f"{table}.utc >= ?")
            params.append(_finite(since_utc, "since_utc"))
        if until_utc is not None:
            where.append(f"{table}.utc < ?")
            params.append(_finite(until_utc, "until_utc"))
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def upsert_device(
        self,
        name: str,
        *,
        utc: float,
        board: str | None = None,
        board_id: bytes | str | None = None,
        fw_version: str | None = None,
        protocol: int | None = None,
        schema_hash: int | None = None,
        boot_id: int | None = None,
        config_crc: int | None = None,
        telemetry_hz: int | None = None,
    ) -> int:
        """Record a device seen now (from its HELLO); None keeps what is stored."""
        if not isinstance(name, str) or not name:
            raise StoreError("invalid", f"device name must be a non-empty string, not {name!r}")
        utc = _finite(utc, "utc")
        if isinstance(board_id, bytes | bytearray):
            board_id = bytes(board_id).hex()
        with self._write(f"recording device {name!r}") as conn:
            conn.execute(
                _UPSERT_DEVICE,
                {
                    "name": name,
                    "board": board,
                    "board_id": board_id,
                    "fw_version": fw_version,
                    "protocol": protocol,
                    "schema_hash": schema_hash,
                    "boot_id": boot_id,
                    "config_crc": config_crc,
                    "telemetry_hz": telemetry_hz,
                    "utc": utc,
                },
            )
            device_id = conn.execute("SELECT id FROM devices WHERE name = ?", (name,)).fetchone()[0]
        self._device_ids[name] = device_id
        return device_id

    def devices(self) -> list[dict]:
        return self._dicts("SELECT * FROM devices ORDER BY name")

    def device(self, name: str) -> dict:
        rows = self._dicts("SELECT * FROM devices WHERE name = ?", (name,))
        if not rows:
            self._device_id(name)  # raises with the list of known names
        return rows[0]

    def upsert_channel(
        self,
        device: str,
        channel: int,
        *,
        kind: int | str,
        sensor: int | str,
        full_scale_pa: int,
        utc: float,
    ) -> None:
        """Record a channel as the device's HELLO describes it."""
        row = (
            self._device_id(device),
            channel,
            _name(CHANNEL_KINDS, kind, "channel kind"),
            _name(SENSORS, sensor, "sensor"),
            full_scale_pa,
            _finite(utc, "utc"),
        )
        with self._write(f"recording channel {device}/{channel}") as conn:
            conn.execute(_UPSERT_CHANNEL, row)

    def channels(self, device: str | None = None) -> list[dict]:
        sql = (
            "SELECT d.name AS device, c.channel, c.kind, c.sensor, c.full_scale_pa, "
            "c.updated_utc FROM channels c JOIN devices d ON d.id = c.device"
        )
        where, params = self._where("c", device)
        return self._dicts(sql + where + " ORDER BY d.name, c.channel", params)

    def sample_channels(self) -> list[tuple[str, int]]:
        """Every (device name, channel) described in `channels` or holding samples."""
        # Skip-scan the primary key: one index probe per channel, not a scan.
        sampled = self._read(
            """WITH RECURSIVE ch(device, c) AS (
                SELECT id, (SELECT min(channel) FROM samples WHERE device = devices.id)
                FROM devices
                UNION ALL
                SELECT device, (SELECT min(channel) FROM samples
                                WHERE device = ch.device AND channel > ch.c)
                FROM ch WHERE c IS NOT NULL)
            SELECT d.name, ch.c FROM ch JOIN devices d ON d.id = ch.device
            WHERE ch.c IS NOT NULL"""
        )
        described = self._read(
            "SELECT d.name, c.channel FROM channels c JOIN devices d ON d.id = c.device"
        )
        return sorted(set(sampled) | set(described))

    def check_channel(self, device: str, channel: int) -> None:
        """Raise StoreError("unknown") unless the channel is described or has samples."""
        device_id = self._device_id(device)
        found = self._read(
            "SELECT EXISTS (SELECT 1 FROM channels WHERE device = ?1 AND channel = ?2) "
            "OR EXISTS (SELECT 1 FROM samples WHERE device = ?1 AND channel = ?2)",
            (device_id, channel),
        )[0][0]
        if not found:
            have = [
                r[0]
                for r in self._read(
                    "SELECT channel FROM channels WHERE device = ? ORDER BY channel",
                    (device_id,),
                )
            ]
            raise StoreError(
                "unknown",
                f"device {device!r} has no channel {channel!r} in {self.path} "
                f"(channels: {', '.join(map(str, have)) or 'none described'})",
            )

    def add_calibration(
        self,
        device: str,
        channel: int,
        *,
        utc: float,
        config_crc: int,
        calibration: Mapping[str, Any],
    ) -> int:
        """Snapshot a channel's calibration (as JSON) with the config CRC it belongs to."""
        try:
            text = json.dumps(calibration, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise StoreError("invalid", f"calibration is not plain JSON: {e}") from e
        row = (self._device_id(device), channel, _finite(utc, "utc"), config_crc, text)
        return self._insert(
            "INSERT INTO calibration_snapshots (device, channel, utc, config_crc, "
            "calibration) VALUES (?, ?, ?, ?, ?) RETURNING id",
            row,
            "recording a calibration snapshot",
        )

    def calibrations(self, device: str, channel: int | None = None) -> list[dict]:
        sql = (
            "SELECT s.id, d.name AS device, s.channel, s.utc, s.config_crc, s.calibration "
            "FROM calibration_snapshots s JOIN devices d ON d.id = s.device"
        )
        where, params = self._where("s", device, channel)
        return self._dicts(sql + where + " ORDER BY s.utc, s.id", params, json_column="calibration")

    # -- runs ------------------------------------------------------------

    def add_run(
        self,
        *,
        cell_id: str,
        device: str,
        channel: int,
        started_utc: float,
        holder: str = "",
        cycler: str = "",
        cycler_channel: str = "",
        operator: str = "",
        notes: str = "",
    ) -> int:
        """Start a run: this cell in this holder on this device channel, from now."""
        row = (
            cell_id,
            holder,
            cycler,
            cycler_channel,
            operator,
            notes,
            _finite(started_utc, "started_utc"),
            self._device_id(device),
            channel,
        )
        return self._insert(
            "INSERT INTO runs (cell_id, holder, cycler, cycler_channel, operator, notes, "
            "started_utc, device, channel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            row,
            f"starting a run for cell {cell_id!r}",
        )

    def stop_run(self, run_id: int, stopped_utc: float) -> None:
        stopped = _finite(stopped_utc, "stopped_utc")
        with self._write(f"stopping run {run_id}") as conn:
            row = conn.execute(
                "SELECT started_utc, stopped_utc FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise StoreError("unknown", f"no run {run_id!r} in {self.path}")
            if row[1] is not None:
                raise StoreError("invalid", f"run {run_id} already stopped at {row[1]}")
            if stopped < row[0]:
                raise StoreError(
                    "invalid", f"run {run_id} cannot stop ({stopped}) before it started ({row[0]})"
                )
            conn.execute("UPDATE runs SET stopped_utc = ? WHERE id = ?", (stopped, run_id))

    _RUN_SQL = (
        "SELECT r.id, r.cell_id, r.holder, r.cycler, r.cycler_channel, r.operator, r.notes, "
        "r.started_utc, r.stopped_utc, d.name AS device, r.channel "
        "FROM runs r JOIN devices d ON d.id = r.device"
    )

    def run(self, run_id: int) -> dict:
        rows = self._dicts(self._RUN_SQL + " WHERE r.id = ?", (run_id,))
        if not rows:
            raise StoreError("unknown", f"no run {run_id!r} in {self.path}")
        return rows[0]

    def runs(self, device: str | None = None) -> list[dict]:
        where, params = self._where("r", device)
        return self._dicts(self._RUN_SQL + where + " ORDER BY r.started_utc, r.id", params)

    # -- samples ---------------------------------------------------------

    def add_samples(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store a batch of telemetry samples in one transaction.

        Each row is a mapping with SAMPLE_FIELDS (device by name, seq and
        device_time_ms as 64-bit extended counters, utc in seconds, pressures in
        Pa) and optionally `flags` (the frame's flags; bit 0 = replayed). A
        sample already stored (same device, channel, seq: a replay) is kept
        once. Returns how many rows were new. A bad row rejects the whole batch.
        """
        ids = self._device_ids
        params = []
        last_seen: dict[int, float] = {}
        for i, r in enumerate(rows):
            try:
                device_id = ids.get(r["device"]) or self._device_id(r["device"])
                utc = r["utc"]
                params.append(
                    (
                        device_id,
                        r["channel"],
                        r["seq"],
                        r["device_time_ms"],
                        utc,
                        r["pressure_pa"],
                        r["raw"],
                        r["setpoint_pa"],
                        r["valves"],
                        r["mode"],
                        r["alarms"],
                        r.get("flags", 0),
                    )
                )
            except KeyError as e:
                raise StoreError(
                    "invalid", f"sample row {i} has no {e.args[0]!r}; nothing was written"
                ) from None
            except (TypeError, AttributeError):
                raise StoreError(
                    "invalid", f"sample row {i} is not a mapping: {r!r}; nothing was written"
                ) from None
            except StoreError as e:
                raise StoreError(e.reason, f"sample row {i}: {e}; nothing was written") from None
            if isinstance(utc, float | int) and utc > last_seen.get(device_id, -math.inf):
                last_seen[device_id] = utc
        if not params:
            return 0
        with self._write(f"storing {len(params)} samples") as conn:
            before = conn.total_changes
            conn.executemany(_INSERT_SAMPLE, params)
            added = conn.total_changes - before
            conn.executemany(_SEEN_AT, [(u, d) for d, u in last_seen.items()])
        return added

    def _sample_query(
        self,
        device: str,
        channel: int,
        since_utc: float | None,
        until_utc: float | None,
        run: int | None,
        limit: int | None,
    ) -> tuple[str, list[Any]]:
        device_id = self._device_id(device)
        self.check_channel(device, channel)
        lo, hi = since_utc, until_utc
        if run is not None:
            r = self.run(run)
            if r["device"] != device or r["channel"] != channel:
                raise StoreError(
                    "invalid",
                    f"run {run} is on {r['device']} channel {r['channel']}, "
                    f"not {device} channel {channel}",
                )
            lo = r["started_utc"] if lo is None else max(lo, r["started_utc"])
            if r["stopped_utc"] is not None:
                hi = r["stopped_utc"] if hi is None else min(hi, r["stopped_utc"])
        sql = _SELECT_SAMPLES
        params: list[Any] = [device_id, channel, device]
        if lo is not None:
            sql += f" AND utc >= ?{len(params) + 1}"
            params.append(_finite(lo, "since_utc"))
        if hi is not None:
            sql += f" AND utc < ?{len(params) + 1}"
            params.append(_finite(hi, "until_utc"))
        sql += " ORDER BY utc, seq"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise StoreError("invalid", f"limit must be a count >= 0, not {limit!r}")
            sql += f" LIMIT {limit}"
        return sql, params

    def samples(
        self,
        device: str,
        channel: int,
        since_utc: float | None = None,
        until_utc: float | None = None,
        run: int | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Samples of one channel with since_utc <= utc < until_utc, in time order.

        `run` narrows the range to that run's start and stop (it must be on the
        same device and channel). Use `iter_samples` for long ranges.
        """
        sql, params = self._sample_query(device, channel, since_utc, until_utc, run, limit)
        return [
            dict(zip(SAMPLE_COLUMNS, row, strict=True))
            for row in self._read(sql, params, "reading samples")
        ]

    def sample_batches(
        self,
        device: str,
        channel: int,
        since_utc: float | None = None,
        until_utc: float | None = None,
        run: int | None = None,
        batch: int = 10_000,
    ) -> Iterator[list[tuple]]:
        """Like `samples`, as lists of tuples in SAMPLE_COLUMNS order, `batch` at a time.

        Reads on its own connection, in one snapshot, so the writer is never
        held up and a month of samples never sits in memory at once.
        """
        sql, params = self._sample_query(device, channel, since_utc, until_utc, run, None)
        return self._batches(sql, params, batch, "reading samples")

    def iter_samples(self, device: str, channel: int, **kw: Any) -> Iterator[dict]:
        for rows in self.sample_batches(device, channel, **kw):
            for row in rows:
                yield dict(zip(SAMPLE_COLUMNS, row, strict=True))

    def _batches(
        self, sql: str, params: Sequence[Any], batch: int, what: str
    ) -> Iterator[list[tuple]]:
        self._check_open()
        conn = self._connect(writer=False)
        try:
            cur = conn.execute(sql, params)
            while rows := cur.fetchmany(batch):
                yield rows
        except sqlite3.Error as e:
            raise self._error(e, what) from e
        finally:
            conn.close()

    def sample_count(self, device: str, channel: int) -> int:
        return self._read(
            "SELECT count(*) FROM samples WHERE device = ? AND channel = ?",
            (self._device_id(device), channel),
        )[0][0]

    def last_seq(self, device: str, stream: int | str) -> int | None:
        """The highest sequence number stored for a device's stream (None if none).

        After a restart the bridge asks the device to replay from here + 1.
        """
        device_id = self._device_id(device)
        if _stream(stream) == "EVENT":
            sql = "SELECT max(event_seq) FROM events WHERE device = ?1"
        else:
            # The primary key leads with (device, channel): find each channel
            # with an index probe and take its max seq, never a table scan.
            sql = """WITH RECURSIVE ch(c) AS (
                    SELECT min(channel) FROM samples WHERE device = ?1
                    UNION ALL
                    SELECT (SELECT min(channel) FROM samples WHERE device = ?1 AND channel > c)
                    FROM ch WHERE c IS NOT NULL)
                SELECT max((SELECT max(seq) FROM samples WHERE device = ?1 AND channel = c))
                FROM ch WHERE c IS NOT NULL"""
        return self._read(sql, (device_id,))[0][0]

    # -- events, commands, gaps, cycler events ---------------------------

    def add_events(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store device events in one transaction; a replayed event is kept once.

        Each row has EVENT_FIELDS, `a`, `b`, `c` (default 0) and optionally
        `text` (default: `describe_event`). `kind` is a wire number or name.
        Returns how many were new.
        """
        params = []
        for i, r in enumerate(rows):
            try:
                kind = _name(EVENT_KINDS, r["kind"], "event kind")
                a, b, c = r.get("a", 0), r.get("b", 0), r.get("c", 0)
                text = r.get("text")
                if text is None:
                    text = describe_event(r["kind"], r["channel"], r["code"], a, b, c)
                params.append(
                    (
                        self._device_id(r["device"]),
                        r["event_seq"],
                        r["device_time_ms"],
                        r["utc"],
                        kind,
                        r["channel"],
                        r["code"],
                        a,
                        b,
                        c,
                        text,
                    )
                )
            except KeyError as e:
                raise StoreError(
                    "invalid", f"event row {i} has no {e.args[0]!r}; nothing was written"
                ) from None
            except (TypeError, AttributeError, ValueError) as e:
                raise StoreError("invalid", f"event row {i}: {e}; nothing was written") from None
            except StoreError as e:
                raise StoreError(e.reason, f"event row {i}: {e}; nothing was written") from None
        if not params:
            return 0
        with self._write(f"storing {len(params)} events") as conn:
            before = conn.total_changes
            conn.executemany(_INSERT_EVENT, params)
            return conn.total_changes - before

    def add_event(self, **fields: Any) -> bool:
        """One event (keywords as in add_events); False if it was already stored."""
        return self.add_events([fields]) == 1

    _EVENT_SQL = (
        "SELECT d.name AS device, e.event_seq, e.device_time_ms, e.utc, e.kind, e.channel, "
        "e.code, e.a, e.b, e.c, e.text FROM events e JOIN devices d ON d.id = e.device"
    )
    EVENT_COLUMNS = (
        "device",
        "event_seq",
        "device_time_ms",
        "utc",
        "kind",
        "channel",
        "code",
        "a",
        "b",
        "c",
        "text",
    )

    def _event_query(
        self,
        since_utc: float | None,
        until_utc: float | None,
        device: str | None,
        channel: int | None,
        limit: int | None,
    ) -> tuple[str, list[Any]]:
        where, params = self._where("e", device, channel, since_utc, until_utc)
        sql = self._EVENT_SQL + where + " ORDER BY e.utc, d.name, e.event_seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql, params

    def events(
        self,
        since_utc: float | None = None,
        device: str | None = None,
        *,
        until_utc: float | None = None,
        channel: int | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Events with since_utc <= utc < until_utc, in time order."""
        sql, params = self._event_query(since_utc, until_utc, device, channel, limit)
        return self._dicts(sql, params, "reading events")

    def event_batches(
        self,
        since_utc: float | None = None,
        device: str | None = None,
        *,
        until_utc: float | None = None,
        channel: int | None = None,
        batch: int = 10_000,
    ) -> Iterator[list[tuple]]:
        """Like `events`, as lists of tuples in EVENT_COLUMNS order."""
        sql, params = self._event_query(since_utc, until_utc, device, channel, None)
        return self._batches(sql, params, batch, "reading events")

    def add_command(
        self,
        *,
        utc: float,
        client: str,
        device: str,
        message: str,
        args: Mapping[str, Any],
        channel: int | None = None,
        seq: int | None = None,
        result: str | int | None = None,
    ) -> int:
        """Log a command as sent (result None until its ACK); returns its id."""
        try:
            args_text = json.dumps(args, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise StoreError("invalid", f"command args are not plain JSON: {e}") from e
        if result is not None and not isinstance(result, str):
            result = _name(RESULTS, result, "ACK result")
        row = (
            _finite(utc, "utc"),
            client,
            self._device_id(device),
            channel,
            message,
            args_text,
            seq,
            result,
            None if result is None else utc,
        )
        return self._insert(
            "INSERT INTO commands (utc, client, device, channel, message, args, seq, result, "
            "result_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            row,
            f"logging command {message}",
        )

    def set_command_result(
        self, command_id: int, result: str | int, utc: float, value: int | None = None
    ) -> None:
        """Record a command's outcome: an ACK result name, or e.g. "TIMEOUT",
        and the ACK's value (GET_CONFIG's value, the limit an OUT_OF_RANGE broke)."""
        if not isinstance(result, str):
            result = _name(RESULTS, result, "ACK result")
        with self._write(f"recording the result of command {command_id}") as conn:
            cur = conn.execute(
                "UPDATE commands SET result = ?, result_utc = ?, value = ? WHERE id = ?",
                (result, _finite(utc, "utc"), value, command_id),
            )
            if cur.rowcount != 1:
                raise StoreError("unknown", f"no command {command_id!r} in {self.path}")

    def commands(self, since_utc: float | None = None, device: str | None = None) -> list[dict]:
        sql = (
            "SELECT c.id, c.utc, c.client, d.name AS device, c.channel, c.message, c.args, "
            "c.seq, c.result, c.result_utc, c.value FROM commands c "
            "JOIN devices d ON d.id = c.device"
        )
        where, params = self._where("c", device, since_utc=since_utc)
        return self._dicts(sql + where + " ORDER BY c.utc, c.id", params, json_column="args")

    def add_gap(
        self,
        *,
        device: str,
        stream: int | str,
        first_seq: int,
        last_seq: int | None,
        detected_utc: float,
        reason: str,
    ) -> int:
        """Record sequence numbers first_seq..last_seq (inclusive) as lost for good;
        last_seq None: from first_seq to an end nobody saw (a board reset)."""
        row = (
            self._device_id(device),
            _stream(stream),
            first_seq,
            last_seq,
            _finite(detected_utc, "detected_utc"),
            reason,
        )
        return self._insert(_INSERT_GAP, row, f"recording a gap in {device}'s {row[1]} stream")

    def gaps(self, device: str | None = None) -> list[dict]:
        sql = (
            "SELECT g.id, d.name AS device, g.stream, g.first_seq, g.last_seq, "
            "g.detected_utc, g.reason FROM gaps g JOIN devices d ON d.id = g.device"
        )
        where, params = self._where("g", device)
        return self._dicts(sql + where + " ORDER BY g.detected_utc, g.id", params)

    def add_cycler_event(
        self,
        *,
        device: str,
        channel: int,
        utc: float,
        kind: str,
        cycle: int | None = None,
    ) -> int:
        """Record what the cycler told us (e.g. kind "CYCLE", cycle 12)."""
        row = (self._device_id(device), channel, _finite(utc, "utc"), kind, cycle)
        return self._insert(_INSERT_CYCLER_EVENT, row, "recording a cycler event")

    def cycler_events(
        self,
        device: str,
        channel: int,
        since_utc: float | None = None,
        until_utc: float | None = None,
    ) -> list[dict]:
        sql = (
            "SELECT c.id, d.name AS device, c.channel, c.utc, c.kind, c.cycle "
            "FROM cycler_events c JOIN devices d ON d.id = c.device"
        )
        where, params = self._where("c", device, channel, since_utc, until_utc)
        return self._dicts(sql + where + " ORDER BY c.utc, c.id", params)

    # -- boots: sequence epochs across board resets -----------------------

    def add_boot(
        self,
        device: str,
        *,
        epoch: int,
        boot_id: int,
        sample_base: int,
        event_base: int,
        utc: float,
        board_id: str = "",
    ) -> None:
        """Record a board boot as the device's sequence epoch `epoch`."""
        row = (
            self._device_id(device),
            epoch,
            boot_id,
            board_id,
            sample_base,
            event_base,
            _finite(utc, "utc"),
        )
        with self._write(f"recording boot {boot_id} of {device!r}") as conn:
            conn.execute(_INSERT_BOOT, row)

    _BOOT_SQL = (
        "SELECT d.name AS device, b.epoch, b.boot_id, b.board_id, b.sample_base, b.event_base, "
        "b.first_seen_utc FROM boots b JOIN devices d ON d.id = b.device WHERE b.device = ?"
    )

    def boots(self, device: str) -> list[dict]:
        """The device's boots, oldest first: each one's epoch and sequence bases."""
        return self._dicts(self._BOOT_SQL + " ORDER BY b.epoch", (self._device_id(device),))

    def latest_boot(self, device: str) -> dict | None:
        rows = self._dicts(
            self._BOOT_SQL + " ORDER BY b.epoch DESC LIMIT 1", (self._device_id(device),)
        )
        return rows[0] if rows else None

    def resume_point(self, device: str, window: int = RESUME_WINDOW) -> dict | None:
        """Where the record of the device's latest boot stops, for a bridge
        that restarts: the latest boot's row plus `sample_next` and
        `event_next`, the first sequence numbers *of that boot* (device
        numbering, from 0) neither stored nor recorded as lost. Holes are
        looked for in the last `window` sequence numbers, so a sample that
        was still waiting for its replay when the bridge died is asked for
        again; anything older than that is beyond any board's ring. None if
        the device has no boot recorded."""
        boot = self.latest_boot(device)
        if boot is None:
            return None
        device_id = self._device_id(device)
        with self._reader() as conn:
            try:
                boot["sample_next"] = (
                    _first_unrecorded(conn, device_id, "TELEMETRY", boot["sample_base"], window)
                    - boot["sample_base"]
                )
                boot["event_next"] = (
                    _first_unrecorded(conn, device_id, "EVENT", boot["event_base"], window)
                    - boot["event_base"]
                )
            except sqlite3.Error as e:
                raise self._error(e, f"finding where {device}'s record stops") from e
        return boot

    def last_event(self, device: str, channel: int, kinds: Sequence[str]) -> dict | None:
        """The device's newest event of one of `kinds` on `channel`."""
        marks = ", ".join("?" * len(kinds))
        rows = self._dicts(
            self._EVENT_SQL + f" WHERE e.device = ? AND e.channel = ? AND e.kind IN ({marks}) "
            "ORDER BY e.event_seq DESC LIMIT 1",
            (self._device_id(device), channel, *kinds),
        )
        return rows[0] if rows else None

    def last_command(
        self, device: str, channel: int | None, message: str, result: str | None = "OK"
    ) -> dict | None:
        """The newest command `message` to the device's channel (with `result`)."""
        sql = (
            "SELECT c.id, c.utc, c.client, c.channel, c.message, c.args, c.seq, c.result, "
            "c.result_utc, c.value FROM commands c WHERE c.device = ? AND c.message = ? "
            "AND c.channel IS ?"
        )
        params: list[Any] = [self._device_id(device), message, channel]
        if result is not None:
            sql += " AND c.result = ?"
            params.append(result)
        rows = self._dicts(sql + " ORDER BY c.id DESC LIMIT 1", params, json_column="args")
        return rows[0] if rows else None

    def last_sample(self, device: str, channel: int) -> dict | None:
        """The channel's sample with the highest seq (the newest), or None."""
        rows = self._read(
            _SELECT_SAMPLES + " ORDER BY seq DESC LIMIT 1",
            (self._device_id(device), channel, device),
        )
        return dict(zip(SAMPLE_COLUMNS, rows[0], strict=True)) if rows else None

    def device_ids(self) -> dict[str, int]:
        """Device name -> the id rows carry (Batch rows use ids, not names)."""
        self._load_devices()
        return dict(self._device_ids)

    # -- the bridge's batches ---------------------------------------------

    def write_batch(self, batch: Batch, command_ids: dict[Any, int] | None = None) -> Written:
        """Everything in `batch` in one transaction (one fsync with sync="full").

        Samples and events already stored (replays) are kept once. A gap is
        recorded only for the sequence numbers in its range that are neither
        stored nor already recorded as lost, so a range the link reports
        after a restart never covers rows the record holds. `command_ids`
        maps the caller's command keys to row ids across batches: a result
        can name a command inserted in this batch or an earlier one.
        Raises StoreError (nothing written) like every other write.
        """
        ids = {} if command_ids is None else command_ids
        out = Written()
        new_ids: dict[Any, int] = {}
        with self._write(f"storing a batch of {len(batch)} records") as conn:
            for d in batch.devices:
                conn.execute(_UPSERT_DEVICE, {**_DEVICE_DEFAULTS, **d})
            if batch.channels:
                conn.executemany(_UPSERT_CHANNEL, batch.channels)
            if batch.boots:
                conn.executemany(_INSERT_BOOT, batch.boots)
            before = conn.total_changes
            if batch.samples:
                conn.executemany(_INSERT_SAMPLE, batch.samples)
                out.samples = conn.total_changes - before
                last: dict[int, float] = {}
                for r in batch.samples:
                    if r[4] > last.get(r[0], -math.inf):
                        last[r[0]] = r[4]
                conn.executemany(_SEEN_AT, [(u, d) for d, u in last.items()])
            if batch.events:
                before = conn.total_changes
                conn.executemany(_INSERT_EVENT, [event_with_text(r) for r in batch.events])
                out.events = conn.total_changes - before
            for device_id, stream, first, last_seq, utc, reason in batch.gaps:
                ranges = (
                    [(first, None)]
                    if last_seq is None
                    else _unrecorded(conn, device_id, stream, first, last_seq)
                )
                for a, b in ranges:
                    gap_id = conn.execute(
                        _INSERT_GAP, (device_id, stream, a, b, utc, reason)
                    ).fetchone()[0]
                    out.gaps.append(
                        {
                            "id": gap_id,
                            "device_id": device_id,
                            "stream": stream,
                            "first_seq": a,
                            "last_seq": b,
                            "detected_utc": utc,
                            "reason": reason,
                        }
                    )
            for key, utc, client, device_id, channel, message, args, seq in batch.commands:
                new_ids[key] = conn.execute(
                    "INSERT INTO commands (utc, client, device, channel, message, args, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (utc, client, device_id, channel, message, json.dumps(args), seq),
                ).fetchone()[0]
            for key, result, seq, utc, value in batch.results:
                row_id = new_ids.get(key, ids.get(key))
                if row_id is None:
                    raise StoreError("invalid", f"result for command {key!r}, never stored")
                conn.execute(
                    "UPDATE commands SET seq = coalesce(?, seq), result = ?, result_utc = ?, "
                    "value = ? WHERE id = ?",
                    (seq, result, utc, value, row_id),
                )
            for row in batch.cycler_events:
                out.cycler_event_ids.append(conn.execute(_INSERT_CYCLER_EVENT, row).fetchone()[0])
        # only once committed: a batch that failed is retried with its own keys
        ids.update(new_ids)
        out.command_ids = new_ids
        for k in batch.results:
            ids.pop(k[0], None)  # a command has one result
        return out


_UPSERT_DEVICE = """INSERT INTO devices (name, board, board_id, fw_version, protocol,
        schema_hash, boot_id, config_crc, telemetry_hz, first_seen_utc, last_seen_utc)
    VALUES (:name, coalesce(:board, ''), coalesce(:board_id, ''),
        coalesce(:fw_version, ''), :protocol, :schema_hash, :boot_id,
        :config_crc, :telemetry_hz, :utc, :utc)
    ON CONFLICT (name) DO UPDATE SET
        board = coalesce(:board, board),
        board_id = coalesce(:board_id, board_id),
        fw_version = coalesce(:fw_version, fw_version),
        protocol = coalesce(:protocol, protocol),
        schema_hash = coalesce(:schema_hash, schema_hash),
        boot_id = coalesce(:boot_id, boot_id),
        config_crc = coalesce(:config_crc, config_crc),
        telemetry_hz = coalesce(:telemetry_hz, telemetry_hz),
        first_seen_utc = min(first_seen_utc, :utc),
        last_seen_utc = max(last_seen_utc, :utc)"""
_DEVICE_DEFAULTS: dict[str, Any] = dict.fromkeys(
    (
        "board",
        "board_id",
        "fw_version",
        "protocol",
        "schema_hash",
        "boot_id",
        "config_crc",
        "telemetry_hz",
    )
)
_UPSERT_CHANNEL = """INSERT INTO channels VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (device, channel) DO UPDATE SET kind = excluded.kind,
        sensor = excluded.sensor, full_scale_pa = excluded.full_scale_pa,
        updated_utc = excluded.updated_utc"""
_INSERT_BOOT = "INSERT INTO boots VALUES (?, ?, ?, ?, ?, ?, ?)"
# ON CONFLICT names the key, so only a replayed sample is skipped: a row
# breaking any other rule aborts the batch instead of vanishing.
_INSERT_SAMPLE = (
    "INSERT INTO samples (device, channel, seq, device_time_ms, utc, pressure_pa, "
    "raw, setpoint_pa, valves, mode, alarms, flags) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device, channel, seq) DO NOTHING"
)
_INSERT_EVENT = (
    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device, event_seq) DO NOTHING"
)
_SEEN_AT = "UPDATE devices SET last_seen_utc = max(last_seen_utc, ?) WHERE id = ?"
_INSERT_GAP = (
    "INSERT INTO gaps (device, stream, first_seq, last_seq, detected_utc, reason) "
    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id"
)
_INSERT_CYCLER_EVENT = (
    "INSERT INTO cycler_events (device, channel, utc, kind, cycle) "
    "VALUES (?, ?, ?, ?, ?) RETURNING id"
)
# One channel's samples in SAMPLE_COLUMNS order: ?1 the device's id, ?2 the
# channel, ?3 the device's name (returned as the first column).
_SELECT_SAMPLES = (
    "SELECT ?3, channel, seq, device_time_ms, utc, pressure_pa, raw, setpoint_pa, "
    "valves, fill, vent, mode, alarms, flags FROM samples "
    "WHERE device = ?1 AND channel = ?2"
)


def event_with_text(r: tuple) -> tuple:
    """A Batch event row with its text: the bridge's, or describe_event's."""
    if r[10] is not None:
        return r
    try:
        text = describe_event(r[4], r[5], r[6], r[7], r[8], r[9])
    except StoreError:  # a kind newer than this host: say what is known
        where = f"ch {r[5]} " if r[5] else ""
        text = f"{where}{r[4]}: code {r[6]} a {r[7]} b {r[8]} c {r[9]}"
    return (*r[:10], text)


def _sample_channels(conn: sqlite3.Connection, device_id: int) -> list[int]:
    # Skip-scan the primary key: one index probe per channel, not a scan.
    return [
        r[0]
        for r in conn.execute(
            """WITH RECURSIVE ch(c) AS (
                SELECT min(channel) FROM samples WHERE device = ?1
                UNION ALL
                SELECT (SELECT min(channel) FROM samples WHERE device = ?1 AND channel > c)
                FROM ch WHERE c IS NOT NULL)
            SELECT c FROM ch WHERE c IS NOT NULL""",
            (device_id,),
        )
    ]


def _stored(
    conn: sqlite3.Connection, device_id: int, stream: str, lo: int, hi: int, channel: int | None
) -> list[int]:
    """Sorted sequence numbers in lo..hi held by the record (any channel, or
    `channel` when given: every channel of a tick is stored together)."""
    if stream == "EVENT":
        sql = "SELECT event_seq FROM events WHERE device = ? AND event_seq BETWEEN ? AND ?"
        return [r[0] for r in conn.execute(sql, (device_id, lo, hi))]
    channels = [channel] if channel is not None else _sample_channels(conn, device_id)
    seqs: set[int] = set()
    for c in channels:
        seqs.update(
            r[0]
            for r in conn.execute(
                "SELECT seq FROM samples WHERE device = ? AND channel = ? AND seq BETWEEN ? AND ?",
                (device_id, c, lo, hi),
            )
        )
    return sorted(seqs)


def _lost(conn: sqlite3.Connection, device_id: int, stream: str, lo: int, hi: int) -> list[tuple]:
    """Recorded gaps (with a known end) overlapping lo..hi, by first_seq."""
    return conn.execute(
        "SELECT first_seq, last_seq FROM gaps WHERE device = ? AND stream = ? "
        "AND first_seq <= ? AND last_seq >= ? ORDER BY first_seq",
        (device_id, stream, hi, lo),
    ).fetchall()


def _unrecorded(
    conn: sqlite3.Connection, device_id: int, stream: str, first: int, last: int
) -> list[tuple[int, int]]:
    """The parts of first..last neither stored nor recorded as lost already."""
    covered = [(s, s) for s in _stored(conn, device_id, stream, first, last, None)]
    covered += _lost(conn, device_id, stream, first, last)
    covered.sort()
    out: list[tuple[int, int]] = []
    at = first
    for a, b in covered:
        if a > at:
            out.append((at, min(a - 1, last)))
        at = max(at, b + 1)
        if at > last:
            break
    if at <= last:
        out.append((at, last))
    return out


def _first_unrecorded(
    conn: sqlite3.Connection, device_id: int, stream: str, base: int, window: int
) -> int:
    """The first sequence number at or above `base`, within `window` of the
    highest stored, that is neither stored nor recorded as lost; one past the
    highest stored if there is no hole; `base` if nothing is stored."""
    if stream == "EVENT":
        top = conn.execute(
            "SELECT max(event_seq) FROM events WHERE device = ? AND event_seq >= ?",
            (device_id, base),
        ).fetchone()[0]
        channel = None
    else:
        top, channel = None, None
        for c in _sample_channels(conn, device_id):
            m = conn.execute(
                "SELECT max(seq) FROM samples WHERE device = ? AND channel = ? AND seq >= ?",
                (device_id, c, base),
            ).fetchone()[0]
            if m is not None and (top is None or m > top):
                top, channel = m, c
    if top is None:
        return base
    lo = max(base, top - window)
    holes = _unrecorded_in(conn, device_id, stream, lo, top, channel)
    return holes if holes is not None else top + 1


def _unrecorded_in(
    conn: sqlite3.Connection, device_id: int, stream: str, lo: int, hi: int, channel: int | None
) -> int | None:
    at = lo
    covered = [(s, s) for s in _stored(conn, device_id, stream, lo, hi, channel)]
    covered += _lost(conn, device_id, stream, lo, hi)
    covered.sort()
    for a, b in covered:
        if a > at:
            return at
        at = max(at, b + 1)
    return at if at <= hi else None


@dataclass
class Batch:
    """What the bridge collected since its last commit, for `Store.write_batch`.

    Rows are tuples in column order with device ids (`Store.device_ids`), so
    the bridge's hot path builds no dicts:
    - devices: `upsert_device` keywords with `name` and `utc`;
    - channels: (device_id, channel, kind name, sensor name, full_scale_pa, utc);
    - boots: (device_id, epoch, boot_id, board_id, sample_base, event_base, utc);
    - samples: (device_id, channel, seq, device_time_ms, utc, pressure_pa, raw,
      setpoint_pa, valves, mode, alarms, flags);
    - events: (device_id, event_seq, device_time_ms, utc, kind name, channel,
      code, a, b, c, text or None);
    - gaps: (device_id, stream name, first_seq, last_seq or None, utc, reason);
    - commands: (key, utc, client, device_id, channel, message, args, seq);
    - results: (key, result, seq or None, utc, value);
    - cycler_events: (device_id, channel, utc, kind, cycle).
    """

    devices: list[dict[str, Any]] = field(default_factory=list)
    channels: list[tuple] = field(default_factory=list)
    boots: list[tuple] = field(default_factory=list)
    samples: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    gaps: list[tuple] = field(default_factory=list)
    commands: list[tuple] = field(default_factory=list)
    results: list[tuple] = field(default_factory=list)
    cycler_events: list[tuple] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(getattr(self, f.name)) for f in fields(self))

    def extend(self, other: Batch) -> None:
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))


@dataclass
class Written:
    """What `write_batch` stored: new sample and event rows (replays kept once
    are not counted), the gaps recorded, ids given to commands and cycler events."""

    samples: int = 0
    events: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    command_ids: dict[Any, int] = field(default_factory=dict)
    cycler_event_ids: list[int] = field(default_factory=list)


def bench_insert(
    path: str | Path, *, batch: int, total: int, sync: str = "full"
) -> dict[str, float]:
    """Insert `total` 4-channel samples in batches of `batch` into a new store.

    Returns samples per second of wall time and of this process's CPU time
    (the fsync wait of sync="full" costs wall time, not CPU).
    """
    with Store(path, sync=sync) as st:
        st.upsert_device("bench", utc=time.time())
        t0 = 1.7e9
        rows = []
        n = 0
        start, cpu = time.perf_counter(), time.process_time()
        while n < total:
            seq = n // 4
            rows.append(
                {
                    "device": "bench",
                    "channel": n % 4 + 1,
                    "seq": seq,
                    "device_time_ms": seq * 20,
                    "utc": t0 + seq * 0.02,
                    "pressure_pa": 5_000_000 + n % 97,
                    "raw": 12345,
                    "setpoint_pa": 5_000_000,
                    "valves": 0,
                    "mode": 1,
                    "alarms": 0,
                }
            )
            n += 1
            if len(rows) == batch:
                st.add_samples(rows)
                rows = []
        if rows:
            st.add_samples(rows)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"samples_per_s": total / wall, "samples_per_cpu_s": total / cpu}


def _main() -> None:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description="isopress store: insert throughput")
    p.add_argument("--dir", help="directory for the scratch database (default: a temp dir)")
    p.add_argument("--total", type=int, default=20_000, help="samples per run (20000)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        for sync in ("full", "normal"):
            for batch in (100, 1000):
                path = Path(d) / f"bench-{sync}-{batch}.sqlite"
                f = bench_insert(path, batch=batch, total=a.total, sync=sync)
                core = 6400 / f["samples_per_cpu_s"]
                print(
                    f"sync={sync:6} batch={batch:5}: {f['samples_per_s']:9,.0f} samples/s, "
                    f"{f['samples_per_cpu_s']:9,.0f} per CPU s; 6,400/s costs {core:.0%} of a core"
                )


if __name__ == "__main__":
    _main()
