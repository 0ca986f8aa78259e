"""Prometheus metrics: a `CollectorRegistry` per app, the instruments, and the observer feeding them.

Names follow contract §8: the GenAI client metrics of semconv v1.41.0 (semconv.py), runtap's own
`runtap_*` series, and the recorder's health read from the writer at scrape time. Everything is
served as `GET /metrics` on the admin listener (`add_metrics_route`).

Rules this module owns (architecture.md §9 rules 4, 9):
- Labels only from bounded sets: route templates, status classes, outcomes, step and tool types,
  run statuses, and the model / reason / tool-name values capped by `LabelCap` (the first
  `limit` distinct values, then "other"). Never a key, an id or a URL: keys appear as their
  configured alias, "other" until budgets exist.
- A run is counted once, when it is first seen in a terminal status, from its final usage
  (contract §6), however many exchanges and polls it spanned; steps and tool calls likewise. Only
  runs watched before their end count (not old runs in a listing). The ids are remembered in
  bounded LRU sets.
- Hooks do O(1) work per event, because they run beside the stream (forward.py defers them
  behind the relay). The instruments are instruments.py's: lock-free, written from the loop only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ..exchange import Deltas, Exchange, RunEvent
from ..observers import Observer
from ..runs import STEP_TERMINAL, ModelCall, RunState, RunStore, StepState, ToolCallState
from ..tap import Tap
from . import semconv as sc
from .instruments import LoopCounter, LoopHistogram

OTHER = "other"
"""The label value for everything past a cap, and the key alias of keys with no budget entry."""
UNKNOWN = "unknown"
HOOKS = ("exchange_started", "response_started", "run_event", "exchange_finished")
ADDED_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
FIRST_EVENT_BUCKETS = (0.001, 0.0025, 0.005, *sc.DURATION_BUCKETS)
_DELTAS = frozenset({"thread.message.delta", "thread.run.step.delta"})
_ERROR_STATUSES = frozenset({"failed", "expired"})

KeyAlias = Callable[[str | None], str]


def no_alias(key_id: str | None) -> str:
    return OTHER


class LabelCap:
    """At most `limit` distinct values for one label; later newcomers become "other".

    Model names, error codes and tool names come from the upstream or the client: bounded in
    practice, not by construction. The cap makes the series count bounded by construction.
    """

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return UNKNOWN
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OTHER


class _Once:
    """True the first time a key is offered; remembers the last `limit` keys (LRU)."""

    __slots__ = ("_keys", "_limit")

    def __init__(self, limit: int) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def first(self, key: str) -> bool:
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._limit:
            self._keys.popitem(last=False)
        return True


def _status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


def _elapsed(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else _elapsed(start, end)


class MetricsObserver(Observer):
    """Turns exchanges and run events into the contract §8 series."""

    name = "metrics"

    def __init__(self, registry: CollectorRegistry, tracker: RunStore | None = None, *,
                 key_alias: KeyAlias = no_alias, max_tracked: int = 50_000, label_cap: int = 100) -> None:
        self._tracker = tracker
        self._key_alias = key_alias
        self._models, self._reasons, self._tools = LabelCap(label_cap), LabelCap(label_cap), LabelCap(label_cap)
        self._counted = _Once(3 * max_tracked)
        """Run, step and tool-call ids already counted (their prefixes keep them apart)."""
        self._waited = _Once(max_tracked)
        """Tool calls whose client time was observed (a later snapshot carries it again)."""
        self._live = _Once(max_tracked)
        """Runs seen before their end. Only these are counted: a run first met already finished (a
        listing after a restart, a run made by another client) ended before this process watched."""
        self._first_chunk: dict[str, Exchange] = {}
        """Streams that may create model output and have not yet shown a delta."""
        r = registry
        self.requests = LoopCounter("runtap_requests", "HTTP exchanges through the proxy, by route template and "
                                "status class.", ["route", "status_class"], registry=r)
        self.outcomes = LoopCounter("runtap_request_outcomes", "How exchanges ended as transport (completed, "
                                "upstream_error, truncated, client_gone, rejected).", ["outcome"], registry=r)
        self.added_latency = LoopHistogram(
            "runtap_added_latency_seconds", "The proxy's own share of time to first byte: from the exchange "
            "being built to the request going to the upstream client, plus from the upstream's headers to "
            "the client's headers written.", registry=r, buckets=ADDED_LATENCY_BUCKETS)
        self.first_event = LoopHistogram(
            "runtap_time_to_first_event_seconds", "From the exchange's start to the first SSE event of a stream.",
            ["route"], registry=r, buckets=FIRST_EVENT_BUCKETS)
        self.first_chunk = LoopHistogram(
            sc.TIME_TO_FIRST_CHUNK_METRIC, "From a run-creating streamed request's start to its first content "
            "delta (message or tool-call delta).", ["gen_ai_operation_name", "gen_ai_provider_name",
                                                    "gen_ai_request_model"], registry=r, buckets=FIRST_EVENT_BUCKETS)
        self.runs = LoopCounter("runtap_runs", "Runs, counted once at their terminal status.", ["status", "model"],
                            registry=r)
        self.end_reasons = LoopCounter(
            "runtap_run_end_reasons", "Runs that did not complete: last_error.code for failed runs, "
            "incomplete_details.reason for incomplete ones, else the status.", ["status", "reason"], registry=r)
        self.steps = LoopCounter("runtap_run_steps", "Run steps, counted once at their terminal status.",
                             ["type", "status"], registry=r)
        self.tool_calls = LoopCounter("runtap_tool_calls", "Tool calls the model made, by tool type.", ["type"],
                                  registry=r)
        self.tool_client_time = LoopHistogram(
            "runtap_tool_call_client_seconds", "Client tool time of function calls: from requires_action (the end "
            "of the response or completion that asked) to the request that answered them.", ["name"], registry=r,
            buckets=sc.DURATION_BUCKETS)
        self.tokens = LoopCounter("runtap_tokens", "Tokens of finished runs (their final usage, counted once).",
                              ["type", "model", "key_alias"], registry=r)
        self.token_usage = LoopHistogram(
            sc.TOKEN_USAGE_METRIC, "Tokens per operation: per run (invoke_agent) and per run step (chat).",
            ["gen_ai_token_type", "gen_ai_operation_name", "gen_ai_request_model", "gen_ai_provider_name"],
            registry=r, buckets=sc.TOKEN_USAGE_BUCKETS)
        self.duration = LoopHistogram(
            sc.OPERATION_DURATION_METRIC, "Duration of runs (invoke_agent, creation to terminal status) and of "
            "run steps (chat).", ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                                  "error_type"], registry=r, buckets=sc.DURATION_BUCKETS)
        self.observer_errors = LoopCounter("runtap_observer_errors", "Observer hooks that raised (the stream went on).",
                                       ["observer", "hook"], registry=r)
        self.turns = LoopCounter("runtap_turns", "Responses and Chat turns (a user request to its final answer), "
                                 "counted once at their end, by how they ended.", ["api", "status"], registry=r)
        self.model_calls = LoopCounter(
            "runtap_model_calls", "Responses API responses and Chat completions, counted once at their end, by "
            "their own final status.", ["api", "status"], registry=r)

    # -- the error series ------------------------------------------------------------------------
    def watch_observers(self, names: Iterable[str]) -> None:
        """Export a zero for every observer and hook, so the error series exist before any error."""
        for observer in names:
            for hook in HOOKS:
                self.observer_errors.inc((observer, hook), 0)

    def observer_error(self, observer: str, hook: str) -> None:
        """`Observers(on_error=...)`: one hook of one observer raised."""
        self.observer_errors.inc((observer, hook))

    # -- hooks ---------------------------------------------------------------------------------
    def response_started(self, ex: Exchange) -> None:
        if ex.t_sent is not None and ex.t_upstream_headers is not None and ex.t_headers is not None:
            self.added_latency.observe((), (ex.t_sent - ex.t_start) + (ex.t_headers - ex.t_upstream_headers))
        if ex.streamed and ex.route.creates_run:
            self._first_chunk[ex.request_id] = ex

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        if event.seq == 0 and event.source == "sse":
            self.first_event.observe((ex.route.template,), _elapsed(ex.started_at, event.received_at))
        if self._first_chunk and event.name in _DELTAS:
            self._first_delta(ex, event.received_at)
        live = self._live
        for state in event.changes:
            kind = type(state)
            if kind is RunState:
                if not state.terminal:
                    live.first(state.run_id)
                elif (state.run_id in live or state.api != "assistants") and self._counted.first(state.run_id):
                    # An Assistants run first seen ended was listed or polled after the fact; a
                    # Responses or Chat turn is runtap's own stitching of creates it relayed, so a
                    # JSON create that is its whole turn counts too.
                    self._run_ended(ex, state, event.received_at)
            elif kind is StepState:
                if state.status in STEP_TERMINAL and state.run_id in live and self._counted.first(state.step_id):
                    self._step_ended(ex, state, event.received_at, event.source == "sse")
            elif kind is ToolCallState and state.run_id in live:
                self._tool_call(state, event)
            elif kind is ModelCall and state.final and self._counted.first("call:" + state.call_id):
                self._model_call_ended(ex, state, event.received_at)

    def exchange_finished(self, ex: Exchange) -> None:
        self._first_chunk.pop(ex.request_id, None)
        self.requests.inc((ex.route.template, _status_class(ex.status)))
        outcome = ex.outcome
        if outcome is not None:
            self.outcomes.inc((outcome.value,))

    # -- what the hooks count ------------------------------------------------------------------
    def _model(self, ex: Exchange) -> str:
        run = self._tracker.runs.get(ex.run_id) if self._tracker is not None and ex.run_id else None
        return self._models(run.model if run is not None else None)

    def deltas(self, ex: Exchange, deltas: Deltas) -> None:
        # Delta frames: only the first of an exchange's is timed (time to first chunk).
        if self._first_chunk:
            self._first_delta(ex, deltas[2])

    def _first_delta(self, ex: Exchange, received_at: datetime) -> None:
        if self._first_chunk.pop(ex.request_id, None) is None:
            return
        labels = (sc.OP_INVOKE_AGENT, sc.provider_for_path(ex.path), self._model(ex))
        self.first_chunk.observe(labels, _elapsed(ex.started_at, received_at))

    def _run_ended(self, ex: Exchange, run: RunState, at: datetime) -> None:
        status = run.status or UNKNOWN
        model = self._models(run.model)
        provider = sc.provider_for_path(ex.path)
        self.runs.inc((status, model))
        error = ""
        if status != "completed":
            reason = self._reasons(run.last_error_code or run.incomplete_reason or status)
            self.end_reasons.inc((status, reason))
            if status in _ERROR_STATUSES:
                error = reason if status == "failed" else status
        if run.api != "assistants":
            self.turns.inc((run.api, status))
        alias = self._key_alias(run.key_id)
        for token_type, count in ((sc.TOKEN_INPUT, run.prompt_tokens), (sc.TOKEN_OUTPUT, run.completion_tokens)):
            if count is not None:
                self.tokens.inc((token_type, model, alias), count)
                self.token_usage.observe((token_type, sc.OP_INVOKE_AGENT, model, provider), count)
        duration = _seconds(run.first_seen_at, at)
        if duration is not None:
            self.duration.observe((sc.OP_INVOKE_AGENT, provider, model, error), duration)

    def _model_call_ended(self, ex: Exchange, call: ModelCall, at: datetime) -> None:
        """A response or completion ended: its status, its cached and reasoning tokens (parts of the
        turn's input and output, counted when the turn ends), its tokens and duration as a `chat`
        operation (timed when the exchange that created it saw it end: runtap's clock throughout)."""
        api = ex.route.api.name if ex.route.api is not None else UNKNOWN
        self.model_calls.inc((api, call.status or UNKNOWN))
        model = self._models(call.model)
        provider = sc.provider_for_path(ex.path)
        alias = self._key_alias(ex.key_id)
        for token_type, count in ((sc.TOKEN_CACHED, call.cached_tokens), (sc.TOKEN_REASONING, call.reasoning_tokens)):
            if count:
                self.tokens.inc((token_type, model, alias), count)
        for token_type, count in ((sc.TOKEN_INPUT, call.input_tokens), (sc.TOKEN_OUTPUT, call.output_tokens)):
            if count is not None:
                self.token_usage.observe((token_type, sc.OP_CHAT, model, provider), count)
        if ex.route.creates_call:
            duration = _seconds(ex.started_at, at)
            if duration is not None:
                error = self._reasons(call.error_code or "failed") if call.status == "failed" else ""
                self.duration.observe((sc.OP_CHAT, provider, model, error), duration)

    def _step_ended(self, ex: Exchange, step: StepState, at: datetime, streamed: bool) -> None:
        status = step.status or UNKNOWN
        self.steps.inc((step.type or UNKNOWN, status))
        run = self._tracker.runs.get(step.run_id) if self._tracker is not None and step.run_id else None
        model = self._models(run.model if run is not None else None)
        provider = sc.provider_for_path(ex.path)
        for token_type, count in ((sc.TOKEN_INPUT, step.prompt_tokens), (sc.TOKEN_OUTPUT, step.completion_tokens)):
            if count is not None:
                self.token_usage.observe((token_type, sc.OP_CHAT, model, provider), count)
        # Timed only when watched live, from when runtap saw it start to its end (a stream's step
        # may start and end in one chunk: 0 s as relayed): a step first seen already ended (a
        # steps listing after the run) has only the upstream's timestamps, data, never durations.
        live = step.first_seen_at is not None and (streamed or step.first_seen_at < at)
        duration = _seconds(step.first_seen_at, at) if live else None
        if duration is not None:
            error = self._reasons(step.last_error_code or status) if status in ("failed", "expired") else ""
            self.duration.observe((sc.OP_CHAT, provider, model, error), duration)

    def _tool_call(self, call: ToolCallState, event: RunEvent) -> None:
        if call.type is not None and self._counted.first(call.tool_call_id):
            self.tool_calls.inc((call.type,))
        # Assistants: the submit_tool_outputs request sets submitted_at; Responses and Chat: the next
        # create, seen with its response. Either way once per call.
        if call.requested_at is not None and call.submitted_at is not None and self._waited.first(call.tool_call_id):
            waited = _seconds(call.requested_at, call.submitted_at)
            if waited is not None:
                self.tool_client_time.observe((self._tools(call.name),), waited)


class WriterStats(Protocol):
    @property
    def queue_depth(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    rows_written_total: int
    spilled_rows_total: int
    write_errors_total: int
    lost_rows_total: int


class RecorderCollector:
    """The recorder's health, read from the writer when Prometheus scrapes (no hot-path cost)."""

    def __init__(self, writer: WriterStats) -> None:
        self._writer = writer

    def collect(self) -> Iterator[Metric]:
        w = self._writer
        yield GaugeMetricFamily("runtap_recorder_queue_depth", "Rows waiting for the writer thread.",
                                value=w.queue_depth)
        yield GaugeMetricFamily("runtap_recorder_healthy", "1 while the last batch reached the database.",
                                value=1 if w.healthy else 0)
        for name, value, doc in (
            ("runtap_recorder_rows_written", w.rows_written_total, "Rows committed to DuckDB."),
            ("runtap_recorder_spilled_rows", w.spilled_rows_total, "Rows the database refused, kept in the spill."),
            ("runtap_recorder_write_errors", w.write_errors_total, "Batches the database refused."),
            ("runtap_recorder_lost_rows", w.lost_rows_total, "Rows neither the database nor the spill took."),
            ("runtap_tap_errors", Tap.errors, "Failures swallowed while parsing relayed bytes (process-wide)."),
        ):
            yield CounterMetricFamily(name, doc, value=value)


def make_registry(writer: WriterStats, tracker: RunStore, *, key_alias: KeyAlias = no_alias,
                  max_tracked: int = 50_000) -> tuple[CollectorRegistry, MetricsObserver]:
    """The app's own registry (never the global REGISTRY: two apps in one process, as in tests,
    must not share series) with the recorder collector and the metrics observer registered."""
    registry = CollectorRegistry()
    registry.register(RecorderCollector(writer))
    return registry, MetricsObserver(registry, tracker, key_alias=key_alias, max_tracked=max_tracked)


def add_metrics_route(app: web.Application, registry: CollectorRegistry | None) -> None:
    """`GET /metrics` in the text format (or OpenMetrics when the scraper asks for it)."""
    if registry is None:
        return

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Off the event loop: a large exposition must not stall the relay.
        body = await asyncio.to_thread(encoder, registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/metrics", metrics)
