from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.store import backlog
from proxy.store.backlog import Backlog
from proxy.store.migrations import latest_tables

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def b(tmp_path: Path) -> Iterator[Backlog]:
    opened = Backlog(tmp_path / "x.backlog.jsonl", latest_tables())
    yield opened
    opened.close()


def rows(n: int, start: int = 0) -> list[tuple[str, dict[str, object]]]:
    return [("events", {"request_id": "req_1", "seq": i, "event": "thread.message.delta", "data": f'{{"n":{i}}}',
                        "received_at": T0 + dt.timedelta(seconds=i), "run_id": "run_1",
                        "raw": b"\x00\xff" if i % 2 else None}) for i in range(start, start + n)]


def test_rows_come_back_in_order_and_exactly(b: Backlog, tmp_path: Path) -> None:
    assert b.empty
    b.append(rows(5))
    b.append(rows(5, start=5))
    assert (b.rows, b.empty) == (10, False)
    first, at = b.read(4)
    b.mark_consumed(at)
    b.append(rows(2, start=10))  # appending while the head is being read
    rest, end = b.read(100)
    b.mark_consumed(end)
    assert first + rest == rows(12)
    assert (b.rows, b.empty, end, b.end) == (0, True, b.end, (tmp_path / "x.backlog.jsonl").stat().st_size)


def test_the_consumed_offset_is_kept_beside_the_file_for_a_restart(b: Backlog) -> None:
    path = b.path
    b.append(rows(3))
    _, at = b.read(2)
    assert backlog.saved_offset(path) == 0  # read is not committed
    b.mark_consumed(at)
    assert backlog.saved_offset(path) == at
    b.remove()
    assert not path.exists() and not backlog.offset_path(path).exists()
    assert backlog.saved_offset(path) == 0


def test_an_unreadable_offset_means_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "x.backlog.jsonl"
    backlog.offset_path(path).write_text("garbage")
    assert backlog.saved_offset(path) == 0


def test_a_corrupt_line_is_skipped_and_counted_not_fatal(b: Backlog) -> None:
    b.append(rows(1))
    b._file.seek(b.end)
    b._file.write(b"{not json\n")
    b._end += len(b"{not json\n")
    b.append(rows(1, start=1))
    got, at = b.read(10)
    assert got == rows(2) and b.corrupt == 1 and at == b.end
