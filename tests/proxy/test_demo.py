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


def test_demo_prints_the_conversation_and_records_two_completed_runs(tmp_path):
    db = tmp_path / "demo.duckdb"
    runtap = Path(sys.executable).with_name("runtap")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTAP_", "OTEL_"))}
    result = subprocess.run([str(runtap), "demo", "--db", str(db)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "user: What is the weather like in San Francisco?\n" in out
    assert f"  [model asks for get_current_weather({ARGUMENTS})]\n" in out
    assert "  [client runs the tool and submits its output]\n" in out
    assert "assistant: It is currently 18°C and sunny in San Francisco.\n" in out
    assert "user (a polled run): Any ideas for a quick break?\n" in out
    assert f"The recording is the DuckDB file {db}" in out
    assert "Traceback" not in result.stderr and "DeprecationWarning" not in result.stderr
    assert DEMO_KEY not in out + result.stderr

    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("select run_id, status, tool_rounds, prompt_tokens, completion_tokens, total_tokens, "
                           "key_id from runs order by first_seen_at").fetchall()
        assert [row[1:] for row in runs] == [
            ("completed", 1, 220, 27, 247, fingerprint(DEMO_KEY)),  # the tool-calling run
            ("completed", 0, 73, 19, 92, fingerprint(DEMO_KEY)),  # the polled run
        ]
        tool_run = runs[0][0]
        [(run_id, name, arguments, output, step_type, waited)] = con.execute(
            "select c.run_id, c.name, c.arguments, c.output, s.type, c.submitted_at >= c.requested_at "
            "from tool_calls c join run_steps s using (step_id)").fetchall()
        assert (run_id, name, arguments, output, step_type, waited) == (
            tool_run, "get_current_weather", ARGUMENTS, OUTPUT, "tool_calls", True)
        assert con.execute("select text from messages where role = 'assistant' and run_id = ?",
                           [tool_run]).fetchall() == [("It is currently 18°C and sunny in San Francisco.",)]
        assert con.execute("select count(*), count(*) filter (where outcome = 'completed' and status = 200) "
                           "from requests").fetchone() == (6, 6)
        assert con.execute("select count(*) from events where event = 'done'").fetchall() == [(2,)]
    finally:
        con.close()
