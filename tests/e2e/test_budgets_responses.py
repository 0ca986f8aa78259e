"""Budgets for the Responses API and Chat Completions, end to end: the real openai SDK through the
proxy to the fake upstream, real DuckDB files. Each response and each completion is one charge,
settled at its own usage (run with `-s` to see the overspend bound printed).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
from openai import AsyncOpenAI

from proxy.app import PARTS, make_app
from proxy.budgets.report import figures
from proxy.testing.faults import Fault
from proxy.testing.responses_scripts import ChatScript, ResponseScript
from tests.conftest import KEY_ID, RAW_KEY
from tests.e2e.test_budgets import _assert_refusal, budgets_settings, team_a

DEFAULT = 256
PER_CALL = DEFAULT + 256
"""The reservation of a call that sets max_output_tokens (max_completion_tokens) = 256."""
LIMIT = 5 * PER_CALL


async def _serve(serve_proxy, tmp_path, upstream, **budgets: Any) -> Any:
    budgets.setdefault("default_reservation_tokens", DEFAULT)
    tmp_path.mkdir(exist_ok=True)
    settings = budgets_settings(tmp_path, upstream, **budgets)
    return await serve_proxy(make_app(settings))


async def _charges(server) -> list[tuple[Any, ...]]:
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        return cur.execute("select run_id, state, reserved_tokens, spent_tokens from budget_charges"
                           " order by reserved_at, charge_id").fetchall()


async def _streamed_response(client: AsyncOpenAI, **params: Any) -> Any:
    try:
        stream = await client.responses.create(**{"model": "gpt-4o", "input": "Hi", **params}, stream=True)
        final = None
        async for event in stream:
            if event.type == "response.completed":
                final = event.response
        return final
    except openai.APIStatusError as exc:
        return exc


async def test_concurrent_streamed_responses_never_overspend(serve_proxy, fake, tmp_path, upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=LIMIT)])
    for _ in range(200):  # 450 of 512 reserved each: the budget pays for five, ever
        fake.enqueue_response(ResponseScript.text("Five words for you here.", input_tokens=200, output_tokens=250))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=2) as client:
        results = await asyncio.gather(*(_streamed_response(client, max_output_tokens=256) for _ in range(200)))
    admitted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert all(r is not None and r.status == "completed" and r.usage.total_tokens == 450 for r in admitted)
    assert len(admitted) >= 5 and len(refused) == 200 - len(admitted) > 0
    for exc in refused:
        _assert_refusal(exc)
    assert len(fake.responses) == len(admitted)  # refused requests never reached the upstream
    charges = await _charges(server)
    assert sorted(c[0] for c in charges) == sorted(r.id for r in admitted)
    assert {(c[1], c[2], c[3]) for c in charges} == {("settled", PER_CALL, 450)}
    spent = 450 * len(admitted)
    print(f"\noverspend bound measured (Responses): {max(0, spent - LIMIT)} tokens (admitted {len(admitted)} "
          f"of 200 concurrent streamed responses, spent {spent} of a {LIMIT}-token limit)")
    assert spent <= LIMIT
    [row] = figures(server.app[PARTS].budgets.budgets)
    assert (row["used"], row["reserved"]) == (spent, 0)
    assert server.app[PARTS].registry.get_sample_value(
        "runtap_budget_rejections_total", {"key_alias": "team-a"}) == len(refused)


async def test_each_response_of_a_tool_turn_is_charged_its_own_usage(serve_proxy, fake, tmp_path, upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=100_000)])
    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Paris"}, input_tokens=50,
                                                       output_tokens=20))
    fake.enqueue_response(ResponseScript.text("Sunny.", input_tokens=90, output_tokens=5))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        first = await client.responses.create(model="gpt-4o", input="Weather?")
        [call] = first.output
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}  # type: ignore[union-attr]
        second = await _streamed_response(client, previous_response_id=first.id, input=[output])
    assert second.status == "completed"
    # No max_output_tokens: the default alone is reserved; each response bills its own tokens.
    assert await _charges(server) == [(first.id, "settled", DEFAULT, 70), (second.id, "settled", DEFAULT, 95)]


async def test_a_background_response_settles_when_a_poll_sees_it_end(serve_proxy, fake, tmp_path, upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=100_000)])
    fake.enqueue_response(ResponseScript.text("Done at last.", input_tokens=30, output_tokens=12))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        created = await client.responses.create(model="gpt-4o", input="Long task", background=True,
                                                max_output_tokens=1000)
        assert await _charges(server) == [(created.id, "reserved", DEFAULT + 1000, None)]
        while (polled := await client.responses.retrieve(created.id)).status != "completed":
            pass
    assert polled.usage is not None and polled.usage.total_tokens == 42
    assert await _charges(server) == [(created.id, "settled", DEFAULT + 1000, 42)]


async def test_a_cancelled_response_keeps_its_reservation(serve_proxy, fake, tmp_path, upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=100_000)])
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        created = await client.responses.create(model="gpt-4o", input="Long task", background=True)
        cancelled = await client.responses.cancel(created.id)
    assert (cancelled.status, cancelled.usage) == ("cancelled", None)
    # The upstream reports no usage for it: what it used is unknown, so it pays what it reserved, not 0.
    assert await _charges(server) == [(created.id, "settled", DEFAULT, DEFAULT)]


async def test_an_upstream_refusal_releases_the_reservation(serve_proxy, fake, tmp_path, upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=100_000)])
    fake.fault(Fault(path="/responses", status=400, error_message="Invalid 'input'."))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        exc = await _streamed_response(client)
    assert isinstance(exc, openai.BadRequestError)
    [(response_id, state, reserved, spent)] = await _charges(server)
    assert (response_id, state, reserved, spent) == (None, "released", DEFAULT, 0)


async def test_clamp_lowers_max_output_tokens_and_sets_max_completion_tokens(serve_proxy, fake, tmp_path,
                                                                            upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=2000, clamp=True)])
    fake.enqueue_response(ResponseScript.text("short", input_tokens=100, output_tokens=100))
    fake.enqueue_chat(ChatScript(text="short", prompt_tokens=100, completion_tokens=100))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        response = await client.responses.create(model="gpt-4o", input="Hi", max_output_tokens=5000)
        assert response.max_output_tokens == 2000 - DEFAULT
        # 200 used, 1800 left: the max_tokens the request set is lowered to 1800 - 256 (not a second
        # field added: the API refuses both at once).
        completion = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=4000)
        assert completion.usage is not None and completion.usage.total_tokens == 200
    sent = [r.json() for r in fake.requests]
    assert sent[0]["max_output_tokens"] == 2000 - DEFAULT
    assert "max_completion_tokens" not in sent[1] and sent[1]["max_tokens"] == 1800 - DEFAULT  # the field it set
    assert [c[1:] for c in await _charges(server)] == [("settled", 2000, 200), ("settled", 1800, 200)]


async def test_clamp_gives_a_request_with_no_output_bound_a_quarter_of_what_is_left(serve_proxy, fake, tmp_path,
                                                                                   upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=1200, clamp=True)])
    fake.enqueue_response(ResponseScript.text("a", input_tokens=500, output_tokens=500))
    fake.enqueue_response(ResponseScript.text("b", input_tokens=10, output_tokens=10))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        await client.responses.create(model="gpt-4o", input="Hi")  # reserves 256, spends 1000: 200 left
        exc = await _streamed_response(client)  # 200 left: under 256 + 256, refused even clamped
        _assert_refusal(exc)
    # A budget with 1200 left and no max_output_tokens in the request: a quarter of it (300) goes to
    # the output bound and all 1200 are reserved (the rest stands for the input, which nothing bounds).
    server2 = await _serve(serve_proxy, tmp_path / "two", upstream,
                           keys=[team_a(tokens_per_day=1200, clamp=True)], default_reservation_tokens=2000)
    async with AsyncOpenAI(base_url=str(server2.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        await client.responses.create(model="gpt-4o", input="Hi")
    assert fake.requests[-1].json()["max_output_tokens"] == 300
    assert [c[1:] for c in await _charges(server2)] == [("settled", 1200, 20)]


async def test_a_chat_stream_settles_at_its_usage_chunk_else_at_its_reservation(serve_proxy, fake, tmp_path,
                                                                               upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=100_000)])
    messages = [{"role": "user", "content": "Hi"}]
    fake.enqueue_chat(ChatScript(text="one two", prompt_tokens=40, completion_tokens=2))
    fake.enqueue_chat(ChatScript(text="three", prompt_tokens=40, completion_tokens=1))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        with_usage = [c async for c in await client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True},
            max_completion_tokens=300)]
        without = [c async for c in await client.chat.completions.create(model="gpt-4o", messages=messages,
                                                                          stream=True)]
    assert with_usage[-1].usage is not None and with_usage[-1].usage.total_tokens == 42
    assert all(c.usage is None for c in without)
    # No usage chunk: what the completion used is unknown, so it pays its reservation.
    assert await _charges(server) == [(with_usage[0].id, "settled", DEFAULT + 300, 42),
                                      (without[0].id, "settled", DEFAULT, DEFAULT)]


async def test_a_budgeted_key_is_refused_on_every_api_with_the_same_429(serve_proxy, fake, tmp_path, upstream):
    server = await _serve(serve_proxy, tmp_path, upstream, keys=[team_a(tokens_per_day=300)])
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=3) as client:
        refusals = []
        for call in (client.responses.create(model="gpt-4o", input="Hi", max_output_tokens=100),
                     client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                                    max_completion_tokens=100)):
            try:
                await call
            except openai.RateLimitError as exc:
                refusals.append(exc)
    assert len(refusals) == 2
    for exc in refusals:
        _assert_refusal(exc)
        # The estimate: the default (for the input, which nothing bounds) plus the output bound.
        assert "this run needs 356 tokens reserved" in json.loads(exc.response.text)["error"]["message"]
    assert fake.requests == []  # neither reached the upstream, and the SDK did not retry
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        rows = cur.execute("select route, status, outcome, key_id from requests order by started_at").fetchall()
    assert rows == [("POST /v1/responses", 429, "rejected", KEY_ID),
                    ("POST /v1/chat/completions", 429, "rejected", KEY_ID)]


async def test_a_restart_with_a_background_response_in_flight_settles_it_once(serve_proxy, fake, tmp_path,
                                                                              upstream):
    settings = budgets_settings(tmp_path, upstream, default_reservation_tokens=DEFAULT,
                                keys=[team_a(tokens_per_day=100_000)])
    first = await serve_proxy(make_app(settings))
    fake.enqueue_response(ResponseScript.text("Later.", input_tokens=30, output_tokens=12))
    async with AsyncOpenAI(base_url=str(first.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        created = await client.responses.create(model="gpt-4o", input="Long task", background=True)
    await first.close()

    second = await serve_proxy(make_app(settings))
    budgets = second.app[PARTS].budgets.budgets
    assert [(r["used"], r["reserved"]) for r in figures(budgets)] == [(0, DEFAULT)]  # the reservation survived
    async with AsyncOpenAI(base_url=str(second.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        while (await client.responses.retrieve(created.id)).status != "completed":
            pass
        await client.responses.retrieve(created.id)  # a second look at it ended charges nothing more
    assert [(r["used"], r["reserved"]) for r in figures(budgets)] == [(42, 0)]
    assert await _charges(second) == [(created.id, "settled", DEFAULT, 42)]
