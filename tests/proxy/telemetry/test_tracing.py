from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from proxy.apis.assistants.runs import RunTracker
from proxy.app import PARTS, make_app
from proxy.config import Settings
from proxy.telemetry.otlp_http import OtlpHttpExporter
from proxy.telemetry.span_export import SdkExporter
from proxy.telemetry.spans import SpanRecord
from proxy.telemetry.tracing import CountingExporter, Tracing, make_tracing, traces_endpoint, tracing_cleanup


def _settings(endpoint: str = "") -> Settings:
    return Settings.model_validate({"telemetry": {"otlp_endpoint": endpoint}})


def _one_span(tracing: Tracing) -> None:
    spans = tracing.observer._spans
    spans.end(spans.start("x", SpanKind.INTERNAL, {}, 1), 2)


def test_where_spans_go_first_match_wins():
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    both = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom/path"}
    assert traces_endpoint(_settings("http://127.0.0.1:4318/"), both) == "http://127.0.0.1:4318/v1/traces"
    assert traces_endpoint(_settings(), both) == "http://traces:4318/custom/path"
    assert traces_endpoint(_settings(), base) == "http://collector:4318/v1/traces"
    assert traces_endpoint(_settings(), {}) is None
    assert traces_endpoint(_settings("http://127.0.0.1:4318"), {"OTEL_SDK_DISABLED": "true"}) is None


def test_without_an_endpoint_nothing_is_built(tmp_path):
    assert make_tracing(_settings(), env={}) is None
    settings = Settings.model_validate({"recorder": {"db": str(tmp_path / "r.duckdb")}})
    parts = make_app(settings)[PARTS]
    if traces_endpoint(settings) is None:  # the machine's environment may configure OTLP itself
        assert parts.tracing is None
        assert "tracing" not in {o.name for o in parts.observers._observers}


class Broken(SpanExporter):
    def __init__(self, raises: bool) -> None:
        self.raises = raises

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.raises:
            raise ConnectionError("collector down")
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        raise RuntimeError("already gone")


@pytest.mark.parametrize("raises", [False, True])
def test_export_failures_are_counted_never_raised(raises, caplog):
    counting = CountingExporter(SdkExporter(Broken(raises), Resource.create({}), InstrumentationScope("t")))
    spans = [SpanRecord("x", SpanKind.INTERNAL, 1, n, 0, False, True, 1, {}, end_ns=2) for n in (1, 2)]
    assert counting.export(spans) is False
    assert (counting.failed_spans, counting.exported_spans) == (2, 0)
    counting.shutdown()
    assert "span exporter shutdown failed" in caplog.text


def test_the_real_otlp_exporter_against_nothing_counts_its_failure(unused_tcp_port):
    registry = CollectorRegistry()
    tracing = make_tracing(_settings(f"http://127.0.0.1:{unused_tcp_port}"), RunTracker(), registry=registry,
                           env={"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1"}, batch=False)
    assert tracing is not None
    _one_span(tracing)  # exported (and failing) right here
    assert tracing.exporter.failed_spans == 1
    assert registry.get_sample_value("runtap_span_export_failures_total") == 1
    tracing.shutdown()


async def test_tracing_health_is_scraped_and_shutdown_flushes(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mine")
    exporter = InMemorySpanExporter()
    registry = CollectorRegistry()
    tracing = make_tracing(_settings(), RunTracker(), registry=registry, exporter=exporter)
    assert tracing is not None
    _one_span(tracing)
    assert exporter.get_finished_spans() == ()  # batched: exported by the pipeline's thread
    ctx = tracing_cleanup(tracing)(None)  # type: ignore[arg-type]
    await anext(ctx)
    with pytest.raises(StopAsyncIteration):
        await anext(ctx)
    [span] = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "mine"
    assert registry.get_sample_value("runtap_spans_exported_total") == 1
    assert registry.get_sample_value("runtap_trace_open_runs") == 0
    await tracing.close()  # idempotent


def test_service_name_defaults_to_runtap(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    tracing = make_tracing(_settings(), env={}, exporter=InMemorySpanExporter(), batch=False)
    assert tracing is not None
    assert tracing.resource.attributes["service.name"] == "runtap"
    tracing.shutdown()


@pytest.mark.parametrize(("env", "sdks"), [
    ({}, False),
    ({"OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER": "vault"}, True),
    ({"HTTP_PROXY": "http://proxy:3128"}, True),
    ({"all_proxy": "http://proxy:3128"}, True),
    ({"HTTPS_PROXY": "http://proxy:3128"}, False),  # the collector is http://
    ({"http_proxy": "http://proxy:3128", "NO_PROXY": "localhost,127.0.0.1"}, False),
])
def test_runtaps_exporter_unless_a_proxy_or_credential_provider_needs_the_sdks(env, sdks):
    tracing = make_tracing(_settings("http://127.0.0.1:4318"), env=env)
    assert tracing is not None
    assert isinstance(tracing.exporter.inner, SdkExporter if sdks else OtlpHttpExporter)
    if sdks:
        assert isinstance(tracing.exporter.inner.inner, OTLPSpanExporter)
    tracing.shutdown()
