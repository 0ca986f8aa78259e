"""The recording of an API's WebSocket (the Responses WebSocket mode, `responses.connect()`).

The tunnel (tunnel.py) relays the socket's bytes both ways; for a route its API marks `socket`,
it hands runtap's copy here. Each client message the API names a request (`Api.socket_message`:
a `response.create`) becomes an exchange of its own, recorded exactly as if it had come over HTTP
and been answered over SSE: its message is its request body, admitted by the budgets before it is
relayed, and the server's frames that answer it (the events of its response, one frame each) go
through a `Tap` as the SSE stream they would have been (`event: <type>` + `data: <the frame's
text>`), so the responses, items, turns, events (with their sequence numbers), budgets, metrics and
spans are the same. The server answers one create at a time, in order (protocol-responses.md §1),
so its frames belong to the oldest create not answered yet (or to the one whose `stream_id` they
echo). A create's exchange ends when its API says its stream ended (a terminal event), or with the
socket; one the server refused (an `error` frame first) is recorded as the HTTP error would have
been: the frame's `status`, the frame its response body.

A create the budgets refuse is not relayed: the client gets the upstream's own refusal shape, an
`error` frame with `status` 429 and the contract's error body. When the client compresses each
message with the context of the ones before (permessage-deflate without
`client_no_context_takeover`), leaving one out would break every later message for the upstream,
so runtap then also closes the socket (1008) after that frame. Nothing else changes a byte.

The socket's own exchange (`GET .../responses`, status 101) ends with the socket.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from ..exchange import Exchange, Outcome
from ..tap import Tap, parse_object
from ..websocket import CLOSE, TEXT, MessageReader, close_frame, deflate_of, server_text_frame

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from .forward import Forwarder

log = logging.getLogger("runtap.socket")
_TYPE = re.compile(rb'"type"\s*:\s*"([^"\\]{1,200})"')
_HEAD_MAX = 64 * 1024


@dataclass(slots=True, eq=False)
class _Create:
    ex: Exchange
    tap: Tap
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
        self._server: MessageReader | None = None
        self._client: MessageReader | None = None
        self._client_context = False
        """The client compresses messages with the context of the earlier ones."""
        self._unsent = b""
        """Client bytes read but not relayed yet (a frame not whole yet)."""
        self._unsent_at = 0
        """Where `_unsent` begins in the client's stream."""
        self._creates: list[_Create] = []
        self._inject: list[bytes] = []
        """runtap's own frames for the client, written at the next server frame boundary."""
        self.close_after_inject = False
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
            for message in self._server.feed(data):
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
        if b" 101 " not in lines[0] + b" ":
            self._stop(None)  # refused: an HTTP answer, no socket
            return b""
        extensions = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-extensions":
                extensions = value.strip().decode("latin-1")
        deflate, fresh = deflate_of(extensions)
        self._client_context = deflate and not fresh
        self._server = MessageReader(masked=False, max_message=self._max_message, deflate=deflate)
        self._client = MessageReader(masked=True, max_message=self._max_message, deflate=deflate)
        return rest

    def _server_message(self, payload: bytes) -> None:
        match = _TYPE.search(payload)
        kind = match.group(1) if match is not None else None
        if kind is None:
            obj = parse_object(payload)
            kind = str(obj.get("type")).encode() if obj is not None and "type" in obj else b"message"
        create = self._answering(payload)
        if create is None:
            return  # not in answer to a create runtap recorded (a refused message's answer, say)
        if not create.answered:  # its first frame: the server took the create (200), or refused it
            create.answered = True
            refusal = parse_object(payload) if kind == b"error" else None
            if refusal is not None:  # recorded as the HTTP error would be: its status, the frame its body
                status = refusal.get("status")
                create.ex.status = status if isinstance(status, int) and status >= 400 else 400
                create.tap.response_started("application/json", None)
                create.tap.feed(payload)
                self._creates.remove(create)
                create.tap.end(Outcome.COMPLETED)
                return
            create.ex.status = 200
            create.tap.response_started("text/event-stream", None)
        create.tap.feed(b"event: " + kind + b"\ndata: " + payload + b"\n\n")
        api = create.ex.route.api
        if api is not None and api.stream_ended(create.ex, self._forwarder.tracker):
            self._creates.remove(create)
            create.tap.end(Outcome.CLIENT_GONE if create.client_left else Outcome.COMPLETED)

    def _answering(self, payload: bytes) -> _Create | None:
        if not self._creates:
            return None
        if b'"stream_id"' in payload:  # a lane the client named: the create that named it
            obj = parse_object(payload)
            lane = obj.get("stream_id") if obj is not None else None
            for create in self._creates:
                if create.stream_id == lane:
                    return create
        return self._creates[0]

    def take_injected(self) -> bytes:
        """runtap's own frames for the client, once no server frame is half-way to it."""
        if not self._inject or (self._server is not None and not self._server.at_boundary):
            return b""
        out = b"".join(self._inject)
        self._inject = []
        return out

    # -- client → upstream -------------------------------------------------------------------------
    def from_client(self, data: bytes) -> bytes:
        """Client bytes in; the bytes to relay now (whole frames, less the creates refused)."""
        if self.off or self._client is None:
            return data  # before the handshake's answer a client sends nothing it may not
        try:
            buffer = self._unsent + data
            out: list[bytes] = []
            sent = self._unsent_at  # stream position of buffer[0]
            for message in self._client.feed(data):
                if message.opcode == CLOSE:
                    self.closed_by = self.closed_by or "client"
                    for create in self._creates:
                        create.client_left = True
                if message.opcode == TEXT and message.payload is not None and not self._admitted(message.payload):
                    out.append(buffer[:message.start - sent])
                    buffer, sent = buffer[message.end - sent:], message.end
                    if self._client_context:
                        self.close_after_inject = True
                        self._inject.append(close_frame(1008, "runtap: budget exceeded"))
                        self._unsent = b""
                        return b"".join(out)
                else:
                    out.append(buffer[:message.end - sent])
                    buffer, sent = buffer[message.end - sent:], message.end
            if self._client.broken:
                self._stop("the client's framing could not be followed")
                out.append(buffer)
                buffer = b""
            self._unsent, self._unsent_at = buffer, sent
            return b"".join(out)
        except Exception:
            self._failed()
            rest, self._unsent = self._unsent + data, b""
            return rest

    def _admitted(self, payload: bytes) -> bool:
        """Record a create (False: the budgets refused it, its error frame is queued)."""
        obj = parse_object(payload)
        api = self.socket.route.api
        route = api.socket_message(self.socket.route, obj) if api is not None and obj is not None else None
        if route is None:
            return True
        forwarder = self._forwarder
        forwarder.pending_taps.drain()  # what other exchanges relayed before this message is seen first
        ex = Exchange(route, "WS", self.socket.path, self.socket.query, self.socket.key_id, payload)
        ex.traceparent = self.socket.traceparent
        refusal = forwarder.admit(ex, self._headers) if route.budgeted else None
        forwarder.started(ex)
        if refusal is not None:
            ex.status = refusal.status
            error = orjson.loads(refusal.body)  # type: ignore[arg-type]  # runtap's own JSON body
            self._inject.append(server_text_frame(orjson.dumps({"type": "error", "status": refusal.status, **error})))
            forwarder.end(ex, Outcome.REJECTED, "budget exceeded")
            return False
        stream_id = obj.get("stream_id") if obj is not None else None
        self._creates.append(_Create(ex, forwarder.make_tap(ex), stream_id if isinstance(stream_id, str) else None))
        return True

    # -- the end -----------------------------------------------------------------------------------
    def ended(self, outcome: Outcome, error: str | None) -> None:
        """The socket closed (`outcome`: the socket's own): every create still answering ends with it."""
        for create in self._creates:
            if not create.answered:
                create.tap.response_started("text/event-stream", None)
            gone = create.client_left or outcome is Outcome.CLIENT_GONE
            create.tap.end(Outcome.CLIENT_GONE if gone else Outcome.TRUNCATED,
                           error or "the socket closed before its response ended")
        self._creates = []

    def _stop(self, why: str | None) -> None:
        if why is not None:
            log.warning("socket %s: not recorded further: %s", self.socket.request_id, why)
        self.off = True

    def _failed(self) -> None:
        SocketTap.errors += 1
        log.exception("socket tap failed for %s; relaying it unrecorded from here", self.socket.request_id)
        self.off = True
