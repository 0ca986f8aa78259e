"""Budgets end to end: the real openai SDK through the proxy to the fake upstream, real DuckDB files.

The overspend bound is measured here (`test_concurrent_runs_never_overspend`, run with `-s` to see
it printed): 200 concurrent streamed runs of one key against a budget worth five of them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import duckdb
import openai
import pytest
from openai import AsyncOpenAI

from analytics.cli import main as analytics_main
from proxy.admin.listener import make_admin_app
from proxy.app import PARTS, make_app
from proxy.budgets.report import figures
from proxy.config import Settings
from proxy.keys import fingerprint
from proxy.testing.faults import Fault
from proxy.testing.scripts import Script, TextTurn
from tests.conftest import KEY_ID, RAW_KEY
from tests.e2e.test_proxy_sdk import _tool_conversation

OTHER_KEY = "sk-test-" + "0th3r" * 8
"""A second key with no budget entry: it must not be affected by the first key's budget."""
PER_RUN = 256 + 256
"""The reservation of a run that sets max_prompt_tokens = max_completion_tokens = 256 (the API minimum)."""
LIMIT = 5 * PER_RUN
ADMIN_TOKEN = "budgets-admin-token"


def budgets_settings(tmp_path, upstream, **budgets: Any) -> Settings:
    return Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/")},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5},
        "budgets": budgets,
    })


def team_a(**limits: Any) -> dict[str, Any]:
    return {"key_id": KEY_ID, "alias": "team-a", **limits}


@pytest.fixture
def settings(tmp_path, upstream) -> Settings:
    return budgets_settings(tmp_path, upstream, keys=[team_a(tokens_per_day=LIMIT)])


async def _stream_run(client: AsyncOpenAI, **params: Any) -> Any:
    """One create-thread-and-run stream to its end: the final run, or the SDK's exception."""
    try:
        async with client.beta.threads.create_and_run_stream(
            assistant_id="asst_abc", thread={"messages": [{"role": "user", "content": "Hi"}]}, **params,
        ) as stream:
            await stream.until_done()
            return await stream.get_final_run()
    except openai.APIStatusError as exc:
        return exc


def _assert_refusal(exc: openai.APIStatusError, alias: str = "team-a", name: str = "tokens_per_day") -> None:
    assert isinstance(exc, openai.RateLimitError), exc
    assert exc.status_code == 429
    headers = exc.response.headers
    assert headers["x-should-retry"] == "false"
    assert int(headers["retry-after"]) >= 1
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (
        "budget_exceeded", None, "budget_exceeded")
    message = body["error"]["message"]
    assert message.startswith(f"budget {alias!r} {name} = ") and ("frees by" in message or "never fits" in message)
    assert RAW_KEY not in message and KEY_ID not in message


async def test_concurrent_runs_never_overspend(fake, proxy, parts, recorded):
    # Each run uses 450 of its 512 reserved tokens: the budget pays for five, ever.
    fake.default_script = lambda body: Script.text("Five words for you here.", prompt_tokens=200,
                                                   completion_tokens=250)
    # Default retries on: a budget refusal must still reach the upstream (and the proxy) only once.
    async with AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key=RAW_KEY, max_retries=2) as client, \
            AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key=OTHER_KEY, max_retries=0) as other:
        results = await asyncio.gather(
            *(_stream_run(client, max_prompt_tokens=256, max_completion_tokens=256) for _ in range(200)),
            *(_stream_run(other) for _ in range(10)))
    mine, theirs = results[:200], results[200:]
    admitted = [r for r in mine if not isinstance(r, Exception)]
    refused = [r for r in mine if isinstance(r, Exception)]
    assert all(not isinstance(r, Exception) and r.status == "completed" for r in theirs), theirs
    assert all(r.status == "completed" and r.usage.total_tokens == 450 for r in admitted)
    assert len(admitted) >= 5 and len(refused) == 200 - len(admitted) > 0
    for exc in refused:
        _assert_refusal(exc)
    creates = [r for r in fake.requests if r.path == "/v1/threads/runs"]
    assert len(creates) == len(admitted) + len(theirs)  # refused requests never reached the upstream

    q = await recorded()
    [(requests, rejected)] = q("select count(*), count(*) filter (where outcome = 'rejected' and status = 429)"
                               " from requests where key_id = ?", KEY_ID)
    assert (requests, rejected) == (200, len(refused))  # no SDK retry of a refusal
    [(spent_runs,)] = q("select sum(total_tokens) from runs where key_id = ?", KEY_ID)
    [(spent_ledger, charges, open_)] = q(
        "select sum(spent_tokens), count(*), count(*) filter (where state = 'reserved') from budget_charges"
        " where key_id = ?", KEY_ID)
    assert spent_runs == spent_ledger == 450 * len(admitted) and charges == len(admitted) and open_ == 0
    overspend = max(0, spent_runs - LIMIT)
    print(f"\noverspend bound measured: {overspend} tokens (admitted {len(admitted)} of 200 concurrent runs, "
          f"spent {spent_runs} of a {LIMIT}-token limit)")
    assert overspend == 0
    [row] = figures(parts.budgets.budgets)
    assert (row["key_alias"], row["limit"], row["used"], row["reserved"]) == ("team-a", LIMIT, spent_runs, 0)
    assert parts.registry.get_sample_value("runtap_budget_rejections_total", {"key_alias": "team-a"}) == len(refused)
    assert parts.registry.get_sample_value("runtap_budget_rejections_total", {"key_alias": "other"}) is None
    # The other key paid nothing against team-a and was never refused.
    [(other_rejected,)] = q("select count(*) from requests where key_id = ? and outcome = 'rejected'",
                            fingerprint(OTHER_KEY))
    assert other_rejected == 0


async def test_the_sdk_gets_rate_limit_error_once_without_retrying(fake, proxy, recorded):
    async with AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key=RAW_KEY, max_retries=5) as client:
        exc = await _stream_run(client, max_prompt_tokens=4096, max_completion_tokens=LIMIT)
    _assert_refusal(exc)
    assert "never fits" in exc.response.json()["error"]["message"]
    assert int(exc.response.headers["retry-after"]) == 86400
    assert fake.requests == []
    q = await recorded()
    assert q("select status, outcome, error, route from requests") == [
        (429, "rejected", "budget exceeded", "POST /v1/threads/runs")]


@pytest.fixture
def tool_settings(tmp_path, upstream) -> Settings:
    return budgets_settings(tmp_path, upstream, keys=[team_a(tokens_per_day=100_000)],
                            default_reservation_tokens=50)


async def test_a_tool_run_across_submit_tool_outputs_is_charged_once(serve_proxy, fake, tool_settings):
    server = await serve_proxy(make_app(tool_settings))
    parts = server.app[PARTS]
    script = Script.tool_then_text(tool_prompt_tokens=80, tool_completion_tokens=18, prompt_tokens=120,
                                   completion_tokens=9)
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        _, _, final = await _tool_conversation(client, fake, script)
    assert (final.status, final.usage.total_tokens) == ("completed", 227)
    await parts.flush()
    with parts.writer.cursor() as cur:
        rows = cur.execute("select run_id, state, reserved_tokens, spent_tokens from budget_charges").fetchall()
    # The requires_action snapshot (98 tokens) had used up the 50 reserved: the continuation topped
    # the same charge up by 50, and the final usage replaced it once.
    assert rows == [(final.id, "settled", 100, 227)]
    [row] = figures(parts.budgets.budgets)
    assert (row["used"], row["reserved"]) == (227, 0)


async def test_a_restart_with_reservations_in_flight_forgets_nothing_and_charges_nothing_twice(
        serve_proxy, fake, settings):
    first = await serve_proxy(make_app(settings))
    fake.enqueue(Script.text("done", prompt_tokens=100, completion_tokens=20))
    async with AsyncOpenAI(base_url=str(first.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        done = await _stream_run(client, max_prompt_tokens=256, max_completion_tokens=256)
        # A tool run pauses in requires_action: its reservation is in flight when the proxy stops.
        fake.enqueue(Script.tool_then_text(tool_prompt_tokens=80, tool_completion_tokens=18, prompt_tokens=120,
                                           completion_tokens=9))
        async with client.beta.threads.create_and_run_stream(
            assistant_id="asst_abc", thread={"messages": [{"role": "user", "content": "Weather?"}]},
            max_prompt_tokens=256, max_completion_tokens=256,
        ) as stream:
            await stream.until_done()
            paused = stream.current_run
    assert (done.usage.total_tokens, paused.status) == (120, "requires_action")
    before = figures(first.app[PARTS].budgets.budgets)
    assert [(r["used"], r["reserved"]) for r in before] == [(120, PER_RUN)]
    await first.close()

    second = await serve_proxy(make_app(settings))
    budgets = second.app[PARTS].budgets.budgets
    assert figures(budgets) == before  # nothing forgotten: the same figures, to the timestamp
    [call] = paused.required_action.submit_tool_outputs.tool_calls
    async with AsyncOpenAI(base_url=str(second.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client, \
            client.beta.threads.runs.submit_tool_outputs_stream(
                thread_id=paused.thread_id, run_id=paused.id,
                tool_outputs=[{"tool_call_id": call.id, "output": "18C"}]) as stream:
        await stream.until_done()
        final = await stream.get_final_run()
    assert (final.status, final.usage.total_tokens) == ("completed", 227)
    [row] = figures(budgets)
    assert (row["used"], row["reserved"]) == (120 + 227, 0)  # the continuation rode on the loaded reservation
    parts = second.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        charges = cur.execute("select run_id, state, spent_tokens from budget_charges order by spent_tokens").fetchall()
    assert charges == [(done.id, "settled", 120), (paused.id, "settled", 227)]


async def test_a_restart_that_lost_a_charges_link_to_its_run_still_charges_the_run_once(serve_proxy, fake,
                                                                                          settings):
    first = await serve_proxy(make_app(settings))
    fake.enqueue(Script.tool_then_text(tool_prompt_tokens=80, tool_completion_tokens=18, prompt_tokens=120,
                                       completion_tokens=9))
    async with AsyncOpenAI(base_url=str(first.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client, \
            client.beta.threads.create_and_run_stream(
                assistant_id="asst_abc", thread={"messages": [{"role": "user", "content": "Weather?"}]},
                max_prompt_tokens=256, max_completion_tokens=256) as stream:
        await stream.until_done()
        paused = stream.current_run
    await first.close()
    # The link row did not make it to the file (a SIGKILL between the writer's batches): the
    # reservation is loaded with no run.
    with duckdb.connect(settings.recorder.db) as con:
        con.execute("update budget_charges set run_id = null")

    second = await serve_proxy(make_app(settings))
    budgets = second.app[PARTS].budgets.budgets
    assert [(r["used"], r["reserved"]) for r in figures(budgets)] == [(0, PER_RUN)]
    [call] = paused.required_action.submit_tool_outputs.tool_calls
    async with AsyncOpenAI(base_url=str(second.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client, \
            client.beta.threads.runs.submit_tool_outputs_stream(
                thread_id=paused.thread_id, run_id=paused.id,
                tool_outputs=[{"tool_call_id": call.id, "output": "18C"}]) as stream:
        await stream.until_done()
        assert (await stream.get_final_run()).usage.total_tokens == 227
    assert [(r["used"], r["reserved"]) for r in figures(budgets)] == [(227, 0)]  # once, not 227 + 512 expiring
    parts = second.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        assert cur.execute("select run_id, state, spent_tokens from budget_charges").fetchall() == [
            (paused.id, "settled", 227)]


async def test_clamp_lowers_max_completion_tokens_to_what_the_budget_can_pay(serve_proxy, fake, tmp_path,
                                                                             upstream):
    settings = budgets_settings(tmp_path, upstream, keys=[team_a(tokens_per_day=1000, clamp=True)])
    server = await serve_proxy(make_app(settings))
    fake.enqueue(Script.text("short", prompt_tokens=200, completion_tokens=100))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        run = await _stream_run(client, max_prompt_tokens=256, max_completion_tokens=2000, temperature=0.5)
        assert run.status == "completed" and run.max_completion_tokens == 1000 - 256
        sent = fake.requests[-1].json()
        assert (sent["max_completion_tokens"], sent["max_prompt_tokens"], sent["temperature"]) == (744, 256, 0.5)
        # 300 used, 700 left: 256 + 444 still fits under the minimum of 256 for completions...
        fake.enqueue(Script.text("short", prompt_tokens=200, completion_tokens=100))
        second = await _stream_run(client, max_prompt_tokens=256, max_completion_tokens=2000)
        assert second.max_completion_tokens == 700 - 256
        # ...then 400 are left: 256 + 144 would be under it, so the request is refused.
        refused = await _stream_run(client, max_prompt_tokens=256, max_completion_tokens=2000)
    _assert_refusal(refused)
    parts = server.app[PARTS]
    await parts.flush()
    with parts.writer.cursor() as cur:
        bodies = [json.loads(b) for (b,) in cur.execute(
            "select request_body from requests where status = 200 order by started_at").fetchall()]
    assert [b["max_completion_tokens"] for b in bodies] == [744, 444]  # the recording shows what went upstream


async def test_cancel_on_exhaustion_cancels_the_run_upstream_as_the_caller(serve_proxy, fake, tmp_path,
                                                                           upstream):
    settings = budgets_settings(tmp_path, upstream, keys=[team_a(tokens_per_day=1000, cancel_on_exhaustion=True)],
                                default_reservation_tokens=300)
    server = await serve_proxy(make_app(settings))
    # Eight model calls of 400 tokens each, with no max_*_tokens to stop them: the third passes 1000,
    # and the five after it leave the cancel ample time to arrive mid-stream.
    fake.enqueue(Script.of(*(TextTurn(f"part {i}", prompt_tokens=200, completion_tokens=200) for i in range(8))))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.03))
    async with AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        run = await _stream_run(client)
    assert run.status == "cancelled"
    [cancel] = [r for r in fake.requests if r.path.endswith("/cancel")]
    assert cancel.path == f"/v1/threads/{run.thread_id}/runs/{run.id}/cancel"
    assert cancel.headers["Authorization"] == f"Bearer {RAW_KEY}"  # the caller's own credentials
    parts = server.app[PARTS]
    assert parts.budgets.budgets.credentials == {}  # held for that exchange only
    await parts.flush()
    with parts.writer.cursor() as cur:
        [(state, spent, cancelled_at)] = cur.execute(
            "select state, spent_tokens, cancelled_by_budget_at from budget_charges").fetchall()
    assert state == "settled" and cancelled_at is not None
    assert spent == run.usage.total_tokens and 1200 <= spent < 8 * 400


async def test_runtap_budgets_prints_the_same_figures_live_and_from_the_cold_file(
        aiohttp_server, fake, proxy, parts, capsys, monkeypatch):
    fake.enqueue(Script.text("hello there", prompt_tokens=100, completion_tokens=20))
    async with AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key=RAW_KEY, max_retries=0) as client:
        await _stream_run(client, max_prompt_tokens=256, max_completion_tokens=256)
    await parts.flush()
    admin = await aiohttp_server(make_admin_app(parts, ADMIN_TOKEN))
    monkeypatch.setenv("RUNTAP_ADMIN_TOKEN", ADMIN_TOKEN)
    db = parts.settings.recorder.db
    admin_url = str(admin.make_url("")).rstrip("/")

    async def budgets(*argv: str) -> str:
        capsys.readouterr()
        code = await asyncio.to_thread(analytics_main, ["budgets", "--db", db, "--admin", admin_url, *argv])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out

    live_json, live_table = await budgets("--format", "json"), await budgets()
    [row] = json.loads(live_json)
    assert row == {"key_alias": "team-a", "key_id": KEY_ID, "budget": "tokens_per_day", "unit": "tokens",
                   "window_s": 86400, "limit": LIMIT, "used": 120, "reserved": 0, "remaining": LIMIT - 120,
                   "resets_at": row["resets_at"]}
    lines = live_table.splitlines()
    assert lines[0].split() == ["key_alias", "key_id", "budget", "unit", "window_s", "limit", "used", "reserved",
                                "remaining", "resets_at"]
    assert lines[2].split()[:9] == ["team-a", KEY_ID, "tokens_per_day", "tokens", "86400", str(LIMIT), "120", "0",
                                    str(LIMIT - 120)]
    await admin.close()
    await proxy.close()  # the file is cold now
    assert await budgets("--format", "json") == live_json
    assert await budgets() == live_table


async def test_an_azure_client_with_api_key_is_budgeted_the_same(fake, azure_client, parts, recorded):
    fake.enqueue(Script.text("hi", prompt_tokens=100, completion_tokens=20))
    run = await _stream_run(azure_client, max_prompt_tokens=256, max_completion_tokens=256)
    assert run.status == "completed"
    _assert_refusal(await _stream_run(azure_client, max_prompt_tokens=256, max_completion_tokens=LIMIT))
    assert [r.path for r in fake.requests] == ["/openai/threads/runs"]
    assert "api-key" in fake.requests[0].headers  # the key came as api-key, and was fingerprinted the same
    q = await recorded()
    assert q("select key_id, run_id, state, spent_tokens from budget_charges") == [
        (KEY_ID, run.id, "settled", 120)]
