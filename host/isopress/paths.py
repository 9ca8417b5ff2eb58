"""Where the firmware, the wire table and the MicroPython tools are."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
PROTOCOL = ROOT / "protocol"


class ToolMissing(RuntimeError):
    pass


def tool(name: str) -> str:
    """A command from this interpreter's environment (the venv), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ToolMissing(f"`{name}` not found: run `make setup`, which installs it into .venv")
    return found


def micropython_env(*extra: Path) -> dict[str, str]:
    """Environment for the unix port: firmware modules import as on a board,
    and `hal` finds the sim port (firmware/sim) because the platform is not a board."""
    if not (FIRMWARE / "frame.py").exists():
        raise ToolMissing(f"firmware sources not found under {FIRMWARE}: run from a checkout")
    path = [FIRMWARE, PROTOCOL, FIRMWARE / "sim", *extra]
    return {**os.environ, "MICROPYPATH": os.pathsep.join(str(p) for p in path)}
