"""`isopress sim`: the firmware in the MicroPython unix port, serial link on a pty.

The firmware runs unchanged on the `sim` HAL port against the plant model
(firmware/sim/plant.py). Its serial link is the process's stdin/stdout, which
this launcher relays to a pseudo-terminal and links at PATH, so pyserial and
the bridge open PATH exactly as they open a board's /dev/ttyACM0.

    isopress sim --link /tmp/isopress0 [--plant FILE] [--truth FILE] [--speed N]

`SimProcess` is the same as a context manager for tests and the demo, with
`unplug()` / `replug()` to pull the virtual USB cable.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import tty
from pathlib import Path
from typing import Any

from isopress import paths

SIM_DIR = paths.FIRMWARE / "sim"


class SimError(RuntimeError):
    pass


def load_plant(path: Path | None) -> dict[str, Any] | None:
    """The plant file's TOML as a dict (None: the default rig)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SimError(f"cannot read plant file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SimError(f"plant file {path} is not valid TOML: {e}") from None
    # The file overrides the default rig key by key, so it names only what
    # differs (the board has four channels; each needs a holder). Checked
    # with the model itself now, so a bad key is a message here, not a
    # traceback from inside MicroPython.
    from isopress.sim import plant

    merged = _merge(plant.default_params(), data)
    try:
        plant.Plant(merged)
    except ValueError as e:
        raise SimError(f"plant file {path}: {e}") from None
    return merged


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


class SimProcess:
    """The simulated board as a child process with its link on a pty at `link`."""

    def __init__(
        self,
        link: Path,
        plant: dict[str, Any] | None = None,
        truth: Path | None = None,
        speed: float = 1.0,
        board: str = "sim",
        fs: Path | None = None,
        seconds: float | None = None,
        truth_every_ms: int = 1000,
    ) -> None:
        self.link = Path(link)
        self._tmp = tempfile.TemporaryDirectory(prefix="isopress-sim-")
        self.fs = Path(fs) if fs else Path(self._tmp.name) / "flash"
        self.fs.mkdir(parents=True, exist_ok=True)
        settings = {
            "profile": paths.board_profile(board, SimError),
            "plant": plant,
            "fs": str(self.fs) + "/",
            "speed": speed,
            "truth": str(truth) if truth else None,
            "truth_every_ms": truth_every_ms,
            "seconds": seconds,
        }
        self._settings = Path(self._tmp.name) / "settings.json"
        self._settings.write_text(json.dumps(settings))
        self.proc: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._slave = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bytes_to_host = 0
        self.bytes_to_board = 0
        self.dropped = 0

    # -- the pty --------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        name = os.ttyname(slave)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(name)
        with self._lock:
            self._master, self._slave = master, slave

    def _close_pty(self) -> None:
        with self._lock:
            fds = (self._master, self._slave)
            self._master = self._slave = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()

    def unplug(self) -> None:
        """Pull the cable: the pty disappears; the board keeps running."""
        self._close_pty()

    def replug(self) -> None:
        """Plug it back: a new pty at the same path."""
        self._open_pty()

    # -- the child ------------------------------------------------------------

    def start(self) -> SimProcess:
        self._open_pty()
        env = paths.micropython_env(SIM_DIR)
        self.proc = subprocess.Popen(
            [paths.tool("micropython"), str(SIM_DIR / "run.py"), str(self._settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin and self.proc.stdout
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._thread = threading.Thread(target=self._relay, name="sim-relay", daemon=True)
        self._thread.start()
        return self

    def _relay(self) -> None:
        # One thread moves bytes both ways; a host that is not reading (or a
        # pulled cable) loses the board's bytes, as USB CDC does.
        assert self.proc and self.proc.stdout and self.proc.stdin
        out_fd = self.proc.stdout.fileno()
        to_board = self.proc.stdin
        sel = selectors.DefaultSelector()
        sel.register(out_fd, selectors.EVENT_READ, "board")
        registered = -1
        while not self._stop.is_set():
            with self._lock:
                master = self._master
            if master != registered:
                if registered >= 0:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        sel.unregister(registered)
                if master >= 0:
                    sel.register(master, selectors.EVENT_READ, "host")
                registered = master
            for key, _ in sel.select(timeout=0.05):
                try:
                    data = os.read(key.fd, 4096)
                except BlockingIOError:
                    continue
                except OSError:
                    # EIO: the pty's other side closed; it stays usable.
                    continue
                if key.data == "board":
                    if not data:
                        return  # the simulator exited
                    self.bytes_to_host += len(data)
                    self._to_host(data)
                elif data:
                    self.bytes_to_board += len(data)
                    try:
                        to_board.write(data)
                        to_board.flush()
                    except BrokenPipeError:
                        return

    def _to_host(self, data: bytes) -> None:
        with self._lock:
            master = self._master
        if master < 0:
            self.dropped += len(data)
            return
        try:
            os.write(master, data)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise
            self.dropped += len(data)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc
        return self.proc.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._thread:
            self._thread.join(2)
        self._close_pty()
        self._tmp.cleanup()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="run the firmware against the plant model, its serial link on a pty",
        description=(
            "Run the unchanged firmware in the MicroPython unix port against the plant model. "
            "The board's serial link appears as a pty linked at --link; open it with pyserial "
            "or `isopress bridge --device sim=PATH`. SIGUSR1 pulls the virtual cable for 2 s."
        ),
    )
    p.add_argument("--link", required=True, type=Path, help="path of the pty link to create")
    p.add_argument(
        "--plant", type=Path, help="plant description (TOML); default: the reference rig"
    )
    p.add_argument("--truth", type=Path, help="write the plant's true state as CSV here")
    p.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per wall second (0 = max)"
    )
    p.add_argument("--board", default="sim", help="board profile under hardware/boards")
    p.add_argument("--fs", type=Path, help="directory standing in for the board's flash")
    p.add_argument("--seconds", type=float, help="stop after this much simulated time")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.speed < 0:
        print("isopress sim: --speed must be >= 0", file=sys.stderr)
        return 2
    try:
        plant = load_plant(args.plant)
        sim = SimProcess(
            args.link, plant, args.truth, args.speed, args.board, args.fs, args.seconds
        ).start()
    except (SimError, ValueError) as e:
        print(f"isopress sim: {e}", file=sys.stderr)
        return 2
    except paths.ToolMissing as e:
        print(f"isopress sim: {e}", file=sys.stderr)
        return 3

    def unplug(signum: int, frame: object) -> None:
        sim.unplug()
        threading.Timer(2.0, sim.replug).start()

    signal.signal(signal.SIGUSR1, unplug)
    signal.signal(signal.SIGTERM, lambda *a: sim.stop())
    print(f"isopress sim: board on {args.link} (speed {args.speed:g}x); Ctrl-C stops", flush=True)
    try:
        while sim.proc and sim.proc.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    code = sim.proc.returncode if sim.proc else 1
    sim.stop()
    return 0 if code in (0, None) else 1
