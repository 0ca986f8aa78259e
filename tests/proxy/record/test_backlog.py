from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from proxy.record import backlog
from proxy.record.backlog import Backlog
from proxy.record.migrations import latest_tables

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def b(tmp_path: Path) -> Iterator[Backlog]:
    opened = Backlog(tmp_path / "x.backlog.jsonl", latest_tables())
    yield opened
    opened.close()


def rows(n: int, start: int = 0) -> list[tuple[str, dict[str, object]]]:
    return [("event_rows", {"request_id": "req_1", "seq": i, "event": "thread.message.delta", "data": f'{{"n":{i}}}',
                        "received_at": T0 + dt.timedelta(seconds=i), "run_id": "run_1",
                        "raw": b"\x00\xff" if i % 2 else None}) for i in range(start, start + n)]


def test_rows_come_back_in_order_and_exactly(b: Backlog, tmp_path: Path) -> None:
    assert b.empty
    b.append(rows(5))
    b.append(rows(5, start=5))
    assert (b.rows, b.empty) == (10, False)
    first, rejected, at = b.read(4)
    b.mark_consumed(at)
    b.append(rows(2, start=10))  # appending while the head is being read
    rest, rejected_2, end = b.read(100)
    assert rejected == rejected_2 == []
    b.mark_consumed(end)
    assert first + rest == rows(12)
    assert (b.rows, b.empty, end, b.end) == (0, True, b.end, (tmp_path / "x.backlog.jsonl").stat().st_size)


def test_the_consumed_offset_is_kept_beside_the_file_for_a_restart(b: Backlog) -> None:
    path = b.path
    b.append(rows(3))
    assert backlog.offset_path(path).read_text() == "0\n"  # written at open: no stale offset can apply
    _, _, at = b.read(2)
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


def test_a_row_no_database_can_take_comes_back_apart_for_the_spill(b: Backlog) -> None:
    b.append(rows(1))
    b.append([("nope", {"x": 1})])  # a recorder bug: an unknown table
    b.append(rows(1, start=1))
    got, rejected, at = b.read(10)
    assert got == rows(2) and at == b.end and b.rows == 0
    assert [orjson.loads(line)["table"] for line in rejected] == ["nope"]


def test_at_start_a_killed_processs_tail_moves_to_the_spill(tmp_path: Path) -> None:
    path, spill_path = tmp_path / "x.backlog.jsonl", tmp_path / "x.spill.jsonl"
    path.write_bytes(b"line-a\nline-b\nline-c\n")
    backlog.offset_path(path).write_text("7\n")  # line-a was committed
    spill_path.write_bytes(b"older")  # a torn last line of the spill is not glued onto
    assert backlog.move_to_spill(path, spill_path) == len(b"line-b\nline-c\n")
    assert spill_path.read_bytes() == b"older\nline-b\nline-c\n"
    assert not path.exists() and not backlog.offset_path(path).exists()
