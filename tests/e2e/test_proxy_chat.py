"""The real openai SDK's Chat Completions through the proxy: bytes exact, turns and tool calls recorded."""

from __future__ import annotations

from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import ChatScript
from tests.conftest import KEY_ID, sha256

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def test_a_stream_with_usage_is_byte_exact_and_one_turn(fake, client, recorded):
    fake.enqueue_chat(ChatScript("Hello there, friend.", prompt_tokens=12))
    stream = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    usage = chunks[-1].usage
    assert usage is not None
    [sent] = fake.responses
    q = await recorded()
    [run] = q("select run_id, api, status, model, key_id, prompt_tokens, completion_tokens, total_tokens from runs")
    assert run == (chunks[0].id, "chat", "completed", chunks[0].model, KEY_ID, 12, usage.completion_tokens,
                   usage.total_tokens)
    assert q("select message_id, role, status, text from messages") == [
        (chunks[0].id, "assistant", "completed", "Hello there, friend.")]
    events = q("select event, data from events order by seq")
    assert events[-1] == (None, "[DONE]")
    wire = "".join(f"data: {data}\n\n" for _, data in events).encode()
    assert sha256(wire) == sha256(b"".join(sent.writes))
    assert q("select outcome, run_id from requests") == [("completed", chunks[0].id)]


async def test_a_tool_loop_is_one_turn_with_the_clients_tool_time(fake, client, recorded):
    fake.enqueue_chat(ChatScript.tool_calls(("get_weather", {"city": "Paris"}), prompt_tokens=40))
    fake.enqueue_chat(ChatScript("Sunny in Paris.", prompt_tokens=60))
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    stream = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER], stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    call = next(c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks
                        if c.choices and c.choices[0].delta.tool_calls)
    asked = {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    messages += [{"role": "assistant", "tool_calls": [asked]},
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    answer = await client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "Sunny in Paris."
    q = await recorded()
    [run] = q("select run_id, status, tool_rounds, prompt_tokens from runs")
    assert run == (chunks[0].id, "completed", 1, 40 + 60)
    [tool] = q("select tool_call_id, run_id, name, arguments, output, requested_at, submitted_at from tool_calls")
    assert tool[:5] == (call.id, chunks[0].id, "get_weather", arguments, "sunny")
    [(started,)] = q("select started_at from requests where run_id = ? order by started_at desc limit 1", chunks[0].id)
    assert tool[5] <= tool[6] == started
    assert q("select count(*) from requests where run_id = ?", chunks[0].id) == [(2,)]


async def test_a_cut_stream_is_a_truncated_turn_with_its_partial_answer(fake, client, recorded):
    fake.enqueue_chat(ChatScript("one two three four five six seven"))
    fake.fault(Fault(path="/chat/completions", clean_eof_after_events=4))
    stream = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "count"}],
                                                  stream=True)
    chunks = [c async for c in stream]
    partial = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    q = await recorded()
    assert q("select status from runs") == [("truncated",)]
    assert q("select status, text from messages") == [("incomplete", partial)]
    assert q("select outcome from requests") == [("truncated",)]


async def test_the_azure_deployment_path_is_recorded(fake, azure_client, recorded):
    answer = await azure_client.chat.completions.create(model="my-deployment",
                                                        messages=[{"role": "user", "content": "hi"}])
    q = await recorded()
    assert q("select run_id, api, status from runs") == [(answer.id, "chat", "completed")]
    [(route,)] = q("select route from requests")
    assert route == "POST /openai/deployments/{deployment}/chat/completions"
