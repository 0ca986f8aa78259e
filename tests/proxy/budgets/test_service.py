import asyncio
import contextlib
import os
import signal

from proxy.apis.assistants.runs import RunTracker
from proxy.budgets.service import BudgetService
from proxy.config import Settings
from proxy.record.writer import Writer

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
        assert second.ledger.window(KEY, "day").reserved_tokens == 0  # no budget: no window kept
        assert second.ledger.open["rt_1"].reserved_tokens == 5  # but every open reservation is
        assert second.budgets.budget_of(KEY) is None and second.alias(KEY) == "other"
        second.apply(settings(db, keys=[{"key_id": KEY, "alias": "b", "tokens_per_day": 7}],
                              unknown_keys="deny"))
        assert second.ledger.window(KEY, "day").reserved_tokens == 5
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


async def test_a_sighup_that_budgets_a_key_loads_its_history_and_reloads_run_one_at_a_time(tmp_path):
    db = str(tmp_path / "r.duckdb")
    writer = Writer(db, batch_interval_s=0.001)
    writer.start()
    try:
        service = BudgetService(settings(db), RunTracker(), writer, lambda: None)
        with contextlib.closing(writer.cursor()) as cur:
            service.start(cur)
        # Without a budget, runs are written but not kept in memory once settled.
        for i in range(3):
            service.ledger.settle(service.ledger.reserve(f"rt_{i}", KEY, 512, 0.0, settle_in_s=60), 100, 0.0)
        assert service.ledger.by_id == {}
        budgeted = settings(db, keys=[{"key_id": KEY, "alias": "a", "tokens_per_day": 1000}])
        gate = asyncio.Event()
        order: list[str] = []

        def load() -> Settings:
            order.append("load")
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(5)
            return budgeted

        loop = asyncio.get_running_loop()
        context = service.sighup(load, writer.cursor)(None)  # type: ignore[arg-type]
        await anext(context)
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert order == ["load"]  # the second reload waits for the first
        gate.set()
        for _ in range(200):
            if len(order) == 2 and service.ledger.window(KEY, "day").used_tokens == 300:
                break
            await asyncio.sleep(0.01)
        assert service.ledger.window(KEY, "day").used_tokens == 300  # the key's history, from the file
        gate.clear()
        os.kill(os.getpid(), signal.SIGHUP)  # still loading at shutdown: cancelled, and awaited
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert len(order) == 3
        with contextlib.suppress(StopAsyncIteration):
            await anext(context)
        assert [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "reload"] == []
    finally:
        gate.set()
        writer.close()
