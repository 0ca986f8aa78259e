"""Metrics through the real proxy, SDK and fake upstream; each app has its own registry."""

from __future__ import annotations

import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.listener import make_admin_app
from proxy.apis import classify
from proxy.app import PARTS, make_app
from proxy.exchange import Exchange, Outcome
from proxy.observers import Observer, Observers
from proxy.telemetry.metrics import OTHER, LabelCap, MetricsObserver
from proxy.testing.replay import replay
from proxy.testing.scripts import Outcome as End
from proxy.testing.scripts import Script
from tests.e2e.test_proxy_sdk import WEATHER_TOOL, _tool_conversation

SUBMIT = "POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs"


def value(parts, metric: str, /, **labels: str) -> float:
    return parts.registry.get_sample_value(metric, labels) or 0.0


async def test_a_tool_run_is_counted_once_with_its_final_usage(fake, client, parts, recorded):
    script = Script.tool_then_text(prompt_tokens=120, completion_tokens=9)
    _, _, final = await _tool_conversation(client, fake, script)
    # Polls of the finished run see the terminal status again: still one run, its tokens once.
    for _ in range(2):
        await client.beta.threads.runs.retrieve(thread_id=final.thread_id, run_id=final.id)
    await client.beta.threads.runs.steps.list(thread_id=final.thread_id, run_id=final.id)
    q = await recorded()
    [(prompt, completion)] = q("select sum(prompt_tokens), sum(completion_tokens) from runs")
    assert value(parts, "runtap_runs_total", status="completed", model="gpt-4o") == 1
    assert value(parts, "runtap_tokens_total", type="input", model="gpt-4o", key_alias=OTHER) == prompt == 200
    assert value(parts, "runtap_tokens_total", type="output", model="gpt-4o", key_alias=OTHER) == completion == 27
    labels = {"gen_ai_operation_name": "invoke_agent", "gen_ai_request_model": "gpt-4o",
              "gen_ai_provider_name": "openai"}
    assert value(parts, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **labels) == 200
    assert value(parts, "gen_ai_client_token_usage_count", gen_ai_token_type="output", **labels) == 1
    assert value(parts, "runtap_run_steps_total", type="tool_calls", status="completed") == 1
    assert value(parts, "runtap_run_steps_total", type="message_creation", status="completed") == 1
    assert value(parts, "runtap_tool_calls_total", type="function") == 1
    assert value(parts, "runtap_tool_call_client_seconds_count", name="get_current_weather") == 1
    assert value(parts, "gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="chat",
                 gen_ai_provider_name="openai", gen_ai_request_model="gpt-4o", error_type="") == 2


async def test_requests_by_route_and_status_class_and_latencies(fake, client, parts, recorded):
    await _tool_conversation(client, fake, Script.tool_then_text())
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.retrieve(thread_id="thread_nope", run_id="run_nope")
    await recorded()
    assert value(parts, "runtap_requests_total", route="POST /v1/threads/runs", status_class="2xx") == 1
    assert value(parts, "runtap_requests_total", route=SUBMIT, status_class="2xx") == 1
    assert value(parts, "runtap_requests_total", route="GET /v1/threads/{thread_id}/runs/{run_id}",
                 status_class="4xx") == 1
    assert value(parts, "runtap_request_outcomes_total", outcome="completed") == 3
    assert value(parts, "runtap_added_latency_seconds_count") == 3
    assert 0 < value(parts, "runtap_added_latency_seconds_sum") < 0.1
    assert value(parts, "runtap_time_to_first_event_seconds_count", route="POST /v1/threads/runs") == 1
    assert value(parts, "runtap_time_to_first_event_seconds_count", route=SUBMIT) == 1
    ttfc = {"gen_ai_operation_name": "invoke_agent", "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o"}
    assert value(parts, "gen_ai_client_operation_time_to_first_chunk_seconds_count", **ttfc) == 2


async def test_runs_that_did_not_complete_say_why(fake, client, parts, recorded):
    for script in (Script.text("x").ending(End.failed("boom", code="rate_limit_exceeded")),
                   Script.text("y").ending(End.incomplete("max_prompt_tokens")),
                   Script.text("z").ending("expired")):
        fake.enqueue(script)
        async with client.beta.threads.create_and_run_stream(assistant_id="asst_abc") as stream:
            await stream.until_done()
    await recorded()
    assert value(parts, "runtap_run_end_reasons_total", status="failed", reason="rate_limit_exceeded") == 1
    assert value(parts, "runtap_run_end_reasons_total", status="incomplete", reason="max_prompt_tokens") == 1
    assert value(parts, "runtap_run_end_reasons_total", status="expired", reason="expired") == 1
    assert value(parts, "gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="invoke_agent",
                 gen_ai_provider_name="openai", gen_ai_request_model="gpt-4o", error_type="rate_limit_exceeded") == 1


async def test_a_polled_run_is_counted_once(fake, client, parts, recorded):
    fake.enqueue(Script.tool_then_text())
    run = await client.beta.threads.create_and_run_poll(assistant_id="asst_abc", tools=[WEATHER_TOOL],
                                                        poll_interval_ms=1)
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    await client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=run.thread_id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "18C"}],
        poll_interval_ms=1)
    await recorded()
    assert value(parts, "runtap_runs_total", status="completed", model="gpt-4o") == 1
    assert value(parts, "runtap_tool_call_client_seconds_count", name="get_current_weather") == 1


async def test_metrics_endpoint_on_the_admin_app(fake, client, parts, recorded, aiohttp_client):
    await _tool_conversation(client, fake, Script.tool_then_text())
    await recorded()
    admin = await aiohttp_client(make_admin_app(parts, "secret"))
    response = await admin.get("/metrics")  # no token needed (contract §7)
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    for name in ("gen_ai_client_token_usage", "gen_ai_client_operation_duration_seconds", "runtap_requests",
                 "runtap_added_latency_seconds", "runtap_time_to_first_event_seconds", "runtap_runs",
                 "runtap_run_steps", "runtap_tool_calls", "runtap_tokens", "runtap_recorder_queue_depth",
                 "runtap_recorder_spilled_rows", "runtap_observer_errors", "runtap_budget_rejections",
                 "runtap_budget_remaining_tokens"):
        assert name in families, name
    assert {s.labels["observer"] for s in families["runtap_observer_errors"].samples} >= {"recorder", "metrics"}
    assert value(parts, "runtap_recorder_rows_written_total") > 0
    assert value(parts, "runtap_recorder_queue_depth") == 0
    openmetrics = await admin.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await openmetrics.text()).endswith("# EOF\n")


class Broken(Observer):
    name = "broken"

    def exchange_finished(self, ex: Exchange) -> None:
        raise RuntimeError("observer bug")


def _exchange(path: str = "/v1/threads/runs") -> Exchange:
    return Exchange(classify("POST", path), "POST", path, "", "sha256:0123456789abcdef", b"{}")


def test_observer_errors_are_counted_by_observer_and_hook():
    metrics = MetricsObserver(CollectorRegistry())
    metrics.watch_observers(["broken", "metrics"])
    observers = Observers([Broken(), metrics], on_error=metrics.observer_error)
    replay(observers, _exchange(), [])
    sample = {(s.labels["observer"], s.labels["hook"]): s.value
              for s in metrics.observer_errors.collect()[0].samples if s.name.endswith("_total")}
    assert sample[("broken", "exchange_finished")] == 1
    assert sample[("metrics", "run_event")] == 0


def test_a_budget_rejection_is_a_request_labelled_by_alias_never_by_key():
    # runtap_budget_rejections_total itself is the budgets' (tests/proxy/budgets/test_report.py).
    registry = CollectorRegistry()
    metrics = MetricsObserver(registry, key_alias=lambda key_id: "team-a" if key_id else OTHER)
    ex = _exchange()
    ex.status = 429
    replay(metrics, ex, [], Outcome.REJECTED)
    assert registry.get_sample_value("runtap_requests_total",
                                     {"route": "POST /v1/threads/runs", "status_class": "4xx"}) == 1
    exposition = "".join(str(s) for m in registry.collect() for s in m.samples)
    assert "sha256:" not in exposition and "rt_" not in exposition


def test_label_values_are_capped():
    cap = LabelCap(2)
    assert [cap(v) for v in ("gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-4o", None, "")] == [
        "gpt-4o", "gpt-4o-mini", OTHER, "gpt-4o", "unknown", "unknown"]


async def test_each_app_has_its_own_registry(parts):
    assert make_app(parts.settings)[PARTS].registry is not parts.registry


async def test_a_run_first_met_already_finished_is_not_counted(fake, upstream, client, parts, recorded):
    # Made without the proxy (another client, or before a restart), then polled through it.
    async with openai.AsyncOpenAI(base_url=str(upstream.make_url("/v1")), api_key="sk-direct") as direct:
        fake.enqueue(Script.text("Done already."))
        run = await direct.beta.threads.create_and_run_poll(assistant_id="asst_abc", poll_interval_ms=1)
    assert run.status == "completed"
    await client.beta.threads.runs.retrieve(thread_id=run.thread_id, run_id=run.id)
    await client.beta.threads.runs.steps.list(thread_id=run.thread_id, run_id=run.id)
    q = await recorded()
    assert q("select status from runs") == [("completed",)]  # recorded, as everything is
    assert parts.registry.get_sample_value("runtap_runs_total", {"status": "completed", "model": "gpt-4o"}) is None
    assert parts.registry.get_sample_value("runtap_run_steps_total",
                                           {"type": "message_creation", "status": "completed"}) is None
