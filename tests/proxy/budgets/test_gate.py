import orjson
import pytest

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker, Seen
from proxy.budgets.gate import Budgets, Credentials, Prices, estimate, prices_from
from proxy.budgets.ledger import Ledger
from proxy.budgets.settings import BudgetsSettings
from proxy.exchange import Exchange
from proxy.record.migrations import price_rows

KEY = "sha256:0123456789abcdef"
OTHER = "sha256:fedcba9876543210"
NOW = 1_800_000_000.0
PRICES = prices_from(price_rows())


def budgets(**config) -> Budgets:
    config.setdefault("keys", [{"key_id": KEY, "alias": "team-a", "tokens_per_day": 2000}])
    return Budgets(BudgetsSettings.model_validate(config), PRICES, Ledger(None, lambda: NOW), RunTracker(),
                   clock=lambda: NOW)


def create(body: dict | None = None, key: str | None = KEY, path: str = "/v1/threads/runs") -> Exchange:
    raw = None if body is None else orjson.dumps(body)
    return Exchange(classify("POST", path), "POST", path, "", key, raw)


def refusal_json(response) -> dict:
    assert response.status == 429 and response.content_type == "application/json"
    assert (response.headers["x-should-retry"], int(response.headers["retry-after"]) > 0) == ("false", True)
    return orjson.loads(response.body)["error"]


def test_estimate_is_both_maxima_else_the_default_plus_what_is_set():
    assert estimate({"max_prompt_tokens": 300, "max_completion_tokens": 400}, 4096) == 700
    assert estimate({"max_completion_tokens": 400}, 4096) == 4496
    assert estimate({"max_prompt_tokens": None, "max_completion_tokens": True}, 4096) == 4096
    assert estimate(None, 100) == 100


def test_prices_match_exact_names_then_the_longest_dashed_prefix():
    prices = Prices({"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6), "o1": (15.0, 60.0)})
    assert prices.of("gpt-4o-2024-08-06") == (2.5, 10.0)
    assert prices.of("gpt-4o-mini-2024-07-18") == (0.15, 0.6)
    assert prices.of("gpt-4ox") is None and prices.of(None) is None
    assert prices.reservation(1_000_000, "gpt-4o") == 10.0  # the dearer rate
    assert prices.reservation(1_000_000, "unknown") == 60.0  # the dearest in the table
    assert prices.cost(1_000_000, 1_000_000, 2_000_000, "gpt-4o") == 12.5


def test_only_run_creating_requests_with_a_key_are_admitted_or_refused():
    b = budgets()
    assert b.admit(Exchange(classify("GET", "/v1/threads/t/runs/r"), "GET", "/v1/threads/t/runs/r", "", KEY, None),
                   {}) is None
    assert b.admit(create({"assistant_id": "a"}, key=None), {}) is None
    assert b.ledger.by_id == {}


def test_a_fitting_request_reserves_and_the_next_that_does_not_fit_is_refused():
    b = budgets()
    ex = create({"assistant_id": "a", "max_prompt_tokens": 800, "max_completion_tokens": 800, "model": "gpt-4o"})
    assert b.admit(ex, {}) is None
    charge = b.pending[ex.request_id]
    assert (charge.reserved_tokens, charge.model, charge.reserved_usd) == (1600, "gpt-4o", 1600 * 10.0 / 1e6)
    error = refusal_json(b.admit(create({"assistant_id": "a", "max_prompt_tokens": 256,
                                         "max_completion_tokens": 256}), {}))
    assert (error["type"], error["code"], error["param"]) == ("budget_exceeded", "budget_exceeded", None)
    assert error["message"].startswith("budget 'team-a' tokens_per_day = 2000 tokens per rolling 24 h: this run "
                                       "needs 512 tokens reserved, 400 tokens left (0 tokens used, 1600 tokens "
                                       "reserved by runs in flight); enough of it frees by ")
    assert len(b.ledger.by_id) == 1


def test_unknown_keys_are_allowed_denied_or_given_the_default_budget():
    body = {"assistant_id": "a", "max_prompt_tokens": 256, "max_completion_tokens": 256}
    allow = budgets()
    assert allow.admit(create(body, key=OTHER), {}) is None  # recorded, not limited, and no window kept
    assert len(allow.ledger.open) == 1 and allow.ledger.keys == {}
    deny = refusal_json(budgets(unknown_keys="deny").admit(create(body, key=OTHER), {}))
    assert "no budget" in deny["message"]
    default = budgets(unknown_keys="default", default={"tokens_per_minute": 600})
    assert default.admit(create(body, key=OTHER), {}) is None
    assert default.alias(OTHER) == "other" and default.alias(KEY) == "team-a"
    error = refusal_json(default.admit(create(body, key=OTHER), {}))
    assert error["message"].startswith("the default budget (keys without an entry) tokens_per_minute = 600 tokens")


def test_a_usd_limit_refuses_on_price():
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", "usd_per_day": 0.01}])
    body = {"assistant_id": "a", "max_prompt_tokens": 500, "max_completion_tokens": 500, "model": "gpt-4o"}
    assert b.admit(create(body), {}) is None  # 1000 tokens at 10 USD per 1M: 0.01 USD exactly
    error = refusal_json(b.admit(create(body), {}))
    assert error["message"].startswith("budget 'team-a' usd_per_day = 0.0100 USD per rolling 24 h")


def test_clamp_rewrites_only_max_completion_tokens_and_never_below_256():
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", "tokens_per_day": 1000, "clamp": True}])
    ex = create({"assistant_id": "a", "max_prompt_tokens": 256, "max_completion_tokens": 4000, "metadata": {"x": 1}})
    assert b.admit(ex, {}) is None
    assert orjson.loads(ex.request_body) == {"assistant_id": "a", "max_prompt_tokens": 256,
                                             "max_completion_tokens": 744, "metadata": {"x": 1}}
    assert b.pending[ex.request_id].reserved_tokens == 1000
    refused = create({"assistant_id": "a", "max_prompt_tokens": 256})
    assert b.admit(refused, {}).status == 429
    assert orjson.loads(refused.request_body) == {"assistant_id": "a", "max_prompt_tokens": 256}


def _paused_run(b: Budgets, run_id: str = "run_1", total: int | None = 98) -> None:
    usage = None if total is None else {"prompt_tokens": total, "completion_tokens": 0, "total_tokens": total}
    b.tracker.apply({"object": "thread.run", "id": run_id, "thread_id": "thread_1", "status": "requires_action",
                     "model": "gpt-4o", "usage": usage}, Seen("rt_x", KEY, None, None))


def submit(run_id: str = "run_1") -> Exchange:
    path = f"/v1/threads/thread_1/runs/{run_id}/submit_tool_outputs"
    return create({"tool_outputs": []}, path=path)


def test_a_continuation_rides_on_its_runs_reservation_until_the_usage_has_used_it_up():
    b = budgets(default_reservation_tokens=100)
    ex = create({"assistant_id": "a"})
    b.admit(ex, {})
    charge = b.pending[ex.request_id]
    b.ledger.link(charge, "run_1")
    _paused_run(b, total=60)
    assert b.admit(submit(), {}) is None and charge.reserved_tokens == 100  # rides
    _paused_run(b, total=120)
    assert b.admit(submit(), {}) is None and charge.reserved_tokens == 200  # tops up the same charge
    assert list(b.ledger.by_id) == [ex.request_id]
    b.ledger.settle(charge, 230, 0.0)  # the run ended: a late continuation owes nothing more
    assert b.admit(submit(), {}) is None and (charge.state, charge.reserved_tokens) == ("settled", 200)


def test_a_continuation_of_an_unknown_run_reserves_for_it_and_can_be_refused():
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", "tokens_per_day": 5000}])
    _paused_run(b, "run_9", total=None)
    ex = submit("run_9")
    assert b.admit(ex, {}) is None
    assert b.ledger.by_run["run_9"].reserved_tokens == 4096 and b.pending[ex.request_id].run_id == "run_9"
    assert b.admit(submit("run_8"), {}).status == 429


def test_credentials_are_held_only_for_cancel_on_exhaustion_and_never_shown():
    headers = {"Authorization": "Bearer sk-secret", "OpenAI-Beta": "assistants=v2", "Cookie": "c=1"}
    plain = budgets()
    plain.admit(create({"assistant_id": "a"}), headers)
    assert plain.credentials == {}
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", "tokens_per_day": 10000, "cancel_on_exhaustion": True}])
    ex = Exchange(classify("POST", "/openai/threads/runs"), "POST", "/openai/threads/runs", "api-version=1", KEY,
                  b"{}")
    b.admit(ex, headers)
    held = b.credentials[ex.request_id]
    assert held == Credentials({"Authorization": "Bearer sk-secret", "OpenAI-Beta": "assistants=v2"},
                               "api-version=1", "/openai")
    assert "sk-secret" not in repr(held) and "sk-secret" not in str(held)


@pytest.mark.parametrize("limits", [{"tokens_per_minute": 100}, {"tokens_per_30d": 100}])
def test_a_reservation_larger_than_a_limit_never_fits(limits):
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", **limits}])
    response = b.admit(create({"assistant_id": "a"}), {})
    assert "never fits" in refusal_json(response)["message"]


def test_a_failing_admission_lets_the_request_through_and_is_counted(caplog):
    b = budgets()
    b.ledger.keys = None  # type: ignore[assignment]  # break the ledger: any reservation now raises
    assert b.admit(create({"assistant_id": "a"}), {}) is None
    assert b.errors == 1 and "forwarding it unchecked" in caplog.text


def test_a_continuation_counts_the_runs_finished_steps_while_its_own_usage_is_null():
    b = budgets(default_reservation_tokens=100)
    ex = create({"assistant_id": "a"})
    b.admit(ex, {})
    charge = b.pending[ex.request_id]
    b.ledger.link(charge, "run_1")
    _paused_run(b, total=None)  # a run's usage is null until it ends (protocol.md)
    b.tracker.apply({"object": "thread.run.step", "id": "step_1", "run_id": "run_1", "thread_id": "thread_1",
                     "status": "completed", "usage": {"prompt_tokens": 100, "completion_tokens": 20,
                                                      "total_tokens": 120}}, Seen("rt_x", KEY, None, None))
    assert b.admit(submit(), {}) is None and charge.reserved_tokens == 200  # 120 used of 100: topped up


def test_a_continuation_of_an_unlinked_run_takes_over_the_keys_orphaned_charge():
    # A restart loaded a charge whose link to its run was lost: the continuation of that run must
    # settle it, not reserve a second charge beside it.
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", "tokens_per_day": 5000}])
    orphan = b.ledger.reserve("rt_before_restart", KEY, 512, 0.0, settle_in_s=600)
    in_flight = create({"assistant_id": "a", "max_prompt_tokens": 256, "max_completion_tokens": 256})
    b.admit(in_flight, {})  # a create still running is no orphan: its own run may show up yet
    ex = submit("run_7")
    assert b.admit(ex, {}) is None
    assert b.ledger.by_run["run_7"] is orphan and ex.request_id not in b.pending
    assert len(b.ledger.by_id) == 2 and b.ledger.window(KEY, "day").reserved_tokens == 1024


def test_clamp_sets_both_maxima_for_a_request_that_sets_neither():
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", "tokens_per_day": 2000, "clamp": True}])
    ex = create({"assistant_id": "a"})  # estimated at the default, 4096: more than the limit
    assert b.admit(ex, {}) is None
    assert orjson.loads(ex.request_body) == {"assistant_id": "a", "max_prompt_tokens": 1500,
                                             "max_completion_tokens": 500}
    assert b.pending[ex.request_id].reserved_tokens == 2000
    assert b.admit(create({"assistant_id": "a"}), {}).status == 429  # nothing left


def test_refusals_are_counted_by_alias():
    b = budgets(unknown_keys="deny")
    b.admit(create({"assistant_id": "a", "max_prompt_tokens": 4096, "max_completion_tokens": 4096}), {})
    b.admit(create({"assistant_id": "a"}, key=OTHER), {})
    assert b.rejections == {"team-a": 1, "other": 1}


def test_responses_and_chat_estimate_the_default_for_the_input_plus_their_output_bound():
    from proxy.apis import classify
    from proxy.budgets.gate import limits_of

    responses = limits_of(classify("POST", "/v1/responses"))
    chat = limits_of(classify("POST", "/openai/deployments/gpt-4o/chat/completions"))
    # Nothing bounds their input: max_prompt_tokens means nothing to them.
    assert estimate({"max_output_tokens": 300, "max_prompt_tokens": 100}, 4096, responses) == 4396
    assert estimate({"max_completion_tokens": 400}, 4096, chat) == 4496
    assert estimate({"max_tokens": 500}, 4096, chat) == 4596  # the older name counts the same
    assert estimate({}, 4096, responses) == estimate(None, 4096, chat) == 4096
    assert classify("POST", "/v1/responses").budgeted and not classify("GET", "/v1/responses/resp_1").budgeted


def test_an_assistants_continuation_never_takes_over_another_apis_charge_as_its_orphan():
    b = budgets(keys=[{"key_id": KEY, "alias": "team-a", "tokens_per_day": 100_000}])
    # A Responses create whose stream was cut before response.created: its charge is open, linked
    # to nothing, and its exchange is over.
    resp = create({"model": "gpt-4o", "input": "hi", "max_output_tokens": 1000}, path="/v1/responses")
    assert b.admit(resp, {}) is None
    responses_charge = b.pending.pop(resp.request_id)
    # An Assistants submit_tool_outputs of a run runtap does not know (a restart) reserves its own.
    ex = submit("run_7")
    assert b.admit(ex, {}) is None
    assert b.ledger.by_run.get("run_7") is not responses_charge and responses_charge.run_id is None
