"""The relay's handle on a tap: chunks noted as they go out, parsed in batches behind the relay.

`DeferredTap` wraps one `tap.Tap`; `TapQueue` keeps every exchange's pending chunks in arrival
order, so what one exchange relayed is parsed before another exchange starts or ends.
"""

from __future__ import annotations

import asyncio
import time

from .exchange import Outcome
from .tap import Tap


class TapQueue:
    """The `DeferredTap`s of one proxy holding chunks not parsed yet, oldest first.

    Exchanges of one run overlap: the SDK's event handler submits tool outputs while the create
    stream is still open, and a poll can cross a stream. So before anything of another exchange
    is seen (its start, its end) every pending chunk is parsed first: the tracker and observers see
    all exchanges in arrival order, as if each chunk had been parsed on arrival.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[DeferredTap, None] = {}  # insertion-ordered: by first pending chunk

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, tap: DeferredTap) -> None:
        self._pending[tap] = None

    def discard(self, tap: DeferredTap) -> None:
        self._pending.pop(tap, None)

    def drain(self) -> None:
        """Parse every pending chunk of every exchange, oldest exchange first."""
        while self._pending:
            next(iter(self._pending)).drain()


class DeferredTap:
    """The relay's handle on a `Tap`: the tap works in batches, after the chunks went out.

    Per chunk the relay only notes the chunk and its arrival time. The tap gets them when a timer
    fires (`delay` after the first unprocessed chunk), when the exchange ends, or when any other
    exchange starts or ends (`TapQueue`), whichever comes first. So a fast stream is parsed once it
    is over instead of between its chunks, where every microsecond of parsing would delay the next
    chunk. Event times are the arrival times, so metrics, spans and rows are as exact as if each
    chunk had been parsed at once; observers see a live stream at most `delay` late.
    """

    __slots__ = ("_chunks", "_delay", "_loop", "_queue", "_segment_timer", "_start", "_timer", "_times", "tap")

    def __init__(self, tap: Tap, loop: asyncio.AbstractEventLoop, delay: float, queue: TapQueue | None = None) -> None:
        self.tap = tap
        self._loop = loop
        self._delay = delay
        self._queue = queue if queue is not None else TapQueue()
        self._chunks: list[bytes] = []
        self._times: list[float] = []
        self._timer: asyncio.TimerHandle | None = None
        self._segment_timer: asyncio.TimerHandle | None = None
        """Set while the tap holds stream bytes: hands them over once due, if no chunk comes first."""
        self._start: tuple[str | None, str | None] | None = None

    def response_started(self, content_type: str | None, content_encoding: str | None) -> None:
        # Pending work like a chunk: whoever drains this tap first (the callback below, another
        # exchange through the queue, the end) starts it before feeding it anything.
        self._start = (content_type, content_encoding)
        self._queue.add(self)
        self._loop.call_soon(self.drain)

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._times.append(time.time())
        if self._timer is None:
            self._timer = self._loop.call_later(self._delay, self.drain)
            self._queue.add(self)

    def end(self, outcome: Outcome, error: str | None = None) -> None:
        self._loop.call_soon(self._finish, outcome, error, time.perf_counter())

    def drain(self, arm: bool = True) -> None:
        """Parse what is pending now (the timer, the queue, or the end calls it); `arm`: then set the
        timer that hands the stream held over once due, if none is set."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.discard(self)
        if self._start is not None:
            start, self._start = self._start, None
            self.tap.response_started(*start)
        if self._chunks:
            chunks, times = self._chunks, self._times
            self._chunks, self._times = [], []
            self.tap.feed_batch(chunks, times)
        if arm and self._segment_timer is None:
            self._arm_segment_timer()

    def _arm_segment_timer(self) -> None:
        due = self.tap.segment_due
        if due is not None:
            self._segment_timer = self._loop.call_later(max(0.0, due - time.time()), self._segment_due)

    def _segment_due(self) -> None:
        self._segment_timer = None
        self.drain(arm=False)
        self.tap.segment_if_due(time.time())
        self._arm_segment_timer()

    def _finish(self, outcome: Outcome, error: str | None, at: float) -> None:
        self._queue.drain()  # other exchanges' earlier chunks first (this one's included, in order)
        self.drain(arm=False)
        if self._segment_timer is not None:  # the end hands the stream over
            self._segment_timer.cancel()
            self._segment_timer = None
        self.tap.end(outcome, error, at)
