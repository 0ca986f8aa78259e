"""The ledger: every charge (a run's reservation, later its actual usage), summed per key per window.

Sans-io and synchronous: the event loop calls it, nothing here awaits, so "check, then reserve"
by the caller is atomic under asyncio. Rows describing each change go to a `RowSink` (the
recorder's writer queue) so the ledger survives a restart (`load`).

A charge is dated at its admission (`at`) and stays in a window while `at > now - window`. Its
amount is what it reserved until it is settled, then what the run actually used. Dating by
admission is what makes the limits exact: an admission checks every window ending now, and a
settlement only lowers an amount (when requests set max_*_tokens), so no window ever holds more
than its limit (README, "Budgets").

Sums are kept incrementally: per key and window a deque of charges in admission order plus running
totals; expiring a charge pops it from the left. `at` is kept non-decreasing per key so the deques
stay sorted even if the wall clock steps back.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .settings import LONGEST_WINDOW_S, WINDOWS

RESERVED, SETTLED, EXPIRED, RELEASED = "reserved", "settled", "expired", "released"
"""Charge states: holding its reservation; settled at the run's final usage; settled at its
reservation because the run was never seen to end; released (the run was never created)."""
TABLE = "budget_charges"


class RowSink(Protocol):
    def submit(self, table: str, row: dict[str, Any]) -> None: ...


def ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


@dataclass(slots=True, eq=False)
class Charge:
    charge_id: str
    """The request_id of the exchange that reserved it."""
    key_id: str
    at: float
    """Admission time (epoch seconds): the charge belongs to windows that contain it."""
    reserved_tokens: int
    reserved_usd: float
    settle_by: float
    """When an unsettled reservation is settled at its reserved amount."""
    run_id: str | None = None
    model: str | None = None
    state: str = RESERVED
    spent_tokens: int = 0
    spent_usd: float = 0.0
    cancelled: bool = False
    """runtap asked the upstream to cancel the run (cancel_on_exhaustion)."""

    @property
    def open(self) -> bool:
        return self.state == RESERVED

    @property
    def tokens(self) -> int:
        return self.reserved_tokens if self.open else self.spent_tokens

    @property
    def usd(self) -> float:
        return self.reserved_usd if self.open else self.spent_usd


class Window:
    """The charges of one key dated within the last `seconds`, with their sums."""

    __slots__ = ("charges", "cutoff", "reserved_tokens", "reserved_usd", "seconds", "used_tokens", "used_usd")

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.charges: deque[Charge] = deque()
        self.cutoff = float("-inf")
        """Charges dated at or before this have left the window."""
        self.used_tokens = self.reserved_tokens = 0
        self.used_usd = self.reserved_usd = 0.0

    @property
    def tokens(self) -> int:
        return self.used_tokens + self.reserved_tokens

    @property
    def usd(self) -> float:
        return self.used_usd + self.reserved_usd

    def holds(self, charge: Charge) -> bool:
        return charge.at > self.cutoff

    def add(self, charge: Charge) -> None:
        self.charges.append(charge)
        self._count(charge, 1)

    def remove_amount(self, charge: Charge) -> None:
        """Before a charge changes: take its current amount out (add it back with `add_amount`)."""
        if self.holds(charge):
            self._count(charge, -1)

    def add_amount(self, charge: Charge) -> None:
        if self.holds(charge):
            self._count(charge, 1)

    def _count(self, charge: Charge, sign: int) -> None:
        if charge.open:
            self.reserved_tokens += sign * charge.reserved_tokens
            self.reserved_usd += sign * charge.reserved_usd
        else:
            self.used_tokens += sign * charge.spent_tokens
            self.used_usd += sign * charge.spent_usd

    def advance(self, now: float) -> Iterator[Charge]:
        """Drop the charges that left the window by `now`; yields them."""
        self.cutoff = max(self.cutoff, now - self.seconds)
        charges = self.charges
        while charges and charges[0].at <= self.cutoff:
            charge = charges.popleft()
            self._count(charge, -1)
            yield charge
        if not charges:  # float drift must not leave a phantom cent behind
            self.used_usd = self.reserved_usd = 0.0

    def frees_at(self, tokens: float, usd: float) -> float | None:
        """When enough charges leave the window to free `tokens` (and `usd`); None if they never do."""
        for charge in self.charges:
            tokens -= charge.tokens
            usd -= charge.usd
            if tokens <= 0 and usd <= 1e-12:
                return charge.at + self.seconds
        return None

    def oldest_leaves_at(self) -> float | None:
        return self.charges[0].at + self.seconds if self.charges else None


class KeyLedger:
    __slots__ = ("last_at", "windows")

    def __init__(self) -> None:
        self.windows = {name: Window(seconds) for name, seconds in WINDOWS.items()}
        self.last_at = float("-inf")


class Ledger:
    def __init__(self, sink: RowSink | None = None, clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self.clock = clock
        self.keys: dict[str, KeyLedger] = {}
        self.by_id: dict[str, Charge] = {}
        """Every charge still inside the longest window, or still open."""
        self.by_run: dict[str, Charge] = {}
        self.open: dict[str, Charge] = {}

    # -- reading -------------------------------------------------------------------------------
    def window(self, key_id: str, name: str, now: float | None = None) -> Window:
        """The key's window `name`, advanced to `now` (charges that left it are dropped)."""
        window = self._key(key_id).windows[name]
        self._advance(window, self.clock() if now is None else now)
        return window

    def known_keys(self) -> Iterable[str]:
        return self.keys.keys()

    # -- changing ------------------------------------------------------------------------------
    def reserve(self, charge_id: str, key_id: str, tokens: int, usd: float, *, settle_in_s: float,
                run_id: str | None = None, model: str | None = None, alias: str | None = None,
                now: float | None = None) -> Charge:
        book = self._key(key_id)
        now = self.clock() if now is None else now
        at = book.last_at = max(now, book.last_at)
        charge = Charge(charge_id, key_id, at, tokens, usd, at + settle_in_s, run_id=run_id, model=model)
        self._index(charge, book)
        self._write(charge, key_alias=alias, reserved_at=ts(at), reserved_tokens=tokens, reserved_usd=usd,
                    settle_by=ts(charge.settle_by), run_id=run_id, model=model, state=RESERVED)
        return charge

    def top_up(self, charge: Charge, tokens: int, usd: float, *, settle_in_s: float) -> None:
        """A continuation needs more than the run reserved: the charge holds more, and is open again."""
        with self._changing(charge):
            charge.reserved_tokens += tokens
            charge.reserved_usd += usd
            charge.state = RESERVED
            charge.settle_by = max(charge.settle_by, self.clock() + settle_in_s)
        self.open[charge.charge_id] = charge
        self._write(charge, reserved_tokens=charge.reserved_tokens, reserved_usd=charge.reserved_usd,
                    state=RESERVED, settle_by=ts(charge.settle_by))

    def link(self, charge: Charge, run_id: str, model: str | None = None) -> None:
        if charge.run_id == run_id and (model is None or charge.model == model):
            return
        charge.run_id = run_id
        charge.model = model or charge.model
        self.by_run[run_id] = charge
        self._write(charge, run_id=run_id, model=charge.model)

    def settle_unseen_at(self, charge: Charge, settle_by: float) -> None:
        """The run's (latest) expires_at is known: an unseen end is settled then, not at the cap."""
        if charge.open and settle_by != charge.settle_by:
            charge.settle_by = settle_by
            self._write(charge, settle_by=ts(settle_by))

    def settle(self, charge: Charge, tokens: int, usd: float, state: str = SETTLED) -> bool:
        """Replace the reservation by an amount. A final usage replaces an earlier expiry, once."""
        if charge.state in (SETTLED, RELEASED) or (charge.state == EXPIRED and state == EXPIRED):
            return False
        with self._changing(charge):
            charge.state, charge.spent_tokens, charge.spent_usd = state, tokens, usd
        self.open.pop(charge.charge_id, None)
        self._write(charge, state=state, spent_tokens=tokens, spent_usd=usd, settled_at=ts(self.clock()))
        return True

    def release(self, charge: Charge) -> bool:
        return self.settle(charge, 0, 0.0, RELEASED)

    def mark_cancelled(self, charge: Charge) -> None:
        charge.cancelled = True
        self._write(charge, cancelled_by_budget_at=ts(self.clock()))

    def expire_due(self, now: float | None = None) -> list[Charge]:
        """Settle, at their reservation, the open charges whose run was never seen to end in time."""
        now = self.clock() if now is None else now
        due = [c for c in self.open.values() if c.settle_by <= now]
        for charge in due:
            self.settle(charge, charge.reserved_tokens, charge.reserved_usd, EXPIRED)
        return due

    def advance_all(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for book in self.keys.values():
            for window in book.windows.values():
                self._advance(window, now)

    # -- persistence -----------------------------------------------------------------------------
    def load(self, rows: Iterable[Mapping[str, Any]], now: float | None = None) -> int:
        """Charges from the database (oldest first): what a restart must neither forget nor repeat."""
        now = self.clock() if now is None else now
        count = 0
        for row in rows:
            at = row["reserved_at"].timestamp()
            state = row["state"] or RESERVED
            if at <= now - LONGEST_WINDOW_S and state != RESERVED:
                continue
            book = self._key(row["key_id"])
            settle_by = row["settle_by"].timestamp() if row["settle_by"] else at
            charge = Charge(row["charge_id"], row["key_id"], max(at, book.last_at), int(row["reserved_tokens"] or 0),
                            float(row["reserved_usd"] or 0.0), settle_by, run_id=row["run_id"], model=row["model"],
                            state=state, spent_tokens=int(row["spent_tokens"] or 0),
                            spent_usd=float(row["spent_usd"] or 0.0),
                            cancelled=row.get("cancelled_by_budget_at") is not None)
            book.last_at = charge.at
            self._index(charge, book)
            count += 1
        return count

    # -- internals -------------------------------------------------------------------------------
    def _key(self, key_id: str) -> KeyLedger:
        book = self.keys.get(key_id)
        if book is None:
            book = self.keys[key_id] = KeyLedger()
        return book

    def _index(self, charge: Charge, book: KeyLedger) -> None:
        self.by_id[charge.charge_id] = charge
        if charge.run_id is not None:
            self.by_run[charge.run_id] = charge
        if charge.open:
            self.open[charge.charge_id] = charge
        for window in book.windows.values():
            if window.holds(charge):
                window.add(charge)

    def _advance(self, window: Window, now: float) -> None:
        for charge in window.advance(now):
            # Out of the longest window: forget it, unless its run may still end and be settled.
            if window.seconds == LONGEST_WINDOW_S and not charge.open:
                self.by_id.pop(charge.charge_id, None)
                if charge.run_id is not None and self.by_run.get(charge.run_id) is charge:
                    del self.by_run[charge.run_id]

    def _changing(self, charge: Charge) -> _Changing:
        book = self._key(charge.key_id)
        return _Changing(charge, book.windows.values())

    def _write(self, charge: Charge, **columns: Any) -> None:
        if self._sink is not None:
            self._sink.submit(TABLE, {"charge_id": charge.charge_id, "key_id": charge.key_id, **columns})


class _Changing:
    """`with`: take a charge's amount out of its windows, let it change, put the new amount back."""

    __slots__ = ("_charge", "_windows")

    def __init__(self, charge: Charge, windows: Iterable[Window]) -> None:
        self._charge, self._windows = charge, tuple(windows)

    def __enter__(self) -> None:
        for window in self._windows:
            window.remove_amount(self._charge)

    def __exit__(self, *exc: object) -> None:
        for window in self._windows:
            window.add_amount(self._charge)
