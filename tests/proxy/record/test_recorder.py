from datetime import UTC, datetime

import orjson

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker, Seen
from proxy.exchange import Exchange, Outcome, RunEvent
from proxy.record.recorder import Recorder
from proxy.record.writer import EVENT_COLUMNS
from proxy.testing.replay import replay

AT = datetime(2026, 11, 25, tzinfo=UTC)
RUN = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "completed",
       "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}


class Sink:
    def __init__(self):
        self.rows = []

    def submit(self, table, row):
        self.rows.append((table, row))

    def submit_event(self, row):
        self.rows.append(("events", dict(zip(EVENT_COLUMNS, row, strict=True))))

    def submit_events(self, rows):
        for row in rows:
            self.submit_event(row)

    def table(self, name):
        return [row for table, row in self.rows if table == name]


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
            ex.run_id = "run_1"  # the tap sets it when the run object arrives
            yield RunEvent(1, "thread.run.completed", orjson.dumps(RUN).decode(), RUN, AT, changes=changes)
            yield RunEvent(2, "done", "[DONE]", None, AT)

    replay(recorder, ex, Events(), Outcome.COMPLETED)
    return sink, ex


def test_rows_for_requests_events_and_runs():
    sink, _ = _replay()
    requests = sink.table("requests")
    assert requests[0]["request_body"] == '{"assistant_id":"asst_1"}'
    assert requests[-1]["outcome"] == "completed" and requests[-1]["event_count"] == 0
    events = sink.table("events")
    # thread.created was held until the run id was known, and then carries it.
    assert [(e["seq"], e["event"], e["run_id"]) for e in events] == [
        (0, "thread.created", "run_1"), (1, "thread.run.completed", "run_1"), (2, "done", "run_1")]
    [run] = sink.table("runs")
    assert (run["run_id"], run["status"], run["total_tokens"], run["key_id"]) == ("run_1", "completed", 7, "sha256:k")


def test_record_content_false_keeps_ids_and_usage_only():
    sink, _ = _replay(record_content=False)
    assert all(row["request_body"] is None for row in sink.table("requests") if "request_body" in row)
    assert all(e["data"] is None for e in sink.table("events"))
    assert sink.table("runs")[0]["total_tokens"] == 7


def test_raw_frames_are_event_rows_held_until_the_run_is_known():
    sink, tracker = Sink(), RunTracker()
    recorder = Recorder(sink, tracker, record_content=True)
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    recorder.raw_frames(ex, [(0, "thread.message.delta", '{"id":"msg_1"}', AT)])
    assert sink.table("events") == []  # no run id yet: held
    ex.run_id = "run_1"
    recorder.raw_frames(ex, [(1, "thread.message.delta", '{"id":"msg_1","x":1}', AT)])
    assert [(e["seq"], e["data"], e["run_id"], e["received_at"]) for e in sink.table("events")] == [
        (0, '{"id":"msg_1"}', "run_1", AT), (1, '{"id":"msg_1","x":1}', "run_1", AT)]


def test_raw_frames_without_content_keep_no_data():
    sink = Sink()
    recorder = Recorder(sink, RunTracker(), record_content=False)
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", "sha256:k", b"{}")
    ex.run_id = "run_1"
    recorder.raw_frames(ex, [(0, "thread.message.delta", '{"id":"msg_1"}', AT)])
    assert [(e["event"], e["data"]) for e in sink.table("events")] == [("thread.message.delta", None)]
