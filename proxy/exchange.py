"""The flow object: one HTTP exchange through the proxy, and the run events seen in it.

Like mitmproxy's `HTTPFlow`, an `Exchange` is created when a request arrives, filled in as the
response goes by, and handed to every observer hook (observers.py). `finish()` sets the outcome
exactly once, whatever path ended the exchange (architecture.md §8.3).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .apis.base import Route


class Outcome(StrEnum):
    """How an exchange ended as transport (contract §6)."""

    COMPLETED = "completed"
    """The upstream's response, whatever its status, reached its end."""
    UPSTREAM_ERROR = "upstream_error"
    """No response from the upstream: the client got runtap's 502/504."""
    TRUNCATED = "truncated"
    """The upstream's body broke off (for a stream: EOF or error before `[DONE]`)."""
    CLIENT_GONE = "client_gone"
    """The client left before the end; runtap kept reading so the run is still recorded."""
    REJECTED = "rejected"
    """runtap refused the request itself (413, 429)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """`rt_` and 32 hex digits: this process's random 64-bit prefix, then a counter.

    Unique across processes (a fresh random prefix per start) and within one (the counter), with
    no system call per request: `uuid.uuid4()` reads `os.urandom` every time, ~2% of the event
    loop's CPU under load (py-spy, streamed runs at concurrency 32). Ids of one process also sort
    in arrival order.
    """
    return f"rt_{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass(slots=True)
class Exchange:
    route: Route
    method: str
    path: str
    query: str
    key_id: str | None
    request_body: bytes | None
    """The request body as sent, for recorded routes; None for routes streamed through."""
    request_id: str = field(default_factory=new_request_id)
    started_at: datetime = field(default_factory=utcnow)
    t_start: float = field(default_factory=time.perf_counter)
    request_json: dict[str, Any] | None = None
    """The request body parsed as a JSON object, when it is one."""
    status: int | None = None
    content_type: str | None = None
    upstream_request_id: str | None = None
    t_sent: float | None = None
    """perf_counter when runtap handed the request to its upstream HTTP client."""
    t_upstream_headers: float | None = None
    """perf_counter when the upstream's status and headers were in (before they went to the client)."""
    t_headers: float | None = None
    t_end: float | None = None
    response_bytes: int = 0
    response_body: bytes | None = None
    """A non-stream response body as decoded by the tap (None for streams)."""
    streamed: bool = False
    event_count: int = 0
    thread_id: str | None = None
    run_id: str | None = None
    response_id: str | None = None
    """The Responses API response this exchange created or touched (`resp_...`)."""
    trace_id: str | None = None
    """Hex trace id of the run this exchange touched (tracing sets it before the tap sees run objects)."""
    traceparent: str | None = None
    """The client's W3C `traceparent` header, if it sent one."""
    client_gone: bool = False
    outcome: Outcome | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self.thread_id = self.route.thread_id
        self.run_id = self.route.run_id
        self.response_id = self.route.response_id

    @property
    def ttfb_ms(self) -> float | None:
        return None if self.t_headers is None else (self.t_headers - self.t_start) * 1000

    @property
    def duration_ms(self) -> float | None:
        return None if self.t_end is None else (self.t_end - self.t_start) * 1000

    def finish(self, outcome: Outcome, error: str | None = None, at: float | None = None) -> bool:
        """Set the outcome once (`at`: perf_counter when the relay ended, else now). Returns False
        (and changes nothing) when already finished."""
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.error = error
        self.t_end = time.perf_counter() if at is None else at
        return True


@dataclass(slots=True)
class StreamBytes:
    """A streamed response's body as it came (decompressed), or one segment of a long one.

    The tap hands it to the observers whole, once per segment (tap.SEGMENT_BYTES, SEGMENT_S): the
    recording is these bytes and their arrival times, never a row per event built on the loop
    (record/streams.py turns them into rows in the writer's thread). A segment ends at a frame
    boundary, so each one frames on its own."""

    seq0: int
    """seq of the first event in the segment (events dispatched before it)."""
    chunks: list[bytes]
    """The body's chunks in arrival order (as fed to the tap, after decompression)."""
    arrived: list[float]
    """Each chunk's arrival, seconds since the epoch."""
    final: bool
    """The last segment of the stream: a frame left without its blank line is flushed (cut off)."""


Deltas = tuple[int, int, datetime, bytes]
"""A run of consecutive delta frames (apis/base.py `Api.delta_events`): (seq of the first, how many,
when the first arrived, their exact bytes, blank lines included). Never parsed on the loop and not
`RunEvent`s: these are most of a stream, handed to the observers one run at a time."""


# Not frozen: a frozen dataclass costs ~1.6 us to build against ~0.4 us, and one is built per
# lifecycle event on the tee path. Treat instances as immutable all the same.
@dataclass(slots=True)
class RunEvent:
    """One thing the upstream told us about a run: an SSE event, or a JSON body (a snapshot).

    Streamed and polled runs follow one path (architecture.md §8.3): a JSON response such as
    `GET .../runs/{id}` arrives here with `source="body"` and the parsed object.
    """

    seq: int
    """Position among this exchange's SSE events (from 0); -1 for a JSON-body snapshot."""
    name: str | None
    """The SSE `event:` name (`thread.run.completed`, `done`, …); None for snapshots."""
    data: str
    """The event's data exactly as received (`[DONE]` and malformed data included)."""
    obj: dict[str, Any] | None
    """`data` parsed, when it is a JSON object."""
    received_at: datetime
    raw: bytes | None = None
    """The frame's exact bytes when it was malformed (see sse.py)."""
    changes: tuple[Any, ...] = ()
    """The run/step/tool-call/message states (runs.py) whose snapshot this event changed."""
    source: str = "sse"
    """`sse` (an event of a stream), `body` (a JSON response body) or `request` (what the
    client sent, e.g. tool outputs the upstream accepted)."""
