"""The HTTP API and the Python client against a bridge with fake boards.

A real bridge (links on real ptys, SQLite, aiohttp) runs in a thread; the
tests talk to it over HTTP with isopress.client, as a cycling script would.
Every refusal is checked for its status, its JSON body naming the problem,
and for having changed nothing; every answer is checked against the schema
the bridge's own OpenAPI document gives for it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_bridge import LabBoard

from isopress import api, bridge
from isopress.client import ApiError, Client, hold, ramp, set_step, wait_host
from isopress.store import Store

TOKEN = "s3cret-token"
CH = "/api/v1/devices/rig/channels/1"
CH_T = "/api/v1/devices/{device}/channels/{channel}"  # as the OpenAPI document writes it


class Served:
    """A bridge and its API on a thread of their own, on a free port."""

    def __init__(self, store: Store, devices: dict[str, str], token: str = TOKEN) -> None:
        self.store = store
        self.devices = devices
        self.token = token
        self.port = 0
        self.bridge: bridge.Bridge | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def go() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(b: bridge.Bridge, port: int) -> None:
                self.bridge, self.port = b, port
                self._ready.set()

            await bridge.serve(
                self.store,
                self.devices,
                "127.0.0.1",
                0,
                self.token,
                ready=ready,
                stop=self._stop,
                link_options={"backoff_s": (0.05, 0.5)},
            )

        try:
            asyncio.run(go())
        except BaseException as e:
            self._error = e
            self._ready.set()

    def start(self) -> Served:
        self._thread.start()
        assert self._ready.wait(10), "the bridge did not start"
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = TOKEN, name: str | None = None) -> Client:
        return Client(self.url, token if token is not None else "", name=name, timeout=10)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Runs fn on the bridge's loop (its state is the loop's alone)."""
        assert self.loop is not None

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(5)

    def drain(self) -> None:
        assert self.loop is not None and self.bridge is not None
        asyncio.run_coroutine_threadsafe(self.bridge.recorder.drain(), self.loop).result(10)


def wait_for(cond: Callable[[], Any], timeout: float = 8.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.02)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Served, LabBoard]]:
    board = LabBoard(tmp_path / "tty", channels=4, telemetry_hz=50).start()
    store = Store(tmp_path / "rec.sqlite")
    served = Served(store, {"rig": board.url}).start()
    c = served.client()
    wait_for(lambda: served.on_loop(lambda: served.bridge.boards["rig"].limits_read), what="limits")
    wait_for(lambda: c.channel("rig", 1)["seq"] is not None, what="a committed sample")
    yield served, board
    served.stop()
    board.stop()
    store.close()


def raw(served: Served, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    """A request without the client: status, headers, decoded JSON."""
    req = urllib.request.Request(served.url + path, data=body, method=method,
                                 headers=headers or {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def commands_sent(board: LabBoard, message: str) -> list[dict[str, Any]]:
    return [f.fields for f in board.commands() if f.message == message]


def refused(fn: Callable[[], Any], status: int, error: str) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn()
    assert (e.value.status, e.value.error) == (status, error), e.value
    return e.value


# -- the OpenAPI document ------------------------------------------------------------

DOC = api.openapi()


def resolve(ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    return DOC["components"]["schemas"][ref.rsplit("/", 1)[1]]


def conforms(schema: dict[str, Any], value: Any, where: str = "$", loose: bool = False) -> None:
    """A small validator for the OpenAPI 3.0 schema subset the document uses."""
    if "$ref" in schema:
        return conforms(resolve(schema["$ref"]), value, where, loose)
    if "allOf" in schema:
        for part in schema["allOf"]:
            conforms(part, value, where, loose=True)
        return None
    if value is None:
        assert schema.get("nullable"), f"{where}: null where {schema} allows none"
        return None
    t = schema.get("type")
    kinds = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "object": dict,
        "array": list,
    }
    if t is not None:
        assert isinstance(value, kinds[t]), f"{where}: {value!r} is not {t}"
        if t in ("integer", "number"):
            assert not isinstance(value, bool), f"{where}: {value!r} is not {t}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if t == "object":
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{where}: {name} missing"
        extra = schema.get("additionalProperties", True)
        for name, v in value.items():
            if name in props:
                conforms(props[name], v, f"{where}.{name}", False)
            elif isinstance(extra, dict):
                conforms(extra, v, f"{where}.{name}")
            elif extra is False and not loose:
                raise AssertionError(f"{where}: {name} is not in the schema")
    if t == "array" and "items" in schema:
        for i, v in enumerate(value):
            conforms(schema["items"], v, f"{where}[{i}]")
    return None


def answer_schema(method: str, path: str, status: int) -> dict[str, Any]:
    op = DOC["paths"][path][method.lower()]
    content = op["responses"][str(status)]["content"]
    return content["application/json"]["schema"]


def test_the_document_names_every_route_and_every_reference_resolves(rig):
    served, _ = rig
    app = served.on_loop(lambda: api.make_app(served.bridge, TOKEN))
    app_routes = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"
    }
    documented = {(m.upper(), p) for p, ops in DOC["paths"].items() for m in ops}
    assert app_routes == documented
    status, _, served_doc = raw(served, "GET", "/openapi.json")
    assert status == 200 and served_doc == json.loads(json.dumps(DOC))
    assert served_doc["openapi"].startswith("3.")

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(DOC):
        resolve(ref)
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if method != "get":
                assert op["security"] == [{"bearer": []}], (method, path)
                assert {"400", "401", "403"} <= codes, (method, path)
            if "{device}" in path:
                assert "404" in codes, (method, path)
            if "requestBody" in op:
                assert "400" in codes
            for code in codes - {"200", "201"}:
                assert op["responses"][code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }
    # every error code the API can send is a documented status
    for code, status in api.STATUS.items():
        assert status in {400, 401, 403, 404, 405, 409, 422, 500, 502, 503, 504}, code


def test_reads_answer_with_what_the_document_says(rig):
    served, _ = rig
    c = served.client()
    served.drain()
    now = time.time()
    c.start_run("cell-A", "rig", 1, operator="ana")
    checks = [
        ("/api/v1/status", "/api/v1/status"),
        ("/api/v1/devices", "/api/v1/devices"),
        ("/api/v1/devices/rig", "/api/v1/devices/{device}"),
        (CH, "/api/v1/devices/{device}/channels/{channel}"),
        (CH + "/limits", "/api/v1/devices/{device}/channels/{channel}/limits"),
        (CH + "/profile", "/api/v1/devices/{device}/channels/{channel}/profile"),
        (CH + f"/samples?since={now - 60}", "/api/v1/devices/{device}/channels/{channel}/samples"),
        ("/api/v1/events", "/api/v1/events"),
        ("/api/v1/commands", "/api/v1/commands"),
        ("/api/v1/devices/rig/gaps", "/api/v1/devices/{device}/gaps"),
        ("/api/v1/runs", "/api/v1/runs"),
        ("/api/v1/runs/1", "/api/v1/runs/{run}"),
        (CH + "/config/max_working", "/api/v1/devices/{device}/channels/{channel}/config/{key}"),
        ("/api/v1/devices/rig/config/telemetry_hz", "/api/v1/devices/{device}/config/{key}"),
    ]
    for path, template in checks:
        status, _, body = raw(served, "GET", path)
        assert status == 200, (path, body)
        conforms(answer_schema("GET", template, 200), body, path)
    samples = c.samples("rig", 1, since=now - 60)
    assert samples and all(s["mode"] == "IDLE" for s in samples)


# -- auth ----------------------------------------------------------------------------


def test_writes_need_the_token_and_a_refused_one_changes_nothing(rig):
    served, board = rig
    body = json.dumps({"pressure_mpa": 1.0}).encode()
    status, headers, err = raw(served, "PUT", CH + "/setpoint", body)
    assert status == 401 and err["error"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    conforms(resolve("#/components/schemas/Error"), err)
    status, _, err = raw(served, "PUT", CH + "/setpoint", body, {"Authorization": "Basic abc"})
    assert status == 401
    refused(lambda: served.client("wrong").set_pressure("rig", 1, 1.0), 403, "forbidden")
    assert commands_sent(board, "SET_SETPOINT") == []
    # reads are open
    assert served.client(token="").channel("rig", 1)["channel"] == 1


# -- refusals ---------------------------------------------------------------------------


def test_unknown_device_channel_path_and_method(rig):
    served, _ = rig
    c = served.client()
    e = refused(lambda: c.channel("nope", 1), 404, "unknown_device")
    assert e.detail["known"] == ["rig"]
    e = refused(lambda: c.channel("rig", 9), 404, "unknown_channel")
    assert e.detail["known"] == [1, 2, 3, 4]
    refused(lambda: c.set_pressure("rig", 9, 1.0), 404, "unknown_channel")
    refused(lambda: c.request("GET", "/api/v1/devices/rig/channels/x"), 404, "unknown_channel")
    refused(lambda: c.request("GET", "/api/v1/nothing"), 404, "not_found")
    e = refused(lambda: c.request("DELETE", CH + "/setpoint"), 405, "method_not_allowed")
    assert "PUT" in e.detail["allowed"]
    refused(lambda: c.samples("nope", 1), 404, "unknown_device")
    refused(lambda: c.gaps("nope"), 404, "unknown_device")
    refused(lambda: c.events(device="nope"), 404, "unknown_device")
    refused(lambda: c.commands(device="nope"), 404, "unknown_device")


@pytest.mark.parametrize(
    "body, field, problem",
    [
        (b"{not json", None, "not JSON"),
        (b"[1, 2]", None, "not an object"),
        (b"{}", "pressure_mpa", "missing"),
        (b'{"pressure_mpa": "2"}', "pressure_mpa", "not a number"),
        (b'{"pressure_mpa": true}', "pressure_mpa", "not a number"),
        (b'{"pressure_mpa": 2, "rate": 1}', "rate", "unknown field"),
        (b'{"pressure_mpa": 2, "rate_mpa_s": null, "pressure": 2}', "pressure", "unknown field"),
    ],
)
def test_a_malformed_setpoint_is_400_naming_the_field_and_sends_nothing(rig, body, field, problem):
    served, board = rig
    status, _, err = raw(
        served, "PUT", CH + "/setpoint", body, {"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 400 and err["error"] == "bad_request"
    assert err["detail"]["field"] == field and err["detail"]["problem"] == problem
    assert err["message"]
    assert commands_sent(board, "SET_SETPOINT") == []


def test_out_of_range_is_422_with_the_limit_from_the_host_or_from_the_board(rig):
    served, board = rig
    c = served.client()
    e = refused(lambda: c.set_pressure("rig", 1, 7.5), 422, "out_of_range")
    assert (e.detail["field"], e.detail["limit"], e.detail["source"]) == (
        "pressure_mpa",
        7.0,
        "host",
    )
    e = refused(lambda: c.set_pressure("rig", 1, -0.5), 422, "out_of_range")
    assert e.detail["limit"] == 0.0
    e = refused(lambda: c.set_pressure("rig", 1, 2.0, rate=3.0), 422, "out_of_range")
    assert (e.detail["field"], e.detail["limit"]) == ("rate_mpa_s", 1.0)
    assert commands_sent(board, "SET_SETPOINT") == []
    # the board holds to less than it reported: its NACK value is the limit
    with board.lock:
        board.enforced[16] = 4_000_000
    e = refused(lambda: c.set_pressure("rig", 1, 5.0), 422, "out_of_range")
    assert (
        e.detail.items()
        >= {
            "field": "pressure_mpa",
            "limit": 4.0,
            "source": "board",
            "result": "OUT_OF_RANGE",
            "value": 4_000_000,
        }.items()
    )
    assert "4 MPa" in e.message
    assert [f["pressure"] for f in commands_sent(board, "SET_SETPOINT")] == [5_000_000]
    with board.lock:
        assert board._setpoint[1] == 0  # nothing changed on the board


def test_a_latched_channel_is_409_and_a_monitor_channel_takes_no_setpoint(rig):
    served, board = rig
    c = served.client()
    with board.lock:
        board.latched = 1
    e = refused(lambda: c.set_pressure("rig", 1, 2.0), 409, "latched")
    assert e.detail["result"] == "LATCHED"
    served.on_loop(lambda: setattr(served.bridge.boards["rig"].channels[4], "kind", "MONITOR"))
    e = refused(lambda: c.set_pressure("rig", 4, 2.0), 409, "not_supported")
    assert e.detail["kind"] == "MONITOR"


def test_a_disconnected_board_is_503_and_the_channel_says_so(rig):
    served, board = rig
    c = served.client()
    board.unplug(1.5)
    wait_for(lambda: not c.channel("rig", 1)["connected"], what="the unplug to show")
    e = refused(lambda: c.set_pressure("rig", 1, 1.0), 503, "not_connected")
    assert e.detail["state"] in ("waiting", "opening", "handshake")
    assert c.channel("rig", 1)["link"] != "connected"
    wait_for(lambda: c.channel("rig", 1)["connected"], what="the replug")
    assert c.set_pressure("rig", 1, 1.0)["ok"]


# -- commands that work ----------------------------------------------------------------


def test_a_setpoint_goes_to_the_board_and_shows_once_committed(rig):
    served, board = rig
    c = served.client(name="neware-7")
    r = c.set_pressure("rig", 1, 2.5, rate=0.25)
    conforms(answer_schema("PUT", "/api/v1/devices/{device}/channels/{channel}/setpoint", 200), r)
    assert commands_sent(board, "SET_SETPOINT") == [{"channel": 1, "pressure": 2_500_000,
                                                     "rate": 250_000}]  # fmt: skip
    state = wait_for(lambda: (s := c.channel("rig", 1))["setpoint_mpa"] == 2.5 and s)
    assert (
        state["mode"] == "HOLD"
        and state["alarms"] == []
        and state["valves"]
        == {
            "fill": False,
            "vent": False,
        }
    )
    assert abs(state["utc"] - time.time()) < 2
    served.drain()
    cmd = [x for x in c.commands() if x["message"] == "SET_SETPOINT"][-1]
    assert (cmd["client"], cmd["result"], cmd["device"], cmd["channel"]) == (
        "api:neware-7",
        "OK",
        "rig",
        1,
    )


def test_samples_and_events_by_time(rig):
    served, board = rig
    c = served.client()
    t0 = time.time()
    time.sleep(0.5)
    t1 = time.time()
    time.sleep(0.3)
    served.drain()
    every = c.samples("rig", 2)
    window = c.samples("rig", 2, since=t0, until=t1)
    assert window and all(t0 <= s["utc"] < t1 for s in window)
    assert 15 <= len(window) <= 35  # 50 Hz for 0.5 s
    seqs = [s["seq"] for s in every]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert [s["seq"] for s in c.samples("rig", 2, limit=7)] == seqs[:7]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 - 1))
    assert len(c.samples("rig", 2, since=iso)) >= len(window)
    refused(lambda: c.samples("rig", 2, since="yesterday"), 400, "bad_request")
    board.emit_event("LEAK_RATE", 2, 0, -12, 4_000_000)
    ev = wait_for(lambda: [e for e in c.events(since=t0) if e["kind"] == "LEAK_RATE"])
    assert ev[0]["channel"] == 2 and "-12 Pa/s" in ev[0]["text"]
    assert c.events(device="rig", channel=2, since=t0)[0]["kind"] == "LEAK_RATE"
    assert c.gaps("rig") == []


def test_the_stream_carries_committed_samples_and_events(rig):
    served, board = rig
    c = served.client()
    got: list[Any] = []
    seen_event = threading.Event()

    def read() -> None:
        for m in c.stream(device="rig", channel=3, timeout=10):
            got.append(m)
            if m.kind == "event" and m.data["kind"] == "CALIBRATION":
                seen_event.set()
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_for(lambda: len([m for m in got if m.kind == "sample"]) >= 20, what="streamed samples")
    board.emit_event("CALIBRATION", 3, 1, 500, 2_000_000)
    assert seen_event.wait(5)
    t.join(5)
    samples = [m.data for m in got if m.kind == "sample"]
    assert {s["channel"] for s in samples} == {3} and {s["device"] for s in samples} == {"rig"}
    seqs = [s["seq"] for s in samples]
    assert seqs == sorted(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for s in samples[:3]:
        conforms(resolve("#/components/schemas/Sample"), s)
    # everything streamed was committed: it is in the record
    stored = {s["seq"] for s in c.samples("rig", 3)}
    assert set(seqs) <= stored
    refused(lambda: next(iter(c.stream(kinds="nonsense"))), 400, "bad_request")
    refused(lambda: next(iter(c.stream(device="nope"))), 404, "unknown_device")


def test_a_profile_waits_for_the_cycler_and_a_cycle_end_advances_it(rig):
    served, board = rig
    c = served.client(name="cycler")
    r = c.load_profile("rig", 1, [set_step(5.0), wait_host(), set_step(2.0, 0.5)])
    conforms(answer_schema("PUT", CH_T + "/profile", 200), r)
    assert r["profile"]["steps"][1] == {"kind": "WAIT", "wait_for": "HOST", "timeout_s": 0.0}
    items = commands_sent(board, "PROFILE_LOAD")[0]["items"]
    assert [(i["step"], i["wait_for"], i["target"], i["rate"]) for i in items] == [
        (0, 0, 5_000_000, 0),
        (3, 1, 0, 0),
        (0, 0, 2_000_000, 500_000),
    ]
    refused(lambda: c.cycler_event("rig", 1, cycle=0), 409, "bad_state")  # not started
    c.start_profile("rig", 1)
    p = wait_for(lambda: (p := c.profile("rig", 1))["waiting_for_host"] and p)
    assert (p["running"], p["step"]) == (True, 1)
    refused(lambda: c.set_pressure("rig", 1, 1.0), 409, "bad_state")  # the profile owns it
    r = c.cycler_event("rig", 1, cycle=3)
    conforms(answer_schema("POST", CH_T + "/cycler-event", 200), r)
    assert r == {"ok": True, "recorded": True, "advanced": True, "from_step": 1}
    assert commands_sent(board, "PROFILE_ADVANCE") == [{"channel": 1, "from_step": 1, "cycle": 3}]
    wait_for(lambda: not c.profile("rig", 1)["running"], what="PROFILE_DONE")
    wait_for(lambda: c.channel("rig", 1)["setpoint_mpa"] == 2.0)
    # a second cycle end finds nothing waiting: 409, yet the cycler's event is recorded
    e = refused(lambda: c.cycler_event("rig", 1, cycle=4), 409, "bad_state")
    assert e.detail["recorded"] is True
    c.cycler_event("rig", 1, kind="pause")  # other kinds only record
    served.drain()
    cycles = served.store.cycler_events("rig", 1)
    assert [(x["kind"], x["cycle"]) for x in cycles] == [
        ("cycle_end", 0),
        ("cycle_end", 3),
        ("cycle_end", 4),
        ("pause", None),
    ]
    steps = [e for e in c.events(device="rig", channel=1) if e["kind"] == "PROFILE_STEP"]
    assert [(e["code"], e["b"]) for e in steps] == [(0, 0), (1, 0), (2, 3)]
    assert c.channel("rig", 1)["cycle"] == 4


def test_a_board_refusing_an_advance_is_409_and_changes_nothing(rig):
    served, _ = rig
    c = served.client()
    c.load_profile("rig", 2, [set_step(1.0), wait_host(), hold(10), ramp(2.0, 0.1)])
    c.start_profile("rig", 2)
    wait_for(lambda: c.profile("rig", 2)["waiting_for_host"])
    e = refused(lambda: c.advance_profile("rig", 2, from_step=0), 409, "bad_state")
    assert e.detail["from_step"] == 0 and "not waiting" in e.message
    assert c.profile("rig", 2)["step"] == 1
    assert c.advance_profile("rig", 2)["from_step"] == 1
    c.stop_profile("rig", 2)
    assert c.profile("rig", 2)["running"] is False


def test_profile_bodies_are_checked_step_by_step(rig):
    served, board = rig
    c = served.client()
    e = refused(lambda: c.load_profile("rig", 1, []), 400, "bad_request")
    assert e.detail["field"] == "steps"
    e = refused(lambda: c.load_profile("rig", 1, [{"kind": "JUMP"}]), 400, "bad_request")
    assert e.detail["field"] == "steps[0].kind"
    bad = [set_step(1.0), {"kind": "HOLD", "duration_s": 5, "target_mpa": 2}]
    e = refused(lambda: c.load_profile("rig", 1, bad), 400, "bad_request")
    assert e.detail["field"] == "steps[1].target_mpa"
    e = refused(lambda: c.load_profile("rig", 1, [set_step(1.0), set_step(9.0)]), 422,
                "out_of_range")  # fmt: skip
    assert (e.detail["field"], e.detail["limit"]) == ("steps[1].target_mpa", 7.0)
    e = refused(lambda: c.load_profile("rig", 1, [hold(-1)]), 422, "out_of_range")
    e = refused(lambda: c.load_profile("rig", 1, [hold(1)] * 18), 400, "bad_request")
    assert commands_sent(board, "PROFILE_LOAD") == []


def test_limits_alarms_vent_isolate(rig):
    served, board = rig
    c = served.client()
    assert c.limits("rig", 1)["max_working_mpa"] == 7.0
    e = refused(lambda: c.set_limits("rig", 1, trip_reset_mpa=8.5), 422, "out_of_range")
    assert (e.detail["field"], e.detail["limit"]) == ("trip_reset_mpa", 8.0)
    refused(lambda: c.set_limits("rig", 1), 400, "bad_request")
    refused(lambda: c.set_limits("rig", 1, trip=9), 400, "bad_request")
    r = c.set_limits("rig", 1, max_working_mpa=6.0, ramp_up_mpa_s=0.5)
    conforms(answer_schema("PUT", CH_T + "/limits", 200), r)
    assert r["limits"]["max_working_mpa"] == 6.0
    assert commands_sent(board, "SET_LIMITS") == [
        {
            "channel": 1,
            "max_working": 6_000_000,
            "trip": 8_000_000,
            "trip_reset": 7_500_000,
            "min_alarm": 0,
            "ramp_up": 500_000,
            "ramp_down": 500_000,
        }
    ]
    refused(lambda: c.set_pressure("rig", 1, 6.5), 422, "out_of_range")  # the new limit
    # alarms
    e = refused(lambda: c.ack_alarms("rig", 1, ["OVERPRESURE"]), 400, "bad_request")
    assert e.detail["field"] == "alarms[0]" and "OVERPRESSURE" in e.detail["choices"]
    with board.lock:
        board.latched, board.cause = 0b11, 0b10
    e = refused(lambda: c.ack_alarms("rig", 1, ["OVERPRESSURE", "SENSOR_FAULT"]), 409,
                "bad_state")  # fmt: skip
    assert e.detail["still_active"] == ["SENSOR_FAULT"]
    with board.lock:
        board.cause = 0
    assert c.ack_alarms("rig", 1, ["SENSOR_FAULT"])["ok"]
    assert commands_sent(board, "ACK_ALARM")[-1] == {"channel": 1, "alarms": 2}
    # vent and isolate
    refused(lambda: c.vent("rig", 1, 6.5), 422, "out_of_range")
    assert c.vent("rig", 1, 0.5)["floor_mpa"] == 0.5
    assert c.isolate("rig", 1) == {"ok": True}
    assert commands_sent(board, "VENT") == [{"channel": 1, "floor": 500_000}]
    assert commands_sent(board, "ISOLATE") == [{"channel": 1}]


def test_config_keys_by_name_and_scope(rig):
    served, board = rig
    c = served.client()
    v = c.config("rig", "max_working", channel=1)
    assert v == {"key": "max_working", "number": 16, "value": 7.0, "unit": "MPa", "raw": 7000000}
    v = c.config("rig", "telemetry_hz")
    assert (v["number"], v["raw"], v["unit"]) == (2, 1002, "Hz")
    assert c.config("rig", "2")["key"] == "telemetry_hz"
    e = refused(lambda: c.config("rig", "max_working"), 404, "unknown_key")  # a channel key
    assert "telemetry_hz" in e.detail["known"]
    refused(lambda: c.config("rig", "telemetry_hz", channel=1), 404, "unknown_key")
    refused(lambda: c.config("rig", "colour", channel=1), 404, "unknown_key")
    e = refused(lambda: c.set_config("rig", "trip_persist", 6.0, channel=1), 422, "out_of_range")
    assert (e.detail["limit"], e.detail["unit"]) == (5.0, "s")
    refused(lambda: c.request("PUT", CH + "/config/trip_persist", {}), 400, "bad_request")
    r = c.set_config("rig", "trip_persist", 0.35, channel=1)
    conforms(answer_schema("PUT", CH_T + "/config/{key}", 200), r)
    assert (r["raw"], r["value"]) == (350, 0.35)
    r = c.set_config("rig", "tick_hz", raw=50)
    assert r["value"] == 50
    sent = commands_sent(board, "SET_CONFIG")
    assert sent == [
        {"channel": 1, "key": 22, "value": 350},
        {"channel": 0, "key": 1, "value": 50},
    ]


def test_runs_are_started_listed_and_stopped(rig):
    served, _ = rig
    c = served.client()
    run = c.start_run("LPSCl-042", "rig", 1, holder="IPCH-3", cycler="Neware #2", operator="ana")
    conforms(resolve("#/components/schemas/Run"), run)
    assert run["stopped_utc"] is None and run["holder"] == "IPCH-3"
    refused(lambda: c.start_run("", "rig", 1), 400, "bad_request")
    refused(lambda: c.start_run("x", "rig", 9), 404, "unknown_channel")
    refused(lambda: c.request("POST", "/api/v1/runs", {"cell_id": "x", "device": "rig"}), 400,
            "bad_request")  # fmt: skip
    assert [r["cell_id"] for r in c.runs()] == ["LPSCl-042"]
    stopped = c.stop_run(run["id"])
    assert stopped["stopped_utc"] >= stopped["started_utc"]
    refused(lambda: c.stop_run(run["id"]), 409, "conflict")
    refused(lambda: c.stop_run(99), 404, "not_found")
    refused(lambda: c.run(99), 404, "not_found")


def test_status_shows_links_clock_and_store(rig):
    served, _ = rig
    st = served.client().status()
    conforms(answer_schema("GET", "/api/v1/status", 200), st)
    link = st["links"]["rig"]
    assert link["state"] == "connected" and link["stats"]["samples"] > 0
    assert link["clock"]["ready"] and link["clock"]["error_ms"] < 50
    assert st["store"]["ok"] and st["store"]["error"] is None and st["ok"]


def test_the_client_says_when_the_bridge_is_not_there():
    c = Client("http://127.0.0.1:9", "x", timeout=2)
    e = refused(c.devices, 0, "unreachable")
    assert "cannot reach" in e.message


def test_a_token_is_made_when_none_is_given(monkeypatch):
    monkeypatch.delenv("ISOPRESS_TOKEN", raising=False)
    a, made = bridge.token_from(None)
    b, _ = bridge.token_from(None)
    assert made and a != b and len(a) >= 24
    monkeypatch.setenv("ISOPRESS_TOKEN", "from-env")
    assert bridge.token_from(None) == ("from-env", False)
    assert bridge.token_from("given") == ("given", False)


def test_stopping_the_bridge_ends_open_streams_at_once(tmp_path):
    board = LabBoard(tmp_path / "tty", telemetry_hz=50).start()
    store = Store(tmp_path / "rec.sqlite")
    served = Served(store, {"rig": board.url}).start()
    c = served.client()
    ended = threading.Event()

    def read() -> None:
        for _ in c.stream(timeout=30):
            pass
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    wait_for(lambda: served.on_loop(lambda: len(served.bridge.hub.subscribers)) == 1)
    t = time.monotonic()
    served.stop()
    assert time.monotonic() - t < 5 and ended.wait(2)
    board.stop()
    store.close()
