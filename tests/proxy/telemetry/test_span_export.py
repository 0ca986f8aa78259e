import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from proxy.telemetry import span_export
from proxy.telemetry.span_export import SdkExporter, SpanExport
from proxy.telemetry.spans import SpanRecord

SCOPE = InstrumentationScope("runtap", "0", "https://opentelemetry.io/schemas/1.41.0")


def _span(n: int = 1, **kwargs) -> SpanRecord:
    fields = {"name": "chat gpt-4o", "kind": SpanKind.CLIENT, "trace_id": 7, "span_id": n, "parent_id": 0,
              "remote_parent": False, "sampled": True, "start_ns": 10, "attributes": {"a": "value"}, "end_ns": 20}
    return SpanRecord(**{**fields, **kwargs})


class Recording:
    """A record exporter that keeps every batch; `gate` (when given) holds each export until set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[SpanRecord]] = []
        self.gate = gate
        self.entered = threading.Event()
        self.shut = False

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append(list(spans))
        return True

    def force_flush(self) -> bool:
        return True

    def shutdown(self) -> None:
        self.shut = True

    def count(self) -> int:
        return sum(len(b) for b in self.batches)


def _wait(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_record_reaches_sdk_exporters_as_the_span_it_describes():
    memory = InMemorySpanExporter()
    sdk = SdkExporter(memory, Resource.create({"service.name": "runtap"}), SCOPE)
    child = _span(2, parent_id=9, remote_parent=True, error="boom", attributes={"a": "value", "n": 3, "t": ("x",)})
    assert sdk.export([_span(), child])
    root, span = memory.get_finished_spans()
    assert root.parent is None and root.status.status_code is StatusCode.UNSET
    assert (span.name, span.kind, span.start_time, span.end_time) == ("chat gpt-4o", SpanKind.CLIENT, 10, 20)
    assert (span.context.trace_id, span.context.span_id, span.context.trace_flags.sampled) == (7, 2, True)
    assert (span.parent.trace_id, span.parent.span_id, span.parent.is_remote) == (7, 9, True)
    assert dict(span.attributes) == {"a": "value", "n": 3, "t": ("x",)}
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "boom")
    assert span.resource.attributes["service.name"] == "runtap" and span.instrumentation_scope == SCOPE


def test_the_environments_attribute_limits_apply_off_the_loop(monkeypatch):
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "3")
    memory = InMemorySpanExporter()
    SdkExporter(memory, Resource.create({}), SCOPE).export([_span()])
    [span] = memory.get_finished_spans()
    assert span.attributes["a"] == "val"


def test_unbatched_each_span_is_exported_as_it_ends():
    exporter = Recording()
    pipeline = SpanExport(exporter, batch=False, env={})
    pipeline.emit(_span(1))
    pipeline.emit(_span(2))
    assert [[s.span_id for s in b] for b in exporter.batches] == [[1], [2]]


def test_a_full_batch_wakes_the_export_thread_and_shutdown_exports_the_rest():
    exporter = Recording()
    pipeline = SpanExport(exporter, env={"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2", "OTEL_BSP_SCHEDULE_DELAY": "60000"})
    pipeline.emit(_span(1))
    time.sleep(0.05)
    assert exporter.batches == []  # one span waits for its batch (or the schedule)
    pipeline.emit(_span(2))
    _wait(lambda: exporter.count() == 2)
    pipeline.emit(_span(3))
    pipeline.shutdown()
    assert exporter.count() == 3 and exporter.shut
    pipeline.emit(_span(4))
    assert pipeline.dropped == 1 and not pipeline.force_flush()
    pipeline.shutdown()  # idempotent


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_loop():
    gate = threading.Event()
    exporter = Recording(gate)
    pipeline = SpanExport(exporter, env={"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2", "OTEL_BSP_MAX_QUEUE_SIZE": "2"})
    pipeline.emit(_span(1))
    pipeline.emit(_span(2))
    assert exporter.entered.wait(10)  # the thread holds the first batch in a slow export
    for n in (3, 4, 5):
        pipeline.emit(_span(n))
    assert pipeline.dropped == 1
    gate.set()
    pipeline.shutdown()
    assert sorted(s.span_id for b in exporter.batches for s in b) == [1, 2, 3, 4]


def test_an_exporter_that_raises_costs_its_batch_only(caplog):
    class Raising(Recording):
        def export(self, spans: Sequence[SpanRecord]) -> bool:
            raise ConnectionError("collector down")

    pipeline = SpanExport(Raising(), batch=False, env={})
    pipeline.emit(_span())
    assert "span export raised; 1 spans dropped" in caplog.text


@pytest.mark.parametrize("value", ["x", "0", "-5"])
def test_bad_batching_variables_fall_back_to_the_defaults(value):
    exporter = Recording()
    pipeline = SpanExport(exporter, env={"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": value}, batch=False)
    assert pipeline._max_batch == 512
    pipeline.shutdown()


def test_an_export_stuck_at_shutdown_is_stopped_not_waited_for(monkeypatch):
    monkeypatch.setattr(span_export, "SHUTDOWN_JOIN_S", 0.05)
    gate = threading.Event()
    exporter = Recording(gate)
    pipeline = SpanExport(exporter, env={"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2"})
    for n in (1, 2):
        pipeline.emit(_span(n))
    assert exporter.entered.wait(10)
    pipeline.emit(_span(3))
    pipeline.shutdown()
    assert exporter.shut and pipeline.dropped == 1
    gate.set()
    # The stuck export returns: the span counted as dropped is not exported after all.
    _wait(lambda: exporter.count() == 2)
    pipeline._thread.join(10)
    assert not pipeline._thread.is_alive()
    assert [[s.span_id for s in b] for b in exporter.batches] == [[1, 2]]
