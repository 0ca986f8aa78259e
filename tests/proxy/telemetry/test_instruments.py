"""The loop's instruments expose exactly what prometheus_client's own would, for the same writes."""

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from proxy.telemetry.instruments import LoopCounter, LoopHistogram

BUCKETS = (0.00005, 0.5, 1, 2.5)
OBSERVED = (0.00005, 0.0001, 0.5, 0.7, 1, 3, 2.5, 0)


def _without_created_values(text: str) -> str:
    return re.sub(r"^(\w+_created(\{.*\})?) \S+$", r"\1 T", text, flags=re.MULTILINE)


def _write(counter, labelled, histogram, latency, ours: bool) -> None:
    for route, n in (("POST /v1/threads/runs", 3), ("GET /v1/threads/{thread_id}/runs/{run_id}", 1)):
        for _ in range(n):
            counter.inc((route, "2xx")) if ours else counter.labels(route, "2xx").inc()
    labelled.inc(("input",), 120) if ours else labelled.labels("input").inc(120)
    for value in OBSERVED:
        histogram.observe(("chat",), value) if ours else histogram.labels("chat").observe(value)
    latency.observe((), 0.7) if ours else latency.observe(0.7)


def _both(ours: bool) -> CollectorRegistry:
    registry = CollectorRegistry()
    if ours:
        instruments = (LoopCounter("runtap_requests", "Exchanges.", ["route", "status_class"], registry=registry),
                       LoopCounter("runtap_tokens_total", "Tokens.", ["type"], registry=registry),
                       LoopHistogram("gen_ai_duration_seconds", "Durations.", ["op"], buckets=BUCKETS,
                                     registry=registry),
                       LoopHistogram("runtap_added_latency_seconds", "Latency.", buckets=BUCKETS, registry=registry))
        LoopCounter("runtap_unlabelled", "Always there.", registry=registry)
    else:
        instruments = (Counter("runtap_requests", "Exchanges.", ["route", "status_class"], registry=registry),
                       Counter("runtap_tokens_total", "Tokens.", ["type"], registry=registry),
                       Histogram("gen_ai_duration_seconds", "Durations.", ["op"], buckets=BUCKETS, registry=registry),
                       Histogram("runtap_added_latency_seconds", "Latency.", buckets=BUCKETS, registry=registry))
        Counter("runtap_unlabelled", "Always there.", registry=registry)
    _write(*instruments, ours=ours)
    return registry


@pytest.mark.parametrize("render", [generate_latest, generate_openmetrics])
def test_the_exposition_is_prometheus_clients(render):
    ours, theirs = (_without_created_values(render(_both(o)).decode()) for o in (True, False))
    assert ours == theirs
    assert 'gen_ai_duration_seconds_bucket{le="5e-05",op="chat"} 2.0' in ours  # 0 and 5e-05: le is "<="


def test_created_series_follow_prometheus_clients_variable(monkeypatch):
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    assert "_created" not in generate_latest(_both(True)).decode()


def test_reads_for_tests_and_scrapes_from_another_thread():
    registry = CollectorRegistry()
    counter = LoopCounter("c", "c", ["k"], registry=registry)
    histogram = LoopHistogram("h", "h", ["k"], buckets=(1,), registry=registry)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                generate_latest(registry)
        except BaseException as error:  # reported below, on the test's thread
            errors.append(error)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    for n in range(20_000):  # new series appear while the scraper copies the dicts
        counter.inc((str(n % 500),))
        histogram.observe((str(n % 500),), n % 3)
    stop.set()
    scraper.join()
    assert not errors
    assert counter.value(("7",)) == 40 and histogram.count(("7",)) == 40
    assert registry.get_sample_value("h_bucket", {"k": "7", "le": "1.0"}) == 27
