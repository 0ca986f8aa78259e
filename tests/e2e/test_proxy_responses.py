"""The real openai SDK's Responses API through the proxy: bytes exact, responses, items and turns recorded."""

from __future__ import annotations

import json

import openai
import pytest

from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import Message, Reasoning, ResponseScript
from tests.conftest import KEY_ID, sha256

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


async def test_a_stream_is_byte_exact_and_recorded_as_a_response_its_items_and_a_turn(fake, client, recorded):
    fake.enqueue_response(ResponseScript.of(Reasoning(("Weighing it.",), reasoning_tokens=40), Message("Über café."),
                                            input_tokens=120, cached_tokens=64, cache_write_tokens=8))
    async with client.responses.stream(model="o4-mini", input="Wo?", reasoning={"summary": "auto"}) as s:
        names = [e.type async for e in s]
        final = await s.get_final_response()
    assert final.output_text == "Über café." and final.usage is not None
    [sent] = fake.responses
    q = await recorded()
    [row] = q("select response_id, run_id, status, model, input_tokens, cached_tokens, cache_write_tokens,"
              " output_tokens, reasoning_tokens, total_tokens, key_id, background from responses")
    usage = final.usage
    assert row == (final.id, final.id, "completed", final.model, 120, 64, 8, usage.output_tokens, 40,
                   usage.total_tokens, KEY_ID, False)
    items = q("select output_index, type, status, text, source from response_items order by output_index")
    assert items == [(0, "reasoning", None, None, "output"), (1, "message", "completed", "Über café.", "output")]
    [run] = q("select run_id, api, status, prompt_tokens, completion_tokens, total_tokens, tool_rounds from runs")
    assert run == (final.id, "responses", "completed", 120, usage.output_tokens, usage.total_tokens, 0)
    [(outcome, response_id, request_run)] = q("select outcome, response_id, run_id from requests")
    assert (outcome, response_id, request_run) == ("completed", final.id, final.id)
    events = q("select seq, event, data, sequence_number, response_id from events order by seq")
    assert [e[1] for e in events] == names == sent.events
    assert [e[3] for e in events] == list(range(len(events)))  # sequence_number from the data, no [DONE] row
    assert {e[4] for e in events} == {final.id}
    wire = "".join(f"event: {name}\ndata: {data}\n\n" for _, name, data, _, _ in events).encode()
    assert sha256(wire) == sha256(b"".join(sent.writes))


async def test_a_function_tool_loop_by_previous_response_id_is_one_turn_with_its_tool_time(fake, client, recorded):
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Springfield"}, input_tokens=50))
    fake.enqueue_response(ResponseScript.text("It is 18 degrees.", input_tokens=80))
    first = await client.responses.create(model="gpt-4o", input="Forecast?", tools=[WEATHER])
    [call] = first.output
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}  # type: ignore[union-attr]
    async with client.responses.stream(model="gpt-4o", previous_response_id=first.id, input=[output],
                                       tools=[WEATHER]) as s:
        second = await s.get_final_response()
    q = await recorded()
    assert q("select response_id, run_id, previous_response_id, status, link_kind from responses"
             " order by first_seen_at") == [(first.id, first.id, None, "completed", "none"),
                                            (second.id, first.id, first.id, "completed", "previous_response_id")]
    [run] = q("select run_id, api, status, tool_rounds, prompt_tokens, completion_tokens from runs")
    assert first.usage is not None and second.usage is not None
    completion = first.usage.output_tokens + second.usage.output_tokens
    assert run == (first.id, "responses", "completed", 1, 50 + 80, completion)
    [tool] = q("select tool_call_id, run_id, type, name, arguments, output, requested_at, submitted_at from tool_calls")
    assert tool[:6] == (call.call_id, first.id, "function", "get_weather", call.arguments, "18 degrees")  # type: ignore[union-attr]
    assert tool[6] <= tool[7]  # the client's tool time runs from the asking response's end to the output's arrival
    [(started,)] = q("select started_at from requests where response_id = ?", second.id)
    assert tool[7] == started
    inputs = q("select item_id, response_id, type, call_id, output from response_items where source = 'input'")
    assert inputs == [(f"{second.id}/input/0", second.id, "function_call_output", call.call_id, "18 degrees")]  # type: ignore[union-attr]
    [(arguments,)] = q("select arguments from response_items where type = 'function_call'")
    assert json.loads(arguments) == {"city": "Springfield"}


async def test_a_stateless_tool_loop_continues_its_turn_by_call_id(fake, client, recorded):
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Paris"}))
    fake.enqueue_response(ResponseScript.text("Sunny."))
    first = await client.responses.create(model="gpt-4o", input="Weather?", tools=[WEATHER], store=False)
    [call] = first.output
    history = [{"role": "user", "content": "Weather?"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]  # type: ignore[union-attr]
    await client.responses.create(model="gpt-4o", input=history, tools=[WEATHER], store=False)
    await client.responses.create(model="gpt-4o", input="And now something else")  # a new user request
    q = await recorded()
    assert q("select api, tool_rounds, status from runs order by first_seen_at") == [
        ("responses", 1, "completed"), ("responses", 0, "completed")]
    assert q("select count(distinct run_id) from responses") == [(2,)]


async def test_background_polls_update_the_response_and_its_turn(fake, client, recorded):
    created = await client.responses.create(model="gpt-4o", input="Long task", background=True)
    statuses = [(await client.responses.retrieve(created.id)).status for _ in range(2)]
    assert statuses == ["in_progress", "completed"]
    q = await recorded()
    [row] = q("select status, background, output_tokens is not null from responses")
    assert row == ("completed", True, True)
    assert q("select status from runs") == [("completed",)]
    assert q("select count(*) from requests where response_id = ?", created.id) == [(3,)]


async def test_a_stream_cut_before_its_terminal_event_is_truncated_with_its_partial_text(fake, client, recorded):
    fake.enqueue_response(ResponseScript.text("one two three four five six"))
    fake.fault(Fault(path="/responses", clean_eof_after_events=8))
    stream = await client.responses.create(model="gpt-4o", input="Count", stream=True)
    seen = [e async for e in stream]
    assert seen[-1].type == "response.output_text.delta"
    q = await recorded()
    assert q("select status from responses") == [("truncated",)]
    [(item_status, text)] = q("select status, text from response_items")
    partial = "".join(e.delta for e in seen if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert (item_status, text) == ("incomplete", partial) and partial
    [(outcome, error)] = q("select outcome, error from requests")
    assert outcome == "truncated" and "terminal event" in error
    assert q("select status from runs") == [("truncated",)]


async def test_an_in_band_error_then_failed_records_the_failure(fake, client, recorded):
    fake.enqueue_response(ResponseScript.failed("server_error", "Something went wrong.", partial_text="Let me"))
    stream = await client.responses.create(model="gpt-4o", input="x", stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await stream.close()
    q = await recorded()
    [row] = q("select status, error_code, error_message from responses")
    # The SDK raises at the error frame and closes; runtap reads on, so response.failed is recorded.
    assert row == ("failed", "server_error", "Something went wrong.")
    assert q("select status, last_error_code from runs") == [("failed", "server_error")]


async def test_azure_v1_paths_are_recorded_as_responses(fake, azure_client, recorded):
    response = await azure_client.responses.create(model="my-deployment", input="hi")
    q = await recorded()
    assert q("select response_id, status from responses") == [(response.id, "completed")]
    [(route,)] = q("select route from requests")
    assert route.endswith("/responses")


async def test_run_and_token_metrics_count_every_turn_once_streamed_or_not(fake, client, parts, recorded):
    from prometheus_client import generate_latest

    fake.enqueue_response(ResponseScript.text("a", input_tokens=5))
    fake.enqueue_response(ResponseScript.text("b", input_tokens=7))
    first = await client.responses.create(model="gpt-4o", input="hi")  # JSON: the turn is first seen ended
    async with client.responses.stream(model="gpt-4o", input="hi") as s:
        await s.get_final_response()
    await client.responses.retrieve(first.id)  # a poll of an ended turn counts nothing again
    await recorded()
    text = generate_latest(parts.registry).decode()
    assert f'runtap_runs_total{{model="{first.model}",status="completed"}} 2.0' in text
    assert f'runtap_tokens_total{{key_alias="other",model="{first.model}",type="input"}} 12.0' in text


async def test_a_turn_left_waiting_for_its_tool_outputs_ends_abandoned_at_a_later_create(serve_proxy, fake,
                                                                                          tmp_path, upstream):
    from openai import AsyncOpenAI

    from proxy.app import PARTS, make_app
    from proxy.config import Settings
    from tests.conftest import RAW_KEY

    # A microsecond: the next create, which always comes later than that, finds the turn abandoned.
    settings = Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/")},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5, "abandoned_turn_s": 1e-6},
    })
    server = await serve_proxy(make_app(settings))
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Rome"}))
    fake.enqueue_response(ResponseScript.text("Something else."))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        waiting = await client.responses.create(model="gpt-4o", input="Rome?", tools=[WEATHER])
        # The client never sends the tool output; it asks something else.
        other = await client.responses.create(model="gpt-4o", input="A new question")
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        rows = cur.execute("select run_id, status, ended_at is not null from runs order by first_seen_at").fetchall()
        [(ended_at, last_seen)] = cur.execute("select r.ended_at, s.last_seen_at from runs r join responses s"
                                              " on s.run_id = r.run_id where r.run_id = ?", [waiting.id]).fetchall()
        [(other_run,)] = cur.execute("select run_id from requests where response_id = ?", [other.id]).fetchall()
    assert rows == [(waiting.id, "abandoned", True), (other.id, "completed", True)]
    assert ended_at == last_seen  # ended when runtap last saw it, not when it gave up on it
    assert other_run == other.id  # the create that found it abandoned is not mistaken for it
    counted = {s.labels["status"]: s.value for m in parts.registry.collect() if m.name == "runtap_runs"
               for s in m.samples if s.name == "runtap_runs_total"}
    assert counted == {"abandoned": 1, "completed": 1}  # turns by how they ended


async def test_the_clients_tool_time_of_a_turn_is_observed_once_per_call(fake, client, parts):
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Oslo"}))
    fake.enqueue_response(ResponseScript.text("Cold."))
    first = await client.responses.create(model="gpt-4o", input="Oslo?", tools=[WEATHER])
    [call] = first.output
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "-3C"}  # type: ignore[union-attr]
    second = await client.responses.create(model="gpt-4o", previous_response_id=first.id, input=[output])
    await client.responses.retrieve(second.id)  # a later snapshot of the call observes nothing again
    assert parts.registry.get_sample_value("runtap_tool_call_client_seconds_count", {"name": "get_weather"}) == 1


async def test_runtap_run_shows_a_turns_responses_tool_calls_and_answer(fake, client, parts, recorded):
    from analytics.db import result_of
    from analytics.queries import timeline
    from analytics.render import as_timeline

    class Live:  # the recording through the running proxy's own connection (it holds the file)
        def query(self, sql, params=None):
            with parts.writer.cursor() as cur:
                cur.execute("set TimeZone = 'UTC'")
                c = cur.execute(sql, params or [])
                return result_of(c, c.fetchall())

    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Oslo"}, input_tokens=40))
    fake.enqueue_response(ResponseScript.of(Reasoning(reasoning_tokens=9), Message("Cold and clear."), input_tokens=70))
    first = await client.responses.create(model="gpt-4o", input="Oslo?", tools=[WEATHER])
    [call] = first.output
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "-3C"}  # type: ignore[union-attr]
    second = await client.responses.create(model="gpt-4o", previous_response_id=first.id, input=[output])
    await recorded()
    result = timeline(Live(), first.id)
    items = result.records()
    assert [(i["kind"], i["step"], i["id"] if i["kind"] == "response" else i["name"]) for i in items] == [
        ("run", 0, "responses turn"), ("response", 1, first.id), ("tool_call", 1, "get_weather"),
        ("response", 2, second.id),
        ("item", 2, "reasoning"), ("item", 2, "message")]
    assert items[2]["output"] == "-3C" and items[2]["client_ms"] >= 0
    assert items[3]["detail"] == "previous_response_id" and items[3]["prompt_tokens"] == 70
    text = as_timeline(result)
    assert f"response 2  {second.model}  completed" in text and "joined by previous_response_id" in text
    assert "        text      Cold and clear.\n" in text


async def test_without_content_events_keep_their_sequence_numbers_and_response(serve_proxy, fake, tmp_path,
                                                                                upstream):
    from openai import AsyncOpenAI

    from proxy.app import PARTS, make_app
    from proxy.config import Settings
    from tests.conftest import RAW_KEY

    settings = Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/")},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5, "record_content": False},
    })
    server = await serve_proxy(make_app(settings))
    fake.enqueue_response(ResponseScript.text("a secret answer"))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client, \
            client.responses.stream(model="gpt-4o", input="hi") as s:
        final = await s.get_final_response()
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        events = cur.execute("select data, sequence_number, response_id from events order by seq").fetchall()
        [(text,)] = cur.execute("select text from response_items where type = 'message'").fetchall()
    assert {e[0] for e in events} == {None} and text is None  # no content
    assert [e[1] for e in events] == list(range(len(events))) and {e[2] for e in events} == {final.id}
