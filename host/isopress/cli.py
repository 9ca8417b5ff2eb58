"""The `isopress` command.

Exit codes: 0 success; 1 a check or target failed; 2 bad usage (argparse);
3 a needed tool or file is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isopress import __version__, paths

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3


def _write_json(figures: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(figures, indent=2) + "\n")


def _publish(
    figures: dict[str, Any],
    report: str,
    path: str | None,
    write: Callable[[dict[str, Any], Path], None] = _write_json,
) -> None:
    """Prints a bench's report; writes its figures to `path` too when given."""
    print(report)
    if path:
        write(figures, Path(path))
        print(f"wrote {path}")


def cmd_bench_protocol(args: argparse.Namespace) -> int:
    from isopress.bench import protocol

    figures = protocol.run(channels=args.channels, frames=args.frames)
    _publish(figures, protocol.report(figures), args.json)
    return EXIT_OK


def cmd_bench_firmware(args: argparse.Namespace) -> int:
    from isopress.bench import firmware

    figures = firmware.run(hours=args.hours)
    _publish(figures, firmware.report(figures), args.json, firmware.write_json)
    return EXIT_OK


def cmd_bench_bridge(args: argparse.Namespace) -> int:
    from isopress.bench import bridge

    figures = bridge.run_bench(devices=args.devices, seconds=args.seconds)
    _publish(figures, bridge.report(figures), args.json)
    return EXIT_FAILED if bridge.failed(figures) else EXIT_OK


def _channels(text: str) -> int:
    from isopress.codec import MESSAGES

    most = MESSAGES["TELEMETRY"].max_items
    n = int(text)
    if not 1 <= n <= most:
        raise argparse.ArgumentTypeError(f"{n}: a telemetry frame holds 1 to {most} channels")
    return n


def _hours(text: str) -> float:
    h = float(text)
    if not 0 < h <= 24 * 30:
        raise argparse.ArgumentTypeError(f"{h}: hours must be above 0 and at most 720")
    return h


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isopress",
        description="Pressure control and records for solid-state battery cell holders.",
        epilog="Exit codes: 0 ok, 1 a check or target failed, 2 bad usage, 3 tool or file missing.",
    )
    p.add_argument("--version", action="version", version=f"isopress {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from isopress import bridge, calibrate, commands, demo, export, flash, monitor, simulator

    demo.add_parser(sub)
    commands.add_parsers(sub)
    monitor.add_parser(sub)
    calibrate.add_parser(sub)
    simulator.add_parser(sub)
    bridge.add_parser(sub)
    export.add_parser(sub)
    flash.add_parser(sub)

    bench = sub.add_parser("bench", help="measure and print performance figures")
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    proto = suites.add_parser("protocol", help="codec speed and wire size")
    proto.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    proto.add_argument("--channels", type=_channels, default=4, help="channels per frame (4)")
    proto.add_argument(
        "--frames", type=commands.count, default=20_000, help="frames per run (20000)"
    )
    proto.set_defaults(func=cmd_bench_protocol)
    fw = suites.add_parser(
        "firmware", help="heap, allocation, tick time, sim speed, control on the reference plant"
    )
    fw.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    fw.add_argument(
        "--hours", type=_hours, default=24.0, help="simulated hours of the hold test (24)"
    )
    fw.set_defaults(func=cmd_bench_firmware)
    br = suites.add_parser(
        "bridge", help="ingest rate, CPU, latency and clock sync with N simulated boards"
    )
    br.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    br.add_argument("--devices", type=commands.count, default=32, help="simulated boards (32)")
    br.add_argument("--seconds", type=commands.count, default=20, help="measured seconds (20)")
    br.set_defaults(func=cmd_bench_bridge)
    from isopress.bench import runner

    runner.add_parser(suites)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except paths.ToolMissing as e:
        print(f"isopress: {e}", file=sys.stderr)
        return EXIT_MISSING


if __name__ == "__main__":
    sys.exit(main())
