"""A board's byte pipe: a pyserial port read from an asyncio event loop.

The port is named the way pyserial names ports: a device path (`/dev/ttyACM0`,
`COM3`, a symlink such as `/dev/serial/by-id/...`) or a pyserial URL
(`socket://ADDRESS:PORT` for a board behind a TCP serial server, `loop://` for a
loopback). The link above it sees only bytes in, bytes out, and one call when
the port is lost.

Reading: a port with a file descriptor (every POSIX serial port, and
`socket://`) is watched by the event loop's selector with `add_reader`, so a
bridge with 32 boards runs no thread per board and wakes only when bytes
arrive. A port without one (`loop://`, ports on Windows) gets a small reader
thread that hands each chunk to the loop with `call_soon_threadsafe`. Either
way every byte is handled on the loop thread, so the link needs no locks.

Writing happens on the loop thread too. Host frames are commands, a few a
second and at most 251 bytes, so they fit the kernel's buffer at once; a
bounded `write_timeout` keeps a board that stops reading from stalling the loop
for more than that, and a frame cut short there costs only itself, because the
next frame begins with its own delimiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

import serial

READ_CHUNK = 4096  # bytes per read: a burst of replayed frames in a few calls
WRITE_TIMEOUT_S = 0.05  # longest the loop may block on a board that is not reading
THREAD_POLL_S = 0.05  # reader thread: how often it checks that it should stop

# What a vanished port raises: pyserial wraps most OS errors, not all.
PORT_ERRORS = (serial.SerialException, OSError)


class Transport:
    """One open pyserial port feeding an event loop.

    `on_data(bytes)` is called for every chunk read, and `on_lost(exc)` once
    when a read fails (unplug, socket closed), both on the loop thread. After
    `on_lost` the transport is closed; open a new one to reconnect.
    """

    def __init__(
        self,
        url: str,
        baudrate: int = 115200,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.write_timeout_s = write_timeout_s
        self._port: serial.SerialBase | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._raw_fd: int | None = None  # read with one os.read (POSIX serial only)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._on_data: Callable[[bytes], None] = _ignore
        self._on_lost: Callable[[BaseException], None] = _ignore

    @property
    def is_open(self) -> bool:
        return self._port is not None

    @property
    def threaded(self) -> bool:
        """True when this port is read by a thread (it has no file descriptor)."""
        return self._thread is not None

    def open(
        self,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        """Opens the port and starts reading. Raises what pyserial raises:
        SerialException/OSError if the port is not there (yet), ValueError for
        a URL scheme pyserial does not know."""
        if self._port is not None:
            raise RuntimeError(f"{self.url}: already open")
        # exclusive: a second bridge on the same board would steal half its frames
        port = serial.serial_for_url(
            self.url,
            baudrate=self.baudrate,
            timeout=0,
            write_timeout=self.write_timeout_s,
            exclusive=True,
        )
        self._port, self._loop = port, loop
        self._on_data, self._on_lost = on_data, on_lost
        self._stop.clear()
        try:
            fd = port.fileno()
        except (AttributeError, NotImplementedError, OSError, ValueError):
            fd = None
        if fd is not None:
            try:
                loop.add_reader(fd, self._readable)
                self._fd = fd
                # pyserial's read() polls with select() before and after its
                # os.read; the loop has just said the fd is readable, so a
                # POSIX port (opened O_NONBLOCK by pyserial) needs only the read
                if type(port).__module__ == "serial.serialposix":
                    self._raw_fd = fd
                return
            except (NotImplementedError, ValueError, OSError):
                pass  # e.g. a Windows proactor loop: fall back to the thread
        port.timeout = THREAD_POLL_S
        self._thread = threading.Thread(
            target=self._pump, name=f"isopress-read {self.url}", daemon=True
        )
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Writes a frame; raises SerialException/OSError if the port is gone
        (SerialTimeoutException if the board stopped reading)."""
        if self._port is None:
            raise serial.PortNotOpenError()
        self._port.write(data)

    def close(self) -> None:
        """Stops reading and closes the port; safe to call more than once."""
        port, self._port = self._port, None
        if port is None:
            return
        self._stop.set()
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = self._raw_fd = None
        thread, self._thread = self._thread, None
        if thread is not None:
            cancel = getattr(port, "cancel_read", None)
            if cancel is not None:
                with contextlib.suppress(*PORT_ERRORS):
                    cancel()
            thread.join(timeout=1.0)
        with contextlib.suppress(*PORT_ERRORS):  # already gone: that is why we close
            port.close()

    # -- reading -----------------------------------------------------------

    def _readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            if self._raw_fd is not None:
                data = os.read(self._raw_fd, READ_CHUNK)
                if not data:  # readable with nothing to read: the device is gone
                    raise serial.SerialException("device disconnected (read returned no data)")
            else:
                data = port.read(READ_CHUNK)
        except BlockingIOError:
            return  # woken for nothing: a spurious readiness report
        except PORT_ERRORS as e:
            self._lost(e)
            return
        if data:
            self._on_data(data)

    def _lost(self, exc: BaseException) -> None:
        if self._port is None:
            return
        self.close()
        self._on_lost(exc)

    def _pump(self) -> None:
        port, loop = self._port, self._loop
        assert port is not None and loop is not None
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except PORT_ERRORS as e:
                if not self._stop.is_set():
                    loop.call_soon_threadsafe(self._lost, e)
                return
            if data:
                loop.call_soon_threadsafe(self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        # queued by the thread: the port may have been closed in between
        if self._port is not None:
            self._on_data(data)


def _ignore(*_args: object) -> None:
    return None
