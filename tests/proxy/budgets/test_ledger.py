import pytest

from proxy.budgets.ledger import EXPIRED, RELEASED, RESERVED, SETTLED, Ledger
from proxy.budgets.store import load_charges
from proxy.store.writer import Writer

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
