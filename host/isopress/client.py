"""A small synchronous client for the bridge's HTTP API, for cycling scripts.

Standard library only (urllib), so a cycler's Python can use it as it is:

    from isopress.client import Client, set_step, wait_host

    c = Client("http://127.0.0.1:8420", token="...")
    c.set_pressure("rig1", 1, 5.0)
    c.load_profile("rig1", 1, [set_step(5.0), wait_host(), set_step(2.0)])
    c.start_profile("rig1", 1)
    c.cycler_event("rig1", 1, cycle=1)      # at the cycler's cycle end
    for m in c.stream(device="rig1", kinds="samples"):
        print(m.data["pressure_mpa"])

Units as the API: MPa, MPa/s, seconds, UTC seconds. Every refusal raises
ApiError with the HTTP status, the error code and the bridge's message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8420"


class ApiError(Exception):
    """The bridge refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, error: str, message: str, detail: dict | None = None) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.detail = detail or {}


@dataclass(frozen=True)
class StreamMessage:
    """One record from the live stream: kind "sample" (one per channel
    sample), "event", "gap", "link", "command", "cycler_event", "overflow"."""

    kind: str
    data: Any
    id: str | None = None


@dataclass
class _Sse:
    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None


# -- profile steps -------------------------------------------------------------


def set_step(target_mpa: float, rate_mpa_s: float = 0.0) -> dict[str, Any]:
    """Jump to target_mpa (at rate_mpa_s; 0: the channel's ramp limit); goes on at once."""
    return {"kind": "SET", "target_mpa": target_mpa, "rate_mpa_s": rate_mpa_s}


def ramp(target_mpa: float, rate_mpa_s: float = 0.0) -> dict[str, Any]:
    """Ramp to target_mpa; done when the setpoint reaches it."""
    return {"kind": "RAMP", "target_mpa": target_mpa, "rate_mpa_s": rate_mpa_s}


def hold(seconds: float) -> dict[str, Any]:
    return {"kind": "HOLD", "duration_s": seconds}


def wait_host(timeout_s: float = 0.0) -> dict[str, Any]:
    """Wait for a cycler event (or advance); timeout_s 0: no time-out."""
    return {"kind": "WAIT", "wait_for": "HOST", "timeout_s": timeout_s}


def wait_trigger(timeout_s: float = 0.0) -> dict[str, Any]:
    return {"kind": "WAIT", "wait_for": "TRIGGER", "timeout_s": timeout_s}


# -- the client ---------------------------------------------------------------------


class Client:
    """The bridge's API as methods. `token` (default $ISOPRESS_TOKEN) is
    needed for writes; `name` is recorded with each command as api:NAME."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        name: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("ISOPRESS_TOKEN")
        self.name = name
        self.timeout = timeout

    # -- plumbing -----------------------------------------------------------

    def _headers(self, body: bool) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if body:
            h["Content-Type"] = "application/json"
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if self.name:
            h["X-Isopress-Client"] = self.name
        return h

    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        return self.url + path + ("?" + urllib.parse.urlencode(q) if q else "")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or ApiError."""
        data = None if body is None else json.dumps(body).encode()
        if data is None and method in ("POST", "PUT"):
            data = b"{}"
        req = urllib.request.Request(
            self._url(path, query), data=data, method=method, headers=self._headers(True)
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except OSError as e:  # urllib's HTTPError and URLError among them
            raise self._failure(e) from None

    def _failure(self, e: OSError) -> ApiError:
        """The ApiError for a request that failed: the bridge's own answer to
        one it refused, or "unreachable"."""
        if isinstance(e, urllib.error.HTTPError):
            return _api_error(e)
        reason = getattr(e, "reason", e)
        return ApiError(0, "unreachable", f"cannot reach the bridge at {self.url}: {reason}")

    @staticmethod
    def _ch(device: str, channel: int) -> str:
        return f"/api/v1/devices/{urllib.parse.quote(device, safe='')}/channels/{int(channel)}"

    # -- reads ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/status")

    def devices(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/devices")

    def device(self, device: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/devices/{urllib.parse.quote(device, safe='')}")

    def channel(self, device: str, channel: int) -> dict[str, Any]:
        """Live state: pressure_mpa, setpoint_mpa, mode, valves, alarms, utc, link, ..."""
        return self.request("GET", self._ch(device, channel))

    def samples(
        self,
        device: str,
        channel: int,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored samples with since <= utc < until (UTC s), in time order."""
        return self.request(
            "GET",
            self._ch(device, channel) + "/samples",
            query={"since": since, "until": until, "limit": limit},
        )

    def events(
        self,
        since: float | None = None,
        until: float | None = None,
        device: str | None = None,
        channel: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        return self.request(
            "GET",
            "/api/v1/events",
            query={
                "since": since,
                "until": until,
                "device": device,
                "channel": channel,
                "limit": limit,
            },
        )

    def gaps(self, device: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/devices/{urllib.parse.quote(device, safe='')}/gaps")

    def commands(self, since: float | None = None, device: str | None = None) -> list[dict]:
        return self.request("GET", "/api/v1/commands", query={"since": since, "device": device})

    def limits(self, device: str, channel: int) -> dict[str, Any]:
        return self.request("GET", self._ch(device, channel) + "/limits")

    def profile(self, device: str, channel: int) -> dict[str, Any]:
        return self.request("GET", self._ch(device, channel) + "/profile")

    # -- commands ----------------------------------------------------------------

    def set_pressure(
        self, device: str, channel: int, mpa: float, rate: float | None = None
    ) -> dict[str, Any]:
        """Setpoint `mpa` MPa, at `rate` MPa/s (None: the channel's ramp limit)."""
        body: dict[str, Any] = {"pressure_mpa": mpa}
        if rate is not None:
            body["rate_mpa_s"] = rate
        return self.request("PUT", self._ch(device, channel) + "/setpoint", body)

    def set_limits(self, device: str, channel: int, **limits: float) -> dict[str, Any]:
        """Keywords max_working_mpa, trip_mpa, trip_reset_mpa, min_alarm_mpa,
        ramp_up_mpa_s, ramp_down_mpa_s; absent ones keep their value."""
        return self.request("PUT", self._ch(device, channel) + "/limits", limits)

    def load_profile(
        self, device: str, channel: int, steps: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Steps from set_step, ramp, hold, wait_host, wait_trigger."""
        return self.request("PUT", self._ch(device, channel) + "/profile", {"steps": steps})

    def start_profile(self, device: str, channel: int, from_step: int = 0) -> dict[str, Any]:
        return self.request(
            "POST", self._ch(device, channel) + "/profile/start", {"from_step": from_step}
        )

    def stop_profile(self, device: str, channel: int) -> dict[str, Any]:
        return self.request("POST", self._ch(device, channel) + "/profile/stop")

    def advance_profile(
        self, device: str, channel: int, from_step: int | None = None, cycle: int = 0
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"cycle": cycle}
        if from_step is not None:
            body["from_step"] = from_step
        return self.request("POST", self._ch(device, channel) + "/profile/advance", body)

    def cycler_event(
        self,
        device: str,
        channel: int,
        cycle: int | None = None,
        kind: str = "cycle_end",
        advance: bool | None = None,
    ) -> dict[str, Any]:
        """Record a cycler event; a cycle_end advances a profile waiting for the host
        (ApiError 409 if none waits; the event is recorded all the same)."""
        body: dict[str, Any] = {"kind": kind}
        if cycle is not None:
            body["cycle"] = cycle
        if advance is not None:
            body["advance"] = advance
        return self.request("POST", self._ch(device, channel) + "/cycler-event", body)

    def ack_alarms(self, device: str, channel: int, alarms: list[str]) -> dict[str, Any]:
        return self.request("POST", self._ch(device, channel) + "/alarms/ack", {"alarms": alarms})

    def vent(self, device: str, channel: int, floor_mpa: float) -> dict[str, Any]:
        return self.request("POST", self._ch(device, channel) + "/vent", {"floor_mpa": floor_mpa})

    def isolate(self, device: str, channel: int) -> dict[str, Any]:
        return self.request("POST", self._ch(device, channel) + "/isolate")

    def _config_path(self, device: str, key: str, channel: int) -> str:
        d = f"/api/v1/devices/{urllib.parse.quote(device, safe='')}"
        base = d if channel == 0 else self._ch(device, channel)
        return f"{base}/config/{urllib.parse.quote(str(key), safe='')}"

    def config(self, device: str, key: str, channel: int = 0) -> dict[str, Any]:
        """A config key (channel 0: a board key) as {key, value, unit, raw}."""
        return self.request("GET", self._config_path(device, key, channel))

    def set_config(
        self,
        device: str,
        key: str,
        value: float | None = None,
        channel: int = 0,
        raw: int | None = None,
    ) -> dict[str, Any]:
        body = {"raw": raw} if raw is not None else {"value": value}
        return self.request("PUT", self._config_path(device, key, channel), body)

    # -- runs ----------------------------------------------------------------------

    def start_run(self, cell_id: str, device: str, channel: int, **fields: str) -> dict[str, Any]:
        """Keywords holder, cycler, cycler_channel, operator, notes."""
        body = {"cell_id": cell_id, "device": device, "channel": channel, **fields}
        return self.request("POST", "/api/v1/runs", body)

    def stop_run(self, run_id: int) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/runs/{int(run_id)}/stop")

    def runs(self, device: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/runs", query={"device": device})

    def run(self, run_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/runs/{int(run_id)}")

    # -- the live stream ------------------------------------------------------------

    def stream(
        self,
        device: str | None = None,
        channel: int | None = None,
        kinds: str | None = None,
        timeout: float | None = 60.0,
    ) -> Iterator[StreamMessage]:
        """Records as they are committed. A `samples` message becomes one
        StreamMessage("sample", ...) per channel sample. `timeout`: longest
        silence (the bridge sends a keep-alive every 15 s) before ApiError."""
        url = self._url("/api/v1/stream", {"device": device, "channel": channel, "kinds": kinds})
        headers = self._headers(False)
        headers["Accept"] = "text/event-stream"
        req = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except OSError as e:
            raise self._failure(e) from None
        with resp:
            pending = _Sse()
            while True:
                try:
                    line = resp.readline()
                except TimeoutError:
                    raise ApiError(0, "timeout", f"the stream was silent for {timeout} s") from None
                if not line:
                    return  # the bridge closed the stream
                text = line.decode("utf-8").rstrip("\r\n")
                if text == "":
                    if pending.data:
                        yield from _messages(pending)
                    pending = _Sse()
                    continue
                if text.startswith(":"):
                    continue
                name, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    pending.event = value
                elif name == "data":
                    pending.data.append(value)
                elif name == "id":
                    pending.id = value


def _messages(sse: _Sse) -> Iterator[StreamMessage]:
    data = json.loads("\n".join(sse.data))
    if sse.event == "samples":
        for row in data:
            yield StreamMessage("sample", row, sse.id)
    else:
        yield StreamMessage(sse.event, data, sse.id)


def _api_error(e: urllib.error.HTTPError) -> ApiError:
    raw = e.read()
    try:
        body = json.loads(raw)
        return ApiError(
            e.code, body.get("error", "error"), body.get("message", ""), body.get("detail")
        )
    except (ValueError, AttributeError):
        return ApiError(e.code, "error", raw.decode("utf-8", "replace")[:500] or str(e.reason))
