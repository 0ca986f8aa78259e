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
from ..runs import MessageState, RunState, RunStore, State, StepState, ToolCallState


class RowSink(Protocol):
    def submit(self, table: str, row: dict[str, Any]) -> None: ...

    def submit_stream(self, request_id: str, run_id: str | None, segment: StreamBytes, *,
                      record_content: bool = True) -> None:
        """A stream's bytes, made rows off the loop (record/streams.py)."""


_RUN_COLUMNS = (
    "run_id", "thread_id", "assistant_id", "model", "status", "key_id", "created_at", "started_at",
    "ended_at", "expires_at", "prompt_tokens", "completion_tokens", "total_tokens", "last_error_code",
    "last_error_message", "incomplete_reason", "tool_rounds", "trace_id", "max_prompt_tokens",
    "max_completion_tokens", "request_count", "first_seen_at", "last_seen_at",
)
_STEP_COLUMNS = (
    "step_id", "run_id", "thread_id", "type", "status", "created_at", "ended_at", "prompt_tokens",
    "completion_tokens", "total_tokens", "last_error_code", "last_error_message", "message_id",
    "first_seen_at", "last_seen_at",
)
_CALL_COLUMNS = (
    "tool_call_id", "step_id", "run_id", "type", "name", "arguments", "output", "requested_at",
    "submitted_at", "call_index",
)
_MESSAGE_COLUMNS = (
    "message_id", "thread_id", "run_id", "assistant_id", "role", "status", "text", "created_at",
    "completed_at", "incomplete_reason",
)
# record_content = false blanks these (contract §6); ids, statuses, timings and usage stay.
_CONTENT = frozenset({"arguments", "output", "text", "request_body", "response_body", "data", "raw"})
_TABLES: dict[type, tuple[str, tuple[str, ...]]] = {
    RunState: ("runs", _RUN_COLUMNS),
    StepState: ("run_steps", _STEP_COLUMNS),
    ToolCallState: ("tool_calls", _CALL_COLUMNS),
    MessageState: ("messages", _MESSAGE_COLUMNS),
}
# One C call per snapshot for all its columns (a getattr per column was 2% of the loop's CPU).
_GETTERS: dict[type, tuple[str, tuple[str, ...], attrgetter[Any]]] = {
    kind: (table, columns, attrgetter(*columns)) for kind, (table, columns) in _TABLES.items()
}


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
        table, columns, values = _GETTERS[type(state)]
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
            "thread_id": ex.thread_id, "run_id": ex.run_id, "trace_id": ex.trace_id,
            "response_body": _text(ex.response_body), "response_bytes": ex.response_bytes,
            "content_type": ex.content_type, "event_count": ex.event_count,
        })
