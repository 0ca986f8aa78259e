"""The spill file: rows the database refused, kept as JSONL until the next start replays them.

A recording must not silently lose rows when DuckDB fails (disk full, a bad value, a bug), and the
writer thread must keep serving the next batch. So a failed batch is appended here, one line per
row, ``{"table": ..., "row": {...}}``, and :func:`replay` re-applies it at start through the same
write path. Bytes are ``{"$base64": ...}``; datetimes are ISO 8601 text, turned back into
datetimes for timestamp columns.

Replay never deletes evidence: the replayed file is renamed ``<name>.replayed-<timestamp>``, corrupt
lines included. Rows that still cannot be written stay owed: they are written back to ``<name>``
alone, so the next start retries only them and does not re-apply rows that already made it (an
old upsert replayed again would overwrite newer values).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.record.migrations import TableSpec, latest_tables

log = logging.getLogger(__name__)

Row = dict[str, object]
Item = tuple[str, Row]
"""A row bound for a table: ``(table name, {column: value})``."""

_B64 = "$base64"
_MAX_ERRORS = 50  # a report, not a log: beyond this, errors are counted, not listed


@dataclass(slots=True)
class ReplayReport:
    """What :func:`replay` did with a spill file."""

    replayed: int = 0
    """Rows written to the database."""
    skipped_corrupt: int = 0
    """Lines that can never be written (invalid JSON, unknown table or column, no key)."""
    errors: list[str] = field(default_factory=list)
    pending: int = 0
    """Valid rows the database refused again; they are back in the spill file for the next start."""
    archived_to: Path | None = None

    def add_error(self, message: str) -> None:
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(message)
        elif len(self.errors) == _MAX_ERRORS:
            self.errors.append("... further errors not listed")


class CorruptLine(ValueError):
    """A spill line that can never become a row."""


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_B64: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    # Anything else the recorder should not have sent: keep its text rather than lose the row.
    return str(value)


def encode(table: str, row: Mapping[str, object]) -> bytes:
    """One spill line, newline included. Never raises for an odd value."""
    doc = {"table": table, "row": row}
    try:
        return orjson.dumps(doc, default=_default) + b"\n"
    except (TypeError, orjson.JSONEncodeError):
        # orjson refuses lone surrogates and ints beyond 64 bits; the stdlib escapes the former
        # (ensure_ascii) and writes the latter, so the exact value survives to the next attempt.
        return json.dumps(doc, default=_default, ensure_ascii=True).encode("ascii") + b"\n"


def decode(line: bytes, tables: Mapping[str, TableSpec] | None = None) -> Item:
    """Parse one spill line back into ``(table, row)``; raise CorruptLine if it cannot be written.

    ``tables``: the specs of the database being replayed into; by default the latest schema's."""
    if tables is None:
        tables = latest_tables()
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(line)  # what encode()'s stdlib fallback wrote
        except ValueError as exc:
            raise CorruptLine(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("table"), str):
        raise CorruptLine("not a {table, row} object")
    spec = tables.get(doc["table"])
    if spec is None:
        raise CorruptLine(f"unknown table {doc['table']!r}")
    problem = spec.problem(doc.get("row"))
    if problem:
        raise CorruptLine(problem)
    return spec.name, {k: _revive(spec, k, v) for k, v in doc["row"].items()}


def _revive(spec: TableSpec, column: str, value: object) -> object:
    if isinstance(value, dict) and _B64 in value:
        return base64.b64decode(value[_B64])
    if isinstance(value, str) and spec.is_timestamp(column):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # let the database judge it, as it would have the first time
    return value


def append(path: Path, rows: Iterable[Item]) -> int:
    """Append rows to the spill file and fsync; return how many were written."""
    return append_lines(path, [encode(table, row) for table, row in rows])


def append_lines(path: Path, lines: Sequence[bytes]) -> int:
    """Append lines in the spill's format and fsync; return how many were written."""
    lines = [line if line.endswith(b"\n") else line + b"\n" for line in lines]
    if not lines:
        return 0
    with path.open("a+b") as f:
        # A crash mid-write can leave a torn last line; never glue the next row onto it.
        if f.seek(0, os.SEEK_END) and _last_byte(f) != b"\n":
            lines.insert(0, b"\n")
        f.write(b"".join(lines))
        f.flush()
        os.fsync(f.fileno())
    return len(lines) - (lines[0] == b"\n")


def append_from(path: Path, src: IO[bytes]) -> int:
    """Append the rest of ``src`` (lines in the spill's format), in chunks, and fsync; return the
    bytes copied."""
    copied = 0
    with path.open("a+b") as f:
        if f.seek(0, os.SEEK_END) and _last_byte(f) != b"\n":
            f.write(b"\n")  # never glue onto a torn last line
        last = b"\n"
        while chunk := src.read(1 << 20):
            f.write(chunk)
            copied += len(chunk)
            last = chunk[-1:]
        if last != b"\n":
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return copied


def _last_byte(f: IO[bytes]) -> bytes:
    f.seek(-1, os.SEEK_END)
    return f.read(1)


def replay(
    path: Path,
    apply_batch: Callable[[Sequence[Item]], None],
    *,
    tables: Mapping[str, TableSpec] | None = None,
    batch_rows: int = 5000,
) -> ReplayReport:
    """Re-apply a spill file through ``apply_batch`` (one transaction per call), then archive it.

    ``apply_batch`` must be idempotent (``write_batch(replay=True)``: events skip a stored key;
    upserts merge), so a replay
    interrupted by a crash is simply done again.
    """
    report = ReplayReport()
    if not path.exists():
        return report
    if tables is None:
        tables = latest_tables()
    owed = path.with_name(path.name + ".owed")
    with path.open("rb") as src, _LazyWriter(owed) as still_owed:
        replayer = _Replayer(apply_batch, report, still_owed)
        for batch in _batches(_valid_lines(src, tables, report), batch_rows):
            replayer.apply(batch)
    if report.pending and not report.replayed and not report.skipped_corrupt:
        owed.unlink()  # nothing changed (the database refused it all): keep the spill as it is
    else:
        report.archived_to = _archive(path)
        if report.pending:
            owed.rename(path)
    log.info("spill replay %s: %s", path, report)
    return report


def _valid_lines(src: IO[bytes], tables: Mapping[str, TableSpec], report: ReplayReport) -> Iterator[tuple[Item, bytes]]:
    for lineno, line in enumerate(src, 1):
        if not line.strip():
            continue
        try:
            yield decode(line, tables), line
        except CorruptLine as exc:
            report.skipped_corrupt += 1
            report.add_error(f"line {lineno}: skipped: {exc}")


def _batches(items: Iterator[tuple[Item, bytes]], size: int) -> Iterator[list[tuple[Item, bytes]]]:
    batch: list[tuple[Item, bytes]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Replayer:
    """Applies batches; isolates the rows of a refused batch; stops trying once the DB refuses all."""

    def __init__(
        self, apply_batch: Callable[[Sequence[Item]], None], report: ReplayReport, still_owed: _LazyWriter
    ) -> None:
        self._apply = apply_batch
        self._report = report
        self._owed = still_owed
        self._db_down = False

    def apply(self, batch: list[tuple[Item, bytes]]) -> None:
        if not self._db_down and self._try([item for item, _ in batch]):
            self._report.replayed += len(batch)
            return
        # One bad value fails a whole batch; retry row by row so that it alone stays owed.
        failed = [(item, line) for item, line in batch if self._db_down or not self._try([item])]
        if len(failed) == len(batch) > 1 and not self._db_down:
            # Every row refused: the database, not the data, is the problem. Don't grind on.
            self._db_down = True
        self._report.replayed += len(batch) - len(failed)
        self._report.pending += len(failed)
        self._owed.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for _, line in failed))

    def _try(self, items: list[Item]) -> bool:
        try:
            self._apply(items)
        except Exception as exc:  # any refusal: the row stays owed, the replay goes on
            if len(items) == 1:
                self._report.add_error(f"{items[0][0]}: still refused: {exc}")
            return False
        return True


class _LazyWriter:
    """A file created only if something is written to it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None
        path.unlink(missing_ok=True)  # a leftover of a replay that crashed; the spill is intact

    def write(self, data: bytes) -> None:
        if data:
            if self._file is None:
                self._file = self._path.open("wb")
            self._file.write(data)

    def __enter__(self) -> _LazyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _archive(path: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.replayed-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.replayed-{stamp}-{n}")
        n += 1
    path.rename(target)
    return target
