"""The tap: bytes that already went to the client → run events → observers.

One `Tap` per exchange. `feed_batch()` gets raw chunks right after they were written to the
client (DeferredTap batches them); it decompresses its own copy when the upstream compressed the
body (the client still gets the compressed bytes, contract §4), and frames SSE a batch at a time
(frames.BatchFramer): the lifecycle frames are found in C, each parsed once and folded into the run
model (runs.py) by the route's API (apis/base.py), and handed to the observers as a `RunEvent`.
The frames between them that the API calls deltas are neither framed one by one nor parsed: a run
of them is one span of bytes, given to the API (`Api.deltas`) and to the observers (`deltas`) in
one call each. The stream's
bytes themselves (with each chunk's arrival) go to the observers as `StreamBytes`, at its end or in
segments (SEGMENT_BYTES, `segment_s`): the recording is made from them off the loop
(record/streams.py), so nothing per event is built for it here. A JSON body (a poll, a
non-stream create) is collected (bounded) and handled the same way at `close()`.

The tap never raises and never awaits: a failure here costs a record, never the stream. Every
failure is logged and counted in `errors`.
"""

from __future__ import annotations

import logging
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson

from .apis.base import Api
from .exchange import Exchange, Outcome, RunEvent, StreamBytes, utcnow
from .frames import FRAME, BatchFramer, FrameScanner, Item
from .observers import Observers
from .runs import RunState, RunStore, Seen, State
from .sse import SseDecoder, SseEvent

log = logging.getLogger("runtap.tap")

SEGMENT_BYTES = 1 << 20
SEGMENT_S = 0.25
"""A stream is handed to the observers as its bytes (`StreamBytes`) when it ends, or sooner in
segments, at the first frame boundary after SEGMENT_BYTES or `segment_s` (the recorder's batch
interval; this is its default): what the proxy holds per open stream stays bounded, and a crash
loses of a long stream what it loses of the writer's queue, about one batch interval."""


_SCANNERS: dict[Api | None, FrameScanner] = {}


def _scanner(api: Api | None) -> FrameScanner:
    scanner = _SCANNERS.get(api)
    if scanner is None:
        scanner = _SCANNERS[api] = FrameScanner(api.delta_events if api is not None else (),
                                                api.delta_data if api is not None else None)
    return scanner


def parse_object(text: str | bytes) -> dict[str, Any] | None:
    """`text` as a JSON object, or None; never raises."""
    if not text or (text[0] != "{" and text[0] != 0x7B):
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class Tap:
    errors = 0
    """Failures swallowed by all taps since start (a metric reads it)."""

    def __init__(self, ex: Exchange, tracker: RunStore, observers: Observers, max_body: int,
                 segment_s: float = SEGMENT_S) -> None:
        self.ex = ex
        self._segment_s = segment_s
        self._api = ex.route.api
        self._tracker = tracker
        self._observers = observers
        self._max_body = max_body
        self._framer: BatchFramer | None = None
        self._body: list[bytes] | None = None
        self._body_len = 0
        self._inflate: Any = None
        self._last_received: float | None = None
        self._stream: StreamBytes | None = None
        """The stream's bytes since the last segment was handed over (SSE only)."""
        self._stream_len = 0
        self.done_seen = False
        self.body_overflow = False

    # -- lifecycle ---------------------------------------------------------------------------
    def response_started(self, content_type: str | None, content_encoding: str | None) -> None:
        """The response's headers went to the client: tell the observers, prepare to parse."""
        try:
            self._start(content_type or "", (content_encoding or "").strip().lower())
        except Exception:
            self._failed("response_started")
        self._observers.response_started(self.ex)

    def end(self, outcome: Outcome, error: str | None = None, at: float | None = None) -> None:
        """The exchange is over (`at`: its perf_counter end, else now): flush, settle the outcome,
        `exchange_finished` exactly once."""
        self.close()
        ex = self.ex
        if outcome is Outcome.COMPLETED and ex.streamed and not self._ended_cleanly():
            # A clean EOF is relayed as one (the client sees what the upstream did); the
            # recording says the stream never finished.
            outcome, error = Outcome.TRUNCATED, self._cut_reason()
        if self._api is not None and ex.outcome is None:
            try:
                now = utcnow()
                changes = self._api.exchange_ended(ex, self._tracker, now, outcome)
                if changes:
                    self._deliver(RunEvent(-1, None, "", None, now, changes=tuple(changes), source="end"))
            except Exception:
                self._failed("end")
        if ex.finish(outcome, error, at):
            self._observers.exchange_finished(ex)

    def _ended_cleanly(self) -> bool:
        """The stream reached its protocol's end: `[DONE]`, or what the route's API says ends it."""
        if self.done_seen:
            return True
        api = self._api
        return api is not None and api.stream_ended(self.ex, self._tracker)

    def _cut_reason(self) -> str:
        api = self._api
        return "stream ended before [DONE]" if api is None or api.stream_end is None else \
            f"stream ended before {api.stream_end}"

    def _start(self, content_type: str, encoding: str) -> None:
        ex = self.ex
        if ex.request_body and ex.route.recorded:
            ex.request_json = parse_object(ex.request_body)
        if encoding in ("gzip", "x-gzip", "deflate"):
            # wbits 47: auto-detect a zlib or gzip header. Raw deflate (no header) fails in
            # feed(), which then stops recording this body; the client's bytes are unaffected.
            self._inflate = zlib.decompressobj(47)
        elif encoding not in ("", "identity"):
            log.warning("cannot decode content-encoding %r; body forwarded but not recorded", encoding)
            return
        if content_type.startswith("text/event-stream"):
            ex.streamed = True
            self._framer = BatchFramer(_scanner(self._api))
            self._stream = StreamBytes(0, [], [], False)
        elif ex.route.recorded:
            self._body = []
        if self._api is not None and ex.status is not None and ex.status < 300:
            changes = self._api.request_changes(ex, self._tracker, ex.started_at)
            if changes:
                self._deliver(RunEvent(-1, None, "", ex.request_json, ex.started_at, changes=tuple(changes),
                                       source="request"))

    def feed(self, chunk: bytes, received: float | None = None) -> None:
        """One raw chunk, as it went to the client (`received`: its epoch time). Never raises."""
        self.feed_batch([chunk], [time.time() if received is None else received])

    def feed_batch(self, chunks: list[bytes], arrived: list[float]) -> None:
        """Raw chunks in order, as they went to the client, with their epoch arrival times. Never raises."""
        try:
            if not chunks:
                return
            self._last_received = arrived[-1]
            if self._inflate is not None:
                chunks, arrived = self._inflated(chunks, arrived)
                if not chunks:
                    return
            stream = self._stream
            if stream is not None:
                stream.chunks += chunks
                stream.arrived += arrived
                self._stream_len += sum(map(len, chunks))
            if self._framer is not None:
                self._on_items(self._framer.feed(chunks, arrived))
                held = stream.arrived if stream is not None else None
                if held and (self._stream_len >= SEGMENT_BYTES or held[-1] - held[0] >= self._segment_s):
                    self._segment_at_boundary()
            elif self._body is not None:
                for chunk in chunks:
                    self._collect(chunk)
        except Exception:
            self._failed("feed")
            # Stop parsing this exchange; the bytes still flow to the client. What was kept of
            # the stream is recorded: its events up to here.
            self._framer = self._body = self._inflate = None
            self._hand_over_stream()

    def _inflated(self, chunks: list[bytes], arrived: list[float]) -> tuple[list[bytes], list[float]]:
        inflate = self._inflate
        out: list[bytes] = []
        times: list[float] = []
        for chunk, at in zip(chunks, arrived, strict=True):
            plain = inflate.decompress(chunk)
            if plain:
                out.append(plain)
                times.append(at)
        return out, times

    def close(self) -> None:
        """The body ended (or broke off): flush what is buffered."""
        try:
            if self._inflate is not None:
                tail = self._inflate.flush()
                if tail:
                    self._inflate = None
                    self.feed(tail, self._last_received)
            if self._framer is not None:
                self._on_items(self._framer.close())
            elif self._body is not None:
                self._on_body(b"".join(self._body))
        except Exception:
            self._failed("close")
        finally:
            self._framer = self._body = None
            self._hand_over_stream()

    def _hand_over_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream.chunks:
            stream.final = True
            self._observers.stream_bytes(self.ex, stream)

    # -- events ------------------------------------------------------------------------------
    def _collect(self, chunk: bytes) -> None:
        self._body_len += len(chunk)
        if self._body_len > self._max_body:
            self.body_overflow = True
            self._body = None
            log.warning("response body of %s over %d bytes: not recorded", self.ex.request_id, self._max_body)
            return
        self._body.append(chunk)  # type: ignore[union-attr]  # checked by the caller

    def _on_body(self, body: bytes) -> None:
        ex = self.ex
        ex.response_body = body
        obj = parse_object(body)
        if obj is None or self._api is None:
            return
        now = utcnow()
        changes = self._api.fold(ex, obj, self._tracker, Seen(ex.request_id, ex.key_id, ex.trace_id, now))
        self._deliver(RunEvent(-1, None, "", obj, now, changes=tuple(changes), source="body"))

    def _on_items(self, items: list[Item]) -> None:
        ex = self.ex
        api = self._api
        for kind, seq, what, frames, arrived in items:
            at = datetime.fromtimestamp(arrived, UTC)
            if kind == FRAME:
                self._on_frame(seq, what, at)  # type: ignore[arg-type]  # FRAME items hold an SseEvent
            elif api is not None and api.deltas(ex, frames, self._tracker):  # type: ignore[arg-type]
                self._observers.deltas(ex, (seq, what, at, frames))  # type: ignore[arg-type]
            else:  # deltas their API would not take unparsed: framed and parsed one by one
                self._on_frames(seq, frames, at)  # type: ignore[arg-type]
        if items:
            ex.event_count = self._framer.frames if self._framer is not None else ex.event_count

    def _on_frames(self, seq: int, frames: bytes, at: datetime) -> None:
        for event in SseDecoder().feed(frames):
            self._on_frame(seq, event, at)
            seq += 1

    def _on_frame(self, seq: int, event: SseEvent, now: datetime) -> None:
        """A lifecycle frame (or one no API claims, or a malformed one): parsed once, folded."""
        ex = self.ex
        obj = parse_object(event.data)
        changes: list[State] = []
        if obj is None:
            self.done_seen = self.done_seen or event.is_done
        elif self._api is not None:
            try:
                changes = self._api.fold(ex, obj, self._tracker, Seen(ex.request_id, ex.key_id, ex.trace_id, now))
            except Exception:  # an object the API's stitcher chokes on costs its own fold, not the stream's
                self._failed("fold")
        self._deliver(RunEvent(seq, event.event, event.data, obj, now, event.raw, tuple(changes)))

    @property
    def segment_due(self) -> float | None:
        """When the stream held now is due to be handed over (epoch seconds), or None if none is."""
        stream = self._stream
        return stream.arrived[0] + self._segment_s if stream is not None and stream.arrived else None

    def segment_if_due(self, now: float) -> None:
        """A stream that went quiet is handed over all the same, once due (DeferredTap's timer)."""
        due = self.segment_due
        if due is not None and now >= due:
            self._segment_at_boundary()

    def _segment_at_boundary(self) -> None:
        """Hand over the stream so far if no frame is half-way (a segment must frame on its own)."""
        framer = self._framer
        if framer is not None and framer.at_boundary and self._stream is not None:
            segment = self._stream
            self._stream = StreamBytes(framer.frames, [], [], False)
            self._stream_len = 0
            self._observers.stream_bytes(self.ex, segment)

    def _deliver(self, event: RunEvent) -> None:
        ex = self.ex
        for state in event.changes if event.source != "request" else ():
            # (What a request changed may be other runs': turns it found abandoned, apis/*/stitch.py.)
            if isinstance(state, RunState):
                ex.run_id = ex.run_id or state.run_id
                ex.thread_id = ex.thread_id or state.thread_id
                break
        self._observers.run_event(ex, event)

    def _failed(self, where: str) -> None:
        Tap.errors += 1
        log.exception("tap failed in %s for %s", where, self.ex.request_id)
