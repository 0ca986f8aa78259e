"""One exchange's response, relayed from the upstream connection to the client in the read callback.

Each upstream read is written to the client *first*, as the bytes it came as (the upstream's own
chunk framing and trailers included), and only then parsed (llhttp, through `httptools`) for the
decoded body the tap and the recording need. Only the head is rewritten: hop-by-hop headers stay
on their connection (relay/heads.py). An HTTP/1.0 client gets the body decoded and the connection
closed, because it cannot read chunked framing.

Failure policy (contract §4), the same as the aiohttp relay it replaced:
- no head from the upstream → the exchange coroutine answers 502 (lost) or 504 (`read_s` silent);
- a failure after the head went out cannot change the status: the client connection is aborted,
  never ended cleanly (the SDK would take a clean end for a finished run, protocol.md §6.4);
- the client leaving does not stop the exchange: reading goes on for `client_gone_drain_s` so the
  run is recorded to its end (architecture.md §8.8, point 2).
Flow control: a client that reads slowly pauses reading the upstream, so runtap never buffers an
unbounded stream; `read_s` does not run while paused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from ..deferred_tap import DeferredTap
from ..exchange import Exchange, Outcome
from .heads import RawHeaders, header, response_head
from .upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from .client import ClientConnection

_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamGone(Exception):
    """The upstream closed or reset the connection before its response head was whole."""


class ResponseRelay:
    """The `UpstreamSink` of one exchange: head, body bytes, end, in the upstream's read callbacks."""

    def __init__(self, client: ClientConnection, ex: Exchange, pool: UpstreamPool, make_tap: Callable[[], DeferredTap],
                 *, head_only: bool, read_s: float, drain_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.client = client
        self.ex = ex
        self.pool = pool
        self._make_tap = make_tap
        self.tap: DeferredTap | None = None
        self.head_only = head_only
        self._read_s = read_s
        self._drain_s = drain_s
        self.conn: UpstreamConnection | None = None
        self.head: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._head_buf = bytearray()
        self._headers: RawHeaders = []
        self._reason = b""
        self._heads_complete = 0
        self._interim = 0
        self._head_written = False
        self._bodies: list[bytes] = []
        self._complete = False
        self._spoilt = False
        self._raw = True
        self._close_delimited = False
        self.keep_client = True
        self.bytes_in = 0
        self._last_read = loop.time()
        self._paused = False
        self._timer: asyncio.TimerHandle | None = loop.call_at(self._last_read + read_s, self._check_timeout)
        self._drain_timer: asyncio.TimerHandle | None = None
        self._ended = False
        """Not `done.done()`: cancelling the task that awaits `done` cancels the future too."""
        self._upstream_keep_alive = False
        self._chunked = False
        self._body_in_read = 0

    # -- the upstream connection's callbacks (UpstreamSink) -------------------------------------
    def upstream_data(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        self.bytes_in += len(data)
        if not self._head_written:
            self._head_data(data)
        elif self._feed(data):
            if self._raw:
                self.client.write(data if not self._spoilt else data[:self._message_end(data)])
            self._after_feed()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.conn = None
        if self._ended:
            return
        if not self._head_written:
            if not self.head.done():
                self.head.set_exception(UpstreamGone(f"ServerDisconnectedError: {exc or 'Server disconnected'}"))
            return
        if self._close_delimited and exc is None:
            self._complete = True
            self._finish()
            return
        self._fail(Outcome.TRUNCATED, f"ClientPayloadError: Response payload is not completed: {exc!r}")

    def upstream_pause_writing(self) -> None:
        self.client.pause_reading("upstream")

    def upstream_resume_writing(self) -> None:
        self.client.resume_reading("upstream")

    # -- llhttp's callbacks -----------------------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        if not self._complete:  # never a stray response's status line
            self._reason += reason  # llhttp calls back once per read the reason spans

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._heads_complete == self._interim:  # not a trailer: trailers pass raw
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:  # a stray response's head
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim += 1  # `100 Continue` and other interim heads are not relayed
            self._headers = []
            self._reason = b""
        self._heads_complete += 1
        # Asked now: llhttp answers False once the message is complete (uvicorn asks here too).
        self._upstream_keep_alive = self._parser.should_keep_alive()

    def on_message_begin(self) -> None:
        if self._heads_complete > self._interim:  # bytes after the response: the connection is spoilt
            self._spoilt = True

    def on_body(self, body: bytes) -> None:
        if not self._complete:  # never a stray response's body
            self._bodies.append(body)
            self._body_in_read += len(body)

    def on_message_complete(self) -> None:
        if self._heads_complete > self._interim:
            self._complete = True

    # -- the client's side ------------------------------------------------------------------------
    def client_paused(self) -> None:
        self._paused = True
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.pause_reading()

    def client_resumed(self) -> None:
        self._paused = False
        self._last_read = self._loop.time()
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.resume_reading()

    def client_left(self) -> None:
        """Keep reading: the run goes on upstream and must still be recorded, for `drain_s` at most."""
        if self.ex.client_gone or self._ended:
            return
        self.ex.client_gone = True
        self.client_resumed()
        self._drain_timer = self._loop.call_later(self._drain_s, self._drain_over)

    def _drain_over(self) -> None:
        self._drain_timer = None
        if not self._ended:
            if self.conn is not None:
                self.conn.abort()
                self.conn = None
            self._end(Outcome.CLIENT_GONE, None)

    # -- internals --------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> bool:
        """Parse one upstream read; False when it broke the response (the exchange has failed).

        Parsed before it is written, so bytes after the response (a broken upstream) are known
        and never reach the client as part of it."""
        self._body_in_read = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101 answer to a request that did not ask for it: relayed as a head, then raw
        except httptools.HttpParserError as e:
            if self._complete:  # garbage after the response: the connection is spoilt, the response whole
                self._spoilt = True
            elif not self._head_written:
                if not self.head.done():
                    self.head.set_exception(UpstreamGone(f"ClientResponseError: {e}"))
                return False
            else:
                self._fail(Outcome.TRUNCATED, f"ClientPayloadError: {e}")
                return False
        return True

    def _message_end(self, data: bytes) -> int:
        """How many bytes of `data` (body bytes of this read) belong to the response, when more came.

        Exact for a Content-Length body. A chunked body ends in CRLF CRLF; llhttp does not say
        where, so the end taken is the first one followed by what reads as a response line
        (else the last one): a stray response after a chunked one in the same read is a broken
        upstream's rare fault, and the client connection closes after it either way."""
        if not self._chunked:
            return self._body_in_read
        last, at = len(data), data.find(b"\r\n\r\n")
        while at != -1:
            last = at + 4
            if data.startswith(b"HTTP/", last):
                break
            at = data.find(b"\r\n\r\n", last)
        return last

    def _head_data(self, data: bytes) -> None:
        self._head_buf += data
        if not self._feed(data):
            return
        if self._heads_complete <= self._interim:
            if len(self._head_buf) > 256 * 1024 and not self.head.done():
                self.head.set_exception(UpstreamGone("ClientResponseError: response head too large"))
            return
        end = 0
        for _ in range(self._interim + 1):  # the interim heads, then the response's own
            end = self._head_buf.index(b"\r\n\r\n", end) + 4
        rest = bytes(self._head_buf[end:])
        self._head_buf = bytearray()
        self._write_head()
        if rest and self._raw and not (self.head_only or self._no_body()):
            self.client.write(rest if not self._spoilt else rest[:self._message_end(rest)])
        if not self.head.done():
            self.head.set_result(None)
        if self.head_only:
            self._complete = True
            self._bodies.clear()
        self._after_feed()

    def _no_body(self) -> bool:
        return self._parser.get_status_code() in _NO_BODY_STATUS

    def _write_head(self) -> None:
        ex = self.ex
        ex.t_upstream_headers = time.perf_counter()
        status = self._parser.get_status_code()
        headers = self._headers
        ex.status = status
        content_type = header(headers, b"content-type")
        encoding = header(headers, b"content-encoding")
        ex.content_type = content_type.decode("latin-1") if content_type is not None else None
        request_id = header(headers, b"x-request-id")
        ex.upstream_request_id = request_id.decode("latin-1") if request_id is not None else None
        framing: bytes | None = None
        length = header(headers, b"content-length")
        self._chunked = chunked = (header(headers, b"transfer-encoding") or b"").lower().endswith(b"chunked")
        body_allowed = not (self.head_only or status in _NO_BODY_STATUS)
        if chunked:
            if self.client.http10 and body_allowed:
                self._raw = False  # HTTP/1.0 cannot read chunks: the decoded body, then close
                self.keep_client = False
            else:
                framing = b"Transfer-Encoding: chunked"
        elif length is not None:
            framing = b"Content-Length: " + length
        elif body_allowed:
            self._close_delimited = True
            self.keep_client = False
        close = not self.keep_client or not self.client.keep_alive_after
        self.client.write(response_head(status, self._reason, headers, framing, close=close))
        self._head_written = True
        ex.t_headers = time.perf_counter()
        self.tap = tap = self._make_tap()
        tap.response_started(ex.content_type, encoding.decode("latin-1") if encoding is not None else None)

    def _after_feed(self) -> None:
        bodies = self._bodies
        if bodies:
            data = bodies[0] if len(bodies) == 1 else b"".join(bodies)
            bodies.clear()
            if not self._raw:
                self.client.write(data)
            self.ex.response_bytes += len(data)
            assert self.tap is not None
            self.tap.feed(data)
        if self._complete:
            self._finish()

    def _finish(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if self._spoilt or self._close_delimited or not self._upstream_keep_alive:
                conn.sink = None
                conn.close()
            else:
                self.pool.release(conn)
        if self._spoilt:
            self.keep_client = False
        self._end(Outcome.CLIENT_GONE if self.ex.client_gone else Outcome.COMPLETED, None)

    def _fail(self, outcome: Outcome, error: str) -> None:
        if self.conn is not None:
            self.conn.sink = None
            self.conn.abort()
            self.conn = None
        if not self.ex.client_gone:
            self.client.abort()  # no clean end: the client's HTTP library raises (contract §4)
        self.keep_client = False
        self._end(Outcome.CLIENT_GONE if self.ex.client_gone else outcome, error)

    def _end(self, outcome: Outcome, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_timers()
        if self.tap is not None:
            self.tap.end(outcome, error)
        if not self.done.done():
            self.done.set_result(None)

    def cut(self, error: str) -> None:
        """The exchange's task was cancelled (shutdown) or failed: record what was relayed."""
        if self._ended:
            return
        if self.conn is not None:
            self.conn.sink = None
            self.conn.abort()
            self.conn = None
        self.keep_client = False
        self._ended = True
        self._cancel_timers()
        if self.tap is not None:
            self.tap.end(Outcome.TRUNCATED, error)
        if not self.done.done():
            self.done.set_result(None)

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._drain_timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        if self._ended:
            return
        now = self._loop.time()
        if self._paused:  # a slow client, not a silent upstream
            self._last_read = now
        due = self._last_read + self._read_s
        if now < due - 0.001:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        if not self._head_written:
            if not self.head.done():
                self.head.set_exception(TimeoutError())
            return
        self._fail(Outcome.TRUNCATED, f"TimeoutError: no data from the upstream within {self._read_s:g} s")
