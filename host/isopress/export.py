"""`isopress export`: the record as files other tools read.

Formats:
- `bdf-csv`, `bdf-parquet`: one holder channel in Battery Data Format columns
  ("Quantity / Unit" headers, SI units), so the pressure merges with the
  cycler's own BDF file on `Unix Time / s`. BDF holds one cell per file, so
  these need one channel: `--run`, or `--device` and `--channel`.
- `csv`: every stored column of the selected samples, for our own tools.
- `events`: the device events as CSV.

Exports stream: samples are read in batches on a read-only connection and
written as they come, so a month of 50 Hz telemetry never sits in memory, and
a bridge writing to the same database is never held up. The file appears
under its name only once complete (written beside it, then renamed).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from isopress import __version__
from isopress.store import SAMPLE_COLUMNS, Store, StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3
FORMATS = ("bdf-csv", "bdf-parquet", "csv", "events")

# BDF names: "Unix Time / s", "Test Time / s", "Applied Pressure / Pa" and
# "Cycle Count / 1" are the specification's own labels; the setpoint and the
# alarm flags have none there, so they follow its "Quantity / Unit" pattern.
UNIX_TIME = "Unix Time / s"
TEST_TIME = "Test Time / s"
PRESSURE = "Applied Pressure / Pa"
SETPOINT = "Setpoint Pressure / Pa"
FLAGS = "Flags / 1"
CYCLE = "Cycle Count / 1"
BDF_COLUMNS = (UNIX_TIME, TEST_TIME, PRESSURE, SETPOINT, FLAGS)

CSV_COLUMNS = (*SAMPLE_COLUMNS, "cycle")
EVENT_COLUMNS = Store.EVENT_COLUMNS

BATCH = 50_000


class ExportError(Exception):
    """The export cannot run as asked; `code` is the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_time(text: str) -> float:
    """UTC seconds from `1760000000.5` or ISO 8601 (`2025-10-09T12:00:00Z`; naive = UTC)."""
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give UTC seconds (1760000000.5) or ISO 8601 (2025-10-09T12:00:00Z)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: not a time")
    return value


def _channel(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 255:
        raise argparse.ArgumentTypeError(f"{text!r}: channels are numbered 1 to 255")
    return n


def _run_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a run is given by its number") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `export` to the `isopress` command's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="write samples or events as BDF (CSV, Parquet), CSV",
        description=(
            "Write the bridge's record as files: bdf-csv and bdf-parquet for one "
            "holder channel in Battery Data Format columns, csv with every stored "
            "column, events as CSV. Times are UTC seconds or ISO 8601; the range is "
            "since <= t < until."
        ),
    )
    p.add_argument("--db", required=True, metavar="FILE", help="the bridge's database")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument("--device", metavar="D", help="device name")
    p.add_argument("--channel", type=_channel, metavar="C", help="channel number")
    p.add_argument("--run", type=_run_id, metavar="R", help="run number: its channel and times")
    p.add_argument("--since", type=parse_time, metavar="T", help="from this time (inclusive)")
    p.add_argument("--until", type=parse_time, metavar="T", help="to this time (exclusive)")
    p.set_defaults(func=run)
    return p


@dataclass
class Selection:
    device: str | None
    channel: int | None
    run: dict | None
    since: float | None
    until: float | None

    def describe(self) -> str:
        parts = []
        if self.run is not None:
            parts.append(f"run {self.run['id']} (cell {self.run['cell_id']})")
        if self.device is not None:
            parts.append(f"device {self.device}")
        if self.channel is not None:
            parts.append(f"channel {self.channel}")
        if self.since is not None:
            parts.append(f"since {self.since}")
        if self.until is not None:
            parts.append(f"until {self.until}")
        return ", ".join(parts) or "everything"


def _select(st: Store, args: argparse.Namespace) -> Selection:
    sel = Selection(args.device, args.channel, None, args.since, args.until)
    if sel.since is not None and sel.until is not None and sel.since >= sel.until:
        raise ExportError(EXIT_USAGE, f"--since ({sel.since}) must be before --until ({sel.until})")
    if args.run is not None:
        sel.run = st.run(args.run)
        for key in ("device", "channel"):
            given = getattr(args, key)
            if given is not None and given != sel.run[key]:
                raise ExportError(
                    EXIT_USAGE,
                    f"run {args.run} is on {sel.run['device']} channel {sel.run['channel']}, "
                    f"not {key} {given}",
                )
        sel.device, sel.channel = sel.run["device"], sel.run["channel"]
    if sel.device is not None:
        st.device(sel.device)  # unknown -> StoreError naming the known ones
        if sel.channel is not None:
            st.check_channel(sel.device, sel.channel)
    return sel


def _pairs(st: Store, sel: Selection) -> list[tuple[str, int]]:
    pairs = st.sample_channels()
    if sel.device is not None:
        pairs = [p for p in pairs if p[0] == sel.device]
    if sel.channel is not None:
        pairs = [p for p in pairs if p[1] == sel.channel]
    if sel.device is not None and sel.channel is not None and not pairs:
        pairs = [(sel.device, sel.channel)]
    if sel.channel is not None and not pairs:
        raise ExportError(EXIT_USAGE, f"no device has a channel {sel.channel}")
    return pairs


def _one_channel(st: Store, sel: Selection, fmt: str) -> tuple[str, int]:
    pairs = _pairs(st, sel)
    if len(pairs) == 1:
        return pairs[0]
    have = ", ".join(f"{d} channel {c}" for d, c in pairs) or "no channels"
    raise ExportError(
        EXIT_USAGE,
        f"{fmt} holds one cell per file: give --run R, or --device D and --channel C "
        f"(this selection has {have})",
    )


class _Cycles:
    """The cycler's cycle count at any time: the last cycle given at or before it."""

    def __init__(self, st: Store, device: str, channel: int, until: float | None) -> None:
        known = [
            (e["utc"], e["cycle"])
            for e in st.cycler_events(device, channel, until_utc=until)
            if e["cycle"] is not None
        ]
        self.times = [t for t, _ in known]
        self.cycles = [c for _, c in known]

    def __bool__(self) -> bool:
        return bool(self.times)

    def at(self, utc: float) -> int | None:
        i = bisect_right(self.times, utc)
        return self.cycles[i - 1] if i else None


def _samples(st: Store, device: str, channel: int, sel: Selection) -> Iterator[list[tuple]]:
    return st.sample_batches(
        device,
        channel,
        since_utc=sel.since,
        until_utc=sel.until,
        run=None if sel.run is None else sel.run["id"],
        batch=BATCH,
    )


_UTC = SAMPLE_COLUMNS.index("utc")
_PRESSURE = SAMPLE_COLUMNS.index("pressure_pa")
_SETPOINT = SAMPLE_COLUMNS.index("setpoint_pa")
_ALARMS = SAMPLE_COLUMNS.index("alarms")


def _bdf_rows(
    st: Store, sel: Selection, device: str, channel: int
) -> tuple[list[str], Iterator[list[tuple]]]:
    """BDF header and batches of BDF rows for one channel."""
    cycles = _Cycles(st, device, channel, sel.until)
    header = [*BDF_COLUMNS, CYCLE] if cycles else list(BDF_COLUMNS)
    start = None if sel.run is None else sel.run["started_utc"]

    def rows() -> Iterator[list[tuple]]:
        nonlocal start
        for batch in _samples(st, device, channel, sel):
            if start is None:
                start = batch[0][_UTC]
            t0 = start
            out = [(r[_UTC], r[_UTC] - t0, r[_PRESSURE], r[_SETPOINT], r[_ALARMS]) for r in batch]
            if cycles:
                out = [(*o, cycles.at(o[0])) for o in out]
            yield out

    return header, rows()


def _write_csv(f: IO[str], header: list[str] | tuple[str, ...], batches: Iterator[list]) -> int:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    n = 0
    for batch in batches:
        w.writerows(batch)
        n += len(batch)
    return n


def _write_parquet(path: Path, header: list[str], batches: Iterator[list], meta: dict) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        UNIX_TIME: pa.float64(),
        TEST_TIME: pa.float64(),
        PRESSURE: pa.float64(),
        SETPOINT: pa.float64(),
        FLAGS: pa.int64(),
        CYCLE: pa.int64(),
    }
    schema = pa.schema(
        [pa.field(name, types[name], nullable=name == CYCLE) for name in header],
        metadata={f"isopress.{k}".encode(): str(v).encode() for k, v in meta.items()},
    )
    n = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in batches:
            columns = list(zip(*batch, strict=True))
            writer.write_table(
                pa.Table.from_arrays(
                    [
                        pa.array(col, type=types[name])
                        for name, col in zip(header, columns, strict=True)
                    ],
                    schema=schema,
                )
            )
            n += len(batch)
    return n


def _csv_rows(st: Store, sel: Selection) -> Iterator[list[tuple]]:
    for device, channel in _pairs(st, sel):
        cycles = _Cycles(st, device, channel, sel.until)
        for batch in _samples(st, device, channel, sel):
            yield [(*r, cycles.at(r[_UTC])) for r in batch]


def _event_rows(st: Store, sel: Selection) -> Iterator[list[tuple]]:
    since, until = sel.since, sel.until
    if sel.run is not None:
        since = sel.run["started_utc"] if since is None else max(since, sel.run["started_utc"])
        stop = sel.run["stopped_utc"]
        if stop is not None:
            until = stop if until is None else min(until, stop)
    return st.event_batches(since, sel.device, until_utc=until, channel=sel.channel, batch=BATCH)


def _atomically(out: Path, write: Callable[[Path], int]) -> int:
    """Write to a file beside `out`, then rename: no half file under its name."""
    part = out.with_name(out.name + ".part")
    try:
        n = write(part)
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return n


def export(st: Store, args: argparse.Namespace) -> int:
    """Write the export `args` describes; returns the rows written."""
    sel = _select(st, args)
    out = Path(args.out)
    fmt = args.format
    if fmt in ("bdf-csv", "bdf-parquet"):
        device, channel = _one_channel(st, sel, fmt)
        header, batches = _bdf_rows(st, sel, device, channel)
        if fmt == "bdf-csv":

            def write(path: Path) -> int:
                with open(path, "w", newline="", encoding="utf-8") as f:
                    return _write_csv(f, header, batches)

        else:
            meta = {
                "device": device,
                "channel": channel,
                "run": "" if sel.run is None else sel.run["id"],
                "cell_id": "" if sel.run is None else sel.run["cell_id"],
                "version": __version__,
                "Flags / 1": "alarm bits of the channel (protocol TELEMETRY alarms)",
            }

            def write(path: Path) -> int:
                return _write_parquet(path, header, batches, meta)

    elif fmt == "csv":

        def write(path: Path) -> int:
            with open(path, "w", newline="", encoding="utf-8") as f:
                return _write_csv(f, CSV_COLUMNS, _csv_rows(st, sel))

    else:

        def write(path: Path) -> int:
            with open(path, "w", newline="", encoding="utf-8") as f:
                return _write_csv(f, EVENT_COLUMNS, _event_rows(st, sel))

    n = _atomically(out, write)
    what = "events" if fmt == "events" else "samples"
    if n == 0:
        print(
            f"isopress export: no {what} match ({sel.describe()}); wrote {out} with headers only",
            file=sys.stderr,
        )
    else:
        print(f"wrote {n} {what} to {out}")
    return n


def run(args: argparse.Namespace) -> int:
    """Entry point for `isopress export`: 0 ok, 1 failed, 2 bad usage, 3 database missing."""
    db = Path(args.db)
    if not db.is_file():
        print(f"isopress export: no database at {db}: check --db", file=sys.stderr)
        return EXIT_MISSING
    try:
        with Store(db, readonly=True) as st:
            export(st, args)
    except ExportError as e:
        print(f"isopress export: {e}", file=sys.stderr)
        return e.code
    except StoreError as e:
        print(f"isopress export: {e}", file=sys.stderr)
        return EXIT_USAGE if e.reason in ("unknown", "invalid") else EXIT_FAILED
    except OSError as e:
        print(f"isopress export: cannot write {args.out}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isopress")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
