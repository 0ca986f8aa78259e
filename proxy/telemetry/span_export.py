"""Ended span records → batches → an exporter, on a thread of the pipeline's own.

The loop's share is `emit()`: a deque append, and waking the thread once a batch is full. The
rest happens on the export thread: the exporter turns the records into what it sends. runtap's
OTLP/HTTP exporter (otlp_http.py) encodes them straight to protobuf; for the SDK's exporters
(`SdkExporter`: the in-memory one of the tests, or any other `SpanExporter`) each record becomes a
`ReadableSpan`, with the environment's attribute limits applied. This is the SDK's
`BatchSpanProcessor` with the span objects built off the loop instead of on it (spans.py says
why).

Batching follows the SDK's variables and defaults: `OTEL_BSP_SCHEDULE_DELAY` (ms, 5000),
`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512), `OTEL_BSP_MAX_QUEUE_SIZE` (2048). When the queue is full a
span is dropped and counted, never waited for: the loop must not block on telemetry.

Failure policy: an exporter that raises is logged and its batch dropped (tracing.CountingExporter
counts it); nothing reaches the loop.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, Status, StatusCode

from .spans import SAMPLED, SpanRecord

log = logging.getLogger("runtap.tracing")

SCHEDULE_DELAY_MS = 5000
MAX_EXPORT_BATCH = 512
MAX_QUEUE = 2048
SHUTDOWN_JOIN_S = 30.0
_UNSET = Status(StatusCode.UNSET)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, default))
    except ValueError:
        log.warning("%s is not an integer; using %d", name, default)
        return default
    return value if value > 0 else default


class RecordExporter(Protocol):
    """What the pipeline exports to; called on the export thread only."""

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        """Send `spans`; True when they were delivered."""
        ...

    def force_flush(self) -> bool: ...

    def shutdown(self) -> None: ...


class SdkExporter:
    """Any SDK `SpanExporter`, fed `ReadableSpan`s built from the records."""

    def __init__(self, exporter: SpanExporter, resource: Resource, scope: InstrumentationScope) -> None:
        self.inner = exporter
        self._resource = resource
        self._scope = scope
        limits = SpanLimits()
        self._max_attributes = limits.max_span_attributes
        self._max_length = limits.max_span_attribute_length

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        return self.inner.export([self.readable(span) for span in spans]) is SpanExportResult.SUCCESS

    def readable(self, span: SpanRecord) -> ReadableSpan:
        context = SpanContext(span.trace_id, span.span_id, False, SAMPLED)
        parent = SpanContext(span.trace_id, span.parent_id, span.remote_parent, SAMPLED) if span.parent_id else None
        attributes = span.attributes
        if self._max_length is not None or len(attributes) > self._max_attributes:
            attributes = BoundedAttributes(self._max_attributes, attributes, immutable=True,
                                           max_value_len=self._max_length)
        status = _UNSET if span.error is None else Status(StatusCode.ERROR, span.error)
        # ReadableSpan's constructor is public: it is how spans reach any SDK exporter.
        return ReadableSpan(span.name, context, parent, self._resource, attributes, kind=span.kind, status=status,
                            start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=self._scope)

    def force_flush(self) -> bool:
        return self.inner.force_flush()

    def shutdown(self) -> None:
        self.inner.shutdown()


class SpanExport:
    """Ships ended span records to `exporter`: in batches on its own thread, or (`batch=False`,
    for tests that read spans synchronously) each one as it ends, on the caller's thread."""

    def __init__(self, exporter: RecordExporter, *, batch: bool = True, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._exporter = exporter
        self._delay_s = _env_int(env, OTEL_BSP_SCHEDULE_DELAY, SCHEDULE_DELAY_MS) / 1000
        self._max_batch = _env_int(env, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, MAX_EXPORT_BATCH)
        self._max_queue = max(_env_int(env, OTEL_BSP_MAX_QUEUE_SIZE, MAX_QUEUE), self._max_batch)
        self._queue: collections.deque[SpanRecord] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        """Held while exporting: the thread and a flush never export at once."""
        self._closed = False
        self.dropped = 0
        """Spans dropped before an export: the queue was full, or the pipeline had shut down."""
        self._thread: threading.Thread | None = None
        if batch:
            self._thread = threading.Thread(target=self._run, name="runtap-span-export", daemon=True)
            self._thread.start()

    # -- the loop's side -----------------------------------------------------------------------
    def emit(self, span: SpanRecord) -> None:
        """Queue an ended span (O(1); never blocks, never raises)."""
        queue = self._queue
        if self._closed or len(queue) >= self._max_queue:
            self.dropped += 1
            return
        queue.append(span)
        if self._thread is None:
            self._export_queued()
        elif len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    # -- the export thread's side ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._export_queued()

    def _export_queued(self) -> None:
        with self._lock:
            queue = self._queue
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
                try:
                    self._exporter.export(batch)
                except Exception:
                    log.exception("span export raised; %d spans dropped", len(batch))

    # -- lifecycle ---------------------------------------------------------------------------------
    def force_flush(self) -> bool:
        """Export everything queued now, on the caller's thread (blocks: call it off the loop)."""
        if self._closed:
            return False
        self._export_queued()
        return self._exporter.force_flush()

    def shutdown(self) -> None:
        """Export what is queued, stop the thread, shut the exporter down. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._wake.set()
            self._thread.join(SHUTDOWN_JOIN_S)
            if self._thread.is_alive():
                # Still exporting (a collector that keeps failing, retried): stop its retries and
                # give up on the rest rather than hold the shutdown.
                queued = len(self._queue)
                self._queue.clear()  # dropped means not exported later either, when the busy export returns
                self.dropped += queued
                log.warning("span export still busy after %.0f s at shutdown; %d queued spans dropped",
                            SHUTDOWN_JOIN_S, queued)
                self._exporter.shutdown()
                return
        self._export_queued()
        self._exporter.shutdown()
