"""Fault injection and exact wire logging for the fake upstream.

The proxy's hardest code paths (truncation, resets, stalls, odd framing, compression) only run
when the upstream misbehaves, so each misbehaviour is a knob here. Every byte handed to the
transport is logged per response so tests can compare sha256 of what the fake sent with what a
client received through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.testing.streams import DONE_FRAME, RUN_STATUS_EVENTS, Json, dumps, error_body

Malformed = Literal[
    "invalid_json",  # the pause/terminal run event's JSON gets an extra "}" (the seed's quirk)
    "bare_json_line",  # that event's JSON line lacks the "data: " prefix (the seed's other quirk)
    "no_blank_lines",  # no blank line after any event (the seed's rendering: SDK sees 0 events)
    "no_final_blank_line",  # no done; the last event lacks its blank line before EOF (SDK drops it)
    "done_without_data",  # "event: done" with no data line
    "unknown_event",  # an unknown thread.run.step.* event before the pause/terminal event
    "error_event",  # spec-shaped error event {code,message,param,type} replaces the end; no done
    "error_event_wrapped",  # {"error": {...}}-shaped error event replaces the end; no done
    "crlf",  # valid variant: CRLF line endings
    "comments",  # valid variant: ": ping" comment line before every event
    "split_data",  # valid variant: run events' JSON split over two data: lines
    # Responses streams only (protocol-responses.md §2, compatible servers such as OpenRouter):
    "data_only",  # valid variant: no "event:" lines, the type is only in the JSON
    "trailing_done",  # a "data: [DONE]" frame after the terminal event
]

_DEFAULT_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for gpt-4o in organization org-runtapfake on requests per min (RPM): "
          "Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit "
          "https://platform.openai.com/account/rate-limits to learn more."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


@dataclass
class Fault:
    """Misbehaviour for the next response whose method/path match (FIFO, consumed once)."""

    path: str | None = None
    """Substring of the request path that must match (``None``: any request)."""
    method: str | None = None
    reset_after_bytes: int | None = None
    """Write this many body bytes, then drop the connection; the body is never finished (even if
    it is shorter than N: then the reset replaces the final chunk terminator)."""
    hard_reset: bool = False
    """With a reset: send a TCP RST (SO_LINGER 0) instead of FIN. Unread bytes may then be lost by
    the client's kernel, so byte counts are only deterministic with the default FIN."""
    reset_before_headers: bool = False
    stall_before_s: float = 0.0
    stall_after_bytes: tuple[int, float] | None = None
    drip_delay_s: float = 0.0
    """Sleep between writes (each event, or each ``chunk_size`` piece)."""
    chunk_size: int | None = None
    """Re-chunk the body into writes of this size, across event boundaries."""
    status: int | None = None
    """Answer with this status and an OpenAI-shaped error instead of handling the request."""
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    retry_after: str | None = None
    """``retry-after`` header; 429 faults default to ``"1"`` (use ``""`` to omit)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers, e.g. ``{"x-should-retry": "false"}``."""
    malformed: Malformed | None = None
    clean_eof_after_events: int | None = None
    """End the stream cleanly after this many events: no done, no error, a valid chunked end."""
    huge_event_bytes: int | None = None
    """The first run event (or a JSON run body) carries ``instructions`` of this many bytes."""
    gzip: bool = False
    """``Content-Encoding: gzip`` when the request's Accept-Encoding allows it."""

    def matches(self, method: str, path: str) -> bool:
        return (self.path is None or self.path in path) and (self.method is None or self.method == method)

    def error_json(self) -> Json:
        assert self.status is not None
        fallback = ("server_error", None, f"Error {self.status}.")
        d_type, d_code, d_message = _DEFAULT_ERRORS.get(self.status, fallback)
        return error_body(self.error_message or d_message, self.error_type or d_type, None,
                          self.error_code if self.error_code is not None else d_code)

    def error_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        retry_after = self.retry_after
        if retry_after is None:
            retry_after = "1" if self.status == 429 else ""
        if retry_after:
            headers["retry-after"] = retry_after
        return headers


@dataclass
class SeenRequest:
    """A request as the fake received it (``headers`` is case-insensitive, order and case kept)."""

    method: str
    path: str
    query: dict[str, str]
    query_string: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class SentResponse:
    """What the fake put on the wire for one request: ``body`` is the exact payload bytes handed
    to the transport (after gzip, before HTTP chunk framing); ``writes`` keeps the write split."""

    method: str
    path: str
    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    """As sent, including aiohttp's own (Date, Server, Transfer-Encoding); case-insensitive."""
    writes: list[bytes] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    aborted: bool = False
    """The connection was dropped (a reset fault, or the client went away)."""
    complete: bool = False
    """The body was finished (``write_eof``) -- false for resets and reset_before_headers."""

    @property
    def body(self) -> bytes:
        return b"".join(self.writes)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def decoded_body(self) -> bytes:
        """The body without Content-Encoding (tolerates a truncated gzip stream)."""
        if self.headers.get("Content-Encoding") == "gzip":
            return zlib.decompressobj(wbits=31).decompress(self.body)
        return self.body


class Wire:
    """Writes one response body, applying the byte-level faults and logging every write."""

    def __init__(self, request: web.Request, resp: web.StreamResponse, sent: SentResponse,
                 fault: Fault | None, *, compress: bool = False, chunk_size: int | None = None) -> None:
        self.request, self.resp, self.sent = request, resp, sent
        self.fault = fault or Fault()
        self.chunk_size = self.fault.chunk_size or chunk_size
        self._z = zlib.compressobj(wbits=31) if compress else None
        self._buf = b""
        self._count = 0
        self._stalled = False
        self.aborted = False

    async def write(self, data: bytes) -> bool:
        """Queue ``data``; returns False once the connection is gone (stop producing)."""
        if self.aborted:
            return False
        if self._z is not None:
            data = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if not self.chunk_size:
            return await self._send(data) if data else True
        self._buf += data
        while len(self._buf) >= self.chunk_size:
            piece, self._buf = self._buf[: self.chunk_size], self._buf[self.chunk_size:]
            if not await self._send(piece):
                return False
        return True

    async def finish(self) -> None:
        """Flush and end the body cleanly -- or reset, if a reset fault has not fired yet."""
        if self.aborted:
            return
        tail = self._buf + (self._z.flush() if self._z is not None else b"")
        self._buf = b""
        if tail and not await self._send(tail):
            return
        if self.fault.reset_after_bytes is not None:
            await self.reset()
            return
        try:
            await self.resp.write_eof()
            self.sent.complete = True
        except ConnectionResetError:
            self.aborted = self.sent.aborted = True

    async def _send(self, piece: bytes) -> bool:
        f, sent = self.fault, self._count
        if f.reset_after_bytes is not None and sent + len(piece) >= f.reset_after_bytes:
            head = piece[: max(0, f.reset_after_bytes - sent)]
            if head and not await self._raw(head):
                return False
            await self.reset()
            return False
        stall = f.stall_after_bytes
        if stall is not None and not self._stalled and sent + len(piece) >= stall[0]:
            self._stalled = True
            cut = max(0, stall[0] - sent)
            if piece[:cut] and not await self._raw(piece[:cut]):
                return False
            await asyncio.sleep(stall[1])
            piece = piece[cut:]
            if not piece:
                return True
        if f.drip_delay_s and self.sent.writes:
            await asyncio.sleep(f.drip_delay_s)
        return await self._raw(piece)

    async def _raw(self, piece: bytes) -> bool:
        try:
            await self.resp.write(piece)
        except ConnectionResetError:
            self.aborted = self.sent.aborted = True
            return False
        self._count += len(piece)
        self.sent.writes.append(piece)
        return True

    async def reset(self) -> None:
        """Drop the connection after what was written has left the process (so the client gets
        exactly those bytes), leaving the chunked body unfinished."""
        await abort_transport(self.request, hard=self.fault.hard_reset)
        self.aborted = self.sent.aborted = True
        with contextlib.suppress(ConnectionResetError):  # so aiohttp does not try to end it again
            await self.resp.write_eof()


async def abort_transport(request: web.Request, *, hard: bool = False) -> None:
    transport = request.transport
    if transport is None:
        return
    for _ in range(1000):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    if hard:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Shaper:
    """Turns one stream's events into frames, applying the event-level faults."""

    def __init__(self, fault: Fault | None) -> None:
        self.fault = fault or Fault()
        self.stop = False
        """Set when a fault ends the stream early (no done frame)."""
        self._huge_pending = bool(self.fault.huge_event_bytes)

    def frames(self, event: str, data: Json, *, ending: bool, last: bool) -> list[bytes]:
        kind = self.fault.malformed
        if self._huge_pending and event in RUN_STATUS_EVENTS:
            self._huge_pending = False
            data = {**data, "instructions": "x" * (self.fault.huge_event_bytes or 0)}
        if ending and kind in ("error_event", "error_event_wrapped"):
            self.stop = True
            err = {"code": "server_error", "param": None, "type": "server_error",
                   "message": "The server had an error while processing your request."}
            shaped = err if kind == "error_event" else {"error": err}
            return [self._finish(b"event: error\ndata: " + dumps(shaped))]
        payload = dumps(data)
        if kind == "invalid_json" and ending:
            payload += b"}"
        if kind == "split_data" and event in RUN_STATUS_EVENTS:
            cut = payload.index(b",") + 1
            payload = payload[:cut] + b"\ndata: " + payload[cut:]
        prefix = b"" if kind == "bare_json_line" and ending else b"data: "
        frame = b"event: " + event.encode() + b"\n" + prefix + payload
        out: list[bytes] = []
        if kind == "unknown_event" and ending:
            unknown = {"id": data.get("id"), "object": "thread.run.step.something_new"}
            out.append(self._finish(b"event: thread.run.step.something_new\ndata: " + dumps(unknown)))
        if kind == "no_final_blank_line" and last:
            self.stop = True
            out.append(self._line_endings(frame + b"\n"))
        else:
            out.append(self._finish(frame))
        return out

    def done(self) -> bytes:
        if self.fault.malformed == "done_without_data":
            return self._finish(b"event: done")
        return self._finish(DONE_FRAME[:-2]) if self.fault.malformed else DONE_FRAME

    def _finish(self, frame: bytes) -> bytes:
        """Terminate a frame with its blank line (unless that is the fault) and add comments."""
        tail = b"\n" if self.fault.malformed == "no_blank_lines" else b"\n\n"
        if self.fault.malformed == "comments":
            frame = b": ping\n" + frame
        return self._line_endings(frame + tail)

    def _line_endings(self, frame: bytes) -> bytes:
        return frame.replace(b"\n", b"\r\n") if self.fault.malformed == "crlf" else frame
