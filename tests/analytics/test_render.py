"""Printing results: the aligned table, JSON, CSV, and the run timeline."""

from __future__ import annotations

import json

import pytest

from analytics.db import Result
from analytics.render import as_timeline, cell, duration, number, render, timestamp

RESULT = Result(
    ["name", "n", "cost", "at", "note"],
    ["VARCHAR", "BIGINT", "DOUBLE", "TIMESTAMP WITH TIME ZONE", "VARCHAR"],
    [["alpha", 3, 0.000150, "2026-11-16T08:02:00.123456+00:00", None],
     ["b", 12345, 1234.56789, "2026-11-16T23:59:59+00:00", "two\nlines, \"quoted\""]],
)


def test_table_aligns_columns_right_aligns_numbers_and_counts_rows():
    assert render(RESULT) == (
        "name       n     cost  at                   note\n"
        "-----  -----  -------  -------------------  --------------------\n"
        "alpha      3  0.00015  2026-11-16 08:02:00\n"
        "b      12345  1234.57  2026-11-16 23:59:59  two\\nlines, \"quoted\"\n"
        "(2 rows)\n")


def test_an_empty_or_truncated_table_says_so():
    assert render(Result(["x"], ["INTEGER"], [])) == "x\n-\n(0 rows)\n"
    assert render(Result(["x"], ["INTEGER"], [[1]], truncated=True)).endswith("(1 row, truncated)\n")


def test_json_is_one_array_of_objects_keyed_by_column():
    assert json.loads(render(RESULT, "json")) == [
        {"name": "alpha", "n": 3, "cost": 0.00015, "at": "2026-11-16T08:02:00.123456+00:00", "note": None},
        {"name": "b", "n": 12345, "cost": 1234.56789, "at": "2026-11-16T23:59:59+00:00",
         "note": "two\nlines, \"quoted\""}]


def test_csv_has_a_header_and_keeps_values_whole():
    assert render(RESULT, "csv") == (
        "name,n,cost,at,note\n"
        "alpha,3,0.00015,2026-11-16T08:02:00.123456+00:00,\n"
        'b,12345,1234.56789,2026-11-16T23:59:59+00:00,"two\nlines, ""quoted"""\n')


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (0.000150, "0.00015"), (22.566, "22.566"), (75.85639999999998, "75.8564"), (4000.0, "4000"),
    (1234567.8, "1234568"), (-3.25, "-3.25"), (1e-12, "1e-12"), (2e15, "2e+15"),
])
def test_numbers_keep_six_significant_digits(value, text):
    assert number(value) == text


@pytest.mark.parametrize(("ms", "text"), [(None, "?"), (0.0, "0 ms"), (350.4, "350 ms"), (1500, "1.5 s"),
                                          (12345, "12.3 s"), (125_000, "2 min 5 s")])
def test_durations_read_naturally(ms, text):
    assert duration(ms) == text


def test_cells_are_short_and_on_one_line():
    assert cell("x" * 150).endswith("…") and len(cell("x" * 150)) == 100
    assert cell(True) == "true" and cell({"a": [1]}) == '{"a": [1]}' and cell(None) == ""
    assert timestamp("2026-11-16T10:02:00+02:00") == "2026-11-16 08:02:00"
    assert timestamp("not a time") == "not a time"


def test_the_timeline_reads_top_down():
    columns = ["kind", "step", "item", "id", "status", "started_at", "offset_ms", "duration_ms", "prompt_tokens",
               "completion_tokens", "total_tokens", "cost_usd", "name", "detail", "output", "client_ms", "error"]
    rows = [
        ["run", 0, 0, "run_1", "failed", "2026-11-16T08:00:00+00:00", 0.0, 9000.0, 30, 5, 35, 0.0001, "asst_a",
         "gpt-4o", None, 1200.0, "server_error: boom"],
        ["step", 1, 0, "step_1", "completed", "2026-11-16T08:00:02+00:00", 2000.0, 3000.0, 20, 3, 23, None,
         "tool_calls", None, None, None, None],
        ["tool_call", 1, 1, "call_1", "submitted", "2026-11-16T08:00:02+00:00", None, None, None, None, None, None,
         "lookup", '{"id":1}', "line one\nline two", 1200.0, None],
        ["step", 2, 0, "step_2", "failed", "2026-11-16T08:00:06+00:00", 6000.0, 0.0, None, None, None, None,
         "message_creation", None, None, None, "server_error: boom"],
    ]
    assert as_timeline(Result(columns, [], rows)) == (
        "run run_1  failed\n"
        "  assistant asst_a · model gpt-4o · created 2026-11-16 08:00:00 UTC\n"
        "  duration 9 s · client tool time 1.2 s · 35 tokens (30 prompt + 5 completion) · $0.0001\n"
        "  server_error: boom\n"
        "\n"
        "  +2 s  step 1  tool_calls  completed  3 s  23 tokens (20 prompt + 3 completion)  step_1\n"
        "      tool call lookup  submitted  client tool time 1.2 s  call_1\n"
        '        arguments {"id":1}\n'
        "        output    line one\n"
        "                  line two\n"
        "  +6 s  step 2  message_creation  failed  0 ms  no usage  step_2\n"
        "      server_error: boom\n")
