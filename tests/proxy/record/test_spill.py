from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import pytest

from proxy.record import spill
from proxy.record.migrations import TABLES, migrate
from proxy.record.spill import CorruptLine, Item
from proxy.record.writer import write_batch

T0 = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def event(seq: int, **extra: object) -> Item:
    return "event_rows", {"request_id": "req_1", "seq": seq, "event": "delta", "data": "{}", **extra}


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "recording.duckdb"))
    migrate(connection)
    yield connection
    connection.close()


def apply_to(con: duckdb.DuckDBPyConnection) -> Callable[[Sequence[Item]], None]:
    def apply_batch(items: Sequence[Item]) -> None:
        write_batch(con, TABLES, items, replay=True)

    return apply_batch


def test_values_survive_a_round_trip() -> None:
    row = {
        "request_id": "req_1",
        "seq": 3,
        "data": "x\x00y \U0001f600 [DONE]",
        "received_at": dt.datetime(2026, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "raw": b"\x00\xff data: {",
        "event": None,
    }
    assert spill.decode(spill.encode("event_rows", row)) == ("event_rows", row)
    # A spill written before m005 names the events table: its rows are read as event_rows rows.
    assert spill.decode(spill.encode("events", row)) == ("event_rows", row)


def test_values_orjson_refuses_still_survive() -> None:
    # A lone surrogate or an int beyond 64 bits fails the database; the spill must still keep it.
    row = {"message_id": "msg_1", "text": "bad \ud800 text"}
    line = spill.encode("messages", row)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert spill.decode(line) == ("messages", row)
    big = {"run_id": "run_1", "total_tokens": 2**70}
    assert spill.decode(spill.encode("runs", big)) == ("runs", big)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "invalid JSON"),
        (b'{"table": "runs"', "invalid JSON"),
        (b"[1, 2]", "not a {table, row} object"),
        (b'{"table": "nope", "row": {}}', "unknown table 'nope'"),
        (b'{"table": "runs", "row": {"run_id": "r", "colour": 1}}', "unknown columns"),
        (b'{"table": "runs", "row": {"status": "queued"}}', "key columns ['run_id']"),
        (b'{"table": "runs", "row": "run_1"}', "not dict"),
    ],
)
def test_corrupt_lines_say_why(line: bytes, reason: str) -> None:
    with pytest.raises(CorruptLine, match=reason.replace("[", r"\[").replace("{", r"\{")):
        spill.decode(line)


def test_append_never_glues_a_row_onto_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "x.spill.jsonl"
    path.write_bytes(b'{"table": "events", "row": {"request_id": "req_1", "se')  # a crash mid-write
    assert spill.append(path, [event(1)]) == 1
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    assert spill.decode(lines[1]) == event(1)


def test_replay_without_a_spill_file_does_nothing(tmp_path: Path) -> None:
    report = spill.replay(tmp_path / "none.spill.jsonl", lambda items: None)
    assert (report.replayed, report.skipped_corrupt, report.errors, report.archived_to) == (0, 0, [], None)


def test_replay_applies_rows_in_batches_and_archives_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.spill.jsonl"
    spill.append(path, [event(i) for i in range(5)])
    batches: list[list[Item]] = []
    report = spill.replay(path, lambda items: batches.append(list(items)), batch_rows=2)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [row["seq"] for b in batches for _, row in b] == [0, 1, 2, 3, 4]
    assert report.replayed == 5
    assert not path.exists()
    assert report.archived_to is not None
    assert report.archived_to.name.startswith("x.spill.jsonl.replayed-")
    assert len(report.archived_to.read_bytes().splitlines()) == 5  # evidence is kept


def test_replay_skips_and_reports_corrupt_lines(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = tmp_path / "x.spill.jsonl"
    spill.append(path, [event(0)])
    with path.open("ab") as f:
        f.write(b"garbage\n\n" + b'{"table": "nope", "row": {}}\n')
    spill.append(path, [event(1)])
    report = spill.replay(path, apply_to(con))
    assert (report.replayed, report.skipped_corrupt, report.pending) == (2, 2, 0)
    assert report.errors[0].startswith("line 2: skipped: invalid JSON")
    assert report.errors[1] == "line 4: skipped: unknown table 'nope'"
    assert con.execute("select seq from events order by seq").fetchall() == [(0,), (1,)]
    assert not path.exists()
    assert report.archived_to is not None and b"garbage" in report.archived_to.read_bytes()


def test_replaying_the_same_rows_twice_adds_nothing(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    rows = [event(0), event(1), ("runs", {"run_id": "run_1", "status": "completed", "first_seen_at": T0})]
    for name in ("a", "b"):
        spill.append(tmp_path / name, rows)
        assert spill.replay(tmp_path / name, apply_to(con)).replayed == 3
    assert con.execute("select count(*) from events").fetchall() == [(2,)]
    assert con.execute("select run_id, status, first_seen_at from runs").fetchall() == [
        ("run_1", "completed", T0)
    ]


def test_a_row_the_database_refuses_stays_owed_alone(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = tmp_path / "x.spill.jsonl"
    poison = event(1, received_at="not a time")
    spill.append(path, [event(0), poison, event(2)])
    report = spill.replay(path, apply_to(con))
    assert (report.replayed, report.pending, report.skipped_corrupt) == (2, 1, 0)
    assert "still refused" in report.errors[0]
    assert con.execute("select seq from events order by seq").fetchall() == [(0,), (2,)]
    # The spill now holds only what is still owed; the whole original is archived.
    assert [spill.decode(line) for line in path.read_bytes().splitlines()] == [poison]
    assert report.archived_to is not None and len(report.archived_to.read_bytes().splitlines()) == 3


def test_when_the_database_refuses_everything_the_spill_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "x.spill.jsonl"
    spill.append(path, [event(i) for i in range(6)])
    before = path.read_bytes()
    calls: list[int] = []

    def refuse(items: Sequence[Item]) -> None:
        calls.append(len(items))
        raise duckdb.IOException("disk full")

    report = spill.replay(path, refuse, batch_rows=3)
    assert (report.replayed, report.pending, report.archived_to) == (0, 6, None)
    assert path.read_bytes() == before
    assert calls == [3, 1, 1, 1]  # after one batch refused row by row, no more grinding
    assert not (tmp_path / "x.spill.jsonl.owed").exists()
