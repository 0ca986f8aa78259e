from datetime import UTC, datetime

from proxy.apis import classify
from proxy.apis.chat import API
from proxy.exchange import Exchange, Outcome
from proxy.runs import RunState, RunStore, Seen

AT = datetime(2026, 12, 7, tzinfo=UTC)


def test_chunks_and_bodies_fold_and_other_bodies_change_nothing() -> None:
    store = RunStore()
    ex = Exchange(classify("POST", "/v1/chat/completions"), "POST", "/v1/chat/completions", "", "sha256:k",
                  b'{"messages":[{"role":"user","content":"hi"}]}')
    ex.request_json = {"messages": [{"role": "user", "content": "hi"}]}
    API.request_changes(ex, store, AT)
    seen = Seen(ex.request_id, "sha256:k", None, AT)
    assert API.fold(ex, {"error": {"message": "bad", "type": "invalid_request_error"}}, store, seen) == []
    chunk = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    assert any(isinstance(s, RunState) for s in API.fold(ex, chunk, store, seen))
    assert ex.run_id == "chatcmpl-9"
    ex.streamed = True
    [*_, run] = API.exchange_ended(ex, store, AT, Outcome.TRUNCATED)
    assert (run.run_id, run.status) == ("chatcmpl-9", "truncated")
    assert API.delta_events == frozenset()  # data-only frames: nothing to tell a delta by (§9)


# -- a real stream of the fake upstream, through a real Tap, in any split --------------------------
def _fake_stream(script, body: dict) -> bytes:
    import asyncio

    import aiohttp
    from aiohttp.test_utils import TestServer

    from proxy.testing.fake_upstream import FakeUpstream

    async def fetch() -> bytes:
        fake = FakeUpstream(seed=5)
        fake.enqueue_chat(script)
        server = TestServer(fake.app)
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session, session.post(
                    server.make_url("/v1/chat/completions"), json=body, headers={"Authorization": "Bearer sk-x"}) as r:
                return await r.read()
        finally:
            await server.close()

    return asyncio.run(fetch())


def _rows(stream: bytes, cuts: list[int]) -> tuple[list, int, int]:
    from proxy.observers import Observer, Observers
    from proxy.tap import Tap

    class Rows(Observer):
        name = "rows"

        def __init__(self) -> None:
            self.states: dict = {}
            self.events = self.delta_frames = 0

        def run_event(self, ex, event):
            self.events += event.source == "sse"
            from proxy.runs import RECORDED

            for state in event.changes:  # the row each state writes, less runtap's own clock
                if type(state) not in RECORDED:
                    continue
                table, columns = RECORDED[type(state)]
                row = tuple((c, getattr(state, c)) for c in columns if not c.endswith("_at"))
                self.states[(table, row[0][1])] = row

        def deltas(self, ex, deltas):
            self.delta_frames += deltas[1]

    body = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    ex = Exchange(classify("POST", "/v1/chat/completions"), "POST", "/v1/chat/completions", "", "sha256:k", body)
    ex.status = 200
    rows = Rows()
    tap = Tap(ex, RunStore(), Observers([rows]), 1 << 20)
    tap.response_started("text/event-stream", None)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        if b > a:
            tap.feed(stream[a:b], 1_796_000_000.0)
    tap.end(Outcome.COMPLETED)
    return sorted(rows.states.items()), rows.events, rows.delta_frames


def test_any_split_of_a_chat_stream_records_the_same_rows_and_content_chunks_go_unparsed():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from proxy.testing.responses_scripts import ChatScript

    body = {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    stream = _fake_stream(ChatScript(text="Quite a few words, escaped \"quotes\" and ünïcode too."), body)
    whole, events, deltas = _rows(stream, [])
    frames = stream.count(b"\n\n")
    assert deltas >= frames - 5 and events == frames - deltas  # role, finish, usage, [DONE] parsed; content not
    [message] = [dict(v) for k, v in whole if k[0] == "messages"]
    assert message["text"] == "Quite a few words, escaped \"quotes\" and ünïcode too."

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(0, 100_000), max_size=15))
    def split(cuts):
        assert _rows(stream, cuts)[0] == whole

    split()
