"""The tracing observer through the real proxy, SDK and fake upstream, with the SDK's in-memory exporter."""

from __future__ import annotations

import functools
import time

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import proxy.app as app_module
from proxy.app import PARTS, make_app
from proxy.config import Settings
from proxy.telemetry import semconv as sc
from proxy.telemetry.tracing import make_tracing
from proxy.testing.scripts import Outcome, Script
from tests.conftest import RAW_KEY
from tests.e2e.test_proxy_sdk import WEATHER_TOOL, _tool_conversation

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def telemetry() -> dict:
    return {}


@pytest.fixture
def settings(tmp_path, upstream, telemetry) -> Settings:
    return Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/")},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5},
        "telemetry": telemetry,
    })


@pytest.fixture
def spans(monkeypatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(app_module, "make_tracing", functools.partial(make_tracing, exporter=exporter, batch=False))
    return exporter


@pytest.fixture
async def proxy(serve_proxy, settings, spans):
    return await serve_proxy(make_app(settings))


def _hex(n: int, width: int = 32) -> str:
    return format(n, f"0{width}x")


def _named(spans: InMemorySpanExporter) -> dict[str, list]:
    out: dict[str, list] = {}
    for span in spans.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


async def _stream(client, fake, script, **kwargs):
    fake.enqueue(script)
    async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc", **kwargs) as stream:
        await stream.until_done()
        return stream.current_run


async def test_a_tool_run_is_one_trace_across_requires_action_and_submit(fake, upstream, client, spans, recorded):
    handler, _, final = await _tool_conversation(client, fake, Script.tool_then_text())
    named = _named(spans)
    [run] = named["invoke_agent"]
    chats = sorted(named["chat gpt-4o"], key=lambda s: s.start_time)
    [tool] = named["execute_tool get_current_weather"]
    assert len(chats) == 2 and len(spans.get_finished_spans()) == 4
    assert run.kind is SpanKind.CLIENT and run.parent is None
    assert all(s.kind is SpanKind.CLIENT and s.parent.span_id == run.context.span_id for s in chats)
    assert tool.kind is SpanKind.INTERNAL and tool.parent.span_id == chats[0].context.span_id
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {run.context.trace_id}

    assert run.attributes[sc.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert run.attributes[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert run.attributes[sc.GEN_AI_AGENT_ID] == "asst_abc"
    assert run.attributes[sc.GEN_AI_CONVERSATION_ID] == final.thread_id
    assert run.attributes["runtap.run.id"] == final.id
    assert run.attributes[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o"
    assert (run.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS], run.attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == (
        final.usage.prompt_tokens, final.usage.completion_tokens)
    assert run.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert (run.attributes[sc.SERVER_ADDRESS], run.attributes[sc.SERVER_PORT]) == ("127.0.0.1", upstream.port)
    assert run.status.status_code is StatusCode.UNSET

    tool_step, text_step = chats
    assert tool_step.attributes["runtap.step.type"] == "tool_calls"
    assert tool_step.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
    assert tool_step.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] == 80
    assert tool_step.attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 18
    assert text_step.attributes["runtap.step.type"] == "message_creation"
    assert text_step.attributes[sc.GEN_AI_REQUEST_STREAM] is True
    assert sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK in text_step.attributes
    assert tool.attributes[sc.GEN_AI_TOOL_CALL_ID] == handler.required[0].id
    assert tool.attributes[sc.GEN_AI_TOOL_TYPE] == "function"

    # Timings: children inside their parents; the tool span is the client's time, from
    # requires_action to the submit_tool_outputs request, and the step waits for it.
    assert run.start_time <= tool_step.start_time <= tool.start_time < tool.end_time <= tool_step.end_time
    assert tool_step.end_time <= text_step.start_time <= text_step.end_time <= run.end_time
    q = await recorded()
    [(requested_at, submitted_at)] = q("select requested_at, submitted_at from tool_calls")
    assert tool.start_time == pytest.approx(requested_at.timestamp() * 1e9, abs=2000)
    assert tool.end_time == pytest.approx(submitted_at.timestamp() * 1e9, abs=2000)

    trace_id = _hex(run.context.trace_id)
    assert q("select run_id, trace_id from runs") == [(final.id, trace_id)]
    assert q("select distinct trace_id from requests") == [(trace_id,)]


async def test_a_client_traceparent_makes_the_run_its_child(fake, client, spans, recorded):
    run = await _stream(client, fake, Script.text(), extra_headers={"traceparent": TRACEPARENT})
    [span] = _named(spans)["invoke_agent"]
    assert _hex(span.context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent.span_id == int("b7ad6b7169203331", 16) and span.parent.is_remote
    q = await recorded()
    assert q("select trace_id from runs where run_id = ?", run.id) == [("0af7651916cd43dd8448eb211c80319c",)]


async def test_a_polled_run_with_tools_is_stitched_into_one_trace(fake, client, spans, recorded):
    fake.enqueue(Script.tool_then_text())
    run = await client.beta.threads.create_and_run_poll(assistant_id="asst_abc", tools=[WEATHER_TOOL],
                                                        poll_interval_ms=1)
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    run = await client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "18C"}],
        poll_interval_ms=1)
    await client.beta.threads.runs.steps.list(thread_id=run.thread_id, run_id=run.id)
    named = _named(spans)
    [agent] = named["invoke_agent"]
    [tool] = named["execute_tool get_current_weather"]
    chats = named["chat gpt-4o"]
    assert agent.attributes["runtap.run.status"] == "completed"
    assert tool.parent.span_id == agent.context.span_id and tool.end_time <= agent.end_time
    # The steps were only listed after the run ended: they still land in its trace.
    assert len(chats) == 2 and all(s.parent.span_id == agent.context.span_id for s in chats)
    assert sorted(s.attributes["runtap.step.type"] for s in chats) == ["message_creation", "tool_calls"]
    q = await recorded()
    [(n, trace_ids)] = q("select count(*), list(distinct trace_id) from requests")
    assert n >= 4 and trace_ids == [_hex(agent.context.trace_id)]


@pytest.mark.parametrize(("script", "error_type"), [
    (Script.text("partial").ending(Outcome.failed("The model crashed.", code="server_error")), "server_error"),
    (Script.text("slow").ending("expired"), "expired"),
])
async def test_failed_and_expired_runs_are_errors(fake, client, spans, script, error_type):
    await _stream(client, fake, script)
    [span] = _named(spans)["invoke_agent"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[sc.ERROR_TYPE] == error_type


async def test_an_incomplete_run_is_not_an_error_but_says_why(fake, client, spans):
    await _stream(client, fake, Script.text("cut").ending(Outcome.incomplete("max_completion_tokens")))
    [span] = _named(spans)["invoke_agent"]
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("length",)
    assert span.attributes["runtap.run.status"] == "incomplete"


async def test_a_run_cancelled_while_waiting_for_outputs_ends_its_tool_span(fake, client, spans):
    fake.enqueue(Script.tool_then_text())
    run = await client.beta.threads.create_and_run_poll(assistant_id="asst_abc", poll_interval_ms=1)
    await client.beta.threads.runs.cancel(thread_id=run.thread_id, run_id=run.id)
    await client.beta.threads.runs.retrieve(thread_id=run.thread_id, run_id=run.id)
    named = _named(spans)
    [agent] = named["invoke_agent"]
    [tool] = named["execute_tool get_current_weather"]
    assert agent.attributes["runtap.run.status"] == "cancelled"
    assert tool.attributes[sc.ERROR_TYPE] == "cancelled" and tool.end_time <= agent.end_time


async def test_a_create_the_upstream_refuses_is_an_error_span(fake, client, spans, recorded):
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.create(thread_id="thread_missing", assistant_id="asst_abc")
    [span] = _named(spans)["invoke_agent"]
    assert span.attributes[sc.ERROR_TYPE] == "404" and span.status.status_code is StatusCode.ERROR
    q = await recorded()
    assert q("select trace_id from requests") == [(_hex(span.context.trace_id),)]


async def test_a_create_that_never_reached_the_upstream_is_an_error_span(tmp_path, spans, unused_tcp_port):
    settings = Settings.model_validate({"server": {"upstream": f"http://127.0.0.1:{unused_tcp_port}"},
                                       "recorder": {"db": str(tmp_path / "r.duckdb")}})
    from proxy.relay.runner import RelayTestServer as TestServer

    async with TestServer(make_app(settings)) as server:
        async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as c:
            with pytest.raises(openai.InternalServerError):
                await c.beta.threads.create_and_run(assistant_id="asst_abc")
        await server.app[PARTS].flush()
    [span] = _named(spans)["invoke_agent"]
    assert span.attributes[sc.ERROR_TYPE] == "502"


async def test_an_abandoned_run_ends_at_its_expiry_with_an_error(fake, client, spans, parts):
    run = await _stream(client, fake, Script.tool_then_text(), tools=[WEATHER_TOOL])
    assert run.status == "requires_action"
    observer = parts.tracing.observer
    assert list(observer.open) == [run.id] and spans.get_finished_spans() == ()
    observer.sweep(now_ns=(run.expires_at + 3600) * 10**9)
    named = _named(spans)
    [agent] = named["invoke_agent"]
    assert agent.attributes[sc.ERROR_TYPE] == "abandoned" and agent.attributes["runtap.run.abandoned"] == "expires_at"
    # At its expiry on runtap's clock: the lifetime the upstream states, from when runtap saw it start.
    assert agent.end_time == agent.start_time + (run.expires_at - run.created_at) * 10**9
    assert named["execute_tool get_current_weather"][0].attributes[sc.ERROR_TYPE] == "abandoned"
    assert not observer.open


async def test_an_upstream_clock_in_runtaps_past_does_not_end_a_run_early(fake, client, spans, parts):
    # The upstream's clock is two hours behind: its expires_at (ten minutes after its created_at)
    # lies in runtap's past. The run is still open, and its tool span starts when runtap saw it.
    fake.engine.clock = lambda: int(time.time()) - 7200
    run = await _stream(client, fake, Script.tool_then_text(), tools=[WEATHER_TOOL])
    assert run.status == "requires_action" and run.expires_at < time.time() - 3600
    observer = parts.tracing.observer
    observer.sweep()
    assert list(observer.open) == [run.id] and spans.get_finished_spans() == ()
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    async with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "18C"}]) as s:
        await s.until_done()
    named = _named(spans)
    [agent], [tool] = named["invoke_agent"], named["execute_tool get_current_weather"]
    assert agent.attributes["runtap.run.status"] == "completed" and sc.ERROR_TYPE not in agent.attributes
    assert agent.start_time < tool.start_time < tool.end_time <= agent.end_time
    assert agent.start_time > (time.time() - 60) * 1e9  # runtap's clock, not the upstream's


@pytest.mark.parametrize("telemetry", [{"max_open_runs": 1}])
async def test_open_runs_are_capped(fake, client, spans, parts):
    first = await _stream(client, fake, Script.tool_then_text(), tools=[WEATHER_TOOL])
    second = await _stream(client, fake, Script.tool_then_text(), tools=[WEATHER_TOOL])
    assert list(parts.tracing.observer.open) == [second.id]
    [evicted] = _named(spans)["invoke_agent"]
    assert evicted.attributes["runtap.run.id"] == first.id
    assert evicted.attributes["runtap.run.abandoned"] == "evicted"


async def test_no_content_and_no_key_on_spans_by_default(fake, client, spans):
    await _tool_conversation(client, fake, Script.tool_then_text())
    for span in spans.get_finished_spans():
        assert not {sc.GEN_AI_INPUT_MESSAGES, sc.GEN_AI_OUTPUT_MESSAGES, sc.GEN_AI_SYSTEM_INSTRUCTIONS,
                    sc.GEN_AI_TOOL_CALL_ARGUMENTS, sc.GEN_AI_TOOL_CALL_RESULT} & set(span.attributes)
        assert RAW_KEY not in repr(dict(span.attributes)) and "San Francisco" not in repr(dict(span.attributes))


@pytest.mark.parametrize("telemetry", [{"capture_content": True}])
async def test_capture_content_puts_messages_and_tool_io_on_spans(fake, client, spans):
    await _tool_conversation(client, fake, Script.tool_then_text())
    named = _named(spans)
    [agent] = named["invoke_agent"]
    [tool] = named["execute_tool get_current_weather"]
    assert "Weather in SF?" in agent.attributes[sc.GEN_AI_INPUT_MESSAGES]
    assert "San Francisco" in tool.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS]
    assert tool.attributes[sc.GEN_AI_TOOL_CALL_RESULT] == "18C for get_current_weather"
    [text_step] = [s for s in named["chat gpt-4o"] if s.attributes["runtap.step.type"] == "message_creation"]
    assert "sunny in San Francisco" in text_step.attributes[sc.GEN_AI_OUTPUT_MESSAGES]
    assert all(RAW_KEY not in repr(dict(s.attributes)) for s in spans.get_finished_spans())


async def test_azure_paths_name_the_azure_provider(fake, azure_client, spans):
    fake.enqueue(Script.text("Azure says hi."))
    async with azure_client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
        await stream.until_done()
    assert {s.attributes[sc.GEN_AI_PROVIDER_NAME] for s in spans.get_finished_spans()} == {"azure.ai.openai"}


async def test_shutdown_ends_open_runs(fake, client, spans, parts):
    await _stream(client, fake, Script.tool_then_text(), tools=[WEATHER_TOOL])
    await parts.tracing.close()
    [agent] = _named(spans)["invoke_agent"]
    assert agent.attributes["runtap.run.abandoned"] == "shutdown"


async def test_a_run_first_met_mid_life_gets_a_span_from_then_on(fake, upstream, client, spans, recorded):
    async with openai.AsyncOpenAI(base_url=str(upstream.make_url("/v1")), api_key="sk-direct") as direct:
        fake.enqueue(Script.tool_then_text())
        run = await direct.beta.threads.create_and_run_poll(assistant_id="asst_abc", poll_interval_ms=1)
    assert run.status == "requires_action"
    await client.beta.threads.runs.list(thread_id=run.thread_id)  # a listing alone starts nothing
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    await client.beta.threads.runs.retrieve(thread_id=run.thread_id, run_id=run.id)
    await client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "18C"}],
        poll_interval_ms=1)
    [agent] = _named(spans)["invoke_agent"]
    assert agent.attributes["runtap.run.id"] == run.id and agent.attributes["runtap.run.status"] == "completed"
    q = await recorded()
    traced = q("select route from requests where trace_id = ? order by started_at", _hex(agent.context.trace_id))
    assert traced[0] == ("GET /v1/threads/{thread_id}/runs/{run_id}",)
    assert q("select trace_id from requests where route = 'GET /v1/threads/{thread_id}/runs'") == [(None,)]
