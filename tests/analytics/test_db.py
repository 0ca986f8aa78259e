"""Both read paths (the cold file, the running proxy), the read-only check, and the value encoding."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path

import aiohttp
import duckdb
import pytest

from analytics.db import (
    AdminRecording,
    FileRecording,
    QueryError,
    RecordingError,
    SqlRefused,
    check_read_only,
    jsonable,
    open_recording,
)
from proxy.record.migrations import fresh_database
from tests.analytics.conftest import ADMIN_TOKEN
from tests.analytics.workload import KEYS, fake_upstream, plan, visit_once

COUNTS = "select (select count(*) from runs), (select count(*) from tool_calls), (select count(*) from run_steps)"


@pytest.fixture
def con():
    connection = fresh_database()
    yield connection
    connection.close()


@pytest.mark.parametrize("sql", [
    "select 1", "SELECT * FROM runs", "with t as (select 1) select * from t", "from runs", "values (1)",
    "table runs", "describe runs", "show tables", "summarize runs", "explain select 1", "EXPLAIN ANALYZE select 1",
    "select * from duckdb_tables()", "select * from runs -- a comment\n", "select 1;",
])
def test_read_statements_pass_the_check(con, sql):
    check_read_only(con, sql)


@pytest.mark.parametrize(("sql", "message"), [
    ("insert into runs (run_id) values ('x')", "INSERT statements are refused: only read statements run here"),
    ("update extensions", "only read statements run here"),
    ("explain update runs set status = 'x'", "UPDATE statements are refused"),
    ("explain /* sneaky */ delete from runs", "DELETE statements are refused"),
    ("", "give exactly one statement, not 0"),
    ("select 1; select 2", "give exactly one statement, not 2"),
    ("select * from read_ndjson_objects('x')", "read_ndjson_objects reads files"),
    ("select * from sqlite_scan('x.db', 't')", "sqlite_scan reads files"),
    ("select * from runs join 'x.parquet' using (run_id)", "'x.parquet' reads files"),
    ("select * from READ_CSV('x')", "read_csv reads files"),
])
def test_everything_else_is_refused_with_a_reason(con, sql, message):
    with pytest.raises(SqlRefused, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        check_read_only(con, sql)
    assert refused.value.code == "read_only"


def test_a_syntax_error_is_a_query_error_not_a_refusal(con):
    with pytest.raises(QueryError) as failed:
        check_read_only(con, "selec 1")
    assert failed.value.code == "invalid_sql" and "syntax error" in str(failed.value)


def test_values_are_encoded_as_json_the_same_on_both_paths():
    moment = datetime(2026, 11, 16, 8, 2, 0, 123456, tzinfo=UTC)
    assert jsonable(moment) == "2026-11-16T08:02:00.123456+00:00"
    assert jsonable(date(2026, 11, 16)) == "2026-11-16" and jsonable(clock_time(8, 2)) == "08:02:00"
    assert jsonable(timedelta(seconds=90, milliseconds=500)) == 90.5
    assert (jsonable(Decimal("1.50")), jsonable(Decimal("12"))) == (1.5, 12)
    assert jsonable(b"\xaa\x00") == "qgA="
    assert (jsonable(float("nan")), jsonable(float("inf")), jsonable(2.5)) == ("nan", "inf", 2.5)
    assert jsonable({"a": [moment, None, True]}) == {"a": ["2026-11-16T08:02:00.123456+00:00", None, True]}
    assert jsonable(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert jsonable(10**30) == 10**30


def test_a_cold_file_is_read_directly_and_read_only(sample_db):
    rec = open_recording(str(sample_db), "http://127.0.0.1:9")  # nothing listens there: the file must do
    try:
        assert isinstance(rec, FileRecording)
        assert rec.query(COUNTS).rows == [[len(plan()), 29, 40]]
        assert rec.query("select value from duckdb_settings() where name in ('access_mode', 'enable_external_access')"
                         " order by name").rows == [["read_only"], ["false"]]
        with pytest.raises(SqlRefused):
            rec.query("delete from runs")
    finally:
        rec.close()


async def test_a_file_held_by_the_running_proxy_is_read_through_its_admin_listener(live, admin, proxy, sample_db):
    await asyncio.to_thread(write_token_file, live)
    rec = await asyncio.to_thread(open_recording, str(live), admin, {})
    assert isinstance(rec, AdminRecording)
    through_proxy = await asyncio.to_thread(rec.query, COUNTS)
    refused = await asyncio.to_thread(_error, rec, "drop table runs")
    await proxy.close()
    cold = open_recording(str(live), admin, {})
    assert isinstance(cold, FileRecording)
    try:
        assert through_proxy.rows == cold.query(COUNTS).rows == [[len(plan()), 29, 40]]
    finally:
        cold.close()
    assert isinstance(refused, SqlRefused) and str(refused).startswith("DROP statements are refused")


def write_token_file(db: Path) -> None:
    Path(f"{db}.admin-token").write_text(ADMIN_TOKEN + "\n")  # what `runtap serve` writes (proxy/admin/listener.py)


def _error(rec, sql: str) -> Exception | None:
    try:
        rec.query(sql)
    except Exception as exc:
        return exc
    return None


async def test_a_held_file_without_a_token_says_how_to_get_one(live):
    with pytest.raises(RecordingError, match=f"{live} is held by a running proxy; to read it through the proxy set"
                                             " RUNTAP_ADMIN_TOKEN"):
        await asyncio.to_thread(open_recording, str(live), "http://127.0.0.1:9", {})


async def test_admin_errors_are_reported_as_such(live, admin):
    wrong = AdminRecording(admin, "not-the-token")
    with pytest.raises(RecordingError, match="the proxy refused the admin token"):
        await asyncio.to_thread(wrong.query, "select 1")
    bad = await asyncio.to_thread(_error, AdminRecording(admin, ADMIN_TOKEN), "select * from nowhere")
    assert isinstance(bad, QueryError) and bad.code == "invalid_sql" and "nowhere" in str(bad)
    down = await asyncio.to_thread(_error, AdminRecording("http://127.0.0.1:9", ADMIN_TOKEN), "select 1")
    assert isinstance(down, RecordingError) and "does not answer" in str(down)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(RecordingError, match="no recording at"):
        open_recording(str(tmp_path / "absent.duckdb"))
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database" * 1000)
    with pytest.raises(RecordingError, match="cannot open"):
        open_recording(str(junk))


# -- a real `runtap serve` process: DuckDB's file lock, the token file --------------------------------


async def poll(check, deadline_s: float = 20.0):
    """Await ``check()`` until it returns something truthy, or fail at the deadline (no fixed waits)."""
    deadline = time.monotonic() + deadline_s
    while not (result := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{check.__name__} still false after {deadline_s} s")
        await asyncio.sleep(0.05)
    return result


def serve(db: Path, upstream: str, port: int, admin_port: int) -> subprocess.Popen[bytes]:
    """`python -m proxy` (what `runtap serve` runs) as its own process, on loopback ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTAP_", "OTEL_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
         "--admin-listen", f"127.0.0.1:{admin_port}", "--db", str(db)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_a_real_proxy_process_holds_the_lock_and_answers_for_the_file(aiohttp_server, tmp_path,
                                                                            unused_tcp_port_factory):
    from openai import AsyncOpenAI

    fake, clock = fake_upstream()
    upstream = await aiohttp_server(fake.app)
    db, port, admin_port = tmp_path / "live.duckdb", unused_tcp_port_factory(), unused_tcp_port_factory()
    proc = serve(db, str(upstream.make_url("")).rstrip("/"), port, admin_port)
    admin_url = f"http://127.0.0.1:{admin_port}"

    async def ready() -> bool:
        assert proc.poll() is None, "runtap serve exited while starting"
        try:
            async with aiohttp.ClientSession() as session, session.get(admin_url + "/readyz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    try:
        await poll(ready)
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEYS["support"],
                               max_retries=0) as client:
            for visit in plan()[:3]:
                await visit_once(client, fake, clock, visit)
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(db), read_only=True)  # what the proxy's lock does to any other process
        rec = await asyncio.to_thread(open_recording, str(db), admin_url, {})  # token from <db>.admin-token
        assert isinstance(rec, AdminRecording)

        async def committed() -> list[list[object]] | None:
            rows = (await asyncio.to_thread(rec.query, COUNTS)).rows  # at most batch_interval_ms away
            return rows if rows == [[3, 2, 4]] else None

        live_rows = await poll(committed)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0
    cold = open_recording(str(db), admin_url, {})
    try:
        assert isinstance(cold, FileRecording) and cold.query(COUNTS).rows == live_rows
    finally:
        cold.close()
