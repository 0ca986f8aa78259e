"""A faithful fake of the OpenAI upstream (``/v1/...`` and Azure ``/openai/...``): Assistants v2 here,
the Responses API, Conversations and Chat Completions in their own modules (``responses_server``,
``responses_ws``, ``conversations``, ``chat``; protocol-responses.md), registered by ``_make_app``.

It is product code (``runtap fake-upstream``, ``make demo``, the benchmark's fast upstream) and the
only upstream the test suite talks to, so it behaves like the real service where the proxy can
notice: the exact event order of protocol.md §1.3, stateful runs that pause for tool outputs and
can be polled, OpenAI-shaped errors and headers -- and it is stricter than the published docs in
its framing (§1.4), so any malformed byte downstream is the proxy's fault, unless a
:class:`~proxy.testing.faults.Fault` was injected on purpose.

Usage in tests::

    fake = FakeUpstream()
    fake.enqueue(Script.tool_then_text("get_weather", {"city": "Paris"}, "Sunny."))
    fake.fault(Fault(path="/submit_tool_outputs", reset_after_bytes=300))
    server = await aiohttp_server(fake.app)
    ...
    fake.responses[-1].body  # exact bytes written

    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Paris"}))
    fake.enqueue_chat(ChatScript("Hi!"))
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection

import orjson
from aiohttp import web
from multidict import CIMultiDict

from proxy.testing.chat import ChatApi
from proxy.testing.engine import ApiError, Engine, RunRecord
from proxy.testing.faults import Fault, SeenRequest, SentResponse, Shaper, Wire, abort_transport
from proxy.testing.plumbing import BAD_JSON as _BAD_JSON
from proxy.testing.plumbing import BODY, FAULT, STARTED, check_metadata, page
from proxy.testing.responses_scripts import (
    ChatScript,
    ChatScriptFactory,
    DemoChatScripts,
    DemoResponseScripts,
    ResponseScript,
    ResponseScriptFactory,
    default_chat_script,
    default_response_script,
)
from proxy.testing.responses_server import ResponsesApi
from proxy.testing.scripts import DemoScripts, Script, ScriptFactory, default_script
from proxy.testing.streams import PAUSE_OR_TERMINAL, RUN_STATUS_EVENTS, Ids, Json, now

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_RUN_KEYS = {"assistant_id", "instructions", "max_completion_tokens", "max_prompt_tokens", "metadata",
             "model", "parallel_tool_calls", "response_format", "stream", "temperature", "tool_choice",
             "tools", "top_p", "truncation_strategy"}
CREATE_AND_RUN_KEYS = frozenset(_RUN_KEYS | {"thread", "tool_resources"})
CREATE_RUN_KEYS = frozenset(
    _RUN_KEYS | {"additional_instructions", "additional_messages", "reasoning_effort"})
SUBMIT_KEYS = frozenset({"tool_outputs", "stream"})
THREAD_KEYS = frozenset({"messages", "metadata", "tool_resources"})
MESSAGE_KEYS = frozenset({"role", "content", "attachments", "metadata"})

_NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
           "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
           "username) if you're accessing the API from your browser and are prompted for a username. You can "
           "obtain an API key from https://platform.openai.com/account/api-keys.")
_NO_BETA = ("You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try again by "
            "setting the header 'OpenAI-Beta: assistants=v2'.")

class FakeUpstream:
    """The fake service. ``app`` is an aiohttp application; state lives in ``engine``.

    ``requests`` and ``responses`` log every exchange in order (disable with ``record=False`` for
    long-running served fakes).
    """

    def __init__(self, *, default_script: ScriptFactory = default_script, seed: int | None = None,
                 api_keys: Collection[str] | None = None, poll_after_ms: int | None = 1,
                 chunk_size: int | None = None, record: bool = True, max_threads: int | None = None,
                 clock: Callable[[], int] = now,
                 default_response_script: ResponseScriptFactory = default_response_script,
                 default_chat_script: ChatScriptFactory = default_chat_script) -> None:
        self.ids = Ids(seed)
        self.engine = Engine(self.ids, clock, max_threads)
        # Responses/Conversations and Chat Completions (protocol-responses.md); a served fake bounds
        # their stored responses with the same cap as its threads.
        self.responses_api = ResponsesApi(self, clock, default_response_script, max_threads)
        self.chat_api = ChatApi(self, clock, default_chat_script)
        self.default_script = default_script
        self.api_keys = set(api_keys) if api_keys is not None else None
        self.poll_after_ms, self.chunk_size, self.record = poll_after_ms, chunk_size, record
        self.scripts: deque[Script] = deque()
        self.faults: list[Fault] = []
        self.requests: list[SeenRequest] = []
        self.responses: list[SentResponse] = []
        self.app = self._make_app()

    # -- public knobs -------------------------------------------------------------------------
    def enqueue(self, script: Script) -> None:
        """The next created run follows ``script`` (FIFO); an empty queue uses ``default_script``."""
        self.scripts.append(script)

    def enqueue_response(self, script: ResponseScript) -> None:
        """The next created Response (``POST /responses`` or a WebSocket ``response.create``)
        follows ``script`` (FIFO); an empty queue uses ``default_response_script``."""
        self.responses_api.scripts.append(script)

    def enqueue_chat(self, script: ChatScript) -> None:
        """The next ``POST /chat/completions`` follows ``script`` (FIFO)."""
        self.chat_api.scripts.append(script)

    def response(self, response_id: str) -> Json:
        """The Response's current server-side snapshot (no polling side effect; deleted or
        ``store: false`` responses included)."""
        return self.responses_api.engine.records[response_id].response

    def fault(self, fault: Fault) -> None:
        """Apply ``fault`` to the next response whose method/path match (FIFO, used once)."""
        self.faults.append(fault)

    def run(self, run_id: str) -> Json:
        """The run's current server-side snapshot (no polling side effect)."""
        return self.engine.runs[run_id].run

    def steps(self, run_id: str) -> list[Json]:
        return list(self.engine.runs[run_id].steps.values())

    # -- plumbing ------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        for p in ("/v1", "/openai"):
            t, run = p + "/threads/{thread_id}", p + "/threads/{thread_id}/runs/{run_id}"
            r.add_post(p + "/threads/runs", self._create_thread_and_run)
            r.add_post(p + "/threads", self._create_thread)
            r.add_get(t, self._get_thread)
            r.add_delete(t, self._delete_thread)
            r.add_post(t + "/messages", self._create_message)
            r.add_get(t + "/messages", self._list_messages)
            r.add_get(t + "/messages/{message_id}", self._get_message)
            r.add_post(t + "/runs", self._create_run)
            r.add_get(t + "/runs", self._list_runs)
            r.add_get(run, self._get_run)
            r.add_post(run, self._update_run)
            r.add_get(run + "/steps", self._list_steps)
            r.add_get(run + "/steps/{step_id}", self._get_step)
            r.add_post(run + "/submit_tool_outputs", self._submit_tool_outputs)
            r.add_post(run + "/cancel", self._cancel_run)
        self.responses_api.add_routes(r)
        self.chat_api.add_routes(r)
        r.add_route("*", "/{tail:.*}", self._not_found, name="not_found")
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[STARTED] = time.monotonic()
        request[BODY] = body = await request.read()
        if self.record:
            self.requests.append(SeenRequest(request.method, request.path, dict(request.query.items()),
                                             request.query_string, CIMultiDict(request.headers), body))
        fault = next((f for f in self.faults if f.matches(request.method, request.path)), None)
        if fault is not None:
            self.faults.remove(fault)
        request[FAULT] = fault
        if fault is not None:
            if fault.reset_before_headers:
                self._log(SentResponse(request.method, request.path, 0, aborted=True))
                await abort_transport(request, hard=fault.hard_reset)
                return web.Response()
            if fault.stall_before_s:
                await asyncio.sleep(fault.stall_before_s)
            if fault.status is not None:
                return await self._json(request, fault.status, fault.error_json(), fault.error_headers())
        try:
            self._check_access(request)
            return await handler(request)
        except ApiError as e:
            return await self._json(request, e.status, e.body)

    def _check_access(self, request: web.Request) -> None:
        """Auth and versioning as the two services do it: OpenAI wants a Bearer key and, for the
        Assistants routes only, ``OpenAI-Beta: assistants=v2``; Azure wants ``api-key`` (or an AAD
        Bearer) and ``api-version`` -- except on its v1 API (``/openai/v1/...``, protocol-responses.md
        §1), which has no ``api-version`` -- and does not require the beta header."""
        azure = request.path.startswith("/openai/")
        if azure and not request.path.startswith("/openai/v1/") and "api-version" not in request.query:
            raise ApiError(404, "Resource not found",
                           body={"error": {"code": "404", "message": "Resource not found"}})
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if azure and not key:
            key = request.headers.get("api-key", "")
        if not key:
            raise ApiError(401, _NO_KEY, code="invalid_api_key")
        if self.api_keys is not None and key not in self.api_keys:
            masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "***"
            raise ApiError(401, f"Incorrect API key provided: {masked}. You can find your API key at "
                                "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        beta = [v.strip() for v in request.headers.get("OpenAI-Beta", "").split(",")]
        assistants = "/threads" in request.match_info.route.resource.canonical  # type: ignore[union-attr]
        if not azure and "assistants=v2" not in beta and assistants:
            raise ApiError(400, _NO_BETA, code="invalid_beta")

    def _log(self, sent: SentResponse) -> None:
        if self.record:
            self.responses.append(sent)

    def _headers(self, request: web.Request, extra: dict[str, str] | None = None) -> dict[str, str]:
        elapsed_ms = int((time.monotonic() - request[STARTED]) * 1000)
        return {"x-request-id": self.ids.request_id(), "openai-version": "2020-10-01",
                "openai-organization": "org-runtapfake", "openai-processing-ms": str(elapsed_ms),
                **(extra or {})}

    def _gzip(self, request: web.Request) -> bool:
        fault: Fault | None = request[FAULT]
        return bool(fault and fault.gzip and "gzip" in request.headers.get("Accept-Encoding", ""))

    async def _open(self, request: web.Request, status: int, headers: dict[str, str],
                    content_length: int | None = None) -> Wire:
        gz = self._gzip(request)
        if gz:
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=status, headers=self._headers(request, headers))
        if content_length is not None:
            resp.content_length = content_length
        sent = SentResponse(request.method, request.path, status)
        self._log(sent)
        wire = Wire(request, resp, sent, request[FAULT], compress=gz and content_length is None,
                    chunk_size=self.chunk_size)
        try:
            await resp.prepare(request)
        except ConnectionResetError:
            wire.aborted = sent.aborted = True
        sent.headers = CIMultiDict(resp.headers)
        return wire

    async def _json(self, request: web.Request, status: int, body: Json,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
        """A JSON answer, pretty-printed like the real API's (a proxy must not re-serialise)."""
        fault: Fault | None = request[FAULT]
        if fault and fault.huge_event_bytes and body.get("object") == "thread.run":
            body = {**body, "instructions": "x" * fault.huge_event_bytes}
        raw = orjson.dumps(body, option=orjson.OPT_INDENT_2)
        if fault and fault.malformed == "invalid_json":
            raw += b"}"
        if self._gzip(request):
            raw = gzip.compress(raw)
        headers = {"Content-Type": "application/json", **(headers or {})}
        wire = await self._open(request, status, headers, len(raw))
        if await wire.write(raw):
            await wire.finish()
        return wire.resp

    async def _stream(self, request: web.Request, rec: RunRecord) -> web.StreamResponse:
        """Deliver the run's pending segment as SSE, one write per event; whatever is not
        delivered (fault, client gone) still happens server-side."""
        fault: Fault | None = request[FAULT]
        shaper = Shaper(fault)
        rec.streaming = True
        try:
            wire = await self._open(request, 200, {"Content-Type": "text/event-stream; charset=utf-8"})
            count, ended_early = 0, False
            while not wire.aborted and (item := self.engine.pop(rec)) is not None:
                ending = item.event in RUN_STATUS_EVENTS and item.data["status"] in PAUSE_OR_TERMINAL
                for frame in shaper.frames(item.event, item.data, ending=ending, last=not rec.pending):
                    if not await wire.write(frame):
                        return wire.resp
                wire.sent.events.append(item.event)
                count += 1
                if shaper.stop or (fault and fault.clean_eof_after_events is not None
                                   and count >= fault.clean_eof_after_events):
                    ended_early = True
                    break
            if not ended_early and await wire.write(shaper.done()):
                wire.sent.events.append("done")
            await wire.finish()
            return wire.resp
        finally:
            rec.streaming = False
            self.engine.drain(rec)

    @staticmethod
    def _body(request: web.Request, allowed: frozenset[str] | None = None) -> Json:
        raw: bytes = request[BODY]
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise ApiError(400, _BAD_JSON) from None
        if not isinstance(body, dict):
            raise ApiError(400, _BAD_JSON)
        if allowed is not None:  # additionalProperties: false -- catches a proxy injecting fields
            for key in body:
                if key not in allowed:
                    raise ApiError(400, f"Unrecognized request argument supplied: {key}")
        check_metadata(body.get("metadata"))
        return body

    def _next_script(self, body: Json) -> Script:
        return self.scripts.popleft() if self.scripts else self.default_script(body)

    def _run_reply(self, request: web.Request, rec: RunRecord, stream: bool) -> Awaitable[web.StreamResponse]:
        if stream:
            return self._stream(request, rec)
        self.engine.advance(rec, until="thread.run.queued")
        return self._json(request, 200, rec.run)

    # -- handlers ------------------------------------------------------------------------------
    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        raise ApiError(404, f"Invalid URL ({request.method} {request.path})")

    async def _create_thread_and_run(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request, CREATE_AND_RUN_KEYS)
        _require_assistant(body)
        thread_body = body.get("thread") or {}
        if not isinstance(thread_body, dict):
            raise ApiError(400, "Invalid type for 'thread': expected an object.", param="thread",
                           code="invalid_type")
        thread = self.engine.create_thread(thread_body)
        rec = self.engine.create_run(thread, body, self._next_script(body), thread_created=True)
        return await self._run_reply(request, rec, body.get("stream") is True)

    async def _create_run(self, request: web.Request) -> web.StreamResponse:
        thread = self.engine.thread(request.match_info["thread_id"])
        body = self._body(request, CREATE_RUN_KEYS)
        _require_assistant(body)
        include = tuple(request.query.getall("include[]", []))
        rec = self.engine.create_run(thread, body, self._next_script(body), thread_created=False,
                                     include=include)
        return await self._run_reply(request, rec, body.get("stream") is True)

    async def _submit_tool_outputs(self, request: web.Request) -> web.StreamResponse:
        rec = self._run_of(request)
        body = self._body(request, SUBMIT_KEYS)
        if rec.streaming:
            raise ApiError(400, f'Runs in status "{rec.status}" do not accept tool outputs.')
        self.engine.submit_tool_outputs(rec, body)
        return await self._run_reply(request, rec, body.get("stream") is True)

    async def _get_run(self, request: web.Request) -> web.StreamResponse:
        rec = self._run_of(request)
        self.engine.poll(rec)
        extra = {"openai-poll-after-ms": str(self.poll_after_ms)} if self.poll_after_ms is not None else {}
        return await self._json(request, 200, rec.run, extra)

    async def _update_run(self, request: web.Request) -> web.StreamResponse:
        rec = self._run_of(request)
        body = self._body(request, frozenset({"metadata"}))
        rec.run = {**rec.run, "metadata": body.get("metadata") or {}}
        return await self._json(request, 200, rec.run)

    async def _cancel_run(self, request: web.Request) -> web.StreamResponse:
        rec = self._run_of(request)
        self.engine.cancel(rec)
        return await self._json(request, 200, rec.run)

    async def _list_runs(self, request: web.Request) -> web.StreamResponse:
        thread = self.engine.thread(request.match_info["thread_id"])
        runs = [self.engine.runs[i].run for i in thread.run_ids if i in self.engine.runs]
        return await self._json(request, 200, page(runs, request))

    async def _list_steps(self, request: web.Request) -> web.StreamResponse:
        rec = self._run_of(request)
        return await self._json(request, 200, page(list(rec.steps.values()), request))

    async def _get_step(self, request: web.Request) -> web.StreamResponse:
        rec = self._run_of(request)
        step_id = request.match_info["step_id"]
        if step_id not in rec.steps:
            raise ApiError(404, f"No step found with id '{step_id}'.")
        return await self._json(request, 200, rec.steps[step_id])

    async def _create_thread(self, request: web.Request) -> web.StreamResponse:
        thread = self.engine.create_thread(self._body(request, THREAD_KEYS))
        return await self._json(request, 200, thread.thread)

    async def _get_thread(self, request: web.Request) -> web.StreamResponse:
        return await self._json(request, 200, self.engine.thread(request.match_info["thread_id"]).thread)

    async def _delete_thread(self, request: web.Request) -> web.StreamResponse:
        thread_id = request.match_info["thread_id"]
        self.engine.thread(thread_id)
        del self.engine.threads[thread_id]
        return await self._json(request, 200, {"id": thread_id, "object": "thread.deleted", "deleted": True})

    async def _create_message(self, request: web.Request) -> web.StreamResponse:
        thread = self.engine.thread(request.match_info["thread_id"])
        body = self._body(request, MESSAGE_KEYS)
        active = self.engine.active_run(thread)
        if active is not None:
            raise ApiError(400, f"Can't add messages to {thread.thread['id']} while a run {active.run['id']} "
                                "is active.")
        return await self._json(request, 200, self.engine.add_message(thread, body))

    async def _list_messages(self, request: web.Request) -> web.StreamResponse:
        thread = self.engine.thread(request.match_info["thread_id"])
        messages = list(thread.messages.values())
        if run_id := request.query.get("run_id"):
            messages = [m for m in messages if m["run_id"] == run_id]
        return await self._json(request, 200, page(messages, request))

    async def _get_message(self, request: web.Request) -> web.StreamResponse:
        thread = self.engine.thread(request.match_info["thread_id"])
        message_id = request.match_info["message_id"]
        if message_id not in thread.messages:
            raise ApiError(404, f"No message found with id '{message_id}'.")
        return await self._json(request, 200, thread.messages[message_id])

    def _run_of(self, request: web.Request) -> RunRecord:
        return self.engine.run_of(request.match_info["thread_id"], request.match_info["run_id"])


def _require_assistant(body: Json) -> None:
    if not isinstance(body.get("assistant_id"), str) or not body["assistant_id"]:
        raise ApiError(400, "Missing required parameter: 'assistant_id'.", param="assistant_id",
                       code="missing_required_parameter")


# -- serving -----------------------------------------------------------------------------------
def demo_upstream(seed: int | None = None) -> FakeUpstream:
    """The served flavour: realistic cycling scripts, no logs, bounded state (benchmarks run long)."""
    return FakeUpstream(default_script=DemoScripts(), seed=seed, record=False, max_threads=10_000,
                        default_response_script=DemoResponseScripts(), default_chat_script=DemoChatScripts())


async def serve(host: str, port: int, upstream: FakeUpstream | None = None) -> web.AppRunner:
    """Start serving in the running loop; call ``await runner.cleanup()`` to stop."""
    runner = web.AppRunner((upstream or demo_upstream()).app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def run_fake_upstream(host: str, port: int, upstream: FakeUpstream | None = None) -> None:
    """Blocking entry point for ``runtap fake-upstream --listen HOST:PORT``."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop  # the fake is the benchmark's "fast upstream": keep its own overhead low

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app((upstream or demo_upstream()).app, host=host, port=port, access_log=None, loop=loop,
                print=lambda _: print(f"runtap fake upstream on http://{host}:{port}/v1", flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtap fake-upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT (default %(default)s)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    run_fake_upstream(host or "127.0.0.1", int(port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
