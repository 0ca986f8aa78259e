"""`python -m proxy` as a real process: recording, SIGTERM under load, the lock, the admin listener.

The fake upstream runs in the test's own loop (pytest-aiohttp); the proxy is a child process on
ephemeral loopback ports; the client is the real openai SDK. Nothing sleeps a fixed time: every
wait polls with a deadline, and every child is killed at teardown.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncAssistantEventHandler, AsyncOpenAI
from yarl import URL

from proxy.testing.faults import Fault
from proxy.testing.scripts import Script
from tests.conftest import KEY_ID, RAW_KEY
from tests.processes import (
    START_S,
    Child,
    child_env,
    connection_refused,
    kill_all,
    poll,
    query,
    recording_files,
    url_of,
)

__all__ = ["GRACE_S", "config", "launch"]

GRACE_S = 10
"""shutdown_grace_s of every child here: SIGTERM must end the process well within it."""
UNAUTHORIZED = {"error": {"message": "admin endpoints need Authorization: Bearer <token>",
                          "type": "invalid_request_error", "param": None, "code": "invalid_admin_token"}}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"]}}}


def spawn(args: list[str], cwd: Path, name: str, env: dict[str, str], port: int, admin_port: int, db: Path) -> Child:
    """`python -m proxy ARGS` with its output in files (a pipe nobody reads could block it)."""
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, cwd=cwd, env=child_env(**env))
    return Child(proc, port, admin_port, db, out, err)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "runtap.toml"
    path.write_text(f"[server]\nshutdown_grace_s = {GRACE_S}\n\n[recorder]\nbatch_interval_ms = 5\n")
    return path


@pytest.fixture
def launch(tmp_path: Path, config: Path, unused_tcp_port_factory):
    """`await launch(upstream=URL)` starts `python -m proxy` on fresh ports and waits until it serves."""
    children: list[Child] = []
    counter = 0

    async def start(*, upstream: str = "http://127.0.0.1:9", db: Path | None = None,
                    admin_host: str = "127.0.0.1", env: dict[str, str] | None = None,
                    port: int | None = None, admin_port: int | None = None, wait: bool = True) -> Child:
        nonlocal counter
        counter += 1
        child_db = db if db is not None else tmp_path / "x.duckdb"
        port = port if port is not None else unused_tcp_port_factory()
        admin_port = admin_port if admin_port is not None else unused_tcp_port_factory()
        args = ["--config", str(config), "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
                "--admin-listen", f"{admin_host}:{admin_port}", "--db", str(child_db)]
        child = spawn(args, tmp_path, f"child{counter}", env or {}, port, admin_port, child_db)
        children.append(child)
        if wait:
            await child.wait_ready()
        return child

    yield start
    kill_all(children)




def assert_key_never_written(child: Child) -> None:
    """The raw key is nowhere: not in the output, not in any file beside the recording, not in any row."""
    assert RAW_KEY not in child.output()
    for path in child.db.parent.iterdir():
        if path.is_file():
            assert RAW_KEY.encode() not in path.read_bytes(), path
    tables = [t for (t,) in query(child.db, "select table_name from duckdb_tables() where schema_name = 'main'")]
    assert {"requests", "event_rows", "response_streams", "runs", "run_steps", "tool_calls", "messages"} <= set(tables)
    assert query(child.db, "select count(*) from duckdb_views() where view_name = 'events'") == [(1,)]
    for table in tables:
        # The whole row as text, every column: a key in any of them would match.
        assert query(child.db, f'select count(*) from "{table}" t where t::varchar like ?', f"%{RAW_KEY}%") == [(0,)]
    # The same search does find what *is* recorded: the key's fingerprint.
    [(with_key_id,)] = query(child.db, "select count(*) from requests t where t::varchar like ?", f"%{KEY_ID}%")
    assert with_key_id > 0


class ToolHandler(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.required: list[Any] = []

    async def on_event(self, event: Any) -> None:
        if event.event == "thread.run.requires_action":
            self.required = event.data.required_action.submit_tool_outputs.tool_calls


async def test_streamed_tool_run_through_the_process_is_recorded(fake, upstream, launch):
    script = Script.tool_then_text(tool_prompt_tokens=80, tool_completion_tokens=18, prompt_tokens=120,
                                   completion_tokens=9)
    assert script.total_usage() == {"prompt_tokens": 200, "completion_tokens": 27, "total_tokens": 227}
    fake.enqueue(script)
    child = await launch(upstream=url_of(upstream))
    async with AsyncOpenAI(base_url=child.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:
        handler = ToolHandler()
        async with client.beta.threads.create_and_run_stream(
            assistant_id="asst_abc", tools=[WEATHER_TOOL], event_handler=handler,
            thread={"messages": [{"role": "user", "content": "Weather in SF?"}]},
        ) as stream:
            await stream.until_done()
        first = handler.current_run
        assert first.status == "requires_action"
        [call] = handler.required
        async with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=first.thread_id, run_id=first.id, tool_outputs=[{"tool_call_id": call.id, "output": "18C"}],
        ) as stream:
            await stream.until_done()
            final = await stream.get_final_run()
    assert (final.id, final.status, final.usage.total_tokens) == (first.id, "completed", 227)
    assert fake.requests[0].headers["Authorization"] == f"Bearer {RAW_KEY}"  # the key really went through

    child.sigterm()
    assert await child.wait_exit(GRACE_S) == 0, child.output()
    # Closed cleanly: everything checkpointed into the file (no WAL left), nothing refused (no spill).
    assert recording_files(child.db) == {"x.duckdb", "x.duckdb.admin-token"}
    assert query(child.db, "select run_id, thread_id, status, prompt_tokens, completion_tokens, total_tokens, "
                           "tool_rounds, request_count, key_id from runs") == [
        (final.id, final.thread_id, "completed", 200, 27, 227, 1, 2, KEY_ID)]
    assert query(child.db, "select tool_call_id, name, arguments, output from tool_calls") == [
        (call.id, "get_current_weather", '{"location":"San Francisco, CA","unit":"celsius"}', "18C")]
    assert query(child.db, "select route, status, outcome, streamed, key_id from requests order by started_at") == [
        ("POST /v1/threads/runs", 200, "completed", True, KEY_ID),
        ("POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", 200, "completed", True, KEY_ID)]
    assert query(child.db, "select count(*) from events where event = 'done' and data = '[DONE]'") == [(2,)]
    assert query(child.db, "select count(*) from events") == [(sum(len(r.events) for r in fake.responses),)]
    assert_key_never_written(child)


async def test_sigterm_under_load_finishes_every_stream_and_refuses_new_connections(fake, upstream, launch):
    n = 5
    texts = [f"Answer {i} drips in slowly." for i in range(n)]
    for text in texts:
        fake.enqueue(Script.text(text, prompt_tokens=10, completion_tokens=4, chunks=4))
        fake.fault(Fault(path="/threads/runs", drip_delay_s=0.1))  # 16 writes: about 1.5 s per stream
    child = await launch(upstream=url_of(upstream))

    async with AsyncOpenAI(base_url=child.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:

        async def converse(i: int) -> tuple[str, str, int, str]:
            async with client.beta.threads.create_and_run_stream(
                assistant_id="asst_abc", thread={"messages": [{"role": "user", "content": f"question {i}"}]},
            ) as stream:
                await stream.until_done()
                run = await stream.get_final_run()
                [message] = await stream.get_final_messages()
            return run.id, run.status, run.usage.total_tokens, message.content[0].text.value

        tasks = [asyncio.create_task(converse(i)) for i in range(n)]
        try:
            streaming = await poll(lambda: len(fake.responses) == n and all(len(r.writes) >= 2 for r in fake.responses))
            assert streaming, "the streams did not start"
            assert not any(r.complete for r in fake.responses)
            child.sigterm()
            signalled = time.monotonic()
            assert await poll(lambda: connection_refused(child.port)), "the proxy port still accepts after SIGTERM"
            # Refused while every stream was still running, not after they ended.
            assert [r.complete for r in fake.responses] == [False] * n
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert sorted(status for _, status, _, _ in results) == ["completed"] * n
    assert sorted(text for *_, text in results) == sorted(texts)
    assert {tokens for _, _, tokens, _ in results} == {14}
    assert await child.wait_exit(GRACE_S) == 0, child.output()
    assert time.monotonic() - signalled < GRACE_S
    assert all(r.complete for r in fake.responses)
    assert query(child.db, "select count(*) from events where event = 'done'") == [(n,)]
    assert query(child.db, "select count(*) from events") == [(sum(len(r.events) for r in fake.responses),)]
    assert query(child.db, "select outcome, status, count(*) from requests group by all") == [("completed", 200, n)]
    assert sorted(query(child.db, "select run_id, status, total_tokens from runs")) == sorted(
        (run_id, "completed", 14) for run_id, *_ in results)
    assert "cancelled" not in child.output()
    assert_key_never_written(child)


async def test_a_second_proxy_on_the_same_database_exits_3_and_leaves_the_first_alone(fake, upstream, launch):
    first = await launch(upstream=url_of(upstream))
    token_before = first.token_file.read_text()

    second = await launch(upstream=url_of(upstream), db=first.db, wait=False)
    assert await second.wait_exit(START_S) == 3, second.output()
    stderr = second.err.read_text()
    assert f"runtap: {first.db} is locked by another process" in stderr
    assert "Traceback" not in stderr
    assert await connection_refused(second.port) and await connection_refused(second.admin_port)

    # The first still serves, records, and is ready.
    async with AsyncOpenAI(base_url=first.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:
        thread = await client.beta.threads.create()
    async with aiohttp.ClientSession() as session:
        async with session.get(first.admin_url + "/readyz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ready"})
        # The token file beside the database must still be the first proxy's token: that is how
        # `runtap sql` finds it (contract §7).
        token_after = first.token_file.read_text()
        async with session.get(first.admin_url + "/admin/anything",
                               headers={"Authorization": f"Bearer {token_after.strip()}"}) as r:
            status_with_file_token = r.status
    first.sigterm()
    assert await first.wait_exit(GRACE_S) == 0, first.output()
    assert query(first.db, "select route, status, outcome, json_extract_string(response_body, '$.id') from requests"
                 ) == [("POST /v1/threads", 200, "completed", thread.id)]
    assert token_after == token_before, "the refused second proxy overwrote the running proxy's admin token file"
    assert status_with_file_token == 404  # authorised (there is no such endpoint), not 401


async def test_admin_listener_health_auth_and_token_file(launch):
    child = await launch()
    mode = stat.S_IMODE(child.token_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    token = child.token_file.read_text()
    assert token.endswith("\n") and len(token.strip()) == 43  # secrets.token_urlsafe(32)
    token = token.strip()
    async with aiohttp.ClientSession() as session:
        async with session.get(child.admin_url + "/healthz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})
        async with session.get(child.admin_url + "/readyz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ready"})
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                        {"Authorization": f"Basic {token}"}, {"Authorization": f"Bearer {token}x"},
                        {"Authorization": f"bearer{token}"}):
            for method, path in (("POST", "/admin/sql"), ("GET", "/admin/budgets"), ("GET", "/admin/anything")):
                async with session.request(method, child.admin_url + path, headers=headers,
                                           json={"sql": "select 1"}) as r:
                    assert (r.status, r.content_type, await r.json()) == (401, "application/json", UNAUTHORIZED), (
                        headers, path)
        async with session.get(child.admin_url + "/admin/anything",
                               headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 404  # past the token check; no such endpoint
    child.sigterm()
    assert await child.wait_exit(GRACE_S) == 0, child.output()


async def test_env_admin_token_wins_and_allows_a_non_loopback_admin_listener(launch):
    token = "env-admin-token-0123456789"
    child = await launch(admin_host="0.0.0.0", env={"RUNTAP_ADMIN_TOKEN": token})
    assert "x.duckdb.admin-token" not in recording_files(child.db)
    async with aiohttp.ClientSession() as session:
        async with session.get(child.admin_url + "/readyz") as r:
            assert (r.status, await r.json()) == (200, {"status": "ready"})
        async with session.get(child.admin_url + "/admin/anything", headers={"Authorization": "Bearer x"}) as r:
            assert (r.status, await r.json()) == (401, UNAUTHORIZED)
        async with session.get(child.admin_url + "/admin/anything",
                               headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 404
    child.sigterm()
    assert await child.wait_exit(GRACE_S) == 0, child.output()
    assert token not in child.output()


async def test_non_loopback_admin_listener_without_a_token_refuses_to_start(launch, tmp_path):
    child = await launch(admin_host="0.0.0.0", wait=False)
    assert await child.wait_exit(START_S) == 2, child.output()
    assert child.err.read_text().strip().splitlines()[-1] == (
        "runtap: the admin listener on 0.0.0.0 is not loopback: set RUNTAP_ADMIN_TOKEN")
    assert recording_files(child.db) == set()
    assert await connection_refused(child.port) and await connection_refused(child.admin_port)


async def test_admin_paths_on_the_proxy_port_go_to_the_upstream(fake, upstream, launch):
    child = await launch(upstream=url_of(upstream))
    token = child.token_file.read_text().strip()
    cases = [("POST", "/admin/sql", "/admin/sql"), ("GET", "/admin/budgets", "/admin/budgets"),
             ("GET", "/healthz", "/healthz"), ("GET", "/readyz", "/readyz"), ("GET", "/metrics", "/metrics"),
             ("POST", "/%2e%2e/admin/sql", "/../admin/sql"), ("POST", "/v1/../admin/sql", "/v1/../admin/sql")]
    async with aiohttp.ClientSession() as session:
        for method, raw_path, seen_path in cases:
            for auth in (RAW_KEY, token):  # neither the API key nor the admin token reaches the admin app
                async with session.request(method, URL(child.url + raw_path, encoded=True), json={"sql": "select 1"},
                                           headers={"Authorization": f"Bearer {auth}"}) as r:
                    body = await r.json()
                    assert r.status == 404, (raw_path, body)
                    assert body == {"error": {"message": f"Invalid URL ({method} {seen_path})",
                                              "type": "invalid_request_error", "param": None, "code": None}}
                    assert r.headers["openai-organization"] == "org-runtapfake"  # the fake's answer
    assert [(r.method, r.path) for r in fake.requests] == [(m, p) for m, _, p in cases for _ in (1, 2)]
    child.sigterm()
    assert await child.wait_exit(GRACE_S) == 0, child.output()
    assert query(child.db, "select count(*), min(status), max(status) from requests") == [(2 * len(cases), 404, 404)]


@pytest.mark.parametrize("busy", ["listen", "admin-listen"])
async def test_a_port_in_use_makes_the_process_exit_with_an_error(launch, busy):
    holder = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        taken = holder.sockets[0].getsockname()[1]
        child = await launch(wait=False, **{"port" if busy == "listen" else "admin_port": taken})
        code = await child.wait_exit(8)
        assert code is not None, f"runtap hung after failing to bind {busy} 127.0.0.1:{taken}:\n{child.output()}"
        assert code != 0
        assert str(taken) in child.output() and "address already in use" in child.output()
    finally:
        holder.close()
        await holder.wait_closed()
