"""The hand-written encoding against the SDK's own encoder, both decoded by opentelemetry-proto."""

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from proxy.telemetry.otlp_encode import OtlpEncoder
from proxy.telemetry.span_export import SdkExporter
from proxy.telemetry.spans import SpanRecord

SCOPE = InstrumentationScope("runtap", "0.1.0", "https://opentelemetry.io/schemas/1.41.0")
RESOURCE = Resource.create({"service.name": "runtap", "service.version": "0.1.0", "deployment.shard": 3})


def _spans() -> list[SpanRecord]:
    run = SpanRecord("invoke_agent", SpanKind.CLIENT, 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203332,
                     0xB7AD6B7169203331, True, True, 1_795_000_000_000_000_000, {
                         "gen_ai.operation.name": "invoke_agent", "server.port": 443, "gen_ai.request.top_p": 0.5,
                         "gen_ai.usage.input_tokens": 120, "gen_ai.response.finish_reasons": ("stop",),
                         "negative": -3, "big": 2**62, "flag": False, "unicode": "météo ☀",
                         "gen_ai.output.messages": "x" * 300, "empty": "", "nothing": ()},
                     end_ns=1_795_000_001_000_000_000)
    step = SpanRecord("chat gpt-4o", SpanKind.CLIENT, run.trace_id, 0x1, run.span_id, False, True, run.start_ns + 5,
                      {"gen_ai.request.stream": True, "gen_ai.response.time_to_first_chunk": 0.25},
                      end_ns=run.end_ns, error="The model crashed.")
    tool = SpanRecord("execute_tool get_current_weather", SpanKind.INTERNAL, run.trace_id, 0xFFFFFFFFFFFFFFFF,
                      step.span_id, False, True, run.start_ns + 6, {}, end_ns=run.start_ns + 6)
    root = SpanRecord("invoke_agent", SpanKind.CLIENT, 0xFF << 120, 0x2, 0, False, True, 1, {"a": "b"}, end_ns=2)
    return [run, step, tool, root]


def _decoded(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def _sdk(spans: list[SpanRecord], resource: Resource = RESOURCE) -> ExportTraceServiceRequest:
    readable = SdkExporter(InMemorySpanExporter(), resource, SCOPE)
    return encode_spans([readable.readable(span) for span in spans])


@pytest.mark.parametrize("resource", [RESOURCE, Resource({"a": "b"}, "https://example.com/schema")])
def test_the_request_decodes_to_what_the_sdk_encodes(resource):
    spans = _spans()
    ours = _decoded(OtlpEncoder(resource, SCOPE).encode(spans))
    assert ours == _sdk(spans, resource)
    [resource_spans] = ours.resource_spans
    assert resource_spans.scope_spans[0].schema_url == SCOPE.schema_url
    run, step, tool, root = resource_spans.scope_spans[0].spans
    assert tool.kind == tool.SPAN_KIND_INTERNAL and tool.attributes == []
    assert run.flags == 0x300 and step.flags == 0x100 and root.parent_span_id == b""
    assert step.status.code == step.status.STATUS_CODE_ERROR and step.status.message == "The model crashed."


def test_the_environments_attribute_limits_apply_as_the_sdk_applies_them(monkeypatch):
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "5")
    spans = _spans()
    ours = _decoded(OtlpEncoder(RESOURCE, SCOPE).encode(spans))
    assert ours == _sdk(spans)
    run = ours.resource_spans[0].scope_spans[0].spans[0]
    assert len(run.attributes) == 5 and run.dropped_attributes_count == len(spans[0].attributes) - 5


def test_values_otlp_cannot_carry_are_left_out_and_logged(caplog):
    span = SpanRecord("x", SpanKind.INTERNAL, 1, 2, 0, False, True, 1, {
        "none": None, "dict": {"a": 1}, "huge": 2**64, "mixed": ("a", None), "kept": "yes"}, end_ns=2)
    [decoded] = _decoded(OtlpEncoder(RESOURCE, SCOPE).encode([span])).resource_spans[0].scope_spans[0].spans
    assert [a.key for a in decoded.attributes] == ["kept"]
    assert caplog.text.count("OTLP cannot carry") == 4


def test_an_empty_batch_is_a_valid_request():
    [resource_spans] = _decoded(OtlpEncoder(RESOURCE, SCOPE).encode([])).resource_spans
    assert list(resource_spans.scope_spans[0].spans) == []
