"""Observability end to end: a real Prometheus scraping the admin /metrics, and the real OTLP/HTTP
exporter posting to a local receiver, while the real openai SDK drives runs through the proxy.

(a) Prometheus (Debian's `prometheus`, installed by `make test`) scrapes the admin listener every
    0.2 s; every PromQL expression of every shipped dashboard panel must return data, and the
    token totals Prometheus sees must equal the DuckDB sums.
(b) The span tree of a tool-calling run, across requires_action and submit_tool_outputs, as the
    receiver decodes it (opentelemetry-proto): parents, names, attributes, timings, the trace id
    in the database, the client's traceparent, and no key or content.

Every wait is a poll bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from proxy.admin.listener import make_admin_app
from proxy.config import Settings
from proxy.telemetry import tracing as tracing_module
from proxy.telemetry.otlp_http import OtlpHttpExporter
from proxy.testing.responses_scripts import ChatScript, Reasoning, ResponseScript
from proxy.testing.scripts import Outcome, Script
from tests.conftest import KEY_ID, RAW_KEY, poll
from tests.e2e.test_proxy_responses import WEATHER
from tests.e2e.test_proxy_sdk import WEATHER_TOOL, _tool_conversation

DASHBOARDS = Path(__file__).parents[2] / "dashboards"
SCRAPE_INTERVAL = "200ms"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h"}
"""What Grafana would put in for its built-in variables (the datasource variable needs none)."""
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


# -- fixtures: an OTLP receiver, the proxy exporting to it, its admin app ------------------------
class Receiver:
    """A minimal OTLP/HTTP traces receiver: decodes every POST /v1/traces with opentelemetry-proto."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.bodies: list[bytes] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.traces)

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.requests.append(message)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def spans(self) -> list[Span]:
        return [span for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]


@pytest.fixture
async def receiver(aiohttp_server) -> tuple[Receiver, Any]:
    rec = Receiver()
    return rec, await aiohttp_server(rec.app)


@pytest.fixture
def settings(tmp_path, upstream, receiver) -> Settings:
    return Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/"), "max_recorded_body_bytes": 65536},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5},
        "telemetry": {"otlp_endpoint": str(receiver[1].make_url("")).rstrip("/")},
        # A budget, so that the Overview's budget panel has a series (runtap_budget_remaining_tokens).
        "budgets": {"keys": [{"key_id": KEY_ID, "alias": "team-a", "tokens_per_day": 10_000_000}]},
    })


@pytest.fixture
async def admin(aiohttp_server, parts):
    return await aiohttp_server(make_admin_app(parts, "admin-secret"))


# -- (a) Prometheus ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def prometheus(tmp_path, admin) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "Debian's prometheus is not installed (`make test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [{"job_name": "runtap", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{admin.port}"]}]}],
    }))
    url = f"http://127.0.0.1:{_free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn", stdout=log, stderr=log)
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if process.returncode is not None:
                    pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/-/ready") as response:
                        return response.status == 200
                return False

            await poll(ready, "prometheus to be ready")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _query(session: aiohttp.ClientSession, url: str, expr: str) -> list[dict[str, Any]]:
    async with session.get(url + "/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


async def _drive(client, fake, proxy) -> None:
    """One of everything the dashboards show: streamed and polled runs with tools, a failed and an
    incomplete run, an upstream 404 and runtap's own 413."""
    await _tool_conversation(client, fake, Script.tool_then_text())
    fake.enqueue(Script.text("Hi there."))
    async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
        await stream.until_done()
    fake.enqueue(Script.tool_then_text())
    run = await client.beta.threads.create_and_run_poll(assistant_id="asst_abc", tools=[WEATHER_TOOL],
                                                        poll_interval_ms=1)
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    await client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "18C"}],
        poll_interval_ms=1)
    for ending in (Outcome.failed("boom", code="server_error"), Outcome.incomplete("max_completion_tokens")):
        fake.enqueue(Script.text("partial").ending(ending))
        async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
            await stream.until_done()
    # A Responses tool turn (its answer streamed, with reasoning and cached tokens) and a Chat stream.
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Oslo"}, input_tokens=40))
    fake.enqueue_response(ResponseScript.of(Reasoning(reasoning_tokens=12), *ResponseScript.text("Cold.").items,
                                            input_tokens=90, cached_tokens=32))
    first = await client.responses.create(model="gpt-4o", input="Oslo?", tools=[WEATHER])
    output = {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "-3C"}  # type: ignore[union-attr]
    async with client.responses.stream(model="gpt-4o", previous_response_id=first.id, input=[output]) as s:
        await s.get_final_response()
    fake.enqueue_chat(ChatScript(text="Hello there."))
    async for _ in await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                                        stream=True, stream_options={"include_usage": True}):
        pass
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.retrieve(thread_id="thread_nope", run_id="run_nope")
    with pytest.raises(openai.APIStatusError):
        await client.beta.threads.create(metadata={"big": "x" * 500}, extra_body={"pad": "y" * 70_000})


RUNS_PER_BATCH = 7
"""Five Assistants runs and two turns (Responses, Chat)."""


def _dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", ()):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"unexpected variable in {path.name} / {panel['title']}: {expr}"
                out.append((path.name, panel["title"], expr))
    return out


async def test_prometheus_scrapes_metrics_and_every_dashboard_query_returns_data(
        fake, client, proxy, recorded, prometheus):
    async with aiohttp.ClientSession() as session:

        async def runs_seen(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                result = await _query(session, prometheus, "sum(runtap_runs_total)")
                return bool(result) and float(result[0]["value"][1]) == n
            return check

        async def scraped() -> bool:
            result = await _query(session, prometheus, 'up{job="runtap"}')
            return bool(result) and result[0]["value"][1] == "1"

        await poll(scraped, "a first successful scrape")
        # Two batches, each seen by a scrape: every counter then has a series that grew inside
        # the rate window, so rates and quantiles have values, not just series.
        for batch in (1, 2):
            await _drive(client, fake, proxy)
            await recorded()
            await poll(await runs_seen(batch * RUNS_PER_BATCH), f"batch {batch} in prometheus")

        q = await recorded()
        [(prompt, completion)] = q("select sum(prompt_tokens), sum(completion_tokens) from runs")
        assert q("select count(*) from runs") == [(2 * RUNS_PER_BATCH,)]
        [(cached, reasoning)] = q("select sum(cached_tokens), sum(reasoning_tokens) from responses")
        tokens = {r["metric"]["type"]: float(r["value"][1])
                  for r in await _query(session, prometheus, "sum by (type) (runtap_tokens_total)")}
        assert tokens == {"input": prompt, "output": completion, "cached": cached, "reasoning": reasoning}
        assert (cached, reasoning) == (2 * 32, 2 * 12)

        empty = []
        for board, title, expr in _dashboard_queries():
            result = await _query(session, prometheus, expr)
            values = [float(r["value"][1]) for r in result]
            if not values or not any(math.isfinite(v) for v in values):
                empty.append(f"{board} / {title}: {expr} -> {values}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


# -- (b) OTLP ---------------------------------------------------------------------------------------
def _attributes(span: Span) -> dict[str, Any]:
    def plain(value: AnyValue) -> Any:
        kind = value.WhichOneof("value")
        if kind == "array_value":
            return tuple(plain(v) for v in value.array_value.values)
        return getattr(value, kind) if kind else None

    return {a.key: plain(a.value) for a in span.attributes}


@pytest.fixture(params=["runtap", "sdk"])
def exporter(request, monkeypatch) -> str:
    """Which OTLP/HTTP exporter posts the spans: runtap's own (the default), or the SDK's
    OTLPSpanExporter, which runtap uses when a credential provider or an HTTP proxy needs it."""
    if request.param == "sdk":
        monkeypatch.setattr(tracing_module, "_needs_sdks_exporter", lambda endpoint, env: True)
    return request.param


async def test_otlp_export_of_a_tool_run_across_requires_action(exporter, fake, client, parts, recorded, receiver):
    rec, _ = receiver
    assert parts.tracing is not None
    expected = OTLPSpanExporter if exporter == "sdk" else OtlpHttpExporter
    inner = parts.tracing.exporter.inner
    assert isinstance(getattr(inner, "inner", inner), expected)
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    _, outputs, final = await _tool_conversation(
        client.with_options(default_headers={"traceparent": traceparent}), fake, Script.tool_then_text())
    fake.enqueue(Script.text("No traceparent here."))
    async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
        await stream.until_done()
        plain_run = await stream.get_final_run()
    await recorded()
    assert parts.tracing is not None
    assert await parts.tracing.flush()
    spans = await poll(lambda: _ready(rec, 6), "6 spans at the receiver")

    by_id = {s.span_id: s for s in spans}
    agents = {_attributes(s)["runtap.run.id"]: s for s in spans if s.name == "invoke_agent"}
    agent = agents[final.id]
    tree = [s for s in spans if s.trace_id == agent.trace_id]
    assert sorted(s.name for s in tree) == ["chat gpt-4o", "chat gpt-4o", "execute_tool get_current_weather",
                                           "invoke_agent"]
    # The client's traceparent: same trace, the run span is the child of the client's span.
    assert agent.trace_id.hex() == CLIENT_TRACE_ID and agent.parent_span_id.hex() == CLIENT_SPAN_ID
    assert agents[plain_run.id].parent_span_id == b"" and agents[plain_run.id].trace_id != agent.trace_id
    assert agent.kind == Span.SPAN_KIND_CLIENT

    chats = sorted((s for s in tree if s.name == "chat gpt-4o"), key=lambda s: s.start_time_unix_nano)
    [tool] = [s for s in tree if s.name.startswith("execute_tool")]
    assert all(by_id[c.parent_span_id] is agent and c.kind == Span.SPAN_KIND_CLIENT for c in chats)
    assert by_id[tool.parent_span_id] is chats[0] and tool.kind == Span.SPAN_KIND_INTERNAL
    a = _attributes(agent)
    assert a["gen_ai.operation.name"] == "invoke_agent" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.agent.id"] == "asst_abc" and a["gen_ai.conversation.id"] == final.thread_id
    assert a["gen_ai.request.model"] == "gpt-4o" and a["server.address"] == "127.0.0.1"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
        final.usage.prompt_tokens, final.usage.completion_tokens)
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    c0, c1 = (_attributes(c) for c in chats)
    assert (c0["runtap.step.type"], c0["gen_ai.response.finish_reasons"]) == ("tool_calls", ("tool_calls",))
    assert (c0["gen_ai.usage.input_tokens"], c0["gen_ai.usage.output_tokens"]) == (80, 18)
    assert c1["runtap.step.type"] == "message_creation" and "gen_ai.response.time_to_first_chunk" in c1
    t = _attributes(tool)
    assert (t["gen_ai.operation.name"], t["gen_ai.tool.name"], t["gen_ai.tool.type"]) == (
        "execute_tool", "get_current_weather", "function")
    assert t["gen_ai.tool.call.id"] == outputs[0]["tool_call_id"]

    # Timings: the run spans both exchanges; the tool span is the client's time between them.
    q = await recorded()
    [(requested_at, submitted_at)] = q("select requested_at, submitted_at from tool_calls where run_id = ?", final.id)
    starts = q("select started_at from requests where run_id = ? order by started_at", final.id)
    assert agent.start_time_unix_nano == pytest.approx(starts[0][0].timestamp() * 1e9, abs=2000)
    assert tool.start_time_unix_nano == pytest.approx(requested_at.timestamp() * 1e9, abs=2000)
    assert tool.end_time_unix_nano == pytest.approx(submitted_at.timestamp() * 1e9, abs=2000)
    assert agent.start_time_unix_nano <= chats[0].start_time_unix_nano <= tool.start_time_unix_nano
    assert tool.end_time_unix_nano <= chats[0].end_time_unix_nano <= chats[1].start_time_unix_nano
    assert chats[1].end_time_unix_nano <= agent.end_time_unix_nano

    # The database carries the same trace id, on the run and on both of its exchanges.
    assert q("select trace_id from runs where run_id = ?", final.id) == [(CLIENT_TRACE_ID,)]
    assert q("select distinct trace_id from requests where run_id = ?", final.id) == [(CLIENT_TRACE_ID,)]
    assert q("select trace_id from runs where run_id = ?", plain_run.id) == [(agents[plain_run.id].trace_id.hex(),)]

    # Nothing secret or private left the process: no key, no message or tool content.
    wire = b"".join(rec.bodies)
    for secret in (RAW_KEY, "Weather in SF?", "San Francisco", "18C for", "sunny", "No traceparent here."):
        assert secret.encode() not in wire, secret
    resource = {a.key: a.value.string_value for a in rec.requests[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "runtap"
    assert rec.requests[0].resource_spans[0].scope_spans[0].schema_url == "https://opentelemetry.io/schemas/1.41.0"
    assert parts.tracing.exporter.failed_spans == 0


async def _ready(rec: Receiver, n: int) -> list[Span] | None:
    spans = rec.spans()
    return spans if len(spans) >= n else None
