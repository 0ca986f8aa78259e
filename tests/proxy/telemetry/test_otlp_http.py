"""runtap's OTLP/HTTP exporter against a real local receiver (aiohttp), decoded with opentelemetry-proto.

The exporter blocks (it runs on the export thread), so each export runs in a thread here while the
receiver answers on the test's loop.
"""

import asyncio
import shutil
import ssl
import subprocess

import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from proxy.telemetry.otlp_encode import OtlpEncoder
from proxy.telemetry.otlp_http import OtlpHttpExporter
from proxy.telemetry.spans import SpanRecord

ENCODER = OtlpEncoder(Resource.create({"service.name": "runtap"}), InstrumentationScope("runtap", "0.1.0"))
SPANS = [SpanRecord("invoke_agent", SpanKind.CLIENT, 7, n, 0, False, True, 1, {"n": n}, end_ns=2) for n in (1, 2)]


class Receiver:
    """Answers each POST with the next status of `script` (then 200), keeping what it got."""

    def __init__(self, *script: tuple[int, dict[str, str]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[CIMultiDict[str], ExportTraceServiceRequest, object]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.traces)

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp inflates a gzip or deflate body: a bad one would fail here
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.requests.append((request.headers.copy(), message, request.transport))
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, headers=headers, content_type="application/x-protobuf")

    def span_ids(self) -> list[int]:
        return [int.from_bytes(s.span_id, "big") for _, m, _ in self.requests for rs in m.resource_spans
                for ss in rs.scope_spans for s in ss.spans]


async def _serve(aiohttp_server, receiver: Receiver, **kwargs) -> str:
    server = await aiohttp_server(receiver.app, **kwargs)
    scheme = "https" if kwargs.get("ssl") else "http"
    return f"{scheme}://127.0.0.1:{server.port}/v1/traces"


async def test_a_batch_is_posted_with_the_environments_headers_and_compression(aiohttp_server):
    receiver = Receiver()
    url = await _serve(aiohttp_server, receiver)
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=a,authorization=Bearer%20t0ken",
           "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=traces", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
    exporter = OtlpHttpExporter(url, ENCODER, env)
    assert await asyncio.to_thread(exporter.export, SPANS)
    assert await asyncio.to_thread(exporter.export, SPANS[:1])
    (headers, message, first), (_, _, second) = receiver.requests
    assert headers["Content-Type"] == "application/x-protobuf" and headers["Content-Encoding"] == "gzip"
    assert len(headers.getall("Content-Type")) == 1
    assert headers["x-tenant"] == "traces" and "authorization" not in headers  # the traces variable wins whole
    assert headers["User-Agent"].startswith("runtap/")
    assert message.resource_spans[0].resource.attributes[0].key
    assert receiver.span_ids() == [1, 2, 1]
    assert first is second  # one kept-alive connection
    exporter.shutdown()


async def test_deflate_and_the_base_headers(aiohttp_server):
    receiver = Receiver()
    url = await _serve(aiohttp_server, receiver)
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken", "OTEL_EXPORTER_OTLP_COMPRESSION": "deflate"}
    exporter = OtlpHttpExporter(url, ENCODER, env)
    assert await asyncio.to_thread(exporter.export, SPANS)
    exporter.shutdown()
    [(headers, _, _)] = receiver.requests
    assert headers["authorization"] == "Bearer t0ken" and headers["Content-Encoding"] == "deflate"


async def test_transient_answers_are_retried_as_the_server_asks(aiohttp_server, caplog):
    receiver = Receiver((503, {"Retry-After": "0"}), (429, {"Retry-After": "0.01"}))
    exporter = OtlpHttpExporter(await _serve(aiohttp_server, receiver), ENCODER, {})
    assert await asyncio.to_thread(exporter.export, SPANS)
    exporter.shutdown()
    assert len(receiver.requests) == 3 and receiver.span_ids() == [1, 2] * 3
    assert caplog.text.count("retrying") == 2


async def test_a_refusal_fails_the_batch_at_once(aiohttp_server, caplog):
    receiver = Receiver((400, {}))
    exporter = OtlpHttpExporter(await _serve(aiohttp_server, receiver), ENCODER, {})
    assert not await asyncio.to_thread(exporter.export, SPANS)
    exporter.shutdown()
    assert len(receiver.requests) == 1 and "HTTP 400" in caplog.text


async def test_a_connection_the_server_closed_is_reopened(aiohttp_server):
    receiver = Receiver((200, {"Connection": "close"}))
    exporter = OtlpHttpExporter(await _serve(aiohttp_server, receiver), ENCODER, {})
    for _ in range(3):
        assert await asyncio.to_thread(exporter.export, SPANS)
    exporter.shutdown()
    assert len(receiver.requests) == 3 and receiver.requests[0][2] is not receiver.requests[1][2]


async def test_nothing_is_posted_after_shutdown(aiohttp_server):
    receiver = Receiver()
    exporter = OtlpHttpExporter(await _serve(aiohttp_server, receiver), ENCODER, {})
    exporter.shutdown()
    assert not await asyncio.to_thread(exporter.export, SPANS)  # a batch still queued at shutdown
    assert receiver.requests == []


def test_an_unusable_endpoint_is_logged_without_its_credentials(caplog):
    exporter = OtlpHttpExporter("http://user:s3cret@collector:port/v1/traces", ENCODER, {})
    assert not exporter.export(SPANS)
    assert "collector" in caplog.text and "s3cret" not in caplog.text and "user" not in caplog.text
    exporter.shutdown()


async def test_nothing_listening_fails_within_the_timeout(unused_tcp_port, caplog):
    exporter = OtlpHttpExporter(f"http://127.0.0.1:{unused_tcp_port}/v1/traces", ENCODER,
                                {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0.5"})
    assert not await asyncio.to_thread(exporter.export, SPANS)
    exporter.shutdown()
    assert "retries exhausted" in caplog.text


@pytest.mark.parametrize(("endpoint", "env"), [
    ("collector:4318/v1/traces", {}),
    ("http://collector:port/v1/traces", {}),
    ("https://collector:4318/v1/traces", {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}),
])
def test_an_unusable_endpoint_fails_every_export_without_stopping_anything(endpoint, env, caplog):
    exporter = OtlpHttpExporter(endpoint, ENCODER, env)
    assert "unusable" in caplog.text
    assert not exporter.export(SPANS)


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_https_trusts_the_environments_certificate(aiohttp_server, certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    receiver = Receiver()
    url = await _serve(aiohttp_server, receiver, ssl=context)
    trusted = OtlpHttpExporter(url, ENCODER, {"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(cert)})
    assert await asyncio.to_thread(trusted.export, SPANS)
    untrusted = OtlpHttpExporter(url, ENCODER, {"OTEL_EXPORTER_OTLP_TIMEOUT": "0.5"})
    assert not await asyncio.to_thread(untrusted.export, SPANS)
    for exporter in (trusted, untrusted):
        exporter.shutdown()
    assert len(receiver.requests) == 1
