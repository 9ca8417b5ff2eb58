"""The durable store: schema, round trips, replays, errors that change nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from isopress.store import SAMPLE_COLUMNS, SCHEMA_VERSION, Store, StoreError, describe_event

T0 = 1_760_000_000.0


def sample(seq: int, channel: int = 1, device: str = "dev1", **over: object) -> dict:
    row = {
        "device": device,
        "channel": channel,
        "seq": seq,
        "device_time_ms": 4_294_967_000 + seq * 20,  # past the 32-bit wrap: 64-bit values
        "utc": T0 + seq * 0.02,
        "pressure_pa": 5_000_000 + seq * 7 - channel,
        "raw": -1000 + seq,
        "setpoint_pa": 5_000_000,
        "valves": seq % 4,
        "mode": 1,
        "alarms": (1 << 6) if seq % 5 == 0 else 0,
    }
    row.update(over)
    return row


@pytest.fixture
def st(tmp_path):
    store = Store(tmp_path / "rec.sqlite", busy_timeout_s=0.1)
    store.upsert_device("dev1", utc=T0, board="pico", board_id=bytes(range(8)), fw_version="0.1.0")
    yield store
    store.close()


def count(st: Store, device: str = "dev1", channel: int = 1) -> int:
    return st.sample_count(device, channel)


def test_new_file_is_wal_with_every_table_and_its_version(tmp_path):
    path = tmp_path / "new.sqlite"
    with Store(path) as st:
        assert st.schema_version() == SCHEMA_VERSION
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= {
        "schema_version",
        "devices",
        "channels",
        "calibration_snapshots",
        "runs",
        "samples",
        "events",
        "commands",
        "gaps",
        "cycler_events",
    }
    raw.close()


def test_a_newer_schema_is_refused_not_touched(tmp_path):
    path = tmp_path / "future.sqlite"
    Store(path).close()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO schema_version VALUES (99, 0, 'from the future')")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer than this isopress") as e:
        Store(path)
    assert e.value.reason == "schema"


def test_samples_round_trip_exactly_with_derived_valve_bits(st):
    rows = [sample(s, ch) for s in range(50) for ch in (1, 2)]
    assert st.add_samples(rows) == 100
    got = st.samples("dev1", 2)
    assert [r["seq"] for r in got] == list(range(50))
    for want, have in zip([r for r in rows if r["channel"] == 2], got, strict=True):
        for key, value in want.items():
            assert have[key] == value, key
        assert have["fill"] == want["valves"] & 1
        assert have["vent"] == want["valves"] >> 1 & 1
        assert have["flags"] == 0
    assert set(got[0]) == set(SAMPLE_COLUMNS)


def test_a_replayed_sample_is_stored_once(st):
    assert st.add_samples([sample(s) for s in range(10)]) == 10
    assert st.add_samples([sample(s, flags=1) for s in range(5, 15)]) == 5
    got = st.samples("dev1", 1)
    assert [r["seq"] for r in got] == list(range(15))
    # The first copy stays; the replayed copy of 5..9 changed nothing.
    assert [r["flags"] for r in got] == [0] * 10 + [1] * 5


def test_samples_come_back_in_time_order_whatever_the_arrival_order(st):
    st.add_samples([sample(s) for s in range(20, 30)])
    st.add_samples([sample(s, flags=1) for s in range(0, 20)])  # a replay after a reconnect
    assert [r["seq"] for r in st.samples("dev1", 1)] == list(range(30))


@pytest.mark.parametrize(
    "bad, reason, words",
    [
        ({"pressure_pa": "5 MPa"}, "invalid", "pressure_pa"),
        ({"utc": None}, "invalid", "utc"),
        ({"utc": float("nan")}, "invalid", "utc"),
        ({"channel": 0}, "invalid", "channel"),
        ({"valves": 256}, "invalid", "valves"),
        ({"seq": 2**63}, "invalid", "int"),
        ({"alarms": 1 << 16}, "invalid", "alarms"),
        ({"device": "nobody"}, "unknown", "no device named 'nobody'"),
    ],
)
def test_a_bad_row_rejects_its_whole_batch(st, bad, reason, words):
    st.add_samples([sample(0)])
    batch = [sample(s) for s in range(1, 10)] + [{**sample(10), **bad}]
    with pytest.raises(StoreError) as e:
        st.add_samples(batch)
    assert e.value.reason == reason
    assert words in str(e.value)
    assert count(st) == 1
    assert st.add_samples(batch[:-1]) == 9  # and the store goes on


def test_a_row_missing_a_field_names_the_row_and_field(st):
    row = sample(3)
    del row["raw"]
    with pytest.raises(StoreError, match=r"sample row 1 has no 'raw'"):
        st.add_samples([sample(2), row])
    with pytest.raises(StoreError, match="not a mapping"):
        st.add_samples([(1, 2, 3)])
    assert count(st) == 0


def test_a_locked_database_is_a_clear_error_and_passes(st, tmp_path):
    st.add_samples([sample(0)])
    other = sqlite3.connect(tmp_path / "rec.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a second writer holds the write lock
    try:
        with pytest.raises(StoreError) as e:
            st.add_samples([sample(s) for s in range(10)])
        assert e.value.reason == "locked"
        assert "another writer" in str(e.value)
        assert "nothing was written" in str(e.value)
        # Reads go on while the other writer holds the lock (WAL).
        assert len(st.samples("dev1", 1)) == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert st.add_samples([sample(s) for s in range(10)]) == 9


def test_a_full_disk_is_a_clear_error_writes_nothing_and_passes(st):
    st.add_samples([sample(s) for s in range(10)])
    pages = os.path.getsize(st.path) // 4096
    st.set_max_bytes((pages + 2) * 4096)
    big = [sample(s) for s in range(10, 5010)]
    with pytest.raises(StoreError) as e:
        st.add_samples(big)
    assert e.value.reason == "full"
    assert "database or disk is full" in str(e.value)
    assert "free space" in str(e.value)
    assert count(st) == 10
    assert st.last_seq("dev1", "telemetry") == 9
    st.set_max_bytes(None)  # the cause is gone: room again
    assert st.add_samples(big) == 5000
    assert count(st) == 5010


def test_last_seq_per_stream(st):
    assert st.last_seq("dev1", "telemetry") is None
    assert st.last_seq("dev1", 1) is None
    st.add_samples([sample(s, ch) for s in range(7) for ch in (1, 3)])
    st.add_samples([sample(9, 2)])
    assert st.last_seq("dev1", "TELEMETRY") == 9
    assert st.last_seq("dev1", 0) == 9
    st.add_events([event(4), event(2)])
    assert st.last_seq("dev1", "event") == 4
    with pytest.raises(StoreError, match="unknown stream"):
        st.last_seq("dev1", "bogus")
    with pytest.raises(StoreError, match="no device named"):
        st.last_seq("dev2", 0)


def event(seq: int, **over: object) -> dict:
    row = {
        "device": "dev1",
        "event_seq": seq,
        "device_time_ms": 1000 + seq,
        "utc": T0 + seq,
        "kind": "TRIP",
        "channel": 1,
        "code": 0,
        "a": 6_100_000,
        "b": 6_000_000,
        "c": 50,
    }
    row.update(over)
    return row


def test_events_are_decoded_filtered_and_kept_once(st):
    st.upsert_device("dev2", utc=T0)
    assert st.add_events([event(1), event(2, kind=5, a=1_800_000, b=2_000_000, c=3000)]) == 2
    assert st.add_events([event(2), event(3, device="dev2", kind=1, text="hello")]) == 1
    assert not st.add_event(**event(1))
    got = st.events()
    assert [(e["device"], e["event_seq"]) for e in got] == [("dev1", 1), ("dev1", 2), ("dev2", 3)]
    assert got[0]["kind"] == "TRIP"
    assert got[0]["text"] == ("ch 1 TRIP: OVERPRESSURE at 6.1 MPa, trip level 6 MPa, after 50 ms")
    assert got[1]["text"] == "ch 1 EXCURSION: down to 1.8 MPa under setpoint 2 MPa for 3000 ms"
    assert got[2]["text"] == "hello"
    assert [e["event_seq"] for e in st.events(since_utc=T0 + 2)] == [2, 3]
    assert [e["event_seq"] for e in st.events(device="dev2")] == [3]
    with pytest.raises(StoreError, match="unknown event kind"):
        st.add_events([event(9, kind="NOPE")])
    assert st.add_events([event(10, kind=200)]) == 1  # a newer firmware's kind stays a number
    assert st.events(since_utc=T0 + 10)[0]["kind"] == "200"


def test_describe_event_covers_every_kind():
    for number, name in __import__("isopress.protocol.wire", fromlist=["EVENTS"]).EVENTS:
        text = describe_event(number, 2, 4, 1_500_000, 2, 3)
        assert text.startswith(f"ch 2 {name}: ")
    assert describe_event("BOOT", 0, 1, 0x1234, 7, 0) == (
        "BOOT: reset cause 1, config CRC 0x1234, boot id 7"
    )
    assert "leak rate -12 Pa/s" in describe_event("ALARM_RAISED", 1, 4, 5_000_000, -12, 0)


def test_devices_channels_and_calibrations(st):
    st.upsert_device("dev1", utc=T0 + 50, fw_version="0.2.0", boot_id=77)
    st.upsert_device("dev1", utc=T0 - 5)
    d = st.device("dev1")
    assert d["board"] == "pico" and d["board_id"] == "0001020304050607"
    assert d["fw_version"] == "0.2.0" and d["boot_id"] == 77
    assert (d["first_seen_utc"], d["last_seen_utc"]) == (T0 - 5, T0 + 50)
    st.add_samples([sample(5000)])  # utc T0 + 100
    assert st.device("dev1")["last_seen_utc"] == T0 + 100
    st.upsert_channel("dev1", 1, kind=1, sensor=1, full_scale_pa=10_000_000, utc=T0)
    st.upsert_channel("dev1", 2, kind="UNIAXIAL", sensor="LOAD_CELL", full_scale_pa=5, utc=T0)
    assert [(c["channel"], c["kind"], c["sensor"]) for c in st.channels("dev1")] == [
        (1, "ISOSTATIC", "RATIOMETRIC_0_5_4_5V"),
        (2, "UNIAXIAL", "LOAD_CELL"),
    ]
    with pytest.raises(StoreError, match="unknown channel kind"):
        st.upsert_channel("dev1", 3, kind="BARREL", sensor=1, full_scale_pa=1, utc=T0)
    cal = {"points": [[100, 0], [30000, 10_000_000]], "tare": 12}
    st.add_calibration("dev1", 1, utc=T0, config_crc=0xBEEF, calibration=cal)
    assert st.calibrations("dev1", 1)[0]["calibration"] == cal
    with pytest.raises(StoreError, match="not plain JSON"):
        st.add_calibration("dev1", 1, utc=T0, config_crc=1, calibration={"x": float("inf")})
    assert len(st.calibrations("dev1")) == 1


def test_runs_narrow_sample_reads(st):
    st.add_samples([sample(s) for s in range(100)] + [sample(s, 2) for s in range(100)])
    run = st.add_run(cell_id="LPSCl-07", device="dev1", channel=1, started_utc=T0 + 0.5)
    assert st.run(run)["stopped_utc"] is None
    assert [r["seq"] for r in st.samples("dev1", 1, run=run)] == list(range(25, 100))
    st.stop_run(run, T0 + 1.0)
    assert [r["seq"] for r in st.samples("dev1", 1, run=run)] == list(range(25, 50))
    assert [r["seq"] for r in st.samples("dev1", 1, run=run, since_utc=T0 + 0.9)] == list(
        range(45, 50)
    )
    with pytest.raises(StoreError, match="already stopped"):
        st.stop_run(run, T0 + 2)
    with pytest.raises(StoreError, match="not dev1 channel 2"):
        st.samples("dev1", 2, run=run)
    with pytest.raises(StoreError, match="no run 999"):
        st.samples("dev1", 1, run=999)
    late = st.add_run(cell_id="c2", device="dev1", channel=2, started_utc=T0 + 5)
    with pytest.raises(StoreError, match="before it started"):
        st.stop_run(late, T0)
    assert [r["id"] for r in st.runs("dev1")] == [run, late]


def test_time_range_is_half_open_and_limit_applies(st):
    st.add_samples([sample(s) for s in range(100)])
    got = st.samples("dev1", 1, since_utc=T0 + 0.2, until_utc=T0 + 0.4)
    assert [r["seq"] for r in got] == list(range(10, 20))
    assert len(st.samples("dev1", 1, limit=7)) == 7
    with pytest.raises(StoreError, match="limit"):
        st.samples("dev1", 1, limit=-1)


def test_unknown_device_or_channel_on_read(st):
    with pytest.raises(StoreError, match=r"no device named 'devX'.*known: dev1") as e:
        st.samples("devX", 1)
    assert e.value.reason == "unknown"
    with pytest.raises(StoreError, match="has no channel 4"):
        st.samples("dev1", 4)


def test_commands_gaps_and_cycler_events(st):
    cid = st.add_command(
        utc=T0,
        client="api:alice",
        device="dev1",
        channel=1,
        message="SET_SETPOINT",
        args={"pressure": 2_000_000, "rate": 100_000},
        seq=10,
    )
    st.set_command_result(cid, 0, T0 + 0.05)
    got = st.commands()[0]
    assert got["args"] == {"pressure": 2_000_000, "rate": 100_000}
    assert (got["result"], got["result_utc"], got["seq"]) == ("OK", T0 + 0.05, 10)
    with pytest.raises(StoreError, match="no command 99"):
        st.set_command_result(99, "TIMEOUT", T0)
    with pytest.raises(StoreError, match="seq"):
        st.add_command(utc=T0, client="x", device="dev1", message="M", args={}, seq=70000)

    st.add_gap(device="dev1", stream=0, first_seq=10, last_seq=19, detected_utc=T0, reason="ring")
    with pytest.raises(StoreError, match="last_seq"):
        st.add_gap(device="dev1", stream=0, first_seq=5, last_seq=4, detected_utc=T0, reason="")
    assert [(g["stream"], g["first_seq"], g["last_seq"]) for g in st.gaps()] == [
        ("TELEMETRY", 10, 19)
    ]

    st.add_cycler_event(device="dev1", channel=1, utc=T0 + 3, kind="CYCLE", cycle=2)
    st.add_cycler_event(device="dev1", channel=1, utc=T0 + 1, kind="CYCLE", cycle=1)
    st.add_cycler_event(device="dev1", channel=1, utc=T0 + 2, kind="PAUSE")
    assert [c["cycle"] for c in st.cycler_events("dev1", 1)] == [1, None, 2]
    assert [c["cycle"] for c in st.cycler_events("dev1", 1, since_utc=T0 + 2)] == [None, 2]


def test_readonly_store_reads_and_refuses_writes(st, tmp_path):
    st.add_samples([sample(s) for s in range(3)])
    with Store(tmp_path / "rec.sqlite", readonly=True) as ro:
        assert len(ro.samples("dev1", 1)) == 3
        with pytest.raises(StoreError) as e:
            ro.add_samples([sample(9)])
        assert e.value.reason == "readonly"
    with pytest.raises(StoreError, match="no database at"):
        Store(tmp_path / "missing.sqlite", readonly=True)
    with pytest.raises(StoreError, match="exists and is"):
        Store(tmp_path / "no" / "such" / "dir.sqlite")


def test_closed_store_says_so(tmp_path):
    st = Store(tmp_path / "c.sqlite")
    st.close()
    st.close()
    with pytest.raises(StoreError, match="closed"):
        st.devices()


def test_batches_stream_in_order_and_readers_do_not_block_the_writer(st):
    st.add_samples([sample(s) for s in range(1000)])
    batches = st.sample_batches("dev1", 1, batch=64)
    first = next(batches)
    # A write commits while the read snapshot is open; the read is unaffected.
    st.add_samples([sample(s) for s in range(1000, 1100)])
    seqs = [r[2] for r in first] + [r[2] for b in batches for r in b]
    assert seqs == list(range(1000))
    assert count(st) == 1100


def test_reads_from_other_threads(st):
    st.add_samples([sample(s) for s in range(10)])
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            seen.append(len(st.samples("dev1", 1)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    st.add_samples([sample(s) for s in range(10, 20)])
    for t in threads:
        t.join()
    assert not errors
    assert all(n in (10, 20) for n in seen) and len(seen) == 4


def test_a_thread_per_read_does_not_pile_up_connections(st):
    st.add_samples([sample(0)])
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(40):  # as a thread-per-request HTTP server would
        t = threading.Thread(target=st.samples, args=("dev1", 1))
        t.start()
        t.join()
    assert len(os.listdir("/proc/self/fd")) - fds < 10


WRITER = textwrap.dedent(
    """
    import sys
    from isopress.store import Store
    st = Store(sys.argv[1])
    st.upsert_device("dev1", utc=0.0)
    seq = 0
    while True:
        rows = [
            {"device": "dev1", "channel": 1, "seq": seq + i, "device_time_ms": seq + i,
             "utc": float(seq + i), "pressure_pa": seq + i, "raw": 0, "setpoint_pa": 0,
             "valves": 0, "mode": 0, "alarms": 0}
            for i in range(50)
        ]
        st.add_samples(rows)
        seq += 50
        print(seq, flush=True)
    """
)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_kill_9_loses_no_committed_sample(tmp_path, sync):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.replace("Store(sys.argv[1])", f"Store(sys.argv[1], sync={sync!r})"))
    path = tmp_path / "kill.sqlite"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout
    committed = 0
    for line in proc.stdout:
        committed = int(line)
        if committed >= 2000:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(path) as st:
        n = st.sample_count("dev1", 1)
        assert n >= committed and n % 50 == 0  # every reported batch, and no half batch
        assert st.last_seq("dev1", 0) == n - 1
