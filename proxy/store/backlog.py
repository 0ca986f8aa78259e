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
start replays the file from that offset through the spill's idempotent replay (a batch committed
just before the offset was written is re-applied: events skip stored keys, other rows merge).
The file is not fsynced: a killed process's writes are in the page cache; a power loss may lose
the rows appended in the last seconds, as it would lose the in-memory queue.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from proxy.store import spill
from proxy.store.migrations import TableSpec
from proxy.store.spill import Item

log = logging.getLogger(__name__)


class Backlog:
    """An append-at-the-tail, read-from-the-head file of rows. One thread uses it."""

    def __init__(self, path: Path, tables: Mapping[str, TableSpec]) -> None:
        self.path = path
        self.offset_path = offset_path(path)
        self._tables = tables
        self._file: IO[bytes] = path.open("w+b")  # a fresh file: a leftover was replayed at start
        self._read_at = 0
        self._end = 0
        self.rows = 0
        """Rows appended and not yet read back."""
        self.corrupt = 0
        """Lines that could not be read back (none unless the disk corrupted them)."""

    @property
    def end(self) -> int:
        """The file's length: a barrier taken now resolves once ``consumed`` reaches it."""
        return self._end

    @property
    def consumed(self) -> int:
        return self._read_at

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

    def read(self, max_rows: int) -> tuple[list[Item], int]:
        """Up to ``max_rows`` rows from the head, and the offset just past them (commit, then call
        ``mark_consumed`` with it)."""
        self._file.flush()
        self._file.seek(self._read_at)
        items: list[Item] = []
        at = self._read_at
        while len(items) < max_rows and at < self._end:
            line = self._file.readline()
            if not line:
                break
            at += len(line)
            try:
                items.append(spill.decode(line, self._tables))
            except spill.CorruptLine as exc:
                self.corrupt += 1
                log.error("backlog %s: unreadable line at offset %d skipped: %s", self.path, at - len(line), exc)
        self.rows -= len(items)
        return items, at

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
        """Every row is committed: delete the file and its offset."""
        self._file.close()
        self.path.unlink(missing_ok=True)
        self.offset_path.unlink(missing_ok=True)


def offset_path(path: Path) -> Path:
    return path.with_name(path.name + ".offset")


def saved_offset(path: Path) -> int:
    """Where a killed process had got to in ``path`` (0 if it never committed from it)."""
    try:
        return max(0, int(offset_path(path).read_text().strip() or 0))
    except (OSError, ValueError):
        return 0


def forget_offset(path: Path) -> None:
    offset_path(path).unlink(missing_ok=True)


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
