from __future__ import annotations

import asyncio
import base64
import datetime as dt
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.exchange import StreamBytes
from proxy.record import spill
from proxy.record import writer as writer_module
from proxy.record.migrations import TABLES, fresh_database, migrate
from proxy.record.writer import StoreError, StoreLockedError, Writer, write_batch

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def event(seq: int, request_id: str = "req_1", **extra: object) -> dict[str, object]:
    return {"request_id": request_id, "seq": seq, "event": "thread.message.delta", "data": f'{{"n":{seq}}}',
            "received_at": at(seq), "run_id": "run_1", **extra}  # fmt: skip


def frame(seq: int, data: str | None = None, eol: str = "\n") -> bytes:
    """``event(seq)`` as the upstream framed it: canonical with LF (one ``response_streams`` row per
    segment), not with CRLF (``event_rows`` rows, one per frame: streams.py)."""
    text = f'{{"n":{seq}}}' if data is None else data
    return f"event: thread.message.delta{eol}data: {text}{eol}{eol}".encode()


def frames(seq0: int, n: int, eol: str = "\n") -> list[bytes]:
    return [frame(seq, eol=eol) for seq in range(seq0, seq0 + n)]


def segment(seq0: int, chunks: list[bytes], final: bool = False) -> StreamBytes:
    """A stream's bytes as the tap hands them over (``submit_stream``): chunk i arrived at ``at(seq0 + i)``."""
    return StreamBytes(seq0, chunks, [at(seq0 + i).timestamp() for i in range(len(chunks))], final)


def query(writer: Writer, sql: str) -> list[tuple[object, ...]]:
    cursor = writer.cursor()
    try:
        return cursor.execute(sql).fetchall()
    finally:
        cursor.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "recording.duckdb"


@pytest.fixture
def writer(db_path: Path) -> Iterator[Writer]:
    w = Writer(db_path)
    w.start()
    yield w
    w.close()


@pytest.fixture
def con(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(db_path))
    migrate(connection)
    yield connection
    connection.close()


# -- row semantics ---------------------------------------------------------------------------------


def test_upserts_merge_within_one_batch(con: duckdb.DuckDBPyConnection) -> None:
    write_batch(con, TABLES, [
        ("runs", {"run_id": "run_1", "status": "queued", "model": "gpt-4o", "first_seen_at": at(5)}),
        ("runs", {"run_id": "run_1", "status": "in_progress", "model": None, "first_seen_at": at(9)}),
        ("runs", {"run_id": "run_1", "status": None, "total_tokens": 42, "first_seen_at": at(1)}),
        ("runs", {"run_id": "run_2", "status": "queued"}),
    ])  # fmt: skip
    sql = "select run_id, status, model, total_tokens, first_seen_at from runs order by 1"
    assert con.execute(sql).fetchall() == [
        ("run_1", "in_progress", "gpt-4o", 42, at(1)),
        ("run_2", "queued", None, None, None),
    ]


def test_upserts_merge_with_the_database(con: duckdb.DuckDBPyConnection) -> None:
    write_batch(con, TABLES, [("runs", {
        "run_id": "run_1", "status": "queued", "model": "gpt-4o",
        "first_seen_at": at(5), "last_seen_at": at(5),
    })])  # fmt: skip
    write_batch(con, TABLES, [("runs", {
        "run_id": "run_1", "status": "completed", "model": None, "total_tokens": 7,
        "first_seen_at": at(9), "last_seen_at": at(9),
    })])  # fmt: skip
    # A replayed, older row: later non-NULL values still win, but seen-at bounds only widen.
    write_batch(con, TABLES, [("runs", {
        "run_id": "run_1", "status": "in_progress", "first_seen_at": at(2), "last_seen_at": at(3),
    })])  # fmt: skip
    sql = "select status, model, total_tokens, first_seen_at, last_seen_at from runs"
    assert con.execute(sql).fetchall() == [
        ("in_progress", "gpt-4o", 7, at(2), at(9))
    ]


def test_a_row_with_only_its_key_never_changes_the_row(con: duckdb.DuckDBPyConnection) -> None:
    write_batch(con, TABLES, [("messages", {"message_id": "msg_1", "text": "hi"})])
    write_batch(con, TABLES, [("messages", {"message_id": "msg_1"})])
    assert con.execute("select message_id, text from messages").fetchall() == [("msg_1", "hi")]


def test_events_are_appended_and_a_repeated_key_is_ignored(con: duckdb.DuckDBPyConnection) -> None:
    write_batch(con, TABLES, [("events", event(0)), ("events", event(1)), ("events", event(0, data="dup"))])
    # Across batches only a replay checks the table (live rows never repeat a key).
    write_batch(con, TABLES, [("events", event(1, data="again")), ("events", event(2))], replay=True)
    assert con.execute("select seq, data from events order by seq").fetchall() == [
        (0, '{"n":0}'), (1, '{"n":1}'), (2, '{"n":2}'),
    ]  # fmt: skip


def test_values_are_stored_exactly(con: duckdb.DuckDBPyConnection) -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    write_batch(con, TABLES, [
        ("events", event(0, data="[DONE]", raw=None)),
        ("events", event(1, data="data: {broken \x00 \U0001f600 'quoted'", raw=b"\x00\xff\n",
                         received_at=dt.datetime(2026, 5, 1, 14, 0, tzinfo=plus2))),
        ("requests", {"request_id": "req_1", "streamed": True, "ttfb_ms": 1.25, "status": 200,
                      "request_body": '{"stream": true', "response_bytes": 2**40}),
    ])  # fmt: skip
    assert con.execute("select data, raw, received_at from events order by seq").fetchall() == [
        ("[DONE]", None, at(0)),
        ("data: {broken \x00 \U0001f600 'quoted'", b"\x00\xff\n", T0),
    ]
    assert con.execute(
        "select streamed, ttfb_ms, status, request_body, response_bytes from requests"
    ).fetchall() == [(True, 1.25, 200, '{"stream": true', 2**40)]


@pytest.fixture(scope="module")
def memory_con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = fresh_database()
    yield connection
    connection.close()


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(), min_size=1, max_size=5), blobs=st.lists(st.binary(), min_size=5, max_size=5))
def test_any_text_and_bytes_are_stored_exactly(
    memory_con: duckdb.DuckDBPyConnection, texts: list[str], blobs: list[bytes]
) -> None:
    memory_con.execute("delete from event_rows")
    write_batch(memory_con, TABLES, [("events", event(i, data=t, raw=blobs[i])) for i, t in enumerate(texts)])
    assert memory_con.execute("select data, raw from events order by seq").fetchall() == list(
        zip(texts, blobs, strict=False)
    )


def test_a_large_body_is_stored_exactly(con: duckdb.DuckDBPyConnection) -> None:
    body = '{"content": "' + "\\u00e9\\n\"x\" " * 2_000_000 + '"}'  # ~16 MiB of escapes
    write_batch(con, TABLES, [("requests", {"request_id": "req_1", "request_body": body})])
    assert con.execute("select request_body = ? from requests", [body]).fetchall() == [(True,)]


def test_values_orjson_cannot_encode_take_the_slower_path(con: duckdb.DuckDBPyConnection) -> None:
    write_batch(con, TABLES, [("requests", {"request_id": "req_1", "duration_ms": Decimal("2.5")})])
    assert con.execute("select duration_ms from requests").fetchall() == [(2.5,)]


def test_a_failing_batch_is_rolled_back_entirely(
    con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = writer_module._write_table

    def fail_on_runs(c: duckdb.DuckDBPyConnection, spec: object, *rest: object) -> None:
        if getattr(spec, "name", None) == "runs":
            raise duckdb.IOException("injected")
        real(c, spec, *rest)  # type: ignore[arg-type]  # the real arguments, passed through

    monkeypatch.setattr(writer_module, "_write_table", fail_on_runs)
    with pytest.raises(duckdb.IOException):
        write_batch(con, TABLES, [("events", event(0)), ("runs", {"run_id": "run_1"})])
    assert con.execute("select count(*) from events").fetchall() == [(0,)]
    write_batch(con, TABLES, [("events", event(0))])  # the connection is usable again
    assert con.execute("select count(*) from events").fetchall() == [(1,)]


# -- the writer ------------------------------------------------------------------------------------


async def test_flush_is_a_barrier(writer: Writer) -> None:
    for seq in range(1000):
        writer.submit("events", event(seq))
    writer.submit("runs", {"run_id": "run_1", "status": "completed"})
    await writer.flush()
    assert query(writer, "select count(*) from events") == [(1000,)]
    assert query(writer, "select status from runs") == [("completed",)]
    assert writer.rows_written_total == 1001
    assert (writer.spilled_rows_total, writer.write_errors_total, writer.last_error) == (0, 0, None)
    assert writer.healthy


async def test_upserts_merge_across_batches(writer: Writer) -> None:
    writer.submit("tool_calls", {"tool_call_id": "call_1", "name": "get_weather", "requested_at": at(1)})
    await writer.flush()
    writer.submit("tool_calls", {"tool_call_id": "call_1", "name": None, "output": "ok"})
    writer.submit("tool_calls", {"tool_call_id": "call_1", "submitted_at": at(4)})
    await writer.flush()
    assert query(writer, "select name, output, requested_at, submitted_at from tool_calls") == [
        ("get_weather", "ok", at(1), at(4))
    ]


async def test_a_written_batch_is_not_kept_while_the_writer_waits(writer: Writer) -> None:
    # Issue #3: the thread kept its last batch until the next one came, so after a burst up to
    # batch_max_rows rows (~10 MB) stayed in memory for as long as the proxy was quiet.
    class Row(dict[str, object]):  # a dict that can be watched with a weak reference
        pass

    row = Row(event(0))
    alive = weakref.ref(row)
    writer.submit("events", row)
    del row
    await writer.flush()
    assert query(writer, "select count(*) from events") == [(1,)]
    assert alive() is None


async def test_the_writer_purges_duckdbs_allocator_after_each_batch_it_wrote(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue #3: the pages a batch's statements used go back to the system (proxy/malloc.py).
    purges: list[int] = []
    monkeypatch.setattr(writer_module, "duckdb_purger", lambda: lambda: purges.append(1) or True)
    w = Writer(db_path)
    w.start()
    try:
        await w.flush()  # nothing written: nothing to purge
        assert purges == []
        w.submit("events", event(0))
        await w.flush()
        for _ in range(100):  # the purge follows the barrier, on the writer thread
            if purges:
                break
            await asyncio.sleep(0.01)
        assert purges == [1]
    finally:
        w.close()


async def test_batches_respect_batch_max_rows(db_path: Path) -> None:
    w = Writer(db_path, batch_max_rows=7, batch_interval_s=0.001)
    w.start()
    try:
        for seq in range(50):
            w.submit("events", event(seq))
        await w.flush()
        assert query(w, "select count(*) from events") == [(50,)]
    finally:
        w.close()


async def taken_by_the_thread(w: Writer) -> None:
    """Until the thread has taken what is queued (it then sleeps until the batch is due)."""
    for _ in range(200):
        if w.queue_depth == 0:
            return
        await asyncio.sleep(0.005)


def _voluntary_switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts context switches through /proc (Linux)")
async def test_rows_submitted_while_a_batch_gathers_do_not_wake_the_thread(db_path: Path) -> None:
    # Issue #3: blocked on the queue, the thread was woken by every submit (~2,500 times a second at
    # c=1) and took the GIL from the event loop each time. It now sleeps until the batch is due.
    w = Writer(db_path, batch_interval_s=30)
    w.start()
    try:
        w.submit("events", event(0))  # the batch starts: the thread takes it and sleeps
        await taken_by_the_thread(w)
        assert w._thread is not None
        before = _voluntary_switches(w._thread)
        for seq in range(1, 201):
            w.submit("events", event(seq))
            w.submit_stream("req_2", "run_1", segment(seq, [frame(seq)]))
            await asyncio.sleep(0.0005)  # a turn of the loop
        woken = _voluntary_switches(w._thread) - before
        assert woken < 20, f"the writer thread was woken {woken} times by 400 submits"
        await w.flush()  # a barrier does wake it: the batch is written now, not in 30 s
        assert query(w, "select count(*) from events") == [(401,)]
    finally:
        w.close()


async def test_a_full_batch_is_written_before_its_deadline(db_path: Path) -> None:
    w = Writer(db_path, batch_max_rows=100, batch_interval_s=30)
    w.start()
    try:
        w.submit("events", event(0))  # the thread takes it and sleeps until the 30 s deadline
        await taken_by_the_thread(w)
        for seq in range(1, 150):
            w.submit("events", event(seq))
        for _ in range(500):  # bounded: well under the deadline, however slow the machine
            if w.rows_written_total >= 100:
                break
            await asyncio.sleep(0.01)
        assert w.rows_written_total >= 100
    finally:
        w.close()


async def test_invalid_rows_are_spilled_without_failing_their_batch(writer: Writer) -> None:
    writer.submit("events", event(0))
    writer.submit("nope", {"x": 1})
    writer.submit("runs", {"run_id": "run_1", "colour": "red"})
    writer.submit("runs", {"status": "queued"})
    await writer.flush()
    assert query(writer, "select count(*) from events") == [(1,)]
    assert (writer.rows_written_total, writer.spilled_rows_total, writer.write_errors_total) == (1, 3, 3)
    assert writer.last_error == "runs: key columns ['run_id'] missing or NULL"
    assert len(writer.spill_path.read_bytes().splitlines()) == 3


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """While set, every batch the writer writes fails as on a full disk."""
    failing = threading.Event()
    real = writer_module.write_batch

    def flaky(*args: object, **kwargs: object) -> None:
        if failing.is_set():
            raise duckdb.IOException("injected: disk full")
        real(*args, **kwargs)  # type: ignore[arg-type]  # the real arguments, passed through

    monkeypatch.setattr(writer_module, "write_batch", flaky)
    return failing


async def test_a_write_failure_spills_the_batch_and_the_writer_goes_on(db_path: Path, failing: threading.Event) -> None:
    w = Writer(db_path)
    w.start()
    try:
        w.submit("events", event(0))
        await w.flush()
        failing.set()
        for seq in (1, 2, 3):
            w.submit("events", event(seq))
        w.submit("runs", {"run_id": "run_1", "status": "in_progress", "model": "gpt-4o"})
        await w.flush()
        assert not w.healthy
        assert w.last_error == "IOException: injected: disk full"
        assert (w.spilled_rows_total, w.write_errors_total) == (4, 1)
        failing.clear()
        w.submit("events", event(4))
        w.submit("runs", {"run_id": "run_1", "status": "completed"})
        await w.flush()
        assert w.healthy
        assert query(w, "select seq from events order by seq") == [(0,), (4,)]
        assert w.rows_written_total == 3
    finally:
        w.close()
    assert len(w.spill_path.read_bytes().splitlines()) == 4

    # The next start replays the spill: every row lands once, and the file is archived.
    w2 = Writer(db_path)
    report = w2.start()
    try:
        assert (report.replayed, report.skipped_corrupt, report.pending, report.errors) == (4, 0, 0, [])
        assert query(w2, "select seq from events order by seq") == [(i,) for i in range(5)]
        # The replayed row is older than the one written after it, yet it wins: replay cannot
        # know better. model, which only the spilled row knew, is filled in.
        assert query(w2, "select status, model from runs") == [("in_progress", "gpt-4o")]
        assert not w2.spill_path.exists()
        assert report.archived_to is not None and report.archived_to.exists()
    finally:
        w2.close()


def test_start_replays_a_spill_and_skips_corrupt_lines(db_path: Path) -> None:
    spill_path = Path(f"{db_path}.spill.jsonl")
    spill.append(spill_path, [("events", event(0)), ("events", event(1))])
    with spill_path.open("ab") as f:
        f.write(b'{"table": "events", "row": {"request_id": "req_1", "seq": 2, \n')
    spill.append(spill_path, [("events", event(1)), ("messages", {"message_id": "msg_1", "text": "hi"})])
    w = Writer(db_path)
    report = w.start()
    try:
        assert (report.replayed, report.skipped_corrupt, report.pending) == (4, 1, 0)
        assert report.errors == [report.errors[0]] and report.errors[0].startswith("line 3: skipped")
        assert w.last_error == report.errors[0]
        assert query(w, "select seq from events order by seq") == [(0,), (1,)]
        assert query(w, "select text from messages") == [("hi",)]
    finally:
        w.close()
    again = Writer(db_path)
    assert again.start().replayed == 0  # archived, so not replayed again
    again.close()


def test_start_refuses_a_database_locked_by_another_process(db_path: Path) -> None:
    holder = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); input()"
    with subprocess.Popen(
        [sys.executable, "-c", holder, str(db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            w = Writer(db_path)
            with pytest.raises(StoreLockedError) as info:
                w.start()
            assert str(db_path) in str(info.value)
            assert "Could not set lock" in str(info.value)  # DuckDB's own words
            assert isinstance(info.value, StoreError)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def test_one_named_non_daemon_thread_runs_until_close_which_is_idempotent(db_path: Path) -> None:
    before = set(threading.enumerate())
    w = Writer(db_path)
    w.start()
    (thread,) = set(threading.enumerate()) - before
    # Not a daemon: the interpreter waits for it to drain and commit before exiting.
    assert (thread.name, thread.daemon) == ("runtap-writer", False)
    w.submit("events", event(0))
    w.close()
    w.close()
    assert not thread.is_alive()
    assert not w.healthy
    with pytest.raises(StoreError):
        w.cursor()
    con = duckdb.connect(str(db_path))  # the file is free again
    try:
        assert con.execute("select count(*) from events").fetchall() == [(1,)]
    finally:
        con.close()


async def test_rows_submitted_after_close_are_spilled_not_lost(db_path: Path) -> None:
    w = Writer(db_path)
    w.start()
    w.close()
    w.submit("events", event(0))
    await w.flush()  # nothing to wait for
    assert w.spilled_rows_total == 1
    w2 = Writer(db_path)
    assert w2.start().replayed == 1
    w2.close()


async def test_flush_before_start_says_so(db_path: Path) -> None:
    with pytest.raises(StoreError, match="not running"):
        await Writer(db_path).flush()


def test_start_twice_is_refused(writer: Writer) -> None:
    with pytest.raises(StoreError, match="once"):
        writer.start()


async def test_submit_never_waits_for_the_thread(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # While the thread is stuck in a write, the loop still submits everything (how fast is the
    # benchmark's business: scripts/bench_writer.py), and it all lands once the write returns.
    entered, release = threading.Event(), threading.Event()
    real = writer_module.write_batch

    def stuck(*args: object, **kwargs: object) -> None:
        entered.set()
        assert release.wait(10)
        real(*args, **kwargs)  # type: ignore[arg-type]  # the real arguments, passed through

    monkeypatch.setattr(writer_module, "write_batch", stuck)
    w = Writer(db_path, batch_interval_s=0)
    w.start()
    try:
        w.submit("events", event(0))
        assert await asyncio.to_thread(entered.wait, 10)
        for seq in range(1, 10_000):
            w.submit("events", event(seq))
            w.submit_stream("req_2", "run_1", segment(seq, [frame(seq)]))  # a chunk counts as a row
        assert w.queue_depth == 2 * 9_999  # all queued, none written: submit did not wait
        release.set()
        await w.flush()
        assert query(w, "select count(*) from events") == [(1 + 2 * 9_999,)]
    finally:
        release.set()
        w.close()


async def test_readers_use_their_own_cursor_while_the_thread_writes(writer: Writer) -> None:
    writer.submit("events", event(0))
    await writer.flush()
    def count(cur: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
        return cur.execute("select count(*) from events").fetchall()

    counts = await asyncio.gather(*(writer.run_in_thread(count) for _ in range(4)))
    assert counts == [[(1,)]] * 4


async def test_run_in_thread_is_read_only(writer: Writer) -> None:
    with pytest.raises(duckdb.TransactionException, match="read-only"):
        await writer.run_in_thread(lambda cur: cur.execute("delete from event_rows"))


class CountingInserts:
    """The real connection, counting the INSERT statements it is given."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.inserts = 0

    def execute(self, sql: str, *params: object) -> duckdb.DuckDBPyConnection:
        self.inserts += sql.startswith("insert")
        return self.con.execute(sql, *params)


def test_a_batch_larger_than_one_statement_is_stored_exactly_in_several(con: duckdb.DuckDBPyConnection) -> None:
    # Issue #3: DuckDB's memory for one INSERT grows with its rows, so a table's rows of a batch are
    # written _STATEMENT_ROWS at a time; values on both sides of every boundary arrive intact and in order.
    n = 2 * writer_module._STATEMENT_ROWS + 3
    rows = [event(i, raw=b"\x00\xff" if i % 999 == 0 else None) for i in range(n)]
    counting = CountingInserts(con)
    write_batch(counting, TABLES, [("events", row) for row in rows])  # type: ignore[arg-type]  # duck-typed
    assert counting.inserts == 3
    stored = con.execute("select seq, data, received_at, raw from events order by seq").fetchall()
    assert stored == [(r["seq"], r["data"], r["received_at"], r.get("raw")) for r in rows]


def test_upserts_beyond_one_statement_merge_with_the_database(con: duckdb.DuckDBPyConnection) -> None:
    n = writer_module._STATEMENT_ROWS + 1
    write_batch(con, TABLES, [("runs", {"run_id": f"run_{i}", "status": "queued", "model": "m"}) for i in range(n)])
    write_batch(con, TABLES, [("runs", {"run_id": f"run_{i}", "status": "completed"}) for i in range(n)])
    assert con.execute("select count(*), count(distinct run_id), min(status), max(status), min(model) from runs"
                       ).fetchall() == [(n, n, "completed", "completed", "m")]


def test_the_json_document_is_encoded_in_slices_and_reads_back_whole() -> None:
    # Encoded in slices (the GIL is released between them): values on both sides of every slice
    # boundary must arrive intact and in order.
    values: list[object] = [f"v{i}" if i % 7 else (None if i % 2 else b"\x00\xff") for i in range(
        2 * writer_module._ENCODE_SLICE + 3)]
    document = orjson.loads(writer_module._json_document({"a": values, "b": list(range(len(values)))}))
    assert document == {"a": [base64.b64encode(v).decode() if isinstance(v, bytes) else v for v in values],
                        "b": list(range(len(values)))}


def test_start_closes_the_exchanges_a_killed_process_left_open(db_path: Path) -> None:
    con = duckdb.connect(str(db_path))
    migrate(con)
    write_batch(con, TABLES, [("requests", {"request_id": "rq_killed", "path": "/v1/threads/runs"}),
                              ("requests", {"request_id": "rq_done", "outcome": "completed"})])
    con.close()
    w = Writer(db_path)
    w.start()
    try:
        assert query(w, "select request_id, outcome, error from requests order by request_id") == [
            ("rq_done", "completed", None), ("rq_killed", "truncated", writer_module.ORPHANED)]
    finally:
        w.close()


def test_the_memory_limit_reaches_duckdb(db_path: Path) -> None:
    w = Writer(db_path, memory_limit="64MB")
    w.start()
    try:
        [(limit,)] = query(w, "select current_setting('memory_limit')")
        assert limit == "61.0 MiB"  # 64 MB, as DuckDB reports it (in MiB)
    finally:
        w.close()


# -- streams (submit_stream) ----------------------------------------------------------------------


async def test_a_streams_rows_are_stored_exactly_with_the_other_rows(writer: Writer) -> None:
    writer.submit("requests", {"request_id": "req_1", "started_at": at(0), "method": "POST", "path": "/v1/x"})
    # A malformed frame (no data field) makes its stream event_rows rows, one per frame, with its bytes.
    malformed = b"event: thread.message.delta\n\x00\xff\n\n"
    writer.submit_stream("req_1", "run_1", segment(0, [*frames(0, 3), malformed], final=True))
    writer.submit_stream("req_2", "run_1", segment(0, frames(0, 3), final=True))  # canonical: one row
    assert writer.queue_depth == 8  # a stream counts as its chunks
    await writer.flush()
    assert query(writer, "select seq, data, received_at, run_id, raw from events where request_id = 'req_1'"
                         " order by seq") == [
        (0, '{"n":0}', at(0), "run_1", None), (1, '{"n":1}', at(1), "run_1", None),
        (2, '{"n":2}', at(2), "run_1", None), (3, "", at(3), "run_1", b"event: thread.message.delta\n\x00\xff\n")]
    assert query(writer, "select seq, event, data, received_at, run_id, raw from events where request_id = 'req_2'"
                         " order by seq") == [
        (seq, "thread.message.delta", f'{{"n":{seq}}}', at(seq), "run_1", None) for seq in range(3)]
    assert query(writer, "select request_id, seq0 from response_streams") == [("req_2", 0)]
    assert query(writer, "select count(*) from requests") == [(1,)]
    assert (writer.rows_written_total, writer.queue_depth) == (6, 0)  # 1 + 4 event rows + 1 stream row


async def test_a_streams_events_cross_the_queue_as_one_entry(writer: Writer) -> None:
    writer.submit_stream("req_1", "run_1", segment(0, frames(0, 100)))
    assert writer._queue.qsize() <= 1 and writer.queue_depth in (0, 100)  # one entry (or already taken)
    await writer.flush()
    assert query(writer, "select count(*), min(seq), max(seq) from events") == [(100, 0, 99)]
    assert query(writer, "select count(*) from response_streams") == [(1,)]
    writer.submit_stream("req_1", "run_1", StreamBytes(100, [], [], True))  # an empty last segment: no row
    await writer.flush()
    assert query(writer, "select count(*) from events") == [(100,)]
    assert (writer.rows_written_total, writer.spilled_rows_total, writer.write_errors_total) == (1, 0, 0)


async def test_a_segment_that_cannot_be_framed_is_stored_raw_and_the_writer_goes_on(writer: Writer) -> None:
    bad = StreamBytes(0, [b"event: a\r\ndata: 1\r\n\r\n", b"event: b\r\ndata: 2\r\n\r\n"], [1_796_000_000.0], True)
    writer.submit_stream("req_bad", "run_1", bad)  # times out of step with chunks: no builder makes this
    writer.submit_stream("req_ok", "run_1", segment(0, frames(0, 2)))
    await writer.flush()
    assert query(writer, "select request_id, seq, raw from events where request_id = 'req_bad'") == [
        ("req_bad", 0, b"event: a\r\ndata: 1\r\n\r\nevent: b\r\ndata: 2\r\n\r\n")]
    assert query(writer, "select count(*) from events where request_id = 'req_ok'") == [(2,)]
    assert writer.write_errors_total == 0


async def test_a_stream_after_close_is_spilled_not_lost(db_path: Path) -> None:
    w = Writer(db_path)
    w.start()
    w.close()
    w.submit_stream("req_1", "run_1", segment(0, frames(0, 2)))  # one response_streams row
    w.submit_stream("req_2", "run_1", segment(0, frames(0, 2, eol="\r\n"), final=True))  # two event_rows rows
    assert w.spilled_rows_total == 3
    w2 = Writer(db_path)
    assert w2.start().replayed == 3
    try:
        assert query(w2, "select request_id, seq, data from events order by 1, 2") == [
            ("req_1", 0, '{"n":0}'), ("req_1", 1, '{"n":1}'), ("req_2", 0, '{"n":0}'), ("req_2", 1, '{"n":1}')]
    finally:
        w2.close()


def test_a_stream_submitted_without_a_running_loop_is_queued_at_once(writer: Writer) -> None:
    writer.submit_stream("req_1", "run_1", segment(0, frames(0, 2)))
    assert writer._queued_rows == 2  # queued, not waiting for a turn of a loop there is none of
    writer.close()
    assert (writer.rows_written_total, writer.spilled_rows_total) == (1, 0)


async def test_a_streams_rows_of_a_failed_batch_are_spilled_and_replayed_once(
    db_path: Path, failing: threading.Event
) -> None:
    w = Writer(db_path)
    w.start()
    try:
        failing.set()
        # CRLF framing: three event_rows rows.
        w.submit_stream("req_1", "run_1", segment(0, [frame(seq, f"d{seq}", eol="\r\n") for seq in range(3)]))
        await w.flush()
        assert (w.spilled_rows_total, w.write_errors_total) == (3, 1)
    finally:
        w.close()
    w.submit_stream("req_1", "run_1", segment(3, [frame(3, "after close")], final=True))  # spilled too, never lost
    assert w.spilled_rows_total == 4
    failing.clear()
    w2 = Writer(db_path)
    report = w2.start()
    try:
        assert report.replayed == 4
        assert query(w2, "select seq, data from events order by seq") == [
            (0, "d0"), (1, "d1"), (2, "d2"), (3, "after close")]
    finally:
        w2.close()


async def test_batches_with_streams_respect_batch_max_rows(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = writer_module.write_batch

    def counting(con: object, specs: object, items: list[object], **kwargs: object) -> None:
        sizes.append(len(items) + len(kwargs.get("events", ())))  # type: ignore[arg-type]
        real(con, specs, items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "write_batch", counting)
    w = Writer(db_path, batch_max_rows=10, batch_interval_s=0.001)
    w.start()
    try:
        for n in range(5):  # CRLF framing: each segment is one queue entry of 4 event_rows rows
            w.submit_stream("req_1", "run_1", segment(n * 4, frames(n * 4, 4, eol="\r\n")))
            await asyncio.sleep(0)
        await w.flush()
        assert query(w, "select count(*) from events") == [(20,)]
        # A batch stops once it holds batch_max_rows (an entry is never split: at most 10 + 3).
        assert sum(sizes) == 20 and max(sizes) <= 13
    finally:
        w.close()


async def test_a_stream_submitted_just_before_the_writer_closes_is_written_not_spilled(db_path: Path) -> None:
    w = Writer(db_path)
    w.start()
    w.submit_stream("req_1", "run_1", segment(0, frames(0, 1)))
    w.close()  # the thread drains the queue before it stops
    assert (w.rows_written_total, w.spilled_rows_total) == (1, 0)
    w2 = Writer(db_path)
    w2.start()
    try:
        assert query(w2, "select seq from events") == [(0,)]
    finally:
        w2.close()


# -- the backlog: a queue over max_queue_rows overflows to disk ------------------------------------


def held_writes(monkeypatch: pytest.MonkeyPatch, held: int) -> list[tuple[threading.Event, threading.Event]]:
    """Hold the writer thread inside each of its first ``held`` write_batch calls until that call's
    release is set: one (entered, release) pair per call."""
    gates = [(threading.Event(), threading.Event()) for _ in range(held)]
    real = writer_module.write_batch
    calls = [0]

    def write(*args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] <= held:
            entered, release = gates[calls[0] - 1]
            entered.set()
            assert release.wait(10)
        real(*args, **kwargs)  # type: ignore[arg-type]  # the real arguments, passed through

    monkeypatch.setattr(writer_module, "write_batch", write)
    return gates


async def test_a_queue_over_max_queue_rows_goes_to_disk_and_every_row_lands_once_in_order(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue #3: under a sustained overload the in-memory queue grew without limit (1.3 million rows,
    # 1.07 GB after 30 s at c=32). Past max_queue_rows it moves to <db>.backlog.jsonl.
    (entered, release), (entered_2, release_2) = held_writes(monkeypatch, 2)
    w = Writer(db_path, batch_interval_s=0, batch_max_rows=50, max_queue_rows=100)
    w.start()
    try:
        w.submit("runs", {"run_id": "run_1", "status": "queued"})
        assert await asyncio.to_thread(entered.wait, 10)  # write 1 holds the thread
        w.submit("runs", {"run_id": "run_1", "status": "in_progress"})
        for seq in range(1000):
            w.submit("events", event(seq))
            # One row each: a response_streams row, or (record_content = false) an event_rows row.
            w.submit_stream("req_2", "run_1", segment(seq, [frame(seq)]), record_content=seq % 2 == 0)
        w.submit("runs", {"run_id": "run_1", "status": "completed"})
        release.set()
        assert await asyncio.to_thread(entered_2.wait, 10)  # write 2, the backlog's first batch, holds it
        # Everything queued went to the file: nothing is left in memory, all of it still counted.
        assert w._queued_rows - w._taken_rows == 0
        assert w.backlog_path.stat().st_size > 0
        assert w.queue_depth >= 2001 - 50
        release_2.set()
        await w.flush()
        assert w.backlog_episodes_total == 1
        assert not w.backlog_path.exists()  # consumed, then removed
        assert query(w, "select count(*), count(distinct (request_id, seq)) from events") == [(2000, 2000)]
        assert query(w, "select status from runs") == [("completed",)]  # in order: the last row won
        assert w.rows_written_total == 2003
        assert w.queue_depth == 0
        assert (w.spilled_rows_total, w.lost_rows_total, w.write_errors_total) == (0, 0, 0)
    finally:
        release.set()
        release_2.set()
        w.close()


async def test_flush_in_overflow_waits_for_the_rows_before_it_in_the_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [(entered, release)] = held_writes(monkeypatch, 1)
    w = Writer(db_path, batch_interval_s=0, batch_max_rows=10, max_queue_rows=20)
    w.start()
    try:
        w.submit("events", event(0))
        assert await asyncio.to_thread(entered.wait, 10)
        for seq in range(1, 500):
            w.submit("events", event(seq))
        barrier = asyncio.ensure_future(w.flush())
        await asyncio.sleep(0.05)
        assert not barrier.done()  # the thread is held; nothing before the barrier is committed
        release.set()
        await asyncio.wait_for(barrier, 10)
        assert query(w, "select count(*) from events") == [(500,)]  # resolved only once all 500 are in
    finally:
        release.set()
        w.close()


async def test_close_in_overflow_commits_the_backlog(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(entered, release)] = held_writes(monkeypatch, 1)
    w = Writer(db_path, batch_interval_s=0, batch_max_rows=10, max_queue_rows=20)
    w.start()
    try:
        w.submit("events", event(0))
        assert await asyncio.to_thread(entered.wait, 10)
        for seq in range(1, 300):
            w.submit("events", event(seq))
        release.set()
    finally:
        release.set()
        await asyncio.to_thread(w.close)
    assert w.backlog_episodes_total == 1 and not w.backlog_path.exists()
    with duckdb.connect(str(db_path), read_only=True) as con:
        assert con.execute("select count(*) from events").fetchall() == [(300,)]


def test_start_replays_a_killed_processs_backlog_from_where_it_had_got(db_path: Path) -> None:
    # A process killed in overflow leaves <db>.backlog.jsonl and its .offset: the rows before the
    # offset were committed (here, deliberately not, to show they are not applied twice).
    backlog_path = Path(f"{db_path}.backlog.jsonl")
    committed = b"".join(spill.encode("events", event(seq)) for seq in range(3))
    owed = b"".join(spill.encode("events", event(seq)) for seq in range(3, 8))
    backlog_path.write_bytes(committed + owed)
    Path(f"{backlog_path}.offset").write_text(f"{len(committed)}\n")
    w = Writer(db_path)
    w.start()
    try:
        assert query(w, "select list(seq order by seq) from events") == [([3, 4, 5, 6, 7],)]
        assert not backlog_path.exists() and not Path(f"{backlog_path}.offset").exists()
        assert not w.spill_path.exists()  # the tail went through the spill's replay, then its archive
    finally:
        w.close()


async def test_a_backlog_the_disk_refuses_spills_its_rows_and_flush_still_returns(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [(entered, release)] = held_writes(monkeypatch, 1)

    def disk_full(self: object, items: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module.Backlog, "append", disk_full)
    w = Writer(db_path, batch_interval_s=0, batch_max_rows=10, max_queue_rows=20)
    w.start()
    try:
        w.submit("events", event(0))
        assert await asyncio.to_thread(entered.wait, 10)
        for seq in range(1, 200):
            w.submit("events", event(seq))
        release.set()
        await asyncio.wait_for(w.flush(), 10)
        assert w.spilled_rows_total == 199 and w.lost_rows_total == 0  # counted, recoverable
        assert "backlog" in (w.last_error or "")
    finally:
        release.set()
        w.close()
    assert len(w.spill_path.read_bytes().splitlines()) == 199


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_writer_thread_alone_runs_at_the_configured_nice_value(db_path: Path) -> None:
    # Issue #3: when every core is busy the relay gets them first; the event loop keeps its priority.
    def nice_of(tid: int) -> int:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[16])  # field 19 of proc(5), after pid and comm

    base = nice_of(threading.get_native_id())
    want = min(19, base + 7)  # relative to the process's own value
    w = Writer(db_path, nice=7)
    w.start()
    try:
        assert w._thread is not None
        for _ in range(100):  # the thread sets it as it starts
            if nice_of(w._thread.native_id) == want:
                break
            threading.Event().wait(0.01)
        assert nice_of(w._thread.native_id) == want
        assert nice_of(threading.get_native_id()) == base
    finally:
        w.close()


def test_close_waits_longer_for_a_longer_queue(writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    # After a long overload SIGTERM must wait for the backlog, not exit 3 while the thread writes it
    # (scripts/soak.py at 120 s did, with the recording relay-first). 10 s + 1 s per 20,000 rows.
    assert writer._thread is not None
    waited: list[float | None] = []
    join = writer._thread.join
    monkeypatch.setattr(writer._thread, "join", lambda timeout=None: waited.append(timeout) or join(timeout))
    writer._queued_rows += 400_000  # as if that many rows were still queued (the thread takes none)
    writer.close()
    assert waited == [pytest.approx(30.0)]
