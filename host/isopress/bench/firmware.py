"""`isopress bench firmware`: the firmware's figures, measured in MicroPython.

Runs firmware/sim/bench_fw.py in the MicroPython unix port: the heap after
boot on the 4-channel simulated board, with the modules as `isopress flash`
puts them on a board (.mpy files, and a ROMFS image with `--romfs`), each in
a fresh interpreter; allocation and time per tick and simulation speed; and
the control figures on the reference plant (channel 1, judged against the
plant's true pressure): a 24-hour hold at 5 MPa, a step 5 -> 2 MPa and a step
1 -> 5 MPa. The runs are independent processes, two at a time on this 2-core
machine.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from isopress import flash, paths

BOARD = paths.ROOT / "hardware" / "boards" / "sim.json"
SCRIPT = paths.FIRMWARE / "sim" / "bench_fw.py"

# (figure, target, "max" or "min"): from the firmware issue.
TARGETS = (
    ("heap_after_boot_bytes", 65536, "max"),
    ("alloc_bytes_per_tick", 0, "max"),
    ("hold_rms_error_pct_fs", 0.03, "max"),
    ("hold_max_error_pct_fs", 0.1, "max"),
    ("hold_actuations_per_h", 20, "max"),
    ("step_down_settle_s", 60, "max"),
    ("step_down_undershoot_pct", 0.2, "max"),
    ("step_up_settle_s", 60, "max"),
    ("step_up_overshoot_pct", 0.5, "max"),
)


def _run(args: list[str]) -> dict[str, Any]:
    if args[0] == "heap":
        return _heap()
    with tempfile.TemporaryDirectory(prefix="isopress-bench-") as fs:
        # A small heap on purpose: the unix port's collector sweeps all of it,
        # and a 32 MB heap made the simulation ten times slower than 4 MB.
        cmd = [paths.tool("micropython"), "-X", "heapsize=4M", str(SCRIPT), args[0], str(BOARD)]
        cmd += [fs + "/", *args[1:]]
        out = subprocess.run(
            cmd, env=paths.micropython_env(), capture_output=True, text=True, check=False
        )
    if out.returncode != 0:
        raise RuntimeError(f"bench_fw.py {args[0]} failed:\n{out.stderr or out.stdout}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _boot(modules: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="isopress-bench-") as fs:
        # The board's config as `isopress flash --new-config` writes it.
        flash.write_config(BOARD, Path(fs) / flash.CONFIG)
        cmd = [paths.tool("micropython"), "-X", "heapsize=4M", str(SCRIPT), "heap", str(BOARD)]
        out = subprocess.run(
            [*cmd, fs + "/", modules],
            env=paths.micropython_env(),
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"bench_fw.py heap {modules} failed:\n{out.stderr or out.stdout}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _heap() -> dict[str, Any]:
    # The modules a board gets (its port module aside), compiled as for a
    # board but without -march, so the unix port loads the same bytecode.
    board = flash.Board("sim", "sim", "", BOARD, None)
    sources = [p for p in flash.modules(board) if p.name != flash.MAIN]
    mpy_cross = paths.tool("mpy-cross")
    with tempfile.TemporaryDirectory(prefix="isopress-build-") as build:
        d = Path(build)
        for src in sources:
            flash.compile_module(mpy_cross, src, d / (src.stem + ".mpy"), None)
        image = d / flash.IMAGE
        image.write_bytes(flash.romfs_image(sorted(d.glob("*.mpy"))))
        files = _boot(build)
        rom = _boot(str(image))
        size = image.stat().st_size
    return {
        # Stock firmware: `isopress flash` copies .mpy files, whose bytecode
        # MicroPython loads into the heap.
        "heap_after_boot_bytes": files["heap_bytes"],
        "heap_modules_bytes": files["heap_modules_bytes"],
        "heap_device_bytes": files["heap_device_bytes"],
        # `isopress flash --romfs`: the bytecode stays in flash.
        "heap_after_boot_romfs_bytes": rom["heap_bytes"],
        "heap_modules_romfs_bytes": rom["heap_modules_bytes"],
        "romfs_image_bytes": size,
    }


def run(hours: float = 24.0, jobs: int = 2) -> dict[str, Any]:
    runs = [["heap"], ["resources"], ["hold", str(hours)], ["step_down"], ["step_up"]]
    figures: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for part in pool.map(_run, runs):
            figures.update(part)
    return figures


def check(figures: dict[str, Any]) -> list[str]:
    """The targets this run missed, as sentences."""
    missed = []
    for name, target, kind in TARGETS:
        v = figures.get(name)
        if v is None:
            continue
        if (kind == "max" and v > target) or (kind == "min" and v < target):
            missed.append(f"{name} = {v:.4g} (target {'<=' if kind == 'max' else '>='} {target})")
    return missed


def report(figures: dict[str, Any]) -> str:
    targets = {n: (t, k) for n, t, k in TARGETS}
    lines = ["isopress firmware figures (MicroPython unix port, simulated board)"]
    for name, value in figures.items():
        t = targets.get(name)
        mark = ""
        if t is not None:
            ok = value <= t[0] if t[1] == "max" else value >= t[0]
            sign = "<=" if t[1] == "max" else ">="
            mark = f"   target {sign} {t[0]:g}  {'ok' if ok else 'MISSED'}"
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<28} {shown:>12}{mark}")
    return "\n".join(lines)


def write_json(figures: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(figures, indent=2) + "\n")
