"""The writer's backlog on disk: rows beyond what the writer keeps in memory, first in, first out.

Why: the writer's queue lives in memory, and under a sustained overload (the machine's cores busy
relaying, more events a second than the writer gets CPU to commit) it grew without limit: 30 s of
back-to-back streams at c=32 on the benchmark's machine left 1.3 million rows queued and the
proxy at 1.07 GB (issue #3), on the way to being killed for memory with everything queued in it.
Past ``max_queue_rows`` the writer therefore moves what is queued to this file (appending costs
~2 us a row, committing to DuckDB ~10) and commits from the file's head, in order, until the file
is consumed; the relay never waits. The rows cross the file in the spill's format
(``spill.encode``/``spill.decode``).

Crash safety: after each committed batch the file's consumed offset is written beside it
(``<file>.offset``, replaced atomically). A process killed in overflow leaves both, and the next
start moves the file's tail from that offset to the spill file and replays it with the spill's
idempotent replay (a batch committed just before the offset was written is re-applied: events
skip stored keys, other rows merge).
The file is not fsynced: a killed process's writes are in the page cache; a power loss may lose
the rows appended in the last seconds, as it would lose the in-memory queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from proxy.record import spill
from proxy.record.migrations import TableSpec
from proxy.record.spill import Item

log = logging.getLogger(__name__)


class Backlog:
    """An append-at-the-tail, read-from-the-head file of rows. One thread uses it."""

    def __init__(self, path: Path, tables: Mapping[str, TableSpec]) -> None:
        self.path = path
        self.offset_path = offset_path(path)
        self._tables = tables
        # A fresh file: start() moved any leftover into the spill. Offset 0 first, so that a stale
        # offset of an earlier episode can never make a restart skip this one's head.
        self._read_at = 0
        self._end = 0
        self.mark_consumed(0)
        self._file: IO[bytes] = path.open("w+b")
        self.rows = 0
        """Rows appended and not yet read back."""

    @property
    def end(self) -> int:
        """The file's length: a barrier taken now resolves once ``consumed`` reaches it."""
        return self._end

    def append(self, items: Iterable[Item]) -> int:
        """Append rows at the tail; return how many."""
        lines = [spill.encode(table, row) for table, row in items]
        if lines:
            self._file.seek(self._end)
            data = b"".join(lines)
            self._file.write(data)
            self._end += len(data)
            self.rows += len(lines)
        return len(lines)

    def read(self, max_rows: int) -> tuple[list[Item], list[bytes], int]:
        """Up to ``max_rows`` rows from the head, the lines no database could take (an invalid row:
        the caller spills them, as it would have from memory), and the offset just past them (commit,
        then call ``mark_consumed`` with it)."""
        self._file.flush()
        self._file.seek(self._read_at)
        items: list[Item] = []
        rejected: list[bytes] = []
        at = self._read_at
        while len(items) + len(rejected) < max_rows and at < self._end:
            line = self._file.readline()
            if not line:
                break
            at += len(line)
            try:
                items.append(spill.decode(line, self._tables))
            except spill.CorruptLine as exc:
                rejected.append(line)
                log.error("backlog %s: a row no database can take, at offset %d: %s", self.path, at - len(line), exc)
        self.rows -= len(items) + len(rejected)
        return items, rejected, at

    def mark_consumed(self, offset: int) -> None:
        """The rows before ``offset`` are committed: a restart must not need them."""
        self._read_at = offset
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        tmp.write_text(f"{offset}\n")
        tmp.replace(self.offset_path)

    @property
    def empty(self) -> bool:
        return self._read_at >= self._end

    def close(self) -> None:
        """Keep the file and its offset (the next start replays what is left)."""
        self._file.close()

    def remove(self) -> None:
        """Every row is committed: delete the offset, then the file (killed in between, the next start
        finds a consumed file without an offset: replayed whole, which is idempotent)."""
        self._file.close()
        self.offset_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


def offset_path(path: Path) -> Path:
    return path.with_name(path.name + ".offset")


def saved_offset(path: Path) -> int:
    """Where a killed process had got to in ``path`` (0 if it never committed from it)."""
    try:
        return max(0, int(offset_path(path).read_text().strip() or 0))
    except (OSError, ValueError):
        return 0


def move_to_spill(path: Path, spill_path: Path) -> int:
    """At start: what a killed process had not committed from its backlog (from the saved offset on)
    goes to the end of the spill file, which start() then replays with its idempotent replay; the
    backlog file and its offset are removed. Returns the bytes moved."""
    moved = 0
    if path.exists():
        start = saved_offset(path)
        if path.stat().st_size > start:
            with path.open("rb") as src:  # copied in chunks: a long overload's backlog can be GBs
                src.seek(start)
                moved = spill.append_from(spill_path, src)
            log.warning("backlog %s of a killed process: %d bytes moved to %s for replay", path, moved, spill_path)
    offset_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    return moved
