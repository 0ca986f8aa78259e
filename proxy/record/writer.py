"""The one owner of the recording's read-write DuckDB connection: a thread, a queue, batches.

Why a thread (datasette's ``_execute_writes``): DuckDB calls block, and nothing on the event loop
may block; a DuckDB connection is not thread-safe, so exactly one thread writes, and other threads
read through their own ``cursor()``. DuckDB "is optimized for bulk operations", so the thread takes
whatever is queued (up to ``batch_max_rows``, waiting at most ``batch_interval_s`` for more) and
writes it in ONE transaction, one ``INSERT ... SELECT`` per table (per ``_STATEMENT_ROWS`` rows of
it) whose rows cross into DuckDB as a single JSON document of columns (``_select`` says why).
Measured here (2 cores, 600-byte event rows, events with their primary key), inserts alone:
per-row ``executemany`` ~1,400 rows/s, a multi-row ``VALUES`` ~6,000, one list parameter per
column (``unnest(?)``) 35-57,000 but ~10 us/row under the GIL, the JSON document 45-64,000 with
~1 us/row under the GIL. End to end through ``submit()`` and ``flush()``
(``scripts/bench_writer.py``): ~57,000 rows/s; at 20,000 rows/s the queue stays under ~6,000 rows
(about one batch).

Failure policy: a batch the database refuses is rolled back and appended to the spill file
(``spill.py``), counted, and the thread goes on with the next batch; ``start()`` replays the spill.
A row is never dropped silently: if even the spill cannot be written, the loss is logged and counted
in ``lost_rows_total``. A caveat of replay: a spilled upsert row is applied after rows that were
written later, so its non-NULL values win (except the seen-at bounds); statuses may step back until
the run's next row. Events are unaffected.

Overload: at most ``max_queue_rows`` rows wait in memory; past that the queue overflows to a file
and is committed from it in order (``backlog.py``). The thread runs ``nice`` steps below the relay
(``_lower_priority``), so on a saturated machine the relay gets the cores first.

Row semantics, per table mode (``migrations.TableSpec``):

- ``upsert``: rows with the same key merge. A later non-NULL value wins, a NULL never erases a known
  value, ``first_seen_at``/``last_seen_at`` keep the earliest/latest (``MERGE_RULES``). Rows are
  merged in Python first, because ``ON CONFLICT DO UPDATE`` cannot touch one row twice in one
  statement, then against the table with ``COALESCE(excluded.c, t.c)``.
- ``append`` (events): inserted; a key repeated within a batch is dropped, and a spill replay skips
  keys already stored (``write_batch(replay=True)``), which makes replay idempotent. The key is not a
  database constraint: its index cost a third of the writer's time per event.

Streams: ``submit_stream()`` queues a stream's bytes as ONE entry (``_Stream``); the thread makes
them rows (``streams.py``): a ``response_streams`` row, or ``event_rows`` rows as plain tuples
(``EVENT_COLUMNS``), which it turns into columns with ``zip`` and writes without per-row validation
(``streams.py`` builds them, all of them live: no key repeats).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import duckdb
import orjson

from proxy.errors import RuntapError
from proxy.exchange import StreamBytes
from proxy.malloc import duckdb_purger
from proxy.record import backlog as backlog_file
from proxy.record import spill
from proxy.record.backlog import Backlog
from proxy.record.migrations import MERGE_RULES, TableSpec, migrate, table_specs
from proxy.record.spill import Item, ReplayReport, Row
from proxy.record.streams import stream_rows

__all__ = ["ReplayReport", "StoreError", "StoreLockedError", "Writer", "write_batch"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(RuntapError):
    """The recording database cannot be used (opened, migrated, or the writer is not running)."""


class StoreLockedError(StoreError):
    """Another process holds the database file: DuckDB allows one read-write process per file."""


_SHUTDOWN = object()
_BACKLOG_READ_ROWS = 5000
"""Rows committed per step from the backlog file. Decoding holds the GIL (~5 us a row, ~25 ms a
step) and the queue is moved to the file between steps; 20,000-row steps made the relay's p99 in
a long overload 217 ms against 67-90 ms with 2,000 or 5,000 (README, Memory)."""
EVENT_COLUMNS = ("request_id", "seq", "event", "data", "received_at", "run_id", "raw", "sequence_number")
"""The values of an event row (``streams.stream_rows``), in order: the ``events`` table's columns."""
EventRow = tuple[object, ...]


@dataclass(slots=True)
class _Stream:
    """A stream's bytes in the queue (``submit_stream``): made rows by the thread, off the loop."""

    request_id: str
    run_id: str | None
    segment: StreamBytes
    record_content: bool

    @property
    def weight(self) -> int:
        """What it counts for in queue_depth: its chunks, about its events."""
        return len(self.segment.chunks)

    def items(self) -> tuple[list[Item], list[EventRow]]:
        """Its rows for a batch: rows like any other, and event rows as tuples. Never raises: this
        runs in the writer's thread, which a bad segment must not stop."""
        segment = self.segment
        try:
            row, events = stream_rows(self.request_id, self.run_id, segment, record_content=self.record_content)
        except Exception:
            # Not a segment the tap builds (chunks and times out of step, a chunk not bytes): kept
            # as one malformed event holding every byte, so nothing is lost.
            log.exception("stream segment of %s could not be framed; stored raw", self.request_id)
            body = b"".join(c for c in segment.chunks if isinstance(c, bytes))
            at = datetime.fromtimestamp(segment.arrived[-1] if segment.arrived else time.time(), UTC)
            raw = body if self.record_content else None
            return [], [(self.request_id, segment.seq0, None, "", at, self.run_id, raw, None)]
        return ([("response_streams", row)] if row is not None else []), events

    def rows(self) -> list[Item]:
        """Its rows as rows like any other (for the spill and the backlog file)."""
        items, events = self.items()
        return items + [_event_item(e) for e in events]


@dataclass(slots=True)
class _Flush:
    """A barrier in the queue: resolved once every row queued before it is committed or spilled."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    def resolve(self) -> None:
        # RuntimeError: the loop closed while waiting, and there is nobody left to tell.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_set_done, self.future)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have been cancelled
        future.set_result(None)


class Writer:
    """Records rows into DuckDB from one thread. ``submit()`` and ``submit_stream()`` are the event
    loop's two lanes in.

    Lifecycle: ``start()`` (connect, migrate, replay the spill, start the thread), then ``submit()``,
    ``submit_stream()`` and ``await flush()`` from the loop, then ``close()``. Reads go through ``cursor()``.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        spill_path: Path | None = None,
        batch_max_rows: int = 20_000,
        batch_interval_s: float = 0.25,
        memory_limit: str | None = None,
        max_queue_rows: int = 250_000,
        nice: int = 0,
    ) -> None:
        if batch_max_rows < 1 or batch_interval_s < 0 or max_queue_rows < 1:
            raise ValueError("batch_max_rows and max_queue_rows must be >= 1 and batch_interval_s >= 0")
        self.db_path = Path(db_path)
        self.spill_path = spill_path if spill_path is not None else Path(f"{self.db_path}.spill.jsonl")
        self.backlog_path = Path(f"{self.db_path}.backlog.jsonl")
        self._max_queue_rows = max_queue_rows
        self._nice = nice
        self._backlog: Backlog | None = None
        """Set while the queue overflows to disk (``backlog.py``); the thread's alone."""
        self._backlog_barriers: list[tuple[int, _Flush]] = []
        """flush() barriers taken in overflow, each with the backlog offset it waits for."""
        self.backlog_episodes_total = 0
        """Times the queue went over max_queue_rows and overflowed to the backlog file."""
        self._batch_max_rows = batch_max_rows
        self._batch_interval_s = batch_interval_s
        self._memory_limit = memory_limit
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._urgent = threading.Event()
        """Set when the batch being gathered must be written now: a flush barrier or the shutdown was
        queued, or batch_max_rows are waiting. The thread waits on it, not on the queue, while it
        gathers: see ``_collect``."""
        # Rows queued minus rows taken, each counter written by one thread only (no lost updates).
        self._queued_rows = 0
        self._taken_rows = 0
        # The parent connection only makes cursors (under a lock); the thread writes through its own.
        self._con: duckdb.DuckDBPyConnection | None = None
        self._write_con: duckdb.DuckDBPyConnection | None = None
        self._cursor_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._specs: dict[str, TableSpec] = {}
        self._purge: Callable[[], bool] | None = None
        self._closed = False
        self._last_batch_ok = True
        self.rows_written_total = 0
        """Rows (as submitted, before merging) committed to the database."""
        self.spilled_rows_total = 0
        """Rows appended to the spill file instead."""
        self.write_errors_total = 0
        """Batches the database refused, plus rows refused as invalid (unknown table/column, no key)."""
        self.lost_rows_total = 0
        """Rows that neither the database nor the spill file took (logged as errors)."""
        self.last_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ReplayReport:
        """Open the database, migrate it, replay the spill file, start the thread. Blocks."""
        if self._thread is not None or self._closed:
            raise StoreError("Writer.start() may be called once, before close()")
        self._con = _connect(self.db_path, self._memory_limit)
        try:
            self._write_con = self._con.cursor()
            # Naive datetimes (which the recorder should not send) then mean UTC, not local time.
            self._write_con.execute("set TimeZone = 'UTC'")
            migrate(self._write_con)
            self._specs = table_specs(self._write_con)
            # An earlier process killed while its queue overflowed: what it had not committed from
            # its backlog joins the spill, replayed now like any spilled row.
            backlog_file.move_to_spill(self.backlog_path, self.spill_path)
            report = spill.replay(self.spill_path, self._replay_batch, tables=self._specs)
            orphans = close_orphaned_exchanges(self._write_con)
        except Exception as exc:  # duckdb, the file system, or a migration's own error
            self._con.close()
            self._con = self._write_con = None
            raise StoreError(f"cannot prepare {self.db_path}: {exc}") from exc
        if report.errors:
            self.last_error = report.errors[0]
        if orphans:
            log.warning("%d exchanges of an earlier process never ended (it was killed): recorded as truncated",
                        orphans)
        self._purge = duckdb_purger()
        self._thread = threading.Thread(target=self._run, name="runtap-writer", daemon=False)
        self._thread.start()
        return report

    def close(self, timeout: float | None = None) -> None:
        """Drain the queue, commit, close the connection, join the thread. Idempotent. Blocks.

        ``timeout``: by default 10 s plus a second per 20,000 rows still queued (the slowest path,
        the backlog file, commits ~50,000 a second): after a long overload SIGTERM waits for the
        backlog rather than exiting with an error while the thread is still writing it."""
        if self._closed:
            return
        if timeout is None:
            timeout = 10 + self.queue_depth / 20_000
        self._closed = True
        if self._thread is not None:
            self._queue.put_nowait(_SHUTDOWN)
            self._urgent.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise StoreError(f"writer thread still draining after {timeout}s ({self.queue_depth} queued)")
        self._drain_leftovers()
        with self._cursor_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- the event loop's side -------------------------------------------------------------------

    def submit(self, table: str, row: Row) -> None:
        """Queue one row. Never blocks, never touches DuckDB. Do not mutate ``row`` afterwards."""
        if self._closed:
            # Too late for the thread; losing the row is worse than one small file append.
            self._spill([(table, row)])
            return
        self._queued_rows += 1
        self._queue.put_nowait((table, row))
        if self._queued_rows - self._taken_rows >= self._batch_max_rows and not self._urgent.is_set():
            self._urgent.set()  # a full batch is written now, not at its deadline

    def submit_stream(self, request_id: str, run_id: str | None, segment: StreamBytes, *,
                      record_content: bool = True) -> None:
        """Queue a stream's bytes (``exchange.StreamBytes``); the thread makes its rows
        (``streams.py``). Never blocks; the loop does nothing per event."""
        entry = _Stream(request_id, run_id, segment, record_content)
        if self._closed:
            # Too late for the thread, as in submit().
            self._spill(entry.rows())
            return
        self._queued_rows += entry.weight
        self._queue.put_nowait(entry)
        if self._queued_rows - self._taken_rows >= self._batch_max_rows and not self._urgent.is_set():
            self._urgent.set()

    async def flush(self) -> None:
        """Resolve once every row submitted before this call is committed or spilled."""
        if self._closed:
            return  # close() drained everything
        if self._thread is None or not self._thread.is_alive():
            raise StoreError("the writer thread is not running (start() not called, or it died)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put_nowait(_Flush(loop, future))
        self._urgent.set()
        await future

    # -- readers ---------------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the same database for another thread. The caller closes it."""
        with self._cursor_lock:
            if self._con is None:
                raise StoreError("the writer is not started, or closed")
            return self._con.cursor()

    async def run_in_thread(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` in a read-only transaction on the default executor, off the loop."""

        def call() -> T:
            cur = self.cursor()
            try:
                cur.execute("begin transaction read only")
                return fn(cur)
            finally:
                cur.close()

        return await asyncio.get_running_loop().run_in_executor(None, call)

    # -- health ----------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Rows submitted and not yet taken by the thread (those in the backlog file included while
        the queue overflows; a stream counts its chunks); approximate. The thread takes a
        batch's rows when the batch is due, so a writer that keeps up saws between 0 and about one
        batch interval of rows."""
        backlog = self._backlog
        return self._queued_rows - self._taken_rows + (backlog.rows if backlog else 0)

    @property
    def healthy(self) -> bool:
        """Running, and the last batch reached the database (not the spill)."""
        running = self._thread is not None and self._thread.is_alive() and not self._closed
        return running and self._last_batch_ok

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        if self._nice:
            _lower_priority(self._nice)
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not strand flush() waiters or rows
            self.last_error = f"writer thread died: {exc!r}"
            log.critical("runtap writer thread died", exc_info=True)
        finally:
            self._drain_leftovers()
            if self._backlog is not None:  # the thread died in overflow: the next start replays the rest
                with contextlib.suppress(OSError):
                    self._backlog.close()
            for _, barrier in self._backlog_barriers:
                barrier.resolve()
            self._backlog_barriers.clear()
            if self._write_con is not None:
                self._write_con.close()

    def _loop(self) -> None:
        stopping = False
        while True:
            if self._backlog is not None:
                stopping = self._overflow_step() or stopping
                continue
            items, events, barriers, shutdown = self._collect(block=not stopping)
            drained = stopping and not (items or events or barriers or shutdown)
            stopping = stopping or shutdown
            wrote = bool(items or events)
            if wrote:
                self._write(items, events)
            # Let go of the batch before waiting for the next one (issue #3): kept by this frame,
            # the last batch's rows (up to batch_max_rows, ~10 MB after a burst) stayed in memory
            # for as long as the proxy was quiet.
            del items, events
            for barrier in barriers:
                barrier.resolve()
            if wrote and self._purge is not None:
                # What the batch's statements used goes back to the system now (proxy/malloc.py),
                # after the barriers: flush() does not wait for it.
                self._purge()
            if drained:
                return  # the sentinel was seen and the queue is now empty
            if self._queued_rows - self._taken_rows > self._max_queue_rows:
                try:
                    self._backlog = Backlog(self.backlog_path, self._specs)
                except OSError as exc:  # the queue stays in memory, as it did before there was a backlog
                    self.last_error = f"cannot open the backlog file: {exc}"
                    log.error("recording queue over %d rows, and %s", self._max_queue_rows, self.last_error)
                    continue
                self.backlog_episodes_total += 1
                log.warning("recording queue over %d rows: overflowing to %s; rows are committed from it in order",
                            self._max_queue_rows, self.backlog_path)

    def _overflow_step(self) -> bool:
        """While the queue overflows: move what is queued to the backlog file, commit one batch from
        its head, and go back to the in-memory queue once the file is consumed. True if the
        shutdown sentinel was among what was queued."""
        backlog = self._backlog
        assert backlog is not None
        shutdown = self._queue_to_backlog(backlog)
        try:
            items, rejected, offset = backlog.read(min(self._batch_max_rows, _BACKLOG_READ_ROWS))
        except OSError as exc:  # an I/O error reading our own file: report it, try again shortly
            self.last_error = f"cannot read the backlog file: {exc}"
            log.error("%s", self.last_error)
            time.sleep(1.0)
            return shutdown
        if rejected:  # rows no database can take: spilled as they would have been from memory
            self.write_errors_total += len(rejected)
            self._spill_lines(rejected)
        if items:
            self._write(items, [])
        del items
        try:
            backlog.mark_consumed(offset)
        except OSError as exc:  # a restart would re-apply this batch: idempotent, so go on
            log.error("cannot record the backlog's offset: %s", exc)
        if backlog.empty:  # before the barriers resolve: a flush() returns to a consumed, removed file
            try:
                backlog.remove()
            except OSError as exc:  # committed all the same; a leftover is replayed idempotently at start
                log.error("cannot remove the backlog file: %s", exc)
            self._backlog = None
            log.warning("recording backlog %s committed; the queue is back in memory", self.backlog_path)
        waiting = []
        for at, barrier in self._backlog_barriers:
            if at <= offset:
                barrier.resolve()
            else:
                waiting.append((at, barrier))
        self._backlog_barriers = waiting
        if self._purge is not None:
            self._purge()
        return shutdown

    def _queue_to_backlog(self, backlog: Backlog) -> bool:
        """Append everything queued to the backlog, in order; a barrier keeps its place."""
        rows: list[Item] = []
        shutdown = False
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is _SHUTDOWN:
                shutdown = True
            elif isinstance(entry, _Flush):
                self._to_backlog(backlog, rows)
                rows = []
                self._backlog_barriers.append((backlog.end, entry))
            elif type(entry) is _Stream:
                rows += entry.rows()
                self._taken_rows += entry.weight
            else:
                rows.append(entry)  # type: ignore[arg-type]  # only submit() puts other entries
                self._taken_rows += 1
            if len(rows) >= 5000:
                self._to_backlog(backlog, rows)
                rows = []
        self._to_backlog(backlog, rows)
        return shutdown

    def _to_backlog(self, backlog: Backlog, rows: list[Item]) -> None:
        try:
            backlog.append(rows)
        except OSError as exc:  # disk full: the spill (counted, and shouted about if it fails too)
            self.last_error = f"cannot append to the backlog file: {exc}"
            log.error("%s; %d rows go to the spill", self.last_error, len(rows))
            self._spill(rows)

    def _spill_lines(self, lines: list[bytes]) -> None:
        """Rows (spill lines) to the spill file, counted; the one place a row can be lost, so shout."""
        try:
            self.spilled_rows_total += spill.append_lines(self.spill_path, lines)
        except Exception:  # disk full, permissions
            self.lost_rows_total += len(lines)
            log.critical("LOST %d recording rows: cannot write %s", len(lines), self.spill_path, exc_info=True)

    def _collect(self, block: bool) -> tuple[list[Item], list[EventRow], list[_Flush], bool]:
        """Take one batch: up to batch_max_rows, a barrier, or the sentinel, whichever comes first.

        Once it holds a row, the thread sleeps on ``_urgent`` until the batch's deadline rather than
        on the queue: a thread blocked on the queue is woken by every ``put``, and each wake-up takes
        the GIL from the event loop for nothing (issue #3: ~2,500 wake-ups a second at c=1, five per
        streamed run). Now it wakes about twice per batch, and at once for a barrier, the sentinel or
        batch_max_rows rows waiting. A set() that lands after the thread already took its entry only
        makes the next batch start early.
        """
        items: list[Item] = []
        events: list[EventRow] = []
        deadline: float | None = None
        # A set() that came before this point was for an entry that is still queued (read below,
        # before any wait) or already taken: it must not cut the next batch short.
        self._urgent.clear()
        try:
            entry = self._queue.get() if block else self._queue.get_nowait()
        except queue.Empty:
            return items, events, [], False
        while True:
            if entry is _SHUTDOWN:
                return items, events, [], True
            if isinstance(entry, _Flush):
                return items, events, [entry], False  # write now, so the barrier resolves promptly
            if type(entry) is _Stream:
                stream_items, stream_events = entry.items()
                items += stream_items
                events += stream_events
                self._taken_rows += entry.weight
            else:
                items.append(entry)  # type: ignore[arg-type]  # only submit() puts other entries
                self._taken_rows += 1
            if len(items) + len(events) >= self._batch_max_rows:
                return items, events, [], False
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                if not block:
                    return items, events, [], False
                if deadline is None:
                    deadline = time.monotonic() + self._batch_interval_s
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._urgent.wait(remaining)
                # Cleared before the queue is read again: a set() after this is kept for the next wait.
                self._urgent.clear()
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    return items, events, [], False
                deadline = time.monotonic()  # woken or due: take what is queued now, then write

    def _write(self, items: list[Item], events: list[EventRow]) -> None:
        valid = self._reject_invalid(items)
        if not valid and not events:
            return
        try:
            assert self._write_con is not None
            write_batch(self._write_con, self._specs, valid, events=events)
        except Exception as exc:  # whatever the cause, the rows go to the spill and we go on
            self._last_batch_ok = False
            self.write_errors_total += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("recording batch of %d rows refused, spilling it: %s", len(valid) + len(events),
                      self.last_error)
            self._spill(valid + [_event_item(e) for e in events])
        else:
            self._last_batch_ok = True
            self.rows_written_total += len(valid) + len(events)

    def _reject_invalid(self, items: list[Item]) -> list[Item]:
        """Spill rows no database could take (a recorder bug), so they cannot fail the batch."""
        valid: list[Item] = []
        invalid: list[Item] = []
        for item in items:
            spec = self._specs.get(item[0])
            problem = f"unknown table {item[0]!r}" if spec is None else spec.problem(item[1])
            if problem is None:
                valid.append(item)
            else:
                invalid.append(item)
                self.last_error = problem
        if invalid:
            self.write_errors_total += len(invalid)
            log.error("%d invalid rows spilled, e.g. %s", len(invalid), self.last_error)
            self._spill(invalid)
        return valid

    def _replay_batch(self, items: Sequence[Item]) -> None:
        assert self._write_con is not None
        write_batch(self._write_con, self._specs, items, replay=True)

    def _spill(self, items: Sequence[Item]) -> None:
        self._spill_lines([spill.encode(table, row) for table, row in items])

    def _drain_leftovers(self) -> None:
        """Spill rows that raced the shutdown, and release any waiting flush()."""
        rows: list[Item] = []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(entry, _Flush):
                entry.resolve()
            elif type(entry) is _Stream:
                rows += entry.rows()
            elif entry is not _SHUTDOWN:
                rows.append(entry)  # type: ignore[arg-type]  # only submit() puts other entries
        if rows:
            log.warning("%d rows arrived after the writer stopped; spilled for the next start", len(rows))
            self._spill(rows)


def _lower_priority(nice: int) -> None:
    """Give this thread (not the process) a lower scheduling priority: when the machine's cores are
    all busy, the relay's thread gets them first and the writer catches up once they are free; on
    idle cores it runs as before. Linux only (a thread id is a valid PRIO_PROCESS target there)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        # Relative to the thread's own (inherited) value: a proxy started under `nice` stays ordered.
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("cannot lower the writer thread's priority by %d: %s", nice, exc)


def _event_item(row: EventRow) -> Item:
    """An event row (a tuple) as a row like any other (for the spill)."""
    return "events", dict(zip(EVENT_COLUMNS, row, strict=False))  # lenient: a spill must not raise


ORPHANED = "the proxy stopped before the exchange ended (killed, or it crashed)"


def close_orphaned_exchanges(con: duckdb.DuckDBPyConnection) -> int:
    """Requests rows that never got an outcome, at start: their process died mid-exchange (nothing
    is in flight yet, and the spill was replayed first). Say so, rather than leave them open forever."""
    sql = "update requests set outcome = 'truncated', error = ? where outcome is null"
    row = con.execute(sql, [ORPHANED]).fetchone()
    return int(row[0]) if row else 0


def _connect(path: Path, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    # No file access through SQL (read_csv, COPY, ATTACH, INSTALL) nor Python replacement scans:
    # /admin/sql runs on cursors of this connection, and the writer needs neither (the spill is
    # plain Python I/O). The memory limit bounds DuckDB's buffer pool, which otherwise grows with
    # the recording up to 80% of the machine's RAM. DuckDB keeps its own thread count: one thread
    # (issue #3) gave the relay more of the cores in the benchmark's bursts (stream c=32 added p50
    # 26.5-27.7 -> 20.5-21.5 ms), but under a sustained saturating load the recording then fell
    # behind without end (scripts/soak.py: the queue overflowed after 39 s, and after 120 s SIGTERM
    # could not flush it within close()'s 10 s: exit 3).
    config: dict[str, str | bool | int] = {"enable_external_access": False, "python_enable_replacements": False}
    if memory_limit:
        config["memory_limit"] = memory_limit
    try:
        return duckdb.connect(str(path), config=config)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreLockedError(
                f"{path} is locked by another process; DuckDB allows one writer per file"
                f" (is another runtap running on it?): {exc}"
            ) from exc
        raise StoreError(f"cannot open {path}: {exc}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc


# -- batch SQL -------------------------------------------------------------------------------------


def write_batch(
    con: duckdb.DuckDBPyConnection, specs: Mapping[str, TableSpec], items: Sequence[Item], *, replay: bool = False,
    events: Sequence[EventRow] = (),
) -> None:
    """Write valid rows in one transaction: all or nothing. Rolls back and re-raises on error.

    ``replay``: the rows come from the spill file, where some may already be stored (a replay cut
    short by a crash is done again), so appended rows whose key exists are skipped. Live rows
    never repeat a key, and checking would cost a join with the whole table per batch.
    ``events``: live ``events`` rows as ``EVENT_COLUMNS`` tuples (a stream's, ``streams.py``), inserted as they are.
    """
    by_table: dict[str, list[Row]] = {}
    for table, row in items:
        by_table.setdefault(table, []).append(row)
    con.execute("begin transaction")
    try:
        for table, rows in by_table.items():
            _write_table(con, specs[table], rows, replay)
        for start in range(0, len(events), _STATEMENT_ROWS):
            columns = zip(*events[start:start + _STATEMENT_ROWS], strict=True)
            _write_columns(con, specs["events"], dict(zip(EVENT_COLUMNS, columns, strict=True)))
        con.execute("commit")
    except Exception:
        _rollback(con)
        raise


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    # A failed COMMIT has already ended the transaction; the original error is the one to raise.
    with contextlib.suppress(duckdb.Error):
        con.execute("rollback")


_STATEMENT_ROWS = 2000
"""Most rows per INSERT (a batch's rows of one table take as many statements as needed, in its one
transaction). DuckDB's working memory for a statement grows with its rows (the JSON document, its
parse, the unnested lists), and its allocator keeps those pages for later statements, so one
statement for a 10,000-event batch left the process 86 MB larger, 2,000-row statements 38 MB
(issue #3), at the same CPU per row: appends cost little per statement (upserts ~4-9 ms, but a
batch rarely has more than 2,000 rows of one upserted table)."""


def _write_table(con: duckdb.DuckDBPyConnection, spec: TableSpec, rows: list[Row], replay: bool = False) -> None:
    rows = _merge(spec, rows) if spec.mode == "upsert" else _first_of_each_key(spec, rows)
    for start in range(0, len(rows), _STATEMENT_ROWS):
        _insert(con, spec, rows[start:start + _STATEMENT_ROWS], replay)


def _insert(con: duckdb.DuckDBPyConnection, spec: TableSpec, rows: list[Row], replay: bool) -> None:
    present: set[str] = set()
    for row in rows:
        present.update(row)
    columns = [c for c in spec.columns if c in present]
    _write_columns(con, spec, {c: [row.get(c) for row in rows] for c in columns}, replay)


def _write_columns(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, params: Mapping[str, Sequence[object]], replay: bool = False
) -> None:
    columns = list(params)
    bulk = [c for c in columns if (spec.name, c) in _BULK_TEXT]
    try:
        payload = _json_document({c: v for c, v in params.items() if c not in bulk})
    except TypeError:  # orjson.JSONEncodeError: a value orjson cannot encode (Decimal, int > 64 bits)
        con.execute(_insert_sql(spec, columns, via_json=False, replay=replay), [list(v) for v in params.values()])
    else:
        # The bulk columns' parameters come first: their unnest(?) is in the select list, before the document's.
        sql = _insert_sql(spec, columns, via_json=True, replay=replay)
        con.execute(sql, [*(list(params[c]) for c in bulk), payload])


_BULK_TEXT = frozenset({("response_streams", "body"), ("requests", "request_body"), ("requests", "response_body")})
"""Columns of large texts (a stream, a body) that cross as one list parameter each rather than in the
JSON document: DuckDB copies each value once (~1 us for 15 KB), where in the document orjson escapes
every quote of the JSON inside and DuckDB unescapes it. A batch of 300 benchmark streams: 280 -> 160 us
per stream (docs/benchmarks.md)."""


_ENCODE_SLICE = 2000
"""Values per orjson call: each call holds the GIL throughout (~0.7 us per event value), so the
event loop, once it asks for the GIL, waits the switch interval (5 ms) plus at most one slice
(~1.5 ms), not a whole 20,000-row batch (14 ms)."""


def _json_document(params: Mapping[str, Sequence[object]]) -> bytes:
    """``orjson.dumps(params)``, built from slices so that the GIL is released between them."""
    columns: list[bytes] = []
    for column, values in params.items():
        slices = (orjson.dumps(values[i:i + _ENCODE_SLICE], default=_base64)[1:-1]
                  for i in range(0, len(values), _ENCODE_SLICE))
        columns.append(orjson.dumps(column) + b":[" + b",".join(slices) + b"]")
    return b"{" + b",".join(columns) + b"}"


def _base64(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(type(value).__name__)


def _first_of_each_key(spec: TableSpec, rows: list[Row]) -> list[Row]:
    """Appended rows, a repeated key dropped (the first wins, as a constraint would have it)."""
    if not spec.key:
        return rows
    seen: set[tuple[object, ...]] = set()
    out: list[Row] = []
    for row in rows:
        key = tuple(row[c] for c in spec.key)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _merge(spec: TableSpec, rows: list[Row]) -> list[Row]:
    """Fold rows with the same key into one, in submission order."""
    merged: dict[object, Row] = {}
    for row in rows:
        key = tuple(row[c] for c in spec.key)
        into = merged.get(key)
        if into is None:
            merged[key] = dict(row)  # a copy: the caller's dict is never changed
        else:
            _merge_into(into, row)
    return list(merged.values())


def _merge_into(into: Row, row: Row) -> None:
    for column, value in row.items():
        if value is None:
            continue
        old = into.get(column)
        rule = MERGE_RULES.get(column)
        if old is None or rule is None:
            into[column] = value
        else:
            into[column] = _pick(rule, old, value)


def _pick(rule: str, old: object, new: object) -> object:
    try:
        return min(old, new) if rule == "min" else max(old, new)  # type: ignore[type-var]  # caught below
    except TypeError:
        return new  # incomparable (naive vs aware datetime): fall back to "later wins"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _insert_sql(spec: TableSpec, columns: list[str], *, via_json: bool, replay: bool = False) -> str:
    table = _ident(spec.name)
    head = f"insert into {table} ({', '.join(map(_ident, columns))}) {_select(spec, columns, via_json)}"
    if spec.mode == "append":
        if not (replay and spec.key):
            return head
        # Only what is not stored yet (the key is not a constraint: migrations.APPEND_TABLES).
        names = ", ".join(map(_ident, columns))
        match = " and ".join(f"t.{_ident(k)} = n.{_ident(k)}" for k in spec.key)
        return (f"insert into {table} ({names}) select * from ({_select(spec, columns, via_json)}) as n ({names})"
                f" where not exists (select 1 from {table} as t where {match})")
    updates = [f"{_ident(c)} = {_merged_value(table, c)}" for c in columns if c not in spec.key]
    target = ", ".join(map(_ident, spec.key))
    if not updates:
        return f"{head} on conflict ({target}) do nothing"
    return f"{head} on conflict ({target}) do update set {', '.join(updates)}"


def _select(spec: TableSpec, columns: list[str], via_json: bool) -> str:
    """The rows as a SELECT: from one JSON document of columns, or from one list parameter per column.

    Why JSON: DuckDB converts a Python list parameter element by element while holding the GIL
    (~10 us per event row), which stalls the event loop for tens of ms per batch. One bytes
    parameter crosses as a single copy; DuckDB then parses it (yyjson) with the GIL released.
    ``from_json_strict`` raises on a value that does not fit its column, where ``from_json``
    would quietly store NULL. Bytes travel as base64 (orjson has no bytes type). orjson writes a
    float NaN or infinity as null, so those (never expected in ``*_ms`` or token columns) are NULL.
    """
    if not via_json:
        return "select " + ", ".join("unnest(?)" for _ in columns)
    in_document = [c for c in columns if (spec.name, c) not in _BULK_TEXT]
    structure = orjson.dumps({c: _json_type(spec, c) + "[]" for c in in_document}).decode()
    values = ", ".join(_json_value(spec, c) if c in in_document else "unnest(?::VARCHAR[])" for c in columns)
    return f"select {values} from (select from_json_strict(decode(?), {_literal(structure)}) as j)"


def _json_type(spec: TableSpec, column: str) -> str:
    return "VARCHAR" if spec.types[column] == "BLOB" else spec.types[column]


def _json_value(spec: TableSpec, column: str) -> str:
    value = f"unnest(j.{_ident(column)})"
    return f"from_base64({value})" if spec.types[column] == "BLOB" else value


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _merged_value(table: str, column: str) -> str:
    new, old = f"excluded.{_ident(column)}", f"{table}.{_ident(column)}"
    rule = MERGE_RULES.get(column)
    if rule == "min":
        return f"least({old}, {new})"  # DuckDB's least/greatest ignore NULLs
    if rule == "max":
        return f"greatest({old}, {new})"
    return f"coalesce({new}, {old})"
