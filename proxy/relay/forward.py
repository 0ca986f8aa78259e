"""One exchange, start to end: the only coroutine per request on the relay core.

For each request: classify the route, read the body of recorded routes (bounded), admit it against
the budgets, send it upstream on a pooled connection, then let the response relay in the upstream's
read callbacks (relay/response.py) until it ends. Nothing here touches DuckDB, OpenTelemetry or
Prometheus; the one JSON parse is budget admission's, of a run-creating request's body, because its
check must come before the request is forwarded.

A request goes upstream a second time only when it cannot have been seen there: the pooled
connection was found closed before anything was written, or it was a body-less GET/HEAD/OPTIONS on
a reused connection that closed without a byte of response. A POST is never sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .. import errors
from ..apis import classify
from ..config import Settings
from ..deferred_tap import DeferredTap, TapQueue
from ..exchange import Exchange, Outcome
from ..keys import key_id_from_headers
from ..observers import Observers
from ..runs import RunStore
from ..tap import Tap
from .client import ClientConnection, ParsedRequest
from .heads import answer_bytes, request_head
from .response import ResponseRelay, UpstreamGone
from .upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("runtap.forward")

# Budget admission (budgets/gate.py): None to forward, else runtap's refusal. Synchronous: no await
# between its check and its reservation.
Admit = Callable[[Exchange, Mapping[str, str]], web.Response | None]
TAP_DELAY_S = 0.05
"""Longest a relayed chunk waits before the tap parses it (observers see a live stream this late)."""
_RETRYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS"})


class ConnectTimeout(Exception):
    """No connection to the upstream within `connect_s`."""


class Forwarder:
    """Everything an exchange needs, built once per proxy (app.py)."""

    def __init__(self, pool: UpstreamPool, settings: Settings, observers: Observers, tracker: RunStore,
                 inflight: set[asyncio.Task[None]], admit: Admit | None = None) -> None:
        self.pool = pool
        self._observers = observers
        self._tracker = tracker
        self._inflight = inflight
        self._admit = admit
        self._max_body = settings.server.max_recorded_body_bytes
        self._segment_s = settings.recorder.batch_interval_ms / 1000  # tap.SEGMENT_S says why
        self._read_s = settings.timeouts.read_s
        self._connect_s = settings.timeouts.connect_s
        self._drain_s = settings.timeouts.client_gone_drain_s
        self.pending_taps = TapQueue()

    def start(self, client: ClientConnection, request: ParsedRequest) -> asyncio.Task[None]:
        return self.track(asyncio.get_running_loop().create_task(self._exchange(client, request)))

    def track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        # The owner of `inflight` (app.py) waits for these at shutdown, then cancels what is left.
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    # -- pieces the tunnel shares ----------------------------------------------------------------------
    def begin(self, request: ParsedRequest) -> tuple[Exchange, CIMultiDict[str]]:
        """The exchange of `request`, and its headers as text (for keys, budgets and tracing)."""
        url = URL.build(path=request.target.partition(b"?")[0].decode("latin-1"),
                        query_string=request.target.partition(b"?")[2].decode("latin-1"), encoded=True)
        headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers)
        route = classify(request.method.decode("ascii"), url.path)
        ex = Exchange(route, request.method.decode("ascii"), url.path, url.query_string,
                      key_id_from_headers(headers), None)
        ex.traceparent = headers.get("traceparent")
        return ex, headers

    @property
    def tracker(self) -> RunStore:
        return self._tracker

    def admit(self, ex: Exchange, headers: Mapping[str, str]) -> web.Response | None:
        """Budget admission of a budgeted request (a socket's create): None to relay it, else the refusal."""
        return None if self._admit is None else self._admit(ex, headers)

    def make_tap(self, ex: Exchange) -> DeferredTap:
        """The tap of an exchange that is no HTTP response (a socket's create), behind the relay as theirs."""
        return self._make_tap(ex)

    @property
    def max_message(self) -> int:
        return self._max_body

    def started(self, ex: Exchange) -> None:
        self._observers.exchange_started(ex)

    def end(self, ex: Exchange, outcome: Outcome, error: str | None) -> None:
        if ex.finish(outcome, error):
            self._observers.exchange_finished(ex)

    def answer(self, client: ClientConnection, ex: Exchange | None, response: web.Response, outcome: Outcome,
               error: str, *, close: bool = False) -> None:
        """runtap answers itself (400, 413, 429, 502, 504): no tap, the exchange ends here."""
        head_only = client.current is not None and client.current.method == b"HEAD"
        client.write(answer_bytes(response, close=close or not client.keep_alive_after, head_only=head_only))
        if ex is not None:
            ex.status = response.status
            self.end(ex, outcome, error)

    def answer_error(self, client: ClientConnection, ex: Exchange, e: BaseException, *, connect: bool) -> None:
        if isinstance(e, ConnectTimeout) or (connect and isinstance(e, TimeoutError)):
            self.answer(client, ex, errors.upstream_timeout(self._connect_s), Outcome.UPSTREAM_ERROR,
                        "upstream connect timeout")
        elif isinstance(e, TimeoutError):
            self.answer(client, ex, errors.upstream_timeout(self._read_s), Outcome.UPSTREAM_ERROR,
                        "upstream timeout")
        else:
            name = str(e) if isinstance(e, UpstreamGone) else f"ClientConnectorError: {e}"
            self.answer(client, ex, errors.upstream_unreachable(name.split(":", 1)[0]), Outcome.UPSTREAM_ERROR,
                        name)

    # -- the exchange ----------------------------------------------------------------------------------
    async def _exchange(self, client: ClientConnection, request: ParsedRequest) -> None:
        # What other exchanges relayed before this request arrived is seen before it (deferred_tap.TapQueue).
        self.pending_taps.drain()
        body: bytes | None = None
        ex, headers = self.begin(request)
        route = ex.route
        if not request.target.startswith(b"/"):
            # An absolute-form target (`GET http://host/path`) appended to the upstream URL names
            # another host, or no valid URL at all. No OpenAI client sends one.
            self._observers.exchange_started(ex)
            self.answer(client, ex, errors.invalid_request_target(), Outcome.REJECTED,
                        "request target not origin-form", close=True)
            return
        if route.recorded:
            body = await request.read(self._max_body)
            if body is None:
                self._observers.exchange_started(ex)
                self.answer(client, ex, errors.request_too_large(self._max_body), Outcome.REJECTED,
                            "request too large", close=True)
                return
            ex.request_body = body
        if self._admit is not None and route.budgeted:
            refusal = self._admit(ex, headers)
            if refusal is not None:
                self._observers.exchange_started(ex)
                self.answer(client, ex, refusal, Outcome.REJECTED, "budget exceeded")
                return
            body = ex.request_body  # clamp may have lowered max_completion_tokens / max_output_tokens
        self._observers.exchange_started(ex)
        relay: ResponseRelay | None = None
        try:
            ex.t_sent = time.perf_counter()
            relay = await self._send(client, request, ex, body)
            await relay.head
        except (OSError, TimeoutError, ConnectTimeout, UpstreamGone) as e:
            if relay is not None:
                relay.cut("")
                client.relay = None
            request.detach()
            self.answer_error(client, ex, e, connect=relay is None)
            return
        except BaseException as e:  # cancelled at shutdown, or a bug: the exchange is still recorded
            if relay is not None:
                relay.cut("")
            request.detach()
            self.end(ex, Outcome.TRUNCATED, _cut_reason(e, "before the upstream answered"))
            raise
        try:
            await relay.done
        except BaseException as e:
            relay.cut(_cut_reason(e, "mid-response"))
            if not isinstance(e, asyncio.CancelledError):
                client.abort()
            raise
        finally:
            request.detach()

    async def _send(self, client: ClientConnection, request: ParsedRequest, ex: Exchange,
                    body: bytes | None) -> ResponseRelay:
        """Take a connection, write the head (and a recorded body), start streaming the rest."""
        if body is not None:
            framing: bytes | None = b"Content-Length: %d" % len(body)
        elif request.chunked:
            framing = b"Transfer-Encoding: chunked"
        elif request.length is not None:
            framing = b"Content-Length: %d" % request.length
        elif request.method in (b"POST", b"PUT", b"PATCH"):
            framing, body = b"Content-Length: 0", b""
        else:
            framing = None
        head = request_head(request.method, request.target, request.headers, self.pool.upstream, framing)
        retried = False
        while True:
            conn = self.pool.take_idle()
            if conn is None:
                conn = await self._connect()
            relay = ResponseRelay(client, ex, self.pool, lambda: self._make_tap(ex),
                                  head_only=request.method == b"HEAD", read_s=self._read_s, drain_s=self._drain_s)
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue  # closed before anything was written: a fresh one
            relay.conn = conn
            conn.sink = relay
            client.relay = relay
            if client.writing_paused:
                relay.client_paused()
            transport = conn.transport
            transport.write(head if not body else head + body)
            if body is None and request.has_body:
                request.stream_to(transport.write)
            if conn.reused and not retried and request.method in _RETRYABLE and not request.has_body:
                retried = True
                try:
                    await asyncio.shield(relay.head)
                except UpstreamGone:
                    if relay.bytes_in == 0:
                        relay.cut("")
                        continue  # the upstream had closed the idle connection as we wrote
                    raise
            return relay

    async def _connect(self) -> UpstreamConnection:
        try:
            return await self.pool.connect()
        except TimeoutError as e:
            raise ConnectTimeout() from e

    def _make_tap(self, ex: Exchange) -> DeferredTap:
        # The tap works in loop callbacks behind the relay, in batches (deferred_tap.DeferredTap): never
        # between a chunk's arrival and its write, and for a fast stream only once it is over.
        tap = Tap(ex, self._tracker, self._observers, self._max_body, self._segment_s)
        return DeferredTap(tap, asyncio.get_running_loop(),
                           TAP_DELAY_S, self.pending_taps)


def _cut_reason(e: BaseException, when: str) -> str:
    if isinstance(e, asyncio.CancelledError):
        return f"cancelled (shutdown) {when}"
    return f"{type(e).__name__} {when}: {e}"
