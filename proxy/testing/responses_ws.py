"""The Responses WebSocket mode (protocol-responses.md §1, "WebSocket ``wss://{base_url}/responses``").

Matched to the installed openai SDK's ``client.responses.connect()``
(``resources/responses/responses.py`` ``_prepare_url``, ``_websocket_connection.py``): a ``GET`` of
``{base_url}/responses`` with ``Upgrade: websocket`` (the base URL's scheme swapped to ws/wss, the
client's auth headers and default query, so Azure's ``api-version`` too). The client sends JSON
text frames ``{"type": "response.create", ...}`` carrying the ``POST /responses`` fields
(``stream`` implicit, ``background`` unsupported, an optional ``stream_id`` lane that the server
echoes on every event of that response). The server answers with the same event JSON an SSE
stream carries in its ``data:`` lines, one text frame per event. A rejected request becomes an
``{"type": "error", "status": N, "error": {...}}`` frame (the SDK's ``ResponseWsError``) and the
socket stays open. Responses are handled one at a time, in the order their creates arrive.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from proxy.testing.engine import ApiError
from proxy.testing.faults import Fault, SentResponse, abort_transport
from proxy.testing.plumbing import FAULT, check_keys
from proxy.testing.responses_objects import CREATE_KEYS
from proxy.testing.streams import Json, dumps

if TYPE_CHECKING:
    from proxy.testing.responses_server import ResponsesApi

WS_KEYS = CREATE_KEYS - {"stream"} | {"generate"}


class ResponsesSocket:
    """One WebSocket connection. ``SentResponse.writes`` holds each text frame's payload (not the
    WebSocket framing) and ``events`` each frame's ``type``."""

    def __init__(self, api: ResponsesApi, request: web.Request) -> None:
        self.api, self.request = api, request
        self.fault: Fault = request[FAULT] or Fault()
        self.ws = web.WebSocketResponse(max_msg_size=0)  # no cap: the SDK sets max_size=None on its side
        self.sent = SentResponse(request.method, request.path, 101)
        self._close = False
        """A ``clean_eof_after_events`` fault fired: close once the response is settled."""

    async def serve(self) -> web.StreamResponse:
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(404, f"Invalid URL ({self.request.method} {self.request.path})")
        self.ws.headers.update(self.api.fake._headers(self.request))  # x-request-id etc. on the 101
        await self.ws.prepare(self.request)
        self.sent.headers = CIMultiDict(self.ws.headers)
        self.api.fake._log(self.sent)
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                await self._message(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self._error(ApiError(400, "Expected a text frame with a JSON event.", code="invalid_event"),
                                  None)
            if self.sent.aborted or self.ws.closed:
                break
        self.sent.complete = not self.sent.aborted
        return self.ws

    async def _message(self, data: str) -> None:
        try:
            frame: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            frame = None
        stream_id = frame.get("stream_id") if isinstance(frame, dict) else None
        try:
            if not isinstance(frame, dict):
                raise ApiError(400, "Invalid JSON in WebSocket message.", code="invalid_json")
            if frame.get("type") != "response.create":
                raise ApiError(400, f"Unsupported event type: '{frame.get('type')}'.", param="type",
                               code="unknown_event_type")
            body = {k: v for k, v in frame.items() if k not in ("type", "stream_id", "stream")}
            check_keys(body, WS_KEYS)
            if body.get("background"):
                raise ApiError(400, "Background mode is not supported over WebSocket.", param="background")
            rec = self.api.create(self.request, body, stream=True)
        except ApiError as e:
            await self._error(e, stream_id)
            return
        events = self.api.follow(rec, -1)
        try:
            async for _, ev, _ in events:
                if not await self._send({**ev, "stream_id": stream_id} if stream_id else ev):
                    return
        finally:
            await events.aclose()  # a dropped socket: the response still completes server-side
            if self._close:  # only now, so whoever sees the close also sees the settled response
                await self.ws.close()

    async def _error(self, e: ApiError, stream_id: str | None) -> None:
        frame: Json = {"type": "error", "status": e.status, "error": e.body["error"]}
        await self._send({**frame, "stream_id": stream_id} if stream_id else frame)

    async def _send(self, data: Json) -> bool:
        """One text frame. Byte faults count frame payload bytes: ``reset_after_bytes`` drops the
        TCP connection before the frame that would cross it, ``clean_eof_after_events`` closes the
        socket (1000) after that many frames, ``drip_delay_s`` sleeps between frames."""
        payload, f, sent = dumps(data), self.fault, self.sent
        if f.drip_delay_s and sent.writes:
            await asyncio.sleep(f.drip_delay_s)
        if f.reset_after_bytes is not None and len(sent.body) + len(payload) >= f.reset_after_bytes:
            sent.aborted = True
            await abort_transport(self.request, hard=f.hard_reset)
            return False
        try:
            await self.ws.send_str(payload.decode())
        except ConnectionResetError:
            sent.aborted = True
            return False
        sent.writes.append(payload)
        sent.events.append(str(data["type"]))
        if f.clean_eof_after_events is not None and len(sent.events) >= f.clean_eof_after_events:
            self._close = True
            return False
        return True
