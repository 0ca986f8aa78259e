"""The real openai SDK through the proxy, for every Assistants flow: bytes and rows exact."""

from __future__ import annotations

from openai import AsyncAssistantEventHandler

from proxy.testing.scripts import Script
from tests.conftest import KEY_ID, sha256


def _sent(fake, path_suffix):
    return [r for r in fake.responses if r.path.endswith(path_suffix)]


async def test_create_and_run_stream_is_byte_exact_and_recorded(fake, client, proxy, recorded):
    fake.enqueue(Script.text("Hello! How can I assist you today?", prompt_tokens=20, completion_tokens=11))
    async with client.beta.threads.create_and_run_stream(
        assistant_id="asst_abc", thread={"messages": [{"role": "user", "content": "Hello"}]},
    ) as stream:
        await stream.until_done()
        run = await stream.get_final_run()
        messages = await stream.get_final_messages()
    assert run.status == "completed"
    assert messages[0].content[0].text.value == "Hello! How can I assist you today?"
    q = await recorded()
    [(status, prompt, completion, total, key_id, thread_id)] = q(
        "select status, prompt_tokens, completion_tokens, total_tokens, key_id, thread_id from runs")
    assert (status, prompt, completion, total, key_id) == ("completed", 20, 11, 31, KEY_ID)
    assert thread_id == run.thread_id
    [sent] = fake.responses
    [(outcome, streamed, n_events, http_status)] = q("select outcome, streamed, event_count, status from requests")
    assert (outcome, streamed, http_status) == ("completed", True, 200)
    events = q("select seq, event, data from events order by seq")
    assert [e[1] for e in events] == sent.events
    assert n_events == len(events)
    assert events[0][1] == "thread.created" and events[-1][1:] == ("done", "[DONE]")
    wire = "".join(f"event: {name}\ndata: {data}\n\n" for _, name, data in events).encode()
    assert sha256(wire) == sha256(b"".join(sent.writes))


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"]}}}


class ToolHandler(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.required: list = []

    async def on_event(self, event) -> None:
        if event.event == "thread.run.requires_action":
            self.required = event.data.required_action.submit_tool_outputs.tool_calls


async def _tool_conversation(client, fake, script):
    fake.enqueue(script)
    handler = ToolHandler()
    async with client.beta.threads.create_and_run_stream(
        assistant_id="asst_abc", tools=[WEATHER_TOOL], event_handler=handler,
        thread={"messages": [{"role": "user", "content": "Weather in SF?"}]},
    ) as stream:
        await stream.until_done()
    first = handler.current_run
    assert first.status == "requires_action"
    outputs = [{"tool_call_id": call.id, "output": f"18C for {call.function.name}"} for call in handler.required]
    async with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=first.thread_id, run_id=first.id, tool_outputs=outputs,
    ) as stream:
        await stream.until_done()
        final = await stream.get_final_run()
    return handler, outputs, final


async def test_tool_call_across_submit_tool_outputs_is_one_run(fake, client, recorded):
    script = Script.tool_then_text(arguments={"location": "San Francisco, CA", "unit": "celsius"},
                                   tool_prompt_tokens=80, tool_completion_tokens=18, prompt_tokens=120,
                                   completion_tokens=9)
    handler, outputs, final = await _tool_conversation(client, fake, script)
    assert final.status == "completed"
    expected = script.total_usage()
    assert final.usage.total_tokens == expected["total_tokens"]
    q = await recorded()
    [(run_id, status, total, rounds, requests)] = q(
        "select run_id, status, total_tokens, tool_rounds, request_count from runs")
    assert (run_id, status, total, rounds, requests) == (final.id, "completed", expected["total_tokens"], 1, 2)
    [(call_id, name, arguments, output, requested_at, submitted_at, step_type)] = q(
        "select c.tool_call_id, c.name, c.arguments, c.output, c.requested_at, c.submitted_at, s.type "
        "from tool_calls c join run_steps s using (step_id)")
    assert call_id == handler.required[0].id and name == "get_current_weather"
    assert arguments == '{"location":"San Francisco, CA","unit":"celsius"}'
    assert output == outputs[0]["output"]
    assert requested_at <= submitted_at and step_type == "tool_calls"
    steps = q("select type, status, total_tokens from run_steps order by created_at, type desc")
    assert sorted(steps) == sorted([("tool_calls", "completed", 98), ("message_creation", "completed", 129)])
    [(text,)] = q("select text from messages where role = 'assistant'")
    assert text == "It is 18°C and sunny in San Francisco."
    routes = q("select route, outcome from requests order by started_at")
    assert routes == [("POST /v1/threads/runs", "completed"),
                      ("POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", "completed")]


async def test_create_and_run_poll_with_tools_is_stitched_from_polls(fake, client, recorded):
    script = Script.tool_then_text()
    fake.enqueue(script)
    run = await client.beta.threads.create_and_run_poll(
        assistant_id="asst_abc", tools=[WEATHER_TOOL], poll_interval_ms=1,
        thread={"messages": [{"role": "user", "content": "Weather?"}]})
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    run = await client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "18C"}],
        poll_interval_ms=1)
    assert run.status == "completed"
    steps = await client.beta.threads.runs.steps.list(thread_id=run.thread_id, run_id=run.id)
    assert len(steps.data) == 2
    q = await recorded()
    [(status, total, rounds, polls)] = q("select status, total_tokens, tool_rounds, request_count from runs")
    assert (status, total, rounds) == ("completed", script.total_usage()["total_tokens"], 1)
    assert polls == q("select count(*) from requests where run_id = ? and route not like '%steps'", run.id)[0][0]
    [(output, arguments)] = q("select output, arguments from tool_calls")
    assert output == "18C" and arguments == call.function.arguments
    assert q("select count(*) from run_steps where status = 'completed'") == [(2,)]
    assert q("select count(*) from events") == [(0,)]
    assert q("select distinct streamed from requests") == [(False,)]


async def test_raw_stream_true_bytes_reach_the_client_exactly(fake, client, recorded):
    fake.enqueue(Script.text("One two three four five six seven.", chunks=7))
    async with client.beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        body = b"".join([chunk async for chunk in response.iter_bytes()])
    [sent] = fake.responses
    assert sha256(body) == sha256(b"".join(sent.writes))
    assert response.headers["x-request-id"] == sent.headers["x-request-id"]
    q = await recorded()
    [(upstream_request_id, outcome)] = q("select upstream_request_id, outcome from requests")
    assert (upstream_request_id, outcome) == (sent.headers["x-request-id"], "completed")
    assert q("select count(*) from events") == [(len(sent.events),)]


async def test_azure_paths_and_api_key_header(fake, azure_client, recorded):
    fake.enqueue(Script.text("Azure says hi.", prompt_tokens=7, completion_tokens=3))
    async with azure_client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
        await stream.until_done()
        run = await stream.get_final_run()
    assert run.status == "completed"
    seen = fake.requests[0]
    assert seen.path == "/openai/threads/runs" and seen.query["api-version"] == "2024-05-01-preview"
    q = await recorded()
    assert q("select route, key_id, query from requests") == [
        ("POST /openai/threads/runs", KEY_ID, "api-version=2024-05-01-preview")]
    assert q("select status, total_tokens, key_id from runs") == [("completed", 10, KEY_ID)]


async def _stream_run(client, fake, script, **kwargs):
    fake.enqueue(script)
    async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc", **kwargs) as stream:
        await stream.until_done()
        return stream.current_run


async def test_failed_run_records_its_error(fake, client, recorded):
    from proxy.testing.scripts import Outcome

    run = await _stream_run(client, fake, Script.text("partial").ending(
        Outcome.failed("The model crashed.", code="server_error")))
    assert run.status == "failed"
    q = await recorded()
    assert q("select status, last_error_code, last_error_message from runs") == [
        ("failed", "server_error", "The model crashed.")]


async def test_incomplete_under_the_completed_event_name_is_recorded_incomplete(fake, client, recorded):
    from proxy.testing.scripts import Outcome

    await _stream_run(client, fake, Script.text("cut short").ending(
        Outcome.incomplete("max_completion_tokens", under_completed_event=True)))
    q = await recorded()
    assert q("select status, incomplete_reason from runs") == [("incomplete", "max_completion_tokens")]
    assert q("select count(*) from events where event = 'thread.run.completed'") == [(1,)]
    assert q("select status, incomplete_reason from messages where role = 'assistant'") == [
        ("incomplete", "max_tokens")]


async def test_expired_and_cancelled_runs(fake, client, recorded):
    expired = await _stream_run(client, fake, Script.text("slow").ending("expired"))
    assert expired.status == "expired"
    fake.enqueue(Script.tool_then_text())
    run = await client.beta.threads.create_and_run_poll(assistant_id="asst_abc", poll_interval_ms=1)
    assert run.status == "requires_action"
    cancelling = await client.beta.threads.runs.cancel(thread_id=run.thread_id, run_id=run.id)
    assert cancelling.status == "cancelling"
    final = await client.beta.threads.runs.retrieve(thread_id=run.thread_id, run_id=run.id)
    assert final.status == "cancelled"
    q = await recorded()
    assert sorted(q("select run_id, status from runs")) == sorted([(expired.id, "expired"), (run.id, "cancelled")])
    [(ended_at,)] = q("select ended_at from runs where run_id = ?", run.id)
    assert ended_at is not None
    assert q("select output, submitted_at from tool_calls") == [(None, None)]

