"""The fake's Responses API routes (protocol-responses.md §1-8), over HTTP and WebSocket.

Served under ``/v1``, Azure's v1 API ``/openai/v1`` (no ``api-version``) and Azure's preview form
``/openai/...?api-version=`` (§1); the access checks are the server middleware's. Streams are
framed by :class:`~proxy.testing.sse_frames.ResponsesShaper`, so every
:class:`~proxy.testing.faults.Fault` applies here as it does to Assistants streams.

The WebSocket mode (``GET .../responses`` with ``Upgrade: websocket``) is
:mod:`proxy.testing.responses_ws`; it shares this module's scripts, engine and :meth:`follow`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.testing.conversations import Conversations, ConversationsApi
from proxy.testing.engine import ApiError
from proxy.testing.faults import Fault
from proxy.testing.plumbing import FAULT, json_body, page
from proxy.testing.responses_engine import ResponseRecord, ResponsesEngine
from proxy.testing.responses_objects import CREATE_KEYS, TERMINAL_EVENTS
from proxy.testing.responses_scripts import ResponseScript, ResponseScriptFactory
from proxy.testing.responses_ws import ResponsesSocket
from proxy.testing.sse_frames import ResponsesShaper, finish, pump
from proxy.testing.streams import Json

if TYPE_CHECKING:
    from proxy.testing.fake_upstream import FakeUpstream

PREFIXES = ("/v1", "/openai/v1", "/openai")
INPUT_TOKEN_KEYS = frozenset({"conversation", "input", "instructions", "model", "parallel_tool_calls",
                              "personality", "previous_response_id", "reasoning", "text", "tool_choice",
                              "tools", "truncation"})
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}


class ResponsesApi:
    """Responses and Conversations state plus their handlers; owned by ``FakeUpstream``."""

    def __init__(self, fake: FakeUpstream, clock: Callable[[], int], default_script: ResponseScriptFactory,
                 max_records: int | None = None) -> None:
        self.fake = fake
        self.conversations = Conversations(fake.ids, clock)
        self.engine = ResponsesEngine(fake.ids, clock, self.conversations, max_records)
        self.default_script = default_script
        self.scripts: deque[ResponseScript] = deque()
        self._conversations_api = ConversationsApi(fake, self.conversations)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        for p in PREFIXES:
            one = p + "/responses/{response_id}"
            r.add_post(p + "/responses", self._create)
            r.add_get(p + "/responses", self._connect, allow_head=False)  # WebSocket mode
            r.add_post(p + "/responses/input_tokens", self._input_tokens)
            r.add_get(one, self._retrieve)
            r.add_delete(one, self._delete)
            r.add_post(one + "/cancel", self._cancel)
            r.add_get(one + "/input_items", self._input_items)
            self._conversations_api.add_routes(r, p)

    def create(self, request: web.Request, body: Json, *, stream: bool) -> ResponseRecord:
        """Create with the next script; a request the service rejects does not use one up."""
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise ApiError(400, "Missing required parameter: 'model'.", param="model",
                           code="missing_required_parameter")
        script = self.scripts[0] if self.scripts else self.default_script(body)
        rec = self.engine.create(body, script, azure=request.path.startswith("/openai/"), stream=stream)
        if self.scripts and self.scripts[0] is script:
            self.scripts.popleft()
        return rec

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        return await ResponsesSocket(self, request).serve()

    # -- HTTP handlers ------------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = json_body(request, CREATE_KEYS)
        stream = body.get("stream") is True
        rec = self.create(request, body, stream=stream)
        if stream:
            return await self._stream(request, rec, after=-1)
        if rec.background:  # §5: answers at once, queued; polls move it on
            self.engine.advance(rec, until="response.queued")
        else:
            self.engine.drain(rec)
        return await self._reply(request, rec.response)

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        rec = self.engine.get(request.match_info["response_id"])
        if request.query.get("stream") == "true":
            if not rec.background:  # §5: only background responses can be streamed again
                raise ApiError(404, f"Response with id '{rec.id}' not found.")
            raw = request.query.get("starting_after", "-1")
            try:
                after = int(raw)
            except ValueError:
                raise ApiError(400, f"Invalid 'starting_after': expected an integer, got '{raw}'.",
                               param="starting_after", code="invalid_type") from None
            return await self._stream(request, rec, after=after)
        self.engine.poll(rec)
        return await self._reply(request, rec.response)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        rec = self.engine.get(request.match_info["response_id"])
        self.engine.cancel(rec)
        return await self._reply(request, rec.response)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        rec = self.engine.get(request.match_info["response_id"])
        return await self._reply(request, self.engine.delete(rec))

    async def _input_items(self, request: web.Request) -> web.StreamResponse:
        rec = self.engine.get(request.match_info["response_id"])
        return await self._reply(request, page(rec.input_items, request))

    async def _input_tokens(self, request: web.Request) -> web.StreamResponse:
        body = json_body(request, INPUT_TOKEN_KEYS)
        count = self.engine.count_input_tokens(body)
        return await self._reply(request, {"object": "response.input_tokens", "input_tokens": count})

    async def _reply(self, request: web.Request, body: Json) -> web.StreamResponse:
        fault: Fault | None = request[FAULT]
        if fault and fault.huge_event_bytes and body.get("object") == "response":
            body = {**body, "instructions": "x" * fault.huge_event_bytes}
        return await self.fake._json(request, 200, body)

    async def _stream(self, request: web.Request, rec: ResponseRecord, *, after: int) -> web.StreamResponse:
        """SSE, one write per event (§2). ``after`` >= 0 is a ``starting_after`` resume."""
        fault: Fault | None = request[FAULT]
        shaper = ResponsesShaper(fault)
        wire = await self.fake._open(request, 200, dict(SSE_HEADERS))
        events = self.follow(rec, after)
        try:
            natural = await pump(wire, shaper, fault, events)
        finally:
            await events.aclose()  # hands the rest to the server side at once if we stopped early
        await finish(wire, shaper, natural)
        return wire.resp

    async def follow(self, rec: ResponseRecord, after: int) -> AsyncIterator[tuple[str, Json, bool]]:
        """The events after sequence number ``after``: first those already applied (a resume
        replays them from the log), then the rest as they happen. The first stream to need a
        pending event applies them; a concurrent resume waits for it. On exit an owner applies
        whatever is left (the response goes on server-side). A cancel ends it without an event."""
        pos, owner = after + 1, False
        try:
            while True:
                if pos < len(rec.log):
                    ev = rec.log[pos]
                    pos += 1
                    yield ev["type"], ev, ev["type"] in TERMINAL_EVENTS
                elif not rec.pending:
                    return
                elif owner or not rec.streaming:
                    rec.streaming = owner = True
                    self.engine.pop(rec)
                else:
                    rec.changed.clear()
                    await rec.changed.wait()
        finally:
            if owner:
                rec.streaming = False
                self.engine.drain(rec)
