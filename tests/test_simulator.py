"""`isopress sim`: the firmware in MicroPython, its serial link on a real pty."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import serial

from isopress import codec
from isopress.simulator import SimProcess

from conftest import ROOT


def frames_from(port: serial.Serial, seconds: float) -> list[codec.Frame]:
    dec = codec.StreamDecoder()
    out: list[codec.Frame] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.extend(dec.feed(port.read(4096)))
    return out


def identify(port: serial.Serial) -> dict:
    port.write(codec.encode("IDENTIFY", {"host_version": 1}, seq=0))
    for f in frames_from(port, 2.0):
        if f.message == "HELLO":
            return f.fields
    raise AssertionError("no HELLO")


def test_pyserial_talks_to_the_simulated_board(tmp_path: Path) -> None:
    link = tmp_path / "board"
    with SimProcess(link, speed=2.0):
        port = serial.Serial(str(link), timeout=0.05)
        hello = identify(port)
        assert hello["protocol"] == 1 and len(hello["items"]) == 4
        kinds = [it["kind"] for it in hello["items"]]
        assert kinds == [1, 1, 2, 3]  # isostatic, isostatic, uniaxial, monitor
        tele = [f for f in frames_from(port, 1.0) if f.message == "TELEMETRY"]
        seqs = [f.fields["sample_seq"] for f in tele]
        assert len(seqs) > 5 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        # a command through the real endpoint, acknowledged
        port.write(
            codec.encode("SET_SETPOINT", {"channel": 1, "pressure": 9_000_000, "rate": 0}, seq=1)
        )
        acks = [f for f in frames_from(port, 1.0) if f.message == "ACK"]
        assert acks and acks[0].fields["result"] == 4  # OUT_OF_RANGE: above max working
        assert acks[0].fields["value"] == 7_000_000


def test_unplug_and_replug_keeps_the_board_running(tmp_path: Path) -> None:
    link = tmp_path / "board"
    with SimProcess(link, speed=2.0) as sim:
        port = serial.Serial(str(link), timeout=0.05)
        identify(port)
        before = [
            f.fields["sample_seq"] for f in frames_from(port, 0.5) if f.message == "TELEMETRY"
        ]
        sim.unplug()
        assert not link.exists()
        port.close()
        time.sleep(1.0)
        sim.replug()
        port = serial.Serial(str(link), timeout=0.05)
        hello = identify(port)
        assert hello["boot_id"] is not None
        after = [f.fields["sample_seq"] for f in frames_from(port, 0.5) if f.message == "TELEMETRY"]
        # the board went on counting while unplugged: no reset, a gap to replay
        assert after and after[0] > before[-1] + 5
        assert sim.dropped > 0


def test_truth_log_and_plant_file(tmp_path: Path) -> None:
    plant = tmp_path / "plant.toml"
    plant.write_text("[plant]\noven_c = 25.0\n[channel.1]\ninitial_mpa = 2.0\n")
    truth = tmp_path / "truth.csv"
    cmd = [sys.executable, "-m", "isopress.cli", "sim", "--link", str(tmp_path / "l")]
    cmd += ["--plant", str(plant), "--truth", str(truth), "--speed", "0", "--seconds", "5"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(truth.open()))
    assert len(rows) >= 4
    assert "ch1_measured_pa" in rows[0]
    true_cols = [c for c in rows[0] if "pressure" in c and c.startswith(("ch1", "1"))]
    assert true_cols, list(rows[0])
    p = float(rows[-1][true_cols[0]])
    assert abs(p - 2.0e6) < 0.05e6  # the file's initial pressure, held (nothing commanded)


def test_bad_plant_file_is_a_clear_error(tmp_path: Path) -> None:
    plant = tmp_path / "plant.toml"
    plant.write_text("[channel.1]\nvolume_l = -3\n")
    cmd = [sys.executable, "-m", "isopress.cli", "sim", "--link", str(tmp_path / "l")]
    cmd += ["--plant", str(plant), "--seconds", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "volume_l" in out.stderr
    plant.write_text("[channel.1\n")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "TOML" in out.stderr
