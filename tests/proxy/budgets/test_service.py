import contextlib

from proxy.budgets.service import BudgetService
from proxy.config import Settings
from proxy.runs import RunTracker
from proxy.store.writer import Writer

KEY = "sha256:0123456789abcdef"


def settings(db: str, **budgets) -> Settings:
    return Settings.model_validate({"recorder": {"db": db}, "budgets": budgets})


async def test_start_writes_the_limits_and_loads_the_ledger_and_apply_swaps_budgets_live(tmp_path):
    db = str(tmp_path / "r.duckdb")
    writer = Writer(db, batch_interval_s=0.001)
    writer.start()
    try:
        first = BudgetService(settings(db, keys=[{"key_id": KEY, "alias": "a", "tokens_per_day": 10}]),
                              RunTracker(), writer, lambda: None)
        with contextlib.closing(writer.cursor()) as cur:
            assert first.start(cur) == 0
        first.ledger.reserve("rt_1", KEY, 5, 0.0, settle_in_s=60)
        await writer.flush()
        second = BudgetService(settings(db), RunTracker(), writer, lambda: None)
        with contextlib.closing(writer.cursor()) as cur:
            assert second.start(cur) == 1
            assert cur.execute("select count(*) from budget_limits").fetchall() == [(0,)]
        assert second.ledger.window(KEY, "day").reserved_tokens == 5
        assert second.budgets.budget_of(KEY) is None and second.alias(KEY) == "other"
        second.apply(settings(db, keys=[{"key_id": KEY, "alias": "b", "tokens_per_day": 7}],
                              unknown_keys="deny"))
        assert second.budgets.budget_of(KEY).tokens_per_day == 7 and second.alias(KEY) == "b"
        assert second.settings.budgets.unknown_keys == "deny"
    finally:
        writer.close()


def test_apply_keeps_the_sections_that_need_a_restart(tmp_path, caplog):
    db = str(tmp_path / "r.duckdb")
    service = BudgetService(settings(db), RunTracker(), None, lambda: None)  # type: ignore[arg-type]
    changed = Settings.model_validate({"recorder": {"db": db}, "server": {"listen": "127.0.0.1:1"},
                                       "budgets": {"unknown_keys": "deny"}})
    service.apply(changed)
    assert service.settings.server.listen == "127.0.0.1:8080" and service.settings.budgets.unknown_keys == "deny"
    assert "only [budgets] and [prices] are reloaded" in caplog.text
