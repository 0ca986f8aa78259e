"""Memory the budgets keep for N finished runs of keys with no budget (README, "Budgets").

Admits N create requests through `Budgets.admit` (unknown_keys = "allow", no budgets), links each
to its run and settles it as the observer would, then reports the Python heap the ledger holds
(tracemalloc), the time `Ledger.load` takes for N settled rows, and the time start-up reads them
from a DuckDB file (`load_charges`) for every key (what start-up read before) and for budgeted keys
only (none here: only open reservations).

    .venv/bin/python scripts/budget_memory.py 100000
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime

import duckdb
import orjson

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker
from proxy.budgets.gate import Budgets, prices_from
from proxy.budgets.ledger import Ledger
from proxy.budgets.settings import BudgetsSettings
from proxy.budgets.store import load_charges
from proxy.exchange import Exchange
from proxy.record.migrations import migrate, price_rows


def main(n: int) -> None:
    gc.collect()
    tracemalloc.start()
    budgets = Budgets(BudgetsSettings(), prices_from(price_rows()), Ledger(), RunTracker())
    body = orjson.dumps({"assistant_id": "a"})
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        ex = Exchange(classify("POST", "/v1/threads/runs"), "POST", "/v1/threads/runs", "", f"sha256:{i % 50:016x}",
                      body)
        budgets.admit(ex, {})
        charge = budgets.pending.pop(ex.request_id)
        budgets.ledger.link(charge, f"run_{i}", "gpt-4o")
        budgets.ledger.settle(charge, 450, 0.001)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"{n} runs, no budgets: ledger holds {held / 1e6:.1f} MB ({held / n:.0f} B per run), "
          f"{len(budgets.ledger.by_id)} charges in memory")
    now = time.time()
    rows = [{"charge_id": f"rt_{i}", "key_id": f"sha256:{i % 50:016x}", "reserved_at": datetime.fromtimestamp(
        now - 1, UTC), "settle_by": None, "state": "settled", "reserved_tokens": 4096, "reserved_usd": 0.1,
        "run_id": f"run_{i}", "model": "gpt-4o", "spent_tokens": 450, "spent_usd": 0.001, "settled_at": None}
        for i in range(n)]
    ledger = Ledger(tracked=lambda key_id: False)  # no budgets (Budgets sets this from the config)
    start = time.perf_counter()
    loaded = ledger.load(rows)
    print(f"Ledger.load of {n} settled rows of unbudgeted keys: {time.perf_counter() - start:.2f} s, "
          f"{loaded} kept")
    with tempfile.TemporaryDirectory() as tmp, duckdb.connect(f"{tmp}/r.duckdb") as con:
        migrate(con)
        con.execute("insert into budget_charges (charge_id, key_id, reserved_at, state, reserved_tokens, spent_tokens)"
                    " select 'rt_' || i, 'sha256:' || lpad((i % 50)::varchar, 16, '0'), now() - interval 1 hour,"
                    " 'settled', 4096, 450 from range(?) t(i)", [n])
        for what, keys in (("every key", None), ("budgeted keys", set())):
            start = time.perf_counter()
            rows = load_charges(con, keys)
            print(f"load_charges for {what}: {len(rows)} rows in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
