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

import logging
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
log = logging.getLogger("runtap.budgets")


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
    api: str | None = None
    """The API of the request that reserved it, while this process knows (not stored: None after a restart)."""

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
    def __init__(self, sink: RowSink | None = None, clock: Callable[[], float] = time.time,
                 tracked: Callable[[str], bool] | None = None) -> None:
        self._sink = sink
        self.clock = clock
        self.tracked: Callable[[str], bool] = tracked or (lambda key_id: True)
        """Whether a key's windows are kept (it has a budget). Other keys' charges are written, and
        kept in memory only while open: without budgets, memory stays O(runs in flight), not 30 days
        of runs (README, "Budgets")."""
        self.keys: dict[str, KeyLedger] = {}
        self.by_id: dict[str, Charge] = {}
        """Every charge of a tracked key still inside the longest window, and every open charge."""
        self.by_run: dict[str, Charge] = {}
        self.open: dict[str, Charge] = {}
        self._holding: set[str] | bool | None = False
        """While `adopt` loads keys' history (False: not loading; None: every key), the charges of
        those keys forgotten meanwhile are kept in `_held`: the database may not show them settled yet."""
        self._held: list[Charge] = []

    # -- reading -------------------------------------------------------------------------------
    def window(self, key_id: str, name: str, now: float | None = None) -> Window:
        """The key's window `name`, advanced to `now` (charges that left it are dropped)."""
        book = self.keys.get(key_id)
        if book is None and not self.tracked(key_id):
            return Window(WINDOWS[name])  # no budget: nothing counts, and nothing is kept
        window = self._key(key_id).windows[name]
        self._advance(window, self.clock() if now is None else now)
        return window

    def known_keys(self) -> Iterable[str]:
        return self.keys.keys()

    # -- changing ------------------------------------------------------------------------------
    def reserve(self, charge_id: str, key_id: str, tokens: int, usd: float, *, settle_in_s: float,
                run_id: str | None = None, model: str | None = None, alias: str | None = None,
                now: float | None = None, api: str | None = None) -> Charge:
        book = self._key(key_id) if self.tracked(key_id) else None
        now = self.clock() if now is None else now
        at = now if book is None else max(now, book.last_at)
        if book is not None:
            book.last_at = at
        charge = Charge(charge_id, key_id, at, tokens, usd, at + settle_in_s, run_id=run_id, model=model, api=api)
        self._index(charge, book)
        self._write(charge, key_alias=alias, reserved_at=ts(at), reserved_tokens=tokens, reserved_usd=usd,
                    settle_by=ts(charge.settle_by), run_id=run_id, model=model, state=RESERVED)
        return charge

    def top_up(self, charge: Charge, tokens: int, usd: float, *, settle_in_s: float) -> None:
        """A continuation needs more than the run reserved: the charge holds more, and is open again."""
        self._grow(charge, tokens, usd, self.clock() + settle_in_s)

    def take_back(self, charge: Charge, tokens: int, usd: float, state: str) -> None:
        """Undo a `top_up` whose continuation the upstream refused: the run did not go on, so it owes
        no more than before; `state` is the charge's state before the top-up (it may have expired)."""
        if not charge.open:
            return  # settled meanwhile: its final usage already replaced every reservation
        with self._changing(charge):
            charge.reserved_tokens = max(0, charge.reserved_tokens - tokens)
            charge.reserved_usd = max(0.0, charge.reserved_usd - usd)
            charge.state = state
        if not charge.open:
            self.open.pop(charge.charge_id, None)
        self._write(charge, reserved_tokens=charge.reserved_tokens, reserved_usd=charge.reserved_usd, state=state)

    def _grow(self, charge: Charge, tokens: int, usd: float, settle_by: float) -> None:
        with self._changing(charge):
            charge.reserved_tokens += tokens
            charge.reserved_usd += usd
            charge.state = RESERVED
            charge.settle_by = max(charge.settle_by, settle_by)
        self.open[charge.charge_id] = charge
        self._write(charge, reserved_tokens=charge.reserved_tokens, reserved_usd=charge.reserved_usd,
                    state=RESERVED, settle_by=ts(charge.settle_by))

    def link(self, charge: Charge, run_id: str, model: str | None = None, used: int = 0) -> Charge:
        """Tie a charge to its run; the charge that now pays for the run (see `_fold`).

        `used` is the run's usage so far: it decides whether a second charge of the same run was a
        top-up after all (the run had used its reservation up) or must simply be let go."""
        other = self.by_run.get(run_id)
        if other is not None and other is not charge and other.state != RELEASED and charge.state != RELEASED:
            charge = self._fold(charge, other, used)
        if charge.run_id == run_id and (model is None or charge.model == model) and self.by_run.get(run_id) is charge:
            return charge
        charge.run_id = run_id
        charge.model = model or charge.model
        self.by_run[run_id] = charge
        self._write(charge, run_id=run_id, model=charge.model)
        return charge

    def _fold(self, a: Charge, b: Charge, used: int) -> Charge:
        """Two charges for one run (a continuation admitted before the create's run was linked): the
        run must pay once. A charge already settled at the final usage wins; else the older one, which
        takes the other's reservation only if the run had used its own up (what a top-up would have
        done), and the other is released. On a tie, the charge being linked (the create's own)."""
        if a.state == SETTLED or (b.state != SETTLED and a.at <= b.at):
            keep, drop = a, b
        else:
            keep, drop = b, a
        grow = keep.state != SETTLED and drop.open and used >= keep.reserved_tokens
        tokens, usd, settle_by = drop.reserved_tokens, drop.reserved_usd, drop.settle_by
        log.info("run %s: charges %s and %s folded into %s", drop.run_id or keep.run_id, keep.charge_id,
                 drop.charge_id, keep.charge_id)
        self.release(drop)
        if grow:
            self._grow(keep, tokens, usd, settle_by)
        return keep
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
        if charge.key_id not in self.keys:
            self._forget(charge)
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
        """Charges from the database (oldest first): what a restart must neither forget nor repeat.
        Of keys without a budget (`tracked`), only open charges are kept."""
        now = self.clock() if now is None else now
        count = 0
        for row in rows:
            charge = charge_of(row, now)
            if charge is None or (not charge.open and (charge.at <= now - LONGEST_WINDOW_S
                                                       or not self.tracked(charge.key_id))):
                continue
            book = self._key(charge.key_id) if self.tracked(charge.key_id) else None
            if book is not None:
                charge.at = book.last_at = max(charge.at, book.last_at)
            self._index(charge, book)
            count += 1
        return count

    def hold(self, keys: set[str] | None) -> None:
        """`adopt` will load these keys' history (None: every key without a budget so far)."""
        self._holding, self._held = keys, []

    def unhold(self) -> None:
        """The history was not loaded after all (the reload failed): stop holding."""
        self._holding, self._held = False, []

    def adopt(self, rows: Iterable[Mapping[str, Any]], now: float | None = None) -> int:
        """Keys that just got a budget (SIGHUP, after `hold` and the `tracked` switch): their history
        from the database (`rows`) and their charges in memory into windows. Memory wins over the
        database, which may lag it; open rows come from memory only (every open charge is there)."""
        now = self.clock() if now is None else now
        held, self._holding, self._held = self._held, False, []
        found: dict[str, Charge] = {}
        for row in rows:
            charge = charge_of(row, now)
            if charge is not None and not charge.open and charge.at > now - LONGEST_WINDOW_S \
                    and charge.key_id not in self.keys and self.tracked(charge.key_id):
                found[charge.charge_id] = charge
        for charge in (*held, *self.by_id.values()):
            if charge.key_id not in self.keys and self.tracked(charge.key_id):
                found[charge.charge_id] = charge
        for charge in sorted(found.values(), key=lambda c: c.at):
            book = self._key(charge.key_id)
            charge.at = book.last_at = max(charge.at, book.last_at)
            self._index(charge, book)
        return len(found)

    def untrack(self) -> None:
        """Keys whose budget is gone (SIGHUP): drop their windows and settled charges; open ones stay
        until they settle."""
        gone = {key_id for key_id in self.keys if not self.tracked(key_id)}
        if not gone:
            return
        for key_id in gone:
            del self.keys[key_id]
        for charge in [c for c in self.by_id.values() if c.key_id in gone and not c.open]:
            self._forget(charge)

    # -- internals -------------------------------------------------------------------------------
    def _key(self, key_id: str) -> KeyLedger:
        book = self.keys.get(key_id)
        if book is None:
            book = self.keys[key_id] = KeyLedger()
        return book

    def _index(self, charge: Charge, book: KeyLedger | None) -> None:
        self.by_id[charge.charge_id] = charge
        if charge.run_id is not None:
            # A released charge never pays for its run: it must not hide the one that does (a
            # continuation's charge folded into the create's keeps its run_id in the database).
            current = self.by_run.get(charge.run_id)
            if charge.state != RELEASED or current is None or current.state == RELEASED:
                self.by_run[charge.run_id] = charge
        if charge.open:
            self.open[charge.charge_id] = charge
        if book is None:
            return
        for window in book.windows.values():
            if window.holds(charge):
                window.add(charge)

    def _forget(self, charge: Charge) -> None:
        """A closed charge of a key without a budget: written, nothing left to keep it for."""
        self.by_id.pop(charge.charge_id, None)
        if charge.run_id is not None and self.by_run.get(charge.run_id) is charge:
            del self.by_run[charge.run_id]
        if self._holding is not False and (self._holding is None or charge.key_id in self._holding):
            self._held.append(charge)

    def _advance(self, window: Window, now: float) -> None:
        for charge in window.advance(now):
            # Out of the longest window: forget it, unless its run may still end and be settled.
            if window.seconds == LONGEST_WINDOW_S and not charge.open:
                self.by_id.pop(charge.charge_id, None)
                if charge.run_id is not None and self.by_run.get(charge.run_id) is charge:
                    del self.by_run[charge.run_id]

    def _changing(self, charge: Charge) -> _Changing:
        book = self.keys.get(charge.key_id)
        return _Changing(charge, book.windows.values() if book is not None else ())

    def _write(self, charge: Charge, **columns: Any) -> None:
        if self._sink is not None:
            self._sink.submit(TABLE, {"charge_id": charge.charge_id, "key_id": charge.key_id, **columns})


def charge_of(row: Mapping[str, Any], now: float) -> Charge | None:
    """A `budget_charges` row as a charge, repaired where a lost or replayed row left it inconsistent."""
    reserved_at = row["reserved_at"]
    state = row["state"] or RESERVED
    if reserved_at is None:
        # The reserve row was lost (a spill replay, a SIGKILL between batches): date it by what is
        # known, never in the future; with nothing to date it by it cannot be in any window.
        reserved_at = row.get("settled_at") or row.get("settle_by")
        if reserved_at is None:
            log.warning("budget charge %s has no reserved_at: skipped", row["charge_id"])
            return None
        log.warning("budget charge %s has no reserved_at: dated %s", row["charge_id"], reserved_at)
    at = min(reserved_at.timestamp(), now)
    if state == RESERVED and row.get("settled_at") is not None:
        # An older row replayed over a later settlement (the writer's merge keeps the latest non-NULL
        # value of each column, and `state` is never NULL): the spent amount is the truth. Expired
        # rather than settled, so that a final usage seen later still replaces it.
        log.warning("budget charge %s is reserved but was settled at %s: loaded as expired", row["charge_id"],
                    row["settled_at"])
        state = EXPIRED
    settle_by = row["settle_by"].timestamp() if row["settle_by"] else at
    return Charge(row["charge_id"], row["key_id"], at, int(row["reserved_tokens"] or 0),
                  float(row["reserved_usd"] or 0.0), settle_by, run_id=row["run_id"], model=row["model"],
                  state=state, spent_tokens=int(row["spent_tokens"] or 0), spent_usd=float(row["spent_usd"] or 0.0),
                  cancelled=row.get("cancelled_by_budget_at") is not None)


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
