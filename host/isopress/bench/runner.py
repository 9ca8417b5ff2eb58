"""`isopress bench run SCENARIO... [--json FILE] [--plots DIR] [--compare]`

Runs each scenario (tests/scenarios/*.toml, or any file or directory given)
with the real firmware in MicroPython against the plant model in virtual time
(firmware/sim/scenario_run.py), several at once in separate processes,
computes the metrics against the plant's true pressure, checks each
scenario's criteria, and reports a table, a JSON list (one object per
scenario: name, passed, metrics, criteria, and with --compare the baselines'
metrics) and a PNG per scenario. With --compare each scenario also runs
under the two baselines of firmware/sim/baseline.py (a bang-bang switch and
the manual holder), and --plots writes comparison.png beside the others.
With --hil the isopress runs go through the hardware-in-the-loop interface
(host/isopress/hil.py, docs/hil.md) to a board, here the simulated one.

Exit codes: 0 every criterion held; 1 a criterion failed or a run broke;
2 a scenario file is wrong (the message names file and key); 3 MicroPython
is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isopress import paths
from isopress.bench import metrics as metrics_mod
from isopress.bench import scenario as scenario_mod
from isopress.bench.scenario import Scenario, ScenarioError

SCENARIO_RUN = paths.FIRMWARE / "sim" / "scenario_run.py"
HEAP = "8M"  # the unix port sweeps the whole heap: 32M ran 10x slower
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3
HIL_MODES = ("sim-lockstep", "sim-realtime")


@dataclass
class Run:
    """One scenario under one controller."""

    scenario: Scenario
    controller: str
    dir: Path
    hil: str | None = None
    hil_speed: float = 1.0
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    trace: metrics_mod.Trace | None = None
    error: str | None = None
    stderr: str = ""

    @property
    def judged(self) -> bool:
        # The criteria are written for isopress; the baselines are measured.
        return self.controller == "isopress"

    @property
    def passed(self) -> bool | None:
        if not self.judged:
            return None
        return self.error is None and all(v["ok"] for v in self.verdicts)

    @property
    def cost(self) -> float:
        # Longest first keeps both cores busy to the end.
        weight = 1.0 if self.controller == "isopress" else 0.05
        return self.scenario.duration_s * len(self.scenario.channels) * weight

    def start(self) -> None:
        flash = self.dir / "flash"
        flash.mkdir(parents=True, exist_ok=True)
        plan = self.scenario.plan(self.controller, self.dir, flash)
        plan_path = self.dir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        self.started = time.monotonic()
        if self.hil:
            from isopress import hil

            self.proc = hil.spawn_runner(plan_path, self.hil, self.hil_speed)
            return
        self.proc = subprocess.Popen(
            [
                paths.tool("micropython"),
                "-X",
                f"heapsize={HEAP}",
                str(SCENARIO_RUN),
                str(plan_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=paths.micropython_env(SCENARIO_RUN.parent),
        )

    def finish(self) -> None:
        """Reads what the process left and computes the figures."""
        assert self.proc is not None
        _, err = self.proc.communicate()
        self.stderr = (err or b"").decode(errors="replace")
        res_path = self.dir / "result.json"
        if not res_path.exists():
            self.error = f"the run left no result (exit {self.proc.returncode}): {self._tail()}"
            return
        self.result = json.loads(res_path.read_text())
        if "error" in self.result:
            self.error = f"{self.result['error']} {self._tail()}".strip()
            return
        sc = self.scenario
        self.trace = metrics_mod.read_trace(self.dir / "trace.bin", sc.record)
        self.metrics = metrics_mod.compute(
            self.result, self.trace, sc.options, sc.faults, board=self.controller == "isopress"
        )
        self.verdicts = metrics_mod.check(sc.criteria, self.metrics)

    def _tail(self) -> str:
        lines = [x for x in self.stderr.strip().splitlines() if x.strip()]
        return " | ".join(lines[-3:])


def execute(runs: Sequence[Run], jobs: int, progress: bool = True) -> None:
    """Runs them, at most `jobs` at a time, longest first."""
    todo = sorted(runs, key=lambda r: -r.cost)
    active: list[Run] = []
    while todo or active:
        while todo and len(active) < jobs:
            r = todo.pop(0)
            r.start()
            active.append(r)
        time.sleep(0.05)
        for r in list(active):
            assert r.proc is not None
            if r.proc.poll() is None:
                continue
            active.remove(r)
            r.finish()
            if progress:
                took = time.monotonic() - r.started
                state = (
                    "error" if r.error else {True: "ok", False: "FAILED", None: "done"}[r.passed]
                )
                print(
                    f"  {r.scenario.name:<28} {r.controller:<9} {state:<6} {took:6.1f} s wall",
                    flush=True,
                )


# ------------------------------------------------------------------ report


def _f(v: Any, k: float = 1.0, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ",".join(v) if v else "none"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v * k:.{digits}f}"


COLUMNS = (
    # header, metric, scale, digits, width
    ("rms kPa", "rms_error_mpa", 1000.0, 1, 8),
    ("max kPa", "max_error_mpa", 1000.0, 1, 8),
    ("settle s", "settling_time_s", 1.0, 0, 8),
    ("over kPa", "overshoot_mpa", 1000.0, 1, 8),
    ("under kPa", "undershoot_mpa", 1000.0, 1, 9),
    ("below s", "time_below_s", 1.0, 0, 8),
    ("act/h", "actuations_per_hour", 1.0, 0, 7),
    ("gas g", "gas_used_g", 1.0, 1, 7),
    ("act s", "time_to_act_s", 1.0, 2, 7),
)


def table(runs: Sequence[Run]) -> str:
    head = f"{'scenario':<28} {'controller':<9} {'result':<6} {'ch':>2} " + " ".join(
        f"{h:>{w}}" for h, _m, _k, _d, w in COLUMNS
    )
    lines = [head + "  alarms", "-" * (len(head) + 8)]
    for r in runs:
        state = "error" if r.error else {True: "ok", False: "FAIL", None: "-"}[r.passed]
        chans = r.scenario.record if not r.error else [r.scenario.record[0]]
        for ch in chans:
            m = r.metrics
            cells = " ".join(
                f"{_f(m.get(f'ch{ch}.{name}'), k, d):>{w}}" for _h, name, k, d, w in COLUMNS
            )
            alarms = _f(m.get(f"ch{ch}.alarms_raised"))
            lines.append(
                f"{r.scenario.name:<28} {r.controller:<9} {state:<6} {ch:>2} {cells}  {alarms}"
            )
    failed = [r for r in runs if r.passed is False]
    for r in failed:
        lines.append("")
        lines.append(f"{r.scenario.name} ({r.scenario.path}): FAILED")
        if r.error:
            lines.append(f"  run error: {r.error}")
        for v in r.verdicts:
            if not v["ok"]:
                why = f"  ({v['why']})" if v["why"] else ""
                lines.append(f"  {v['text']}: got {_f(v['value'], digits=4)}{why}")
    return "\n".join(lines)


def _clean(v: Any) -> Any:
    # numpy scalars and NaN into plain JSON
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def report(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One object per scenario: its isopress run, the baselines under compare."""
    out: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    for r in runs:
        entry = {
            "controller": r.controller,
            "passed": r.passed,
            "error": r.error,
            "metrics": _clean(r.metrics),
            "criteria": _clean(r.verdicts),
        }
        sc = r.scenario
        if sc.name not in by_name:
            obj = {"name": sc.name, "file": str(sc.path), "description": sc.description}
            by_name[sc.name] = obj
            out.append(obj)
        obj = by_name[sc.name]
        if r.judged:
            obj.update(entry)
            if r.hil:
                obj["hil"] = r.hil
        else:
            obj.setdefault("compare", {})[r.controller] = entry
    return out


def _plots(runs: Sequence[Run], out: Path, compare: bool) -> list[Path]:
    from isopress.bench import plots

    written = []
    by_name: dict[str, list[Run]] = {}
    for r in runs:
        by_name.setdefault(r.scenario.name, []).append(r)
    rows = []
    for name, group in by_name.items():
        ok = [r for r in group if r.trace is not None and len(r.trace)]
        if not ok:
            continue
        sc = ok[0].scenario
        faults = sorted(set(sc.faults.values()))
        written.append(
            plots.scenario(
                name,
                sc.description,
                [(r.controller, r.trace, r.metrics) for r in ok],  # type: ignore[misc]
                faults,
                out / f"{name}.png",
            )
        )
        if compare and not sc.faults:
            for r in ok:
                for ch in sc.record:
                    row = {"scenario": name, "channel": ch, "controller": r.controller}
                    for k in ("rms_error_mpa", "hold_actuations_per_hour", "time_below_pct"):
                        row[k] = r.metrics.get(f"ch{ch}.{k}")
                    rows.append(row)
    if rows:
        written.append(plots.comparison(rows, out / "comparison.png"))
    return written


# --------------------------------------------------------------------- CLI


def add_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers `run` under `isopress bench`."""
    p = bench_sub.add_parser(
        "run",
        help="run bench scenarios: firmware in MicroPython against the plant, in virtual time",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario files or directories")
    p.add_argument("--json", metavar="FILE", type=Path, help="write the results as JSON")
    p.add_argument("--plots", metavar="DIR", type=Path, help="write a PNG per scenario here")
    p.add_argument(
        "--compare", action="store_true", help="also run the bang-bang and manual baselines"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="simulations at once (default: 2, or fewer cores)",
    )
    p.add_argument(
        "--hil",
        choices=HIL_MODES,
        help="run isopress through the hardware-in-the-loop interface to a simulated board",
    )
    p.add_argument(
        "--hil-speed",
        type=float,
        default=1.0,
        metavar="N",
        help="sim-realtime: simulated seconds per wall second (default 1: real time)",
    )
    p.add_argument("--keep", metavar="DIR", type=Path, help="keep each run's plan, trace, result")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        files = scenario_mod.find(args.scenarios)
        if not files:
            raise ScenarioError("no scenario files found in " + " ".join(args.scenarios))
        scenarios = [scenario_mod.load(f) for f in files]
    except ScenarioError as e:
        print(f"isopress bench run: {e}", file=sys.stderr)
        return EXIT_USAGE
    names = [s.name for s in scenarios]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        print(f"isopress bench run: scenario names used twice: {sorted(dup)}", file=sys.stderr)
        return EXIT_USAGE
    if args.hil_speed <= 0:
        print("isopress bench run: --hil-speed must be > 0", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1:
        print("isopress bench run: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.hil:
        bad = [s.name for s in scenarios if s.board_faults]
        if bad:
            print(
                f"isopress bench run: --hil drives the board from outside; scenarios with board "
                f"or link faults run only in the simulator: {bad}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        paths.tool("micropython")
    except paths.ToolMissing as e:
        print(f"isopress bench run: {e}", file=sys.stderr)
        return EXIT_MISSING
    controllers = scenario_mod.CONTROLLERS if args.compare else ("isopress",)
    base = Path(tempfile.mkdtemp(prefix="isopress-bench-"))
    work = args.keep if args.keep else base
    runs = [
        Run(s, c, work / s.name / c, args.hil if c == "isopress" else None, args.hil_speed)
        for s in scenarios
        for c in controllers
    ]
    for r in runs:
        if r.dir.exists():
            shutil.rmtree(r.dir)
        r.dir.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        if not args.quiet:
            print(f"isopress bench run: {len(runs)} run(s), {args.jobs} at a time", flush=True)
        execute(runs, args.jobs, progress=not args.quiet)
        wall = time.monotonic() - t0
        print()
        print(table(runs))
        print(f"\n{len(scenarios)} scenario(s), {len(runs)} run(s) in {wall:.0f} s wall")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report(runs), indent=1) + "\n")
            print(f"wrote {args.json}")
        if args.plots:
            for p in _plots(runs, args.plots, args.compare):
                print(f"wrote {p}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    bad = [r for r in runs if r.passed is False or (r.error and not r.judged)]
    return EXIT_FAILED if bad else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m isopress.bench.runner ...`, until `isopress bench run` is registered."""
    p = argparse.ArgumentParser(prog="isopress bench")
    sub = p.add_subparsers(dest="suite", required=True)
    add_parser(sub)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
