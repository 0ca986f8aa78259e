"""A fast, stateless Assistants upstream for ``scripts/bench.py``.

The bundled fake (``proxy/testing/fake_upstream.py``) is faithful: it keeps run state and validates
every body, which costs more CPU per request than the proxy under test. This server answers from
precomputed bytes instead. At startup it asks the fake once for a realistic streamed run (60 SSE
events, ~15 KB: thread, run, step and message lifecycle, 48 message deltas, ``done``), for the
JSON of that run once completed, for a streamed Response (60 events, ~19 KB) and for a Chat
Completions stream (60 frames, ~20 KB), and keeps them as templates. Per request it only
substitutes the ids, so every response carries distinct ids (the recorder then stores distinct
runs, responses and turns):

- ``POST /v1/threads/runs``: the stream, each event its own write, ``text/event-stream;
  charset=utf-8`` and an ``x-request-id``. The request body is read and ignored.
- ``GET /v1/threads/{thread_id}/runs/{run_id}``: the completed run as pretty-printed JSON.
- ``POST /v1/responses``: a streamed Response of 60 events as the fake frames it
  (protocol-responses.md §2: ``event: <type>`` + ``data: <json>`` per frame, ``sequence_number``
  from 0, no ``[DONE]``): created, in_progress, a message item and its text part added, 52
  ``response.output_text.delta``, the text, part and item done, ``response.completed`` with usage.
  The request body is read and ignored (it is always answered with the stream).
- ``POST /v1/chat/completions``: a Chat Completions stream (§9: data-only frames, then
  ``data: [DONE]``): a role chunk, 56 content chunks, the ``finish_reason`` chunk and, when the
  request asks for ``stream_options.include_usage``, the usage chunk (``choices: []``): 60 frames
  with ``[DONE]``.

The ids are ``<prefix>_<token><4 chars>`` (Assistants), ``chatcmpl-<token><9 chars>`` (Chat) and,
for Responses, ``resp_`` / ``msg_`` + the token in hex + 10 hex digits (50 hex digits, as the service's);
the 20-character token comes from the ``x-bench-token`` request header (the benchmark tags each
request with it and finds its rows in the recording by it), else from a counter. ``x-bench-hold: 1``
holds a stream after its first ``HOLD_AFTER`` events until ``POST /bench/release`` (or
``--hold-timeout`` seconds). Control endpoints: ``GET /bench/info`` (template sizes, the path
template, the requests to send), ``GET /bench/held``.

With ``--relay-to URL`` it is instead a bare aiohttp + uvloop passthrough that records nothing (the
same relay loop as runtap's forward.py, minus the tap): the floor that any aiohttp proxy pays,
which ``bench.py --floor`` measures beside runtap.

    python scripts/bench_upstream.py [--listen 127.0.0.1:0] [--port-file FILE] [--relay-to URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.testing.fake_upstream import FakeUpstream  # after the path tweak, to run from a checkout
from proxy.testing.responses_scripts import ChatScript, ResponseScript
from proxy.testing.scripts import Script

PLACEHOLDER = b"@" * 20
TOKEN_LEN = len(PLACEHOLDER)
HEX_PLACEHOLDER = b"#" * (2 * TOKEN_LEN)
"""Where a Responses id holds the token, in hex: the service's ids are hex digits after the prefix."""
HOLD_AFTER = 5
_ID = re.compile(rb"\b(thread|run|step|msg)_([A-Za-z0-9]{24})\b")
_RESPONSES_ID = re.compile(rb"\b(resp|msg)_([0-9a-f]{50})\b")
_CHAT_ID = re.compile(rb"\bchatcmpl-([A-Za-z0-9]{29})\b")
_TOKEN = re.compile(r"[A-Za-z0-9]{20}")
ASSISTANT_ID = "asst_BenchAssistant000000000"
ANSWER = (
    "Deep learning is a way for computers to learn patterns from lots of examples, a bit like how you learn to "
    "recognise cats after seeing many cats. Each layer of a network transforms its input a little, and training "
    "nudges millions of weights until the output matches the examples well enough to generalise."
)
QUESTION = "What is deep learning? Explain it to a ten year old."
STREAM_REQUEST = {
    "assistant_id": ASSISTANT_ID,
    "stream": True,
    "thread": {"messages": [{"role": "user", "content": QUESTION}]},
}
MODEL = "gpt-4.1-mini"
RESPONSES_REQUEST = {"model": MODEL, "input": QUESTION, "stream": True}
CHAT_REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True,
                "stream_options": {"include_usage": True}}
RESPONSES_DELTAS = 52
"""Text deltas of the streamed Response: with its 8 lifecycle, item and part events, 60 events."""
CHAT_DELTAS = 56
"""Content chunks of the Chat stream: with the role, finish and usage chunks and [DONE], 60 frames."""


def _template(data: bytes) -> bytes:
    """Replace the first 20 characters of every thread/run/step/msg id by the placeholder."""
    if PLACEHOLDER in data:
        raise ValueError("the placeholder occurs in the captured bytes")
    return _ID.sub(lambda m: m.group(1) + b"_" + PLACEHOLDER + m.group(2)[TOKEN_LEN:], data)


def _template_responses(data: bytes) -> bytes:
    """Replace the first 40 hex digits of every resp_/msg_ id by the hex placeholder."""
    if HEX_PLACEHOLDER in data or PLACEHOLDER in data:
        raise ValueError("a placeholder occurs in the captured bytes")
    return _RESPONSES_ID.sub(lambda m: m.group(1) + b"_" + HEX_PLACEHOLDER + m.group(2)[2 * TOKEN_LEN:], data)


def _template_chat(data: bytes) -> bytes:
    """Replace the first 20 characters of every chatcmpl- id by the placeholder."""
    if PLACEHOLDER in data:
        raise ValueError("the placeholder occurs in the captured bytes")
    return _CHAT_ID.sub(lambda m: b"chatcmpl-" + PLACEHOLDER + m.group(1)[TOKEN_LEN:], data)


@dataclass
class Captured:
    """The templates, captured once from the fake at startup."""

    frames: list[bytes]
    run_json: bytes
    path: str
    responses: list[bytes]
    chat: list[bytes]
    """With stream_options.include_usage: the usage chunk before [DONE], ``usage: null`` on the others."""
    chat_no_usage: list[bytes]


async def capture() -> Captured:
    """One streamed run and one poll of it, one streamed Response and two Chat streams (with and
    without include_usage) from the faithful fake, as templates."""
    fake = FakeUpstream(seed=7)
    fake.enqueue(Script.text(ANSWER, prompt_tokens=73, chunks=48))
    fake.enqueue_response(ResponseScript.text(ANSWER, chunks=RESPONSES_DELTAS, input_tokens=73))
    for _ in range(2):
        fake.enqueue_chat(ChatScript(ANSWER, chunks=CHAT_DELTAS, prompt_tokens=73))
    headers = {"Authorization": "Bearer sk-bench", "OpenAI-Beta": "assistants=v2"}
    async with TestClient(TestServer(fake.app)) as client:
        resp = await client.post("/v1/threads/runs", json=STREAM_REQUEST, headers=headers)
        await resp.read()
        run_id = next(iter(fake.engine.runs))
        thread_id = fake.run(run_id)["thread_id"]
        path = f"/v1/threads/{thread_id}/runs/{run_id}"
        poll = await client.get(path, headers=headers)
        await poll.read()
        for body in (RESPONSES_REQUEST, CHAT_REQUEST, {**CHAT_REQUEST, "stream_options": None}):
            resp = await client.post("/v1/responses" if "input" in body else "/v1/chat/completions",
                                     json={k: v for k, v in body.items() if v is not None}, headers=headers)
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"the fake answered {resp.status}: {fake.responses[-1].body[:300]!r}")
    sent = fake.responses
    captured = Captured(frames=[_template(w) for w in sent[0].writes], run_json=_template(sent[1].body),
                        path=_template(path.encode()).decode(),
                        responses=[_template_responses(w) for w in sent[2].writes],
                        chat=[_template_chat(w) for w in sent[3].writes],
                        chat_no_usage=[_template_chat(w) for w in sent[4].writes])
    # Ids of another shape would not be substituted: every request would repeat the same response id.
    if HEX_PLACEHOLDER not in captured.responses[0] or PLACEHOLDER not in captured.chat[0]:
        raise RuntimeError("the fake's resp_/chatcmpl- ids no longer have the shape the templates expect")
    return captured


class Upstream:
    def __init__(self, captured: Captured, hold_timeout: float) -> None:
        self.frames = captured.frames
        self.run_json = captured.run_json
        self.path = captured.path
        self.responses = captured.responses
        self.chat = captured.chat
        self.chat_no_usage = captured.chat_no_usage
        self.hold_timeout = hold_timeout
        self.release = asyncio.Event()
        self.held = 0
        self.counter = itertools.count()
        self.total_tokens = json.loads(self.run_json)["usage"]["total_tokens"]
        # The last frames carry the final usage: response.completed, and the chunk before [DONE].
        completed = json.loads(self.responses[-1].split(b"data: ", 1)[1])
        self.responses_total_tokens = completed["response"]["usage"]["total_tokens"]
        self.chat_total_tokens = json.loads(self.chat[-2].split(b"data: ", 1)[1])["usage"]["total_tokens"]
        self.common = {"openai-version": "2020-10-01", "openai-organization": "org-runtapbench",
                       "openai-processing-ms": "1"}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/threads/runs", self.stream)
        app.router.add_get("/v1/threads/{thread_id}/runs/{run_id}", self.run)
        app.router.add_post("/v1/responses", self.responses_stream)
        app.router.add_post("/v1/chat/completions", self.chat_stream)
        app.router.add_get("/bench/info", self.info)
        # An OTLP/HTTP traces sink for bench.py's traced proxy: an empty ExportTraceServiceResponse.
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_get("/bench/held", self.held_count)
        app.router.add_post("/bench/release", self.release_held)
        return app

    def _token(self, request: web.Request) -> tuple[bytes, str]:
        n = next(self.counter)
        token = request.headers.get("x-bench-token", "")
        if not _TOKEN.fullmatch(token):
            token = f"UPST{n:016d}"
        return token.encode(), f"req_{os.getpid():08x}{n:024x}"

    async def stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        token, request_id = self._token(request)
        return await self._write_frames(request, request_id, self.frames, PLACEHOLDER, token)

    async def responses_stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        token, request_id = self._token(request)
        # One hex() per request; the frames themselves stay precomputed bytes, as for Assistants.
        return await self._write_frames(request, request_id, self.responses, HEX_PLACEHOLDER,
                                        token.hex().encode())

    async def chat_stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        token, request_id = self._token(request)
        # The request is small: parsing it to honour include_usage is not per-event work.
        try:
            options = json.loads(body).get("stream_options") or {}
        except (ValueError, AttributeError):
            options = {}
        frames = self.chat if isinstance(options, dict) and options.get("include_usage") else self.chat_no_usage
        return await self._write_frames(request, request_id, frames, PLACEHOLDER, token)

    async def _write_frames(self, request: web.Request, request_id: str, frames: list[bytes], placeholder: bytes,
                            token: bytes) -> web.StreamResponse:
        """Each frame its own write, its placeholder replaced by the request's token."""
        hold = request.headers.get("x-bench-hold") == "1"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "x-request-id": request_id, **self.common})
        await resp.prepare(request)
        release = self.release
        for i, frame in enumerate(frames):
            if hold and i == HOLD_AFTER:
                self.held += 1
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(release.wait(), self.hold_timeout)
                finally:
                    self.held -= 1
            try:
                await resp.write(frame.replace(placeholder, token))
            except ConnectionResetError:  # the client (or proxy) went away: nothing to report
                return resp
        await resp.write_eof()
        return resp

    async def run(self, request: web.Request) -> web.Response:
        token, request_id = self._token(request)
        return web.Response(body=self.run_json.replace(PLACEHOLDER, token),
                            headers={"Content-Type": "application/json", "x-request-id": request_id,
                                     **self.common})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "events": len(self.frames),
            "stream_bytes": sum(len(f) for f in self.frames),
            "json_bytes": len(self.run_json),
            "run_path": self.path,
            "placeholder": PLACEHOLDER.decode(),
            "hold_after": HOLD_AFTER,
            "stream_request": STREAM_REQUEST,
            "answer": ANSWER,
            "total_tokens": self.total_tokens,
            "hex_placeholder": HEX_PLACEHOLDER.decode(),
            "responses": _stream_info("/v1/responses", RESPONSES_REQUEST, self.responses, self.responses_total_tokens),
            "chat": _stream_info("/v1/chat/completions", CHAT_REQUEST, self.chat, self.chat_total_tokens),
        })

    async def traces(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def held_count(self, request: web.Request) -> web.Response:
        return web.json_response({"held": self.held})

    async def release_held(self, request: web.Request) -> web.Response:
        released, self.release = self.release, asyncio.Event()
        released.set()
        return web.json_response({"released": self.held})


def _stream_info(path: str, request: dict[str, object], frames: list[bytes], total_tokens: int) -> dict[str, object]:
    """What the benchmark sends for a Responses or Chat stream, and what it must get back."""
    tail = frames[-1][-16:]
    if PLACEHOLDER in tail or HEX_PLACEHOLDER[:1] in tail:
        raise ValueError("the stream's last bytes hold an id: they differ per request")
    return {"path": path, "request": request, "events": len(frames), "stream_bytes": sum(map(len, frames)),
            "tail": tail.decode(), "total_tokens": total_tokens}


_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                  "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})


def relay_app(target: str) -> web.Application:
    """A passthrough with no recording: read the request body, relay status, headers and chunks."""
    target = target.rstrip("/")
    sessions: list[aiohttp.ClientSession] = []

    async def session(app: web.Application) -> AsyncIterator[None]:
        sessions.append(aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept"), cookie_jar=aiohttp.DummyCookieJar()))
        yield
        await sessions[0].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        async with sessions[0].request(request.method, target + request.raw_path, headers=headers,
                                       data=body if request.body_exists else None, allow_redirects=False) as up:
            response = web.StreamResponse(status=up.status, reason=up.reason, headers=[
                (k, v) for k, v in up.headers.items() if k.lower() not in _HOP or k.lower() == "content-length"])
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=2**63 - 1)
    app.router.add_route("*", "/{tail:.*}", relay)
    app.cleanup_ctx.append(session)
    return app


async def serve(host: str, port: int, port_file: str | None, hold_timeout: float, relay_to: str | None) -> None:
    if relay_to:
        app, what = relay_app(relay_to), f"bare relay to {relay_to}"
    else:
        captured = await capture()
        app = Upstream(captured, hold_timeout).app()
        what = ", ".join(f"{name} {len(frames)} events, {sum(map(len, frames))} bytes per stream" for name, frames in (
            ("assistants", captured.frames), ("responses", captured.responses), ("chat", captured.chat)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound = runner.addresses[0][1]
    if port_file:
        _write_port(port_file, bound)
    print(f"bench upstream on http://{host}:{bound} ({what})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _write_port(port_file: str, port: int) -> None:
    tmp = Path(port_file + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(port_file)  # atomic: the reader never sees a half-written file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 picks a free one")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--hold-timeout", type=float, default=60.0, help="longest a held stream waits (s)")
    parser.add_argument("--relay-to", help="be a bare passthrough to this base URL instead of an upstream")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    coro = serve(host or "127.0.0.1", int(port), args.port_file, args.hold_timeout, args.relay_to)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
