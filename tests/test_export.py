"""`isopress export`: what is read back equals what the store holds."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from isopress import export
from isopress.store import SAMPLE_COLUMNS, Store

T0 = 1_760_000_000.0


def sample(seq: int, channel: int, device: str = "dev1") -> dict:
    return {
        "device": device,
        "channel": channel,
        "seq": seq,
        "device_time_ms": 10_000 + seq * 20,
        "utc": T0 + seq * 0.02 + channel * 1e-4,
        "pressure_pa": 5_000_000 + (seq * 7919) % 3001 - 1500,
        "raw": -(seq * 31) % 65536,
        "setpoint_pa": 5_000_000 if seq < 150 else 2_000_000,
        "valves": seq % 4,
        "mode": 1,
        "alarms": 0x40 if 90 <= seq < 95 else 0,
        "flags": 1 if seq % 50 == 0 else 0,
    }


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "rec.sqlite"
    with Store(path) as st:
        st.upsert_device("dev1", utc=T0)
        st.upsert_device("dev2", utc=T0)
        st.upsert_channel("dev1", 3, kind=1, sensor=1, full_scale_pa=10**7, utc=T0)
        # Channel 1 arrives out of order (a replay after a reconnect).
        st.add_samples([sample(s, 1) for s in range(100, 200)])
        st.add_samples([sample(s, 1) for s in range(100)])
        st.add_samples([sample(s, 2) for s in range(200)])
        st.add_samples([sample(s, 1, "dev2") for s in range(10)])
        st.add_run(cell_id="LPSCl-07", device="dev1", channel=1, started_utc=T0 + 1.0)
        st.stop_run(1, T0 + 3.0)
        st.add_cycler_event(device="dev1", channel=1, utc=T0 + 0.5, kind="CYCLE", cycle=1)
        st.add_cycler_event(device="dev1", channel=1, utc=T0 + 1.5, kind="PAUSE")
        st.add_cycler_event(device="dev1", channel=1, utc=T0 + 2.0, kind="CYCLE", cycle=2)
        for seq, (dev, ch, kind) in enumerate(
            [("dev1", 1, "TRIP"), ("dev1", 2, "EXCURSION"), ("dev2", 1, "BOOT"), ("dev1", 1, 3)]
        ):
            st.add_event(
                device=dev,
                event_seq=seq,
                device_time_ms=seq,
                utc=T0 + seq,
                kind=kind,
                channel=ch,
                code=0,
                a=1,
                b=2,
                c=3,
            )
    return path


def stored(db: Path, device: str, channel: int, **kw: object) -> list[dict]:
    with Store(db, readonly=True) as st:
        return st.samples(device, channel, **kw)


def go(db: Path, out: Path, fmt: str, *extra: str) -> int:
    return export.main(["export", "--db", str(db), "--format", fmt, "--out", str(out), *extra])


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def num(text: str) -> int | float | None:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def cycle_at(utc: float) -> int | None:
    return 2 if utc >= T0 + 2.0 else 1 if utc >= T0 + 0.5 else None


def test_bdf_csv_reads_back_exactly(db, tmp_path, capsys):
    out = tmp_path / "ch2.bdf.csv"
    assert go(db, out, "bdf-csv", "--device", "dev1", "--channel", "2") == 0
    assert "wrote 200 samples" in capsys.readouterr().out
    header, rows = read_csv(out)
    # No cycler events on channel 2: no cycle column.
    assert header == list(export.BDF_COLUMNS)
    want = stored(db, "dev1", 2)
    assert len(rows) == len(want) == 200
    t0 = want[0]["utc"]
    for row, s in zip(rows, want, strict=True):
        unix, test, p, sp, flags = map(num, row)
        assert unix == s["utc"]
        assert test == s["utc"] - t0
        assert (p, sp, flags) == (s["pressure_pa"], s["setpoint_pa"], s["alarms"])


def test_bdf_parquet_with_run_and_cycle_count(db, tmp_path):
    out = tmp_path / "run1.bdf.parquet"
    assert go(db, out, "bdf-parquet", "--run", "1") == 0
    table = pq.read_table(out)
    assert table.column_names == [*export.BDF_COLUMNS, export.CYCLE]
    cols = table.to_pydict()
    want = stored(db, "dev1", 1, run=1)
    assert [s["seq"] for s in want] == list(range(50, 150))  # 1 s to 3 s, in order
    assert cols[export.UNIX_TIME] == [s["utc"] for s in want]
    assert cols[export.TEST_TIME] == [s["utc"] - (T0 + 1.0) for s in want]  # from run start
    assert cols[export.PRESSURE] == [s["pressure_pa"] for s in want]
    assert cols[export.SETPOINT] == [s["setpoint_pa"] for s in want]
    assert cols[export.FLAGS] == [s["alarms"] for s in want]
    assert cols[export.CYCLE] == [cycle_at(s["utc"]) for s in want]
    assert set(cols[export.CYCLE]) == {1, 2}
    meta = table.schema.metadata
    assert meta[b"isopress.cell_id"] == b"LPSCl-07"


def test_cycle_count_before_the_first_cycler_event_is_empty(db, tmp_path):
    out = tmp_path / "ch1.bdf.csv"
    assert go(db, out, "bdf-csv", "--device", "dev1", "--channel", "1") == 0
    header, rows = read_csv(out)
    assert header[-1] == export.CYCLE
    cycles = [num(r[-1]) for r in rows]
    want = stored(db, "dev1", 1)
    assert cycles == [cycle_at(s["utc"]) for s in want]
    assert cycles[0] is None and cycles[-1] == 2


def test_batches_smaller_than_the_data_change_nothing(db, tmp_path, monkeypatch):
    whole, pieces = tmp_path / "whole.csv", tmp_path / "pieces.csv"
    assert go(db, whole, "csv") == 0
    monkeypatch.setattr(export, "BATCH", 7)
    assert go(db, pieces, "csv") == 0
    assert whole.read_bytes() == pieces.read_bytes()
    one, few = tmp_path / "one.parquet", tmp_path / "few.parquet"
    monkeypatch.setattr(export, "BATCH", 50_000)
    assert go(db, one, "bdf-parquet", "--device", "dev1", "--channel", "1") == 0
    monkeypatch.setattr(export, "BATCH", 13)
    assert go(db, few, "bdf-parquet", "--device", "dev1", "--channel", "1") == 0
    assert pq.read_table(one).equals(pq.read_table(few))
    assert pq.ParquetFile(few).metadata.num_row_groups > 1


def test_csv_has_every_column_of_every_selected_channel(db, tmp_path):
    out = tmp_path / "all.csv"
    assert go(db, out, "csv") == 0
    header, rows = read_csv(out)
    assert header == [*SAMPLE_COLUMNS, "cycle"]
    want = [
        {**s, "cycle": cycle_at(s["utc"]) if (d, c) == ("dev1", 1) else None}
        for d, c in (("dev1", 1), ("dev1", 2), ("dev2", 1))
        for s in stored(db, d, c)
    ]
    assert len(rows) == len(want) == 410
    for row, s in zip(rows, want, strict=True):
        got = dict(zip(header, row, strict=True))
        assert got.pop("device") == s["device"]
        assert {k: num(v) for k, v in got.items()} == {k: s[k] for k in got}

    out2 = tmp_path / "dev1.csv"
    until = "2025-10-09T08:53:22Z"
    assert go(db, out2, "csv", "--device", "dev1", "--since", "1760000001", "--until", until) == 0
    _, rows = read_csv(out2)
    # 1760000002 is 2025-10-09T08:53:22Z: one second of each of dev1's two channels.
    assert {(r[0], r[1]) for r in rows} == {("dev1", "1"), ("dev1", "2")}
    assert all(T0 + 1 <= float(r[4]) < T0 + 2 for r in rows)
    assert len(rows) == 100


def test_events_export(db, tmp_path):
    out = tmp_path / "ev.csv"
    assert go(db, out, "events") == 0
    header, rows = read_csv(out)
    assert header == list(export.EVENT_COLUMNS)
    assert [(r[0], r[1], r[4]) for r in rows] == [
        ("dev1", "0", "TRIP"),
        ("dev1", "1", "EXCURSION"),
        ("dev2", "2", "BOOT"),
        ("dev1", "3", "ALARM_CLEARED"),
    ]
    out = tmp_path / "ev1.csv"
    assert go(db, out, "events", "--device", "dev1", "--channel", "1") == 0
    assert [r[1] for r in read_csv(out)[1]] == ["0", "3"]
    assert go(db, out, "events", "--run", "1") == 0  # channel 1 from 1 s to 3 s
    assert [r[1] for r in read_csv(out)[1]] == []


def test_empty_selection_writes_headers_and_says_so(db, tmp_path, capsys):
    out = tmp_path / "none.bdf.csv"
    code = go(db, out, "bdf-csv", "--device", "dev1", "--channel", "2", "--since", "2030-01-01")
    assert code == 0
    assert "no samples match" in capsys.readouterr().err
    header, rows = read_csv(out)
    assert header == list(export.BDF_COLUMNS) and rows == []
    pout = tmp_path / "none.bdf.parquet"
    assert go(db, pout, "bdf-parquet", "--device", "dev2", "--channel", "1", "--until", "1000") == 0
    table = pq.read_table(pout)
    assert table.num_rows == 0 and table.column_names == list(export.BDF_COLUMNS)
    # The described channel 3 has no samples yet: a file with headers, not an error.
    assert go(db, out, "bdf-csv", "--device", "dev1", "--channel", "3") == 0


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--device", "devX", "--channel", "1"], "no device named 'devX'"),
        (["--device", "dev1", "--channel", "9"], "has no channel 9"),
        (["--run", "42"], "no run 42"),
        (["--run", "1", "--channel", "2"], "run 1 is on dev1 channel 1"),
        (["--device", "dev1"], "one cell per file"),
        ([], "one cell per file"),
        (["--device", "dev1", "--channel", "1", "--since", "5", "--until", "4"], "before"),
    ],
)
def test_bad_selections_exit_2_and_write_nothing(db, tmp_path, capsys, extra, words):
    out = tmp_path / "x.bdf.csv"
    assert go(db, out, "bdf-csv", *extra) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    "extra",
    [["--since", "yesterday"], ["--channel", "0"], ["--run", "one"], ["--format", "xlsx"]],
)
def test_bad_arguments_are_usage_errors(db, tmp_path, extra, capsys):
    argv = ["export", "--db", str(db), "--out", str(tmp_path / "x")]
    if "--format" not in extra:
        argv += ["--format", "csv"]
    with pytest.raises(SystemExit) as e:
        export.main(argv + extra)
    assert e.value.code == 2
    assert "isopress export: error: argument" in capsys.readouterr().err


def test_missing_database_and_unwritable_output(db, tmp_path, capsys):
    assert go(tmp_path / "nope.sqlite", tmp_path / "x.csv", "csv") == 3
    assert "no database at" in capsys.readouterr().err
    assert go(db, tmp_path / "no" / "dir" / "x.csv", "csv") == 1
    assert "cannot write" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite").exists()  # export never creates a database


def test_time_arguments():
    assert export.parse_time("1760000000.25") == 1760000000.25
    assert export.parse_time("2025-10-09T08:53:20Z") == T0
    assert export.parse_time("2025-10-09T10:53:20+02:00") == T0
    assert export.parse_time("2025-10-09T08:53:20") == T0  # naive is UTC
    for bad in ("soon", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            export.parse_time(bad)


def test_runs_as_a_module(db, tmp_path):
    out = tmp_path / "m.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "isopress.export",
            "export",
            "--db",
            str(db),
            "--format",
            "events",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 4 events" in done.stdout


def test_add_parser_fits_a_parent_command():
    parent = argparse.ArgumentParser(prog="isopress")
    sub = parent.add_subparsers(dest="command", required=True)
    export.add_parser(sub)
    args = parent.parse_args(["export", "--db", "d", "--format", "csv", "--out", "o"])
    assert args.func is export.run
