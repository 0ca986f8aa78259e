import asyncio

import aiohttp
import orjson

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker, Seen
from proxy.budgets.gate import Budgets, Credentials, prices_from
from proxy.budgets.ledger import RELEASED, RESERVED, SETTLED, Ledger
from proxy.budgets.observer import BudgetObserver, upstream_canceller, usage_of
from proxy.budgets.settings import BudgetsSettings
from proxy.exchange import Exchange, Outcome, RunEvent, utcnow
from proxy.record.migrations import price_rows
from proxy.testing.scripts import Script
from tests.conftest import RAW_KEY

KEY = "sha256:0123456789abcdef"


def make(**limits) -> tuple[Budgets, BudgetObserver]:
    settings = BudgetsSettings.model_validate({"keys": [{"key_id": KEY, "alias": "team-a", **limits}]})
    budgets = Budgets(settings, prices_from(price_rows()), Ledger(), RunTracker())
    return budgets, BudgetObserver(budgets)


def admitted(budgets: Budgets, body: dict | None = None) -> Exchange:
    ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", KEY,
                  orjson.dumps(body or {"assistant_id": "a", "max_prompt_tokens": 300, "max_completion_tokens": 300}))
    assert budgets.admit(ex, {}) is None
    return ex


def see(budgets: Budgets, observer: BudgetObserver, ex: Exchange, obj: dict) -> None:
    changes = budgets.tracker.apply(obj, Seen(ex.request_id, ex.key_id, None, utcnow()))
    observer.run_event(ex, RunEvent(0, None, "", obj, utcnow(), changes=tuple(changes)))


def run(status: str, **extra) -> dict:
    return {"object": "thread.run", "id": "run_1", "thread_id": "thread_1", "status": status, "model": "gpt-4o",
            **extra}


USAGE = {"prompt_tokens": 400, "completion_tokens": 50, "total_tokens": 450}


def test_the_run_is_linked_then_settled_once_with_its_final_usage():
    budgets, observer = make(tokens_per_day=10_000)
    ex = admitted(budgets)
    see(budgets, observer, ex, run("queued", expires_at=1_900_000_000))
    charge = budgets.ledger.by_run["run_1"]
    assert (charge.state, charge.model, charge.settle_by) == (RESERVED, "gpt-4o", 1_900_000_060)
    see(budgets, observer, ex, run("completed", usage=USAGE))
    assert (charge.state, charge.spent_tokens, charge.spent_usd) == (SETTLED, 450, (400 * 2.5 + 50 * 10.0) / 1e6)
    poll = Exchange(classify("GET", "/v1/threads/thread_1/runs/run_1"), "GET", "/v1/threads/thread_1/runs/run_1", "",
                    KEY, None)
    see(budgets, observer, poll, run("completed", usage={**USAGE, "total_tokens": 999}))
    assert charge.spent_tokens == 450  # a later poll of the ended run changes nothing
    observer.exchange_finished(ex)
    assert budgets.pending == {} and charge.state == SETTLED


def test_an_error_answer_releases_the_reservation_but_a_cut_stream_keeps_it():
    budgets, observer = make(tokens_per_day=10_000)
    refused_upstream = admitted(budgets)
    refused_upstream.status = 400
    refused_upstream.finish(Outcome.COMPLETED)
    observer.exchange_finished(refused_upstream)
    cut = admitted(budgets)
    cut.status = 200
    cut.finish(Outcome.TRUNCATED, "stream ended before [DONE]")
    observer.exchange_finished(cut)
    states = [c.state for c in budgets.ledger.by_id.values()]
    assert states == [RELEASED, RESERVED]
    assert budgets.ledger.window(KEY, "day").tokens == 600


def test_usage_so_far_is_the_larger_of_the_snapshot_and_the_finished_steps():
    budgets, observer = make(tokens_per_day=10_000)
    ex = admitted(budgets)
    see(budgets, observer, ex, run("in_progress"))
    for i in range(2):
        see(budgets, observer, ex, {"object": "thread.run.step", "id": f"step_{i}", "run_id": "run_1",
                                    "status": "completed", "usage": USAGE})
    state = budgets.tracker.runs["run_1"]
    assert usage_of(state) == 900
    state.total_tokens = 1000
    assert usage_of(state) == 1000


async def test_exhaustion_cancels_through_the_upstream_as_the_caller(aiohttp_server, fake):
    upstream = await aiohttp_server(fake.app)
    async with aiohttp.ClientSession() as session:
        settings = BudgetsSettings.model_validate({"default_reservation_tokens": 300, "keys": [
            {"key_id": KEY, "alias": "team-a", "tokens_per_day": 1000, "cancel_on_exhaustion": True}]})
        budgets = Budgets(settings, prices_from(price_rows()), Ledger(), RunTracker())
        observer = BudgetObserver(budgets, upstream_canceller(lambda: session, str(upstream.make_url(""))))
        # A real run on the fake, paused, so that it can be cancelled.
        fake.enqueue(Script.tool_then_text())
        async with session.post(upstream.make_url("/v1/threads/runs"), json={"assistant_id": "a"},
                                headers={"Authorization": f"Bearer {RAW_KEY}", "OpenAI-Beta": "assistants=v2"}) as r:
            real = await r.json()
        ex = admitted(budgets, {"assistant_id": "a"})
        budgets.credentials[ex.request_id] = Credentials(
            {"Authorization": f"Bearer {RAW_KEY}", "OpenAI-Beta": "assistants=v2"}, "", "/v1")
        obj = {**real, "status": "in_progress"}
        see(budgets, observer, ex, obj)
        charge = budgets.ledger.by_run[real["id"]]
        step = {"object": "thread.run.step", "id": "step_1", "run_id": real["id"], "status": "completed"}
        see(budgets, observer, ex, {**step, "usage": {"prompt_tokens": 500, "completion_tokens": 0,
                                                      "total_tokens": 500}})
        assert not charge.cancelled  # 500 of 1000
        see(budgets, observer, ex, {**step, "id": "step_2", "usage": {"prompt_tokens": 600, "completion_tokens": 0,
                                                                      "total_tokens": 600}})
        assert charge.cancelled
        [task] = observer._tasks
        assert await task == 200
    [cancel] = [r for r in fake.requests if r.path.endswith("/cancel")]
    assert cancel.headers["Authorization"] == f"Bearer {RAW_KEY}"
    assert fake.run(real["id"])["status"] in ("cancelling", "cancelled")


def test_a_continuation_of_a_run_the_upstream_does_not_know_is_released():
    budgets, observer = make(tokens_per_day=10_000)
    path = "/v1/threads/thread_1/runs/run_gone/submit_tool_outputs"
    ex = Exchange(classify("POST", path), "POST", path, "", KEY, b'{"tool_outputs": []}')
    assert budgets.admit(ex, {}) is None
    charge = budgets.ledger.by_run["run_gone"]
    ex.status = 404
    ex.finish(Outcome.COMPLETED)
    observer.exchange_finished(ex)
    assert charge.state == RELEASED and budgets.pending == {}


def submit_exchange(budgets: Budgets, run_id: str = "run_1") -> Exchange:
    path = f"/v1/threads/thread_1/runs/{run_id}/submit_tool_outputs"
    ex = Exchange(classify("POST", path), "POST", path, "", KEY, b'{"tool_outputs": []}')
    assert budgets.admit(ex, {}) is None
    return ex


def test_a_continuation_admitted_before_the_create_was_linked_is_charged_once():
    # The create's events are parsed behind the relay: its continuation can be admitted first.
    budgets, observer = make(tokens_per_day=100_000)
    create = admitted(budgets)  # reserves 600
    cont = submit_exchange(budgets)  # the run is unknown yet: a charge of its own
    see(budgets, observer, create, run("requires_action", usage={**USAGE, "total_tokens": 98}))
    see(budgets, observer, cont, run("completed", usage=USAGE))
    for ex in (create, cont):
        ex.status = 200
        ex.finish(Outcome.COMPLETED)
        observer.exchange_finished(ex)
    states = sorted((c.charge_id == create.request_id, c.state, c.spent_tokens) for c in budgets.ledger.by_id.values())
    assert states == [(False, RELEASED, 0), (True, SETTLED, 450)]
    assert budgets.ledger.window(KEY, "day").tokens == 450 and budgets.ledger.open == {}


def test_a_top_up_is_taken_back_when_the_upstream_refuses_the_continuation():
    budgets, observer = make(tokens_per_day=100_000)
    create = admitted(budgets)
    see(budgets, observer, create, run("requires_action", usage={**USAGE, "total_tokens": 700}))
    charge = budgets.ledger.by_run["run_1"]
    cont = submit_exchange(budgets)
    assert charge.reserved_tokens == 600 + 4096  # 700 used of 600: topped up
    cont.status = 400
    cont.finish(Outcome.COMPLETED)
    observer.exchange_finished(cont)
    assert (charge.reserved_tokens, charge.state, budgets.top_ups) == (600, RESERVED, {})
    assert budgets.ledger.window(KEY, "day").reserved_tokens == 600


async def test_a_cancel_after_the_session_closed_fails_quietly_and_close_awaits_the_rest(caplog):
    session = aiohttp.ClientSession()
    await session.close()
    cancel = upstream_canceller(lambda: session, "http://127.0.0.1:9")
    assert await cancel(Credentials({}, "", "/v1"), "thread_1", "run_1") is None  # no "Session is closed"
    assert "failed: RuntimeError" in caplog.text
    budgets, _ = make(tokens_per_day=10)
    stuck = asyncio.Event()

    async def slow(credentials: Credentials, thread_id: str, run_id: str) -> int | None:
        await stuck.wait()
        return 200

    observer = BudgetObserver(budgets, slow)
    task = asyncio.get_running_loop().create_task(slow(Credentials({}, "", "/v1"), "t", "r"))
    observer._tasks.add(task)
    await observer.close()
    assert task.cancelled()
