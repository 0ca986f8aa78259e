from datetime import UTC, datetime

import orjson

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker, Seen
from proxy.exchange import Exchange, Outcome, RunEvent, StreamBytes
from proxy.record.recorder import Recorder
from proxy.record.streams import stream_rows
from proxy.record.writer import EVENT_COLUMNS
from proxy.testing.replay import replay

AT = datetime(2026, 11, 25, tzinfo=UTC)
RUN = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "completed",
       "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


class Sink:
    """The writer's side, with a stream's bytes made rows as its thread makes them (streams.py)."""

    def __init__(self):
        self.rows = []

    def submit(self, table, row):
        self.rows.append((table, row))

    def submit_stream(self, request_id, run_id, segment, *, record_content=True):
        row, events = stream_rows(request_id, run_id, segment, record_content=record_content)
        if row is not None:
            self.submit("response_streams", row)
        for event in events:
            self.submit("events", dict(zip(EVENT_COLUMNS, event, strict=True)))

    def table(self, name):
        return [row for table, row in self.rows if table == name]


FIRST = b"event: thread.created\ndata: {\"id\":\"thread_1\",\"object\":\"thread\"}\n\n"
STREAM = (b"event: thread.created\ndata: {\"id\":\"thread_1\",\"object\":\"thread\"}\n\n"
          + b"event: thread.run.completed\ndata: " + orjson.dumps(RUN) + b"\n\n"
          + b"event: done\ndata: [DONE]\n\n")


def _replay(record_content=True):
    sink, tracker = Sink(), RunTracker()
    recorder = Recorder(sink, tracker, record_content=record_content)
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k",
                  b'{"assistant_id":"asst_1"}')
    ex.status = 200
    thread = RunEvent(0, "thread.created", '{"id":"thread_1","object":"thread"}', {"id": "thread_1"}, AT)
    changes = tuple(tracker.apply(RUN, Seen(ex.request_id, ex.key_id, None, AT)))

    class Events:
        def __iter__(self):
            yield thread
            recorder.stream_bytes(ex, StreamBytes(0, [FIRST], [AT.timestamp()], False))
            ex.run_id = "run_1"  # the tap sets it when the run object arrives
            yield RunEvent(1, "thread.run.completed", orjson.dumps(RUN).decode(), RUN, AT, changes=changes)
            yield RunEvent(2, "done", "[DONE]", None, AT)
            recorder.stream_bytes(ex, StreamBytes(1, [STREAM[len(FIRST):]], [AT.timestamp() + 1], True))

    replay(recorder, ex, Events(), Outcome.COMPLETED)
    return sink, ex


def test_rows_for_requests_events_and_runs():
    sink, _ = _replay()
    requests = sink.table("requests")
    assert requests[0]["request_body"] == '{"assistant_id":"asst_1"}'
    assert requests[-1]["outcome"] == "completed" and requests[-1]["event_count"] == 0
    # The segment handed over before the run id was known was held, and then carries it. Canonical
    # framing: one row of bytes each, which the events view splits.
    assert [(r["seq0"], r["run_id"], r["body"].encode(), r["chunk_times"]) for r in sink.table("response_streams")] == [
        (0, "run_1", FIRST, [AT.timestamp()]), (1, "run_1", STREAM[len(FIRST):], [AT.timestamp() + 1])]
    [run] = sink.table("runs")
    assert (run["run_id"], run["status"], run["total_tokens"], run["key_id"]) == ("run_1", "completed", 7, "sha256:k")


def test_record_content_false_keeps_ids_and_usage_only():
    sink, _ = _replay(record_content=False)
    assert all(row["request_body"] is None for row in sink.table("requests") if "request_body" in row)
    assert sink.table("response_streams") == []
    events = sink.table("events")
    assert [(e["event"], e["data"], e["run_id"]) for e in events] == [
        ("thread.created", None, "run_1"), ("thread.run.completed", None, "run_1"), ("done", None, "run_1")]
    assert sink.table("runs")[0]["total_tokens"] == 7


def test_a_stream_is_held_until_the_run_is_known_or_it_ends():
    sink, tracker = Sink(), RunTracker()
    recorder = Recorder(sink, tracker, record_content=True)
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    recorder.stream_bytes(ex, StreamBytes(0, [b"data: {}\n\n"], [AT.timestamp()], False))
    assert sink.rows == []  # no run id yet: held
    recorder.stream_bytes(ex, StreamBytes(1, [b"data: [DONE]\n\n"], [AT.timestamp()], True))
    # The end: written without a run id rather than never.
    assert [(r["seq0"], r["run_id"]) for r in sink.table("response_streams")] == [(0, None), (1, None)]


def test_a_malformed_stream_is_event_rows_with_its_raw_frame():
    sink = Sink()
    recorder = Recorder(sink, RunTracker(), record_content=True)
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    ex.run_id = "run_1"
    recorder.stream_bytes(ex, StreamBytes(0, [b"event: thread.run.completed\n{\"id\": 1}\n\n"], [AT.timestamp()], True))
    assert sink.table("response_streams") == []
    [event] = sink.table("events")
    assert (event["event"], event["data"], event["raw"], event["received_at"]) == (
        "thread.run.completed", "", b"event: thread.run.completed\n{\"id\": 1}\n", AT)
