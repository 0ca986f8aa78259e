"""Spans of the APIs whose runs are turns of model calls: Responses and Chat Completions (contract §9).

Span tree (semconv v1.41.0, semconv.py)::

    invoke_agent                 CLIENT    a turn: its first create's arrival → its end
      chat {model}               CLIENT    one per response / completion: its create's arrival → its end seen
        execute_tool {type}      INTERNAL  a built-in tool item of it (web_search_call, ...): added → done
        execute_tool {name}      INTERNAL  a client tool call it asked for: its end → the request carrying the
                                           output (the client's tool time)

A turn is runtap's stitching (protocol-responses.md §11), so its span says `runtap.inferred`.
How a call gets its trace: a create (`Route.creates_call`) starts its `chat` span in
`response_started`, before the tap parses a byte of the body, under the span of the turn the
request continues (its API names the turn in `ex.run_id` once it knows the request continues
one: a `previous_response_id`, tool results for calls runtap saw asked for), else under a new
turn's `invoke_agent`, itself under the client's `traceparent` when there is one; and sets
`ex.trace_id`, which the rows of the response and the turn carry. A background response's span
stays open until an exchange (a poll, a resume) sees it end.

Every time is runtap's clock (the exchange's start, the arrival of the event that showed a change),
never an upstream timestamp. Turns, calls and tool spans with no end in sight are bounded like run
spans: ended `abandoned` after `abandoned_run_s` without activity, or when `max_open_runs` pushes
them out, or at shutdown.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanKind

from ..exchange import Deltas, Exchange, RunEvent
from ..observers import Observer
from ..runs import RUN_TERMINAL, ModelCall, RunState, ToolCallState
from . import semconv as sc
from .run_spans import RUN_ABANDONED, RUN_ID, _client_span, _ns, _usage, end_attributes
from .spans import SpanRecord, Spans

INFERRED = "runtap.inferred"
TURN_ENDED = RUN_TERMINAL | {"truncated"}
TURN_ERRORS = tuple(TURN_ENDED - {"completed", "incomplete", "failed"})
_REQUEST_ATTRIBUTES = (("model", sc.GEN_AI_REQUEST_MODEL), ("temperature", sc.GEN_AI_REQUEST_TEMPERATURE),
                       ("top_p", sc.GEN_AI_REQUEST_TOP_P), ("max_output_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS),
                       ("max_completion_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS),
                       ("max_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS))


@dataclass(slots=True, eq=False)
class _Turn:
    span: SpanRecord
    trace_id: str
    start_ns: int
    provider: str
    last_ns: int
    """runtap's time of the turn's latest activity: an idle turn is abandoned `abandoned_run_s` after it."""
    run_id: str | None = None
    calls: dict[str, SpanRecord] = field(default_factory=dict)
    """Each model call's span by its id (a stub once ended): where its client tool calls hang."""
    tools: dict[str, SpanRecord] = field(default_factory=dict)
    """Client tool spans still open, by tool call id."""
    done: set[str] = field(default_factory=set)
    """Tool call and item ids whose spans have ended (a repeated snapshot must not reopen them)."""
    ending: RunState | None = None
    """The turn ended while a call of it was still open (a Chat usage chunk comes after the finish
    reason): it ends with that call."""


@dataclass(slots=True, eq=False)
class _Call:
    span: SpanRecord
    start_ns: int
    turn: _Turn
    call_id: str | None = None
    timed: bool = False
    """Its time to first chunk is set (or it has no stream)."""


class TurnTracing(Observer):
    name = "turn_tracing"

    def __init__(self, spans: Spans, *, upstream_attributes: dict[str, Any] | None = None,
                 capture_content: bool = False, max_open_runs: int = 10_000, abandoned_run_s: float = 3600.0,
                 clock_ns: Any = time.time_ns) -> None:
        self._spans = spans
        self._capture = capture_content
        self._server = upstream_attributes or {}
        self._max_open = max_open_runs
        self._idle_ns = int(abandoned_run_s * 1e9)
        self._clock_ns = clock_ns
        self._creating: dict[str, _Call] = {}
        """By request id, the calls of create exchanges still running."""
        self.open: OrderedDict[str, _Turn] = OrderedDict()
        """Open turn spans by turn id, least recently active first."""
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        """Open call spans by call id (a background response's outlives its create)."""
        self._closed: OrderedDict[str, _Turn] = OrderedDict()
        """Recently ended turns with their spans as stubs: a late call still lands in the trace."""

    # -- hooks -----------------------------------------------------------------------------------
    def response_started(self, ex: Exchange) -> None:
        if not ex.route.creates_call:
            if ex.response_id is not None:  # a poll, resume or cancel of a response runtap traced
                call = self._calls.get(ex.response_id)
                if call is not None:
                    ex.trace_id = call.turn.trace_id
            return
        turn = (self.open.get(ex.run_id) or self._closed.get(ex.run_id)) if ex.run_id else None
        if turn is None:
            turn = self._start_turn(ex)
        ex.trace_id = turn.trace_id
        self._creating[ex.request_id] = self._start_call(ex, turn)

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        if not event.changes:
            if event.source == "sse":  # a part or a chunk that changed no state: content is coming
                self._first_chunk(ex, event)
            return
        for state in event.changes:
            kind = type(state)
            if kind is ModelCall:
                self._on_call(ex, state, event)  # type: ignore[arg-type]
            elif kind is RunState and state.api != "assistants":
                self._on_turn(ex, state, event)  # type: ignore[arg-type]
            elif kind is ToolCallState:
                self._on_tool(state)  # type: ignore[arg-type]

    def deltas(self, ex: Exchange, deltas: Deltas) -> None:
        call = self._creating.get(ex.request_id)
        if call is not None and not call.timed:
            call.timed = True
            call.span.attributes[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = max(0, _ns(deltas[2]) - call.start_ns) / 1e9

    def exchange_finished(self, ex: Exchange) -> None:
        call = self._creating.pop(ex.request_id, None)
        if call is not None and call.call_id is None:  # no model call came of it (an error answer, a cut)
            sc.record_error(call.span, sc.exchange_error_type(ex.status, ex.outcome), ex.error)
            now_ns = self._clock_ns()
            self._spans.end(call.span, now_ns)
            turn = call.turn
            if turn.run_id is None:  # the turn it would have started never began
                sc.record_error(turn.span, sc.exchange_error_type(ex.status, ex.outcome), ex.error)
                self._spans.end(turn.span, now_ns)
        self.sweep()

    # -- turns -----------------------------------------------------------------------------------
    def _start_turn(self, ex: Exchange) -> _Turn:
        parent = _client_span(ex.traceparent) if ex.traceparent else None
        provider = sc.provider_for_path(ex.path)
        attributes: dict[str, Any] = {sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT, sc.GEN_AI_PROVIDER_NAME: provider,
                                      INFERRED: True, **self._server}
        body = ex.request_json or {}
        if isinstance(body.get("model"), str):
            attributes[sc.GEN_AI_REQUEST_MODEL] = body["model"]
        start_ns = _ns(ex.started_at)
        span = self._spans.start(sc.OP_INVOKE_AGENT, SpanKind.CLIENT, attributes, start_ns, parent)
        return _Turn(span, format(span.trace_id, "032x"), start_ns, provider, start_ns)

    def _on_turn(self, ex: Exchange, run: RunState, event: RunEvent) -> None:
        turn = self.open.get(run.run_id)
        if turn is None:
            if event.source == "request":
                return  # another turn a request found abandoned: not the one this exchange starts
            call = self._creating.get(ex.request_id)
            if call is None or call.turn.run_id not in (None, run.run_id) or run.run_id in self._closed:
                return  # a turn this exchange did not start, or one already ended
            turn = call.turn
            turn.run_id = run.run_id
            turn.span.attributes[RUN_ID] = run.run_id
            self._admit(turn)
        turn.last_ns = _ns(event.received_at)
        self.open.move_to_end(run.run_id)
        if run.status in TURN_ENDED:
            if any(not span.end_ns for span in turn.calls.values()):
                turn.ending = run
            else:
                self._end_turn(turn, run, max(turn.last_ns, turn.start_ns))

    def _admit(self, turn: _Turn) -> None:
        while len(self.open) >= self._max_open:
            _, oldest = self.open.popitem(last=False)
            self._abandon(oldest, self._clock_ns(), "evicted")
        self.open[turn.run_id or ""] = turn

    def _end_turn(self, turn: _Turn, run: RunState, end_ns: int) -> None:
        # A turn that did not reach its answer (cancelled, truncated, abandoned) is an error too.
        self._close(turn, end_ns, end_attributes(turn.span, run, errors=TURN_ERRORS))

    def _abandon(self, turn: _Turn, now_ns: int, why: str) -> None:
        turn.span.attributes[RUN_ABANDONED] = why
        sc.record_error(turn.span, "abandoned", f"no end of the turn seen ({why})")
        self._close(turn, max(now_ns, turn.start_ns), "abandoned")

    def _close(self, turn: _Turn, end_ns: int, error_type: str | None) -> None:
        for call_id, span in turn.tools.items():
            if error_type:
                sc.record_error(span, error_type)
            self._spans.end(span, max(end_ns, span.start_ns))
            turn.done.add(call_id)
        turn.tools.clear()
        for call_id in [c for c, span in turn.calls.items() if not span.end_ns]:
            call = self._calls.pop(call_id, None)
            if call is not None:
                sc.record_error(call.span, error_type or "abandoned")
                self._end_call(call, end_ns)
        self._spans.end(turn.span, end_ns)
        if turn.run_id is None:
            return
        self.open.pop(turn.run_id, None)
        turn.span = turn.span.stub()
        turn.calls = {c: span.stub() for c, span in turn.calls.items()}
        self._closed[turn.run_id] = turn
        if len(self._closed) > self._max_open:
            self._closed.popitem(last=False)

    def sweep(self, now_ns: int | None = None) -> None:
        """End the turns idle for `abandoned_run_s` (least recently active first; O(1) when none is)."""
        now_ns = self._clock_ns() if now_ns is None else now_ns
        while self.open:
            turn = next(iter(self.open.values()))
            if turn.last_ns + self._idle_ns > now_ns:
                return
            self.open.popitem(last=False)
            self._abandon(turn, now_ns, "timeout")

    def close(self) -> None:
        """At shutdown: end every open span, so the batch processor can still export them."""
        now_ns = self._clock_ns()
        for turn in list(self.open.values()):
            self._abandon(turn, now_ns, "shutdown")
        for call in [*self._creating.values(), *self._calls.values()]:
            self._end_call(call, now_ns)
            if not call.turn.span.end_ns:
                self._spans.end(call.turn.span, now_ns)
        self._creating.clear()
        self._calls.clear()
        self.open.clear()

    # -- model calls -----------------------------------------------------------------------------
    def _start_call(self, ex: Exchange, turn: _Turn) -> _Call:
        body = ex.request_json or {}
        attributes: dict[str, Any] = {sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT, sc.GEN_AI_PROVIDER_NAME: turn.provider,
                                      sc.GEN_AI_REQUEST_STREAM: ex.streamed, **self._server}
        api_type = sc.OPENAI_API_TYPES.get(ex.route.api.name if ex.route.api else "")
        if api_type:
            attributes[sc.OPENAI_API_TYPE] = api_type
        for key, name in _REQUEST_ATTRIBUTES:
            value = body.get(key)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                attributes[name] = value
        if self._capture:
            attributes.update(sc.turn_input_content(body))
        model = attributes.get(sc.GEN_AI_REQUEST_MODEL)
        start_ns = _ns(ex.started_at)
        span = self._spans.start(f"{sc.OP_CHAT} {model}" if model else sc.OP_CHAT, SpanKind.CLIENT, attributes,
                                 start_ns, turn.span)
        return _Call(span, start_ns, turn, timed=not ex.streamed)

    def _on_call(self, ex: Exchange, state: ModelCall, event: RunEvent) -> None:
        call = self._calls.get(state.call_id)
        if call is None:
            call = self._creating.get(ex.request_id)
            if call is None or call.call_id not in (None, state.call_id):
                return  # first seen by a poll runtap did not see created (a restart): no span
            if call.call_id is None:
                call.call_id = state.call_id
                call.span.attributes[sc.GEN_AI_RESPONSE_ID] = state.call_id
                call.turn.calls[state.call_id] = call.span
                self._calls[state.call_id] = call
                while len(self._calls) > self._max_open:  # background responses nobody polls to their end
                    _, oldest = self._calls.popitem(last=False)
                    sc.record_error(oldest.span, "abandoned")
                    self._end_call(oldest, self._clock_ns())
            elif call.span.end_ns:
                return  # ended already: a later look at it (a Chat exchange's end after its usage chunk)
        attributes = call.span.attributes
        if state.model:
            attributes[sc.GEN_AI_RESPONSE_MODEL] = state.model
        if state.conversation_id:
            attributes[sc.GEN_AI_CONVERSATION_ID] = state.conversation_id
            call.turn.span.attributes[sc.GEN_AI_CONVERSATION_ID] = state.conversation_id
        at_ns = max(_ns(event.received_at), call.start_ns)
        for item_id, kind, added_at, done_at in state.tools:
            if done_at is not None and item_id not in call.turn.done:
                call.turn.done.add(item_id)
                start_ns = max(_ns(added_at), call.start_ns) if added_at is not None else at_ns
                span = self._spans.start(f"{sc.OP_EXECUTE_TOOL} {kind}", SpanKind.INTERNAL, {
                    sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: kind,
                    sc.GEN_AI_TOOL_CALL_ID: item_id, sc.GEN_AI_TOOL_TYPE: sc.builtin_tool_type(kind)},
                    start_ns, call.span)
                self._spans.end(span, max(_ns(done_at), start_ns))
        turn = call.turn
        turn.last_ns = at_ns
        if state.final or state.status == "truncated":
            del self._calls[state.call_id]
            self._finish_call(call, state)
            self._end_call(call, at_ns)
            if turn.ending is not None and turn.run_id in self.open and all(s.end_ns for s in turn.calls.values()):
                self._end_turn(turn, turn.ending, at_ns)

    def _finish_call(self, call: _Call, state: ModelCall) -> None:
        span = call.span
        _usage(span, state.input_tokens, state.output_tokens)
        if state.cached_tokens is not None:
            span.attributes[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = state.cached_tokens
        if state.reasoning_tokens is not None:
            span.attributes[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = state.reasoning_tokens
        if state.finish_reason:
            span.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = (state.finish_reason,)
        if self._capture and state.text:
            span.attributes[sc.GEN_AI_OUTPUT_MESSAGES] = sc.output_messages(state.text)
        if state.status == "failed":
            sc.record_error(span, state.error_code or "failed", state.error_message)
        elif state.status in ("cancelled", "truncated"):
            sc.record_error(span, state.status)

    def _end_call(self, call: _Call, end_ns: int) -> None:
        self._spans.end(call.span, max(end_ns, call.start_ns))
        if call.call_id is not None and call.call_id in call.turn.calls and call.turn.span.end_ns:
            call.turn.calls[call.call_id] = call.span.stub()

    def _first_chunk(self, ex: Exchange, event: RunEvent) -> None:
        call = self._creating.get(ex.request_id)
        if call is not None and not call.timed and call.call_id is not None:
            call.timed = True
            ttfc = max(0, _ns(event.received_at) - call.start_ns) / 1e9
            call.span.attributes[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttfc

    # -- client tool calls -----------------------------------------------------------------------
    def _on_tool(self, tool: ToolCallState) -> None:
        turn = self.open.get(tool.run_id) if tool.run_id else None
        if turn is None or tool.requested_at is None or tool.tool_call_id in turn.done:
            return
        span = turn.tools.get(tool.tool_call_id)
        if span is None:
            parent = turn.calls.get(tool.step_id or "") or turn.span
            name = tool.name or tool.type or "tool"
            attributes: dict[str, Any] = {
                sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: name,
                sc.GEN_AI_TOOL_CALL_ID: tool.tool_call_id, sc.GEN_AI_TOOL_TYPE: sc.TOOL_TYPE_FUNCTION, INFERRED: True}
            if self._capture and tool.arguments is not None:
                attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = tool.arguments
            span = turn.tools[tool.tool_call_id] = self._spans.start(
                f"{sc.OP_EXECUTE_TOOL} {name}", SpanKind.INTERNAL, attributes,
                max(_ns(tool.requested_at), turn.start_ns), parent)
        if tool.submitted_at is not None:
            if self._capture and tool.output is not None:
                span.attributes[sc.GEN_AI_TOOL_CALL_RESULT] = tool.output
            self._spans.end(span, max(_ns(tool.submitted_at), span.start_ns))
            del turn.tools[tool.tool_call_id]
            turn.done.add(tool.tool_call_id)
