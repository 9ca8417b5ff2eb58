"""`isopress demo`: the whole system on a simulated holder, no hardware.

    isopress demo [--seconds N] [--speed X] [--out DIR]

What runs, all of it the real code:
- the firmware in MicroPython against the plant model (isopress.simulator,
  SimProcess), at X times real time (20 by default) so the demo is short,
  its serial link on a pty, and the plant's truth log beside it;
- the bridge (isopress.bridge.serve) on a thread of this process, with its
  SQLite record in DIR and its HTTP API on a free local port;
- the live view (isopress.monitor) fed by the bridge's stream;
- a cycling script's part, through the HTTP client: the activation-then-target
  profile on channel 1 (SET 5 MPa, WAIT for the host, SET 2 MPa), started, and
  the cycler's cycle-end event posted half-way through.

Afterwards: a BDF export of channel 1 (the columns a cycler's data merges
with), a PNG plot of pressure and setpoint with alarms and the step marked,
and a summary: samples stored, gaps, alarms, the final pressure, the lowest
pressure after the step down, and the share of time within 0.5 % of the
setpoint once each setpoint was reached. `summary.json` holds the same.

Exit 0 when the channel reached 5 MPa, then 2 MPa after the cycler's event,
with no alarm latched; 1 otherwise (it says what); 3 if MicroPython is
missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import logging
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isopress import commands, export, monitor, paths
from isopress.client import ApiError, Client, set_step, wait_host
from isopress.protocol import wire
from isopress.simulator import SimError, SimProcess
from isopress.store import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3

DEVICE = "sim"
CHANNEL = 1
ACTIVATION_MPA = 5.0
TARGET_MPA = 2.0
BAND_PCT = 0.5  # "within 0.5 % of the setpoint"
MODES: dict[int, str] = dict(wire.MODES)
MIN_SECONDS = 8.0  # below this the activation has no time to settle at 20x


class BridgeThread:
    """A bridge and its API on a thread of this process, on a free local port.

    `speed`: how much faster than ours the boards' clocks run (a simulated
    board). The links' heartbeat is sped up to match, so a board that counts
    its host silence in its own seconds does not think the host has gone."""

    def __init__(self, db: Path, devices: dict[str, str], token: str, speed: float = 1.0) -> None:
        self.db = db
        self.devices = devices
        self.token = token
        self.link_options: dict[str, Any] = {"backoff_s": (0.05, 1.0)}
        if speed > 1:
            self.link_options["heartbeat_s"] = 1.0 / speed
        self.port = 0
        self.error: BaseException | None = None
        self._store: Store | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="bridge", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, name: str = "demo") -> Client:
        return Client(self.url, self.token, name=name, timeout=15)

    def _main(self) -> None:
        from isopress import bridge

        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(_b: Any, port: int) -> None:
                self.port = port
                self._ready.set()

            assert self._store is not None
            await bridge.serve(
                self._store,
                self.devices,
                "127.0.0.1",
                0,
                self.token,
                ready=ready,
                stop=self._stop,
                link_options=self.link_options,
            )

        try:
            asyncio.run(go())
        except BaseException as e:  # reported by start() or stop()
            self.error = e
            self._ready.set()

    def start(self, timeout: float = 20.0) -> BridgeThread:
        self._store = Store(self.db, sync="normal")
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the bridge did not start within {timeout:g} s")
        if self.error is not None:
            raise RuntimeError(f"the bridge did not start: {self.error}")
        return self

    def stop(self) -> None:
        """Stops the API and the links and commits what is pending."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> BridgeThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(what: str, check: Any, timeout: float) -> Any:
    """Polls check() until it returns something true; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = check()
        except ApiError as e:
            v, last = None, e
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout:g} s" + (f" (last: {last})" if last else ""))


# -- the summary ----------------------------------------------------------------------


@dataclass
class Summary:
    samples: int = 0  # channel 1
    samples_all: int = 0  # every channel
    gaps: list[dict[str, Any]] = field(default_factory=list)
    alarm_events: list[str] = field(default_factory=list)
    latched: bool = False
    final_mpa: float | None = None
    final_mode: str | None = None
    reached_activation: bool = False
    reached_target: bool = False
    target_reached_after_s: float | None = None  # board seconds after the step
    lowest_after_step_mpa: float | None = None  # measured: single samples, with noise
    lowest_true_after_step_mpa: float | None = None  # the plant's, once the setpoint got there
    within_pct: dict[str, float] = field(default_factory=dict)  # setpoint -> % of time
    advanced: bool = False
    simulated_s: float = 0.0
    sensor_error_max_kpa: float | None = None  # measured vs the plant's truth
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _within_share(rows: list[dict[str, Any]], setpoint_pa: int, band_pa: float) -> float | None:
    """Share of board time within the band, from the first sample inside it to
    the last sample at this setpoint."""
    at = [r for r in rows if r["setpoint_pa"] == setpoint_pa]
    first = next(
        (i for i, r in enumerate(at) if abs(r["pressure_pa"] - setpoint_pa) <= band_pa), None
    )
    if first is None:
        return None
    at = at[first:]
    inside = total = 0.0
    for a, b in itertools.pairwise(at):
        dt = b["device_time_ms"] - a["device_time_ms"]
        if dt <= 0 or dt > 5000:  # a gap is not time at any pressure
            continue
        total += dt
        if abs(a["pressure_pa"] - setpoint_pa) <= band_pa:
            inside += dt
    return 100.0 * inside / total if total else None


def summarise(
    db: Path, truth: Path | None, advanced: bool
) -> tuple[Summary, list[dict[str, Any]], list[dict[str, Any]]]:
    """The summary of a demo's record; also its channel-1 samples and the events."""
    s = Summary(advanced=advanced)
    with Store(db, readonly=True) as st:
        rows = st.samples(DEVICE, CHANNEL)
        s.samples = len(rows)
        s.samples_all = sum(st.sample_count(DEVICE, c) for _, c in st.sample_channels())
        s.gaps = [dict(g) for g in st.gaps(DEVICE)]
        events = st.events(device=DEVICE)
    rows.sort(key=lambda r: r["device_time_ms"])
    if not rows:
        s.problems.append("no samples were stored for channel 1")
        return s, rows, events
    t0 = rows[0]["device_time_ms"]
    s.simulated_s = (rows[-1]["device_time_ms"] - t0) / 1000
    last = rows[-1]
    s.final_mpa = last["pressure_pa"] / 1e6
    s.final_mode = MODES.get(last["mode"], str(last["mode"]))
    alarm_kinds = ("ALARM_RAISED", "TRIP", "EXCURSION", "LEAK_RATE")
    s.alarm_events = [e["text"] for e in events if e["kind"] in alarm_kinds]
    s.latched = any(_has_latched(r["alarms"]) for r in rows[-5:])
    act, tgt = round(ACTIVATION_MPA * 1e6), round(TARGET_MPA * 1e6)
    for sp, key in ((act, "activation"), (tgt, "target")):
        share = _within_share(rows, sp, sp * BAND_PCT / 100)
        if share is not None:
            s.within_pct[f"{sp / 1e6:g} MPa"] = round(share, 2)
            setattr(s, f"reached_{key}", True)
    step = next(
        (
            e
            for e in events
            if e["kind"] == "PROFILE_STEP" and e["channel"] == CHANNEL and e["code"] == 2
        ),
        None,
    )
    if step is not None:
        after = [r for r in rows if r["device_time_ms"] >= step["device_time_ms"]]
        if after:
            s.lowest_after_step_mpa = min(r["pressure_pa"] for r in after) / 1e6
            band = tgt * BAND_PCT / 100
            hit = next(
                (
                    r
                    for r in after
                    if r["setpoint_pa"] == tgt and abs(r["pressure_pa"] - tgt) <= band
                ),
                None,
            )
            if hit is not None:
                s.target_reached_after_s = (hit["device_time_ms"] - step["device_time_ms"]) / 1000
    if truth is not None and truth.exists():
        s.sensor_error_max_kpa, s.lowest_true_after_step_mpa = _from_truth(truth)
    if not s.reached_activation:
        s.problems.append(f"channel 1 never came within {BAND_PCT} % of {ACTIVATION_MPA:g} MPa")
    if not s.advanced:
        s.problems.append("the cycler's event did not advance the profile")
    if not s.reached_target:
        s.problems.append(f"channel 1 never came within {BAND_PCT} % of {TARGET_MPA:g} MPa")
    if s.latched:
        s.problems.append("an alarm is latched on channel 1")
    return s, rows, events


def _has_latched(alarms: Any) -> bool:
    if isinstance(alarms, int):
        return bool(alarms & 1 << 15)
    return "LATCHED" in str(alarms)


def _from_truth(truth: Path) -> tuple[float | None, float | None]:
    """From the plant's truth log: the largest |measured - true| on channel 1
    while its valves were closed (kPa: the sensor's noise and the firmware's
    filtering), and the lowest true pressure once the ramped setpoint had come
    down to the target (MPa)."""
    worst = lowest = None
    target = round(TARGET_MPA * 1e6)
    stepped = False
    with open(truth, newline="") as f:
        for row in csv.DictReader(f):
            try:
                true = float(row["ch1_pressure_pa"])
                measured = float(row["ch1_measured_pa"])
                setpoint = int(row["ch1_setpoint_pa"])
                still = row["ch1_fill"] == "0" and row["ch1_vent"] == "0"
            except (KeyError, TypeError, ValueError):
                return None, None
            if still and true > 0.5e6:
                e = abs(measured - true) / 1000
                worst = e if worst is None else max(worst, e)
            stepped = stepped or (setpoint == target and true < ACTIVATION_MPA * 0.9e6)
            if stepped:
                lowest = true / 1e6 if lowest is None else min(lowest, true / 1e6)
    return worst, lowest


def report(s: Summary, out: Path, export_path: Path, png: Path) -> str:
    lines = [
        "",
        f"isopress demo: {s.simulated_s / 60:.1f} simulated minutes",
        f"  database     {out / 'demo.sqlite'}",
        f"  BDF export   {export_path}",
        f"  plot         {png}",
        f"  truth log    {out / 'truth.csv'}  (what the plant really did)",
        f"  samples stored: {s.samples} on channel 1, {s.samples_all} in all",
    ]
    if s.gaps:
        lost = ", ".join(
            f"{g['stream']} {g['first_seq']}..{g['last_seq']} ({g['reason']})" for g in s.gaps
        )
        lines.append(f"  gaps: {len(s.gaps)}: {lost}")
    else:
        lines.append("  gaps: none (every sample the board sent is in the record)")
    if s.alarm_events:
        kinds: dict[str, int] = {}
        for text in s.alarm_events:
            kind = text.split(":", 1)[0].removeprefix("ch 1 ")
            kinds[kind] = kinds.get(kind, 0) + 1
        counts = ", ".join(f"{k} {n}" for k, n in kinds.items())
        lines.append(f"  alarms and safety events: {len(s.alarm_events)} ({counts}); the last:")
        lines.extend(f"    {t}" for t in s.alarm_events[-4:])
    else:
        lines.append("  alarms: none")
    lines.append(f"  final pressure: {commands.show(s.final_mpa)} ({s.final_mode})")
    if s.reached_target:
        after = s.target_reached_after_s
        when = f" {after:.0f} s after the cycler's event" if after is not None else ""
        lines.append(f"  reached {TARGET_MPA:g} MPa{when}")
    if s.lowest_after_step_mpa is not None:
        true = s.lowest_true_after_step_mpa
        plant = f", true {commands.show(true)} (plant)" if true is not None else ""
        lowest = commands.show(s.lowest_after_step_mpa)
        lines.append(
            f"  lowest pressure after the step down: measured {lowest} (single samples, "
            f"sensor noise included){plant}"
        )
    for sp, share in s.within_pct.items():
        lines.append(f"  within {BAND_PCT:g} % of {sp} for {share:.1f} % of the time once reached")
    if s.sensor_error_max_kpa is not None:
        lines.append(
            f"  measured vs true pressure (plant), valves closed: at most "
            f"{s.sensor_error_max_kpa:.1f} kPa apart"
        )
    if s.ok:
        lines.append("OK")
    else:
        lines.extend(f"FAILED: {p}" for p in s.problems)
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], events: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = rows[0]["device_time_ms"]
    t = [(r["device_time_ms"] - t0) / 60000 for r in rows]
    fig, (ax, dev) = plt.subplots(
        2, 1, figsize=(10, 7), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    ax.plot(t, [r["pressure_pa"] / 1e6 for r in rows], lw=1.0, label="pressure (channel 1)")
    ax.plot(t, [r["setpoint_pa"] / 1e6 for r in rows], lw=1.0, ls="--", color="k", label="setpoint")
    # below: how far from the setpoint, where 0.5 % of it is a visible band
    held = [r for r in rows if r["setpoint_pa"] > 0]
    th = [(r["device_time_ms"] - t0) / 60000 for r in held]
    dev.plot(th, [(r["pressure_pa"] - r["setpoint_pa"]) / 1e3 for r in held], lw=0.6)
    dev.fill_between(
        th,
        [-r["setpoint_pa"] * BAND_PCT / 100 / 1e3 for r in held],
        [r["setpoint_pa"] * BAND_PCT / 100 / 1e3 for r in held],
        color="green",
        alpha=0.12,
        label=f"±{BAND_PCT:g} % of the setpoint",
    )
    dev.set_ylim(-60, 60)
    dev.axhline(0, color="k", lw=0.6)
    marked = False
    for e in events:
        if e["channel"] != CHANNEL:
            continue
        x = (e["device_time_ms"] - t0) / 60000
        if e["kind"] in ("ALARM_RAISED", "TRIP"):
            for a in (ax, dev):
                a.axvline(x, color="red", lw=0.8, alpha=0.5)
            ax.plot([x], [e["a"] / 1e6], "rx", label=None if marked else "alarm raised")
            marked = True
        elif e["kind"] == "PROFILE_STEP" and e["code"] == 2:
            for a in (ax, dev):
                a.axvline(x, color="green", lw=0.8, ls=":")
            ax.plot([], [], color="green", ls=":", label="cycler event: step to 2 MPa")
    dev.set_xlabel("simulated time / min")
    ax.set_ylabel("pressure / MPa")
    dev.set_ylabel("pressure - setpoint / kPa")
    ax.set_title("isopress demo: activation at 5 MPa, then 2 MPa from the cycler's event")
    for a in (ax, dev):
        a.grid(True, alpha=0.3)
        a.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


# -- the run ---------------------------------------------------------------------------------


class LiveView:
    """The monitor on a terminal, else a progress line every few seconds."""

    def __init__(self, c: Client, tty: bool) -> None:
        self.c = c
        self.tty = tty
        self.m = monitor.Monitor(color=tty, devices={DEVICE})
        self.screen = monitor.Screen(sys.stdout, in_place=True) if tty else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="stream", daemon=True)
        self._last_line = 0.0

    def start(self) -> LiveView:
        self.m.seed(self.c.device(DEVICE))
        if self.screen:
            self.screen.__enter__()
        self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for msg in self.c.stream(
                    device=DEVICE, kinds="samples,event,link,gap,cycler_event"
                ):
                    self.m.feed(msg)
                    if self._stop.is_set():
                        return
            except ApiError:
                time.sleep(0.5)

    def tick(self, note: str) -> None:
        if self.screen:
            lines = self.m.render()
            self.screen.draw([*lines, "", note])
        elif time.monotonic() - self._last_line >= 5:
            self._last_line = time.monotonic()
            v = self.m.channels.get((DEVICE, CHANNEL))
            if v is not None:
                print(
                    f"  {note}: channel 1 {commands.show(v.pressure)}, setpoint "
                    f"{commands.show(v.setpoint)}, {v.mode}",
                    flush=True,
                )

    def stop(self) -> None:
        self._stop.set()
        if self.screen:
            self.screen.__exit__()


def run_demo(seconds: float, speed: float, out: Path, tty: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    db, truth = out / "demo.sqlite", out / "truth.csv"
    for stale in (db, out / "demo.sqlite-wal", out / "demo.sqlite-shm"):
        stale.unlink(missing_ok=True)
    # the bridge logs to a file: its lines would tear the live view
    log = out / "demo.log"
    handler = logging.FileHandler(log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    link = Path(tempfile.mkdtemp(prefix="isopress-demo-")) / "board"
    print(f"isopress demo: simulated board at {speed:g}x, bridge, live view; output in {out}")
    advanced = False
    try:
        with (
            SimProcess(link, truth=truth, speed=speed, truth_every_ms=1000) as sim,
            BridgeThread(db, {DEVICE: str(link)}, secrets.token_urlsafe(16), speed) as bridge,
        ):
            c = bridge.client()
            wait_for(
                "the board did not connect", lambda: c.channel(DEVICE, CHANNEL)["connected"], 30
            )
            wait_for("no sample arrived", lambda: c.channel(DEVICE, CHANNEL)["seq"] is not None, 30)
            wait_for(
                "the bridge did not read the limits",
                lambda: c.limits(DEVICE, CHANNEL)["max_working_mpa"] is not None,
                30,
            )
            c.load_profile(
                DEVICE, CHANNEL, [set_step(ACTIVATION_MPA), wait_host(), set_step(TARGET_MPA)]
            )
            c.start_profile(DEVICE, CHANNEL)
            view = LiveView(c, tty).start()
            try:
                advanced = _schedule(c, view, seconds)
            finally:
                view.stop()
            time.sleep(0.3)  # the last samples reach the record
            if sim.proc is not None and sim.proc.poll() not in (None, 0):
                raise RuntimeError(f"the simulated board exited with {sim.proc.returncode}")
    except (TimeoutError, RuntimeError, SimError, ApiError) as e:
        print(f"isopress demo: failed: {e} (log: {log})", file=sys.stderr)
        return EXIT_FAILED
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
        handler.close()
        with contextlib.suppress(OSError):
            link.parent.rmdir()
    return _afterwards(out, db, truth, advanced)


def _schedule(c: Client, view: LiveView, seconds: float) -> bool:
    start = time.monotonic()
    half = seconds / 2
    advanced = False
    posted = False
    while (elapsed := time.monotonic() - start) < seconds:
        if not posted and elapsed >= half:
            posted = True
            try:
                advanced = bool(c.cycler_event(DEVICE, CHANNEL, cycle=1).get("advanced"))
            except ApiError as e:
                view.m.note(DEVICE, time.time(), f"cycler event refused: {e.message}")
        note = f"{elapsed:4.0f} / {seconds:g} s  " + (
            "cycler event posted: 2 MPa"
            if posted
            else f"5 MPa until the cycler event at {half:.0f} s"
        )
        view.tick(note)
        time.sleep(0.25)
    return advanced


def _afterwards(out: Path, db: Path, truth: Path, advanced: bool) -> int:
    summary, rows, events = summarise(db, truth, advanced)
    export_path = out / "demo-ch1-bdf.csv"
    png = out / "demo.png"
    args = argparse.Namespace(
        format="bdf-csv",
        out=str(export_path),
        device=DEVICE,
        channel=CHANNEL,
        run=None,
        since=None,
        until=None,
    )
    try:
        with Store(db, readonly=True) as st:
            export.export(st, args)
    except (export.ExportError, OSError) as e:
        summary.problems.append(f"the BDF export failed: {e}")
    if rows:
        try:
            plot(rows, events, png)
        except Exception as e:  # matplotlib's errors have no common base
            summary.problems.append(f"the plot failed: {e}")
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    print(report(summary, out, export_path, png))
    return EXIT_OK if summary.ok else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    if args.seconds < MIN_SECONDS:
        print(f"isopress demo: --seconds must be at least {MIN_SECONDS:g}", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.speed <= 50:
        print("isopress demo: --speed is 1 to 50 (the board's clock against ours)", file=sys.stderr)
        return EXIT_USAGE
    paths.tool("micropython")  # ToolMissing -> exit 3 before anything starts
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="isopress-demo-out-"))
    tty = sys.stdout.isatty() and not args.plain
    try:
        return run_demo(args.seconds, args.speed, out, tty)
    except KeyboardInterrupt:
        print("\nisopress demo: interrupted", file=sys.stderr)
        return EXIT_FAILED


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="run the whole system on a simulated holder",
        description=(
            "Start a simulated board (the real firmware in MicroPython against the plant "
            "model), the bridge and the live view; run the activation-then-target profile "
            "on channel 1 (5 MPa until the cycler's event half-way through, then 2 MPa); "
            "then export the record in BDF columns, plot it, and print a summary."
        ),
    )
    p.add_argument(
        "--seconds",
        type=commands.positive,
        default=75.0,
        metavar="N",
        help=f"wall-clock length (75; at least {MIN_SECONDS:g})",
    )
    p.add_argument(
        "--speed", type=commands.positive, default=20.0, metavar="X", help="simulated s per s (20)"
    )
    p.add_argument("--out", metavar="DIR", help="where the database, export and plot go")
    p.add_argument("--plain", action="store_true", help="progress lines instead of the live view")
    p.set_defaults(func=cmd_demo)
    return p
