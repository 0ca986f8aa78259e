import pytest

from proxy.apis import ASSISTANTS, classify
from proxy.apis.assistants.routes import RouteKind


@pytest.mark.parametrize("prefix", ["/v1", "/openai"])
@pytest.mark.parametrize(
    ("method", "path", "kind", "template", "ids"),
    [
        ("POST", "/threads/runs", RouteKind.CREATE_THREAD_AND_RUN, "/threads/runs", (None, None, None)),
        ("POST", "/threads/thread_a/runs", RouteKind.CREATE_RUN, "/threads/{thread_id}/runs",
         ("thread_a", None, None)),
        ("GET", "/threads/thread_a/runs", RouteKind.LIST_RUNS, "/threads/{thread_id}/runs",
         ("thread_a", None, None)),
        ("POST", "/threads/thread_a/runs/run_b/submit_tool_outputs", RouteKind.SUBMIT_TOOL_OUTPUTS,
         "/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", ("thread_a", "run_b", None)),
        ("GET", "/threads/thread_a/runs/run_b", RouteKind.GET_RUN, "/threads/{thread_id}/runs/{run_id}",
         ("thread_a", "run_b", None)),
        ("POST", "/threads/thread_a/runs/run_b/cancel", RouteKind.CANCEL_RUN,
         "/threads/{thread_id}/runs/{run_id}/cancel", ("thread_a", "run_b", None)),
        ("GET", "/threads/thread_a/runs/run_b/steps", RouteKind.LIST_STEPS,
         "/threads/{thread_id}/runs/{run_id}/steps", ("thread_a", "run_b", None)),
        ("GET", "/threads/thread_a/runs/run_b/steps/step_c", RouteKind.GET_STEP,
         "/threads/{thread_id}/runs/{run_id}/steps/{step_id}", ("thread_a", "run_b", "step_c")),
        ("GET", "/threads/thread_a/messages", RouteKind.MESSAGES, "/threads/{thread_id}/messages",
         ("thread_a", None, None)),
        ("POST", "/threads", RouteKind.THREAD, "/threads", (None, None, None)),
        ("DELETE", "/threads/thread_a", RouteKind.THREAD, "/threads/{thread_id}", ("thread_a", None, None)),
    ],
)
def test_assistants_routes_after_either_prefix(prefix, method, path, kind, template, ids):
    route = classify(method, prefix + path)
    assert route.kind is kind
    assert route.template == f"{method} {prefix}{template}"
    assert (route.thread_id, route.run_id, route.step_id) == ids
    assert route.recorded and route.api is ASSISTANTS


@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/files", "/v1/embeddings", "/admin/sql", "/threads/runs", "/v2/threads/runs"]
)
def test_other_routes_stream_through_with_a_bounded_label(path):
    route = classify("POST", path)
    assert route.kind == RouteKind.OTHER and not route.recorded
    assert route.template == "other"
    assert not route.recorded


def test_run_creating_routes():
    assert classify("POST", "/v1/threads/runs").creates_run
    assert classify("POST", "/v1/threads/t/runs").creates_run
    assert classify("POST", "/v1/threads/t/runs/r/submit_tool_outputs").creates_run
    assert not classify("GET", "/v1/threads/t/runs/r").creates_run


def test_only_submit_tool_outputs_continues_a_run():
    assert classify("POST", "/v1/threads/t/runs/r/submit_tool_outputs").continues_run
    assert not classify("POST", "/v1/threads/t/runs").continues_run
    assert not classify("POST", "/v1/threads/runs").continues_run
