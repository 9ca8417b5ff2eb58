"""`isopress bench bridge`: the bridge under a lab's load, measured from outside.

N traffic generators speak the real protocol on real ptys (HELLO, CLOCK,
telemetry at a fixed rate, REPLAY from a ring, ACKs), all from one thread of
this process, each with its own device clock: an offset and a drift from the
host's, so the truth of every device timestamp is known here. The bridge
runs as its own process (`python -m isopress.bridge`), writing to a scratch
SQLite file with the default sync="full", and this process reads its live
stream (SSE) as a client would. Figures:

- ingest_samples_per_s: channel samples the bridge committed per second;
  lost_samples: what the generators made minus what the store holds (every
  device's record is also checked for contiguous sequence numbers);
- bridge_cpu_fraction: the bridge process's CPU seconds per wall second
  (time.process_time() in the bridge, read from GET /api/v1/status), with the
  stream being read;
- latency_p50_ms / latency_p99_ms: from a sample's device timestamp (mapped to
  UTC with the generator's true clock) to its arrival on the stream here, so
  it holds the wait for the batch, the commit (with fsync) and the fan-out;
  a device timestamp is a whole ms, read at some moment within it, so each
  figure is measured from the middle of that ms (+-0.5 ms);
- clock_sync_error_ms: |bridge UTC - true UTC| of the streamed samples after
  the warm-up (p99, and max), where true UTC is when the generator's clock
  was in the middle of the sample's ms: the link's clock sync over a pty.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cobs import cobs

from isopress import codec
from isopress.client import Client
from isopress.protocol import wire

# ingest: what was offered (6,400/s by default) less 1 %, because a measuring
# window's edges cut batches; that every sample made was stored is
# `lost_samples`. None: worked out from the figures.
TARGETS: dict[str, tuple[str, float | None]] = {
    "ingest_samples_per_s": (">=", None),
    "lost_samples": ("<=", 0),
    "bridge_cpu_fraction": ("<", 0.5),
    "latency_p99_ms": ("<=", 50),
    "clock_sync_error_ms": ("<=", 1.0),
}
_HEADER = struct.Struct("<BBHBB")
_RESULT = {name: n for n, name in wire.RESULTS}
_LIMITS = {16: 7_000_000, 17: 8_000_000, 18: 7_500_000, 19: 0, 20: 1_000_000, 21: 500_000}
OUT_CAP = 64 * 1024


class _Packer:
    """Frames of one message with struct, from codec's layout table."""

    def __init__(self, message: str) -> None:
        m = codec.MESSAGES[message]
        self.id = m.id
        self.head = struct.Struct("<" + "".join(f.code for f in m.head))
        self.item = struct.Struct("<" + "".join(f.code for f in m.item)) if m.item else None

    def frame(
        self, head: tuple, items: Sequence[tuple] = (), seq: int = 0, flags: int = 0
    ) -> bytes:
        payload = self.head.pack(*head)
        if self.item is not None:
            payload += b"".join(self.item.pack(*i) for i in items)
        raw = _HEADER.pack(wire.VERSION, self.id, seq & 0xFFFF, flags, len(payload)) + payload
        raw += codec.crc16(raw).to_bytes(2, "little")
        return b"\x00" + cobs.encode(raw) + b"\x00"


_P = {name: _Packer(name) for name in ("HELLO", "CLOCK", "TELEMETRY", "EVENT", "ACK",
                                        "REPLAY_DONE")}  # fmt: skip


class _Device:
    def __init__(
        self, index: int, path: Path, channels: int, ring: int, rng: random.Random
    ) -> None:
        self.index = index
        self.path = path
        self.channels = channels
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master, self.slave = master, slave
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.symlink(os.ttyname(slave), path)
        self.decoder = codec.StreamDecoder()
        self.out = bytearray()
        self.seq = 0
        self.frames = 0
        self.ring: deque[tuple[int, int, list[tuple]]] = deque(maxlen=ring)
        self.ring_size = ring
        # the device's clock: an uptime offset and a drift against the host's
        self.drift = rng.uniform(-50e-6, 50e-6)
        self.t_base = time.time() - rng.uniform(600, 86_400)
        self.boot_id = rng.randrange(1, 0xFFFF)
        self.board_id = struct.pack("<Q", 0xB0A4D000 + index)
        self.dropped = 0
        self.boot = (self.ms(time.time()), 0, 0, 1, 0, 0, self.boot_id, 0)

    def ms(self, now: float) -> int:
        return int((now - self.t_base) * 1000.0 * (1.0 + self.drift)) & 0xFFFFFFFF

    def true_utc(self, device_ms: float) -> float:
        """When this device's counter read `device_ms` (a fraction: within the ms)."""
        return self.t_base + device_ms / (1000.0 * (1.0 + self.drift))

    def send(self, frame: bytes) -> None:
        if len(self.out) > OUT_CAP:
            self.dropped += 1
            return
        self.out += frame
        self.frames += 1
        self.flush()

    def flush(self) -> None:
        if not self.out:
            return
        try:
            n = os.write(self.master, self.out)
        except (BlockingIOError, OSError):
            return
        del self.out[:n]

    def tick(self, now: float) -> None:
        ms = self.ms(now)
        seq = self.seq
        self.seq += 1
        items = [
            (ch, 5_000_000 + (seq * 7 + ch) % 50 - 25, 20_000 + ch, 5_000_000, 0, 1, 0)
            for ch in range(1, self.channels + 1)
        ]
        self.ring.append((seq, ms, items))
        self.send(_P["TELEMETRY"].frame((ms, seq & 0xFFFFFFFF), items, self.frames))

    def handle(self, now: float) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return
        for f in self.decoder.feed(data):
            name, fl = f.message, f.fields
            if name == "IDENTIFY":
                items = [(ch, 1, 1, 10_000_000) for ch in range(1, self.channels + 1)]
                head = (0, 1, 0, wire.VERSION, wire.schema_hash(), self.board_id, self.boot_id,
                        0xBEEF, 50, self.ring_size)  # fmt: skip
                self.send(_P["HELLO"].frame(head, items, self.frames))
            elif name == "CLOCK_QUERY":
                self.send(_P["CLOCK"].frame((fl["token"], self.ms(time.time())), (), self.frames))
            else:
                msg = codec.MESSAGES[name]
                value = _LIMITS.get(fl.get("key", 0), 0) if name == "GET_CONFIG" else 0
                ack = (f.seq, msg.id, _RESULT["OK"], value)
                self.send(_P["ACK"].frame(ack, (), self.frames))
                if name == "REPLAY":
                    self._replay(fl["stream"], fl["from_seq"], fl["count"])

    def _replay(self, stream: int, first: int, count: int) -> None:
        limit = 0x80000000 if count == 0xFFFF else count
        sent = 0
        if stream == 0:
            for seq, ms, items in list(self.ring):
                if (seq - first) & 0xFFFFFFFF < limit:
                    self.send(_P["TELEMETRY"].frame((ms, seq), items, self.frames, 1))
                    sent += 1
            lo, hi = (self.ring[0][0], self.ring[-1][0]) if self.ring else (self.seq, self.seq - 1)
        else:
            if first == 0:
                self.send(_P["EVENT"].frame(self.boot, (), self.frames, 1))
                sent = 1
            lo, hi = 0, 0
        done = (stream, lo & 0xFFFFFFFF, hi & 0xFFFFFFFF, sent)
        self.send(_P["REPLAY_DONE"].frame(done, (), self.frames))

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Generator:
    """`devices` boards on ptys under `folder`, telemetry at `hz`, phases staggered."""

    def __init__(
        self, folder: Path, devices: int, channels: int, hz: float, ring: int = 512, seed: int = 7
    ) -> None:
        rng = random.Random(seed)
        self.devices = [
            _Device(i, folder / f"g{i:02d}", channels, ring, rng) for i in range(devices)
        ]
        self.hz = hz
        self._stop = threading.Event()
        self._producing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generators", daemon=True)
        self.cpu_s = 0.0

    def start(self) -> Generator:
        self._producing.set()
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop making samples (commands are still answered)."""
        self._producing.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for d in self.devices:
            d.close()

    def _run(self) -> None:
        cpu0 = time.thread_time()
        devs = self.devices
        by_fd = {d.master: d for d in devs}
        n = len(devs)
        step = 1.0 / (self.hz * n)
        due = time.time()
        k = 0
        while not self._stop.is_set():
            now = time.time()
            wait = max(0.0, due - now)
            writers = [d.master for d in devs if d.out]
            r, w, _ = select.select(list(by_fd), writers, [], min(wait, 0.05))
            now = time.time()
            for fd in r:
                by_fd[fd].handle(now)
            for fd in w:
                by_fd[fd].flush()
            self.cpu_s = time.thread_time() - cpu0
            while now >= due:
                if self._producing.is_set():
                    devs[k % n].tick(now)
                k += 1
                due += step
                if now - due > 1.0:  # fell far behind (a stall): do not burst to catch up
                    due = now


def _read_stream(url: str, seconds: float, out: Any) -> None:
    """In a child process: read the bridge's stream for `seconds`, noting when
    each data line arrived (before decoding it), and send the list back."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
    conn.request("GET", "/api/v1/stream?kinds=samples", headers={"Accept": "text/event-stream"})
    resp = conn.getresponse()
    # the raw socket file: each of the bridge's writes is one HTTP chunk of
    # whole SSE messages, so the chunk-size lines are just lines to skip
    fp = resp.fp
    got: list[tuple[float, str, int, float, float, int]] = []
    end = time.time() + seconds
    while time.time() < end:
        try:
            line = fp.readline()
        except TimeoutError:  # the generators have stopped: nothing more comes
            break
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        arrived = time.time()
        for d in json.loads(line[6:]):
            got.append((arrived, d["device"], d["seq"], d["device_time"], d["utc"], d["flags"]))
    conn.close()
    out.send(got)
    out.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    i = min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))
    return s[i]


def _start_bridge(
    gen: Generator, db: Path, log: Path, token: str, flush_ms: float | None
) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "isopress.bridge", "--db", str(db), "--http", "127.0.0.1:0",
            "--token", token, "--log-level", "WARNING"]  # fmt: skip
    if flush_ms is not None:
        args += ["--flush-ms", str(flush_ms)]
    for d in gen.devices:
        args += ["--device", f"{d.path.name}={d.path}"]
    with open(log, "ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "API on http://" in line:
            return proc, line.split("API on ", 1)[1].split("/api/v1", 1)[0]
    proc.kill()
    raise RuntimeError(f"the bridge did not start: see {log}")


def run_bench(
    devices: int = 32,
    channels: int = 4,
    hz: float = 50.0,
    seconds: float = 20.0,
    warmup_s: float = 5.0,
    folder: Path | None = None,
    flush_ms: float | None = None,
) -> dict[str, Any]:
    """Runs the load and returns the figures (see the module's docstring)."""
    tmp = tempfile.TemporaryDirectory(prefix="isopress-bench-") if folder is None else None
    where = Path(tmp.name if tmp is not None else str(folder))
    where.mkdir(parents=True, exist_ok=True)
    token = "bench"
    gen = Generator(where, devices, channels, hz).start()
    proc: subprocess.Popen | None = None
    arrivals: list[tuple[float, str, int, float, float, int]] = []
    try:
        proc, url = _start_bridge(
            gen, where / "bench.sqlite", where / "bridge.log", token, flush_ms
        )
        client = Client(url, token, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            links = client.status()["links"]
            if all(v["connected"] and v["limits_read"] for v in links.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("not every generator connected in 30 s")
            time.sleep(0.2)

        # the stream is read in a process of its own, so the generators' thread
        # and the reader do not wait for each other's GIL and skew the times
        ctx = multiprocessing.get_context("spawn")
        results, sender = ctx.Pipe(duplex=False)
        reader = ctx.Process(
            target=_read_stream, args=(url, warmup_s + seconds + 1.0, sender), daemon=True
        )
        reader.start()
        time.sleep(warmup_s)
        s0, t0 = client.status(), time.time()
        made0 = sum(d.seq for d in gen.devices)
        time.sleep(seconds)
        s1, t1 = client.status(), time.time()
        made1 = sum(d.seq for d in gen.devices)
        gen.pause()
        # let the bridge commit the last samples the generators made
        made = {d.path.name: d.seq for d in gen.devices}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            links = client.status()["links"]
            if all(v["stats"]["samples"] >= made[k] for k, v in links.items()):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        st_end = client.status()
        if results.poll(30):
            arrivals = results.recv()
        reader.join(5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        figures = _figures(gen, where / "bench.sqlite", s0, s1, t0, t1, st_end, arrivals,
                           devices, channels, hz)  # fmt: skip
        figures["made_samples_per_s"] = round((made1 - made0) * channels / (t1 - t0), 1)
        return figures
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        gen.stop()
        if tmp is not None:
            tmp.cleanup()


def _figures(
    gen: Generator,
    db: Path,
    s0: dict,
    s1: dict,
    t0: float,
    t1: float,
    st_end: dict,
    arrivals: list[tuple[float, str, int, float, float, int]],
    devices: int,
    channels: int,
    hz: float,
) -> dict[str, Any]:
    from isopress.store import Store

    wall = t1 - t0
    ingested = s1["store"]["samples_added"] - s0["store"]["samples_added"]
    cpu = s1["process"]["cpu_s"] - s0["process"]["cpu_s"]
    by_name = {d.path.name: d for d in gen.devices}
    lat, err = [], []
    for arrived, name, _seq, dev_s, utc, flags in arrivals:
        d = by_name[name]
        # the counter read this ms for a whole ms: its middle is the truth
        truth = d.true_utc(round(dev_s * 1000) + 0.5)
        if t0 <= arrived <= t1:
            err.append(abs(utc - truth) * 1000)
            if not flags & 1:
                lat.append((arrived - truth) * 1000)
    made = sum(d.seq for d in gen.devices) * channels
    stored, holes, gaps = 0, 0, 0
    with Store(db, readonly=True) as st:
        for d in gen.devices:
            for ch in range(1, channels + 1):
                seqs = [r[2] for rows in st.sample_batches(d.path.name, ch) for r in rows]
                stored += len(seqs)
                holes += (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else 0
        gaps = len(st.gaps())
    link_err = [v["clock"]["error_ms"] for v in st_end["links"].values() if v["clock"]["error_ms"]]
    return {
        "devices": devices,
        "channels": channels,
        "telemetry_hz": hz,
        "seconds": round(wall, 2),
        "offered_samples_per_s": devices * channels * hz,
        "ingest_samples_per_s": round(ingested / wall, 1),
        "made_samples": made,
        "stored_samples": stored,
        "lost_samples": made - stored,
        "holes": holes,
        "gap_records": gaps,
        "bridge_cpu_fraction": round(cpu / wall, 4),
        "latency_p50_ms": round(_percentile(lat, 50), 2),
        "latency_p99_ms": round(_percentile(lat, 99), 2),
        "latency_max_ms": round(max(lat), 2) if lat else math.nan,
        "latency_samples": len(lat),
        "clock_sync_error_ms": round(_percentile(err, 99), 3),
        "clock_sync_error_p50_ms": round(_percentile(err, 50), 3),
        "clock_sync_error_max_ms": round(max(err), 3) if err else math.nan,
        "clock_sync_bound_ms": round(max(link_err), 3) if link_err else math.nan,
        "generator_cpu_fraction": round(gen.cpu_s / max(wall, 1e-9), 4),
        "store_batches": s1["store"]["batches"] - s0["store"]["batches"],
        "sync": s1["store"]["sync"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def _met(name: str, figures: dict[str, Any]) -> str:
    op, target = TARGETS[name]
    if target is None:
        target = round(0.99 * figures["offered_samples_per_s"])
    value = figures[name]
    if value != value:  # NaN
        return "no data"
    ok = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    return f"{op} {target:g}: {'ok' if ok else 'MISSED'}"


def report(figures: dict[str, Any]) -> str:
    """The figures as a table, with the targets and whether each was met."""
    f = figures
    lines = [
        f"isopress bench bridge: {f['devices']} devices x {f['channels']} channels x "
        f"{f['telemetry_hz']:g} Hz = {f['offered_samples_per_s']:,.0f} samples/s offered, "
        f"{f['seconds']:g} s measured, store sync={f['sync']}, {f['cpus']} CPUs",
        "",
        f"{'figure':<28}{'measured':>14}  target",
    ]
    rows = [
        ("ingest_samples_per_s", f"{f['ingest_samples_per_s']:,.0f}"),
        ("lost_samples", f"{f['lost_samples']}"),
        ("bridge_cpu_fraction", f"{f['bridge_cpu_fraction']:.3f}"),
        ("latency_p50_ms", f"{f['latency_p50_ms']:.1f}"),
        ("latency_p99_ms", f"{f['latency_p99_ms']:.1f}"),
        ("clock_sync_error_ms", f"{f['clock_sync_error_ms']:.3f}"),
    ]
    for name, text in rows:
        target = _met(name, f) if name in TARGETS else "-"
        lines.append(f"{name:<28}{text:>14}  {target}")
    lines += [
        "",
        f"the generators made {f['made_samples_per_s']:,.0f} samples/s in the window; "
        f"stored {f['stored_samples']:,} of {f['made_samples']:,} samples made; "
        f"{f['holes']} holes, {f['gap_records']} gap records; "
        f"{f['store_batches']} commits in the window",
        f"latency max {f['latency_max_ms']:.1f} ms over {f['latency_samples']:,} live samples; "
        f"clock error p50 {f['clock_sync_error_p50_ms']:.3f} ms, max "
        f"{f['clock_sync_error_max_ms']:.3f} ms (the link's own bound: "
        f"{f['clock_sync_bound_ms']:.3f} ms)",
        f"generators used {f['generator_cpu_fraction']:.2f} of a core in this process",
    ]
    return "\n".join(lines)


def failed(figures: dict[str, Any]) -> list[str]:
    """Names of the targets missed."""
    return [n for n in TARGETS if not _met(n, figures).endswith("ok")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="isopress bench bridge", description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--devices", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--hz", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--flush-ms", type=float, help="the bridge's --flush-ms (its default)")
    a = p.parse_args(argv)
    figures = run_bench(a.devices, a.channels, a.hz, a.seconds, flush_ms=a.flush_ms)
    print(report(figures))
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 1 if failed(figures) else 0


if __name__ == "__main__":
    sys.exit(main())
