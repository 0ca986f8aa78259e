"""The upstream misbehaves: what the client sees, and what is recorded.

Runs through the real openai SDK where the SDK can express the case; the raw bytes the client got
are compared with the exact bytes the fake wrote (`fake.responses[i].body`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx2
import openai
import pytest

from proxy.testing.faults import Fault, Malformed
from proxy.testing.scripts import Script
from tests.conftest import KEY_ID
from tests.faults.conftest import Rig, StartRig

# What the SDK raises when runtap aborts a response that had begun (contract §4).
ABORTED = (openai.APIConnectionError, httpx2.RemoteProtocolError, httpx2.ReadError)


async def raw_stream(rig: Rig) -> bytes:
    """Create a thread and run, streamed, through the SDK; the body bytes exactly as received."""
    async with rig.sdk().beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        return b"".join([chunk async for chunk in response.iter_bytes()])


# -- no response -----------------------------------------------------------------------------------


async def test_refused_is_a_502_and_recorded_as_upstream_error(start_rig: StartRig, unused_tcp_port: int):
    rig = await start_rig(upstream=f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(openai.APIStatusError) as raised:
        await rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc")
    assert raised.value.status_code == 502
    assert raised.value.body == {"message": raised.value.body["message"], "type": "upstream_error", "param": None,
                                 "code": "upstream_unreachable"}
    rec = await rig.finish()
    status, outcome, error, key_id = rec.one("select status, outcome, error, key_id from requests")
    assert (status, outcome, key_id) == (502, "upstream_error", KEY_ID)
    assert error.startswith("ClientConnectorError")
    assert rec.q("select count(*) from runs") == [(0,)]


async def test_reset_before_headers_is_a_502(rig: Rig):
    assert rig.fake is not None
    rig.fake.fault(Fault(path="/threads/runs", reset_before_headers=True))
    with pytest.raises(openai.APIStatusError) as raised:
        await rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc", stream=True)
    assert raised.value.status_code == 502 and raised.value.body["code"] == "upstream_unreachable"
    rec = await rig.finish()
    status, outcome, error = rec.one("select status, outcome, error from requests")
    assert (status, outcome) == (502, "upstream_error") and "Disconnected" in error
    assert rec.q("select count(*) from events") == [(0,)]


@pytest.mark.parametrize("cut", [b"HTTP/1.1 2", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-st",
                                 b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"])
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_cut_inside_the_status_line_or_headers_is_a_502(start_rig: StartRig, raw_upstream, cut: bytes,
                                                              reset: bool):
    upstream = await raw_upstream(cut, reset=reset)
    rig = await start_rig(upstream=upstream.url)
    with pytest.raises(openai.APIStatusError) as raised:
        await rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc", stream=True)
    assert raised.value.status_code == 502 and raised.value.body["code"] == "upstream_unreachable"
    assert len(upstream.requests) == 1
    rec = await rig.finish()
    assert rec.one("select status, outcome from requests") == (502, "upstream_error")


async def test_silence_before_headers_is_a_504_after_read_s(start_rig: StartRig, fake, fake_server):
    rig = await start_rig(upstream=str(fake_server.make_url("")).rstrip("/"), timeouts={"read_s": 0.3})
    fake.fault(Fault(path="/threads/runs", stall_before_s=3))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        await rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc", stream=True)
    elapsed = time.monotonic() - started
    assert raised.value.status_code == 504
    assert raised.value.body == {"message": "the upstream sent no response within 0.3 s", "type": "upstream_error",
                                 "param": None, "code": "upstream_timeout"}
    assert 0.3 <= elapsed < 2.5  # the timeout fired, not the upstream's late answer
    rec = await rig.finish()
    assert rec.one("select status, outcome, error from requests") == (504, "upstream_error", "upstream timeout")


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback port that never completes a handshake: a listener with a full accept queue, so
    the kernel drops further SYNs and a connect hangs until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):  # fill the backlog (its real size is the kernel's rounding of 0)
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_a_connect_that_hangs_is_a_504_after_connect_s(start_rig: StartRig, blackhole: str):
    rig = await start_rig(upstream=blackhole, timeouts={"connect_s": 0.3, "read_s": 30})
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        await rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc", stream=True)
    assert time.monotonic() - started < 5  # connect_s fired, not read_s
    assert raised.value.status_code == 504
    assert raised.value.body == {"message": "the upstream sent no response within 0.3 s", "type": "upstream_error",
                                 "param": None, "code": "upstream_timeout"}
    rec = await rig.finish()
    assert rec.one("select status, outcome, error from requests") == (504, "upstream_error",
                                                                      "upstream connect timeout")


# -- the body breaks off ----------------------------------------------------------------------------


async def test_reset_mid_stream_makes_the_sdk_raise_and_keeps_what_was_relayed(rig: Rig):
    assert rig.fake is not None
    rig.fake.enqueue(Script.text("a fairly long answer " * 10))
    rig.fake.fault(Fault(path="/threads/runs", reset_after_bytes=3000))
    with pytest.raises(ABORTED):
        async with rig.sdk().beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
            await stream.until_done()
    sent = rig.fake.responses[0]
    rec = await rig.finish()
    outcome, error, response_bytes = rec.one("select outcome, error, response_bytes from requests")
    assert outcome == "truncated" and error and response_bytes == 3000 == len(sent.body)
    # Every frame that arrived whole is an event row, in order; the cut one is the last, incomplete.
    whole = sent.body.count(b"\n\n")
    events = rec.q("select seq, event, raw is not null from events order by seq")
    assert [seq for seq, *_ in events] == list(range(len(events)))
    assert len(events) in (whole, whole + 1)
    assert all(not malformed for *_, malformed in events[:whole])
    [(status,)] = rec.q("select status from runs")
    assert status in ("queued", "in_progress")  # never a terminal status the upstream did not send
    assert rec.q("select count(*) from events where event = 'done'") == [(0,)]


async def test_clean_eof_before_done_is_relayed_as_is_and_recorded_truncated(rig: Rig):
    assert rig.fake is not None
    rig.fake.fault(Fault(path="/threads/runs", clean_eof_after_events=3))
    assert await raw_stream(rig) == rig.fake.responses[0].body
    rec = await rig.finish()
    assert rec.q("select outcome, error, event_count from requests") == [
        ("truncated", "stream ended before [DONE]", 3)]


async def test_silence_mid_stream_truncates_after_read_s(start_rig: StartRig, fake, fake_server):
    rig = await start_rig(upstream=str(fake_server.make_url("")).rstrip("/"), timeouts={"read_s": 0.3})
    fake.fault(Fault(path="/threads/runs", stall_after_bytes=(800, 5.0)))
    started = time.monotonic()
    with pytest.raises(ABORTED):
        await raw_stream(rig)
    assert time.monotonic() - started < 3.0  # read_s fired; the upstream's stall would take 5 s
    rec = await rig.finish()
    status, outcome, error, response_bytes = rec.one("select status, outcome, error, response_bytes from requests")
    assert (status, outcome, response_bytes) == (200, "truncated", 800)
    assert "Timeout" in error
    assert rec.q("select count(*) from events where event = 'done'") == [(0,)]


async def test_slow_drip_arrives_whole_and_unbuffered_and_read_s_is_per_chunk(start_rig: StartRig, fake,
                                                                             fake_server):
    # 40-byte pieces every 50 ms: the whole stream takes far longer than read_s, no gap does.
    rig = await start_rig(upstream=str(fake_server.make_url("")).rstrip("/"), timeouts={"read_s": 0.4})
    fake.enqueue(Script.text("drip " * 6, chunks=6))
    fake.fault(Fault(path="/threads/runs", chunk_size=40, drip_delay_s=0.05))
    got: list[tuple[float, bytes]] = []
    started = time.monotonic()
    async with rig.sdk().beta.threads.with_streaming_response.create_and_run(
        assistant_id="asst_abc", stream=True,
    ) as response:
        async for chunk in response.iter_bytes():
            got.append((time.monotonic(), chunk))
    total = time.monotonic() - started
    sent = fake.responses[0]
    assert b"".join(c for _, c in got) == sent.body
    assert total > 0.4 * 2
    # Unbuffered: the first bytes reached the client long before the upstream finished.
    assert got[0][0] - started < total / 2
    rec = await rig.finish()
    assert rec.one("select outcome, event_count, response_bytes from requests") == (
        "completed", sent.body.count(b"\n\n"), len(sent.body))
    assert rec.q("select status from runs") == [("completed",)]


# -- odd content -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["invalid_json", "bare_json_line", "no_blank_lines", "no_final_blank_line",
                                  "done_without_data", "unknown_event", "error_event", "crlf", "split_data"])
async def test_malformed_sse_is_relayed_byte_exact_and_every_frame_recorded(rig: Rig, kind: Malformed):
    assert rig.fake is not None
    rig.fake.fault(Fault(path="/threads/runs", malformed=kind))
    body = await raw_stream(rig)
    sent = rig.fake.responses[0]
    assert body == sent.body
    rec = await rig.finish()
    [(outcome, event_count)] = rec.q("select outcome, event_count from requests")
    rows = rec.q("select seq, event, data, raw from events order by seq")
    assert [r[0] for r in rows] == list(range(event_count))
    # What was recorded rebuilds the frames the upstream sent: raw bytes when malformed, else fields.
    frames = [r[3] if r[3] is not None else f"event: {r[1]}\ndata: {r[2]}".encode() for r in rows]
    normalised = sent.body.replace(b"\r\n", b"\n")
    pos = 0
    for frame in frames:
        frame = frame.replace(b"\r\n", b"\n")
        found = normalised.find(frame.splitlines()[-1], pos)
        assert found >= 0, (kind, frame)
        pos = found
    if kind in ("crlf", "split_data"):  # valid variants: recorded like a clean stream
        assert outcome == "completed"
        assert all(r[3] is None for r in rows)
        assert rec.q("select status from runs") == [("completed",)]
    if kind == "invalid_json":
        # The run's last event cannot be parsed: kept verbatim, the run is not called completed.
        [(data,)] = rec.q("select data from events where event = 'thread.run.completed'")
        assert data.endswith("}}")
        assert rec.q("select status from runs") == [("in_progress",)]
    if kind in ("no_final_blank_line", "error_event", "no_blank_lines"):
        assert outcome == "truncated"  # no [DONE]: the stream never finished


async def test_a_single_very_large_event_passes_whole_and_is_recorded_whole(rig: Rig):
    assert rig.fake is not None
    size = 4 * 1024 * 1024
    rig.fake.fault(Fault(path="/threads/runs", huge_event_bytes=size))
    body = await raw_stream(rig)
    assert body == rig.fake.responses[0].body and len(body) > size
    rec = await rig.finish()
    assert rec.one("select outcome from requests") == ("completed",)
    [(length,)] = rec.q("select max(length(data)) from events")
    assert length > size
    assert rec.q("select status from runs") == [("completed",)]


@pytest.mark.parametrize(("status", "error"), [(429, openai.RateLimitError), (500, openai.InternalServerError),
                                               (502, openai.InternalServerError), (503, openai.InternalServerError)])
async def test_upstream_error_statuses_pass_through_untouched(rig: Rig, status: int, error: type[Exception]):
    assert rig.fake is not None
    rig.fake.fault(Fault(path="/threads/runs", status=status, retry_after="7",
                         headers={"x-should-retry": "false", "x-ratelimit-remaining-requests": "0"}))
    with pytest.raises(error) as raised:
        await rig.sdk().beta.threads.create_and_run(assistant_id="asst_abc", stream=True)
    sent = rig.fake.responses[0]
    got = raised.value.response  # type: ignore[attr-defined]
    assert got.status_code == status
    assert got.content == sent.body
    for name in ("retry-after", "x-should-retry", "x-ratelimit-remaining-requests", "x-request-id",
                 "content-type", "openai-organization"):
        assert got.headers[name] == sent.headers[name], name
    rec = await rig.finish()
    assert rec.one("select status, outcome, streamed, response_body from requests") == (
        status, "completed", False, sent.body.decode())


async def test_a_400_json_error_to_a_stream_request_is_passed_through_and_recorded(rig: Rig):
    assert rig.fake is not None
    rig.fake.fault(Fault(path="/threads/runs", status=400, error_message="Invalid 'model': no such model.",
                         error_code="model_not_found"))
    with pytest.raises(openai.BadRequestError) as raised:
        async with rig.sdk().beta.threads.create_and_run_stream(assistant_id="asst_abc", model="nope") as stream:
            await stream.until_done()
    assert raised.value.body == {"message": "Invalid 'model': no such model.", "type": "invalid_request_error",
                                 "param": None, "code": "model_not_found"}
    sent = rig.fake.responses[0]
    rec = await rig.finish()
    assert rec.one("select status, outcome, streamed, content_type, response_body, event_count from requests") == (
        400, "completed", False, "application/json", sent.body.decode(), 0)
    assert rec.q("select count(*) from events") == [(0,)]
    assert rec.q("select count(*) from runs") == [(0,)]


async def test_many_faults_at_once_leave_every_other_stream_intact(rig: Rig):
    """Faults on some exchanges must not disturb the exchanges running beside them."""
    assert rig.fake is not None
    n = 6
    for i in range(n):
        rig.fake.enqueue(Script.text(f"answer {i} " * 5, chunks=5))
    for i in range(n):
        rig.fake.fault(Fault(path="/threads/runs", drip_delay_s=0.02,
                             reset_after_bytes=1500 if i % 2 else None))
    results = await asyncio.gather(*(raw_stream(rig) for _ in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == n // 2 and all(isinstance(e, ABORTED) for e in failed)
    complete = sorted(r.body for r in rig.fake.responses if r.complete)
    assert sorted(r for r in results if isinstance(r, bytes)) == complete
    rec = await rig.finish()
    assert sorted(rec.q("select outcome, count(*) from requests group by all")) == [
        ("completed", n // 2), ("truncated", n // 2)]
    assert rec.q("select status, count(*) from runs where status = 'completed' group by all") == [
        ("completed", n // 2)]
