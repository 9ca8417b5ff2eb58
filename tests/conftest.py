"""Shared fixtures: the repository's paths and a live MicroPython interpreter."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from isopress import paths
from isopress.paths import FIRMWARE, PROTOCOL, ROOT, micropython_env

__all__ = ["FIRMWARE", "PROTOCOL", "ROOT", "micropython_env", "tool"]
VECTORS = PROTOCOL / "vectors"


def tool(name: str) -> str:
    try:
        return paths.tool(name)
    except paths.ToolMissing as e:
        pytest.fail(str(e))


class MicroPython:
    """A MicroPython process answering one JSON request per line."""

    def __init__(self, script: Path, heap: str | None = None) -> None:
        # The unix port's default heap is small; a simulated board with its
        # plant and rings wants a few MB.
        flags = ["-X", f"heapsize={heap}"] if heap else []
        self.proc = subprocess.Popen(
            [tool("micropython"), *flags, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=paths.micropython_env(script.parent),
            text=True,
        )

    def __call__(self, **request: object) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"micropython exited with {self.proc.wait()}")
        reply = json.loads(line)
        if "exception" in reply:
            pytest.fail(f"firmware codec raised under MicroPython: {reply['exception']}")
        return reply

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def fw_codec() -> Iterator[MicroPython]:
    mp = MicroPython(ROOT / "tests" / "mpy" / "codec_server.py")
    yield mp
    mp.close()


def load_vectors() -> list[dict]:
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        for v in json.loads(path.read_text()):
            out.append({**v, "file": path.name})
    return out


def load_rejected() -> list[dict]:
    return json.loads((VECTORS / "invalid" / "rejected.json").read_text())
