"""Tracing setup: the span pipeline of an app, exporting OTLP/HTTP off the event loop (contract §9).

`make_tracing()` builds nothing when no endpoint is configured: no pipeline, no observer, no
per-event cost. Otherwise the `TracingObserver` (run_spans.py) builds span records on the loop
(spans.py) and `SpanExport` (span_export.py) batches them, on its own thread, to runtap's OTLP/HTTP
exporter (otlp_http.py, encoding with otlp_encode.py); the event loop only ever enqueues finished
records. The SDK's `TracerProvider` is built only to read the environment's resource, sampler and
id generator: no span goes through it. The SDK's own exporters still work (`SdkExporter`): tests
pass its in-memory one, and a credential-provider session variable selects its OTLP/HTTP one.

Where spans go, first match wins:
1. `[telemetry] otlp_endpoint`, a base URL like `http://127.0.0.1:4318` (spans to `/v1/traces`);
2. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, the full traces URL;
3. `OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL (spans to `/v1/traces`).
`OTEL_SDK_DISABLED=true` turns tracing off whatever the rest says. Other standard variables
(headers, timeout, compression, certificates, batching, sampler, id generator, attribute limits,
resource attributes, service name) are honoured as the SDK honours them.

Failure policy: an export that fails (upstream collector down, refused, timed out) or raises is
logged and counted here (`runtap_span_export_failures_total`); it never raises into
the proxy, and spans that could not be exported are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..config import Settings
from ..runs import RunStore
from .otlp_encode import OtlpEncoder
from .otlp_http import OtlpHttpExporter
from .run_spans import TracingObserver
from .semconv import SCHEMA_URL
from .span_export import RecordExporter, SdkExporter, SpanExport
from .spans import SpanRecord, Spans
from .turn_spans import TurnTracing

log = logging.getLogger("runtap.tracing")

ENV_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
"""Full URL spans are posted to (standard OTel variable)."""
ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Base URL of an OTLP/HTTP receiver; spans go to `<url>/v1/traces` (standard OTel variable)."""
ENV_SDK_DISABLED = "OTEL_SDK_DISABLED"
"""`true` disables tracing (standard OTel variable)."""
ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
ENV_CREDENTIAL_PROVIDERS = ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
                            "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER")
"""The SDK exporter's `requests` session plug-ins: with one set, spans go through the SDK's exporter."""
TRACES_PATH = "/v1/traces"


def traces_endpoint(settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """The URL spans are posted to, or None when tracing is off."""
    env = os.environ if env is None else env
    if env.get(ENV_SDK_DISABLED, "").strip().lower() == "true":
        return None
    if settings.telemetry.otlp_endpoint:
        return settings.telemetry.otlp_endpoint.rstrip("/") + TRACES_PATH
    if env.get(ENV_TRACES_ENDPOINT):
        return env[ENV_TRACES_ENDPOINT]
    if env.get(ENV_ENDPOINT):
        return env[ENV_ENDPOINT].rstrip("/") + TRACES_PATH
    return None


def _needs_sdks_exporter(endpoint: str, env: Mapping[str, str]) -> bool:
    """A credential-provider session or an HTTP proxy: what only the SDK's exporter (on `requests`)
    supports. Anything else goes through runtap's own (otlp_http.py)."""
    if any(env.get(name) for name in ENV_CREDENTIAL_PROVIDERS):
        return True
    url = urlsplit(endpoint)
    proxied = any(env.get(name) or env.get(name.upper()) for name in (f"{url.scheme}_proxy", "all_proxy"))
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    return proxied and not urllib.request.proxy_bypass_environment(url.hostname or "", {"no": no_proxy})


class CountingExporter:
    """Wraps an exporter: counts what failed, never lets an exception out (architecture.md §9.4).

    Runs on the export thread; the counters are plain ints read at scrape time.
    """

    def __init__(self, inner: RecordExporter) -> None:
        self.inner = inner
        self.exported_spans = 0
        self.failed_spans = 0

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        try:
            delivered = self.inner.export(spans)
        except Exception:
            log.exception("span export raised; %d spans dropped", len(spans))
            delivered = False
        if delivered:
            self.exported_spans += len(spans)
        else:
            self.failed_spans += len(spans)
        return delivered

    def shutdown(self) -> None:
        try:
            self.inner.shutdown()
        except Exception:
            log.exception("span exporter shutdown failed")

    def force_flush(self) -> bool:
        try:
            return self.inner.force_flush()
        except Exception:
            log.exception("span exporter flush failed")
            return False


class TracingCollector:
    """Tracing's own health for /metrics: export results and open run spans, read at scrape time."""

    def __init__(self, exporter: CountingExporter, pipeline: SpanExport, observer: TracingObserver,
                 turns: TurnTracing) -> None:
        self._exporter = exporter
        self._pipeline = pipeline
        self._observer = observer
        self._turns = turns

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("runtap_spans_exported", "Spans the exporter delivered.",
                                  value=self._exporter.exported_spans)
        yield CounterMetricFamily("runtap_span_export_failures", "Spans dropped: their export failed, or the "
                                  "export queue was full.", value=self._exporter.failed_spans + self._pipeline.dropped)
        yield GaugeMetricFamily("runtap_trace_open_runs", "Run and turn spans open (runs and turns not yet at a "
                                "terminal status).", value=len(self._observer.open) + len(self._turns.open))


@dataclass(slots=True)
class Tracing:
    """What tracing is made of; `close()` ends open spans and exports what is left."""

    pipeline: SpanExport
    exporter: CountingExporter
    observer: TracingObserver
    """Assistants runs."""
    turns: TurnTracing
    """Responses and Chat Completions turns."""
    resource: Resource
    scope: InstrumentationScope
    closed: bool = False

    @property
    def observers(self) -> tuple[TracingObserver, TurnTracing]:
        return self.observer, self.turns

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.observer.close()
        self.turns.close()
        # shutdown() exports what is queued, blocking on the exporter: off the loop.
        await asyncio.to_thread(self.pipeline.shutdown)

    async def flush(self) -> bool:
        return await asyncio.to_thread(self.pipeline.force_flush)

    def shutdown(self) -> None:
        """`close()` without a loop (scripts): end open spans, export them, stop."""
        self.closed = True
        self.observer.close()
        self.turns.close()
        self.pipeline.shutdown()


def make_tracing(settings: Settings, tracker: RunStore | None = None, *,
                 registry: CollectorRegistry | None = None, env: Mapping[str, str] | None = None,
                 exporter: SpanExporter | None = None, batch: bool = True) -> Tracing | None:
    """The app's tracing, or None (nothing built, nothing to pay) when no endpoint is configured.

    `exporter` replaces the OTLP exporter (tests pass the SDK's InMemorySpanExporter);
    `batch=False` exports each span as it ends, for tests that read spans synchronously.
    """
    env = os.environ if env is None else env
    endpoint = traces_endpoint(settings, env)
    if exporter is None and endpoint is None:
        return None
    attributes = {SERVICE_VERSION: __version__}
    if not os.environ.get(ENV_SERVICE_NAME):  # Resource.create() reads it from there
        attributes[SERVICE_NAME] = "runtap"
    # The environment's resource, sampler and id generator, as the SDK reads them.
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    scope = InstrumentationScope("runtap", __version__, SCHEMA_URL)
    records: RecordExporter
    if exporter is not None:
        records = SdkExporter(exporter, provider.resource, scope)
    elif _needs_sdks_exporter(str(endpoint), env):
        records = SdkExporter(OTLPSpanExporter(endpoint=endpoint), provider.resource, scope)
    else:
        records = OtlpHttpExporter(str(endpoint), OtlpEncoder(provider.resource, scope), env)
    counting = CountingExporter(records)
    pipeline = SpanExport(counting, batch=batch, env=env)
    telemetry = settings.telemetry
    spans = Spans(pipeline.emit, provider)
    observer = TracingObserver(
        spans, tracker,
        upstream=settings.server.upstream, capture_content=telemetry.capture_content,
        max_open_runs=telemetry.max_open_runs, abandoned_run_s=telemetry.abandoned_run_s,
    )
    turns = TurnTracing(spans, upstream_attributes=observer.server_attributes,
                        capture_content=telemetry.capture_content, max_open_runs=telemetry.max_open_runs,
                        abandoned_run_s=telemetry.abandoned_run_s)
    if registry is not None:
        registry.register(TracingCollector(counting, pipeline, observer, turns))
    return Tracing(pipeline, counting, observer, turns, provider.resource, scope)


def tracing_cleanup(tracing: Tracing | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx pair: nothing at startup; at shutdown end open spans and flush the exporter."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        if tracing is not None:
            await tracing.close()

    return ctx
