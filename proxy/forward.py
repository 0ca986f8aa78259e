"""The byte-exact relay: the only hot path.

For each request: classify the route, read the body of recorded routes (bounded), open the
upstream request, copy status and headers, then relay every body chunk to the client *before*
the tap sees it (in batches, tap.DeferredTap). Nothing here touches DuckDB, OpenTelemetry or
Prometheus, and the only awaits are the two sockets; the one JSON parse is budget admission's, of a
run-creating request's body, because its check must come before the request is forwarded.

Failure policy (contract §4):
- no response from the upstream → runtap's own 502 (unreachable) or 504 (no headers in time);
- a failure after the response began cannot change the status any more: the client connection
  is aborted (never a clean end, which the SDK would take for a finished, truncated run,
  protocol.md §6.4);
- the client leaving does not stop the exchange: runtap keeps reading the upstream for up to
  `client_gone_drain_s`, so the run is recorded to its end (architecture.md §8.8, point 2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from . import errors
from .config import Settings
from .exchange import Exchange, Outcome
from .headers import client_headers, upstream_headers
from .keys import key_id_from_headers
from .observers import Observers
from .routes import Route, classify
from .runs import RunTracker
from .tap import DeferredTap, Tap, TapQueue

log = logging.getLogger("runtap.forward")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Budget admission (budgets/gate.py): None to forward, else runtap's refusal. Synchronous: no await
# between its check and its reservation.
Admit = Callable[[Exchange, Mapping[str, str]], web.Response | None]
# What a client going away looks like to aiohttp's writer.
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError, BrokenPipeError)
TAP_DELAY_S = 0.05
"""Longest a relayed chunk waits before the tap parses it (observers see a live stream this late)."""


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or None when it is over `limit` (checked before reading it all)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def make_forward_handler(
    session: aiohttp.ClientSession,
    settings: Settings,
    observers: Observers,
    tracker: RunTracker,
    inflight: set[asyncio.Task[web.StreamResponse]],
    admit: Admit | None = None,
) -> Handler:
    upstream = settings.server.upstream.rstrip("/")
    max_body = settings.server.max_recorded_body_bytes
    drain_s = settings.timeouts.client_gone_drain_s
    read_s = settings.timeouts.read_s
    pending_taps = TapQueue()
    connect_s = settings.timeouts.connect_s

    def answer(ex: Exchange, response: web.Response, outcome: Outcome, error: str) -> web.Response:
        """runtap answers itself (413, 502, 504): no tap, the exchange ends here."""
        ex.status = response.status
        if ex.finish(outcome, error):
            observers.exchange_finished(ex)
        return response

    def refuse(request: web.Request, route: Route, response: web.Response, error: str) -> web.Response:
        """runtap refuses a request before reading it whole (400, 413): recorded, never forwarded."""
        ex = Exchange(route, request.method, request.path, request.query_string,
                      key_id_from_headers(request.headers), None)
        observers.exchange_started(ex)
        return answer(ex, response, Outcome.REJECTED, error)

    async def forward(request: web.Request) -> web.StreamResponse:
        # The exchange runs in its own task, shielded: a server that cancels handlers when the
        # client disconnects (aiohttp's handler_cancellation) must not stop the recording. The
        # owner of `inflight` cancels what is left at shutdown, after the grace period.
        task = asyncio.get_running_loop().create_task(exchange(request))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        return await asyncio.shield(task)

    async def exchange(request: web.Request) -> web.StreamResponse:
        # What other exchanges relayed before this request arrived is seen before it (tap.TapQueue).
        pending_taps.drain()
        route: Route = classify(request.method, request.path)
        if not request.raw_path.startswith("/"):
            # An absolute-form target (`GET http://host/path`) appended to the upstream URL names
            # another host, or no valid URL at all (an unhandled 500). No OpenAI client sends one.
            return refuse(request, route, errors.invalid_request_target(), "request target not origin-form")
        body: bytes | None = None
        if route.recorded:
            body = await _read_body(request, max_body)
            if body is None:
                return refuse(request, route, errors.request_too_large(max_body), "request too large")
        ex = Exchange(route, request.method, request.path, request.query_string,
                      key_id_from_headers(request.headers), body)
        ex.traceparent = request.headers.get("traceparent")
        if admit is not None and route.creates_run:
            refusal = admit(ex, request.headers)
            if refusal is not None:
                observers.exchange_started(ex)
                return answer(ex, refusal, Outcome.REJECTED, "budget exceeded")
            body = ex.request_body  # clamp may have lowered max_completion_tokens
        observers.exchange_started(ex)
        try:
            ex.t_sent = time.perf_counter()
            upstream_response = await session.request(
                request.method,
                URL(upstream + request.raw_path, encoded=True),
                headers=upstream_headers(request.headers, keep_length=body is None),
                data=body if body is not None else (request.content if request.body_exists else None),
                allow_redirects=False,
            )
        except aiohttp.ConnectionTimeoutError:  # a TimeoutError too: name the timeout that fired
            return answer(ex, errors.upstream_timeout(connect_s), Outcome.UPSTREAM_ERROR, "upstream connect timeout")
        except TimeoutError:
            return answer(ex, errors.upstream_timeout(read_s), Outcome.UPSTREAM_ERROR, "upstream timeout")
        except (aiohttp.ClientError, OSError) as e:
            return answer(ex, errors.upstream_unreachable(type(e).__name__), Outcome.UPSTREAM_ERROR,
                          f"{type(e).__name__}: {e}")
        except BaseException as e:  # cancelled at shutdown, or a bug: the exchange is still recorded
            if ex.finish(Outcome.TRUNCATED, _cut_reason(e, "before the upstream answered")):
                observers.exchange_finished(ex)
            raise
        try:
            return await _relay(request, upstream_response, ex)
        finally:
            upstream_response.release()

    async def _relay(
        request: web.Request, upstream_response: aiohttp.ClientResponse, ex: Exchange
    ) -> web.StreamResponse:
        ex.t_upstream_headers = time.perf_counter()
        headers = upstream_response.headers
        ex.status = upstream_response.status
        ex.content_type = headers.get("Content-Type")
        ex.upstream_request_id = headers.get("x-request-id")
        response = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason,
                                      headers=client_headers(headers))
        # The tap works in loop callbacks behind the relay, in batches (tap.DeferredTap): never
        # between a chunk's arrival and its write, and for a fast stream only once it is over.
        tap = DeferredTap(Tap(ex, tracker, observers, max_body), asyncio.get_running_loop(), TAP_DELAY_S,
                          pending_taps)
        outcome, error = Outcome.COMPLETED, None
        client_open = True
        broke = False
        try:
            try:
                await response.prepare(request)
            except _CLIENT_GONE:
                client_open = _client_left(ex, upstream_response, drain_s)
            ex.t_headers = time.perf_counter()
            tap.response_started(ex.content_type, headers.get("Content-Encoding"))
            async for chunk in upstream_response.content.iter_any():
                if client_open:
                    try:
                        await response.write(chunk)
                    except _CLIENT_GONE:
                        # Keep reading: the run goes on upstream, and it must still be recorded.
                        client_open = _client_left(ex, upstream_response, drain_s)
                ex.response_bytes += len(chunk)
                tap.feed(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            broke = True
            outcome, error = Outcome.TRUNCATED, f"{type(e).__name__}: {e}"
        except BaseException as e:  # cancelled at shutdown, or a bug: record what was relayed
            tap.end(Outcome.TRUNCATED, _cut_reason(e, "mid-response"))
            if not isinstance(e, asyncio.CancelledError):
                _abort(request)
            raise
        if ex.client_gone:
            outcome = Outcome.CLIENT_GONE
        elif broke:
            _abort(request)
        elif client_open:
            try:
                await response.write_eof()
            except _CLIENT_GONE:
                ex.client_gone = True
                outcome = Outcome.CLIENT_GONE
            except BaseException:  # cancelled at shutdown: the whole body went out, only its end was cut
                tap.end(outcome, error)
                raise
        tap.end(outcome, error)
        return response

    return forward


def _cut_reason(e: BaseException, when: str) -> str:
    if isinstance(e, asyncio.CancelledError):
        return f"cancelled (shutdown) {when}"
    return f"{type(e).__name__} {when}: {e}"


def _client_left(ex: Exchange, upstream_response: aiohttp.ClientResponse, drain_s: float) -> bool:
    """Note the client's departure and bound how long the upstream is still read."""
    ex.client_gone = True
    asyncio.get_running_loop().call_later(drain_s, upstream_response.close)
    return False


def _abort(request: web.Request) -> None:
    # An abrupt end (no final chunk): the client's HTTP library raises instead of returning a
    # truncated body as if it were complete (contract §4).
    transport = request.transport
    if transport is not None:
        transport.abort()
