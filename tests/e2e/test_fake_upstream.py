"""The fake upstream against the real openai SDK (3.57.0): if the SDK is happy, the fake is faithful.

These tests pin the fake's contract, since every proxy test trusts it: event order, usage
accounting, stateful polling, error shapes, and that each fault really produces the wire-level
symptom it claims to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from openai import AsyncAzureOpenAI, AsyncOpenAI
from openai.lib.streaming import AsyncAssistantEventHandler

from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.faults import Fault
from proxy.testing.scripts import (
    CodeInterpreterTurn,
    DemoScripts,
    FileSearchTurn,
    FunctionCall,
    Outcome,
    Script,
    TextTurn,
    ToolRound,
)
from proxy.testing.streams import split_text

BETA = {"OpenAI-Beta": "assistants=v2"}
AUTH = {"Authorization": "Bearer sk-test-abc", **BETA}
THREAD = {"messages": [{"role": "user", "content": "What is the weather like in San Francisco?"}]}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}
TEXT_EVENTS = [
    "thread.run.step.created", "thread.run.step.in_progress", "thread.message.created",
    "thread.message.in_progress", "thread.message.delta", "thread.message.completed",
    "thread.run.step.completed",
]


class Recorder(AsyncAssistantEventHandler):
    """Collects what an application would see through the SDK's stream helper."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.text = ""
        self.step_usage: dict[str, dict[str, int]] = {}
        self.tool_calls: dict[str, Any] = {}

    async def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.text += delta.value or ""

    async def on_run_step_done(self, run_step: Any) -> None:
        if run_step.usage is not None:
            self.step_usage[run_step.id] = run_step.usage.model_dump()

    async def on_tool_call_done(self, tool_call: Any) -> None:
        self.tool_calls[tool_call.id] = tool_call


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(seed=7)


@pytest.fixture
async def server(fake: FakeUpstream, aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(fake.app)


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test-abc", max_retries=0) as c:
        yield c


@pytest.fixture
async def http(server: TestServer) -> AsyncIterator[ClientSession]:
    async with ClientSession(str(server.make_url(""))) as s:
        yield s


def frames(body: bytes) -> list[tuple[str, str]]:
    """Strict parse: every event is exactly ``event:`` + ``data:`` + blank line."""
    assert body.endswith(b"\n\n")
    out = []
    for block in body.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        out.append((lines[0][7:], lines[1][6:]))
    return out


def total(usages: list[dict[str, int]]) -> dict[str, int]:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: sum(u[k] for u in usages) for k in keys}


async def test_stream_text_answer(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    text = "Hello! How can I assist you today?"
    fake.enqueue(Script.text(text, prompt_tokens=20, completion_tokens=11))
    async with client.beta.threads.create_and_run_stream(assistant_id="asst_1", thread=THREAD,
                                                         event_handler=Recorder()) as stream:
        run = await stream.get_final_run()
    assert stream.text == text
    assert run.status == "completed" and run.expires_at is None and run.completed_at is not None
    assert run.usage is not None and run.usage.model_dump() == {"prompt_tokens": 20, "completion_tokens": 11,
                                                                "total_tokens": 31}
    assert list(stream.step_usage.values()) == [run.usage.model_dump()]
    deltas = len(split_text(text))
    assert deltas > 1
    expected = ["thread.created", "thread.run.created", "thread.run.queued", "thread.run.in_progress",
                *TEXT_EVENTS[:4], *["thread.message.delta"] * deltas, *TEXT_EVENTS[5:],
                "thread.run.completed"]
    assert stream.events == expected
    sent = fake.responses[-1]
    assert sent.events == [*expected, "done"] and sent.complete and not sent.aborted
    assert len(sent.writes) == len(expected) + 1  # one write per event
    parsed = frames(sent.body)
    assert parsed[-1] == ("done", "[DONE]")
    for _, data in parsed[:-1]:
        assert json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False) == data
    assert sent.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert sent.headers["x-request-id"].startswith("req_") and len(sent.headers["x-request-id"]) == 36
    assert sent.headers["openai-version"] == "2020-10-01" and "openai-processing-ms" in sent.headers
    seen = fake.requests[-1]
    assert seen.path == "/v1/threads/runs" and seen.json()["stream"] is True
    assert seen.headers["openai-beta"] == "assistants=v2"


async def test_tool_then_text_stream(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    script = Script.tool_then_text("get_current_weather", {"location": "San Francisco, CA"},
                                   "18°C and sunny.")
    fake.enqueue(script)
    async with client.beta.threads.create_and_run_stream(
            assistant_id="asst_1", thread=THREAD, tools=[WEATHER_TOOL], event_handler=Recorder()) as first:
        paused = await first.get_final_run()
    assert paused.status == "requires_action" and paused.required_action is not None
    assert first.events[-1] == "thread.run.requires_action"
    assert "thread.run.step.completed" not in first.events  # the tool step stays in_progress
    (call,) = paused.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA"}
    assert first.tool_calls[call.id].function.arguments == call.function.arguments  # rebuilt from deltas
    assert first.events.count("thread.run.step.delta") > 2
    assert paused.usage is not None and paused.usage.model_dump() == script.turns[0].usage()

    async with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=paused.thread_id, run_id=paused.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "18C"}], event_handler=Recorder()) as second:
        final = await second.get_final_run()
    assert second.events[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert second.text == "18°C and sunny."
    assert final.status == "completed" and final.id == paused.id
    assert final.usage is not None
    assert final.usage.model_dump() == total(list(second.step_usage.values())) == script.total_usage()
    steps = await client.beta.threads.runs.steps.list(thread_id=final.thread_id, run_id=final.id, order="asc")
    tool_step = steps.data[0]
    assert tool_step.step_details.type == "tool_calls"
    assert tool_step.step_details.tool_calls[0].function.output == "18C"  # type: ignore[union-attr]
    assert total([s.usage.model_dump() for s in steps.data if s.usage]) == final.usage.model_dump()
    assert (await client.beta.threads.runs.steps.retrieve(
        thread_id=final.thread_id, run_id=final.id, step_id=tool_step.id)).id == tool_step.id


async def test_poll_with_tool_round(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.tool_then_text(answer_text="It is sunny."))
    run = await client.beta.threads.create_and_run_poll(assistant_id="asst_1", thread=THREAD,
                                                        tools=[WEATHER_TOOL])
    assert run.status == "requires_action" and run.required_action is not None
    polls = [r for r in fake.requests if r.method == "GET"]
    assert polls and all(r.headers.get("x-stainless-poll-helper") == "true" for r in polls)
    assert fake.responses[-1].headers["openai-poll-after-ms"] == "1"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    done = await client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}])
    assert done.status == "completed" and done.usage is not None
    messages = await client.beta.threads.messages.list(thread_id=run.thread_id)
    assert [m.role for m in messages.data] == ["assistant", "user"]  # default order desc
    assert messages.data[0].content[0].text.value == "It is sunny."  # type: ignore[union-attr]
    assert messages.data[0].run_id == run.id


async def test_non_stream_run_advances_one_phase_per_poll(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    run = await client.beta.threads.create_and_run(assistant_id="asst_1", thread=THREAD)
    assert run.status == "queued"
    statuses = [(await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)).status
                for _ in range(3)]
    assert statuses == ["in_progress", "completed", "completed"]


async def test_raw_stream_and_parallel_tools(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.parallel_tools_then_text([("get_weather", {"city": "Paris"}),
                                                  ("get_time", {"tz": "Europe/Paris"})]))
    stream = await client.beta.threads.create_and_run(assistant_id="asst_1", thread=THREAD, stream=True)
    events = [event async for event in stream]
    assert events[0].event == "thread.created" and events[-1].event == "thread.run.requires_action"
    calls = events[-1].data.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    indexes = {d.data.delta.step_details.tool_calls[0].index  # type: ignore[union-attr]
               for d in events if d.event == "thread.run.step.delta"}
    assert indexes == {0, 1}
    with pytest.raises(openai.BadRequestError) as err:  # outputs must match the pending call ids
        await client.beta.threads.runs.submit_tool_outputs(
            thread_id=events[-1].data.thread_id, run_id=events[-1].data.id,  # type: ignore[union-attr]
            tool_outputs=[{"tool_call_id": calls[0].id, "output": "x"}])
    assert err.value.status_code == 400 and "Expected tool outputs" in err.value.message


async def test_azure_client_on_openai_paths(fake: FakeUpstream, server: TestServer) -> None:
    async with AsyncAzureOpenAI(azure_endpoint=str(server.make_url("")), api_key="azure-key",
                                api_version="2024-05-01-preview", max_retries=0) as azure:
        async with azure.beta.threads.create_and_run_stream(assistant_id="asst_1", thread=THREAD) as stream:
            run = await stream.get_final_run()
        assert run.status == "completed"
        polled = await azure.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
        assert polled.status == "completed"
    seen = fake.requests[0]
    assert seen.path == "/openai/threads/runs" and seen.query["api-version"] == "2024-05-01-preview"
    assert seen.headers["api-key"] == "azure-key" and "authorization" not in seen.headers
    assert seen.headers.get("openai-beta") == "assistants=v2"  # the SDK sends it to Azure as well


async def test_failed_run(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.text("Looking").ending(Outcome.failed("boom", partial_text="Let me")))
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=Recorder()) as s:
        run = await s.get_final_run()
    assert run.status == "failed" and run.failed_at and run.last_error is not None
    assert (run.last_error.code, run.last_error.message) == ("server_error", "boom")
    assert s.events[-3:] == ["thread.message.incomplete", "thread.run.step.failed", "thread.run.failed"]
    assert run.usage is not None and run.usage.model_dump() == total(list(s.step_usage.values()))


@pytest.mark.parametrize("under_completed", [False, True])
async def test_incomplete_run(fake: FakeUpstream, client: AsyncOpenAI, under_completed: bool) -> None:
    outcome = Outcome.incomplete(under_completed_event=under_completed)
    fake.enqueue(Script.text("Deep learning is").ending(outcome))
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=Recorder()) as s:
        run = await s.get_final_run()
        messages = await s.get_final_messages()
    assert run.status == "incomplete" and run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_completion_tokens"
    assert s.events[-1] == ("thread.run.completed" if under_completed else "thread.run.incomplete")
    assert messages[0].status == "incomplete" and messages[0].incomplete_details.reason == "max_tokens"  # type: ignore[union-attr]


async def test_cancel_endpoint(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    run = await client.beta.threads.create_and_run(assistant_id="a", thread=THREAD)
    cancelling = await client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert cancelling.status == "cancelling"
    final = await client.beta.threads.runs.poll(run.id, run.thread_id)
    assert final.status == "cancelled" and final.cancelled_at is not None
    with pytest.raises(openai.BadRequestError, match="Cannot cancel run with status 'cancelled'"):
        await client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)


async def test_cancel_paused_run_cancels_tool_step(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.tool_then_text())
    run = await client.beta.threads.create_and_run_poll(assistant_id="a", thread=THREAD)
    await client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    final = await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    steps = await client.beta.threads.runs.steps.list(thread_id=run.thread_id, run_id=run.id)
    assert final.status == "cancelled" and [s.status for s in steps.data] == ["cancelled"]
    assert final.usage is not None and steps.data[0].usage is not None
    assert final.usage.model_dump() == steps.data[0].usage.model_dump()


async def test_cancel_during_stream(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.text("one two three four five six"))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.05))
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=Recorder()) as s:
        async for event in s:
            if event.event == "thread.message.delta" and s.current_run is not None:
                await client.beta.threads.runs.cancel(s.current_run.id, thread_id=s.current_run.thread_id)
                break
        run = await s.get_final_run()
    assert run.status == "cancelled"
    assert s.events[-4:] == ["thread.run.cancelling", "thread.message.incomplete",
                             "thread.run.step.cancelled", "thread.run.cancelled"]


async def test_expired_after_pause(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.of(ToolRound((FunctionCall("slow_tool", {}),)), outcome=Outcome("expired")))
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD) as s:
        paused = await s.get_final_run()
    assert paused.status == "requires_action"
    expired = await client.beta.threads.runs.retrieve(paused.id, thread_id=paused.thread_id)
    assert expired.status == "expired" and expired.required_action is None
    steps = await client.beta.threads.runs.steps.list(thread_id=paused.thread_id, run_id=paused.id)
    assert steps.data[0].status == "expired" and steps.data[0].expired_at is not None
    call_id = paused.required_action.submit_tool_outputs.tool_calls[0].id  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError, match='Runs in status "expired" do not accept tool outputs'):
        await client.beta.threads.runs.submit_tool_outputs(
            thread_id=paused.thread_id, run_id=paused.id,
            tool_outputs=[{"tool_call_id": call_id, "output": "x"}])


async def test_expired_while_running(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.text("hi").ending("expired"))
    run = await client.beta.threads.create_and_run_poll(assistant_id="a", thread=THREAD)
    assert run.status == "expired"


async def test_builtin_tools_and_several_rounds(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    script = Script.of(CodeInterpreterTurn(), FileSearchTurn(), ToolRound((FunctionCall("a", {"x": 1}),)),
                       ToolRound((FunctionCall("b", {"y": 2}),)), TextTurn("done"))
    fake.enqueue(script)
    run = await client.beta.threads.create_and_run_poll(assistant_id="a", thread=THREAD)
    for _ in range(2):
        assert run.status == "requires_action" and run.required_action is not None
        calls = run.required_action.submit_tool_outputs.tool_calls
        outputs = [{"tool_call_id": c.id, "output": "ok"} for c in calls]
        async with client.beta.threads.runs.submit_tool_outputs_stream(
                thread_id=run.thread_id, run_id=run.id, tool_outputs=outputs) as s:
            run = await s.get_final_run()
    assert run.status == "completed" and run.usage is not None
    assert run.usage.model_dump() == script.total_usage()
    page = await client.beta.threads.runs.steps.list(thread_id=run.thread_id, run_id=run.id, order="asc")
    steps = page.data
    kinds = [tc.type for s in steps if s.step_details.type == "tool_calls"
             for tc in s.step_details.tool_calls]  # type: ignore[union-attr]
    assert kinds == ["code_interpreter", "file_search", "function", "function"]
    ci = steps[0].step_details.tool_calls[0].code_interpreter  # type: ignore[union-attr]
    assert ci.outputs[0].logs == "42.0\n"  # type: ignore[union-attr]


async def test_builtin_tool_deltas_accumulate_in_sdk(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.of(CodeInterpreterTurn(input="print(6*7)", logs="42\n"), TextTurn("42")))
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=Recorder()) as s:
        await s.until_done()
    (tool_call,) = s.tool_calls.values()
    assert tool_call.code_interpreter.input == "print(6*7)"
    assert tool_call.code_interpreter.outputs[0].logs == "42\n"


async def test_error_shapes(fake: FakeUpstream, client: AsyncOpenAI, http: ClientSession) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        await client.beta.threads.runs.retrieve("run_nope", thread_id="thread_nope")
    assert nf.value.body == {"message": "No thread found with id 'thread_nope'.",
                             "type": "invalid_request_error", "param": None, "code": None}
    thread = await client.beta.threads.create()
    with pytest.raises(openai.NotFoundError, match="No run found with id 'run_nope'"):
        await client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id)
    async with http.post("/v1/threads/runs", json={"assistant_id": "a"},
                         headers={"Authorization": "Bearer sk-x"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_beta"
        assert resp.headers["x-request-id"].startswith("req_")
    async with http.post("/v1/threads/runs", json={"assistant_id": "a"}, headers=BETA) as resp:
        body = await resp.json()
        assert resp.status == 401 and body["error"]["code"] == "invalid_api_key"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    injected = {"assistant_id": "a", "stream_options": {}}
    async with http.post("/v1/threads/runs", json=injected, headers=AUTH) as r:
        assert r.status == 400 and "Unrecognized request argument" in (await r.json())["error"]["message"]
    async with http.post("/v1/threads/runs", json={}, headers=AUTH) as r:
        assert (await r.json())["error"]["code"] == "missing_required_parameter"
    async with http.get("/v1/nope", headers=AUTH) as r:
        assert r.status == 404 and (await r.json())["error"]["message"] == "Invalid URL (GET /v1/nope)"
    async with http.post("/openai/threads", headers={"api-key": "k"}) as r:  # Azure needs api-version
        assert r.status == 404


async def test_active_run_conflicts(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue(Script.tool_then_text())
    run = await client.beta.threads.create_and_run_poll(assistant_id="a", thread=THREAD)
    with pytest.raises(openai.BadRequestError, match="already has an active run"):
        await client.beta.threads.runs.create(thread_id=run.thread_id, assistant_id="a")
    with pytest.raises(openai.BadRequestError, match=r"while a run run_\w+ is active"):
        await client.beta.threads.messages.create(thread_id=run.thread_id, role="user", content="hi")


async def test_reset_after_bytes(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fault(Fault(path="/threads/runs", reset_after_bytes=1500))
    with pytest.raises((httpx2.RemoteProtocolError, openai.APIConnectionError)):
        async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD) as s:
            await s.until_done()
    sent = fake.responses[-1]
    assert sent.aborted and not sent.complete and len(sent.body) == 1500
    # the run went on server-side: polling finds it finished
    run_id = json.loads(sent.body.split(b"\n\n")[1].split(b"data: ")[1])["id"]
    assert fake.run(run_id)["status"] == "completed"


async def test_reset_before_headers_and_status_faults(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fault(Fault(reset_before_headers=True))
    with pytest.raises(openai.APIConnectionError):
        await client.beta.threads.create()
    fake.fault(Fault(status=429, headers={"x-should-retry": "false"}))
    with pytest.raises(openai.RateLimitError) as rl:
        await client.beta.threads.create()
    assert rl.value.code == "rate_limit_exceeded" and rl.value.response.headers["retry-after"] == "1"
    fake.fault(Fault(path="/cancel", status=503))
    thread = await client.beta.threads.create()  # path filter: not consumed here
    assert thread.object == "thread" and len(fake.faults) == 1
    assert [r.status for r in fake.responses] == [0, 429, 200]


async def test_framing_faults_reach_the_sdk(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fault(Fault(malformed="invalid_json"))
    with pytest.raises(json.JSONDecodeError):
        async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD) as s:
            await s.until_done()
    fake.fault(Fault(clean_eof_after_events=6))  # silent truncation: no error, no terminal event
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=Recorder()) as s:
        await s.until_done()
    assert len(s.events) == 6 and s.current_run is not None and s.current_run.status == "in_progress"
    assert fake.responses[-1].complete and not fake.responses[-1].body.endswith(b"[DONE]\n\n")
    fake.fault(Fault(malformed="no_final_blank_line"))
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=Recorder()) as s:
        await s.until_done()
    assert s.events[-1] == "thread.run.step.completed"  # the SDK silently dropped the terminal event


@pytest.mark.parametrize("fault", [Fault(chunk_size=1), Fault(malformed="crlf"), Fault(malformed="comments"),
                                   Fault(malformed="split_data"), Fault(gzip=True, chunk_size=7),
                                   Fault(stall_after_bytes=(100, 0.01), drip_delay_s=0.001)])
async def test_valid_variants_parse_identically(fake: FakeUpstream, client: AsyncOpenAI,
                                                fault: Fault) -> None:
    fake.fault(fault)
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=Recorder()) as s:
        run = await s.get_final_run()
    assert run.status == "completed" and s.text == "Hello! How can I assist you today?"
    sent = fake.responses[-1]
    if fault.chunk_size == 1:
        assert {len(w) for w in sent.writes} == {1}
    if fault.gzip:
        assert sent.headers["Content-Encoding"] == "gzip" and sent.decoded_body().endswith(b"[DONE]\n\n")


async def test_responses_log_matches_received_bytes(fake: FakeUpstream, http: ClientSession) -> None:
    fake.fault(Fault(huge_event_bytes=300_000))
    async with http.post("/v1/threads/runs", json={"assistant_id": "a", "stream": True}, headers=AUTH) as r:
        received = await r.read()
    sent = fake.responses[-1]
    assert hashlib.sha256(received).hexdigest() == sent.sha256
    events = frames(received)
    assert len(events[1][1]) > 300_000 and [n for n, _ in events].count("thread.run.created") == 1
    async with http.get(f"/v1/threads/{json.loads(events[0][1])['id']}", headers=AUTH) as r:
        raw = await r.read()
    assert raw == fake.responses[-1].body and raw.startswith(b'{\n  "id"')  # pretty JSON like the API


async def test_gzip_only_when_accepted(fake: FakeUpstream, http: ClientSession) -> None:
    fake.fault(Fault(gzip=True))
    async with http.post("/v1/threads", headers={**AUTH, "Accept-Encoding": "identity"}) as r:
        assert "Content-Encoding" not in r.headers and (await r.json())["object"] == "thread"
    fake.fault(Fault(gzip=True))
    async with http.post("/v1/threads", headers={**AUTH, "Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip" and (await r.json())["object"] == "thread"


async def test_stall_before_headers(fake: FakeUpstream, server: TestServer) -> None:
    fake.fault(Fault(stall_before_s=1.0))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-x", max_retries=0,
                           timeout=0.2) as c:
        with pytest.raises(openai.APITimeoutError):
            await c.beta.threads.create()


async def test_demo_scripts_choose_by_tools() -> None:
    demo = DemoScripts()
    tool_script = demo({"tools": [WEATHER_TOOL]})
    assert isinstance(tool_script.turns[0], ToolRound)
    assert tool_script.turns[0].calls[0].arguments == {"location": "San Francisco, CA", "unit": "celsius"}
    assert isinstance(demo({}).turns[0], TextTurn)


@pytest.mark.parametrize(("kind", "expect"), [
    ("bare_json_line", json.JSONDecodeError),  # the seed's missing "data:" quirk
    ("done_without_data", json.JSONDecodeError),
    ("error_event_wrapped", openai.APIError),
    ("error_event", None),  # openai-python#2796: the spec-shaped error event raises nothing
    ("unknown_event", None),  # tolerated
    ("no_blank_lines", None),  # the seed's rendering: zero events, silently
])
async def test_malformed_variants_pin_sdk_behaviour(fake: FakeUpstream, client: AsyncOpenAI, kind: Any,
                                                    expect: type[Exception] | None) -> None:
    fake.fault(Fault(malformed=kind))
    handler = Recorder()
    if expect is not None:
        with pytest.raises(expect):
            async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                                 event_handler=handler) as s:
                await s.until_done()
        return
    async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD,
                                                         event_handler=handler) as s:
        await s.until_done()
    body = fake.responses[-1].body
    if kind == "no_blank_lines":
        assert handler.events == [] and b"\n\n" not in body
    elif kind == "error_event":
        assert b"event: error\n" in body and b"[DONE]" not in body
        assert handler.events[-2:] == ["thread.run.step.completed", None]  # event=None, no exception
    else:
        assert handler.events[-1] == "thread.run.completed"
        assert b"event: thread.run.step.something_new\n" in body


async def test_hard_reset(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fault(Fault(reset_after_bytes=400, hard_reset=True))
    with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
        async with client.beta.threads.create_and_run_stream(assistant_id="a", thread=THREAD) as s:
            await s.until_done()
    assert fake.responses[-1].aborted


async def test_sent_and_seen_headers_are_case_insensitive(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    await client.beta.threads.create()
    assert fake.requests[-1].headers["OpenAI-Beta"] == fake.requests[-1].headers["openai-beta"]
    assert fake.responses[-1].headers["content-type"] == "application/json"
