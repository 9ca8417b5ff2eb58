"""The bridge without HTTP: boards (fake, on real ptys) -> batches -> SQLite.

What is checked is what the record must hold: every sample once, in
contiguous per-device sequence numbers across resets and restarts; nothing
shown before it is committed; a failing store retried without losing what
the board sent; commands logged with who sent them and the answer. The
store's own additions for the bridge (boot epochs, batches, resume points,
the v1 -> v2 migration) are tested here too.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fakeboard import RESULT, FakeBoard

from isopress import bridge as bridge_mod
from isopress.bridge import Bridge, Rejected, discover_boards
from isopress.store import MIGRATIONS, SCHEMA_VERSION, Batch, Store, StoreError

TEST_TIMEOUT_S = 40
FAST_LINK = {"backoff_s": (0.05, 0.5)}
LIMITS = {16: 7_000_000, 17: 8_000_000, 18: 7_500_000, 19: 0, 20: 1_000_000, 21: 500_000}


class LabBoard(FakeBoard):
    """A fake board that keeps limits and runs profiles the way the firmware
    answers them: GET_CONFIG reports `reported` (what the host will believe),
    SET_SETPOINT is checked against `enforced` (what the board holds to), so a
    test can make the host's copy stale and see the board's NACK mapped."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.reported = dict(LIMITS)
        self.enforced = dict(LIMITS)
        self.latched = 0  # alarm bits latched on every channel
        self.cause = 0  # bits whose cause has not gone
        self.steps: dict[int, list[dict[str, int]]] = {}
        self.waiting: dict[int, int | None] = {}
        self.mute_clock = False

    def _handle(self, frame: Any) -> None:
        if frame.message == "CLOCK_QUERY" and self.mute_clock:
            return
        super()._handle(frame)

    def _execute(self, name: str, f: dict[str, Any]) -> tuple[int, int]:
        ch = f.get("channel")
        lowest = 0 if name in ("GET_CONFIG", "SET_CONFIG") else 1
        if ch is not None and not lowest <= ch <= self.channels:
            return RESULT["UNKNOWN_CHANNEL"], 0
        ok = (RESULT["OK"], 0)
        if name == "GET_CONFIG":
            self.executed.append((name, f))
            if f["key"] in self.reported:
                return RESULT["OK"], self.reported[f["key"]]
            return RESULT["OK"], 1000 + f["key"]
        if name == "SET_SETPOINT":
            if self.latched:
                return RESULT["LATCHED"], 0
            if self.waiting.get(ch) is not None:
                return RESULT["BAD_STATE"], 0
            if f["pressure"] > self.enforced[16]:
                return RESULT["OUT_OF_RANGE"], self.enforced[16]
            return super()._execute(name, f)
        self.executed.append((name, f))
        if name == "SET_LIMITS":
            for key, field in zip(range(16, 22), ("max_working", "trip", "trip_reset",
                                                  "min_alarm", "ramp_up", "ramp_down"),
                                  strict=True):  # fmt: skip
                self.enforced[key] = self.reported[key] = f[field]
            self._add_event("CONFIG_CHANGED", ch, 16, f["max_working"], 0xBEEF, 0)
            return ok
        if name == "PROFILE_LOAD":
            self.steps[ch] = f["items"]
            return ok
        if name == "PROFILE_START":
            if ch not in self.steps or self.waiting.get(ch) is not None:
                return RESULT["BAD_STATE"], 0
            self._run_profile(ch, f["from_step"], 0)
            return ok
        if name == "PROFILE_ADVANCE":
            if self.waiting.get(ch) != f["from_step"]:
                return RESULT["BAD_STATE"], 0
            self._run_profile(ch, f["from_step"] + 1, f["cycle"])
            return ok
        if name == "PROFILE_STOP":
            self.waiting[ch] = None
            return ok
        if name == "ACK_ALARM":
            left = f["alarms"] & self.cause
            self.latched &= ~(f["alarms"] & ~self.cause)
            return (RESULT["BAD_STATE"], left) if left else ok
        return ok

    def _run_profile(self, ch: int, i: int, cycle: int) -> None:
        # SET steps go on at once; a WAIT HOST stops; the end is PROFILE_DONE
        steps = self.steps[ch]
        self.waiting[ch] = None
        while i < len(steps):
            s = steps[i]
            self._add_event("PROFILE_STEP", ch, i, s["target"], cycle, 0)
            cycle = 0
            if s["step"] == 0:
                self._setpoint[ch] = s["target"]
                i += 1
                continue
            if s["step"] == 3:
                self.waiting[ch] = i
                return
            i += 1
        self._add_event("PROFILE_DONE", ch, len(steps), 0, 0, 0)


async def until(cond: Callable[[], bool], timeout: float = 8.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, TEST_TIMEOUT_S)

    return asyncio.run(bounded())


@asynccontextmanager
async def running(store: Store, url: str, name: str = "rig", **kw: Any) -> AsyncIterator[Bridge]:
    kw.setdefault("link_options", FAST_LINK)
    b = Bridge(store, {name: url}, **kw)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def seqs(store: Store, device: str = "rig", channel: int = 1) -> list[int]:
    return [r["seq"] for r in store.samples(device, channel)]


async def caught_up(b: Bridge, board: FakeBoard, name: str = "rig") -> None:
    """The link has what the board made, with replays done, and it is committed."""
    link = b.boards[name].link
    assert link is not None
    await until(
        lambda: (
            link.connected
            and not link.replay_pending
            and link.resume_point is not None
            and link.resume_point.sample_next >= board.sample_seq() - 1
        ),
        what="the link to catch up",
    )
    await b.recorder.drain()


def assert_contiguous(store: Store, device: str = "rig", channels: int = 4) -> list[int]:
    got = seqs(store, device, 1)
    assert got == list(range(got[0], got[-1] + 1)), "a hole in the stored samples"
    for ch in range(2, channels + 1):
        assert seqs(store, device, ch) == got, f"channel {ch} differs from channel 1"
    return got


@pytest.fixture
def store(tmp_path: Path) -> Any:
    st = Store(tmp_path / "rec.sqlite", busy_timeout_s=0.1)
    yield st
    st.close()


@pytest.fixture
def board(tmp_path: Path) -> Any:
    b = LabBoard(tmp_path / "tty0", ring_samples=256).start()
    yield b
    b.stop()


# -- samples into the record ---------------------------------------------------


def test_samples_are_stored_once_each_with_utc_device_time_and_epoch(store, board):
    async def go() -> None:
        async with running(store, board.url) as b:
            await until(lambda: count(store) >= 60)
            await caught_up(b, board)
            ch = b.channel_state("rig", 2)
            assert ch["kind"] == "ISOSTATIC" and ch["limits"]["max_working_mpa"] == 7.0
        got = assert_contiguous(store)
        assert got[0] == 0
        rows = store.samples("rig", 1)
        utc = [r["utc"] for r in rows]
        assert utc == sorted(utc) and abs(utc[-1] - time.time()) < 5
        dt = [r["device_time_ms"] for r in rows]
        assert dt == sorted(dt) and dt[-1] - dt[0] == pytest.approx(20 * (len(dt) - 1), abs=60)
        assert store.boots("rig")[0] | {"first_seen_utc": 0} == {
            "device": "rig",
            "epoch": 1,
            "boot_id": 0x1234,
            "board_id": b"FAKEBRD1".hex(),
            "sample_base": 0,
            "event_base": 0,
            "first_seen_utc": 0,
        }
        dev = store.device("rig")
        assert (dev["boot_id"], dev["fw_version"], dev["telemetry_hz"]) == (0x1234, "0.1.0", 50)
        assert [e["kind"] for e in store.events(device="rig")][:1] == ["BOOT"]
        assert store.gaps() == []

    run(go())


def shown_seq(b: Bridge, device: str = "rig", channel: int = 1) -> int | None:
    """The seq of the live state the API would show (None: nothing yet)."""
    ch = b.boards[device].channels.get(channel)
    return None if ch is None or ch.last is None else ch.last[2]


def count(store: Store, device: str = "rig", channel: int = 1) -> int:
    try:
        return store.sample_count(device, channel)
    except StoreError:
        return 0


def test_nothing_is_shown_before_it_is_committed(store, board):
    """While the writer is held up, the link keeps receiving but the live
    state and the stream stay at the last committed sample."""
    gate = threading.Event()
    gate.set()
    real = store.write_batch

    def slow(batch: Batch, ids: Any = None) -> Any:
        gate.wait()
        return real(batch, ids)

    store.write_batch = slow  # type: ignore[method-assign]

    async def go() -> None:
        async with running(store, board.url) as b:
            sub = b.hub.subscribe(kinds=frozenset({"samples"}))
            await until(lambda: shown_seq(b) is not None, what="samples")
            await b.recorder.drain()
            gate.clear()
            await asyncio.sleep(0.1)  # the writer may be inside one more batch
            shown = b.channel_state("rig", 1)["seq"]
            received = b.boards["rig"].link.stats.samples
            while not sub.queue.empty():
                sub.queue.get_nowait()
            await asyncio.sleep(0.5)
            assert b.boards["rig"].link.stats.samples >= received + 15  # 50 Hz goes on
            assert b.channel_state("rig", 1)["seq"] == shown
            assert sub.queue.empty()
            assert store.last_seq("rig", "TELEMETRY") <= shown + 1
            gate.set()
            await until(lambda: b.channel_state("rig", 1)["seq"] > shown + 15, what="commit")
            assert not sub.queue.empty()

    run(go())


def test_a_board_reset_starts_a_new_epoch_that_never_collides(store, board):
    async def go() -> None:
        async with running(store, board.url) as b:
            await until(lambda: count(store) > 40)
            board.reset()
            await until(lambda: len(store.boots("rig")) == 2, what="a second epoch")
            await until(lambda: b.boards["rig"].epoch.boot_id == 0x1235)
            await asyncio.sleep(0.4)
            await caught_up(b, board)
        boots = store.boots("rig")
        assert [x["boot_id"] for x in boots] == [0x1234, 0x1235]
        second = boots[1]
        got = seqs(store)
        old = [s for s in got if s < second["sample_base"]]
        new = [s for s in got if s >= second["sample_base"]]
        assert old == list(range(0, len(old)))
        assert second["sample_base"] == old[-1] + 1  # where the first boot's record stopped
        assert new == list(range(second["sample_base"], second["sample_base"] + len(new)))
        assert len(new) >= 15
        # the second boot's samples are its own: device time restarted near 0
        rows = store.samples("rig", 1)
        assert rows[len(old)]["device_time_ms"] < 2000
        # the unknown tail of the first boot is a gap with no end, in its numbering
        tails = [g for g in store.gaps("rig") if g["reason"] == "reset"]
        assert {(g["stream"], g["last_seq"]) for g in tails} == {
            ("TELEMETRY", None),
            ("EVENT", None),
        }
        t = next(g for g in tails if g["stream"] == "TELEMETRY")
        assert t["first_seq"] == old[-1] + 1
        # events too: two BOOT events, in separate epochs
        boot_events = [e for e in store.events(device="rig") if e["kind"] == "BOOT"]
        assert [e["event_seq"] for e in boot_events] == [0, second["event_base"]]

    run(go())


def test_a_restarted_bridge_resumes_and_the_board_replays_what_it_missed(store, board):
    async def go() -> None:
        async with running(store, board.url) as b:
            await until(lambda: count(store) > 30)
            await caught_up(b, board)
        stopped_at = store.last_seq("rig", "TELEMETRY")
        await asyncio.sleep(1.0)  # 50 samples the board keeps in its ring
        async with running(store, board.url) as b:
            await caught_up(b, board)
            assert b.boards["rig"].link.stats.resets == 0
        got = assert_contiguous(store)
        assert got[0] == 0 and got[-1] > stopped_at + 40
        replayed = [
            r["seq"] for r in store.samples("rig", 1) if r["flags"] & 1 and r["seq"] > stopped_at
        ]
        assert replayed and min(replayed) == stopped_at + 1  # the missed ones came as replays
        assert store.gaps() == []
        assert len(store.boots("rig")) == 1

    run(go())


def test_restart_asks_again_for_a_hole_and_records_only_what_is_truly_lost(store, tmp_path):
    """A kill can leave a hole below the newest stored sample (its replay was in
    flight). The restarted bridge asks from the hole; what the board's ring no
    longer holds becomes a gap covering only the missing numbers."""
    board = LabBoard(tmp_path / "tty1", ring_samples=60).start()
    try:

        async def go() -> None:
            async with running(store, board.url) as b:
                await until(lambda: count(store) > 150)
                await caught_up(b, board)
            raw = sqlite3.connect(store.path)
            top = raw.execute("SELECT max(seq) FROM samples").fetchone()[0]
            raw.execute("DELETE FROM samples WHERE seq BETWEEN 10 AND 19")  # long gone
            raw.execute("DELETE FROM samples WHERE seq BETWEEN ? AND ?", (top - 8, top - 7))
            raw.execute("DELETE FROM samples WHERE seq > ?", (top - 3,))
            raw.commit()
            raw.close()
            point = store.resume_point("rig", window=100)
            assert point is not None and point["sample_next"] == top - 8  # 10 is too old
            assert store.resume_point("rig")["sample_next"] == 10
            async with running(store, board.url) as b:
                await caught_up(b, board)
                await asyncio.sleep(0.2)
                await b.recorder.drain()

        run(go())
    finally:
        board.stop()
    got = seqs(store)
    missing = sorted(set(range(got[0], got[-1] + 1)) - set(got))
    assert missing == list(range(10, 20))
    gaps = [(g["stream"], g["first_seq"], g["last_seq"], g["reason"]) for g in store.gaps()]
    assert gaps == [("TELEMETRY", 10, 19, "not_held")]


@pytest.mark.parametrize("cause", ["locked", "full"])
def test_a_failing_store_is_retried_shown_and_loses_nothing(store, board, cause):
    async def go() -> None:
        async with running(store, board.url, retry_s=(0.05, 0.2)) as b:
            await until(lambda: count(store) > 20)
            await b.recorder.drain()
            raw = sqlite3.connect(store.path, isolation_level=None)
            if cause == "locked":
                raw.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            else:
                store.set_max_bytes(store.path.stat().st_size)
            try:
                await until(lambda: not b.recorder.health.ok, what="the failure to show")
                received = b.boards["rig"].link.stats.samples
                await asyncio.sleep(0.6)
                st = b.status()
                assert st["ok"] is False
                assert st["store"]["reason"] == cause
                assert cause in st["store"]["error"]
                assert st["store"]["retries"] >= 2
                assert st["store"]["pending_rows"] > 0
                # the loop goes on: the board is still being read
                assert b.boards["rig"].link.stats.samples > received + 15
            finally:
                if cause == "locked":
                    raw.execute("ROLLBACK")
                else:
                    store.set_max_bytes(None)
                raw.close()
            await until(lambda: b.recorder.health.ok, what="recovery")
            await caught_up(b, board)
            assert b.status()["store"]["failures"] >= 2
        assert_contiguous(store)
        assert store.gaps() == []

    run(go())


def test_samples_beyond_the_memory_cap_are_recorded_as_a_gap(store, board):
    async def go() -> None:
        async with running(store, board.url, retry_s=(0.05, 0.1), max_backlog=200) as b:
            await until(lambda: count(store) > 10)
            await b.recorder.drain()
            raw = sqlite3.connect(store.path, isolation_level=None)
            raw.execute("BEGIN IMMEDIATE")
            await until(lambda: b.recorder.health.dropped_samples > 20, what="drops")
            raw.execute("ROLLBACK")
            raw.close()
            await until(lambda: b.recorder.health.ok)
            await caught_up(b, board)
            await until(lambda: bool(store.gaps("rig")), what="the gap record")
        got = seqs(store)
        missing = sorted(set(range(got[0], got[-1] + 1)) - set(got))
        gaps = store.gaps("rig")
        assert [g["reason"] for g in gaps] == ["store_unavailable"]
        g = gaps[0]
        assert missing == list(range(g["first_seq"], g["last_seq"] + 1))

    run(go())


def test_samples_wait_for_the_clock_then_get_its_utc(store, tmp_path, monkeypatch):
    board = LabBoard(tmp_path / "tty2").start()
    board.mute_clock = True
    monkeypatch.setattr(bridge_mod, "UTC_WAIT_S", 30.0)
    try:

        async def go() -> None:
            async with running(store, board.url) as b:
                await until(lambda: len(b.boards["rig"].held) > 20, what="held samples")
                assert count(store) == 0
                board.mute_clock = False
                await until(lambda: not b.boards["rig"].held, what="the clock")
                await caught_up(b, board)
                clock = b.boards["rig"].link.clock
                rows = store.samples("rig", 1)
                for r in rows[:: max(1, len(rows) // 10)]:
                    assert r["utc"] == pytest.approx(clock.utc(r["device_time_ms"]), abs=0.05)

        run(go())
    finally:
        board.stop()
    assert_contiguous(store)


def test_without_a_clock_utc_is_estimated_after_a_wait(store, tmp_path, monkeypatch):
    board = LabBoard(tmp_path / "tty3").start()
    board.mute_clock = True
    monkeypatch.setattr(bridge_mod, "UTC_WAIT_S", 0.3)
    try:

        async def go() -> None:
            async with running(store, board.url) as b:
                await until(lambda: count(store) > 30)
                await b.recorder.drain()

        run(go())
    finally:
        board.stop()
    rows = store.samples("rig", 1)
    utc = [r["utc"] for r in rows]
    assert utc == sorted(utc) and abs(utc[-1] - time.time()) < 3
    step = [(b["utc"] - a["utc"]) * 1000 for a, b in itertools.pairwise(rows)]
    assert sum(step) / len(step) == pytest.approx(20, abs=3)  # device time kept


# -- commands --------------------------------------------------------------------


def test_commands_are_logged_with_client_result_and_value(store, board):
    board.enforced[16] = 5_000_000  # the board holds to less than it reported

    async def go() -> None:
        async with running(store, board.url) as b:
            await until(lambda: b.boards["rig"].limits_read, what="limits")
            r = await b.set_setpoint("rig", 1, 2.0, 0.1, "api:alice")
            assert r["pressure_mpa"] == 2.0
            with pytest.raises(Rejected) as e:
                await b.set_setpoint("rig", 1, 6.0, None, "api:bob")
            assert e.value.code == "out_of_range"
            assert (
                e.value.detail.items()
                >= {
                    "field": "pressure_mpa",
                    "limit": 5.0,
                    "unit": "MPa",
                    "source": "board",
                    "result": "OUT_OF_RANGE",
                }.items()
            )
            with pytest.raises(Rejected) as e:
                await b.set_setpoint("rig", 1, 7.5, None, "api:bob")  # caught on the host
            assert e.value.detail["source"] == "host" and e.value.detail["limit"] == 7.0
            await b.recorder.drain()
        cmds = [c for c in store.commands() if c["client"] != "bridge"]
        assert [(c["client"], c["message"], c["result"], c["value"]) for c in cmds] == [
            ("api:alice", "SET_SETPOINT", "OK", 0),
            ("api:bob", "SET_SETPOINT", "OUT_OF_RANGE", 5_000_000),
        ]
        assert cmds[0]["args"] == {"channel": 1, "pressure": 2_000_000, "rate": 100_000}
        assert cmds[0]["seq"] is not None and cmds[0]["result_utc"] >= cmds[0]["utc"]
        sent = [f for f in board.commands() if f.message == "SET_SETPOINT"]
        assert len(sent) == 2  # the 7.5 MPa one never left the host

    run(go())


def test_a_command_while_unplugged_is_refused_and_logged_as_not_sent(store, board):
    async def go() -> None:
        async with running(store, board.url) as b:
            await until(lambda: b.boards["rig"].limits_read)
            board.unplug(1.0)
            await until(lambda: not b.boards["rig"].link.connected, what="the unplug")
            with pytest.raises(Rejected) as e:
                await b.set_setpoint("rig", 1, 1.0, None, "api")
            assert e.value.code == "not_connected"
            await caught_up(b, board)
        assert_contiguous(store)

    run(go())


# -- discovery -------------------------------------------------------------------


def test_boards_are_found_by_usb_ids_and_named_by_serial_number():
    port = SimpleNamespace
    ports = [
        port(device="/dev/ttyACM0", vid=0x2E8A, pid=0x0005, serial_number="E6614103E7"),
        port(device="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60, serial_number=None),
        port(device="/dev/ttyS0", vid=None, pid=None, serial_number=None),
        port(device="/dev/ttyACM1", vid=0x1234, pid=0x0005, serial_number="X"),
    ]
    assert discover_boards(iter(ports)) == {
        "pico-E6614103E7": ("/dev/ttyACM0", "pico"),
        "esp32-devkitc-ttyUSB0": ("/dev/ttyUSB0", "esp32_devkitc"),
    }


def test_cli_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bridge_mod.main(["--device", "no-equals", "--db", str(tmp_path / "x.sqlite")])
    assert "NAME=PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bridge_mod.main(["--db", str(tmp_path / "x.sqlite"), "--http", "localhost"])
    assert "HOST:PORT" in capsys.readouterr().err
    code = bridge_mod.main(
        ["--device", "a=x", "--device", "a=y", "--db", str(tmp_path / "x.sqlite")]
    )
    assert code == 2 and "given twice" in capsys.readouterr().err


# -- the store's additions ------------------------------------------------------------


def test_a_version_1_file_is_migrated_with_its_rows_as_epoch_1(tmp_path):
    path = tmp_path / "v1.sqlite"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                "applied_utc REAL NOT NULL, description TEXT NOT NULL) STRICT")  # fmt: skip
    for sql in MIGRATIONS[0][2]:
        raw.execute(sql)
    raw.execute("INSERT INTO schema_version VALUES (1, 0, 'initial schema')")
    raw.execute(
        "INSERT INTO devices (name, board_id, boot_id, first_seen_utc, last_seen_utc) "
        "VALUES ('old', 'ab', 7, 1.0, 2.0)"
    )
    for seq in (*range(0, 3), *range(5, 42)):  # 3 and 4 are a recorded gap
        raw.execute("INSERT INTO samples VALUES (1, 1, ?, 0, 1.5, 0, 0, 0, 0, 1, 0, 0)", (seq,))
    raw.execute("INSERT INTO gaps VALUES (1, 1, 'TELEMETRY', 3, 4, 1.2, 'ring')")
    raw.close()
    with Store(path) as st:
        assert st.schema_version() == SCHEMA_VERSION == 2
        assert [(b["epoch"], b["boot_id"], b["sample_base"]) for b in st.boots("old")] == [
            (1, 7, 0)
        ]
        assert st.resume_point("old")["sample_next"] == 42
        assert [(g["first_seq"], g["last_seq"]) for g in st.gaps()] == [(3, 4)]
        st.add_gap(device="old", stream=0, first_seq=50, last_seq=None, detected_utc=3.0,
                   reason="reset")  # fmt: skip
        assert st.gaps()[-1]["last_seq"] is None


def test_write_batch_is_one_transaction_and_trims_gaps(tmp_path):
    with Store(tmp_path / "b.sqlite") as st:
        dev = st.upsert_device("d", utc=1.0)

        def row(seq: int, ch: int = 1) -> tuple:
            return (dev, ch, seq, seq * 20, 100.0 + seq, 5, 0, 5, 0, 1, 0, 0)

        b = Batch(
            samples=[row(s, c) for s in (*range(0, 5), *range(8, 12)) for c in (1, 2)],
            commands=[("k1", 1.0, "api:x", dev, 1, "SET_SETPOINT", {"pressure": 1}, None)],
            results=[("k1", "OK", 3, 1.1, 0)],
            gaps=[(dev, "TELEMETRY", 0, 11, 2.0, "not_held")],
            cycler_events=[(dev, 1, 3.0, "cycle_end", 4)],
        )
        ids: dict = {}
        w = st.write_batch(b, ids)
        assert (w.samples, len(w.cycler_event_ids)) == (18, 1)
        assert [(g["first_seq"], g["last_seq"]) for g in w.gaps] == [(5, 7)]
        want = {"result": "OK", "seq": 3, "value": 0, "client": "api:x"}
        assert st.commands()[0].items() >= want.items()
        # a replay of the same rows adds nothing; a second gap over the same
        # range adds nothing either
        w = st.write_batch(Batch(samples=b.samples, gaps=b.gaps), ids)
        assert (w.samples, w.gaps) == (0, [])
        # a bad row rejects the whole batch
        with pytest.raises(StoreError, match="CHECK constraint failed: valves"):
            st.write_batch(Batch(samples=[row(20), (*row(21)[:8], 999, 1, 0, 0)]), ids)
        assert st.last_seq("d", "TELEMETRY") == 11
        assert st.last_sample("d", 2)["seq"] == 11


def test_cli_fails_clearly_when_the_store_or_the_port_cannot_be_had(tmp_path, capsys):
    code = bridge_mod.main(["--device", "a=/dev/null-x", "--db", str(tmp_path / "no" / "x.db")])
    assert code == 1 and "cannot open" in capsys.readouterr().err
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = bridge_mod.main(
            ["--device", "a=/dev/null-x", "--db", str(tmp_path / "x.db"),
             "--http", f"127.0.0.1:{port}", "--log-level", "ERROR"]
        )  # fmt: skip
    assert code == 1 and f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_bridge_benchmark_runs_and_reports_small():
    from isopress.bench import bridge as bench

    f = bench.run_bench(devices=2, channels=2, hz=20.0, seconds=1.5, warmup_s=0.5)
    assert f["lost_samples"] == 0 and f["holes"] == 0 and f["gap_records"] == 0
    assert f["stored_samples"] == f["made_samples"] > 0
    assert f["ingest_samples_per_s"] == pytest.approx(80, rel=0.3)
    assert 0 < f["bridge_cpu_fraction"] < 1
    assert f["latency_samples"] > 50 and 0 < f["latency_p50_ms"] <= f["latency_p99_ms"]
    assert f["clock_sync_error_ms"] < 20
    text = bench.report(f)
    for name in ("ingest_samples_per_s", "bridge_cpu_fraction", "latency_p99_ms",
                 "clock_sync_error_ms"):  # fmt: skip
        assert name in text
