"""Spans as plain records: what the tracing observer builds on the event loop (issue #4).

The SDK's `Tracer.start_span` costs 40-90 us per span on the loop (sampler call, context objects,
`BoundedAttributes` validating each value under a lock, the span processor hooks), and a run has
two to a dozen spans. runtap's spans are few and their attributes are built by runtap itself, so
on the loop a span is only a `SpanRecord`: a name, ids, times and a plain attribute dict. The
export thread (span_export.py) turns the finished records into what the exporter takes.

What the SDK would have done, and where it still happens:
- ids come from the SDK's id generator (`OTEL_PYTHON_ID_GENERATOR` is honoured through the
  `TracerProvider` built from the environment);
- sampling is decided once per trace, by the environment's sampler (`OTEL_TRACES_SAMPLER`), for
  the span that starts it (a run's `invoke_agent`, local root or child of the client's
  `traceparent`); its children follow it, as under the default `parentbased_always_on`;
- attribute values are runtap's own (str, bool, int, float, tuples of str): nothing to validate;
  the environment's attribute limits are applied off the loop (span_export.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

SAMPLED = TraceFlags(TraceFlags.SAMPLED)


@dataclass(slots=True, eq=False)
class SpanRecord:
    """One span as the loop builds it. Mutate `attributes` freely until `Spans.end()`; after that
    the record belongs to the export thread and must not change."""

    name: str
    kind: SpanKind
    trace_id: int
    span_id: int
    parent_id: int
    """The parent's span id; 0 for a root span."""
    remote_parent: bool
    """The parent is the client's span (from its `traceparent`), not one of runtap's."""
    sampled: bool
    start_ns: int
    attributes: dict[str, Any]
    end_ns: int = 0
    """0 while the span is open."""
    error: str | None = None
    """The description of an Error status (semconv.record_error); None leaves the status unset."""

    def stub(self) -> SpanRecord:
        """This span without its attributes, ended: what a child started after the end (a late step
        of an ended run) needs of it, without keeping the exported attributes alive."""
        return SpanRecord(self.name, self.kind, self.trace_id, self.span_id, self.parent_id, self.remote_parent,
                          self.sampled, self.start_ns, {}, self.end_ns or self.start_ns, self.error)


Parent = SpanRecord | SpanContext
"""One of runtap's spans, or the client's span (from its `traceparent`)."""
Emit = Callable[[SpanRecord], None]


class Spans:
    """Starts span records and hands each ended, sampled one to `emit` (the export pipeline)."""

    def __init__(self, emit: Emit, provider: TracerProvider) -> None:
        self._emit = emit
        self._sampler = provider.sampler
        self._default_sampler = self._sampler is sampling.DEFAULT_ON
        ids = provider.id_generator
        self._new_trace_id = ids.generate_trace_id
        self._new_span_id = ids.generate_span_id

    def start(self, name: str, kind: SpanKind, attributes: dict[str, Any], start_ns: int,
              parent: Parent | None = None) -> SpanRecord:
        """A span open from `start_ns` (epoch ns), child of `parent`; `attributes` is kept, not copied."""
        if type(parent) is SpanRecord:
            return SpanRecord(name, kind, parent.trace_id, self._new_span_id(), parent.span_id, False, parent.sampled,
                              start_ns, attributes)
        if parent is None:
            trace_id, parent_id, remote = self._new_trace_id(), 0, False
        else:
            assert isinstance(parent, SpanContext)
            trace_id, parent_id, remote = parent.trace_id, parent.span_id, parent.is_remote
        sampled = self._sample(parent, trace_id, name, kind, attributes)
        return SpanRecord(name, kind, trace_id, self._new_span_id(), parent_id, remote, sampled, start_ns, attributes)

    def end(self, span: SpanRecord, end_ns: int) -> None:
        """End `span` at `end_ns` (epoch ns); a second end changes nothing."""
        if span.end_ns:
            return
        span.end_ns = end_ns
        if span.sampled:
            self._emit(span)

    def _sample(self, parent: SpanContext | None, trace_id: int, name: str, kind: SpanKind,
                attributes: dict[str, Any]) -> bool:
        if self._default_sampler:  # parentbased_always_on, without building a Context
            return parent is None or parent.trace_flags.sampled
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes)
        if result.attributes:
            attributes.update(result.attributes)
        return result.decision.is_sampled()
