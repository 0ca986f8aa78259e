from proxy.exchange import Exchange, Outcome
from proxy.routes import classify


def test_ids_come_from_the_route_and_timings_from_the_clock():
    route = classify("GET", "/v1/threads/thread_1/runs/run_1")
    ex = Exchange(route, "GET", route.template, "", "sha256:k", None)
    assert (ex.thread_id, ex.run_id) == ("thread_1", "run_1")
    assert ex.request_id.startswith("rt_") and len(ex.request_id) == 35
    assert ex.ttfb_ms is None and ex.duration_ms is None
    ex.t_headers = ex.t_start + 0.002
    assert abs(ex.ttfb_ms - 2.0) < 1e-6
    assert ex.finish(Outcome.CLIENT_GONE, "left")
    assert ex.duration_ms >= 0
    assert not ex.finish(Outcome.COMPLETED)
    assert (ex.outcome, ex.error) == (Outcome.CLIENT_GONE, "left")
