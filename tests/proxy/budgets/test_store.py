from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from proxy.budgets.settings import BudgetsSettings
from proxy.budgets.store import DEFAULT_KEY, limit_rows, load_charges, set_limits
from proxy.record.migrations import migrate

KEY = "sha256:0123456789abcdef"


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "r.duckdb"))
    migrate(connection)
    yield connection
    connection.close()


def test_limits_are_exactly_the_configs_after_each_write(con):
    settings = BudgetsSettings.model_validate({
        "unknown_keys": "default", "default": {"tokens_per_hour": 10},
        "keys": [{"key_id": KEY, "alias": "team-a", "tokens_per_day": 100, "usd_per_30d": 2.5, "clamp": True}]})
    set_limits(con, settings)
    assert con.execute("select key_id, budget, key_alias, unit, window_s, limit_value, position, clamp"
                       " from budget_limits order by position, budget").fetchall() == [
        (KEY, "tokens_per_day", "team-a", "tokens", 86400, 100.0, 0, True),
        (KEY, "usd_per_30d", "team-a", "usd", 30 * 86400, 2.5, 0, True),
        (DEFAULT_KEY, "tokens_per_hour", "other", "tokens", 3600, 10.0, 1, False),
    ]
    set_limits(con, BudgetsSettings())  # a reload that removed every budget
    assert con.execute("select count(*) from budget_limits").fetchall() == [(0,)]
    assert limit_rows(BudgetsSettings(unknown_keys="default")) == []  # a default budget with no limit


def test_load_charges_reads_the_longest_window_and_every_open_reservation(con):
    now = datetime.now(UTC)
    rows = [("recent", now - timedelta(days=1), "settled"), ("old", now - timedelta(days=31), "settled"),
            ("old-open", now - timedelta(days=40), "reserved")]
    for charge_id, at, state in rows:
        con.execute("insert into budget_charges (charge_id, key_id, reserved_at, state, reserved_tokens)"
                    " values (?, ?, ?, ?, 1)", [charge_id, KEY, at, state])
    assert [r["charge_id"] for r in load_charges(con)] == ["old-open", "recent"]
