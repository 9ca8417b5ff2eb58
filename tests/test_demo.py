"""`isopress demo`, shortened: the real firmware in MicroPython, the bridge, the
live view, the activation-then-target profile, the export, the plot and the
summary, end to end, with nothing mocked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from isopress import cli, demo

SECONDS = "12"  # 4 simulated minutes at 20x: activation, the event at 6 s, 2 MPa


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    code = cli.main(["demo", "--seconds", SECONDS, "--out", str(out), "--plain"])
    return {"code": code, "out": out}


def test_the_demo_succeeds_and_says_where_everything_went(ran):
    out: Path = ran["out"]
    assert ran["code"] == 0, (out / "demo.log").read_text()[-3000:]
    assert (out / "demo.sqlite").stat().st_size > 0
    png = out / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # a plot, not an empty canvas


def test_the_export_is_in_battery_data_format_columns(ran):
    export = ran["out"] / "demo-ch1-bdf.csv"
    with open(export, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"Unix Time / s", "Test Time / s", "Applied Pressure / Pa"} <= set(rows[0])
    pressures = [float(r["Applied Pressure / Pa"]) for r in rows]
    assert max(pressures) > 4.9e6  # the activation
    assert abs(pressures[-1] - 2e6) < 0.02e6  # the target


def test_the_summary_says_the_pressure_reached_2_mpa(ran):
    s = json.loads((ran["out"] / "summary.json").read_text())
    assert s["reached_activation"] and s["reached_target"] and s["advanced"]
    assert s["final_mpa"] == pytest.approx(2.0, abs=0.02)
    assert s["samples"] > 1000 and s["samples_all"] == 4 * s["samples"]
    assert s["gaps"] == []
    assert not s["latched"] and s["problems"] == []
    # stepping down, the board approaches the lower setpoint from above
    assert s["lowest_true_after_step_mpa"] > 2.0 - 0.005
    assert s["within_pct"]["2 MPa"] > 50


def test_the_printed_summary(ran, capsys):
    # the fixture ran before capsys for this test; print the report again
    s = demo.Summary(**json.loads((ran["out"] / "summary.json").read_text()))
    text = demo.report(s, ran["out"], ran["out"] / "x.csv", ran["out"] / "demo.png")
    assert "reached 2 MPa" in text
    assert f"database     {ran['out'] / 'demo.sqlite'}" in text
    assert "within 0.5 % of 2 MPa for" in text
    assert text.rstrip().endswith("OK")


def test_a_run_whose_step_never_came_fails_and_says_why(ran):
    out: Path = ran["out"]
    s, rows, _ = demo.summarise(out / "demo.sqlite", out / "truth.csv", advanced=False)
    assert rows and not s.ok
    assert "the cycler's event did not advance the profile" in s.problems
    text = demo.report(s, out, out / "x.csv", out / "demo.png")
    assert "FAILED: the cycler's event did not advance the profile" in text
