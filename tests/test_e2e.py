"""End to end: the real firmware in MicroPython on a pty, the bridge as its own
process, SQLite, HTTP, the Python client.

The simulated board runs at SPEED times real time (its clock and plant
both), so ramps take a fraction of their real seconds; its ring holds 32 s of
its time, SPEED times less of ours, which bounds how long a cable may be
pulled or a bridge be down before samples are lost for good.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from isopress import export
from isopress.client import ApiError, Client, set_step, wait_host
from isopress.simulator import SimProcess
from isopress.store import Store

SPEED = 4.0
TOKEN = "e2e-token"
BRIDGE_START_S = 20.0


class BridgeProcess:
    """`python -m isopress.bridge` for one simulated board, on a free port."""

    def __init__(self, link: Path, db: Path, log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isopress.bridge", "--device", f"sim={link}", "--db", str(db),
             "--http", "127.0.0.1:0", "--token", TOKEN],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + BRIDGE_START_S
        self.url = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "API on http://" in line:
                self.url = line.split("API on ", 1)[1].split("/api/v1", 1)[0]
                break
        if not self.url:
            self.proc.kill()
            raise AssertionError(f"the bridge did not start; see {log}")
        self.client = Client(self.url, TOKEN, name="e2e", timeout=15)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.log.close()


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            v = cond()
        except ApiError as e:
            v, last = None, e
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond} (last error: {last})")
        time.sleep(0.05)


def contiguous(c: Client, channel: int = 1) -> list[int] | None:
    # sorted: samples come in UTC order, and at SPEED x the first seconds' clock
    # fit is rough enough to reorder neighbours
    seqs = sorted(s["seq"] for s in c.samples("sim", channel))
    return seqs if seqs and seqs == list(range(seqs[0], seqs[-1] + 1)) else None


def caught_up(c: Client, after_seq: int, channel: int = 1) -> list[int]:
    """Waits until the record holds every sample from 0 to past `after_seq`."""

    def done() -> list[int] | None:
        seqs = contiguous(c, channel)
        return seqs if seqs and seqs[0] == 0 and seqs[-1] > after_seq else None

    return wait_for(done, what=f"a contiguous record past seq {after_seq}")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("e2e")
    sim = SimProcess(d / "link", speed=SPEED).start()
    bridge = BridgeProcess(d / "link", d / "rec.sqlite", d / "bridge.log")
    c = bridge.client
    try:
        wait_for(lambda: c.channel("sim", 1)["connected"], what="the link")
        wait_for(lambda: c.limits("sim", 1)["max_working_mpa"] is not None, what="limits")
        wait_for(lambda: c.channel("sim", 1)["seq"] is not None, what="a committed sample")
        yield {"sim": sim, "bridge": bridge, "client": c, "db": d / "rec.sqlite", "dir": d}
    finally:
        bridge.stop()
        sim.stop()


def test_a_setpoint_is_reached_in_the_recorded_samples(system):
    c: Client = system["client"]
    seq0 = c.channel("sim", 1)["seq"]
    assert c.set_pressure("sim", 1, 3.0)["ok"]
    state = wait_for(
        lambda: (
            (s := c.channel("sim", 1))["mode"] == "HOLD"
            and abs(s["pressure_mpa"] - 3.0) < 0.05
            and s
        ),
        what="3 MPa",
    )
    assert state["setpoint_mpa"] == 3.0 and "LATCHED" not in state["alarms"]
    samples = [s for s in c.samples("sim", 1) if s["seq"] >= seq0]
    pressures = [s["pressure_mpa"] for s in samples]
    assert pressures[0] < 0.5 and max(pressures) < 3.0 * 1.03  # no overshoot worth the name
    assert any(s["fill"] for s in samples)  # it filled to get there
    assert samples[-1]["setpoint_mpa"] == 3.0
    ev = [e for e in c.events(device="sim", channel=1) if e["kind"] == "SETPOINT"]
    assert ev[-1]["a"] == 3_000_000


def test_a_rejected_setpoint_changes_nothing_on_the_board(system):
    c: Client = system["client"]
    wait_for(lambda: c.channel("sim", 1)["setpoint_mpa"] == 3.0)
    with pytest.raises(ApiError) as e:
        c.set_pressure("sim", 1, 8.0)
    assert (e.value.status, e.value.error) == (422, "out_of_range")
    assert (e.value.detail["limit"], e.value.detail["source"]) == (7.0, "host")
    # a rate the board refuses (lowering faster than ramp_down): its NACK names the limit
    with pytest.raises(ApiError) as e:
        c.set_pressure("sim", 1, 1.0, rate=0.8)
    assert e.value.status == 422
    assert (
        e.value.detail.items()
        >= {
            "field": "rate_mpa_s",
            "limit": 0.5,
            "source": "board",
            "result": "OUT_OF_RANGE",
        }.items()
    )
    seq = c.channel("sim", 1)["seq"]
    time.sleep(1.0)
    # by seq, not time: at SPEED x the clock fit of the first seconds is rough
    after = [s for s in c.samples("sim", 1) if s["seq"] > seq]
    assert len(after) > 20 and {s["setpoint_mpa"] for s in after} == {3.0}
    cmds = [x for x in c.commands(device="sim") if x["message"] == "SET_SETPOINT"]
    assert [x["args"]["pressure"] for x in cmds] == [3_000_000, 1_000_000]
    assert [x["result"] for x in cmds] == ["OK", "OUT_OF_RANGE"]


def test_a_profile_waits_for_the_cycler_and_a_cycle_end_moves_it_on(system):
    c: Client = system["client"]
    c.load_profile("sim", 1, [set_step(5.0), wait_host(), set_step(2.0)])
    c.start_profile("sim", 1)
    wait_for(
        lambda: (
            c.profile("sim", 1)["waiting_for_host"]
            and abs(c.channel("sim", 1)["pressure_mpa"] - 5.0) < 0.05
        ),
        what="5 MPa, waiting for the host",
    )
    time.sleep(0.5)
    held = c.channel("sim", 1)
    assert held["setpoint_mpa"] == 5.0 and abs(held["pressure_mpa"] - 5.0) < 0.15  # it waits
    r = c.cycler_event("sim", 1, cycle=1)
    assert r["advanced"] and r["from_step"] == 1
    state = wait_for(
        lambda: (
            (s := c.channel("sim", 1))["setpoint_mpa"] == 2.0
            and abs(s["pressure_mpa"] - 2.0) < 0.05
            and s
        ),
        what="2 MPa after the cycle end",
    )
    assert not state["profile"]["running"]
    # In board order: the simulator's clock runs fast, so UTC (the API's
    # order) can swap events a few board-ms apart.
    events = sorted(c.events(device="sim", channel=1), key=lambda e: e["seq"])
    kinds = [(e["kind"], e["code"], e["b"]) for e in events
             if e["kind"] in ("PROFILE_STEP", "PROFILE_DONE")]  # fmt: skip
    assert kinds[-4:] == [
        ("PROFILE_STEP", 0, 0),
        ("PROFILE_STEP", 1, 0),
        ("PROFILE_STEP", 2, 1),
        ("PROFILE_DONE", 3, 0),
    ]
    # nothing waits now: the board is not asked to guess
    with pytest.raises(ApiError) as e:
        c.cycler_event("sim", 1, cycle=2)
    assert e.value.status == 409 and e.value.detail["recorded"]


def test_garbage_on_the_link_is_counted_and_breaks_nothing(system):
    c: Client = system["client"]
    sim: SimProcess = system["sim"]
    before = c.status()["links"]["sim"]["stats"]
    top = c.channel("sim", 1)["seq"]
    junk = [b"\xff\x13\x37garbage" * 5, bytes(range(1, 200)), b"\x00\x05\x01\x02\x03\x04\x00"]
    for i in range(30):
        sim._to_host(junk[i % 3])
        time.sleep(0.01)
    caught_up(c, top + 80)
    after = c.status()["links"]["sim"]["stats"]
    dropped = sum(after["drops"].values()) - sum(before["drops"].values())
    assert dropped >= 20
    assert after["connects"] == before["connects"]  # no reconnect was needed
    assert after["gap_records"] == 0 and c.gaps("sim") == []


def test_unplug_and_replug_lose_no_sample(system):
    c: Client = system["client"]
    sim: SimProcess = system["sim"]
    top = c.channel("sim", 1)["seq"]
    sim.unplug()
    wait_for(lambda: not c.channel("sim", 1)["connected"], what="the unplug to show")
    time.sleep(1.5)  # 6 s of the board's time, all in its ring
    sim.replug()
    wait_for(lambda: c.channel("sim", 1)["connected"], what="the reconnect")
    seqs = caught_up(c, top + 100)
    assert len(seqs) == seqs[-1] + 1
    replayed = [s for s in c.samples("sim", 1) if s["flags"] & 1 and s["seq"] > top]
    assert len(replayed) >= 40  # what the cable missed came back from the ring
    for ch in (2, 3, 4):
        assert contiguous(c, ch)
    assert c.gaps("sim") == []


def test_an_export_reads_back_as_the_stored_samples(system, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "ch1.parquet"
    args = argparse.Namespace(
        db=str(system["db"]),
        format="bdf-parquet",
        out=str(out),
        device="sim",
        channel=1,
        run=None,
        since=None,
        until=None,
    )
    assert export.run(args) == 0
    table = pq.read_table(out).to_pydict()
    with Store(system["db"], readonly=True) as st:
        stored = st.samples("sim", 1)
    n = len(table["Unix Time / s"])
    assert n >= 200 and n <= len(stored)  # the bridge went on writing after the export
    # Every exported row is a stored sample, in time order. (Not a prefix of
    # the later read: the simulator's fast clock lets a sample stored after
    # the export take a UTC between two exported ones.)
    rows = set((s["utc"], float(s["pressure_pa"]), float(s["setpoint_pa"])) for s in stored)
    exported = list(
        zip(
            table["Unix Time / s"],
            table["Applied Pressure / Pa"],
            table["Setpoint Pressure / Pa"],
            strict=True,
        )
    )
    assert all(r in rows for r in exported)
    assert table["Unix Time / s"] == sorted(table["Unix Time / s"])
    assert len(set(exported)) == n  # each sample once
    assert "Cycle Count / 1" in table  # the cycler's cycle 1 from the profile test


def test_kill_9_of_the_bridge_loses_no_committed_sample(tmp_path):
    sim = SimProcess(tmp_path / "link", speed=SPEED).start()
    db = tmp_path / "rec.sqlite"
    try:
        first = BridgeProcess(tmp_path / "link", db, tmp_path / "a.log")
        c = first.client
        wait_for(lambda: (c.channel("sim", 1)["seq"] or 0) > 150, what="samples")
        c.set_pressure("sim", 2, 1.0)
        committed = {s["seq"] for s in c.samples("sim", 1)}  # served, so committed
        first.kill9()
        time.sleep(1.0)  # the board goes on; its ring keeps what nobody read
        second = BridgeProcess(tmp_path / "link", db, tmp_path / "b.log")
        try:
            c = second.client
            seqs = caught_up(c, max(committed) + 100)
            assert committed <= set(seqs)
            assert seqs[0] == 0
            replayed = [s["seq"] for s in c.samples("sim", 1) if s["flags"] & 1]
            assert any(s > max(committed) for s in replayed)  # in flight, then replayed
            for ch in (2, 3, 4):
                assert contiguous(c, ch)
            assert c.gaps("sim") == []
            stats = c.status()["links"]["sim"]["stats"]
            assert stats["resets"] == 0 and stats["gap_records"] == 0
            setpoints = [e for e in c.events(device="sim", channel=2) if e["kind"] == "SETPOINT"]
            assert [e["a"] for e in setpoints] == [1_000_000]  # events survived too, once
        finally:
            second.stop()
    finally:
        sim.stop()
