"""The `isopress` command as a user runs it: figures printed and written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from isopress import cli

KEYS = {
    "host_decode_frames_per_s",
    "host_encode_frames_per_s",
    "wire_bytes_per_channel_sample",
    "fw_encode_us_per_frame",
    "fw_encode_alloc_bytes_per_frame",
}


def test_bench_protocol_prints_and_writes_figures(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "isopress.cli",
            "bench",
            "protocol",
            "--frames",
            "400",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.read_text())
    assert set(figures) >= KEYS
    for key in KEYS:
        assert key in run.stdout
        assert figures[key] >= 0
    assert figures["wire_bytes_per_channel_sample"] == 87 / 4
    assert figures["fw_encode_alloc_bytes_per_frame"] == 0


@pytest.mark.parametrize("argv", [["bench", "protocol", "--channels", "0"],
                                  ["bench", "protocol", "--channels", "14"],
                                  ["bench", "protocol", "--frames", "-1"],
                                  ["bench", "firmware-that-does-not-exist"],
                                  []])  # fmt: skip
def test_bad_usage_exits_2_with_a_reason(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == cli.EXIT_USAGE
    assert "error:" in capsys.readouterr().err
