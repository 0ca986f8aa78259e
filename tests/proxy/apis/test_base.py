"""apis/base.py and the registry (apis/__init__.py): the one interface the core asks of an API.

Pinned: the base `Api` is an API with no runs (claims nothing, keeps nothing raw, folds nothing);
a route is recorded exactly when an API claims it; the registry gives each request the route of
the first API that claims it, else `OTHER`, the same route object for the same request.
"""

from __future__ import annotations

from datetime import UTC, datetime

from proxy.apis import APIS, OTHER, classify
from proxy.apis.assistants import API as ASSISTANTS
from proxy.apis.base import Api, Route
from proxy.exchange import Exchange
from proxy.runs import RunStore, Seen


def test_the_base_api_has_no_runs():
    api = Api()
    ex = Exchange(OTHER, "POST", "/v1/x", "", None, b"{}")
    store = RunStore()
    seen = Seen("req_1", None, None, datetime.now(UTC))
    assert api.classify("POST", "/v1/threads/runs") is None
    assert api.delta_events == frozenset()
    assert api.deltas(ex, b'event: thread.message.delta\ndata: {"id":"msg_1"}\n\n', store) is False
    assert api.fold(ex, {"object": "thread.run", "id": "run_1"}, store, seen) == []
    assert api.request_changes(ex, store, seen.at) == []
    assert store.runs == {}


def test_a_route_is_recorded_exactly_when_an_api_claims_it():
    assert not OTHER.recorded and OTHER.api is None
    assert Route("x", "POST /v1/x", api=ASSISTANTS).recorded
    assert not Route("x", "POST /v1/x").recorded


def test_the_registry_names_each_api_once():
    names = [api.name for api in APIS]
    assert ASSISTANTS in APIS and len(names) == len(set(names))


def test_classify_is_the_claiming_apis_route_else_other():
    route = classify("POST", "/v1/threads/thread_1/runs")
    assert route.api is ASSISTANTS and route.thread_id == "thread_1" and route.recorded
    assert classify("GET", "/v1/models") is OTHER
    assert classify("POST", "/v1/not-an-api-route") is OTHER


def test_classify_gives_the_same_route_for_the_same_request():
    assert classify("POST", "/v1/threads/thread_1/runs") is classify("POST", "/v1/threads/thread_1/runs")
