"""The bridge's HTTP API (aiohttp) and its OpenAPI 3 document.

JSON over HTTP, on 127.0.0.1 by default, under /api/v1. Reads are open;
every write (PUT, POST) needs `Authorization: Bearer TOKEN`. Pressures are
MPa, rates MPa/s, durations and times s (UTC seconds since 1970 for times);
the board's integer pascals and milliseconds stay inside the bridge.

A refused request gets a 4xx or 5xx JSON body
`{"error": CODE, "message": TEXT, "detail": {...}}` and changes nothing:
400 a malformed body or query (detail.field names it), 401 no token, 403 a
wrong token, 404 an unknown device, channel, key or run, 409 a state that
forbids it (latched alarm, a running profile, BAD_STATE), 422 a value out of
range (detail.limit, from the bridge's copy of the board's limits, or from
the board's NACK), 502 the board failed it, 503 the board is not connected
or the store is failing, 504 no answer.

ROUTES below is the one table both the router and /openapi.json are built
from, so the document names every path the server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from isopress import __version__
from isopress.bridge import (
    ALARM_NUMBERS,
    CONFIG_KEYS,
    LIMIT_KEYS,
    MODES,
    STEP_KINDS,
    WAIT_KINDS,
    Bridge,
    Rejected,
    event_view,
    mode_name,
    sample_json,
    store_rejected,
)
from isopress.export import parse_time
from isopress.store import StoreError

log = logging.getLogger("isopress.api")

PREFIX = "/api/v1"
STATUS: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_device": 404,
    "unknown_channel": 404,
    "unknown_key": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "bad_state": 409,
    "latched": 409,
    "not_supported": 409,
    "conflict": 409,
    "out_of_range": 422,
    "bad_profile": 422,
    "internal_error": 500,
    "board_storage": 502,
    "board_error": 502,
    "not_connected": 503,
    "link_down": 503,
    "busy": 503,
    "store_unavailable": 503,
    "timeout": 504,
}
EVENTS_LIMIT = 10_000  # default page of GET /events
READ_BATCH = 5_000  # samples per read from the store while streaming a response
KEEPALIVE_S = 15.0  # SSE comment when nothing else was sent
CLIENT_HEADER = "X-Isopress-Client"
_CLIENT_RE = re.compile(r"^[A-Za-z0-9 ._@:/-]{1,64}$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


# -- request bodies and queries ------------------------------------------------------


def _bad(message: str, field: str | None, problem: str, **detail: Any) -> Rejected:
    """A malformed request: detail.field names the field at fault, detail.problem how."""
    return Rejected("bad_request", message, field=field, problem=problem, **detail)


class Body:
    """A JSON object body: every field checked, unknown fields refused."""

    def __init__(self, data: Any, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        if not isinstance(data, dict):
            raise _bad(
                "the body must be a JSON object"
                + (f" with {', '.join(allowed)}" if allowed else ""),
                None,
                "not an object",
            )
        for name in data:
            if name not in allowed:
                raise _bad(
                    f"unknown field {name!r}"
                    + (f"; this request takes {', '.join(allowed)}" if allowed else ""),
                    name,
                    "unknown field",
                )
        self.data = data

    def _missing(self, name: str, what: str) -> Rejected:
        return _bad(f"{name} is required ({what})", name, "missing")

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def number(self, name: str, what: str, required: bool = True) -> float | None:
        v = self.data.get(name)
        if v is None:
            if required:
                raise self._missing(name, what)
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _bad(f"{name} must be a number ({what}), not {v!r}", name, "not a number")
        return float(v)

    def integer(
        self, name: str, what: str, required: bool = True, lo: int = 0, hi: int = 0xFFFFFFFF
    ) -> int | None:
        v = self.data.get(name)
        if v is None:
            if required:
                raise self._missing(name, what)
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise _bad(f"{name} must be a whole number ({what}), not {v!r}", name, "not an integer")
        if not lo <= v <= hi:
            raise _bad(f"{name} must be {lo} to {hi}, not {v}", name, "out of range")
        return v

    def string(
        self, name: str, what: str, required: bool = True, most: int = 200, default: str = ""
    ) -> str:
        v = self.data.get(name)
        if v is None:
            if required:
                raise self._missing(name, what)
            return default
        if not isinstance(v, str) or len(v) > most or (required and not v.strip()):
            raise _bad(
                f"{name} must be {'a non-empty' if required else 'a'} string of at most "
                f"{most} characters ({what})",
                name,
                "not a string",
            )
        return v

    def boolean(self, name: str) -> bool | None:
        v = self.data.get(name)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise _bad(f"{name} must be true or false", name, "not a boolean")
        return v

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str:
        choices = tuple(choices)
        v = self.data.get(name, default)
        if v not in choices:
            raise _bad(
                f"{name} must be one of {', '.join(choices)}, not {v!r}",
                name,
                "not one of the choices",
                choices=list(choices),
            )
        return v


def _query_time(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except Exception:
        raise _bad(
            f"{name}={text!r}: give UTC seconds (1760000000.5) or ISO 8601 (2025-10-09T12:00:00Z)",
            name,
            "not a time",
        ) from None


def _query_int(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        v = int(text)
    except ValueError:
        v = lo - 1
    if not lo <= v <= hi:
        raise _bad(f"{name}={text!r}: give a whole number from {lo} to {hi}", name, "out of range")
    return v


def _query_set(request: web.Request, name: str) -> frozenset[str] | None:
    text = request.query.get(name)
    if not text:
        return None
    return frozenset(t.strip() for t in text.split(",") if t.strip())


def _channel(request: web.Request) -> int:
    text = request.match_info["channel"]
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 1 <= n <= 255:
        raise Rejected(
            "unknown_channel",
            f"channel {text!r}: channels are numbered 1 to 255",
            channel=text,
        )
    return n


def _run_id(request: web.Request) -> int:
    text = request.match_info["run"]
    if not text.isdigit():
        raise Rejected("not_found", f"run {text!r}: runs are numbered", run=text)
    return int(text)


async def _body(request: web.Request, allowed: Iterable[str]) -> Body:
    raw = await request.read()
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(f"the body is not JSON: {e}", None, "not JSON") from None
    return Body(data, allowed)


def _client(request: web.Request) -> str:
    name = request.headers.get(CLIENT_HEADER)
    if name is None:
        return "api"
    if not _CLIENT_RE.match(name):
        raise _bad(
            f"{CLIENT_HEADER} must be 1 to 64 letters, digits or ' ._@:/-'",
            CLIENT_HEADER,
            "bad header",
        )
    return f"api:{name}"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        data, status=status, dumps=lambda d: json.dumps(d, allow_nan=False, default=_not_json)
    )


def _not_json(o: Any) -> Any:
    raise TypeError(f"{type(o).__name__} is not JSON")


def _error(code: str, message: str, detail: dict[str, Any] | None = None) -> web.Response:
    body = {"error": code, "message": message, "detail": _finite(detail or {})}
    resp = _json(body, STATUS.get(code, 500))
    if code == "unauthorized":
        resp.headers["WWW-Authenticate"] = 'Bearer realm="isopress"'
    return resp


def _finite(d: Any) -> Any:
    if isinstance(d, float) and not math.isfinite(d):
        return None
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [_finite(v) for v in d]
    return d


def _batch_row(row: tuple) -> tuple:
    """A Store.sample_batches row (SAMPLE_COLUMNS) in Batch.samples order."""
    return (*row[:9], row[11], row[12], row[13])


# -- the handlers ----------------------------------------------------------------


class Api:
    def __init__(self, bridge: Bridge, token: str) -> None:
        self.bridge = bridge
        self.token = token.encode()

    # -- middleware --------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                self._authorise(request)
            return await handler(request)
        except Rejected as e:
            return _error(e.code, e.message, e.detail)
        except StoreError as e:
            r = store_rejected(e)
            return _error(r.code, r.message, r.detail)
        except web.HTTPMethodNotAllowed as e:
            return _error(
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; "
                f"allowed: {', '.join(sorted(e.allowed_methods))}",
                {"allowed": sorted(e.allowed_methods)},
            )
        except web.HTTPNotFound:
            return _error("not_found", f"no such path: {request.path} (see /openapi.json)")
        except web.HTTPRequestEntityTooLarge as e:
            return _error("bad_request", str(e), {"problem": "too large"})
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("%s %s failed", request.method, request.path)
            return _error("internal_error", f"the bridge failed this request: {e!r}")

    def _authorise(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if header is None:
            raise Rejected(
                "unauthorized",
                "writes need the header 'Authorization: Bearer TOKEN' (the bridge prints "
                "its token at start, or takes --token / ISOPRESS_TOKEN)",
            )
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Rejected("unauthorized", "the Authorization header must be 'Bearer TOKEN'")
        if not hmac.compare_digest(given.strip().encode(), self.token):
            raise Rejected("forbidden", "wrong token: this bridge did not issue it")

    # -- reads -------------------------------------------------------------

    async def openapi_doc(self, request: web.Request) -> web.Response:
        return _json(openapi())

    async def status(self, request: web.Request) -> web.Response:
        return _json(_finite(self.bridge.status()))

    async def devices(self, request: web.Request) -> web.Response:
        return _json(self.bridge.devices())

    async def device(self, request: web.Request) -> web.Response:
        b = self.bridge.board(request.match_info["device"])
        info = b.describe()
        info["channel_states"] = [b.channel_view(n) for n in sorted(b.channels)]
        return _json(info)

    async def channel(self, request: web.Request) -> web.Response:
        return _json(self.bridge.channel_state(request.match_info["device"], _channel(request)))

    async def samples(self, request: web.Request) -> web.StreamResponse:
        device, ch = request.match_info["device"], _channel(request)
        since, until = _query_time(request, "since"), _query_time(request, "until")
        limit = _query_int(request, "limit", 1, 10**9)
        if device in self.bridge.boards:
            self.bridge.channel(device, ch)
        store = self.bridge.store
        loop = asyncio.get_running_loop()
        try:
            it = await loop.run_in_executor(
                None, lambda: store.sample_batches(device, ch, since, until, batch=READ_BATCH)
            )
        except StoreError as e:
            raise store_rejected(e) from None
        # streamed: a month of samples never sits in memory
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        sent = 0
        try:
            await resp.write(b"[")
            while limit is None or sent < limit:
                rows = await loop.run_in_executor(None, next, it, None)
                if rows is None:
                    break
                if limit is not None:
                    rows = rows[: limit - sent]
                text = ",".join(sample_json(_batch_row(r)) for r in rows)
                await resp.write((("," if sent else "") + text).encode())
                sent += len(rows)
            await resp.write(b"]")
        finally:
            await loop.run_in_executor(None, it.close)
        await resp.write_eof()
        return resp

    async def events(self, request: web.Request) -> web.Response:
        since, until = _query_time(request, "since"), _query_time(request, "until")
        limit = _query_int(request, "limit", 1, 1_000_000) or EVENTS_LIMIT
        device = request.query.get("device") or None
        channel = _query_int(request, "channel", 0, 255)
        store = self.bridge.store
        rows = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: store.events(since, device, until_utc=until, channel=channel, limit=limit),
        )
        return _json([event_view(r) for r in rows])

    async def gaps(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        rows = await asyncio.get_running_loop().run_in_executor(
            None, self.bridge.store.gaps, device
        )
        return _json(
            [
                {k: r[k] for k in ("stream", "first_seq", "last_seq", "detected_utc", "reason")}
                for r in rows
            ]
        )

    async def commands(self, request: web.Request) -> web.Response:
        since = _query_time(request, "since")
        device = request.query.get("device") or None
        rows = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.bridge.store.commands(since, device)
        )
        return _json(rows)

    async def limits(self, request: web.Request) -> web.Response:
        return _json(self.bridge.limits(request.match_info["device"], _channel(request)))

    async def profile(self, request: web.Request) -> web.Response:
        return _json(self.bridge.profile(request.match_info["device"], _channel(request)))

    async def runs(self, request: web.Request) -> web.Response:
        device = request.query.get("device") or None
        rows = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.bridge.store.runs(device)
        )
        return _json(rows)

    async def run(self, request: web.Request) -> web.Response:
        run_id = _run_id(request)
        row = await asyncio.get_running_loop().run_in_executor(None, self.bridge.store.run, run_id)
        return _json(row)

    async def channel_config(self, request: web.Request) -> web.Response:
        return await self._get_config(request, _channel(request))

    async def board_config(self, request: web.Request) -> web.Response:
        return await self._get_config(request, 0)

    async def _get_config(self, request: web.Request, channel: int) -> web.Response:
        return _json(
            await self.bridge.get_config(
                request.match_info["device"], channel, request.match_info["key"], _client(request)
            )
        )

    # -- writes ------------------------------------------------------------

    async def set_setpoint(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        body = await _body(request, ("pressure_mpa", "rate_mpa_s"))
        pressure = body.number("pressure_mpa", "MPa")
        rate = body.number("rate_mpa_s", "MPa/s, 0 or absent: the channel's ramp limit", False)
        assert pressure is not None
        return _json(await self.bridge.set_setpoint(device, ch, pressure, rate, _client(request)))

    async def set_limits(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        names = [n + ("_mpa_s" if n.startswith("ramp") else "_mpa") for n in LIMIT_KEYS]
        body = await _body(request, names)
        given = {}
        for n in names:
            v = body.number(n, "MPa/s" if n.endswith("_s") else "MPa", False)
            if v is not None:
                given[n] = v
        if not given:
            raise Rejected("bad_request", f"give at least one of {', '.join(names)}", field=None)
        return _json(await self.bridge.set_limits(device, ch, given, _client(request)))

    async def load_profile(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        body = await _body(request, ("steps",))
        raw = body.data.get("steps")
        if not isinstance(raw, list):
            raise _bad("steps must be a list of steps", "steps", "not a list")
        steps = [_step(i, s) for i, s in enumerate(raw)]
        return _json(await self.bridge.load_profile(device, ch, steps, _client(request)))

    async def start_profile(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        body = await _body(request, ("from_step",))
        step = body.integer("from_step", "step index, from 0", False, 0, 255) or 0
        return _json(await self.bridge.start_profile(device, ch, step, _client(request)))

    async def stop_profile(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        await _body(request, ())
        return _json(await self.bridge.stop_profile(device, ch, _client(request)))

    async def advance_profile(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        body = await _body(request, ("from_step", "cycle"))
        step = body.integer("from_step", "the step the profile waits at", False, 0, 255)
        cycle = body.integer("cycle", "the cycler's cycle count", False) or 0
        return _json(await self.bridge.advance_profile(device, ch, step, cycle, _client(request)))

    async def cycler_event(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        body = await _body(request, ("kind", "cycle", "advance"))
        kind = body.string("kind", "e.g. cycle_end", most=32)
        if not _KIND_RE.match(kind):
            raise _bad(
                f"kind {kind!r}: lower-case letters, digits and '_', e.g. cycle_end",
                "kind",
                "bad name",
            )
        cycle = body.integer("cycle", "the cycler's cycle count", False)
        advance = body.boolean("advance")
        return _json(
            await self.bridge.cycler_event(device, ch, kind, cycle, advance, _client(request))
        )

    async def ack_alarms(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        body = await _body(request, ("alarms",))
        names = body.data.get("alarms")
        if not isinstance(names, list) or not names:
            raise _bad(
                'alarms must be a non-empty list of alarm names, e.g. ["OVERPRESSURE"]',
                "alarms",
                "not a list",
            )
        for i, n in enumerate(names):
            if n not in ALARM_NUMBERS:
                raise _bad(
                    f"alarms[{i}] {n!r} is not an alarm; alarms: {', '.join(ALARM_NUMBERS)}",
                    f"alarms[{i}]",
                    "unknown alarm",
                    choices=list(ALARM_NUMBERS),
                )
        return _json(await self.bridge.ack_alarms(device, ch, names, _client(request)))

    async def vent(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        body = await _body(request, ("floor_mpa",))
        floor = body.number("floor_mpa", "MPa to vent down to and hold")
        assert floor is not None
        return _json(await self.bridge.vent(device, ch, floor, _client(request)))

    async def isolate(self, request: web.Request) -> web.Response:
        device, ch = request.match_info["device"], _channel(request)
        await _body(request, ())
        return _json(await self.bridge.isolate(device, ch, _client(request)))

    async def set_channel_config(self, request: web.Request) -> web.Response:
        return await self._set_config(request, _channel(request))

    async def set_board_config(self, request: web.Request) -> web.Response:
        return await self._set_config(request, 0)

    async def _set_config(self, request: web.Request, channel: int) -> web.Response:
        body = await _body(request, ("value", "raw"))
        if body.has("value") == body.has("raw"):
            raise _bad(
                "give value (in the key's unit) or raw (the wire integer), not both",
                "value",
                "missing" if not body.has("value") else "both given",
            )
        value = body.number("value", "in the key's unit", False)
        raw = body.integer("raw", "wire integer", False, -(2**31), 2**31 - 1)
        return _json(
            await self.bridge.set_config(
                request.match_info["device"],
                channel,
                request.match_info["key"],
                value,
                raw,
                _client(request),
            )
        )

    async def start_run(self, request: web.Request) -> web.Response:
        fields = ("cell_id", "holder", "cycler", "cycler_channel", "operator", "notes")
        body = await _body(request, (*fields, "device", "channel"))
        out: dict[str, Any] = {"cell_id": body.string("cell_id", "the lab's cell id")}
        for f in fields[1:]:
            out[f] = body.string(f, "free text", False, most=2000)
        out["device"] = body.string("device", "device name")
        out["channel"] = body.integer("channel", "holder channel", True, 1, 255)
        return _json(await self.bridge.start_run(out), 201)

    async def stop_run(self, request: web.Request) -> web.Response:
        run_id = _run_id(request)
        await _body(request, ())
        return _json(await self.bridge.stop_run(run_id))

    # -- the live stream -------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        devices = _query_set(request, "device")
        kinds = _query_set(request, "kinds")
        channels: frozenset[int] | None = None
        ch_text = _query_set(request, "channel")
        if ch_text is not None:
            try:
                channels = frozenset(int(c) for c in ch_text)
            except ValueError:
                raise Rejected(
                    "bad_request",
                    "channel: give channel numbers separated by commas",
                    field="channel",
                ) from None
        if kinds is not None and not kinds <= set(self.bridge.hub.KINDS):
            raise Rejected(
                "bad_request",
                f"kinds: choose from {', '.join(self.bridge.hub.KINDS)}",
                field="kinds",
                choices=list(self.bridge.hub.KINDS),
            )
        if devices is not None:
            for d in devices:
                self.bridge.board(d)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        hub = self.bridge.hub
        sub = hub.subscribe(devices, channels, kinds)
        try:
            await resp.prepare(request)
            await resp.write(b": isopress live stream\nretry: 1000\n\n")
            while True:
                try:
                    first = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                chunks = [first]
                while not sub.queue.empty():
                    chunks.append(sub.queue.get_nowait())
                await resp.write(b"".join(chunks))
                if sub.closed:
                    break
                if sub.overflowed and sub.queue.empty():
                    note = {"message": "this reader fell behind; read the rest from /samples"}
                    await resp.write(
                        b"event: overflow\ndata: " + json.dumps(note).encode() + b"\n\n"
                    )
                    break
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            hub.unsubscribe(sub)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp


def _step(i: int, s: Any) -> dict[str, Any]:
    where = f"steps[{i}]"
    if not isinstance(s, dict):
        raise _bad(f"{where} must be an object", where, "not an object")
    kind = s.get("kind")
    allowed = {
        "SET": ("kind", "target_mpa", "rate_mpa_s"),
        "RAMP": ("kind", "target_mpa", "rate_mpa_s"),
        "HOLD": ("kind", "duration_s"),
        "WAIT": ("kind", "wait_for", "timeout_s"),
    }
    if kind not in allowed:
        raise _bad(
            f"{where}.kind must be one of {', '.join(STEP_KINDS)}, not {kind!r}",
            f"{where}.kind",
            "unknown step",
            choices=list(STEP_KINDS),
        )
    try:
        body = Body(s, allowed[kind])
        out: dict[str, Any] = {"kind": kind}
        if kind in ("SET", "RAMP"):
            out["target_mpa"] = body.number("target_mpa", "MPa")
            out["rate_mpa_s"] = body.number("rate_mpa_s", "MPa/s, 0: the ramp limit", False)
        elif kind == "HOLD":
            out["duration_s"] = body.number("duration_s", "s")
        else:
            out["wait_for"] = body.choice(
                "wait_for", [w for w in WAIT_KINDS if w != "NONE"], "HOST"
            )
            out["timeout_s"] = body.number("timeout_s", "s, 0: no time-out", False)
    except Rejected as e:
        e.detail["field"] = f"{where}.{e.detail.get('field')}"
        e.message = f"{where}: {e.message}"
        raise
    return out


# -- the route table, and the OpenAPI document built from it ---------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str  # Api method name
    summary: str
    response: str  # component schema name, "list:Name" for arrays, "stream", "none"
    request: str | None = None  # component schema name of the JSON body
    errors: tuple[int, ...] = ()
    params: tuple[str, ...] = ()  # query parameter names (described in QUERY)
    tag: str = "channels"
    description: str = ""


DEV = PREFIX + "/devices/{device}"
CH = DEV + "/channels/{channel}"
_R = (404,)  # unknown device or channel
_W = (400, 401, 403)  # writes: a bad body, no or wrong token
_CMD = (*_W, 404, 409, 422, 502, 503, 504)  # a command sent to a board
_ASK = (400, 404, 409, 502, 503, 504)  # a read the board answers

ROUTES: tuple[Route, ...] = (
    Route("GET", "/openapi.json", "openapi_doc", "This document", "OpenApi", tag="meta"),
    Route(
        "GET",
        PREFIX + "/status",
        "status",
        "Links, clock sync, store health, stream subscribers",
        "Status",
        tag="meta",
    ),
    Route("GET", PREFIX + "/devices", "devices", "Every board", "list:Device", tag="devices"),
    Route(
        "GET",
        DEV,
        "device",
        "One board and its channels' live state",
        "DeviceDetail",
        (),
        _R,
        tag="devices",
    ),
    Route(
        "GET",
        DEV + "/gaps",
        "gaps",
        "Sequence ranges recorded as lost for good",
        "list:Gap",
        errors=_R,
        tag="devices",
    ),
    Route(
        "GET",
        CH,
        "channel",
        "Live state of a channel (from committed samples)",
        "ChannelState",
        errors=_R,
    ),
    Route(
        "PUT",
        CH + "/setpoint",
        "set_setpoint",
        "Move to a pressure",
        "SetpointResult",
        "Setpoint",
        _CMD,
        description="Checked against the channel's max_working before sending; "
        "422 gives the limit (detail.limit, MPa). 409 while a profile runs.",
    ),
    Route(
        "GET",
        CH + "/samples",
        "samples",
        "Stored samples, in time order",
        "list:Sample",
        errors=(400, 404),
        params=("since", "until", "limit"),
        description="Only committed samples; the range is since <= utc < until.",
    ),
    Route(
        "POST",
        CH + "/cycler-event",
        "cycler_event",
        "Record a cycler event; cycle_end advances a profile waiting for the host",
        "CyclerEventResult",
        "CyclerEvent",
        _CMD,
        description="The event is recorded even when the profile cannot advance "
        "(409 with detail.recorded = true): it is what the cycler saw.",
    ),
    Route(
        "GET",
        CH + "/profile",
        "profile",
        "The loaded profile and where it is",
        "ProfileState",
        errors=_R,
    ),
    Route(
        "PUT",
        CH + "/profile",
        "load_profile",
        "Load a profile (replaces the last)",
        "ProfileResult",
        "Profile",
        _CMD,
    ),
    Route(
        "POST",
        CH + "/profile/start",
        "start_profile",
        "Start the loaded profile",
        "ProfileResult",
        "ProfileStart",
        _CMD,
    ),
    Route(
        "POST",
        CH + "/profile/stop",
        "stop_profile",
        "Stop the profile; hold the setpoint",
        "ProfileResult",
        None,
        _CMD,
    ),
    Route(
        "POST",
        CH + "/profile/advance",
        "advance_profile",
        "Leave the WAIT step (from_step, default: the step it is in)",
        "AdvanceResult",
        "ProfileAdvance",
        _CMD,
    ),
    Route(
        "GET",
        CH + "/limits",
        "limits",
        "The bridge's copy of the channel's limits",
        "Limits",
        errors=_R,
    ),
    Route(
        "PUT",
        CH + "/limits",
        "set_limits",
        "Set limits (absent ones keep their value)",
        "LimitsResult",
        "LimitsUpdate",
        _CMD,
    ),
    Route(
        "POST",
        CH + "/alarms/ack",
        "ack_alarms",
        "Clear latched alarms whose cause has gone",
        "AckResult",
        "AlarmAck",
        _CMD,
    ),
    Route(
        "POST", CH + "/vent", "vent", "Vent down to a floor and hold it", "VentResult", "Vent", _CMD
    ),
    Route("POST", CH + "/isolate", "isolate", "Close every valve and hold", "Ok", None, _CMD),
    Route(
        "GET",
        CH + "/config/{key}",
        "channel_config",
        "Read a channel config key",
        "ConfigValue",
        None,
        _ASK,
    ),
    Route(
        "PUT",
        CH + "/config/{key}",
        "set_channel_config",
        "Set a channel config key",
        "ConfigValue",
        "ConfigUpdate",
        _CMD,
    ),
    Route(
        "GET",
        DEV + "/config/{key}",
        "board_config",
        "Read a board config key",
        "ConfigValue",
        None,
        _ASK,
        tag="devices",
    ),
    Route(
        "PUT",
        DEV + "/config/{key}",
        "set_board_config",
        "Set a board config key",
        "ConfigValue",
        "ConfigUpdate",
        _CMD,
        tag="devices",
    ),
    Route(
        "GET",
        PREFIX + "/events",
        "events",
        "Stored device events, in time order",
        "list:Event",
        errors=(400, 404),
        params=("since", "until", "device", "channel", "limit"),
        tag="record",
    ),
    Route(
        "GET",
        PREFIX + "/commands",
        "commands",
        "Commands sent, who sent them, the answers",
        "list:Command",
        errors=(400, 404),
        params=("since", "device"),
        tag="record",
    ),
    Route(
        "GET",
        PREFIX + "/runs",
        "runs",
        "Runs: which cell was in which holder, when",
        "list:Run",
        errors=(404,),
        params=("device",),
        tag="runs",
    ),
    Route(
        "POST",
        PREFIX + "/runs",
        "start_run",
        "Start a run",
        "Run",
        "RunCreate",
        (*_W, 404, 503),
        tag="runs",
    ),
    Route("GET", PREFIX + "/runs/{run}", "run", "One run", "Run", errors=(404,), tag="runs"),
    Route(
        "POST",
        PREFIX + "/runs/{run}/stop",
        "stop_run",
        "Stop a run now",
        "Run",
        None,
        (*_W, 404, 409, 503),
        tag="runs",
    ),
    Route(
        "GET",
        PREFIX + "/stream",
        "stream",
        "Live stream of committed records (SSE)",
        "stream",
        errors=(400, 404),
        params=("device", "channel", "kinds"),
        tag="record",
        description="text/event-stream. Events: `samples` (data: a JSON list of Sample, "
        "with device and channel), `event` (Event), `gap` (Gap with device), `link` "
        "(LinkState), `command` (CommandNote), `cycler_event` (CyclerNote), `overflow` "
        "(the reader fell behind and is cut off). Comments keep the connection alive. "
        "After a bridge restart, samples the previous bridge sent may come again: key "
        "them by (device, seq, channel).",
    ),
)

QUERY: dict[str, dict[str, Any]] = {
    "since": {
        "description": "from this time, inclusive: UTC seconds or ISO 8601",
        "schema": {"type": "string"},
    },
    "until": {
        "description": "to this time, exclusive: UTC seconds or ISO 8601",
        "schema": {"type": "string"},
    },
    "limit": {"description": "at most this many rows", "schema": {"type": "integer"}},
    "device": {"description": "device name(s), comma-separated", "schema": {"type": "string"}},
    "channel": {"description": "channel number(s), comma-separated", "schema": {"type": "string"}},
    "kinds": {
        "description": "stream message kinds: samples,event,gap,link,command,cycler_event",
        "schema": {"type": "string"},
    },
}

ERROR_TEXT = {
    400: "Malformed request: detail.field names the field",
    401: "No bearer token",
    403: "Wrong bearer token",
    404: "Unknown device, channel, key or run",
    409: "Refused in the present state (latched, a profile runs, BAD_STATE, not supported)",
    422: "A value out of range: detail.limit is the limit (host check or board NACK)",
    502: "The board failed the command (e.g. could not save to flash)",
    503: "The board is not connected, the link went down, or the store is failing",
    504: "No answer from the board in time",
}


def _s(t: str, **kw: Any) -> dict[str, Any]:
    return {"type": t, **kw}


def _n(t: str, **kw: Any) -> dict[str, Any]:
    return {"type": t, "nullable": True, **kw}


def _obj(required: Iterable[str] = (), extra: bool = False, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    req = list(required)
    if req:
        out["required"] = req
    out["additionalProperties"] = extra
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_MPA = _n("number", description="MPa")
_LIMITS = {n + ("_mpa_s" if n.startswith("ramp") else "_mpa"): _MPA for n in LIMIT_KEYS}
_STEP = _obj(
    ["kind"],
    kind=_s("string", enum=list(STEP_KINDS)),
    target_mpa=_s("number", description="SET, RAMP: MPa"),
    rate_mpa_s=_s("number", description="SET, RAMP: MPa/s (0: the ramp limit)"),
    duration_s=_s("number", description="HOLD: s"),
    wait_for=_s("string", enum=[w for w in WAIT_KINDS if w != "NONE"]),
    timeout_s=_s("number", description="WAIT: s, 0 = none"),
)
_PROFILE_STATE = _obj(
    ["steps", "running", "step", "waiting_for_host"],
    device=_s("string"),
    channel=_s("integer"),
    steps={**_n("array"), "items": _ref("ProfileStep")},
    running=_s("boolean"),
    step=_n("integer", description="the step the profile is in"),
    waiting_for_host=_s("boolean"),
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        ["error", "message", "detail"],
        error=_s("string", enum=sorted(STATUS)),
        message=_s("string"),
        detail=_obj(
            extra=True,
            field=_n("string", description="the request field at fault"),
            limit=_n("number", description="the limit broken, in the field's unit"),
            unit=_s("string"),
            source=_s("string", enum=["host", "board"]),
            result=_s("string", description="the board's NACK (ACK result name)"),
            value=_s("integer", description="the board's ACK value"),
        ),
    ),
    "Ok": _obj(["ok"], ok=_s("boolean")),
    "OpenApi": _obj(["openapi", "paths"], extra=True, openapi=_s("string"), paths=_s("object")),
    "Device": _obj(
        ["name", "state", "connected", "channels"],
        name=_s("string"),
        url=_s("string"),
        board=_n("string", description="board profile, when found on USB"),
        state=_s("string", description="opening, handshake, connected, waiting, incompatible"),
        detail=_s("string"),
        connected=_s("boolean"),
        board_id=_n("string"),
        boot_id=_n("integer"),
        firmware=_n("string"),
        protocol=_n("integer"),
        telemetry_hz=_n("integer"),
        channels=_s("array", items=_s("integer")),
    ),
    "DeviceDetail": {
        "allOf": [
            _ref("Device"),
            _obj(extra=True, channel_states=_s("array", items=_ref("ChannelState"))),
        ]
    },
    "ChannelState": _obj(
        ["device", "channel", "kind", "link", "pressure_mpa", "setpoint_mpa", "mode", "alarms"],
        device=_s("string"),
        channel=_s("integer"),
        kind=_s("string", description="ISOSTATIC, UNIAXIAL, MONITOR, NONE"),
        sensor=_s("string"),
        full_scale_mpa=_n("number"),
        link=_s("string", description="the link's state"),
        connected=_s("boolean"),
        utc=_n("number", description="UTC s of the newest committed sample"),
        seq=_n("integer"),
        device_time=_n("number", description="device clock, s"),
        pressure_mpa=_MPA,
        setpoint_mpa=_MPA,
        mode=_n("string", enum=[*MODES.values(), None]),
        valves=_n("object", properties={"fill": _s("boolean"), "vent": _s("boolean")}),
        alarms=_s("array", items=_s("string")),
        alarm_bits=_s("integer"),
        limits=_ref("LimitsValues"),
        profile=_ref("ProfileState"),
        cycle=_n("integer", description="the last cycle count a cycler event gave"),
    ),
    "LimitsValues": _obj(**_LIMITS),
    "Limits": _obj(device=_s("string"), channel=_s("integer"), **_LIMITS),
    "LimitsUpdate": _obj(**{k: _s("number") for k in _LIMITS}),
    "LimitsResult": _obj(["ok", "limits"], ok=_s("boolean"), limits=_ref("LimitsValues")),
    "Setpoint": _obj(
        ["pressure_mpa"],
        pressure_mpa=_s("number", description="MPa, 0 to max_working"),
        rate_mpa_s=_s("number", description="MPa/s; absent or 0: the channel's ramp limit"),
    ),
    "SetpointResult": _obj(
        ["ok"],
        ok=_s("boolean"),
        result=_s("string"),
        pressure_mpa=_s("number"),
        rate_mpa_s=_s("number"),
    ),
    "Sample": _obj(
        [
            "seq",
            "utc",
            "device_time",
            "pressure_mpa",
            "setpoint_mpa",
            "fill",
            "vent",
            "flags",
            "mode",
            "alarms",
        ],
        device=_s("string", description="in the stream only"),
        channel=_s("integer", description="in the stream only"),
        seq=_s("integer", description="per device, across boots (docs/store.md)"),
        utc=_s("number", description="UTC s, from the clock sync"),
        device_time=_s("number", description="device clock, s"),
        pressure_mpa=_s("number"),
        setpoint_mpa=_s("number"),
        raw=_s("integer", description="sensor reading, counts"),
        fill=_s("integer", enum=[0, 1]),
        vent=_s("integer", enum=[0, 1]),
        flags=_s("integer", description="bit 0: replayed from the board's ring"),
        mode=_s("string"),
        alarms=_s("array", items=_s("string")),
    ),
    "Event": _obj(
        ["device", "seq", "utc", "kind", "channel", "code", "a", "b", "c", "text"],
        device=_s("string"),
        seq=_s("integer"),
        utc=_s("number"),
        device_time=_s("number"),
        kind=_s("string"),
        channel=_s("integer", description="0: the board"),
        code=_s("integer"),
        a=_s("integer"),
        b=_s("integer"),
        c=_s("integer"),
        text=_s("string"),
    ),
    "Gap": _obj(
        ["stream", "first_seq", "last_seq", "reason"],
        device=_s("string"),
        stream=_s("string", enum=["TELEMETRY", "EVENT"]),
        first_seq=_s("integer"),
        last_seq=_n("integer", description="null: the end is unknown (a board reset)"),
        detected_utc=_s("number"),
        utc=_s("number"),
        reason=_s("string"),
    ),
    "Command": _obj(
        ["id", "utc", "client", "device", "message", "args", "result"],
        id=_s("integer"),
        utc=_s("number"),
        client=_s("string"),
        device=_s("string"),
        channel=_n("integer"),
        message=_s("string"),
        args=_s("object"),
        seq=_n("integer"),
        result=_n("string"),
        result_utc=_n("number"),
        value=_n("integer"),
    ),
    "CyclerEvent": _obj(
        ["kind"],
        kind=_s("string", description="e.g. cycle_end, cycle_start, pause, resume, end"),
        cycle=_s("integer", description="the cycler's cycle count"),
        advance=_s("boolean", description="advance a waiting profile (default: cycle_end)"),
    ),
    "CyclerEventResult": _obj(
        ["ok", "recorded", "advanced"],
        ok=_s("boolean"),
        recorded=_s("boolean"),
        advanced=_s("boolean"),
        from_step=_s("integer"),
    ),
    "ProfileStep": _STEP,
    "Profile": _obj(["steps"], steps=_s("array", items=_ref("ProfileStep"))),
    "ProfileState": _PROFILE_STATE,
    "ProfileResult": _obj(["ok", "profile"], ok=_s("boolean"), profile=_ref("ProfileState")),
    "ProfileStart": _obj(from_step=_s("integer")),
    "ProfileAdvance": _obj(from_step=_s("integer"), cycle=_s("integer")),
    "AdvanceResult": _obj(["ok", "from_step"], ok=_s("boolean"), from_step=_s("integer")),
    "AlarmAck": _obj(["alarms"], alarms=_s("array", items=_s("string", enum=list(ALARM_NUMBERS)))),
    "AckResult": _obj(["ok"], ok=_s("boolean"), cleared=_s("array", items=_s("string"))),
    "Vent": _obj(["floor_mpa"], floor_mpa=_s("number")),
    "VentResult": _obj(["ok"], ok=_s("boolean"), floor_mpa=_s("number")),
    "ConfigValue": _obj(
        ["key", "number", "value", "unit", "raw"],
        key=_s("string", enum=list(CONFIG_KEYS)),
        number=_s("integer"),
        value=_s("number", description="in unit"),
        unit=_s("string"),
        raw=_s("integer", description="the wire integer"),
    ),
    "ConfigUpdate": _obj(
        value=_s("number", description="in the key's unit"),
        raw=_s("integer", description="the wire integer (instead of value)"),
    ),
    "Run": _obj(
        ["id", "cell_id", "started_utc", "stopped_utc", "device", "channel"],
        id=_s("integer"),
        cell_id=_s("string"),
        holder=_s("string"),
        cycler=_s("string"),
        cycler_channel=_s("string"),
        operator=_s("string"),
        notes=_s("string"),
        started_utc=_s("number"),
        stopped_utc=_n("number"),
        device=_s("string"),
        channel=_s("integer"),
    ),
    "RunCreate": _obj(
        ["cell_id", "device", "channel"],
        cell_id=_s("string"),
        device=_s("string"),
        channel=_s("integer"),
        holder=_s("string"),
        cycler=_s("string"),
        cycler_channel=_s("string"),
        operator=_s("string"),
        notes=_s("string"),
    ),
    "Status": _obj(
        ["version", "ok", "links", "store"],
        extra=True,
        version=_s("string"),
        ok=_s("boolean", description="false while the store refuses writes"),
        started_utc=_s("number"),
        uptime_s=_s("number"),
        links=_s("object", additionalProperties=_ref("LinkStatus")),
        store=_ref("StoreStatus"),
        stream=_s("object"),
        process=_obj(pid=_s("integer"), cpu_s=_s("number", description="CPU seconds used so far")),
    ),
    "LinkStatus": {
        "allOf": [
            _ref("Device"),
            _obj(
                extra=True,
                epoch=_n("integer"),
                clock=_s("object"),
                stats=_s("object", description="isopress.link.LinkStats"),
            ),
        ]
    },
    "StoreStatus": _obj(
        ["ok", "error", "pending_rows"],
        extra=True,
        path=_s("string"),
        ok=_s("boolean"),
        error=_n("string"),
        reason=_n("string"),
        pending_rows=_s("integer"),
        retries=_s("integer"),
        last_commit_utc=_n("number"),
    ),
    "LinkState": _obj(
        device=_s("string"), state=_s("string"), detail=_s("string"), utc=_s("number")
    ),
    "CommandNote": _obj(extra=True, device=_s("string"), message=_s("string"), result=_s("string")),
    "CyclerNote": _obj(extra=True, device=_s("string"), kind=_s("string"), cycle=_n("integer")),
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document for ROUTES."""
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "operationId": r.handler,
            "summary": r.summary,
            "tags": [r.tag],
        }
        if r.description:
            op["description"] = r.description
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in re.findall(r"{(\w+)}", r.path)
        ]
        params += [{"name": n, "in": "query", "required": False, **QUERY[n]} for n in r.params]
        if r.method != "GET":
            params.append(
                {
                    "name": CLIENT_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "who asks (recorded with the command as api:NAME)",
                    "schema": {"type": "string"},
                }
            )
        if params:
            op["parameters"] = params
        if r.request:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(r.request)}},
            }
        ok = "201" if r.method == "POST" and r.handler == "start_run" else "200"
        if r.response == "stream":
            content = {"text/event-stream": {"schema": {"type": "string"}}}
        elif r.response.startswith("list:"):
            content = {
                "application/json": {"schema": {"type": "array", "items": _ref(r.response[5:])}}
            }
        else:
            content = {"application/json": {"schema": _ref(r.response)}}
        responses: dict[str, Any] = {ok: {"description": "done", "content": content}}
        for code in r.errors:
            responses[str(code)] = {
                "description": ERROR_TEXT[code],
                "content": {"application/json": {"schema": _ref("Error")}},
            }
        op["responses"] = responses
        if r.method != "GET":
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "isopress bridge",
            "version": __version__,
            "description": (__doc__ or "").strip(),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def make_app(bridge: Bridge, token: str) -> web.Application:
    """The aiohttp application serving ROUTES for `bridge`."""
    api = Api(bridge, token)
    app = web.Application(middlewares=[api.middleware], client_max_size=1 << 20)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, getattr(api, r.handler))
    return app


__all__ = ["ROUTES", "STATUS", "Api", "Body", "make_app", "mode_name", "openapi"]
