"""The client leaves, at every phase of an exchange: the run is still recorded to its end.

runtap keeps reading the upstream after the client is gone (bounded by `client_gone_drain_s`),
because the run goes on upstream whether anyone listens or not, and its tokens are spent.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.testing.faults import Fault
from proxy.testing.scripts import Script
from tests.faults.conftest import Rig, StartRig, poll


async def leave_after_first_chunk(rig: Rig, **kwargs: object) -> bytes:
    async with rig.sdk().beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True, **kwargs,  # type: ignore[arg-type]
    ) as response:
        async for chunk in response.iter_bytes():
            return chunk  # leaving the block closes the connection mid-stream
    raise AssertionError("no chunk")


def assert_recorded_to_the_end(rec, script: Script) -> None:
    assert rec.q("select outcome, error from requests") == [("client_gone", None)]
    usage = script.total_usage()
    assert rec.q("select status, prompt_tokens, completion_tokens, total_tokens from runs") == [
        ("completed", usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])]
    assert rec.q("select event, data from events order by seq desc limit 1") == [("done", "[DONE]")]
    # The budget ledger is settled too: the run's charge at its final usage, once.
    assert rec.q("select state, spent_tokens from budget_charges") == [("settled", usage["total_tokens"])]


async def test_client_gone_before_the_upstream_answers(rig: Rig):
    assert rig.fake is not None
    script = Script.text("late answer", prompt_tokens=11, completion_tokens=3)
    rig.fake.enqueue(script)
    rig.fake.fault(Fault(path="/threads/runs", stall_before_s=0.5))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc", stream=True), 0.15)
    # The upstream has not even answered yet: the exchange is still running.
    assert rig.parts.inflight
    rec = await rig.finish()
    assert_recorded_to_the_end(rec, script)
    [sent] = rig.fake.responses
    assert sent.complete  # runtap read it all
    assert rec.q("select count(*) from events") == [(len(sent.events),)]


async def test_client_gone_right_after_the_headers(rig: Rig):
    assert rig.fake is not None
    script = Script.text("an answer nobody reads", prompt_tokens=12, completion_tokens=4, chunks=4)
    rig.fake.enqueue(script)
    rig.fake.fault(Fault(path="/threads/runs", stall_after_bytes=(1, 0.4)))
    async with rig.sdk().beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        assert response.status_code == 200  # headers in; leave without reading the body
    rec = await rig.finish()
    assert_recorded_to_the_end(rec, script)
    assert rec.q("select count(*) from events") == [(len(rig.fake.responses[0].events),)]


async def test_client_gone_mid_stream(rig: Rig):
    assert rig.fake is not None
    script = Script.text("word " * 40, prompt_tokens=20, completion_tokens=40, chunks=40)
    rig.fake.enqueue(script)
    rig.fake.fault(Fault(path="/threads/runs", drip_delay_s=0.01))
    await leave_after_first_chunk(rig)
    rec = await rig.finish()
    assert_recorded_to_the_end(rec, script)
    [(text,)] = rec.q("select text from messages")
    assert text == "word " * 40


async def test_client_gone_around_requires_action_then_again_mid_continuation(rig: Rig):
    """Before the pause reaches the client, the run is still recorded up to `requires_action` with
    its tool call; a client that submits outputs and leaves again still gets the run recorded done."""
    assert rig.fake is not None
    script = Script.tool_then_text(tool_prompt_tokens=80, tool_completion_tokens=18, prompt_tokens=120,
                                   completion_tokens=9)
    rig.fake.enqueue(script)
    rig.fake.fault(Fault(path="/threads/runs", drip_delay_s=0.02))
    await leave_after_first_chunk(rig)
    await poll(lambda: rig.fake.responses and rig.fake.responses[0].complete)
    await rig.parts.flush()
    run_id = next(iter(rig.parts.tracker.runs))
    run = rig.parts.tracker.runs[run_id]
    assert run.status == "requires_action"
    [call_id] = run.pending_call_ids

    rig.fake.fault(Fault(path="/submit_tool_outputs", drip_delay_s=0.02))
    async with rig.sdk().beta.threads.runs.with_streaming_response.submit_tool_outputs(
        thread_id=run.thread_id, run_id=run_id, stream=True,
        tool_outputs=[{"tool_call_id": call_id, "output": "18C"}],
    ) as response:
        async for _ in response.iter_bytes():
            break
    rec = await rig.finish()
    assert rec.q("select outcome, count(*) from requests group by all") == [("client_gone", 2)]
    usage = script.total_usage()
    assert rec.q("select status, total_tokens, tool_rounds, request_count from runs") == [
        ("completed", usage["total_tokens"], 1, 2)]
    assert rec.q("select tool_call_id, name, output from tool_calls") == [(call_id, "get_current_weather", "18C")]
    assert rec.q("select count(*) from events where event = 'done'") == [(2,)]
    assert rec.q("select state, spent_tokens from budget_charges") == [("settled", usage["total_tokens"])]


async def test_draining_after_the_client_left_is_bounded_by_client_gone_drain_s(start_rig: StartRig, fake,
                                                                                 fake_server):
    rig = await start_rig(upstream=str(fake_server.make_url("")).rstrip("/"),
                          timeouts={"client_gone_drain_s": 0.6})
    fake.enqueue(Script.text("slow " * 30, chunks=30))
    fake.fault(Fault(path="/threads/runs", drip_delay_s=0.1))  # about 3.5 s of stream
    started = time.monotonic()
    await leave_after_first_chunk(rig)
    rec = await rig.finish()
    assert time.monotonic() - started < 2.5  # runtap stopped reading after the drain window
    outcome, event_count = rec.one("select outcome, event_count from requests")
    assert outcome == "client_gone"
    assert 0 < event_count < 30
    # What can be lost: the rest of the run. What was read is kept, and the run is not called done.
    assert rec.q("select status from runs") == [("in_progress",)]
    assert rec.q("select count(*) from events") == [(event_count,)]
