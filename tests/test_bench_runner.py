"""`isopress bench run` end to end on short scenarios: the firmware in
MicroPython against the plant, criteria judged, the JSON, the table, the
plots, the baselines beside it, and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isopress import paths
from isopress.bench import runner

SHORT = """
description = "short hold"
duration_s = 120.0
channels = [1]

[rig.channel.1]
initial_mpa = 4.0

[[protocol]]
channel = 1
steps = [
  {{ set_mpa = 5.0, rate_mpa_s = 1.0 }},
  {{ hold_s = 40.0 }},
  {{ set_mpa = 4.5, rate_mpa_s = 0.5 }},
]

[metrics]
settle_s = 20.0

[[criteria]]
metric = "ch1.true_max_mpa"
max = {limit}
why = "the limit under test"

[[criteria]]
metric = "ch1.alarms_raised"
excludes = ["SENSOR_FAULT"]
"""


def scenario_file(tmp_path: Path, limit: float = 5.1, name: str = "short") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(SHORT.format(limit=limit))
    return p


def test_run_compare_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    plots = tmp_path / "png"
    code = runner.main(
        [
            "run",
            str(scenario_file(tmp_path)),
            "--compare",
            "--json",
            str(out),
            "--plots",
            str(plots),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == 1
    r = data[0]
    assert r["name"] == "short" and r["passed"] is True and r["controller"] == "isopress"
    m = r["metrics"]
    assert m["ch1.target_end_mpa"] == 4.5
    assert abs(m["ch1.true_end_mpa"] - 4.5) < 0.05
    assert m["ch1.fill_opens"] >= 1 and m["ch1.vent_opens"] >= 1
    assert "BOOT" in m["ch1.events_seen"] and "SETPOINT" in m["ch1.events_seen"]
    assert m["run.sim_s"] == pytest.approx(120.0, abs=0.1)
    assert all(c["ok"] for c in r["criteria"])
    assert set(r["compare"]) == {"bangbang", "manual"}
    for entry in r["compare"].values():
        assert entry["passed"] is None  # measured beside, not judged
        assert entry["metrics"]["ch1.target_end_mpa"] == 4.5
        assert entry["metrics"]["ch1.alarms_raised"] is None
    # the baselines moved their valves too
    assert r["compare"]["manual"]["metrics"]["ch1.fill_opens"] >= 1
    for png in (plots / "short.png", plots / "comparison.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table names each run
    assert "short" in text and "bangbang" in text and "manual" in text


def test_failing_criterion_exits_1_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    code = runner.main(
        ["run", str(scenario_file(tmp_path, limit=4.2)), "--json", str(out), "--quiet"]
    )
    text = capsys.readouterr().out
    assert code == 1
    assert "ch1.true_max_mpa <= 4.2" in text and "the limit under test" in text
    r = json.loads(out.read_text())[0]
    assert r["passed"] is False
    bad = [c for c in r["criteria"] if not c["ok"]]
    assert [c["metric"] for c in bad] == ["ch1.true_max_mpa"]
    assert bad[0]["value"] > 4.2


def test_bad_scenario_exits_2_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = scenario_file(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "duration_s = 10.0\nchannels = [1]\n[[criteria]]\nmetric = 'ch1.mood'\nmax = 1\n"
    )
    out = tmp_path / "r.json"
    code = runner.main(["run", str(good), str(bad), "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(bad) in err and "criteria[0].metric" in err
    assert not out.exists()


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = scenario_file(tmp_path)
    assert runner.main(["run", str(s), "--jobs", "0"]) == 2
    assert runner.main(["run", str(tmp_path / "empty_dir_none")]) == 2
    twice = tmp_path / "other"
    twice.mkdir()
    (twice / "short.toml").write_text(s.read_text())
    assert runner.main(["run", str(s), str(twice / "short.toml")]) == 2
    assert "names used twice" in capsys.readouterr().err


def test_missing_micropython_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(name: str) -> str:
        raise paths.ToolMissing(f"`{name}` not found: run `make setup`")

    monkeypatch.setattr(runner.paths, "tool", missing)
    assert runner.main(["run", str(scenario_file(tmp_path))]) == 3
    assert "make setup" in capsys.readouterr().err


def test_hil_refuses_board_faults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "reset.toml"
    p.write_text(
        SHORT.format(limit=9.0) + "\n[[fault]]\nat_s = 50.0\nkind = 'reset'\ncause = 'power'\n"
    )
    assert runner.main(["run", str(p), "--hil", "sim-lockstep"]) == 2
    assert "simulator" in capsys.readouterr().err
