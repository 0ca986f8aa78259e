"""POST /admin/sql on a running proxy: read-only, bounded, off the recorder's thread (contract §7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.admin.listener import make_admin_app
from proxy.app import Parts
from proxy.config import Settings
from proxy.testing.scripts import Script

TOKEN = "admin-sql-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_ROWS = 5
TIMEOUT_S = 2.0
SLOW = "select count(*) from range(100000000) a, range(100000) b where (a.range * b.range) % 7 = 3"
"""A cross join that runs for minutes: only the timeout ends it."""


@pytest.fixture
def settings(tmp_path, upstream) -> Settings:
    return Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/"), "admin_sql_max_rows": MAX_ROWS,
                   "admin_sql_timeout_s": TIMEOUT_S},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5},
    })


@pytest.fixture
async def admin(aiohttp_client, parts: Parts):
    return await aiohttp_client(make_admin_app(parts, TOKEN))


async def sql(admin, statement: str, params: list[Any] | None = None, status: int = 200) -> dict[str, Any]:
    body: dict[str, Any] = {"sql": statement} if params is None else {"sql": statement, "params": params}
    response = await admin.post("/admin/sql", json=body, headers=AUTH)
    assert response.status == status, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def one_run(client, fake, parts: Parts, prompt_tokens: int = 20) -> str:
    """A completed run through the proxy, committed to the recording."""
    fake.enqueue(Script.text("Hello!", prompt_tokens=prompt_tokens, completion_tokens=3))
    async with client.beta.threads.create_and_run_stream(assistant_id="asst_a") as stream:
        await stream.until_done()
        run_id = str(stream.current_run.id)
    await parts.flush()
    return run_id


async def snapshot(admin) -> list[Any]:
    """Everything a refused statement could have changed: rows, schema, settings, attached databases."""
    counts = await sql(admin, "select (select count(*) from runs), (select count(*) from requests),"
                              " (select count(*) from events),"
                              " (select string_agg(model, ',' order by model) from prices)")
    schema = await sql(admin, "select string_agg(table_name, ',' order by table_name) from duckdb_tables()"
                              " union all select string_agg(view_name, ',' order by view_name) from duckdb_views()"
                              " where not internal"
                              " union all select string_agg(database_name, ',') from duckdb_databases()")
    settings = await sql(admin, "select name, value from duckdb_settings() where name in"
                                " ('threads', 'TimeZone', 'enable_external_access', 'memory_limit') order by name")
    return [counts["rows"], schema["rows"], settings["rows"]]


async def test_select_returns_columns_types_and_json_rows(fake, client, admin, parts):
    run_id = await one_run(client, fake, parts)
    answer = await sql(admin, "select run_id, status, total_tokens, created_at is not null as dated, ended_at"
                              " from runs where run_id = ?", [run_id])
    assert answer["columns"] == ["run_id", "status", "total_tokens", "dated", "ended_at"]
    assert answer["types"] == ["VARCHAR", "VARCHAR", "BIGINT", "BOOLEAN", "TIMESTAMP WITH TIME ZONE"]
    [[got_id, status, tokens, dated, ended_at]] = answer["rows"]
    assert (got_id, status, tokens, dated, answer["truncated"]) == (run_id, "completed", 23, True, False)
    assert ended_at.endswith("+00:00")  # ISO 8601 in UTC


async def test_the_views_answer_through_the_proxy(fake, client, admin, parts):
    await one_run(client, fake, parts, prompt_tokens=1_000_000)
    answer = await sql(admin, "select model, priced_as, cost_usd from runs_summary")
    assert answer["rows"] == [["gpt-4o", "gpt-4o", 2.5 + 3 * 10.0 / 1e6]]


async def test_rows_past_the_cap_are_cut_and_flagged(admin):
    answer = await sql(admin, "select range as n from range(100)")
    assert answer["rows"] == [[n] for n in range(MAX_ROWS)] and answer["truncated"] is True
    exact = await sql(admin, f"select range as n from range({MAX_ROWS})")
    assert len(exact["rows"]) == MAX_ROWS and exact["truncated"] is False


REFUSED = [
    ("insert into runs (run_id) values ('run_x')", "INSERT statements are refused"),
    ("update runs set status = 'x'", "UPDATE statements are refused"),
    ("delete from runs", "DELETE statements are refused"),
    ("truncate runs", "DELETE statements are refused"),
    ("merge into prices using prices p on (prices.model = p.model) when matched then delete",
     "MERGE_INTO statements are refused"),
    ("create table t (a int)", "CREATE statements are refused"),
    ("create temp table t as select 1", "CREATE statements are refused"),
    ("create view v as select 1", "CREATE statements are refused"),
    ("create macro m() as 1", "CREATE statements are refused"),
    ("drop view runs_summary", "DROP statements are refused"),
    ("alter table runs add column x int", "ALTER statements are refused"),
    ("attach ':memory:' as other", "ATTACH statements are refused"),
    ("detach other", "DETACH statements are refused"),
    ("copy runs to '/tmp/runtap-runs.csv'", "COPY statements are refused"),
    ("copy runs from '/etc/hostname'", "COPY statements are refused"),
    ("export database '/tmp/runtap-export'", "EXPORT statements are refused"),
    ("install httpfs", "LOAD statements are refused"),
    ("load httpfs", "LOAD statements are refused"),
    ("set threads = 1", "SET statements are refused"),
    ("reset threads", "SET statements are refused"),
    ("use memory", "SET statements are refused"),
    ("pragma enable_profiling", "PRAGMA statements are refused"),
    ("call pragma_version()", "CALL statements are refused"),
    ("checkpoint", "CALL statements are refused"),
    ("vacuum", "VACUUM statements are refused"),
    ("begin transaction", "TRANSACTION statements are refused"),
    ("prepare p as select 1", "PREPARE statements are refused"),
    ("explain analyze insert into runs (run_id) values ('run_y')", "INSERT statements are refused"),
    ("select 1; delete from runs", "give exactly one statement, not 2"),
    ("select * from read_csv('/etc/passwd')", "read_csv reads files"),
    ("select * from read_csv_auto('/etc/passwd')", "read_csv_auto reads files"),
    ("select * from read_parquet('/tmp/x.parquet')", "read_parquet reads files"),
    ("select * from read_json('/etc/x.json')", "read_json reads files"),
    ("select * from read_text('/etc/passwd')", "read_text reads files"),
    ("select * from read_blob('/etc/passwd')", "read_blob reads files"),
    ("select * from glob('/etc/*')", "glob reads files"),
    ("select * from sniff_csv('/etc/passwd')", "sniff_csv reads files"),
    ("select * from parquet_metadata('/tmp/x.parquet')", "parquet_metadata reads files"),
    ("select * from '/etc/passwd'", "'/etc/passwd' reads files"),
    ("select * from 'runs.csv'", "'runs.csv' reads files"),
    ("with x as (select * from read_text('/etc/passwd')) select * from x", "read_text reads files"),
    ("select (select count(*) from glob('/*')) as n", "glob reads files"),
    ("select * from query('select * from read_text(''/etc/passwd'')')", "query does more than read"),
    ("select * from checkpoint()", "checkpoint does more than read"),
    ("select * from enable_logging()", "enable_logging does more than read"),
    ("select * from json_execute_serialized_sql(json_serialize_sql('select 1'))",
     "json_execute_serialized_sql does more than read"),
    ("select write_log('x')", "write_log does more than read"),
]


@pytest.mark.parametrize(("statement", "message"), REFUSED, ids=[s for s, _ in REFUSED])
async def test_what_is_not_a_read_is_refused_and_changes_nothing(fake, client, admin, parts, statement, message):
    await one_run(client, fake, parts)
    before = await snapshot(admin)
    answer = await sql(admin, statement, status=400)
    error = answer["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "read_only", None)
    assert message in error["message"]
    assert await snapshot(admin) == before


@pytest.mark.parametrize("statement", [
    "describe runs", "show tables", "summarize prices", "explain select * from runs", "explain analyze select 1",
    "from runs_summary", "values (1, 'a')", "with t as (select 1 as x) select * from t",
    "select * from duckdb_settings() where name = 'enable_external_access'",
])
async def test_read_statements_run(admin, statement):
    answer = await sql(admin, statement)
    assert answer["columns"] and answer["truncated"] in (True, False)


async def test_file_access_and_python_scans_are_off_on_the_proxys_connection_as_a_backstop(admin):
    answer = await sql(admin, "select name, value from duckdb_settings()"
                              " where name in ('enable_external_access', 'python_enable_replacements') order by 1")
    assert answer["rows"] == [["enable_external_access", "false"], ["python_enable_replacements", "false"]]


async def test_a_long_statement_is_interrupted_and_the_proxy_keeps_recording(fake, client, admin, parts):
    slow = asyncio.ensure_future(sql(admin, SLOW, status=400))
    run_id = await one_run(client, fake, parts)  # traffic and the recorder go on while the statement runs
    assert not slow.done()  # the flush above did not wait for the statement
    error = (await slow)["error"]
    assert (error["code"], error["message"]) == (
        "statement_timeout", f"the statement ran longer than {TIMEOUT_S:g} s (admin_sql_timeout_s) and was interrupted")
    answer = await sql(admin, "select status from runs where run_id = ?", [run_id])
    assert answer["rows"] == [["completed"]]


@pytest.mark.parametrize(("body", "code"), [
    (b"not json", "invalid_json"), (b"{}", "missing_required_parameter"),
    (b'{"sql": ""}', "missing_required_parameter"),
    (b'{"sql": "select ?", "params": 3}', "invalid_type"), (b'{"sql": "select * from nowhere"}', "invalid_sql"),
    (b'{"sql": "select ?"}', "invalid_sql"),
])
async def test_bad_requests_get_openai_shaped_errors(admin, body, code):
    response = await admin.post("/admin/sql", data=body, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", code)


async def test_the_token_is_required(admin):
    response = await admin.post("/admin/sql", json={"sql": "select 1"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_admin_token"
    wrong = await admin.post("/admin/sql", json={"sql": "select 1"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
