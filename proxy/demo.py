"""`runtap demo` / `make demo`: the whole thing working, without an API key.

Starts the bundled fake upstream and the proxy in front of it on free loopback ports, has the
real openai SDK hold a tool-calling conversation through the proxy on each API: a Responses
turn (a response asks for a function call, the client runs it and sends its output with
`previous_response_id`, the answer streams), a Chat Completions stream, and the Assistants
protocol (a streamed run that pauses in `requires_action`, the tool output submitted, the answer
streamed, plus one polled run); then prints what was recorded from the DuckDB file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import duckdb
from aiohttp import web

from .app import make_app
from .config import Settings
from .relay.runner import RelayRunner
from .testing.fake_upstream import demo_upstream, serve

DEMO_KEY = "sk-demo-not-a-key"  # short: nothing that looks like a real key is committed
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}}


RESPONSES_WEATHER: dict[str, Any] = {"type": "function", **WEATHER_TOOL["function"]}


def _port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


async def _responses_turn(client: Any) -> None:
    """The Responses API: a function-tool turn chained by previous_response_id, the answer streamed."""
    question = "What is the weather like in San Francisco?"
    print(f"Responses API\nuser: {question}")
    first = await client.responses.create(model="gpt-4o", input=question, tools=[RESPONSES_WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    for call in calls:
        print(f"  [model asks for {call.name}({call.arguments})]")
    outputs = [{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature": 18, "unit": "celsius"})} for call in calls]
    print("  [client runs the tool and sends its output, previous_response_id chaining the turn]")
    print("assistant: ", end="")
    async with client.responses.stream(model="gpt-4o", previous_response_id=first.id, input=outputs,
                                       tools=[RESPONSES_WEATHER]) as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                print(event.delta, end="", flush=True)
    print("\n\nChat Completions\nuser: Explain deep learning in one sentence.\nassistant: ", end="")
    chunks = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Explain deep learning in one sentence."}],
        stream=True, stream_options={"include_usage": True})
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print("\n")


async def _converse(base_url: str) -> None:
    from openai import AsyncAssistantEventHandler, AsyncOpenAI

    class Printer(AsyncAssistantEventHandler):
        async def on_text_delta(self, delta: Any, snapshot: Any) -> None:
            print(delta.value, end="", flush=True)

        async def on_tool_call_done(self, tool_call: Any) -> None:
            print(f"  [model asks for {tool_call.function.name}({tool_call.function.arguments})]")

    async with AsyncOpenAI(base_url=base_url, api_key=DEMO_KEY, max_retries=0) as client:
        await _responses_turn(client)
        print("Assistants protocol (Azure AI Foundry Agents classic)\nuser: What is the weather like in San Francisco?")
        handler = Printer()
        async with client.beta.threads.create_and_run_stream(
            assistant_id="asst_demo", tools=[WEATHER_TOOL], event_handler=handler,
            thread={"messages": [{"role": "user", "content": "What is the weather like in San Francisco?"}]},
        ) as stream:
            await stream.until_done()
        run = handler.current_run
        assert run is not None and run.required_action is not None
        outputs = [{"tool_call_id": call.id, "output": json.dumps({"temperature": 18, "unit": "celsius"})}
                   for call in run.required_action.submit_tool_outputs.tool_calls]
        print("  [client runs the tool and submits its output]")
        print("assistant: ", end="")
        async with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=run.thread_id, run_id=run.id, tool_outputs=outputs, event_handler=Printer(),
        ) as stream:
            await stream.until_done()
        print("\n\nuser (a polled run): Any ideas for a quick break?")
        polled = await client.beta.threads.create_and_run_poll(
            assistant_id="asst_demo", poll_interval_ms=5,
            thread={"messages": [{"role": "user", "content": "Any ideas for a quick break?"}]})
        messages = await client.beta.threads.messages.list(thread_id=polled.thread_id, order="desc", limit=1)
        print("assistant:", messages.data[0].content[0].text.value)  # type: ignore[union-attr]


def _table(con: duckdb.DuckDBPyConnection, title: str, sql: str) -> None:
    cursor = con.execute(sql)
    columns = [d[0] for d in cursor.description]
    rows = [["" if v is None else str(v) for v in row] for row in cursor.fetchall()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def show_recording(db: str) -> None:
    con = duckdb.connect(db, read_only=True)
    try:
        _table(con, "runs (Assistants runs, Responses and Chat turns)", "select api, run_id, status, model, "
               "prompt_tokens, completion_tokens, total_tokens, tool_rounds from runs order by first_seen_at")
        _table(con, "responses", "select response_id, run_id, previous_response_id, status, input_tokens, "
               "output_tokens from responses order by first_seen_at")
        _table(con, "response_items (Responses output and tool results)", "select response_id, source, type, "
               "call_id, left(coalesce(text, arguments, output), 50) as content from response_items "
               "order by added_at, output_index")
        _table(con, "run_steps", "select run_id, step_id, type, status, total_tokens from run_steps "
               "order by run_id, created_at, step_id")
        _table(con, "tool_calls", "select run_id, name, arguments, output, "
               "round(epoch_ms(submitted_at) - epoch_ms(requested_at)) as client_tool_ms from tool_calls "
               "order by requested_at")
        _table(con, "messages (assistant)", "select run_id, status, left(text, 60) as text from messages "
               "where role = 'assistant' order by created_at")
        _table(con, "requests", "select route, status, outcome, streamed, event_count, round(ttfb_ms, 2) as ttfb_ms "
               "from requests order by started_at")
    finally:
        con.close()


async def _demo(db: str) -> None:
    upstream = await serve("127.0.0.1", 0, demo_upstream(seed=42))
    settings = Settings.model_validate({
        "server": {"upstream": f"http://127.0.0.1:{_port(upstream)}"},
        "recorder": {"db": db},
    })
    proxy = RelayRunner(make_app(settings), access_log=None)
    await proxy.setup()
    await web.TCPSite(proxy, "127.0.0.1", 0).start()
    print(f"fake upstream on :{_port(upstream)}, runtap on :{_port(proxy)}, recording to {db}\n")
    try:
        await _converse(f"http://127.0.0.1:{_port(proxy)}/v1")
    finally:
        await proxy.cleanup()  # drains in-flight exchanges and flushes the recording
        await upstream.cleanup()


def run_demo(db: str) -> int:
    for path in (Path(db), Path(db + ".wal")):
        path.unlink(missing_ok=True)
    warnings.filterwarnings("ignore", message="The Assistants API is deprecated", category=DeprecationWarning)
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)  # the conversation is the output
    asyncio.run(_demo(db))
    show_recording(db)
    print(f"\nThe recording is the DuckDB file {db}. Ask it questions, e.g.\n"
          f"  runtap runs --db {db}\n"
          f"  runtap usage --by model --db {db}\n"
          f"  runtap sql \"select status, count(*) from runs group by 1\" --db {db}")
    return 0
