"""apis/responses/objects.py: a Response object read into its state, and the ModelCall view of it."""

from datetime import UTC, datetime

from proxy.apis.responses.objects import merge, message_text, model_call
from proxy.apis.responses.states import ResponseItemState, ResponseState
from proxy.runs import Seen

SEEN = Seen("rq1", "sha256:k", None, datetime(2026, 12, 7, 12, tzinfo=UTC))


def test_a_terminal_snapshot_fills_usage_and_an_early_one_never_reopens_it():
    state = ResponseState("resp_1")
    merge(state, {"id": "resp_1", "status": "incomplete", "model": "o4-mini", "conversation": {"id": "conv_1"},
                  "incomplete_details": {"reason": "max_output_tokens"}, "usage": {
                      "input_tokens": 50, "output_tokens": 30, "total_tokens": 80,
                      "input_tokens_details": {"cached_tokens": 20},
                      "output_tokens_details": {"reasoning_tokens": 12}}},
          SEEN)
    merge(state, {"id": "resp_1", "status": "in_progress"}, SEEN)  # a resumed stream replays its start
    assert (state.status, state.conversation_id, state.incomplete_reason) == (
        "incomplete", "conv_1", "max_output_tokens")
    assert (state.input_tokens, state.cached_tokens, state.output_tokens, state.reasoning_tokens) == (50, 20, 30, 12)
    call = model_call(state)
    assert (call.final, call.finish_reason, call.total_tokens, call.conversation_id) == (True, "length", 80, "conv_1")


def test_the_model_call_names_its_built_in_tools_and_its_answer_not_its_client_calls():
    state = ResponseState("resp_2", status="completed", calls=["call_1"])
    state.items = {
        0: ResponseItemState("ws_1", "resp_2", output_index=0, type="web_search_call", added_at=SEEN.at,
                             done_at=SEEN.at),
        1: ResponseItemState("fc_1", "resp_2", output_index=1, type="function_call", call_id="call_1"),
        2: ResponseItemState("msg_1", "resp_2", output_index=2, type="message", text="Found it."),
    }
    call = model_call(state)
    assert [t[:2] for t in call.tools] == [("ws_1", "web_search_call")]
    assert (call.finish_reason, call.text) == ("tool_calls", "Found it.")
    parts = [{"type": "output_text", "text": "a"}, {"type": "refusal"}, {"type": "output_text", "text": "b"}]
    assert message_text(parts) == "ab"
