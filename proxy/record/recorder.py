"""The recorder: exchanges and run events → rows → the store's writer queue.

Runs on the event loop, so it only builds small dicts and calls `Writer.submit()`, which
enqueues; the writer thread batches them into DuckDB (store/writer.py). Rows of runs, steps, tool
calls and messages are partial snapshots merged by key in the database (a NULL never erases a
known value), so each exchange writes only what it saw.

A stream's events are not rows built here: the tap hands over the stream's bytes (`stream_bytes`,
once at its end or per segment of a long one) and the writer's thread makes them `response_streams`
or `event_rows` rows (record/streams.py). Delta events change state without producing a row; the
state they touched is written when their exchange ends, unless a snapshot wrote it first
(`RunStore.dirty`).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Protocol

from ..exchange import Exchange, RunEvent, StreamBytes
from ..observers import Observer
from ..runs import RECORDED, RunStore, State


class RowSink(Protocol):
    def submit(self, table: str, row: dict[str, Any]) -> None: ...

    def submit_stream(self, request_id: str, run_id: str | None, segment: StreamBytes, *,
                      record_content: bool = True) -> None:
        """A stream's bytes, made rows off the loop (record/streams.py)."""


# record_content = false blanks these (contract §6); ids, statuses, timings and usage stay.
_CONTENT = frozenset({"arguments", "output", "text", "request_body", "response_body", "data", "raw"})


def _getter(kind: type) -> tuple[str, tuple[str, ...], attrgetter[Any]] | None:
    # One C call per snapshot for all its columns (a getattr per column was 2% of the loop's CPU).
    # None for a type that is no row (runs.ModelCall, a view for budgets).
    getter = _GETTERS.get(kind, _UNKNOWN)
    if getter is _UNKNOWN:
        recorded = RECORDED.get(kind)
        getter = _GETTERS[kind] = None if recorded is None else (*recorded, attrgetter(*recorded[1]))
    return getter  # type: ignore[return-value]


_GETTERS: dict[type, tuple[str, tuple[str, ...], attrgetter[Any]] | None] = {}
_UNKNOWN = object()


def _text(body: bytes | None) -> str | None:
    return None if body is None else body.decode("utf-8", "replace")


class Recorder(Observer):
    name = "recorder"

    def __init__(self, sink: RowSink, tracker: RunStore, *, record_content: bool = True) -> None:
        self._sink = sink
        self._tracker = tracker
        self._record_content = record_content
        # Stream segments handed over before their exchange knew its run id (`thread.created`
        # comes first): their rows carry the run id, so they wait for it (or the exchange's end).
        self._held: dict[str, list[StreamBytes]] = {}

    def _submit(self, table: str, row: dict[str, Any]) -> None:
        if not self._record_content:
            for column in _CONTENT.intersection(row):
                row[column] = None
        self._sink.submit(table, row)

    def _submit_state(self, state: State) -> None:
        getter = _getter(type(state))
        if getter is not None:
            table, columns, values = getter
            self._submit(table, dict(zip(columns, values(state), strict=True)))

    def exchange_started(self, ex: Exchange) -> None:
        # Written now, so that a stream cut by a crash still has its request row.
        self._submit("requests", {
            "request_id": ex.request_id, "started_at": ex.started_at, "method": ex.method,
            "path": ex.path, "query": ex.query or None, "route": ex.route.template, "key_id": ex.key_id,
            "thread_id": ex.thread_id, "run_id": ex.run_id, "request_body": _text(ex.request_body),
            "request_bytes": None if ex.request_body is None else len(ex.request_body),
        })

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        written = self._tracker.written
        for state in event.changes:
            self._submit_state(state)
            written(state)

    def stream_bytes(self, ex: Exchange, segment: StreamBytes) -> None:
        if ex.run_id is None and not segment.final:
            self._held.setdefault(ex.request_id, []).append(segment)
            return
        self._release(ex)
        self._sink.submit_stream(ex.request_id, ex.run_id, segment, record_content=self._record_content)

    def _release(self, ex: Exchange) -> None:
        if not self._held:
            return
        for segment in self._held.pop(ex.request_id, ()):
            self._sink.submit_stream(ex.request_id, ex.run_id, segment, record_content=self._record_content)

    def exchange_finished(self, ex: Exchange) -> None:
        self._release(ex)
        for state in self._tracker.drain_dirty(ex.request_id):
            self._submit_state(state)
        self._submit("requests", {
            "request_id": ex.request_id, "status": ex.status, "upstream_request_id": ex.upstream_request_id,
            "streamed": ex.streamed, "ttfb_ms": ex.ttfb_ms, "duration_ms": ex.duration_ms,
            "outcome": ex.outcome.value if ex.outcome else None, "error": ex.error,
            "thread_id": ex.thread_id, "run_id": ex.run_id, "trace_id": ex.trace_id, "response_id": ex.response_id,
            "response_body": _text(ex.response_body), "response_bytes": ex.response_bytes,
            "content_type": ex.content_type, "event_count": ex.event_count,
        })
