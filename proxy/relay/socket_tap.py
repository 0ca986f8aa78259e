"""The recording of an API's WebSocket (the Responses WebSocket mode, `responses.connect()`).

The tunnel (tunnel.py) relays the socket's bytes both ways; for a route its API marks `socket`,
it hands runtap's copy here. Each client message the API names a request (`Api.socket_message`:
a `response.create`) becomes an exchange of its own, recorded exactly as if it had come over HTTP
and been answered over SSE: its message is its request body, admitted by the budgets before it is
relayed, and the server's frames that answer it (the events of its response, one frame each) go
through a `Tap` as the SSE stream they would have been (`event: <type>` + `data: <the frame's
text>`), so the responses, items, turns, events (with their sequence numbers), budgets, metrics and
spans are the same. Like an HTTP stream's, they are parsed behind the relay in batches
(deferred_tap.DeferredTap): a delta frame is only noted; the next frame that is not one (or the tap's
timer) hands the deltas before it over in one batch, and is parsed at once, since whether it ends its
response decides which create the next frame answers.

Which frames answer which message: the server handles a socket's messages in order
(protocol-responses.md §1). Every text message the client sends takes a place in line; the events
of a response belong to the create streaming (else the first not answered yet, or the one whose
`stream_id` they echo); an `error` that is not a response's event (no `sequence_number`) answers the
first message not answered yet (a refused create, or another message the server refused), else
it is the streaming response's in-band error. A message the server answers with nothing gives up its place
when a later create begins streaming. A create's exchange ends when its API says its stream
ended, or with the socket; one the server refused is recorded as the HTTP error would have been:
the frame's `status`, the frame its response body.

Client frames are relayed whole, each as soon as it is complete, except a text message's, held
until the message is (at most `max_message`). A create the budgets refuse, and a text message too
large to read, are not relayed: the client gets the server's own refusal shape, an `error` frame
with `status` (429 `budget_exceeded`, 413 `request_too_large`). When leaving the message out would
break the stream for the upstream (a compressed message on a socket whose client compresses with
the context of earlier ones), runtap closes the socket (1008) after that frame. Nothing else
changes a byte. A failure here costs the rest of the socket's recording, never its bytes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from .. import errors
from ..deferred_tap import DeferredTap
from ..exchange import Exchange, Outcome
from ..tap import Tap, parse_object
from ..websocket import CLOSE, TEXT, FrameReader, Messages, close_frame, deflate_of, server_text_frame

if TYPE_CHECKING:
    from aiohttp import web
    from multidict import CIMultiDict

    from ..apis.base import Api
    from .forward import Forwarder

log = logging.getLogger("runtap.socket")
_TYPE = re.compile(rb'\A\{\s*"type"\s*:\s*"([^"\\]{1,200})"')
_HEAD_MAX = 64 * 1024
_DELTA_KINDS: dict[type, frozenset[bytes]] = {}
"""Each API's delta event names as the bytes a frame's `type` is matched as."""


def _delta_kinds(api: Api) -> frozenset[bytes]:
    kinds = _DELTA_KINDS.get(type(api))
    if kinds is None:
        kinds = _DELTA_KINDS[type(api)] = frozenset(name.encode() for name in api.delta_events)
    return kinds


@dataclass(slots=True, eq=False)
class _Request:
    """A client text message in line for its answer; `ex` None for one that is no request."""

    ex: Exchange | None
    tap: DeferredTap | None
    stream_id: str | None
    answered: bool = False
    client_left: bool = False
    """The client closed the socket before its response ended (runtap reads on: it is still recorded)."""


class SocketTap:
    errors = 0
    """Failures swallowed by all socket taps (each cost that socket's recording, never its bytes)."""

    def __init__(self, socket: Exchange, headers: CIMultiDict[str], forwarder: Forwarder, max_message: int) -> None:
        self.socket = socket
        self._headers = headers
        self._forwarder = forwarder
        self._max_message = max_message
        self._head = b""
        self._server: FrameReader | None = None
        self._server_messages: Messages | None = None
        self._client: FrameReader | None = None
        self._client_messages: Messages | None = None
        self._client_context = False
        """The client compresses messages with the context of the earlier ones."""
        self._held: list[bytes] = []
        """The frames of a client text message not whole yet (relayed or dropped with it)."""
        self._holding = False
        self._early = bytearray()
        """Client bytes before the handshake's answer was read: relayed once it is."""
        self._line: list[_Request] = []
        self._inject: list[bytes] = []
        """runtap's own frames for the client, written once no server message is half-way."""
        self.closing = False
        """runtap ends the socket (a refused message it cannot leave out): nothing more is relayed upstream."""
        self.closed_by: str | None = None
        """Who sent the first close frame (`client`, `upstream`): a socket closed without one broke off."""
        self.off = False
        """Recording stopped (a failure, not a socket, framing lost): bytes are relayed raw."""

    # -- upstream → client -------------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> bytes:
        """After `data` went to the client: read it; returns runtap's own frames to write after it."""
        if self.off:
            return b""
        try:
            if self._server is None:
                data = self._read_head(data)
                if self._server is None or not data:
                    return self.take_injected()
            assert self._server_messages is not None
            for frame in self._server.feed(data):
                if frame.partial:
                    continue
                message = self._server_messages.add(frame)
                if message is None:
                    continue
                if message.opcode == TEXT and message.payload is not None:
                    self._server_message(message.payload)
                elif message.opcode == CLOSE:
                    self.closed_by = self.closed_by or "upstream"
            if self._server.broken:
                self._stop("the server's framing could not be followed")
        except Exception:
            self._failed()
        return self.take_injected()

    def _read_head(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _HEAD_MAX:
                self._stop("no end of the handshake's head")
            return b""
        head, rest = self._head[:end], self._head[end + 4:]
        self._head = b""
        lines = head.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip().decode("latin-1")
        if b" 101 " not in lines[0] + b" " or fields.get(b"upgrade", "").lower() != "websocket":
            self._stop(None)  # refused (an HTTP answer), or not a WebSocket: relayed, not read
            return b""
        deflate, fresh = deflate_of(fields.get(b"sec-websocket-extensions"))
        self._client_context = deflate and not fresh
        self._server = FrameReader(masked=False, max_message=self._max_message)
        self._server_messages = Messages(max_message=self._max_message, deflate=deflate)
        self._client = FrameReader(masked=True, max_message=self._max_message, keep_raw=True)
        self._client_messages = Messages(max_message=self._max_message, deflate=deflate)
        return rest

    def take_early(self) -> bytes:
        """Client bytes that came before the handshake's answer, once it was read: to relay now."""
        if not self._early or (self._client is None and not self.off):
            return b""
        early, self._early = bytes(self._early), bytearray()
        return early if self.off else self.from_client(early)

    def _server_message(self, payload: bytes) -> None:
        match = _TYPE.match(payload)
        if match is not None:
            kind = match.group(1)
        else:
            obj = parse_object(payload)
            kind = str(obj.get("type")).encode() if obj is not None and "type" in obj else b"message"
        entry = self._answering(kind, payload)
        if entry is None or entry.ex is None or entry.tap is None:
            if entry is not None:  # the server's answer to a message that is no request
                self._line.remove(entry)
            return
        tap = entry.tap
        if not entry.answered:  # its first frame: the server took the create (200), or refused it
            entry.answered = True
            refusal = parse_object(payload) if kind == b"error" else None
            if refusal is not None:  # recorded as the HTTP error would be: its status, the frame its body
                status = refusal.get("status")
                entry.ex.status = status if isinstance(status, int) and status >= 400 else 400
                tap.response_started("application/json", None)
                tap.feed(payload)
                self._line.remove(entry)
                tap.end(Outcome.COMPLETED)
                return
            entry.ex.status = 200
            tap.response_started("text/event-stream", None)
            # The server is past the messages before it: those it did not answer give up their place.
            at = self._line.index(entry)
            self._line[:at] = [e for e in self._line[:at] if e.answered or e.ex is not None]
        # One data line per line of the frame: SSE joins them with "\n", giving back the frame's text.
        tap.feed(b"event: " + kind + b"\ndata: " + payload.replace(b"\n", b"\ndata: ") + b"\n\n")
        api = entry.ex.route.api
        if api is None or kind in _delta_kinds(api):
            return  # parsed in a batch with those after it: a delta never ends a response
        tap.drain()
        if api.stream_ended(entry.ex, self._forwarder.tracker):
            self._line.remove(entry)
            tap.end(Outcome.CLIENT_GONE if entry.client_left else Outcome.COMPLETED)

    def _answering(self, kind: bytes, payload: bytes) -> _Request | None:
        line = self._line
        if not line:
            return None
        first = line[0]
        if first.answered and kind != b"error" and b'"stream_id"' not in payload:
            return first  # the usual frame: an event of the response streaming, first in line
        if b'"stream_id"' in payload:  # a lane the client named: the create that named it
            obj = parse_object(payload)
            lane = obj.get("stream_id") if obj is not None else None
            for entry in line:
                if entry.stream_id == lane and entry.ex is not None:
                    return entry
        streaming = next((e for e in line if e.answered), None)
        waiting = next((e for e in line if not e.answered), None)
        if kind == b"error" and (streaming is None or b'"sequence_number"' not in payload):
            # A refusal of the first message not answered yet; an in-band error is an event of the
            # streaming response and carries its sequence_number (protocol-responses.md §6).
            return waiting if waiting is not None else streaming
        if streaming is not None:
            return streaming
        return next((e for e in line if not e.answered and e.ex is not None), None)

    @property
    def injecting(self) -> bool:
        """runtap's own frames are waiting for a server frame boundary."""
        return bool(self._inject)

    def take_injected(self) -> bytes:
        """runtap's own frames for the client, once no server frame or message is half-way to it."""
        if not self._inject or (self._server is not None and (
                not self._server.at_boundary or (self._server_messages is not None and self._server_messages.open))):
            return b""
        out = b"".join(self._inject)
        self._inject = []
        return out

    # -- client → upstream -------------------------------------------------------------------------
    def from_client(self, data: bytes) -> bytes:
        """Client bytes in; the bytes to relay now (whole frames, less the messages refused)."""
        if self.closing:
            return b""
        if self.off:
            return self._unread() + data
        if self._client is None:
            self._early += data  # a client sends nothing before the handshake's answer; should it, it waits
            return b""
        out: list[bytes] = []
        try:
            self._client_frames(data, out)
        except Exception:
            self._failed()
            out.append(self._unread())  # what was decided goes first, then the rest raw
        return b"".join(out)

    def _client_frames(self, data: bytes, out: list[bytes]) -> None:
        """Appends to `out` what to relay, frame by frame as each is decided."""
        assert self._client is not None and self._client_messages is not None
        for frame in self._client.feed(data):
            if frame.opcode >= 8:  # control frames cross at once (between a message's fragments too)
                if frame.opcode == CLOSE:
                    self.closed_by = self.closed_by or "client"
                    for entry in self._line:
                        entry.client_left = True
                out.append(frame.raw or b"")
                continue
            if frame.opcode == TEXT:
                self._holding = True  # a text message is relayed whole once read, or left out
            if frame.raw is not None and not (self._holding and frame.payload is None):
                (self._held if self._holding else out).append(frame.raw)
            if frame.partial:
                continue  # a piece of a frame too large to hold: a text one is left out, a binary one relayed
            message = self._client_messages.add(frame)
            if message is None:
                continue
            holding, self._holding = self._holding, False
            held, self._held = b"".join(self._held), []
            if not holding:
                continue
            refusal = self._refusal(message.payload)
            if refusal is None:
                out.append(held)
                continue
            self._inject.append(refusal)
            if message.compressed and self._client_context:
                # Left out, it would break every later compressed message for the upstream.
                self._inject.append(close_frame(1008, "runtap: request refused"))
                self.closing = True
                break
        if self._client.broken:
            self._stop("the client's framing could not be followed")
            out.append(b"".join(self._held))
            self._held = []

    def _refusal(self, payload: bytes | None) -> bytes | None:
        """Take its place in line and record a create; None to relay it, else runtap's error frame."""
        if payload is None:  # too large to read (or a broken deflate): it cannot be admitted
            return _error_frame(errors.request_too_large(self._max_message))
        obj = parse_object(payload)
        api = self.socket.route.api
        route = api.socket_message(self.socket.route, obj) if api is not None and obj is not None else None
        if route is None:
            self._line.append(_Request(None, None, None))
            return None
        forwarder = self._forwarder
        forwarder.pending_taps.drain()  # what other exchanges relayed before this message is seen first
        ex = Exchange(route, "WS", self.socket.path, self.socket.query, self.socket.key_id, payload)
        ex.traceparent = self.socket.traceparent
        refusal = forwarder.admit(ex, self._headers) if route.budgeted else None
        forwarder.started(ex)
        if refusal is not None:
            ex.status = refusal.status
            forwarder.end(ex, Outcome.REJECTED, "budget exceeded")
            return _error_frame(refusal)
        try:
            tap = forwarder.make_tap(ex)
        except Exception:
            forwarder.end(ex, Outcome.TRUNCATED, "not recorded: the socket tap failed")
            raise
        stream_id = obj.get("stream_id") if obj is not None else None
        self._line.append(_Request(ex, tap, stream_id if isinstance(stream_id, str) else None))
        return None

    # -- the end -----------------------------------------------------------------------------------
    def ended(self, outcome: Outcome, error: str | None) -> None:
        """The socket closed (`outcome`: the socket's own): every create still answering ends with it."""
        for entry in self._line:
            if entry.tap is None:
                continue
            if not entry.answered:
                entry.tap.response_started("text/event-stream", None)
            gone = entry.client_left or outcome is Outcome.CLIENT_GONE
            entry.tap.end(Outcome.CLIENT_GONE if gone else Outcome.TRUNCATED,
                          error or "the socket closed before its response ended")
        self._line = []

    def _unread(self) -> bytes:
        """What runtap holds of the client's bytes, handed back to be relayed raw (the tap is off)."""
        held, self._held = b"".join(self._held), []
        return held + (self._client.take_buffered() if self._client is not None else b"")

    def _stop(self, why: str | None) -> None:
        if why is not None:
            log.warning("socket %s: not recorded further: %s", self.socket.request_id, why)
        self.off = True

    def _failed(self) -> None:
        SocketTap.errors += 1
        Tap.errors += 1  # runtap_tap_errors_total counts the sockets' with the streams'
        log.exception("socket tap failed for %s; relaying it unrecorded from here", self.socket.request_id)
        self.off = True


def _error_frame(refusal: web.Response) -> bytes:
    """runtap's own answer as the server's WebSocket error event: `{"type": "error", "status", "error"}`."""
    body = orjson.loads(refusal.body)  # type: ignore[arg-type]  # runtap's own JSON bytes
    return server_text_frame(orjson.dumps({"type": "error", "status": refusal.status, **body}))
