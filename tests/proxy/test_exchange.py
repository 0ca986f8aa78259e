import re
import subprocess
import sys

from proxy.apis import classify
from proxy.exchange import Exchange, Outcome, new_request_id


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


def test_request_ids_are_unique_ordered_and_differ_between_processes():
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert all(re.fullmatch(r"rt_[0-9a-f]{32}", i) for i in ids[:10])
    code = "from proxy.exchange import new_request_id; print(new_request_id())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other[:19] != ids[0][:19]  # another process: another random prefix
