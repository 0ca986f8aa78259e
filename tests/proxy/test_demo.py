"""`runtap demo` (`make demo`) as a user runs it: the installed command, a fresh DuckDB file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

from proxy.demo import DEMO_KEY
from proxy.keys import fingerprint

ARGUMENTS = '{"location":"San Francisco, CA","unit":"celsius"}'
OUTPUT = '{"temperature": 18, "unit": "celsius"}'


def test_demo_prints_the_conversations_and_records_a_turn_on_each_api(tmp_path):
    db = tmp_path / "demo.duckdb"
    runtap = Path(sys.executable).with_name("runtap")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTAP_", "OTEL_"))}
    result = subprocess.run([str(runtap), "demo", "--db", str(db)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("user: What is the weather like in San Francisco?\n") == 2  # Responses, then Assistants
    assert out.count(f"  [model asks for get_current_weather({ARGUMENTS})]\n") == 2
    assert "  [client runs the tool and sends its output, previous_response_id chaining the turn]\n" in out
    assert out.count("assistant: It is currently 18°C and sunny in San Francisco.\n") == 2
    assert "Chat Completions\nuser: Explain deep learning in one sentence.\n" in out
    assert "  [client runs the tool and submits its output]\n" in out
    assert "assistant: It is currently 18°C and sunny in San Francisco.\n" in out
    assert "user (a polled run): Any ideas for a quick break?\n" in out
    assert f"The recording is the DuckDB file {db}" in out
    assert "Traceback" not in result.stderr and "DeprecationWarning" not in result.stderr
    assert DEMO_KEY not in out + result.stderr

    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("select run_id, api, status, tool_rounds, key_id from runs order by first_seen_at"
                           ).fetchall()
        assert [row[1:] for row in runs] == [
            ("responses", "completed", 1, fingerprint(DEMO_KEY)),  # the Responses tool turn
            ("chat", "completed", 0, fingerprint(DEMO_KEY)),
            ("assistants", "completed", 1, fingerprint(DEMO_KEY)),  # the tool-calling run
            ("assistants", "completed", 0, fingerprint(DEMO_KEY)),  # the polled run
        ]
        assert con.execute("select prompt_tokens, completion_tokens, total_tokens from runs where api = 'assistants'"
                           " order by first_seen_at").fetchall() == [(220, 27, 247), (73, 19, 92)]
        turn, tool_run = runs[0][0], runs[2][0]
        assert con.execute("select count(*), count(distinct run_id), min(run_id) from responses").fetchone() == (
            2, 1, turn)
        assert con.execute("select text from response_items where type = 'message'").fetchall() == [
            ("It is currently 18°C and sunny in San Francisco.",)]
        assert con.execute("select name, arguments, output from tool_calls where run_id = ?", [turn]).fetchall() == [
            ("get_current_weather", ARGUMENTS, OUTPUT)]
        [(run_id, name, arguments, output, step_type, waited)] = con.execute(
            "select c.run_id, c.name, c.arguments, c.output, s.type, c.submitted_at >= c.requested_at "
            "from tool_calls c join run_steps s using (step_id)").fetchall()
        assert (run_id, name, arguments, output, step_type, waited) == (
            tool_run, "get_current_weather", ARGUMENTS, OUTPUT, "tool_calls", True)
        assert con.execute("select text from messages where role = 'assistant' and run_id = ?",
                           [tool_run]).fetchall() == [("It is currently 18°C and sunny in San Francisco.",)]
        assert con.execute("select count(*), count(*) filter (where outcome = 'completed' and status = 200) "
                           "from requests").fetchone() == (9, 9)
        assert con.execute("select count(*) from events where event = 'done'").fetchall() == [(2,)]
    finally:
        con.close()
