"""Process faults, against `runtap serve` as a real process: SIGTERM while starting and under load past
the grace period, SIGKILL under load (with a full disk, so the spill is in play) and a restart.

SIGTERM under load within the grace period (every stream finishes, new connections refused, exit 0)
is tests/e2e/test_serve_process.py::test_sigterm_under_load_finishes_every_stream_and_refuses_new_connections.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import signal
import time
from pathlib import Path

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from proxy.record import spill
from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.faults import Fault
from proxy.testing.scripts import Script
from tests.conftest import RAW_KEY
from tests.faults.conftest import assert_no_secret_in_db, assert_no_secret_in_files
from tests.faults.proc import connection_refused, file_size, poll
from tests.faults.test_storage import fill_until_refused
from tests.processes import query, url_of

ABORTED = (openai.APIConnectionError, httpx2.RemoteProtocolError, httpx2.ReadError)


def write_big_spill(path: Path, rows: int) -> None:
    t0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    with path.open("wb") as f:
        f.writelines(spill.encode("events", {"request_id": f"rt_{i // 100}", "seq": i % 100, "event": "x",
                                             "data": "{}", "received_at": t0, "run_id": "run_x"})
                     for i in range(rows))


async def test_sigterm_while_starting_exits_and_loses_nothing(serve, fake_server, tmp_path):
    db = tmp_path / "runtap.duckdb"
    rows = 200_000  # seconds of replay: the SIGTERM lands while the writer is still starting
    write_big_spill(Path(f"{db}.spill.jsonl"), rows)
    child = await serve(upstream=url_of(fake_server), wait=False)

    async def admin_up() -> bool:
        try:
            return (await child.get("/readyz"))[0] == 503  # up, and the writer not started yet
        except OSError:
            return False

    assert await poll(admin_up, 20), child.output()
    child.proc.send_signal(signal.SIGTERM)
    assert await child.wait_exit(30) == 0, child.output()  # it used to hang here for good
    again = await serve(upstream=url_of(fake_server))
    assert await again.sql("select count(*), count(distinct (request_id, seq)) from events") == [[rows, rows]]
    again.proc.terminate()
    assert await again.wait_exit() == 0, again.output()


async def test_sigterm_cuts_what_outlives_the_grace_period_records_it_truncated_and_exits_0(
        serve, fake: FakeUpstream, fake_server):
    config = "[server]\nshutdown_grace_s = 1\n\n[recorder]\nbatch_interval_ms = 5\n"
    child = await serve(upstream=url_of(fake_server), config=config)
    fake.enqueue(Script.text("short", chunks=2))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.05))
    fake.enqueue(Script.text("long " * 60, chunks=60))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.1))  # about 7 s of stream
    async with AsyncOpenAI(base_url=child.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:

        async def converse() -> str:
            async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
                await stream.until_done()
                return (await stream.get_final_run()).status

        short = asyncio.create_task(converse())
        assert await poll(lambda: len(fake.responses) == 1 and len(fake.responses[0].writes) >= 2)
        long = asyncio.create_task(converse())
        assert await poll(lambda: len(fake.responses) == 2 and len(fake.responses[1].writes) >= 3)
        child.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await poll(lambda: connection_refused(child.port)), "still accepting after SIGTERM"
        assert await short == "completed"
        with pytest.raises(ABORTED):
            await long  # cut: an abrupt end, never a clean one the SDK would take for complete
    assert await child.wait_exit(10) == 0, child.output()
    assert time.monotonic() - signalled < 1 + 3
    assert "cancelled 1 exchanges still running after the 1 s grace period" in child.output()
    rows = query(child.db, "select outcome, error, event_count from requests order by started_at")
    assert rows[0] == ("completed", None, len(fake.responses[0].events))
    outcome, error, event_count = rows[1]
    assert (outcome, error) == ("truncated", "cancelled (shutdown) mid-response")
    # What was relayed before the cut is recorded, in order, with no gap.
    assert 3 <= event_count <= len(fake.responses[1].events)
    assert query(child.db, "select count(*), max(seq) + 1 from events where request_id = "
                           "(select request_id from requests order by started_at desc limit 1)") == [
        (event_count, event_count)]
    assert query(child.db, "select status from runs order by created_at") == [("completed",), ("in_progress",)]
    assert_no_secret_in_files(child.db.parent)


async def test_sigkill_under_load_with_a_full_disk_then_restart_recovers_all_but_the_last_batch(
        serve, fake: FakeUpstream, fake_server, tmp_path):
    """SIGKILL while streams run and the database refuses writes (so rows are in the WAL *and* the
    spill): the restart starts on the same files, replays the spill, and every event the proxy got
    more than a few batch intervals before the kill is there, exactly once, with no gaps."""
    config = "[server]\nshutdown_grace_s = 10\n\n[recorder]\nbatch_interval_ms = 50\n"
    first = await serve(upstream=url_of(fake_server), config=config)
    first.proc.terminate()
    assert await first.wait_exit() == 0, first.output()
    db = tmp_path / "runtap.duckdb"
    limit = (file_size(db) or 0) + 256 * 1024
    fake.default_script = lambda body: Script.text("word " * 40, chunks=40)
    child = await serve(upstream=url_of(fake_server), config=config, max_file_bytes=limit)
    done_runs = await fill_until_refused(child)
    done = len(fake.responses)

    n = 4
    for _ in range(n):
        fake.enqueue(Script.text("drip " * 60, chunks=60))
        fake.fault(Fault(path="/threads/runs", drip_delay_s=0.05))
    async with AsyncOpenAI(base_url=child.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:

        async def converse() -> None:
            async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
                await stream.until_done()

        tasks = [asyncio.create_task(converse()) for _ in range(n)]
        live = lambda: fake.responses[done:]  # noqa: E731
        assert await poll(lambda: len(live()) == n and all(len(r.events) >= 5 for r in live()))
        snapshot = [len(r.events) for r in live()]
        # Wait well past the batch interval (50 ms): everything in the snapshot must be on disk.
        assert await poll(lambda: all(len(r.events) >= s + 12 for r, s in zip(live(), snapshot, strict=True)))
        child.proc.send_signal(signal.SIGKILL)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ABORTED) for r in results), results
    assert await child.wait_exit() == -signal.SIGKILL
    assert (file_size(Path(f"{db}.spill.jsonl")) or 0) > 0

    again = await serve(upstream=url_of(fake_server), config=config)  # starts on the same files
    assert "spill replay" in again.output()
    # Consistent: no duplicate, no gap in any request's events.
    assert await again.sql("select count(*) from (select request_id from events group by request_id "
                           "having count(*) <> max(seq) + 1 or count(*) <> count(distinct seq))") == [[0]]
    # The runs that finished before the kill are all there, completely.
    finished = fake.responses[:done]
    assert await again.sql("select count(*) from events where request_id in (select request_id from requests "
                           "where outcome = 'completed')") == [[sum(len(r.events) for r in finished)]]
    assert await again.sql("select count(*) from runs where status = 'completed'") == [[len(done_runs)]]
    # The killed streams: their request rows exist, are closed as truncated by the restart, and
    # have their events up to the snapshot.
    assert await again.sql("select count(*) from requests where outcome is null") == [[0]]
    by_run = {run_id: count for run_id, count in await again.sql(
        "select e.run_id, count(*) from events e join requests r using (request_id) where r.outcome = 'truncated' "
        "and r.error like 'the proxy stopped before the exchange ended%' group by all")}
    assert len(by_run) == n, by_run
    for sent, least in zip(live(), snapshot, strict=True):
        run_id = re.search(rb'"id":"(run_[^"]+)"', sent.body)[1].decode()  # type: ignore[index]
        assert least <= by_run[run_id] <= len(sent.events), (run_id, least, by_run[run_id], len(sent.events))
    # And it records again.
    async with AsyncOpenAI(base_url=again.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:
        run = await client.beta.threads.create_and_run_poll(assistant_id="asst_abc", poll_interval_ms=1)
    assert run.status == "completed"
    again.proc.terminate()
    assert await again.wait_exit() == 0, again.output()
    assert query(db, f"select status from runs where run_id = '{run.id}'") == [("completed",)]
    assert_no_secret_in_files(tmp_path)
    assert_no_secret_in_db(db)
