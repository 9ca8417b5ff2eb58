"""`isopress flash`: what it compiles, in which order it touches the board, and
how it fails. The board end is a stand-in `mpremote` that records its calls."""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from isopress import flash, paths

from conftest import FIRMWARE, PROTOCOL, ROOT

BOARDS = {"pico": ("armv6m", "rp2"), "esp32_devkitc": ("xtensawin", "esp32")}
OTHER_PORT = {"rp2": "port_esp32.py", "esp32": "port_rp2.py"}


def args(board: str, **kw: object) -> argparse.Namespace:
    return argparse.Namespace(
        board=board,
        port=kw.get("port"),
        dry_run=kw.get("dry_run", False),
        new_config=kw.get("new_config", False),
        build_dir=kw.get("build_dir"),
        romfs=kw.get("romfs", False),
    )


def expected_modules(port: str) -> list[Path]:
    mods = [p for p in FIRMWARE.glob("*.py") if p.name != "main.py"]
    mods = [p for p in mods if p.name != OTHER_PORT[port]]
    if port != "rp2":
        mods = [p for p in mods if p.name != "hx711_pio.py"]
    return [*mods, PROTOCOL / "wire.py"]


@pytest.fixture
def fake_mpremote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An `mpremote` that logs its arguments and fails when told to."""
    log = tmp_path / "calls.jsonl"
    exe = tmp_path / "mpremote"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "fail = os.environ.get('FAKE_MPREMOTE_FAIL')\n"
        "if fail and fail in ' '.join(sys.argv[1:]):\n"
        "    print('mpremote: could not enter raw repl', file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    exe.chmod(0o755)
    real = paths.tool

    def tool(name: str) -> str:
        return str(exe) if name == "mpremote" else real(name)

    monkeypatch.setattr(paths, "tool", tool)

    def calls() -> list[list[str]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


def missing(name: str):
    real = paths.tool

    def tool(n: str) -> str:
        if n == name:
            raise paths.ToolMissing(f"`{n}` not found: run `make setup`")
        return real(n)

    return tool


@pytest.mark.parametrize("board", BOARDS)
def test_dry_run_lists_every_module_with_the_boards_arch(board, tmp_path, capsys):
    arch, port = BOARDS[board]
    assert flash.run(args(board, dry_run=True, build_dir=tmp_path)) == 0
    out = capsys.readouterr().out.splitlines()
    compiled = [line for line in out if line.startswith("compile ")]
    want = sorted(
        f"compile {p.relative_to(ROOT)} -> {p.stem}.mpy (mpy-cross -march={arch})"
        for p in expected_modules(port)
    )
    assert sorted(compiled) == want
    assert not any("firmware/sim" in line or "README" in line for line in out)
    copies = [line for line in out if line.startswith("copy ")]
    assert f"copy hardware/boards/{board}.json -> :board.json" in copies
    for p in expected_modules(port):
        assert f"copy {p.stem}.mpy -> :{p.stem}.mpy" in copies
    # main.py stays source; it is removed first and copied last, then the reset.
    assert copies[-1] == "copy firmware/main.py -> :main.py"
    assert not any("main.mpy" in line for line in out)
    removes = [line for line in out if line.startswith("remove ")]
    assert len(removes) == 1 and removes[0].startswith("remove :main.py ")
    assert out.index(removes[0]) < out.index(copies[0])
    assert out[-2].startswith("reset")
    assert "nothing copied" in out[-1]


@pytest.mark.parametrize("board", BOARDS)
def test_dry_run_compiles_valid_mpy_files_and_copies_nothing(board, tmp_path, fake_mpremote):
    _arch, port = BOARDS[board]
    assert flash.run(args(board, dry_run=True, build_dir=tmp_path / "build")) == 0
    built = sorted(p.name for p in (tmp_path / "build").iterdir())
    assert built == sorted(p.stem + ".mpy" for p in expected_modules(port))
    for name in built:
        head = (tmp_path / "build" / name).read_bytes()[:4]
        assert head[0:1] == b"M", name
        assert head[1] == flash.MPY_VERSION, name
        assert head[3] <= 31, name  # small ints of a 32-bit board
    assert fake_mpremote() == []


@pytest.mark.parametrize("board", BOARDS)
def test_the_boards_port_and_every_module_it_imports_are_flashed(board):
    # port_common.py is shared by both ports: a board without it cannot boot.
    _arch, port = BOARDS[board]
    flashed = {p.stem for p in flash.modules(flash.load_board(board))}
    own = {p.stem for p in FIRMWARE.glob("*.py")}
    source = FIRMWARE / f"port_{port}.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert "port_common" in imported
    assert {f"port_{port}", *(imported & own)} <= flashed
    assert OTHER_PORT[port][:-3] not in flashed


def test_new_config_is_the_firmwares_own_default_file(tmp_path, capsys):
    # Written by firmware/config.py in MicroPython: a checked file the board
    # reads as status OK, so a new board boots ready instead of isolated.
    assert flash.run(args("pico", dry_run=True, build_dir=tmp_path, new_config=True)) == 0
    text = (tmp_path / "config.json").read_text()
    head, body = text.split("\n", 1)
    assert head == f"{zlib.crc32(body.encode()):08x}"
    assert "copy config.json -> :config.json" in capsys.readouterr().out
    # without the flag the board's own config (its calibration) is left alone
    assert flash.run(args("pico", dry_run=True, build_dir=tmp_path / "b")) == 0
    assert "config.json" not in capsys.readouterr().out


def test_dry_run_without_a_build_dir_leaves_nothing_behind(capsys):
    assert flash.run(args("pico", dry_run=True)) == 0
    where = re.search(r"compiled \d+ modules into (\S+);", capsys.readouterr().out)
    assert where and not Path(where.group(1)).exists()


def test_unknown_board_is_a_usage_error(capsys):
    assert flash.run(args("pico2")) == flash.EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown board 'pico2'" in err and "esp32_devkitc" in err and "pico" in err


def test_the_simulator_profile_is_not_flashed(capsys):
    assert flash.run(args("sim", dry_run=True)) == flash.EXIT_USAGE
    assert "isopress sim" in capsys.readouterr().err


def test_the_parser_offers_only_flashable_boards(capsys):
    p = argparse.ArgumentParser(prog="isopress")
    flash.add_parser(p.add_subparsers())
    got = p.parse_args(["flash", "--board", "esp32_devkitc", "--dry-run", "--port", "/dev/x"])
    assert (got.board, got.dry_run, got.port, got.func) == (
        "esp32_devkitc",
        True,
        "/dev/x",
        flash.run,
    )
    with pytest.raises(SystemExit) as e:
        p.parse_args(["flash", "--board", "sim"])
    assert e.value.code == 2
    assert "invalid choice: 'sim'" in capsys.readouterr().err


def test_mpremote_missing_exits_3(monkeypatch, capsys):
    monkeypatch.setattr(paths, "tool", missing("mpremote"))
    assert flash.run(args("pico", port="/dev/ttyACM0")) == flash.EXIT_MISSING
    assert "`mpremote` not found" in capsys.readouterr().err
    # A dry run copies nothing, so it does not need mpremote.
    assert flash.run(args("pico", dry_run=True)) == flash.EXIT_OK


def test_mpy_cross_missing_exits_3(monkeypatch, capsys):
    monkeypatch.setattr(paths, "tool", missing("mpy-cross"))
    assert flash.run(args("pico", dry_run=True)) == flash.EXIT_MISSING
    assert "`mpy-cross` not found" in capsys.readouterr().err


@pytest.mark.parametrize("board", BOARDS)
def test_flash_copies_in_a_safe_order_with_progress(board, tmp_path, fake_mpremote, capsys):
    _arch, port = BOARDS[board]
    build = tmp_path / "build"
    assert flash.run(args(board, port="/dev/ttyFAKE", build_dir=build)) == 0
    calls = fake_mpremote()
    assert all(c[:2] == ["connect", "/dev/ttyFAKE"] for c in calls)
    # 1. main.py and any old sources out, in one call whose code runs.
    assert calls[0][2] == "exec"
    code = calls[0][3]
    compile(code, "remove", "exec")
    assert "'/main.py'" in code and "'/frame.py'" in code and "'/wire.py'" in code
    # 2. the profile, the builds, main.py last; 3. reset.
    copies = [c[4:] for c in calls if c[2:4] == ["fs", "cp"]]
    assert copies[0] == [str(ROOT / "hardware" / "boards" / f"{board}.json"), ":board.json"]
    assert copies[-1] == [str(FIRMWARE / "main.py"), ":main.py"]
    built = {p.stem + ".mpy" for p in expected_modules(port)}
    assert {c[1][1:] for c in copies[1:-1]} == built
    assert all(c[0] == str(build / c[1][1:]) for c in copies[1:-1])
    assert calls[-1][2:] == ["reset"]
    assert len(calls) == len(built) + 4
    out = capsys.readouterr().out.splitlines()
    bars = [line for line in out if line.startswith("[")]
    total = len(built) * 2 + 4  # compile and copy each, remove, profile, main, reset
    assert len(bars) == total
    assert bars[0].endswith(f"  1/{total} " + sorted(built)[0])
    assert bars[-1] == f"[{'#' * 20}] {total}/{total} reset"


def test_a_failed_copy_stops_and_says_what_state_the_board_is_in(
    tmp_path, fake_mpremote, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_MPREMOTE_FAIL", ":frame.mpy")
    assert flash.run(args("pico", port="/dev/ttyFAKE")) == flash.EXIT_FAILED
    err = capsys.readouterr().err
    assert "could not enter raw repl" in err
    assert "no main.py" in err and "REPL" in err
    calls = fake_mpremote()
    assert calls[-1][-1] == ":frame.mpy"  # nothing after the failure: no main.py, no reset
    assert not any(c[-1] == ":main.py" or c[-1] == "reset" for c in calls)


def test_a_module_that_does_not_compile_stops_before_the_board_is_touched(
    tmp_path, fake_mpremote, monkeypatch, capsys
):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    monkeypatch.setattr(flash, "modules", lambda board: [broken, FIRMWARE / "main.py"])
    assert flash.run(args("pico", port="/dev/ttyFAKE")) == flash.EXIT_FAILED
    assert "mpy-cross failed on" in capsys.readouterr().err
    assert fake_mpremote() == []


class Port:
    def __init__(self, device: str, vid: int | None, pid: int | None) -> None:
        self.device, self.vid, self.pid = device, vid, pid


@pytest.mark.parametrize(
    ("ports", "found"),
    [
        ([Port("/dev/ttyS0", None, None), Port("/dev/ttyACM3", 0x2E8A, 0x0005)], "/dev/ttyACM3"),
        ([Port("/dev/ttyUSB0", 0x10C4, 0xEA60)], None),
        ([Port("/dev/ttyACM0", 0x2E8A, 5), Port("/dev/ttyACM1", 0x2E8A, 5)], None),
    ],
)
def test_without_port_the_board_is_found_by_its_usb_id(
    ports, found, fake_mpremote, monkeypatch, capsys
):
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports", lambda: ports)
    code = flash.run(args("pico"))
    if found:
        assert code == 0
        assert all(c[1] == found for c in fake_mpremote())
    else:
        assert code == flash.EXIT_FAILED
        err = capsys.readouterr().err
        assert "--port" in err
        assert fake_mpremote() == []


def test_progress_bar():
    assert flash.progress(0, 24, "x") == "[....................]  0/24 x"
    assert flash.progress(12, 24, "frame.mpy") == "[##########..........] 12/24 frame.mpy"
    assert flash.progress(24, 24, "reset") == "[####################] 24/24 reset"


def test_check_mpy_rejects_what_is_not_a_board_module(tmp_path):
    bad = tmp_path / "x.mpy"
    bad.write_bytes(b"print('hi')\n")
    with pytest.raises(flash.FlashError, match=r"not a version 6 \.mpy"):
        flash.check_mpy(bad)
    bad.write_bytes(b"M\x06\x00\x3f")  # built for a 64-bit small int
    with pytest.raises(flash.FlashError, match="64-bit"):
        flash.check_mpy(bad)


@pytest.mark.parametrize("board", BOARDS)
def test_romfs_image_holds_every_build_and_mounts_in_micropython(board, tmp_path):
    _arch, port = BOARDS[board]
    build = tmp_path / "build"
    assert flash.run(args(board, dry_run=True, build_dir=build, romfs=True)) == 0
    image = build / flash.IMAGE
    names = sorted(p.stem + ".mpy" for p in expected_modules(port))
    # Mounted as the board mounts its ROM partition; every file comes back
    # byte for byte, and a module imports from it.
    code = (
        "import vfs, os, sys, json, hashlib, binascii\n"
        f"vfs.mount(vfs.VfsRom(open({str(image)!r}, 'rb').read()), '/rom')\n"
        "sys.path.insert(0, '/rom')\n"
        "h = lambda n: binascii.hexlify(hashlib.sha256(open('/rom/' + n, 'rb').read()).digest())\n"
        "got = {n: h(n).decode() for n in os.listdir('/rom')}\n"
        "import crc16\n"
        "print(json.dumps([got, crc16.__file__]))\n"
    )
    run = subprocess.run(
        [paths.tool("micropython"), "-c", code],
        env=paths.micropython_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    got, where = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(got) == names
    assert got == {n: hashlib.sha256((build / n).read_bytes()).hexdigest() for n in names}
    assert where == "/rom/crc16.mpy"


def test_romfs_flash_deploys_one_image_and_removes_the_files_that_would_shadow_it(
    tmp_path, fake_mpremote, capsys
):
    build = tmp_path / "build"
    assert flash.run(args("pico", port="/dev/ttyFAKE", build_dir=build, romfs=True)) == 0
    calls = [c[2:] for c in fake_mpremote()]
    # Old modules out first (sources and .mpy files: '' precedes /rom on sys.path).
    assert calls[0][0] == "exec"
    assert "'/frame.mpy'" in calls[0][1] and "'/frame.py'" in calls[0][1]
    assert calls[1] == ["fs", "cp", str(ROOT / "hardware" / "boards" / "pico.json"), ":board.json"]
    assert calls[2] == ["romfs", "deploy", str(build / flash.IMAGE)]
    assert calls[3] == ["fs", "cp", str(FIRMWARE / "main.py"), ":main.py"]
    assert calls[4] == ["reset"]
    assert len(calls) == 5  # no .mpy copied to the filesystem


def test_a_board_without_romfs_stops_with_mpremotes_reason_and_main_py_removed(
    tmp_path, fake_mpremote, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_MPREMOTE_FAIL", "romfs deploy")
    assert flash.run(args("pico", port="/dev/ttyFAKE", romfs=True)) == flash.EXIT_FAILED
    err = capsys.readouterr().err
    assert "romfs deploy" in err and "no main.py" in err
    assert not any(c[-1] in (":main.py", "reset") for c in fake_mpremote())
