"""Storage faults, against `runtap serve` as a real process on a real DuckDB file.

- the database is held by another process at start: a clear error and exit code 3;
- the disk fills up mid-traffic (the child's files may not grow past a limit, so DuckDB's WAL
  writes fail with "File too large"): clients notice nothing, refused batches go to the spill
  file, the next start replays them: every event recorded exactly once;
- a corrupt spill line is skipped and reported, the rest replayed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

from openai import AsyncOpenAI

from proxy.record import spill
from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.scripts import Script
from tests.conftest import KEY_ID, RAW_KEY
from tests.faults.conftest import assert_no_secret_in_db, assert_no_secret_in_files, assert_no_secret_in_text
from tests.faults.proc import START_S, Child, connection_refused, file_size
from tests.processes import query, url_of

CONFIG = "[server]\nshutdown_grace_s = 10\n\n[recorder]\nbatch_interval_ms = 5\n"


async def stream_runs(child: Child, n: int, words: int = 30) -> list[str]:
    """`n` streamed runs one after another through the SDK; each must end completed."""
    run_ids = []
    async with AsyncOpenAI(base_url=child.url + "/v1", api_key=RAW_KEY, max_retries=0) as client:
        for _ in range(n):
            async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
                await stream.until_done()
                run = await stream.get_final_run()
            assert run.status == "completed"
            run_ids.append(run.id)
    return run_ids


async def test_a_database_held_by_another_process_exits_3_with_a_clear_error(serve, fake_server, tmp_path):
    db = tmp_path / "runtap.duckdb"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.read()", str(db), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and await holder.stdout.readline() == b"held\n"
        child = await serve(upstream=url_of(fake_server), config=CONFIG, wait=False)
        assert await child.wait_exit(START_S) == 3, child.output()
        stderr = child.err.read_text()
        assert stderr.strip().splitlines()[-1].startswith(f"runtap: {db} is locked by another process")
        assert "Traceback" not in stderr
        assert file_size(Path(f"{db}.admin-token")) is None  # the token file is written only once the db is ours
        assert await connection_refused(child.port) and await connection_refused(child.admin_port)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        await holder.wait()
    # Once the other process is gone, runtap starts on the same file.
    child = await serve(upstream=url_of(fake_server), config=CONFIG)
    await stream_runs(child, 1)
    child.proc.terminate()
    assert await child.wait_exit() == 0, child.output()
    assert query(db, "select count(*) from runs") == [(1,)]


async def fill_until_refused(child: Child, max_runs: int = 300) -> list[str]:
    """Stream runs until the database refuses a batch (/readyz turns 503), then a few more."""
    run_ids: list[str] = []
    while len(run_ids) < max_runs:
        run_ids += await stream_runs(child, 5)
        status, body = await child.get("/readyz")
        if status == 503:
            assert "File too large" in body, body
            return run_ids + await stream_runs(child, 5)
    raise AssertionError(f"the database never refused a write in {max_runs} runs:\n{child.output()}")


async def test_a_full_disk_spills_and_the_next_start_replays_everything_once(serve, fake: FakeUpstream,
                                                                             fake_server, tmp_path):
    fake.default_script = lambda body: Script.text("word " * 40, chunks=40)
    first = await serve(upstream=url_of(fake_server), config=CONFIG)
    first.proc.terminate()
    assert await first.wait_exit() == 0, first.output()
    db = tmp_path / "runtap.duckdb"
    # From here the database file and its WAL may grow by 256 KiB at most.
    limit = db.stat().st_size + 256 * 1024
    full = await serve(upstream=url_of(fake_server), config=CONFIG, max_file_bytes=limit)
    run_ids = await fill_until_refused(full)  # every client stream completed normally
    _, metrics = await full.get("/metrics")
    spilled = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("runtap_recorder_spilled_rows_total"))
    assert spilled > 0
    assert "runtap_recorder_lost_rows_total 0.0" in metrics
    assert_no_secret_in_text(metrics, "the metrics")
    full.proc.terminate()
    assert await full.wait_exit() == 0, full.output()
    spill_file = Path(f"{db}.spill.jsonl")
    assert (file_size(spill_file) or 0) > 0

    again = await serve(upstream=url_of(fake_server), config=CONFIG)
    assert "spill replay" in again.output() and "skipped_corrupt=0" in again.output()
    sent_events = sum(len(r.events) for r in fake.responses)
    assert await again.sql("select count(*), count(distinct (request_id, seq)) from events") == [
        [sent_events, sent_events]]
    rows = await again.sql("select status, count(*), count(distinct run_id), min(key_id) from runs group by all")
    assert rows == [["completed", len(run_ids), len(run_ids), KEY_ID]]
    assert await again.sql("select outcome, count(*) from requests group by all") == [["completed", len(run_ids)]]
    assert await again.sql("select count(*) from messages where text = repeat('word ', 40)") == [[len(run_ids)]]
    again.proc.terminate()
    assert await again.wait_exit() == 0, again.output()
    assert file_size(spill_file) is None
    assert [p.name for p in tmp_path.glob("runtap.duckdb.spill.jsonl.replayed-*")]
    assert_no_secret_in_files(tmp_path)
    assert_no_secret_in_db(db)


def spilled_run(request_id: str, run_id: str, events: int) -> list[bytes]:
    """The spill lines a short streamed run leaves when every batch of it was refused."""
    t0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    lines = [spill.encode("requests", {"request_id": request_id, "started_at": t0, "method": "POST",
                                       "path": "/v1/threads/runs", "route": "POST /v1/threads/runs",
                                       "key_id": KEY_ID})]
    lines += [spill.encode("events", {"request_id": request_id, "seq": i, "event": "thread.message.delta",
                                      "data": "{}", "received_at": t0, "run_id": run_id}) for i in range(events)]
    lines += [spill.encode("runs", {"run_id": run_id, "status": "completed", "total_tokens": 42, "key_id": KEY_ID}),
              spill.encode("requests", {"request_id": request_id, "status": 200, "outcome": "completed",
                                        "run_id": run_id, "event_count": events})]
    return lines


def write_spill(path: Path, data: bytes) -> None:
    path.write_bytes(data)


async def test_a_corrupt_spill_line_is_skipped_and_reported_and_the_rest_replayed(serve, fake_server, tmp_path):
    db = tmp_path / "runtap.duckdb"
    spill_file = Path(f"{db}.spill.jsonl")
    a, b = spilled_run("rt_a", "run_a", 3), spilled_run("rt_b", "run_b", 4)
    corrupt = b'{"table": "events", "row": {"request_id": "rt_a", "seq": 99, "eve\n'
    torn = b'{"table": "runs", "row": {"run_id": "run_c", "sta'  # a crash mid-append: no newline
    write_spill(spill_file, b"".join(a[:2]) + corrupt + b"".join(a[2:]) + b"not json at all\n" + b"".join(b) + torn)

    child = await serve(upstream=url_of(fake_server), config=CONFIG)
    out = child.output()
    assert "skipped_corrupt=3" in out and f"replayed={len(a) + len(b)}" in out
    assert "line 3: skipped: invalid JSON" in out  # reported with its line number
    assert await child.sql("select request_id, count(*) from events group by all order by 1") == [
        ["rt_a", 3], ["rt_b", 4]]
    assert await child.sql("select run_id, status, total_tokens from runs order by 1") == [
        ["run_a", "completed", 42], ["run_b", "completed", 42]]
    status, _ = await child.get("/readyz")
    assert status == 200  # the writer is healthy: a bad line in an old spill does not stop recording
    child.proc.terminate()
    assert await child.wait_exit() == 0, child.output()
    [archived] = tmp_path.glob("runtap.duckdb.spill.jsonl.replayed-*")
    assert corrupt in archived.read_bytes() and torn in archived.read_bytes()  # evidence kept
    assert file_size(spill_file) is None  # nothing owed: a second start replays nothing again
