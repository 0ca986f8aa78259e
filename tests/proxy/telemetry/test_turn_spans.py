"""Spans of Responses and Chat turns through the real proxy, SDK and fake upstream (the SDK's in-memory exporter)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from proxy.apis import classify
from proxy.exchange import Exchange, Outcome, RunEvent
from proxy.runs import ModelCall, RunState
from proxy.telemetry import semconv as sc
from proxy.telemetry.spans import SpanRecord, Spans
from proxy.telemetry.turn_spans import TurnTracing
from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import ChatScript, Reasoning, ResponseScript
from tests.e2e.test_proxy_responses import WEATHER
from tests.proxy.telemetry.test_run_spans import TRACEPARENT, _hex, _named, proxy, settings, spans, telemetry

__all__ = ["proxy", "settings", "spans", "telemetry"]  # the fixtures, shared with the Assistants spans' tests
CHAT_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"]}}


def _ns(at: datetime) -> float:
    return at.timestamp() * 1e9


async def test_a_responses_tool_turn_is_one_trace_of_its_responses_and_the_clients_tool_time(
        fake, client, spans, recorded):
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Paris"}, input_tokens=50))
    fake.enqueue_response(ResponseScript.of(Reasoning(reasoning_tokens=30), *ResponseScript.text("Sunny.").items,
                                            input_tokens=90, cached_tokens=64))
    first = await client.responses.create(model="gpt-4o", input="Weather?", tools=[WEATHER],
                                          extra_headers={"traceparent": TRACEPARENT})
    [call] = first.output
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}  # type: ignore[union-attr]
    async with client.responses.stream(model="gpt-4o", previous_response_id=first.id, input=[output],
                                       tools=[WEATHER]) as stream:
        second = await stream.get_final_response()
    named = _named(spans)
    [turn] = named["invoke_agent"]
    asking, answering = sorted(named["chat gpt-4o"], key=lambda s: s.start_time)
    [tool] = named["execute_tool get_weather"]
    assert len(spans.get_finished_spans()) == 4
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {int(TRACEPARENT.split("-")[1], 16)}
    assert turn.kind is SpanKind.CLIENT and turn.parent.is_remote  # the client's traceparent is its parent
    assert asking.parent.span_id == answering.parent.span_id == turn.context.span_id
    assert tool.kind is SpanKind.INTERNAL and tool.parent.span_id == asking.context.span_id

    assert turn.attributes["runtap.inferred"] is True and turn.attributes["runtap.run.id"] == first.id
    assert turn.attributes["runtap.run.status"] == "completed" and turn.status.status_code is StatusCode.UNSET
    assert first.usage is not None and second.usage is not None
    assert (turn.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS], turn.attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == (
        50 + 90, first.usage.output_tokens + second.usage.output_tokens)
    assert [s.attributes[sc.GEN_AI_RESPONSE_ID] for s in (asking, answering)] == [first.id, second.id]
    assert {s.attributes[sc.OPENAI_API_TYPE] for s in (asking, answering)} == {"responses"}
    assert [s.attributes[sc.GEN_AI_REQUEST_STREAM] for s in (asking, answering)] == [False, True]
    assert sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK not in asking.attributes
    assert 0 < answering.attributes[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] < 5
    assert asking.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
    assert answering.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    usage = answering.attributes
    assert (usage[sc.GEN_AI_USAGE_INPUT_TOKENS], usage[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS],
            usage[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS]) == (90, 64, 30)
    assert answering.attributes[sc.GEN_AI_RESPONSE_MODEL] == second.model
    assert tool.attributes[sc.GEN_AI_TOOL_CALL_ID] == call.call_id  # type: ignore[union-attr]

    # runtap's clock throughout: the tool span is the client's time, from the end of the asking
    # response to the request carrying the output; the turn covers its responses.
    assert turn.start_time <= asking.start_time < asking.end_time <= tool.start_time < tool.end_time
    assert tool.end_time <= answering.start_time < answering.end_time <= turn.end_time
    q = await recorded()
    [(requested_at, submitted_at)] = q("select requested_at, submitted_at from tool_calls")
    assert tool.start_time == pytest.approx(_ns(requested_at), abs=2000)
    assert tool.end_time == pytest.approx(_ns(submitted_at), abs=2000)
    trace_id = _hex(turn.context.trace_id)
    assert q("select distinct trace_id from responses") == q("select trace_id from runs") == [(trace_id,)]
    assert q("select distinct trace_id from requests") == [(trace_id,)]


async def test_a_chat_tool_turn_ends_after_its_usage_chunk(fake, client, spans, recorded):
    fake.enqueue_chat(ChatScript.tool_calls(("get_weather", {"city": "Paris"}), prompt_tokens=40))
    fake.enqueue_chat(ChatScript(text="Sunny.", prompt_tokens=60, cached_tokens=32))
    messages: list = [{"role": "user", "content": "Weather?"}]
    first = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[CHAT_WEATHER])
    [call] = first.choices[0].message.tool_calls or []
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    chunks = [c async for c in await client.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[CHAT_WEATHER], stream=True, stream_options={"include_usage": True})]
    named = _named(spans)
    [turn] = named["invoke_agent"]
    asking, answering = sorted(named["chat gpt-4o"], key=lambda s: s.start_time)
    [tool] = named["execute_tool get_weather"]
    assert {s.attributes[sc.OPENAI_API_TYPE] for s in (asking, answering)} == {"chat_completions"}
    assert [s.attributes[sc.GEN_AI_RESPONSE_ID] for s in (asking, answering)] == [first.id, chunks[0].id]
    assert tool.parent.span_id == asking.context.span_id
    assert asking.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
    # The finish chunk ended the turn, its usage chunk came after: both spans carry it, none is abandoned.
    usage = answering.attributes
    assert (usage[sc.GEN_AI_USAGE_INPUT_TOKENS], usage[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS]) == (60, 32)
    assert turn.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] == 100
    assert all(s.status.status_code is StatusCode.UNSET for s in spans.get_finished_spans())
    assert answering.end_time <= turn.end_time and tool.end_time <= answering.start_time
    q = await recorded()
    assert q("select step_id from tool_calls") == [(first.id,)]  # the completion that asked for it


async def test_a_background_response_span_ends_when_a_poll_sees_it_end(fake, client, spans, recorded):
    created = await client.responses.create(model="gpt-4o", input="Long task", background=True)
    assert spans.get_finished_spans() == ()  # still running upstream: its spans stay open
    while (await client.responses.retrieve(created.id)).status != "completed":
        pass
    named = _named(spans)
    [turn], [chat] = named["invoke_agent"], named["chat gpt-4o"]
    q = await recorded()
    [(last_poll,)] = q("select max(started_at) from requests")
    assert chat.end_time >= _ns(last_poll) and turn.end_time >= chat.end_time
    assert q("select distinct trace_id from requests") == [(_hex(turn.context.trace_id),)]


async def test_a_refused_create_ends_its_spans_with_the_status(fake, client, spans):
    fake.fault(Fault(path="/responses", status=400, error_message="Invalid 'input'."))
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="gpt-4o", input="Hi")
    named = _named(spans)
    [turn], [chat] = named["invoke_agent"], named["chat gpt-4o"]
    assert turn.attributes[sc.ERROR_TYPE] == chat.attributes[sc.ERROR_TYPE] == "400"
    assert chat.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("telemetry", [{"capture_content": True}, {}], ids=["capture_content", "default"])
async def test_content_on_turn_spans_only_with_capture_content(fake, client, spans, telemetry):
    import json

    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Paris"}))
    fake.enqueue_response(ResponseScript.text("Sunny in Paris."))
    first = await client.responses.create(model="gpt-4o", input="Weather in Paris?", instructions="Be brief.",
                                          tools=[WEATHER])
    [call] = first.output
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}  # type: ignore[union-attr]
    await client.responses.create(model="gpt-4o", previous_response_id=first.id, input=[output])
    named = _named(spans)
    asking, answering = sorted(named["chat gpt-4o"], key=lambda s: s.start_time)
    [tool] = named["execute_tool get_weather"]
    content = {sc.GEN_AI_INPUT_MESSAGES, sc.GEN_AI_OUTPUT_MESSAGES, sc.GEN_AI_SYSTEM_INSTRUCTIONS,
               sc.GEN_AI_TOOL_CALL_ARGUMENTS, sc.GEN_AI_TOOL_CALL_RESULT}
    if not telemetry:
        assert all(not content & set(s.attributes) for s in spans.get_finished_spans())
        return
    assert json.loads(asking.attributes[sc.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]
    assert json.loads(asking.attributes[sc.GEN_AI_SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "Be brief."}]
    assert json.loads(answering.attributes[sc.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": call.call_id,  # type: ignore[union-attr]
                                    "response": "sunny"}]}]
    assert json.loads(answering.attributes[sc.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sunny in Paris."}]}]
    assert json.loads(tool.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"city": "Paris"}
    assert tool.attributes[sc.GEN_AI_TOOL_CALL_RESULT] == "sunny"


# -- the observer alone -----------------------------------------------------------------------------

def _tracing(now_ns: list[int]) -> tuple[TurnTracing, list[SpanRecord]]:
    ended: list[SpanRecord] = []
    return TurnTracing(Spans(ended.append, TracerProvider()), abandoned_run_s=60,
                       clock_ns=lambda: now_ns[0]), ended


def _create(at: datetime) -> Exchange:
    ex = Exchange(classify("POST", "/v1/responses"), "POST", "/v1/responses", "", None, b"{}")
    ex.started_at, ex.request_json, ex.streamed = at, {"model": "gpt-4o"}, False
    return ex


def test_built_in_tool_items_are_execute_tool_children_of_their_response():
    t0 = datetime(2026, 12, 7, 12, tzinfo=UTC)
    now = [int(_ns(t0 + timedelta(seconds=10)))]
    tracing, ended = _tracing(now)
    ex = _create(t0)
    tracing.response_started(ex)
    added, done = t0 + timedelta(seconds=1), t0 + timedelta(seconds=3)
    call = ModelCall("resp_1", "gpt-4o", True, 10, 5, 15, "completed", tools=(
        ("ws_1", "web_search_call", added, done), ("fs_1", "file_search_call", added, None)))
    run = RunState("resp_1", api="responses", status="completed")
    tracing.run_event(ex, RunEvent(-1, None, "", None, t0 + timedelta(seconds=4), changes=(call, run), source="body"))
    tracing.exchange_finished(ex)
    by_name = {s.name: s for s in ended}
    search = by_name["execute_tool web_search_call"]
    assert "execute_tool file_search_call" not in by_name  # not done: no span yet
    assert search.parent_id == by_name["chat gpt-4o"].span_id
    assert (search.start_ns, search.end_ns) == (_ns(added), _ns(done))
    assert search.attributes[sc.GEN_AI_TOOL_TYPE] == "extension"
    assert by_name["invoke_agent"].end_ns == _ns(t0 + timedelta(seconds=4))


def test_a_turn_left_waiting_for_its_tool_outputs_is_abandoned_after_the_idle_time():
    t0 = datetime(2026, 12, 7, 12, tzinfo=UTC)
    now = [int(_ns(t0))]
    tracing, ended = _tracing(now)
    ex = _create(t0)
    tracing.response_started(ex)
    call = ModelCall("resp_1", "gpt-4o", True, 10, 5, 15, "completed", finish_reason="tool_calls")
    run = RunState("resp_1", api="responses", status="requires_action")
    tracing.run_event(ex, RunEvent(-1, None, "", None, t0 + timedelta(seconds=1), changes=(call, run), source="body"))
    ex.finish(Outcome.COMPLETED)
    tracing.exchange_finished(ex)
    assert [s.name for s in ended] == ["chat gpt-4o"] and list(tracing.open) == ["resp_1"]
    now[0] = int(_ns(t0 + timedelta(seconds=62)))
    tracing.sweep()
    [turn] = [s for s in ended if s.name == "invoke_agent"]
    assert turn.attributes[sc.ERROR_TYPE] == "abandoned" and turn.attributes["runtap.run.abandoned"] == "timeout"
    assert turn.end_ns == now[0] and not tracing.open
