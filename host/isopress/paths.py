"""Where the firmware, the wire table and the MicroPython tools are."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
PROTOCOL = ROOT / "protocol"
BOARDS = ROOT / "hardware" / "boards"


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


def board_profile(name: str, error: type[Exception] = LookupError) -> dict[str, Any]:
    """hardware/boards/NAME.json; `error`, naming the known ones, if there is none."""
    path = BOARDS / f"{name}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in BOARDS.glob("*.json")))
        raise error(f"no board profile {name!r}; known: {known}")
    return json.loads(path.read_text())


def micropython_env(*extra: Path) -> dict[str, str]:
    """Environment for the unix port: firmware modules import as on a board,
    and `hal` finds the sim port (firmware/sim) because the platform is not a board."""
    if not (FIRMWARE / "frame.py").exists():
        raise ToolMissing(f"firmware sources not found under {FIRMWARE}: run from a checkout")
    path = [FIRMWARE, PROTOCOL, FIRMWARE / "sim", *extra]
    return {**os.environ, "MICROPYPATH": os.pathsep.join(str(p) for p in path)}
