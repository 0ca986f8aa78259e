"""The fake's Responses API against the real openai SDK: if the SDK is happy and the bytes match
protocol-responses.md, the fake is faithful (the next step records these APIs against it).

Framing is asserted byte-wise (§2): ``event:`` + ``data:`` + blank line per event, the event name
equal to the JSON ``type``, ``sequence_number`` contiguous from 0 (or N+1 on a resume), no
``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from openai import AsyncAzureOpenAI, AsyncOpenAI

from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import (
    DemoResponseScripts,
    Message,
    Reasoning,
    ResponseScript,
)
from proxy.testing.streams import split_text

AUTH = {"Authorization": "Bearer sk-test-abc"}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TEXT_EVENTS = ["response.output_item.added", "response.content_part.added", "response.output_text.done",
               "response.content_part.done", "response.output_item.done"]


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(seed=11)


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


def frames(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Strict §2 parse: exactly ``event: T\\ndata: J\\n\\n`` per event, T == J["type"], compact
    JSON with raw UTF-8, no [DONE], no comments, nothing after the last blank line."""
    assert body.endswith(b"\n\n") and b"[DONE]" not in body and b"\r" not in body
    out = []
    for block in body.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        assert json.dumps(data, separators=(",", ":"), ensure_ascii=False) == lines[1][6:]
        out.append((lines[0][7:], data))
    return out


def seqs(events: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [d["sequence_number"] for _, d in events]


def text_stream(deltas: int) -> list[str]:
    return ["response.created", "response.in_progress", *TEXT_EVENTS[:2],
            *["response.output_text.delta"] * deltas, *TEXT_EVENTS[2:], "response.completed"]


async def test_default_stream_is_framed_exactly(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    stream = await client.responses.create(model="gpt-4o", input="Hi there", stream=True)
    events = [e async for e in stream]
    sent = fake.responses[-1]
    parsed = frames(sent.body)
    deltas = len(split_text("Hello! How can I help you today?"))
    assert [e.type for e in events] == [n for n, _ in parsed] == text_stream(deltas) == sent.events
    assert seqs(parsed) == list(range(len(parsed)))
    assert len(sent.writes) == len(parsed) and sent.complete  # one write per event, clean end
    assert sent.headers["Content-Type"] == "text/event-stream; charset=utf-8" and "Content-Length" not in sent.headers
    assert sent.headers["x-request-id"].startswith("req_") and "openai-processing-ms" in sent.headers
    assert "openai-beta" not in fake.requests[-1].headers  # Responses needs no beta header
    created, done = parsed[0][1]["response"], parsed[-1][1]["response"]
    assert list(parsed[0][1]) == ["type", "sequence_number", "response"]
    assert created["status"] == "in_progress" and created["usage"] is None and created["service_tier"] == "auto"
    assert done["status"] == "completed" and done["service_tier"] == "default" and done["completed_at"]
    assert done["model"] == "gpt-4o-2024-08-06" and done["id"].startswith("resp_") and len(done["id"]) == 55
    usage = done["usage"]
    assert usage == {"input_tokens": usage["input_tokens"], "input_tokens_details": {"cached_tokens": 0},
                     "output_tokens": deltas, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": usage["input_tokens"] + deltas}
    item = done["output"][0]
    assert item["id"].startswith("msg_") and item["id"][-16:] == done["id"][-16:]  # shared hex tail
    for name, data in parsed:
        if name == "response.output_text.delta":  # §2: padding on live OpenAI deltas, keys alphabetical
            assert data["obfuscation"] and list(data)[1:] == sorted(list(data)[1:])
            assert (data["item_id"], data["output_index"], data["content_index"]) == (item["id"], 0, 0)
    assert "".join(d["delta"] for n, d in parsed if n.endswith(".delta")) == item["content"][0]["text"]


async def test_stream_helper_and_usage_details(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue_response(ResponseScript.of(Reasoning(("Weighing the options.",), reasoning_tokens=40),
                                            Message("Über café: ja."),
                                            input_tokens=120, cached_tokens=64, cache_write_tokens=8))
    async with client.responses.stream(model="o4-mini", input="Wo?", reasoning={"summary": "auto"}) as s:
        names = [e.type async for e in s]
        final = await s.get_final_response()
    assert final.output_text == "Über café: ja." and final.status == "completed"
    assert names[2:8] == ["response.output_item.added", "response.reasoning_summary_part.added",
                          *["response.reasoning_summary_text.delta"] * 3, "response.reasoning_summary_text.done"]
    assert final.output[0].type == "reasoning" and final.output[0].encrypted_content  # type: ignore[union-attr]
    assert final.output[0].summary[0].text == "Weighing the options."  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.input_tokens_details.cached_tokens == 64
    assert final.usage.input_tokens_details.cache_write_tokens == 8
    assert final.usage.output_tokens_details.reasoning_tokens == 40
    assert final.usage.output_tokens == 40 + len(split_text("Über café: ja."))
    assert "Über café".encode() in fake.responses[-1].body  # raw UTF-8, never \u-escaped


async def test_non_stream_retrieve_input_items_delete(fake: FakeUpstream, client: AsyncOpenAI,
                                                      http: ClientSession) -> None:
    resp = await client.responses.create(model="gpt-4.1", input="Hello", instructions="Be brief.")
    assert resp.status == "completed" and resp.output_text == "Hello! How can I help you today?"
    assert fake.responses[-1].body.startswith(b'{\n  "id": "resp_')  # pretty JSON like the API
    again = await client.responses.retrieve(resp.id)
    assert again.model_dump() == resp.model_dump()
    items = await client.responses.input_items.list(resp.id)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # type: ignore[union-attr]
    assert items.data[0].content[0].text == "Hello"  # type: ignore[union-attr]
    deleted = await client.responses.delete(resp.id)
    assert deleted is None  # the SDK returns nothing; the wire said response.deleted:
    assert json.loads(fake.responses[-1].body) == {"id": resp.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError) as nf:
        await client.responses.retrieve(resp.id)
    assert nf.value.body == {"message": f"Response with id '{resp.id}' not found.",
                             "type": "invalid_request_error", "param": None, "code": None}
    unstored = await client.responses.create(model="gpt-4.1", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    async with http.post("/v1/responses", json={"model": "m", "bogus": 1}, headers=AUTH) as r:
        assert r.status == 400 and (await r.json())["error"] == {
            "message": "Unknown parameter: 'bogus'.", "type": "invalid_request_error", "param": "bogus",
            "code": "unknown_parameter"}
    async with http.post("/v1/responses", json={"input": "x"}, headers=AUTH) as r:
        assert (await r.json())["error"]["code"] == "missing_required_parameter"


async def test_background_polls_queued_in_progress_completed(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    resp = await client.responses.create(model="gpt-4o", input="Long task", background=True)
    assert (resp.status, resp.background, resp.usage, resp.output) == ("queued", True, None, [])
    statuses = [(await client.responses.retrieve(resp.id)).status for _ in range(3)]
    assert statuses == ["in_progress", "completed", "completed"]
    final = await client.responses.retrieve(resp.id)
    assert final.usage is not None and final.output_text


async def test_background_stream_resume_starting_after(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fault(Fault(path="/responses", clean_eof_after_events=5))  # the client loses the stream
    stream = await client.responses.create(model="gpt-4o", input="Tell me", background=True, stream=True)
    first = [e async for e in stream]
    live = frames(fake.responses[-1].body)
    assert [e.type for e in first] == ["response.created", "response.queued", "response.in_progress",
                                       "response.output_item.added", "response.content_part.added"]
    assert live[0][1]["response"]["status"] == "queued"
    assert all("obfuscation" not in d for _, d in live)  # §5: no padding in background streams
    rid = first[0].response.id  # type: ignore[union-attr]
    assert fake.response(rid)["status"] == "completed"  # it went on server-side

    resumed = await client.responses.retrieve(rid, stream=True, starting_after=4)
    rest = [e async for e in resumed]
    assert fake.requests[-1].query == {"stream": "true", "starting_after": "4"}
    replay = frames(fake.responses[-1].body)
    assert rest[0].sequence_number == 5 and rest[0].type != "response.created"
    assert seqs(live) + seqs(replay) == list(range(len(live) + len(replay)))
    assert replay[-1][0] == "response.completed"

    full = await client.responses.retrieve(rid, stream=True)  # from 0: byte-identical to the live frames
    assert fake.responses[-1].body.startswith(b"".join(fake.responses[-3].writes))
    assert len([e async for e in full]) == len(live) + len(replay)
    async with client.responses.stream(response_id=rid, starting_after=4) as s:  # the SDK filters client-side
        later = [e.sequence_number async for e in s]
        final = await s.get_final_response()
    assert later[0] == 5 and final.status == "completed" and "starting_after" not in fake.requests[-1].query

    plain = await client.responses.create(model="gpt-4o", input="x", stream=True)
    plain_events = [e async for e in plain]
    plain_id = plain_events[0].response.id  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):  # §5: a non-background stream cannot be resumed
        await client.responses.retrieve(plain_id, stream=True)


async def test_cancel(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    resp = await client.responses.create(model="gpt-4o", input="x", background=True)
    cancelled = await client.responses.cancel(resp.id)
    assert (cancelled.status, cancelled.output, cancelled.usage, cancelled.completed_at) == ("cancelled", [], None,
                                                                                            None)
    assert (await client.responses.cancel(resp.id)).status == "cancelled"  # idempotent
    assert (await client.responses.retrieve(resp.id)).status == "cancelled"
    done = await client.responses.create(model="gpt-4o", input="x")
    with pytest.raises(openai.BadRequestError, match="Only responses created with the `background`"):
        await client.responses.cancel(done.id)


async def test_function_tool_loop_with_previous_response_id(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Springfield"}))
    fake.enqueue_response(ResponseScript.text("It is 18 degrees in Springfield."))
    async with client.responses.stream(model="gpt-4o", input="Forecast for Springfield?", tools=[WEATHER]) as s:
        names = [e.type async for e in s]
        first = await s.get_final_response()
    assert first.status == "completed"  # §7: no requires_action pause
    (call,) = first.output
    assert call.type == "function_call" and call.status == "completed"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Springfield"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")  # type: ignore[union-attr]
    assert names.count("response.function_call_arguments.delta") > 2
    done = [d for n, d in frames(fake.responses[-1].body) if n == "response.function_call_arguments.done"]
    assert done[0]["arguments"] == call.arguments and done[0]["name"] == "get_weather"
    assert first.tools[0].strict is True  # type: ignore[union-attr]

    output = {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}
    with pytest.raises(openai.BadRequestError, match=f"No tool output found for function call {call.call_id}"):
        await client.responses.create(model="gpt-4o", previous_response_id=first.id, input="and tomorrow?")
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(model="gpt-4o", previous_response_id="resp_nope", input=[output])
    assert bad.value.code == "previous_response_not_found" and bad.value.param == "previous_response_id"
    second = await client.responses.create(model="gpt-4o", previous_response_id=first.id, input=[output],
                                           tools=[WEATHER])
    assert second.output_text == "It is 18 degrees in Springfield." and second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the chain is replayed context

    stateless = [{"role": "user", "content": "Forecast?"}, call.model_dump(exclude_none=True), output]
    fake.enqueue_response(ResponseScript.text("Stateless answer."))
    assert (await client.responses.create(model="gpt-4o", input=stateless)).output_text == "Stateless answer."
    with pytest.raises(openai.BadRequestError, match="No tool call found for function call output"):
        await client.responses.create(model="gpt-4o", input=[{**output, "call_id": "call_unknown"}])


async def test_parallel_calls_have_own_indices(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue_response(ResponseScript.function_calls(("a", {"x": 1}), ("b", {"y": 2})))
    resp = await client.responses.create(model="gpt-4o", input="go", stream=True)
    events = [e async for e in resp]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.name) for e in added] == [(0, "a"), (1, "b")]  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert len({o.call_id for o in final.output}) == 2  # type: ignore[union-attr]


async def test_incomplete_by_max_output_tokens(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    text = "one two three four five six seven eight"
    fake.enqueue_response(ResponseScript.text(text))
    resp = await client.responses.create(model="gpt-4o", input="count", max_output_tokens=3)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens" and resp.completed_at is None
    assert resp.output[0].status == "incomplete" and resp.output_text == "one two three"  # type: ignore[union-attr]
    assert resp.usage is not None and resp.usage.output_tokens == 3
    fake.enqueue_response(ResponseScript.text(text).ending_incomplete("content_filter"))
    with pytest.raises(RuntimeError, match=r"response\.completed"):
        async with client.responses.stream(model="gpt-4o", input="count") as s:
            await s.get_final_response()
    parsed = frames(fake.responses[-1].body)
    assert parsed[-1][0] == "response.incomplete" and "response.completed" not in [n for n, _ in parsed]
    assert parsed[-1][1]["response"]["incomplete_details"] == {"reason": "content_filter"}


async def test_failed_in_band(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue_response(ResponseScript.failed("server_error", "Something went wrong.", partial_text="Let me"))
    stream = await client.responses.create(model="gpt-4o", input="x", stream=True)
    with pytest.raises(openai.APIError, match="Something went wrong"):  # §6: the SDK raises on `error`
        async for _ in stream:
            pass
    parsed = frames(fake.responses[-1].body)
    assert fake.responses[-1].status == 200 and seqs(parsed) == list(range(len(parsed)))
    assert [n for n, _ in parsed][-3:] == ["response.output_text.delta", "error", "response.failed"]
    assert parsed[-2][1] == {"type": "error", "sequence_number": len(parsed) - 2, "error": {
        "type": "server_error", "code": "server_error", "message": "Something went wrong.", "param": None}}
    failed = parsed[-1][1]["response"]
    assert failed["status"] == "failed" and failed["usage"] is None
    assert failed["error"] == {"code": "server_error", "message": "Something went wrong."}
    assert (await client.responses.retrieve(failed["id"])).status == "failed"


async def test_conversations(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    conv = await client.conversations.create(items=[{"role": "user", "content": "My name is Ada."}],
                                             metadata={"topic": "names"})
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "names"}
    resp = await client.responses.create(model="gpt-4o", input="What is my name?", conversation=conv.id)
    assert resp.conversation is not None and resp.conversation.id == conv.id
    items = await client.conversations.items.list(conv.id)
    assert [i.role for i in items.data] == ["assistant", "user", "user"]  # type: ignore[union-attr]  # newest first
    assert (await client.conversations.retrieve(conv.id)).id == conv.id
    with pytest.raises(openai.BadRequestError, match="Mutually exclusive"):
        await client.responses.create(model="gpt-4o", input="x", conversation=conv.id, previous_response_id=resp.id)
    count = await client.responses.input_tokens.count(model="gpt-4o", input="hi", conversation=conv.id)
    assert count.object == "response.input_tokens" and count.input_tokens > resp.usage.input_tokens  # type: ignore[union-attr]
    await client.conversations.delete(conv.id)
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(conv.id)


async def test_input_tokens_match_the_create(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    count = await client.responses.input_tokens.count(model="gpt-4o", input="How many tokens?", instructions="Hi")
    resp = await client.responses.create(model="gpt-4o", input="How many tokens?", instructions="Hi")
    assert resp.usage is not None and count.input_tokens == resp.usage.input_tokens


async def test_azure_paths(fake: FakeUpstream, server: TestServer) -> None:
    async with AsyncAzureOpenAI(azure_endpoint=str(server.make_url("")), api_key="azure-key",
                                api_version="2025-04-01-preview", max_retries=0) as azure:
        async with azure.responses.stream(model="my-gpt4o-deployment", input="hi") as s:
            final = await s.get_final_response()
        polled = await azure.responses.retrieve(final.id)
    seen = fake.requests[0]
    assert seen.path == "/openai/responses" and seen.query["api-version"] == "2025-04-01-preview"
    assert seen.headers["api-key"] == "azure-key" and "authorization" not in seen.headers
    assert final.model == "my-gpt4o-deployment" and polled.id == final.id  # §4: the deployment name
    assert b"obfuscation" not in fake.responses[0].body  # §2: not in Azure streams
    async with AsyncOpenAI(base_url=str(server.make_url("/openai/v1")), api_key="azure-key",
                           max_retries=0) as v1:  # Azure's v1 API has no api-version (§1)
        resp = await v1.responses.create(model="my-gpt4o-deployment", input="hi")
    assert resp.status == "completed" and fake.requests[-1].path == "/openai/v1/responses"


async def test_faults_apply_to_responses(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.fault(Fault(path="/responses", reset_after_bytes=2000))
    with pytest.raises((httpx2.RemoteProtocolError, openai.APIConnectionError)):
        stream = await client.responses.create(model="gpt-4o", input="x", stream=True)
        async for _ in stream:
            pass
    sent = fake.responses[-1]
    assert sent.aborted and not sent.complete and len(sent.body) == 2000
    rid = json.loads(sent.body.split(b"\n")[1][6:])["response"]["id"]
    assert fake.response(rid)["status"] == "completed"  # it finished server-side
    fake.fault(Fault(path="/responses", status=429))
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="gpt-4o", input="x")
    fake.fault(Fault(path="/responses", malformed="no_final_blank_line"))
    with pytest.raises(RuntimeError, match=r"response\.completed"):  # §8: the terminal event is lost
        async with client.responses.stream(model="gpt-4o", input="x") as s:
            await s.get_final_response()


@pytest.mark.parametrize("fault", [Fault(chunk_size=1), Fault(malformed="crlf"), Fault(malformed="comments"),
                                   Fault(malformed="split_data"), Fault(malformed="data_only"),
                                   Fault(malformed="trailing_done"), Fault(gzip=True, chunk_size=7),
                                   Fault(stall_after_bytes=(100, 0.01), drip_delay_s=0.001)])
async def test_valid_variants_parse_identically(fake: FakeUpstream, client: AsyncOpenAI, fault: Fault) -> None:
    fake.fault(fault)
    async with client.responses.stream(model="gpt-4o", input="x") as s:
        final = await s.get_final_response()
    assert final.output_text == "Hello! How can I help you today?"
    body = fake.responses[-1].decoded_body()
    if fault.malformed == "trailing_done":
        assert body.endswith(b"\n\ndata: [DONE]\n\n")
    elif fault.malformed == "data_only":
        assert b"event:" not in body
    elif fault.chunk_size == 1:
        assert {len(w) for w in fake.responses[-1].writes} == {1}


async def test_demo_scripts_play_a_tool_loop() -> None:
    demo = DemoResponseScripts()
    first = demo({"tools": [WEATHER], "input": "weather?"})
    assert first.items[0].name == "get_weather" and first.items[0].arguments == {"city": "San Francisco, CA"}  # type: ignore[union-attr]
    answered = demo({"tools": [WEATHER], "input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]})
    assert isinstance(answered.items[0], Message)


async def test_cancel_during_background_stream(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue_response(ResponseScript.text("one two three four five six seven"))
    fake.fault(Fault(path="/responses", drip_delay_s=0.02))
    stream = await client.responses.create(model="gpt-4o", input="x", background=True, stream=True)
    seen: list[str] = []
    async for event in stream:
        seen.append(event.type)
        if event.type == "response.created":
            rid = event.response.id
        if event.type == "response.output_text.delta" and seen.count(event.type) == 1:
            assert (await client.responses.cancel(rid)).status == "cancelled"
    # §5/§12: there is no cancelled event; the open stream just ends after what was already sent
    assert "response.completed" not in seen and seen[-1] == "response.output_text.delta"
    assert fake.responses[0].complete and frames(fake.responses[0].body)[-1][0] == "response.output_text.delta"


async def test_conversation_items_endpoints(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    conv = await client.conversations.create()
    added = await client.conversations.items.create(conv.id, items=[{"role": "user", "content": "a"},
                                                                    {"role": "user", "content": "b"}])
    assert [i.content[0].text for i in added.data] == ["a", "b"]  # type: ignore[union-attr]
    item = await client.conversations.items.retrieve(added.data[1].id, conversation_id=conv.id)  # type: ignore[union-attr]
    assert item.id == added.data[1].id  # type: ignore[union-attr]
    after = await client.conversations.items.delete(added.data[0].id, conversation_id=conv.id)  # type: ignore[union-attr]
    assert after.id == conv.id
    listed = await client.conversations.items.list(conv.id, order="asc")
    assert [i.id for i in listed.data] == [added.data[1].id]  # type: ignore[union-attr]
    updated = await client.conversations.update(conv.id, metadata={"k": "v"})
    assert updated.metadata == {"k": "v"}


async def test_served_demo_fake_answers_plain_calls(aiohttp_server: Any) -> None:
    from proxy.testing.fake_upstream import demo_upstream

    server = await aiohttp_server(demo_upstream(seed=1).app)
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-x", max_retries=0) as c:
        resp = await c.responses.create(model="gpt-4o", input="hi")
        looped = await c.responses.create(model="gpt-4o", input="weather?", tools=[WEATHER])
        chat = await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert resp.status == "completed" and resp.output_text and resp.usage is not None
    assert looped.output[0].type == "function_call"
    assert chat.choices[0].message.content
