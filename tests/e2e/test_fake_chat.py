"""The fake's Chat Completions against the real openai SDK (protocol-responses.md §9): data-only
frames, ``data: [DONE]`` at the end, the ``include_usage`` chunk, tool-call deltas, Azure's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncAzureOpenAI, AsyncOpenAI

from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import ChatScript, DemoChatScripts
from proxy.testing.streams import split_text

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(seed=5)


@pytest.fixture
async def server(fake: FakeUpstream, aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(fake.app)


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test-abc", max_retries=0) as c:
        yield c


def chunks(body: bytes) -> list[dict[str, Any]]:
    """Strict §9 parse: ``data: J\\n\\n`` frames only, the last one ``data: [DONE]``."""
    assert body.endswith(b"data: [DONE]\n\n") and b"event:" not in body
    blocks = body.decode().split("\n\n")[:-1]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b[6:]) for b in blocks[:-1]]


async def test_stream_with_include_usage(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    text = "Hello there, how are you?"
    fake.enqueue_chat(ChatScript(text, prompt_tokens=12, cached_tokens=4))
    stream = await client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True,
                                                  stream_options={"include_usage": True})
    got = [c async for c in stream]
    parsed = chunks(fake.responses[-1].body)
    assert len(got) == len(parsed) == len(split_text(text)) + 3  # role, deltas, finish, usage
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed[:-1]) == text
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in parsed[:-1]) and parsed[-1]["choices"] == []
    usage = got[-1].usage
    assert usage is not None and usage.prompt_tokens == 12 and usage.completion_tokens == len(split_text(text))
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 4
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c["obfuscation"] for c in parsed) and len({c["id"] for c in parsed}) == 1
    assert parsed[0]["id"].startswith("chatcmpl-") and parsed[0]["model"] == "gpt-4o-2024-08-06"
    assert fake.responses[-1].headers["Content-Type"] == "text/event-stream; charset=utf-8"


async def test_stream_without_usage_has_no_usage_key(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True)
    assert [c.usage async for c in stream][-1] is None
    assert all("usage" not in c for c in chunks(fake.responses[-1].body))


async def test_tool_call_loop(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue_chat(ChatScript.tool_calls(("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})))
    fake.enqueue_chat(ChatScript("Sunny, 3pm."))
    async with client.chat.completions.stream(model="gpt-4o", messages=ASK, tools=[TOOL]) as s:
        final = await s.get_final_completion()
    parsed = chunks(fake.responses[-1].body)
    heads = [tc for c in parsed for tc in (c["choices"][0]["delta"].get("tool_calls") or []) if "id" in tc]
    assert [(h["index"], h["function"]) for h in heads] == [(0, {"name": "get_weather", "arguments": ""}),
                                                           (1, {"name": "get_time", "arguments": ""})]
    fragments = [tc for c in parsed for tc in (c["choices"][0]["delta"].get("tool_calls") or []) if "id" not in tc]
    assert fragments and all(set(tc) == {"index", "function"} for tc in fragments)
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
    calls = choice.message.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "CET"}]  # type: ignore[union-attr]

    assistant = {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]}
    with pytest.raises(openai.BadRequestError, match="did not have response messages"):
        await client.chat.completions.create(model="gpt-4o", messages=[*ASK, assistant])
    with pytest.raises(openai.BadRequestError, match="must be a response to a preceeding message"):
        await client.chat.completions.create(model="gpt-4o", messages=[
            *ASK, {"role": "tool", "tool_call_id": "call_x", "content": "?"}])
    answers = [{"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in calls]
    done = await client.chat.completions.create(model="gpt-4o", messages=[*ASK, assistant, *answers])
    assert done.choices[0].message.content == "Sunny, 3pm." and done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens_details is not None
    assert fake.responses[-1].body.startswith(b'{\n  "id": "chatcmpl-')


async def test_errors_and_faults(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: bogus"):
        await client.chat.completions.create(model="gpt-4o", messages=ASK, extra_body={"bogus": 1})
    with pytest.raises(openai.BadRequestError, match="only allowed when 'stream' is enabled"):
        await client.chat.completions.create(model="gpt-4o", messages=ASK, stream_options={"include_usage": True})
    fake.fault(Fault(path="/chat/completions", malformed="error_event_wrapped"))
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True)
        async for _ in stream:
            pass
    assert b"[DONE]" not in fake.responses[-1].body
    fake.fault(Fault(path="/chat/completions", clean_eof_after_events=2))
    stream = await client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True)
    assert len([c async for c in stream]) == 2 and not fake.responses[-1].body.endswith(b"[DONE]\n\n")


async def test_length_finish(fake: FakeUpstream, client: AsyncOpenAI) -> None:
    fake.enqueue_chat(ChatScript("a b c d e f"))
    resp = await client.chat.completions.create(model="gpt-4o", messages=ASK, max_completion_tokens=2)
    assert resp.choices[0].finish_reason == "length" and resp.choices[0].message.content == "a b"
    assert resp.usage is not None and resp.usage.completion_tokens == 2


async def test_azure_deployment_path(fake: FakeUpstream, server: TestServer) -> None:
    async with AsyncAzureOpenAI(azure_endpoint=str(server.make_url("")), api_key="azure-key",
                                api_version="2024-10-21", max_retries=0) as azure:
        stream = await azure.chat.completions.create(model="chat-deploy", messages=ASK, stream=True,
                                                     stream_options={"include_usage": True})
        got = [c async for c in stream]
        plain = await azure.chat.completions.create(model="chat-deploy", messages=ASK)
    seen = fake.requests[0]
    assert seen.path == "/openai/deployments/chat-deploy/chat/completions" and seen.query["api-version"]
    parsed = chunks(fake.responses[0].body)
    assert parsed[0] == {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                         "prompt_filter_results": parsed[0]["prompt_filter_results"]}
    assert all(list(c) == sorted(c) for c in parsed) and b"obfuscation" not in fake.responses[0].body
    assert parsed[2]["choices"][0]["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    assert got[-1].usage is not None and plain.choices[0].message.content


async def test_demo_chat_scripts() -> None:
    demo = DemoChatScripts()
    assert demo({"tools": [TOOL], "messages": ASK}).calls[0].name == "get_weather"
    assert demo({"tools": [TOOL], "messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}).text
