import time
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from proxy.budgets.ledger import EXPIRED, RELEASED, RESERVED, SETTLED, Ledger
from proxy.budgets.store import load_charges
from proxy.record.migrations import migrate
from proxy.record.writer import Writer

KEY = "sha256:0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(clock: Clock) -> Ledger:
    return Ledger(None, clock)


def sums(ledger: Ledger, window: str = "day") -> tuple[int, int]:
    w = ledger.window(KEY, window)
    return w.used_tokens, w.reserved_tokens


def test_a_reservation_counts_until_settled_then_the_actual_usage_counts(ledger):
    charge = ledger.reserve("rt_1", KEY, 512, 0.01, settle_in_s=600)
    assert sums(ledger) == (0, 512) and ledger.open == {"rt_1": charge}
    ledger.link(charge, "run_1", "gpt-4o")
    assert ledger.by_run["run_1"] is charge
    assert ledger.settle(charge, 450, 0.005)
    assert sums(ledger) == (450, 0) and charge.state == SETTLED and ledger.open == {}
    assert not ledger.settle(charge, 999, 1.0)  # counted once
    assert sums(ledger) == (450, 0)


def test_charges_leave_each_rolling_window_when_it_passes_them(ledger, clock):
    ledger.settle(ledger.reserve("rt_1", KEY, 100, 0.0, settle_in_s=600), 100, 0.0)
    clock.now += 30
    ledger.reserve("rt_2", KEY, 200, 0.0, settle_in_s=600)
    clock.now += 31  # rt_1 is 61 s old: out of the minute, still in the hour
    assert sums(ledger, "minute") == (0, 200) and sums(ledger, "hour") == (100, 200)
    clock.now += 30 * 86400
    assert sums(ledger, "30d") == (0, 0)
    # Settled charges out of every window are forgotten; rt_2 is still open and may yet settle.
    assert set(ledger.by_id) == {"rt_2"}


def test_frees_at_is_when_enough_old_charges_leave(ledger, clock):
    start = clock.now
    for i in range(3):
        ledger.settle(ledger.reserve(f"rt_{i}", KEY, 100, 0.0, settle_in_s=600), 100, 0.0)
        clock.now += 10
    window = ledger.window(KEY, "minute")
    assert window.frees_at(150, 0) == start + 10 + 60  # the two oldest must go
    assert window.frees_at(301, 0) is None
    assert window.oldest_leaves_at() == start + 60


def test_unsettled_reservations_expire_at_their_reserved_amount_and_a_late_final_usage_still_wins(ledger, clock):
    charge = ledger.reserve("rt_1", KEY, 512, 0.0, settle_in_s=600)
    ledger.settle_unseen_at(charge, clock.now + 900)
    clock.now += 899
    assert ledger.expire_due() == []
    clock.now += 1
    assert ledger.expire_due() == [charge]
    assert charge.state == EXPIRED and sums(ledger) == (512, 0)
    assert ledger.settle(charge, 300, 0.0)  # the run's end was seen after all
    assert sums(ledger) == (300, 0)


def test_a_release_frees_everything_and_a_top_up_reopens(ledger):
    released = ledger.reserve("rt_1", KEY, 512, 0.0, settle_in_s=600)
    assert ledger.release(released) and released.state == RELEASED and sums(ledger) == (0, 0)
    charge = ledger.reserve("rt_2", KEY, 50, 0.0, settle_in_s=600)
    ledger.top_up(charge, 50, 0.0, settle_in_s=600)
    assert sums(ledger) == (0, 100) and charge.state == RESERVED


def test_admission_times_never_go_backwards_for_a_key(ledger, clock):
    first = ledger.reserve("rt_1", KEY, 1, 0.0, settle_in_s=600)
    clock.now -= 5  # the wall clock stepped back
    second = ledger.reserve("rt_2", KEY, 1, 0.0, settle_in_s=600)
    assert second.at == first.at


async def test_the_ledger_written_through_the_writer_loads_back_the_same(tmp_path, clock):
    writer = Writer(tmp_path / "r.duckdb", batch_interval_s=0.001)
    writer.start()
    try:
        ledger = Ledger(writer, clock)
        done = ledger.reserve("rt_1", KEY, 512, 0.02, settle_in_s=600, model="gpt-4o", alias="team-a")
        ledger.link(done, "run_1", "gpt-4o")
        ledger.settle(done, 450, 0.01)
        clock.now += 1
        ledger.reserve("rt_2", KEY, 512, 0.02, settle_in_s=600, run_id="run_2")
        await writer.flush()
        with writer.cursor() as cur:
            rows = load_charges(cur)
    finally:
        writer.close()
    assert [(r["charge_id"], r["state"], r["key_alias"]) for r in rows] == [
        ("rt_1", "settled", "team-a"), ("rt_2", "reserved", None)]
    again = Ledger(None, clock)
    assert again.load(rows) == 2
    assert sums(again) == sums(ledger) == (450, 512)
    assert again.by_run["run_2"].open and again.by_run["run_1"].spent_tokens == 450
    assert again.window(KEY, "day").used_usd == pytest.approx(0.01)


def test_a_second_charge_of_one_run_is_folded_at_link_time_never_paid_twice(ledger):
    # A continuation admitted before the create's run was linked reserved for the run afresh.
    create = ledger.reserve("rt_create", KEY, 512, 0.0, settle_in_s=600)
    early = ledger.reserve("rt_submit", KEY, 4096, 0.0, settle_in_s=600, run_id="run_1")
    assert ledger.link(create, "run_1", used=98) is create  # 98 < 512: the continuation rides on it
    assert (early.state, ledger.by_run["run_1"], sums(ledger)) == (RELEASED, create, (0, 512))
    assert ledger.settle(create, 227, 0.0) and sums(ledger) == (227, 0) and ledger.open == {}


def test_a_folded_charge_keeps_the_top_up_when_the_run_had_used_its_reservation_up(ledger):
    create = ledger.reserve("rt_create", KEY, 50, 0.0, settle_in_s=600)
    early = ledger.reserve("rt_submit", KEY, 50, 0.0, settle_in_s=600, run_id="run_1")
    ledger.link(create, "run_1", used=98)
    assert (early.state, create.reserved_tokens, sums(ledger)) == (RELEASED, 100, (0, 100))


def test_a_charge_already_settled_at_the_final_usage_wins_a_fold(ledger):
    create = ledger.reserve("rt_create", KEY, 512, 0.0, settle_in_s=600)
    early = ledger.reserve("rt_submit", KEY, 4096, 0.0, settle_in_s=600, run_id="run_1")
    ledger.settle(early, 227, 0.0)
    assert ledger.link(create, "run_1") is early
    assert (create.state, sums(ledger)) == (RELEASED, (227, 0))


def test_a_released_charge_loaded_after_the_one_that_pays_does_not_hide_it(ledger, clock):
    rows = [{"charge_id": "rt_1", "key_id": KEY, "reserved_at": datetime.fromtimestamp(clock.now - 5, UTC),
             "settle_by": None, "state": "reserved", "reserved_tokens": 512, "reserved_usd": 0.0, "run_id": "run_1",
             "model": None, "spent_tokens": None, "spent_usd": None, "settled_at": None},
            {"charge_id": "rt_2", "key_id": KEY, "reserved_at": datetime.fromtimestamp(clock.now - 4, UTC),
             "settle_by": None, "state": "released", "reserved_tokens": 4096, "reserved_usd": 0.0,
             "run_id": "run_1", "model": None, "spent_tokens": 0, "spent_usd": 0.0, "settled_at": None}]
    assert ledger.load(rows) == 2 and ledger.by_run["run_1"].charge_id == "rt_1"


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "r.duckdb"))
    migrate(connection)
    yield connection
    connection.close()


def test_load_repairs_rows_a_lost_or_replayed_row_left_inconsistent(con, clock, caplog):
    clock.now = time.time()  # load_charges selects by the database's now()
    ledger = Ledger(None, clock)
    now = datetime.fromtimestamp(clock.now, UTC)
    # rt_lost: its reserve row was lost, only the settlement arrived; rt_none: nothing dates it;
    # rt_replayed: an older spilled row replayed over its settlement left state = 'reserved'.
    con.execute("insert into budget_charges (charge_id, key_id, reserved_at, settle_by, state, reserved_tokens,"
                " spent_tokens, settled_at) values"
                " ('rt_lost', ?, null, null, 'settled', null, 300, ?),"
                " ('rt_none', ?, null, null, 'reserved', 512, null, null),"
                " ('rt_replayed', ?, ?, ?, 'reserved', 512, 200, ?)",
                [KEY, now - timedelta(minutes=5), KEY, KEY, now - timedelta(minutes=9),
                 now + timedelta(hours=1), now - timedelta(minutes=8)])
    assert ledger.load(load_charges(con), now=clock.now) == 2
    assert set(ledger.by_id) == {"rt_lost", "rt_replayed"} and ledger.open == {}
    assert ledger.by_id["rt_replayed"].state == EXPIRED and sums(ledger) == (500, 0)
    assert "rt_none has no reserved_at: skipped" in caplog.text
    assert ledger.settle(ledger.by_id["rt_replayed"], 200, 0.0)  # a final usage seen later still settles it


def test_keys_without_a_budget_are_kept_in_memory_only_while_their_charges_are_open(clock):
    written: list[dict] = []

    class Sink:
        def submit(self, table: str, row: dict) -> None:
            written.append(row)

    ledger = Ledger(Sink(), clock, tracked=lambda key_id: key_id == KEY)
    other = "sha256:fedcba9876543210"
    charge = ledger.reserve("rt_1", other, 512, 0.0, settle_in_s=600, run_id="run_1")
    assert ledger.by_run["run_1"] is charge and ledger.keys == {} and ledger.window(other, "day").tokens == 0
    ledger.settle(charge, 450, 0.0)
    assert (ledger.by_id, ledger.by_run, ledger.open, ledger.keys) == ({}, {}, {}, {})
    assert [r.get("state") for r in written] == ["reserved", "settled"]  # the history is still written
    ledger.reserve("rt_2", KEY, 100, 0.0, settle_in_s=600)
    assert sums(ledger) == (0, 100)


def test_a_key_that_gets_a_budget_adopts_its_history_and_its_charges_in_memory(clock):
    budgeted: set[str] = set()
    ledger = Ledger(None, clock, tracked=budgeted.__contains__)
    in_flight = ledger.reserve("rt_open", KEY, 512, 0.0, settle_in_s=600)
    ledger.hold({KEY})
    done = ledger.reserve("rt_done", KEY, 512, 0.0, settle_in_s=600)
    ledger.settle(done, 100, 0.0)  # settled while the history is read: the rows read may not show it
    history = [{"charge_id": "rt_old", "key_id": KEY, "reserved_at": datetime.fromtimestamp(clock.now - 3600, UTC),
                "settle_by": None, "state": "settled", "reserved_tokens": 512, "reserved_usd": 0.0, "run_id": None,
                "model": None, "spent_tokens": 300, "spent_usd": 0.0, "settled_at": None},
               {"charge_id": "rt_done", "key_id": KEY, "reserved_at": datetime.fromtimestamp(clock.now, UTC),
                "settle_by": None, "state": "reserved", "reserved_tokens": 512, "reserved_usd": 0.0, "run_id": None,
                "model": None, "spent_tokens": None, "spent_usd": None, "settled_at": None}]
    budgeted.add(KEY)
    assert ledger.adopt(history) == 3
    assert sums(ledger) == (400, 512) and ledger.by_id["rt_open"] is in_flight
    budgeted.clear()
    ledger.untrack()
    assert ledger.keys == {} and set(ledger.by_id) == {"rt_open"}
