"""Budgets in a real `python -m proxy` process: SIGHUP changes a limit live, without dropping a stream."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
from openai import AsyncOpenAI

from proxy.testing.faults import Fault
from proxy.testing.scripts import Script
from tests.conftest import KEY_ID, RAW_KEY
from tests.e2e.test_budgets import _assert_refusal, _stream_run
from tests.e2e.test_serve_process import GRACE_S, config, launch  # noqa: F401  # fixtures
from tests.processes import poll, query, url_of

RUN = {"max_prompt_tokens": 256, "max_completion_tokens": 256}


def write_config(path, tokens_per_day: int, extra: str = "") -> None:
    path.write_text(f"[server]\nshutdown_grace_s = {GRACE_S}\n\n[recorder]\nbatch_interval_ms = 5\n\n"
                    f'[[budgets.keys]]\nkey_id = "{KEY_ID}"\nalias = "team-a"\ntokens_per_day = {tokens_per_day}\n'
                    + extra)


async def admin_budgets(child) -> list[dict]:
    token = child.token_file.read_text().strip()
    async with aiohttp.ClientSession() as session, session.get(
            child.admin_url + "/admin/budgets", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
        return (await r.json())["budgets"]


async def remaining_metric(child) -> str:
    async with aiohttp.ClientSession() as session, session.get(child.admin_url + "/metrics") as r:
        return next(line for line in (await r.text()).splitlines()
                    if line.startswith('runtap_budget_remaining_tokens{key_alias="team-a"}'))


async def test_sighup_changes_a_limit_live_without_dropping_traffic(fake, upstream, launch, config):  # noqa: F811
    write_config(config, 700)
    fake.default_script = lambda body: Script.text("hi", prompt_tokens=100, completion_tokens=20)
    child = await launch(upstream=url_of(upstream))
    async with AsyncOpenAI(base_url=child.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:
        assert (await _stream_run(client, **RUN)).usage.total_tokens == 120
        # A slow stream (120 used + 512 reserved of 700) is in flight while the limit changes.
        fake.fault(Fault(path="/threads/runs", drip_delay_s=0.2))
        slow = asyncio.ensure_future(_stream_run(client, **RUN))
        await poll(lambda: len([r for r in fake.requests if r.path == "/v1/threads/runs"]) == 2, 10)
        _assert_refusal(await _stream_run(client, **RUN))  # 632 held + 512 > 700
        assert [(b["limit"], b["used"], b["reserved"]) for b in await admin_budgets(child)] == [(700, 120, 512)]

        # The new [prices] entry reaches the prices table only if SIGHUP rewrites it.
        write_config(config, 100_000, '[prices.models]\nmy-deployment = { input_usd_per_1m = 1.0,'
                                      ' output_usd_per_1m = 2.0 }\n')
        child.proc.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return [b["limit"] for b in await admin_budgets(child)] == [100_000]

        assert await poll(reloaded, 10), child.output()
        assert not slow.done()  # still streaming across the reload
        assert (await _stream_run(client, **RUN)).status == "completed"  # the new limit admits it
        assert (await slow).status == "completed"
        assert "SIGHUP: budgets reloaded" in child.output()

        async def metric() -> bool:
            return await remaining_metric(child) == 'runtap_budget_remaining_tokens{key_alias="team-a"} 99640.0'

        assert await poll(metric, 5), await remaining_metric(child)

        # A broken file on SIGHUP leaves the budgets in force.
        config.write_text("[budgets]\nunknown_keys = 3\n")
        child.proc.send_signal(signal.SIGHUP)
        assert await poll(lambda: "configuration not reloaded" in child.output(), 10), child.output()
        assert [b["limit"] for b in await admin_budgets(child)] == [100_000]
    child.sigterm()
    assert await child.wait_exit(GRACE_S) == 0, child.output()
    assert query(child.db, "select budget, limit_value from budget_limits") == [("tokens_per_day", 100_000.0)]
    assert query(child.db, "select source from prices where model = 'my-deployment'") == [("config",)]
    assert query(child.db, "select count(*), sum(spent_tokens) from budget_charges where state = 'settled'") == [
        (3, 360)]


async def admin_sql(child, sql: str, *params) -> list[list]:
    token = child.token_file.read_text().strip()
    async with aiohttp.ClientSession() as session, session.post(
            child.admin_url + "/admin/sql", json={"sql": sql, "params": list(params)},
            headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["rows"]


async def test_sigkill_with_a_reservation_in_flight_neither_forgets_nor_charges_twice(
        fake, upstream, launch, config, tmp_path):  # noqa: F811
    write_config(config, 10_000)
    fake.enqueue(Script.tool_then_text(tool_prompt_tokens=80, tool_completion_tokens=18, prompt_tokens=120,
                                       completion_tokens=9))
    child = await launch(upstream=url_of(upstream))
    async with AsyncOpenAI(base_url=child.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:
        async with client.beta.threads.create_and_run_stream(
            assistant_id="asst_abc", thread={"messages": [{"role": "user", "content": "Weather?"}]}, **RUN,
        ) as stream:
            await stream.until_done()
            paused = stream.current_run
        assert paused.status == "requires_action"

        async def committed() -> bool:  # the reservation, linked to its run, is in the file
            return await admin_sql(child, "select count(*) from budget_charges where run_id = ?", paused.id) == [[1]]

        assert await poll(committed, 10)
        child.proc.kill()
        assert await child.wait_exit() == -signal.SIGKILL

        second = await launch(upstream=url_of(upstream))
        assert [(b["used"], b["reserved"]) for b in await admin_budgets(second)] == [(0, 512)]  # not forgotten
        [call] = paused.required_action.submit_tool_outputs.tool_calls
    async with AsyncOpenAI(base_url=second.url + "/v1", api_key=RAW_KEY, max_retries=0) as client, \
            client.beta.threads.runs.submit_tool_outputs_stream(
                thread_id=paused.thread_id, run_id=paused.id,
                tool_outputs=[{"tool_call_id": call.id, "output": "18C"}]) as stream:
        await stream.until_done()
        assert (await stream.get_final_run()).usage.total_tokens == 227
    assert [(b["used"], b["reserved"]) for b in await admin_budgets(second)] == [(227, 0)]  # charged once
    second.sigterm()
    assert await second.wait_exit(GRACE_S) == 0, second.output()
    assert query(second.db, "select run_id, state, reserved_tokens, spent_tokens from budget_charges") == [
        (paused.id, "settled", 512, 227)]
