"""`isopress flash`: put the firmware on a board.

Every firmware module (firmware/*.py, not the simulator in firmware/sim) and
the wire table (protocol/wire.py) is compiled with mpy-cross for the board's
architecture (`arch` in hardware/boards/<board>.json); main.py stays source,
because MicroPython runs main.py and not main.mpy. The board profile goes to
the board as /board.json. Everything is copied with mpremote, one file per
call, with a progress line per step.

The order protects a board that is half-way through: main.py is removed first
and copied last, so a flash cut short (unplugged, a copy failed) leaves a
board that boots into the REPL and runs nothing, with its valves held closed
by their gate pull-downs, instead of a mix of old and new modules. Stale
`.py` copies of the compiled modules are removed too: MicroPython imports
`frame.py` before `frame.mpy`, so an old source would shadow the new build.

With `--romfs` the compiled modules go into one ROMFS image instead, deployed
with `mpremote romfs deploy` to the board's ROM partition, from where
MicroPython runs their bytecode in place: less RAM than `.mpy` files, whose
bytecode is loaded into the heap (`isopress bench firmware` measures both).
It needs firmware built with a ROMFS partition (MICROPY_VFS_ROM); mpremote
says "ROMFS is not enabled on this device" otherwise, before anything is
written. The `.mpy` copies on the filesystem are removed, because the current
directory comes before /rom on sys.path. main.py, the profile and the config
stay on the filesystem.

A running isopress board ignores Ctrl-C in its binary link; it stops for the
CR, Ctrl-C pair that mpremote sends first, where no frame can start (see Link
in firmware/port_rp2.py), and main.py then leaves it in the REPL. Close the
bridge first: the serial port can only have one user.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from isopress import paths

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3
BOARDS = paths.ROOT / "hardware" / "boards"
WIRE = paths.PROTOCOL / "wire.py"
MAIN = "main.py"
# Modules that import one board's own module (rp2, esp32) and so only load there.
PORT_ONLY = {"port_rp2.py": "rp2", "port_esp32.py": "esp32", "hx711_pio.py": "rp2"}
# .mpy format version written by mpy-cross 1.2x and read by MicroPython >= 1.20.
MPY_VERSION = 6
MPREMOTE_TIMEOUT_S = 120


class FlashError(Exception):
    """A step failed; `code` is the exit status to return."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Board:
    name: str
    port: str  # firmware HAL port: rp2, esp32
    arch: str  # mpy-cross -march
    profile: Path
    usb: tuple[int, int] | None  # (vid, pid) of its USB serial device


@dataclass(frozen=True)
class Step:
    """One action: compile a module, copy a file, remove files, reset."""

    kind: str  # "compile", "config", "image", "copy", "romfs", "remove", "reset"
    src: Path | None = None
    dst: str = ""  # build file name (compile), path on the board (copy)
    names: tuple[str, ...] = ()  # files on the board (remove)

    def describe(self, arch: str) -> str:
        if self.kind == "compile":
            return f"compile {_rel(self.src)} -> {self.dst} (mpy-cross -march={arch})"
        if self.kind == "config":
            return f"write the profile's default config -> {self.dst} (checked file, CRC)"
        if self.kind == "image":
            return f"build the ROMFS image of the compiled modules -> {self.dst}"
        if self.kind == "romfs":
            return f"deploy {self.dst} to the board's ROMFS partition (mpremote romfs deploy)"
        if self.kind == "copy":
            # A compiled module is copied from the build directory.
            return f"copy {_rel(self.src) if self.src else self.dst} -> :{self.dst}"
        if self.kind == "remove":
            return "remove " + " ".join(":" + n for n in self.names) + " (where present)"
        return "reset the board (main.py starts the new firmware)"

    @property
    def label(self) -> str:
        if self.kind == "remove":
            return "remove old files"
        if self.kind == "reset":
            return "reset"
        if self.kind == "romfs":
            return "romfs deploy"
        return self.dst


CONFIG = "config.json"
IMAGE = "isopress.romfs"


def _rel(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(path.relative_to(paths.ROOT))
    except ValueError:
        return str(path)


def board_names() -> list[str]:
    """Profiles that can be flashed (the simulator's has no architecture)."""
    names = []
    for p in sorted(BOARDS.glob("*.json")):
        try:
            if json.loads(p.read_text()).get("arch"):
                names.append(p.stem)
        except (OSError, ValueError):
            continue
    return names


def load_board(name: str) -> Board:
    path = BOARDS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(board_names())
        raise FlashError(f"unknown board {name!r}: choose one of {known}", EXIT_USAGE)
    try:
        profile = json.loads(path.read_text())
    except ValueError as e:
        raise FlashError(f"{_rel(path)} is not valid JSON: {e}") from e
    arch = profile.get("arch")
    if not arch:
        raise FlashError(
            f"{name!r} is not a board to flash (no `arch` in its profile); "
            "the simulator runs with `isopress sim`",
            EXIT_USAGE,
        )
    usb = profile.get("usb")
    return Board(
        name=name,
        port=str(profile.get("port")),
        arch=str(arch),
        profile=path,
        usb=(int(usb["vid"]), int(usb["pid"])) if usb else None,
    )


def modules(board: Board) -> list[Path]:
    """The sources that go to this board, main.py included."""
    found = [
        p
        for p in sorted(paths.FIRMWARE.glob("*.py"))
        if PORT_ONLY.get(p.name, board.port) == board.port
    ]
    return [*found, WIRE]


def plan(board: Board, new_config: bool = False, romfs: bool = False) -> list[Step]:
    sources = modules(board)
    compiled = [p for p in sources if p.name != MAIN]
    main = [p for p in sources if p.name == MAIN]
    steps = [Step("compile", p, p.stem + ".mpy") for p in compiled]
    if romfs:
        steps.append(Step("image", dst=IMAGE, names=tuple(p.stem + ".mpy" for p in compiled)))
    if new_config:
        # A new board (or a deliberate reset): without a config file the
        # firmware boots every channel isolated with CONFIG_BAD. Not done by
        # default, because it would wipe a commissioned board's calibration.
        steps.append(Step("config", board.profile, CONFIG))
    # main.py first out and last in; sources that would shadow the builds out.
    stale = (MAIN, *(p.name for p in compiled))
    if romfs:
        stale += tuple(p.stem + ".mpy" for p in compiled)  # would shadow /rom
    steps.append(Step("remove", names=stale))
    steps.append(Step("copy", board.profile, "board.json"))
    if new_config:
        steps.append(Step("copy", None, CONFIG))
    if romfs:
        steps.append(Step("romfs", dst=IMAGE))
    else:
        steps += [Step("copy", None, p.stem + ".mpy") for p in compiled]
    steps += [Step("copy", p, MAIN) for p in main]
    steps.append(Step("reset"))
    return steps


def write_config(profile: Path, out: Path) -> None:
    """The default config for this profile, written by the firmware's own
    config module (in MicroPython), so it is byte for byte what the board
    would write."""
    code = (
        "import json, config\n"
        f"p = json.load(open({str(profile)!r}))\n"
        f"cfg, status = config.load({str(out.parent) + '/'!r}, p)\n"
        "assert cfg.save()\n"
    )
    if out.exists():
        out.unlink()
    run = subprocess.run(
        [paths.tool("micropython"), "-c", code],
        env=paths.micropython_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if run.returncode != 0 or not out.exists():
        raise FlashError(f"could not write the default config: {run.stderr.strip()}")


def romfs_image(files: list[Path]) -> bytes:
    """A ROMFS image holding these files at its root, built by mpremote's own
    writer (the format `mpremote romfs deploy` checks and the board mounts)."""
    from mpremote.romfs import VfsRomWriter

    fs = VfsRomWriter()
    for f in sorted(files, key=lambda p: p.name):
        fs.mkfile(f.name, f.read_bytes())
    return fs.finalise()


def check_mpy(path: Path) -> None:
    head = path.read_bytes()[:4]
    if len(head) < 4 or head[0] != ord("M") or head[1] != MPY_VERSION:
        raise FlashError(f"{path} is not a version {MPY_VERSION} .mpy file (header {head!r})")
    if head[3] > 31:
        raise FlashError(f"{path} was built for a 64-bit small int; the boards are 32-bit")


def compile_module(mpy_cross: str, src: Path, out: Path, arch: str | None) -> None:
    """Compile for a board's arch; with arch None, bytecode only (no native
    code either way) for 32-bit small ints, which any port loads: the bench
    imports the boards' bytecode in the unix port this way."""
    march = [f"-march={arch}"] if arch else ["-msmall-int-bits=31"]
    run = subprocess.run(
        [mpy_cross, *march, "-s", src.name, "-o", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise FlashError(f"mpy-cross failed on {_rel(src)}:\n{run.stderr.strip()}")
    check_mpy(out)


def progress(done: int, total: int, label: str, width: int = 20) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:>{len(str(total))}}/{total} {label}"


def find_port(board: Board) -> str:
    """The serial device with the board's USB id, if exactly one is plugged in."""
    from serial.tools import list_ports

    if board.usb is None:
        raise FlashError(f"{board.name} has no USB id in its profile: pass --port", EXIT_USAGE)
    vid, pid = board.usb
    found = [p.device for p in list_ports.comports() if (p.vid, p.pid) == (vid, pid)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise FlashError(
            f"no {board.name} found (USB {vid:04x}:{pid:04x}): plug it in, or pass --port DEVICE"
        )
    raise FlashError(f"several {board.name} boards found ({', '.join(found)}): pass --port")


def mpremote_argv(mpremote: str, port: str, step: Step, build: Path) -> list[str]:
    head = [mpremote, "connect", port]
    if step.kind == "copy":
        src = step.src if step.src is not None else build / step.dst
        return [*head, "fs", "cp", str(src), ":" + step.dst]
    if step.kind == "remove":
        names = ", ".join(repr("/" + n) for n in step.names)
        code = (
            "import os\n"
            f"for f in ({names},):\n"
            "    try:\n"
            "        os.remove(f)\n"
            "    except OSError:\n"
            "        pass\n"
        )
        return [*head, "exec", code]
    if step.kind == "romfs":
        return [*head, "romfs", "deploy", str(build / step.dst)]
    if step.kind == "reset":
        return [*head, "reset"]
    raise ValueError(f"not a board step: {step.kind}")


def run_mpremote(argv: list[str]) -> None:
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=MPREMOTE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise FlashError(f"mpremote did not finish in {MPREMOTE_TIMEOUT_S} s") from e
    if run.returncode != 0:
        said = (run.stderr.strip() or run.stdout.strip() or f"exit {run.returncode}").splitlines()
        raise FlashError("mpremote: " + "\n  ".join(said[-5:]))


def build_step(step: Step, build: Path, mpy_cross: str, arch: str) -> bool:
    """Do a step that happens on this computer; False for a board step."""
    if step.kind == "compile" and step.src is not None:
        compile_module(mpy_cross, step.src, build / step.dst, arch)
    elif step.kind == "config" and step.src is not None:
        write_config(step.src, build / step.dst)
    elif step.kind == "image":
        (build / step.dst).write_bytes(romfs_image([build / n for n in step.names]))
    else:
        return False
    return True


def flash(
    board: Board,
    port: str | None,
    dry_run: bool,
    build: Path,
    out: Callable[[str], None] = print,
    new_config: bool = False,
    romfs: bool = False,
) -> None:
    mpy_cross = paths.tool("mpy-cross")
    mpremote = None if dry_run else paths.tool("mpremote")
    steps = plan(board, new_config, romfs)
    if dry_run:
        where = f" on {port}" if port else ""
        out(f"isopress flash --dry-run: {board.name} ({board.arch}){where}, {len(steps)} steps")
        for step in steps:
            out(step.describe(board.arch))
        for step in steps:
            build_step(step, build, mpy_cross, board.arch)
        n = sum(s.kind == "compile" for s in steps)
        out(f"compiled {n} modules into {build}; nothing copied")
        return
    target = port or find_port(board)
    out(f"isopress flash: {board.name} ({board.arch}) on {target}")
    for i, step in enumerate(steps, 1):
        try:
            if not build_step(step, build, mpy_cross, board.arch) and mpremote is not None:
                run_mpremote(mpremote_argv(mpremote, target, step, build))
        except FlashError as e:
            if not any(s.kind == "remove" for s in steps[: i - 1]):
                raise  # the board is untouched
            raise FlashError(
                f"{e}\nstopped at step {i}/{len(steps)} ({step.label}): the board has no "
                "main.py now, so it stays in the REPL with its valves closed; "
                "run `isopress flash` again"
            ) from e
        out(progress(i, len(steps), step.label))
    out("done: the board restarts with the new firmware")


def run(args: argparse.Namespace) -> int:
    try:
        board = load_board(args.board)
        opts = {"new_config": args.new_config, "romfs": getattr(args, "romfs", False)}
        if args.build_dir is not None:
            args.build_dir.mkdir(parents=True, exist_ok=True)
            flash(board, args.port, args.dry_run, args.build_dir, **opts)
        else:
            with tempfile.TemporaryDirectory(prefix="isopress-flash-") as tmp:
                flash(board, args.port, args.dry_run, Path(tmp), **opts)
    except paths.ToolMissing as e:
        print(f"isopress flash: {e}", file=sys.stderr)
        return EXIT_MISSING
    except FlashError as e:
        print(f"isopress flash: {e}", file=sys.stderr)
        return e.code
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "flash",
        help="compile the firmware and copy it to a board",
        description=(
            "Compile the firmware with mpy-cross for the board and copy it, with the "
            "board profile as /board.json, using mpremote; then reset the board."
        ),
        epilog="Close the bridge first: the serial port can have only one user.",
    )
    p.add_argument("--board", required=True, choices=board_names(), help="board profile")
    p.add_argument("--port", metavar="DEVICE", help="serial device (default: found by USB id)")
    p.add_argument(
        "--dry-run", action="store_true", help="list the steps and compile; copy nothing"
    )
    p.add_argument(
        "--new-config",
        action="store_true",
        help="also write the profile's default config (a new board; replaces calibration)",
    )
    p.add_argument(
        "--romfs",
        action="store_true",
        help="deploy the modules as one ROMFS image (firmware with a ROMFS partition): "
        "their bytecode runs from flash, saving RAM",
    )
    p.add_argument(
        "--build-dir",
        metavar="DIR",
        type=Path,
        help="keep the compiled modules here (default: a temporary directory)",
    )
    p.set_defaults(func=run)
    return p
