"""The scenario library (tests/scenarios) on the reference plant: every
scenario, every fault of the catalogue, meets its criteria.

The whole library runs once, two simulations at a time, as
`isopress bench run tests/scenarios` does (a few minutes: marked `slow`).
Two short fault scenarios also run on their own in the quick suite.

A scenario that fails because of the controller keeps its criterion and is
marked xfail(strict) with what it found: when the firmware is fixed, the
xpass says the mark can go.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from isopress.bench import runner, scenario

from conftest import ROOT

LIBRARY = ROOT / "tests" / "scenarios"
FILES = sorted(LIBRARY.glob("*.toml"))

# What the bench found in the firmware as it stands (reported to the lead).
CONTROLLER = {
    "week_hold": "1 Hz tick: false RISE_FILL_CLOSED (the vent rate learned at 1 Hz is 2-5x "
    "too high, the holding filter too short for one sample a second), 150 actuations/h",
}
QUICK = ("fault_transducer_unplugged", "fault_config_corrupt")


def verdict(run: runner.Run) -> str:
    if run.error:
        return f"run error: {run.error}"
    bad = [f"{v['text']}: got {v['value']!r}" for v in run.verdicts if not v["ok"]]
    return "; ".join(bad)


def mark(path: Path) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow]
    why = CONTROLLER.get(path.stem)
    if why:
        marks.append(pytest.mark.xfail(reason="controller: " + why, strict=True))
    return marks


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, runner.Run]]:
    work = tmp_path_factory.mktemp("library")
    runs = []
    for f in FILES:
        s = scenario.load(f)
        d = work / s.name
        d.mkdir()
        runs.append(runner.Run(s, "isopress", d))
    runner.execute(runs, jobs=2, progress=False)
    yield {r.scenario.name: r for r in runs}


@pytest.mark.parametrize("path", [pytest.param(p, marks=mark(p), id=p.stem) for p in FILES])
def test_scenario_meets_its_criteria(library: dict[str, runner.Run], path: Path) -> None:
    run = library[path.stem]
    assert run.passed, verdict(run)


@pytest.mark.parametrize("name", QUICK)
def test_quick_fault_scenario(tmp_path: Path, name: str) -> None:
    s = scenario.load(LIBRARY / f"{name}.toml")
    run = runner.Run(s, "isopress", tmp_path)
    runner.execute([run], jobs=1, progress=False)
    assert run.passed, verdict(run)
    m = run.metrics
    assert m["ch1.fill_opens_after_act"] == 0 and m["ch1.vent_opens_after_act"] == 0
    assert m["ch1.mode_end"] == "ISOLATED"
