from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from proxy.record import migrations
from proxy.record.migrations import MIGRATIONS, TABLES, migrate, schema_markdown, table_specs

PUBLIC_TABLES = {"requests", "event_rows", "response_streams", "runs", "run_steps", "tool_calls", "messages",
                 "prices", "budget_charges", "budget_limits", "responses", "response_items"}


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {name for (name,) in con.execute("select table_name from duckdb_tables()").fetchall()}


def _applied(con: duckdb.DuckDBPyConnection) -> list[tuple[str, object]]:
    return con.execute("select name, applied_at from _runtap_migrations order by name").fetchall()


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "recording.duckdb"))
    yield connection
    connection.close()


def test_migrate_blank_database_creates_every_table(con: duckdb.DuckDBPyConnection) -> None:
    migrate(con)
    assert _tables(con) == PUBLIC_TABLES | {"_runtap_migrations"}
    assert [name for name, _ in _applied(con)] == sorted(fn.__name__ for fn in MIGRATIONS)


def test_migrate_twice_is_a_no_op(con: duckdb.DuckDBPyConnection) -> None:
    migrate(con)
    before = _applied(con)
    migrate(con)
    assert _applied(con) == before


def test_migration_names_are_unique_and_numbered() -> None:
    names = [fn.__name__ for fn in MIGRATIONS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"m\d{3}_[a-z0-9_]+", n) for n in names), names
    assert names == sorted(names)


def test_failing_migration_rolls_back_everything_it_did(
    con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    def m999_broken(c: duckdb.DuckDBPyConnection) -> None:
        c.execute("create table half (x integer)")
        c.execute("insert into half values (1)")
        c.execute("alter table runs add column half_done varchar")
        c.execute("select * from no_such_table")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, m999_broken])
    with pytest.raises(duckdb.CatalogException):
        migrate(con)
    assert "half" not in _tables(con)
    assert "half_done" not in table_specs(con)["runs"].columns
    assert "m999_broken" not in {name for name, _ in _applied(con)}
    # The migrations before it were committed on their own and stay applied.
    assert _tables(con) >= PUBLIC_TABLES


def test_failing_migration_on_an_existing_database_leaves_it_usable(
    con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(con)

    def m999_raises(c: duckdb.DuckDBPyConnection) -> None:
        c.execute("drop table event_rows")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, m999_raises])
    with pytest.raises(RuntimeError, match="boom"):
        migrate(con)
    assert "event_rows" in _tables(con)
    con.execute("insert into event_rows (request_id, seq) values ('r', 0)")  # no transaction left open
    assert con.execute("select seq from events").fetchall() == [(0,)]


def test_columns_are_the_contract() -> None:
    # contract.md §6: columns may be added, never renamed or dropped without a migration.
    assert {name: spec.columns for name, spec in TABLES.items()} == {
        "requests": (
            "request_id", "started_at", "method", "path", "query", "route", "status", "key_id",
            "upstream_request_id", "streamed", "ttfb_ms", "duration_ms", "outcome", "error",
            "thread_id", "run_id", "trace_id", "request_body", "response_body", "request_bytes",
            "response_bytes", "content_type", "event_count", "response_id",
        ),
        "events": ("request_id", "seq", "event", "data", "received_at", "run_id", "raw", "sequence_number"),
        "event_rows": ("request_id", "seq", "event", "data", "received_at", "run_id", "raw", "sequence_number"),
        "response_streams": ("request_id", "seq0", "run_id", "body", "chunk_ends", "chunk_times"),
        "runs": (
            "run_id", "thread_id", "assistant_id", "model", "status", "key_id", "created_at",
            "started_at", "ended_at", "expires_at", "prompt_tokens", "completion_tokens",
            "total_tokens", "last_error_code", "last_error_message", "incomplete_reason",
            "tool_rounds", "trace_id", "max_prompt_tokens", "max_completion_tokens",
            "request_count", "first_seen_at", "last_seen_at", "api",
        ),
        "run_steps": (
            "step_id", "run_id", "thread_id", "type", "status", "created_at", "ended_at",
            "prompt_tokens", "completion_tokens", "total_tokens", "last_error_code",
            "last_error_message", "message_id", "first_seen_at", "last_seen_at",
        ),
        "tool_calls": (
            "tool_call_id", "step_id", "run_id", "type", "name", "arguments", "output",
            "requested_at", "submitted_at", "call_index",
        ),
        "messages": (
            "message_id", "thread_id", "run_id", "assistant_id", "role", "status", "text",
            "created_at", "completed_at", "incomplete_reason",
        ),
        "prices": ("model", "input_usd_per_1m", "output_usd_per_1m", "source"),
        "budget_charges": (
            "charge_id", "key_id", "key_alias", "run_id", "model", "reserved_at", "settle_by", "reserved_tokens",
            "reserved_usd", "state", "spent_tokens", "spent_usd", "settled_at", "cancelled_by_budget_at",
        ),
        "budget_limits": (
            "key_id", "budget", "key_alias", "unit", "window_s", "limit_value", "position", "clamp",
            "cancel_on_exhaustion",
        ),
        "responses": (
            "response_id", "run_id", "previous_response_id", "conversation_id", "model", "status", "background",
            "store", "service_tier", "key_id", "created_at", "ended_at", "input_tokens", "cached_tokens",
            "cache_write_tokens", "output_tokens", "reasoning_tokens", "total_tokens", "incomplete_reason",
            "error_code", "error_message", "max_output_tokens", "trace_id", "request_id", "first_seen_at",
            "last_seen_at", "link_kind",
        ),
        "response_items": (
            "item_id", "response_id", "source", "output_index", "type", "status", "role", "call_id", "name",
            "arguments", "output", "text", "added_at", "done_at",
        ),
    }  # fmt: skip


def test_keys_modes_and_types() -> None:
    assert {n: (s.mode, s.key) for n, s in TABLES.items()} == {
        "requests": ("upsert", ("request_id",)),
        "events": ("append", ("request_id", "seq")),
        "event_rows": ("append", ("request_id", "seq")),
        "response_streams": ("append", ("request_id", "seq0")),
        "runs": ("upsert", ("run_id",)),
        "run_steps": ("upsert", ("step_id",)),
        "tool_calls": ("upsert", ("tool_call_id",)),
        "messages": ("upsert", ("message_id",)),
        "prices": ("upsert", ("model",)),
        "budget_charges": ("upsert", ("charge_id",)),
        "budget_limits": ("upsert", ("key_id", "budget")),
        "responses": ("upsert", ("response_id",)),
        "response_items": ("upsert", ("item_id",)),
    }
    for spec in TABLES.values():
        for column, data_type in spec.types.items():
            if column.endswith("_at"):
                assert data_type == "TIMESTAMP WITH TIME ZONE", (spec.name, column)
            if column.endswith("_ms"):
                assert data_type == "DOUBLE", (spec.name, column)
    # Bodies and event data may be invalid JSON: DuckDB's JSON type would refuse them.
    assert TABLES["requests"].types["request_body"] == "VARCHAR"
    assert TABLES["events"].types["data"] == "VARCHAR"


def test_problem_names_what_is_wrong_with_a_row() -> None:
    runs = TABLES["runs"]
    assert runs.problem({"run_id": "run_1", "status": None}) is None
    assert "unknown columns ['colour']" in (runs.problem({"run_id": "r", "colour": 1}) or "")
    assert "key columns ['run_id']" in (runs.problem({"run_id": None}) or "")
    assert "not dict" in (runs.problem(["run_id"]) or "")


def test_schema_markdown_describes_every_table_and_column() -> None:
    doc = schema_markdown()
    for name, spec in TABLES.items():
        assert f"### `{name}`" in doc
        for column in spec.columns:
            assert f"| `{column}` |" in doc
    assert "_runtap_migrations" not in doc
    assert "| `request_id` | VARCHAR | PK |" in doc


def test_schema_markdown_includes_views(con: duckdb.DuckDBPyConnection) -> None:
    migrate(con)
    con.execute("create view finished as select run_id, status from runs")
    con.execute("comment on view finished is 'Runs | that ended.'")
    doc = schema_markdown(con)
    assert "### `finished` (view)" in doc
    assert "Runs | that ended." in doc
    assert "| `status` | VARCHAR |" in doc


def test_doc_command_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy.record.migrations", "--doc"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert out == schema_markdown()


def test_the_schema_doc_is_generated_from_a_migrated_database():
    """`make schema-doc` rewrites it; this fails when a migration changed and the docs did not."""
    import sys
    from pathlib import Path

    root = Path(__file__).parents[3]
    sys.path.insert(0, str(root / "scripts"))
    try:
        from schema_doc import schema_section
    finally:
        sys.path.remove(str(root / "scripts"))
    from proxy.record.migrations import schema_markdown

    assert schema_section((root / "docs" / "schema.md").read_text()) == schema_markdown(), "run `make schema-doc`"


def test_m004_rebuilds_events_without_its_key_keeping_rows_and_comments(
    con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_m004 = [fn for fn in MIGRATIONS if fn.__name__ < "m004"]
    monkeypatch.setattr(migrations, "MIGRATIONS", before_m004)
    migrate(con)
    con.execute("insert into events values ('rq_1', 0, 'thread.run.created', '{}', now(), 'run_1', null),"
                " ('rq_1', 1, 'done', '[DONE]', now(), 'run_1', '\\x00'::blob)")
    keyed = con.execute("select count(*) from duckdb_constraints() where table_name = 'events'"
                        " and constraint_type = 'PRIMARY KEY'").fetchall()
    comments = con.execute("select column_name, comment from duckdb_columns() where table_name = 'events'"
                           " order by column_index").fetchall()
    rows = con.execute("select * from events order by seq").fetchall()
    monkeypatch.setattr(migrations, "MIGRATIONS", MIGRATIONS)
    migrate(con)
    assert keyed == [(1,)]
    assert con.execute("select count(*) from duckdb_constraints() where table_name = 'event_rows'"
                       " and constraint_type = 'PRIMARY KEY'").fetchall() == [(0,)]
    base = "select request_id, seq, event, data, received_at, run_id, raw from events order by seq"
    assert con.execute(base).fetchall() == rows  # m005: the view over it (m006 adds columns after these)
    # The comments kept (m008 adds sequence_number after them).
    assert con.execute("select column_name, comment from duckdb_columns() where table_name = 'event_rows'"
                       " order by column_index").fetchall()[:len(comments)] == comments
    assert table_specs(con)["events"].key == ("request_id", "seq")  # still the dedup key of a replay
