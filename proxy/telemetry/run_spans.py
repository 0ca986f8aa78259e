"""The tracing observer: one trace per run, its spans held open across every exchange (contract §9).

Span tree (semconv v1.41.0, semconv.py)::

    invoke_agent                 CLIENT    creation → terminal status, across requires_action pauses
      chat {model}               CLIENT    one per run step: first seen → its end, with its usage
        execute_tool {name}      INTERNAL  per tool call of a tool_calls step; for a function tool,
                                           requires_action → the submit_tool_outputs request

How a run gets its trace: a run-creating exchange (`POST .../threads/runs`, `POST .../runs`) starts
the `invoke_agent` span in `response_started`, timed from the exchange's start and parented on the
client's `traceparent` when there is one, and sets `ex.trace_id`. That hook runs before the tap
parses a byte of the body, so every run object the tap folds in carries the trace id into the
`requests` and `runs` rows (runs.Seen). Later exchanges naming the run (polls, submit_tool_outputs,
steps, cancel) find the span by run id and carry the same trace id.

Every span time is runtap's clock (an exchange's start, the arrival of the event that showed a
change), never an upstream timestamp: those are data (`runtap.step.upstream_duration_s`).

`error.type`: a `last_error.code` (else `failed`), `expired`, a create's HTTP status or broken
outcome when it made no run (`semconv.exchange_error_type`), and `abandoned` for a run whose
terminal status never came: ended at its expiry (`expires_at - created_at` after runtap saw it
start), at `abandoned_run_s`, when `max_open_runs`
pushed it out, or at shutdown (`runtap.run.abandoned` says which). Memory is bounded by
`max_open_runs`; per event the work is O(1), with attribute writes only when a state changes.
Spans are plain records (spans.py): starting one, setting an attribute and ending one are a few
dict and list operations on the loop; the export thread does the rest (span_export.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from ..exchange import Deltas, Exchange, RunEvent
from ..observers import Observer
from ..runs import STEP_TERMINAL, RunState, RunStore, StepState, ToolCallState
from . import semconv as sc
from .spans import SpanRecord, Spans

EXPIRY_GRACE_S = 60.0
"""How long after `expires_at` a run may still report its own terminal status before runtap ends
its span as abandoned (timestamped at `expires_at`)."""
SWEEP_INTERVAL_S = 30.0
RUN_ID = "runtap.run.id"
RUN_STATUS = "runtap.run.status"
RUN_ABANDONED = "runtap.run.abandoned"
STEP_TYPE = "runtap.step.type"
STEP_UPSTREAM_DURATION = "runtap.step.upstream_duration_s"
_DELTAS = frozenset({"thread.message.delta", "thread.run.step.delta"})
_PROPAGATOR = TraceContextTextMapPropagator()


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1e9)


def _client_span(traceparent: str) -> SpanContext | None:
    """The client's span from its W3C `traceparent`, or None when the header is not valid."""
    context = trace.get_current_span(_PROPAGATOR.extract({"traceparent": traceparent})).get_span_context()
    return context if context.is_valid else None


def end_attributes(span: SpanRecord, run: RunState, *, errors: tuple[str, ...]) -> str | None:
    """What the end of a run (or a turn) says on its `invoke_agent` span: status, usage, finish
    reason, and the error of a failed one or of a status in `errors`. Returns the error type its
    open children end with (None when it completed or ran out of tokens)."""
    status = run.status or ""
    span.attributes[RUN_STATUS] = status
    _usage(span, run.prompt_tokens, run.completion_tokens)
    reason = sc.finish_reason(status, run.incomplete_reason)
    if reason:
        span.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = (reason,)
    if status == "failed":
        sc.record_error(span, run.last_error_code or "failed", run.last_error_message)
    elif status in errors:
        sc.record_error(span, status)
    return None if status in ("completed", "incomplete") else status


def _usage(span: SpanRecord, prompt_tokens: int | None, completion_tokens: int | None) -> None:
    if prompt_tokens is not None:
        span.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] = prompt_tokens
    if completion_tokens is not None:
        span.attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = completion_tokens


@dataclass(slots=True, eq=False)
class _Step:
    span: SpanRecord
    start_ns: int
    timed_first_chunk: bool = False


@dataclass(slots=True, eq=False)
class _Run:
    span: SpanRecord
    """The run's span; once it ended, its stub (what late children need of it)."""
    trace_id: str
    start_ns: int
    deadline_ns: int
    provider: str
    run_id: str | None = None
    model: str | None = None
    expires_ns: int | None = None
    steps: dict[str, _Step] = field(default_factory=dict)
    tools: dict[str, SpanRecord] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    """Step and tool-call ids whose spans have ended (a repeated snapshot must not reopen them)."""


class TracingObserver(Observer):
    name = "tracing"

    def __init__(self, spans: Spans, tracker: RunStore | None = None, *, upstream: str = "",
                 capture_content: bool = False, max_open_runs: int = 10_000, abandoned_run_s: float = 3600.0,
                 clock_ns: Any = time.time_ns) -> None:
        self._spans = spans
        self._tracker = tracker
        self._capture = capture_content
        self._max_open = max_open_runs
        self._cap_ns = int(abandoned_run_s * 1e9)
        self._clock_ns = clock_ns
        url = URL(upstream) if upstream else None
        self._server: dict[str, Any] = {}
        if url is not None and url.host:
            self._server = {sc.SERVER_ADDRESS: url.host, sc.SERVER_PORT: url.port or 443}
        self.server_attributes = self._server
        """`server.address` and `server.port` of the upstream, for every span."""
        self._pending: dict[str, _Run] = {}
        """Run-creating exchanges whose run id has not been seen yet, by request id."""
        self.open: OrderedDict[str, _Run] = OrderedDict()
        """Open run spans by run id, oldest first."""
        self._closed: OrderedDict[str, _Run] = OrderedDict()
        """Recently ended runs, their spans swapped for stubs without attributes: a late steps
        listing still lands in the run's trace, and no ended span's attributes are kept alive."""
        self._untimed: dict[str, _Step] = {}
        """By run id, the step of an open run that is producing content and whose first chunk
        (`gen_ai.response.time_to_first_chunk`) has not come yet: the step seen last."""
        self._timer: asyncio.TimerHandle | None = None

    # -- hooks -----------------------------------------------------------------------------------
    def response_started(self, ex: Exchange) -> None:
        if self._timer is None:
            self._arm()
        if (ex.route.creates_run and not ex.route.continues_run):
            rec = self._pending[ex.request_id] = self._start_run(ex)
            ex.trace_id = rec.trace_id
        elif ex.run_id is not None:
            known = self.open.get(ex.run_id) or self._closed.get(ex.run_id)
            if known is not None:
                ex.trace_id = known.trace_id

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        if not event.changes:
            # Most of a stream: content deltas. Once its step's first chunk is timed, `_untimed` is
            # empty and a delta costs two lookups.
            if self._untimed and event.name in _DELTAS and ex.run_id is not None:
                self._first_chunk(ex.run_id, event.received_at)
            return
        for state in event.changes:
            kind = type(state)
            if kind is RunState:
                self._on_run(ex, state, event)
            elif kind is StepState:
                self._on_step(ex, state, event)
            elif kind is ToolCallState:
                self._on_call(state)

    def deltas(self, ex: Exchange, deltas: Deltas) -> None:
        if self._untimed and ex.run_id is not None:
            self._first_chunk(ex.run_id, deltas[2])

    def exchange_finished(self, ex: Exchange) -> None:
        rec = self._pending.pop(ex.request_id, None)
        if rec is None and (ex.route.creates_run and not ex.route.continues_run) and ex.trace_id is None:
            rec = self._start_run(ex)  # runtap answered itself (413, 502, 504): no response_started
            ex.trace_id = rec.trace_id
        if rec is not None and rec.run_id is None:
            sc.record_error(rec.span, sc.exchange_error_type(ex.status, ex.outcome), ex.error)
            self._spans.end(rec.span, self._clock_ns())
        self.sweep()

    # -- runs --------------------------------------------------------------------------------------
    def _start_run(self, ex: Exchange) -> _Run:
        parent = _client_span(ex.traceparent) if ex.traceparent else None
        provider = sc.provider_for_path(ex.path)
        attributes: dict[str, Any] = {sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT,
                                      sc.GEN_AI_PROVIDER_NAME: provider, **self._server}
        body = ex.request_json or {}
        for key, name in (("model", sc.GEN_AI_REQUEST_MODEL), ("temperature", sc.GEN_AI_REQUEST_TEMPERATURE),
                          ("top_p", sc.GEN_AI_REQUEST_TOP_P), ("max_completion_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS)):
            if isinstance(body.get(key), str | int | float):
                attributes[name] = body[key]
        if self._capture:
            attributes.update(sc.input_content(body))
        start_ns = _ns(ex.started_at)
        span = self._spans.start(sc.OP_INVOKE_AGENT, SpanKind.CLIENT, attributes, start_ns, parent)
        return _Run(span, format(span.trace_id, "032x"), start_ns, start_ns + self._cap_ns, provider,
                    model=attributes.get(sc.GEN_AI_REQUEST_MODEL))

    def _run_of(self, ex: Exchange, run: RunState, at_ns: int) -> _Run | None:
        """The open record of `run`: known, or bound to the exchange that created it, or (for a run
        first seen mid-life, e.g. after a restart) started now."""
        rec = self.open.get(run.run_id)
        if rec is not None:
            return rec
        rec = self._pending.get(ex.request_id)
        if rec is None or rec.run_id is not None:
            if run.run_id in self._closed or run.terminal or ex.route.run_id != run.run_id:
                return None  # ended, or only listed: a span starts only for a run this exchange names
            rec = self._start_run(ex)
            ex.trace_id = ex.trace_id or rec.trace_id
        self._bind(rec, run, ex, at_ns)
        return rec

    def _bind(self, rec: _Run, run: RunState, ex: Exchange, at_ns: int) -> None:
        rec.run_id = run.run_id
        rec.model = rec.model or run.model
        attributes = rec.span.attributes
        for name, value in ((RUN_ID, run.run_id), (sc.GEN_AI_AGENT_ID, run.assistant_id),
                            (sc.GEN_AI_CONVERSATION_ID, run.thread_id), (sc.GEN_AI_REQUEST_MODEL, rec.model)):
            if value:
                attributes[name] = value
        while len(self.open) >= self._max_open:
            _, oldest = self.open.popitem(last=False)
            self._abandon(oldest, at_ns, "evicted")
        self.open[run.run_id] = rec

    def _on_run(self, ex: Exchange, run: RunState, event: RunEvent) -> None:
        at_ns = _ns(event.received_at)
        rec = self._run_of(ex, run, at_ns)
        if rec is None:
            return
        if run.expires_at is not None and run.created_at is not None and rec.expires_ns is None:
            # The run's lifetime as the upstream states it, counted on runtap's clock from when
            # runtap saw the run start: an upstream timestamp is data, never a time (the upstream's
            # clock may be skewed; a replayed recording's expires_at lies in the past).
            rec.expires_ns = rec.start_ns + max(0, _ns(run.expires_at) - _ns(run.created_at))
            rec.deadline_ns = min(rec.deadline_ns, rec.expires_ns + int(EXPIRY_GRACE_S * 1e9))
        if run.terminal:
            self._end_run(rec, run, max(at_ns, rec.start_ns))

    def _end_run(self, rec: _Run, run: RunState, end_ns: int) -> None:
        self._close(rec, end_ns, end_attributes(rec.span, run, errors=("expired",)))

    def _abandon(self, rec: _Run, now_ns: int, why: str) -> None:
        end_ns = min(now_ns, rec.expires_ns) if why == "expires_at" and rec.expires_ns else now_ns
        rec.span.attributes[RUN_ABANDONED] = why
        sc.record_error(rec.span, "abandoned", f"no terminal status seen ({why})")
        self._close(rec, max(end_ns, rec.start_ns), "abandoned")

    def _close(self, rec: _Run, end_ns: int, error_type: str | None) -> None:
        end = self._spans.end
        for call_id, span in rec.tools.items():
            if error_type:
                sc.record_error(span, error_type)
            end(span, max(end_ns, span.start_ns))
            rec.done.add(call_id)
        for step_id, step in rec.steps.items():
            if error_type:
                sc.record_error(step.span, error_type)
            end(step.span, max(end_ns, step.start_ns))
            rec.done.add(step_id)
        rec.tools.clear()
        rec.steps.clear()
        end(rec.span, end_ns)
        if rec.run_id is None:
            return
        self.open.pop(rec.run_id, None)
        rec.span = rec.span.stub()
        self._untimed.pop(rec.run_id, None)
        self._closed[rec.run_id] = rec
        if len(self._closed) > self._max_open:
            self._closed.popitem(last=False)

    def sweep(self, now_ns: int | None = None) -> None:
        """End the runs past their deadline (oldest first; O(1) when none is due)."""
        now_ns = self._clock_ns() if now_ns is None else now_ns
        while self.open:
            rec = next(iter(self.open.values()))
            if rec.deadline_ns > now_ns:
                return
            self.open.popitem(last=False)
            self._abandon(rec, now_ns, "expires_at" if rec.expires_ns else "timeout")

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # driven without a loop (replayed in tests): exchange_finished sweeps
            return
        self._timer = loop.call_later(SWEEP_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        self.sweep()
        self._arm()

    def close(self) -> None:
        """At shutdown: end every open span, so the batch processor can still export them."""
        if self._timer is not None:
            self._timer.cancel()
        now_ns = self._clock_ns()
        for rec in [*self._pending.values(), *self.open.values()]:
            if rec.run_id is None:
                self._spans.end(rec.span, now_ns)
            else:
                self._abandon(rec, now_ns, "shutdown")
        self._pending.clear()
        self.open.clear()
        self._untimed.clear()

    # -- steps and tool calls ---------------------------------------------------------------------
    def _first_chunk(self, run_id: str, received_at: datetime) -> None:
        step = self._untimed.pop(run_id, None)
        if step is not None:
            step.timed_first_chunk = True
            ttfc = max(0, _ns(received_at) - step.start_ns) / 1e9
            step.span.attributes[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttfc

    def _on_step(self, ex: Exchange, state: StepState, event: RunEvent) -> None:
        rec = self.open.get(state.run_id) if state.run_id else None
        if rec is None:
            closed = self._closed.get(state.run_id) if state.run_id else None
            if closed is not None and state.status in STEP_TERMINAL and state.step_id not in closed.done:
                self._late_step(ex, closed, state)
            return
        step = rec.steps.get(state.step_id)
        if step is None:
            if state.step_id in rec.done:
                return
            live = state.status not in STEP_TERMINAL
            start_ns = _ns(event.received_at) if live or state.created_at is None else _ns(state.created_at)
            step = rec.steps[state.step_id] = self._start_step(ex, rec.span, rec.model, rec.provider, state,
                                                               max(start_ns, rec.start_ns))
        if state.status in STEP_TERMINAL:
            self._end_step(rec.done, step, state, max(_ns(event.received_at), step.start_ns))
            del rec.steps[state.step_id]
            self._untimed.pop(state.run_id, None)
        elif step.timed_first_chunk:
            self._untimed.pop(state.run_id, None)
        else:
            self._untimed[state.run_id] = step

    def _start_step(self, ex: Exchange, parent: SpanRecord, model: str | None, provider: str, state: StepState,
                    start_ns: int) -> _Step:
        attributes: dict[str, Any] = {sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT, sc.GEN_AI_PROVIDER_NAME: provider,
                                      sc.GEN_AI_RESPONSE_ID: state.step_id, **self._server}
        for name, value in ((sc.GEN_AI_REQUEST_MODEL, model), (sc.GEN_AI_CONVERSATION_ID, state.thread_id),
                            (STEP_TYPE, state.type), (sc.GEN_AI_REQUEST_STREAM, ex.streamed)):
            if value:
                attributes[name] = value
        name = f"{sc.OP_CHAT} {model}" if model else sc.OP_CHAT
        return _Step(self._spans.start(name, SpanKind.CLIENT, attributes, start_ns, parent), start_ns)

    def _end_step(self, done: set[str], step: _Step, state: StepState, end_ns: int) -> None:
        span = step.span
        _usage(span, state.prompt_tokens, state.completion_tokens)
        if state.status == "completed":
            span.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = ("tool_calls",) if state.type == "tool_calls" else (
                "stop",)
        elif state.status == "failed":
            sc.record_error(span, state.last_error_code or "failed", state.last_error_message)
        elif state.status == "expired":
            sc.record_error(span, "expired")
        if self._capture and state.message_id:
            self._output_content(span, state)
        for call in state.calls_by_index.values():
            if call.type != "function" and call.tool_call_id not in done:
                # Built-in tools run inside the step on the agent's side: the step's time is theirs.
                self._spans.end(self._tool_span(call, span, step.start_ns), end_ns)
                done.add(call.tool_call_id)
        self._spans.end(span, end_ns)
        done.add(state.step_id)

    def _late_step(self, ex: Exchange, closed: _Run, state: StepState) -> None:
        """A step first seen after its run ended (a steps listing of a polled run): runtap never saw
        it happen, so its span is a point at the run's end on runtap's clock, and the duration the
        upstream's (whole-second) timestamps state is an attribute, not its time."""
        end_ns = closed.span.end_ns
        step = self._start_step(ex, closed.span, closed.model, closed.provider, state, end_ns)
        if state.created_at is not None and state.ended_at is not None:
            step.span.attributes[STEP_UPSTREAM_DURATION] = max(0.0, (state.ended_at - state.created_at).total_seconds())
        self._end_step(closed.done, step, state, end_ns)

    def _tool_span(self, call: ToolCallState, parent: SpanRecord, start_ns: int) -> SpanRecord:
        name = call.name or call.type or "tool"
        attributes: dict[str, Any] = {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: name,
                                      sc.GEN_AI_TOOL_CALL_ID: call.tool_call_id,
                                      sc.GEN_AI_TOOL_TYPE: sc.TOOL_TYPES.get(call.type or "", call.type or "")}
        if self._capture:
            if call.arguments is not None:
                attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = call.arguments
            if call.output is not None:
                attributes[sc.GEN_AI_TOOL_CALL_RESULT] = call.output
        return self._spans.start(f"{sc.OP_EXECUTE_TOOL} {name}", SpanKind.INTERNAL, attributes, start_ns, parent)

    def _on_call(self, call: ToolCallState) -> None:
        if call.type != "function" or call.requested_at is None or call.run_id is None:
            return
        rec = self.open.get(call.run_id)
        if rec is None or call.tool_call_id in rec.done:
            return
        span = rec.tools.get(call.tool_call_id)
        if span is None:
            step = rec.steps.get(call.step_id) if call.step_id else None
            parent = step.span if step is not None else rec.span
            span = rec.tools[call.tool_call_id] = self._tool_span(call, parent, _ns(call.requested_at))
        if call.submitted_at is not None:
            if self._capture and call.output is not None:
                span.attributes[sc.GEN_AI_TOOL_CALL_RESULT] = call.output
            self._spans.end(span, max(_ns(call.submitted_at), _ns(call.requested_at)))
            del rec.tools[call.tool_call_id]
            rec.done.add(call.tool_call_id)

    def _output_content(self, span: SpanRecord, state: StepState) -> None:
        run = self._tracker.runs.get(state.run_id) if self._tracker is not None and state.run_id else None
        message = run.messages.get(state.message_id) if run is not None and state.message_id else None
        if message is not None and message.text:
            span.attributes[sc.GEN_AI_OUTPUT_MESSAGES] = sc.output_messages(message.text)
