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
