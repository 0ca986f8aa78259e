from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from proxy.telemetry.spans import SpanRecord, Spans

CLIENT_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_SPAN = 0xB7AD6B7169203331


def _spans(sampler: sampling.Sampler | None = None) -> tuple[Spans, list[SpanRecord]]:
    ended: list[SpanRecord] = []
    return Spans(ended.append, TracerProvider(sampler=sampler, shutdown_on_exit=False)), ended


def test_a_root_and_its_children_share_the_trace_and_end_once():
    spans, ended = _spans()
    run = spans.start("invoke_agent", SpanKind.CLIENT, {"a": 1}, 100)
    step = spans.start("chat", SpanKind.CLIENT, {}, 110, run)
    tool = spans.start("execute_tool", SpanKind.INTERNAL, {}, 120, step)
    assert run.parent_id == 0 and run.trace_id and run.span_id and run.sampled
    assert (step.trace_id, step.parent_id) == (run.trace_id, run.span_id)
    assert (tool.trace_id, tool.parent_id) == (run.trace_id, step.span_id)
    assert len({run.span_id, step.span_id, tool.span_id}) == 3
    assert not any(s.remote_parent for s in (run, step, tool))
    spans.end(tool, 130)
    spans.end(tool, 140)  # a second end changes nothing
    assert ended == [tool] and tool.end_ns == 130
    assert run.attributes == {"a": 1} and run.error is None


def test_the_clients_span_is_the_remote_parent_and_its_sampled_flag_decides():
    spans, ended = _spans()
    client = SpanContext(CLIENT_TRACE, CLIENT_SPAN, True, TraceFlags(TraceFlags.SAMPLED))
    run = spans.start("invoke_agent", SpanKind.CLIENT, {}, 1, client)
    assert (run.trace_id, run.parent_id, run.remote_parent, run.sampled) == (CLIENT_TRACE, CLIENT_SPAN, True, True)
    unsampled = SpanContext(CLIENT_TRACE, CLIENT_SPAN, True, TraceFlags(TraceFlags.DEFAULT))
    dropped = spans.start("invoke_agent", SpanKind.CLIENT, {}, 1, unsampled)
    child = spans.start("chat", SpanKind.CLIENT, {}, 2, dropped)
    assert dropped.trace_id == CLIENT_TRACE and not dropped.sampled and not child.sampled
    for span in (run, dropped, child):
        spans.end(span, 3)
    assert ended == [run]


def test_a_late_child_of_an_ended_span_hangs_under_its_stub():
    spans, ended = _spans()
    run = spans.start("invoke_agent", SpanKind.CLIENT, {"a": 1}, 1)
    spans.end(run, 2)
    stub = run.stub()
    assert stub.attributes == {} and stub.end_ns == 2 and run.attributes == {"a": 1}
    late = spans.start("chat", SpanKind.CLIENT, {}, 3, stub)
    assert (late.trace_id, late.parent_id, late.remote_parent, late.sampled) == (run.trace_id, run.span_id, False, True)
    spans.end(stub, 4)  # already ended: never exported twice
    assert ended == [run]


def test_the_environments_sampler_decides_for_each_trace():
    spans, ended = _spans(sampling.ALWAYS_OFF)
    run = spans.start("invoke_agent", SpanKind.CLIENT, {}, 1)
    step = spans.start("chat", SpanKind.CLIENT, {}, 1, run)
    spans.end(step, 2)
    spans.end(run, 2)
    assert ended == [] and run.trace_id  # the trace id still reaches the recording

    class Tagging(sampling.Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None):
            return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, {"sampled.by": "tagging"})

        def get_description(self) -> str:
            return "Tagging"

    spans, ended = _spans(Tagging())
    run = spans.start("invoke_agent", SpanKind.CLIENT, {"a": 1}, 1)
    spans.end(run, 2)
    assert ended == [run] and run.attributes == {"a": 1, "sampled.by": "tagging"}
