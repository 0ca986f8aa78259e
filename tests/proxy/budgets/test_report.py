from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from proxy.admin.listener import make_admin_app
from proxy.apis.assistants.runs import RunTracker
from proxy.app import PARTS
from proxy.budgets.gate import Budgets, prices_from
from proxy.budgets.ledger import Ledger
from proxy.budgets.report import COLUMNS, figures, register_collector, remaining_tokens, tick
from proxy.budgets.settings import BudgetsSettings
from proxy.record.migrations import price_rows

KEY, B, C = "sha256:0123456789abcdef", "sha256:bbbbbbbbbbbbbbbb", "sha256:cccccccccccccccc"
NOW = 1_800_000_000.0


class Clock:
    now = NOW

    def __call__(self) -> float:
        return self.now


def make(clock: Clock) -> Budgets:
    settings = BudgetsSettings.model_validate({
        "unknown_keys": "default", "default": {"tokens_per_hour": 1000},
        "keys": [{"key_id": KEY, "alias": "team-a", "tokens_per_minute": 500, "tokens_per_day": 5000,
                  "usd_per_30d": 1.5}]})
    return Budgets(settings, prices_from(price_rows()), Ledger(None, clock), RunTracker(), clock=clock)


def test_one_row_per_limit_configured_keys_first_then_default_budget_keys_that_spent():
    clock = Clock()
    budgets = make(clock)
    ledger = budgets.ledger
    ledger.settle(ledger.reserve("rt_1", KEY, 512, 0.5, settle_in_s=60), 300, 0.25)
    ledger.reserve("rt_2", C, 100, 0.0, settle_in_s=60)
    ledger.reserve("rt_3", B, 200, 0.0, settle_in_s=60)
    clock.now += 10
    rows = figures(budgets)
    assert all(tuple(r) == COLUMNS for r in rows)
    assert [(r["key_alias"], r["key_id"], r["budget"], r["limit"], r["used"], r["reserved"], r["remaining"])
            for r in rows] == [
        ("team-a", KEY, "tokens_per_minute", 500, 300, 0, 200),
        ("team-a", KEY, "tokens_per_day", 5000, 300, 0, 4700),
        ("team-a", KEY, "usd_per_30d", 1.5, 0.25, 0.0, 1.25),
        ("other", B, "tokens_per_hour", 1000, 0, 200, 800),
        ("other", C, "tokens_per_hour", 1000, 0, 100, 900),
    ]
    assert rows[0]["resets_at"] == datetime.fromtimestamp(NOW + 60, UTC).isoformat()
    assert remaining_tokens(budgets) == {"team-a": 200, "other": 800}
    clock.now += 51  # rt_1 left the minute
    assert figures(budgets)[0]["resets_at"] is None and remaining_tokens(budgets)["team-a"] == 500


def test_the_metric_is_the_snapshot_the_tick_refreshes_and_tick_expires_overdue_reservations():
    clock = Clock()
    budgets = make(clock)
    registry = CollectorRegistry()
    collector = register_collector(registry, budgets)
    assert registry.get_sample_value("runtap_budget_remaining_tokens", {"key_alias": "team-a"}) == 500
    charge = budgets.ledger.reserve("rt_1", KEY, 400, 0.0, settle_in_s=30)
    assert registry.get_sample_value("runtap_budget_remaining_tokens", {"key_alias": "team-a"}) == 500  # stale
    tick(budgets, collector)
    assert registry.get_sample_value("runtap_budget_remaining_tokens", {"key_alias": "team-a"}) == 100
    clock.now += 30
    tick(budgets, collector)
    assert charge.state == "expired" and charge.spent_tokens == 400
    assert registry.get_sample_value("runtap_budget_remaining_tokens", {"key_alias": "other"}) is None
    assert registry.get_sample_value("runtap_budget_admission_errors_total") == 0


async def test_get_admin_budgets_answers_the_figures_with_the_token(aiohttp_client, proxy):
    parts = proxy.app[PARTS]
    client = await aiohttp_client(make_admin_app(parts, "tok"))
    assert (await client.get("/admin/budgets")).status == 401
    response = await client.get("/admin/budgets", headers={"Authorization": "Bearer tok"})
    body = await response.json()
    assert response.status == 200 and body["budgets"] == figures(parts.budgets.budgets) == []
    assert datetime.fromisoformat(body["as_of"]).tzinfo is not None


def test_rejections_are_the_budgets_own_metric_whatever_the_metrics_observer():
    # [telemetry] metrics = false drops the metrics observer, not this counter.
    clock = Clock()
    budgets = make(clock)
    registry = CollectorRegistry()
    register_collector(registry, budgets)
    budgets.rejections.update({"team-a": 2, "other": 1})
    assert registry.get_sample_value("runtap_budget_rejections_total", {"key_alias": "team-a"}) == 2
    assert registry.get_sample_value("runtap_budget_rejections_total", {"key_alias": "other"}) == 1
