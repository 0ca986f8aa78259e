"""Admission: before a run-creating request goes upstream, reserve its estimate or refuse it (429).

`Budgets.admit()` is the only budget code on the hot path. It is synchronous: the check of every
limit and the reservation happen with no await in between, so under asyncio two requests can never
both take the last of a budget. It reads only in-memory state (the ledger's running sums), so it
costs a few microseconds per run-creating request and nothing on any other route.

Estimates (README, "Budgets"): `max_prompt_tokens + max_completion_tokens` when the request sets
both; otherwise `default_reservation_tokens` plus whichever one it sets (for Responses and Chat,
which bound no input, always the default plus `max_output_tokens` / `max_completion_tokens`). A
Responses create or a Chat completion is one charge of its own, settled at its own usage: no
continuation rides on it (each response bills its own tokens). A `submit_tool_outputs`
continuation belongs to a run that already holds a reservation (max_*_tokens bound the whole run,
protocol.md §2.6): it rides on it while the run's usage so far is below what it reserved, and
otherwise tops the reservation up by another default estimate (checked like a new run; taken
back if the upstream refuses the continuation). A continuation of a run runtap holds no charge for
takes over the key's oldest charge never linked to a run (a restart lost the link), else (the run
was created before this key had a budget, or its create is still being parsed) reserves as a new
run, linked to the run at once; `Ledger.link` folds that charge into the create's if both turn up.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from .. import errors
from ..apis.base import Route
from ..exchange import Exchange
from ..runs import RunState, RunStore
from ..tap import parse_object
from .ledger import SETTLED, Charge, Ledger
from .settings import LIMITS, MIN_COMPLETION_TOKENS, OTHER, WINDOWS, BudgetLimits, BudgetsSettings

log = logging.getLogger("runtap.budgets")
# Headers the cancel call needs to act as the caller (cancel_on_exhaustion), and nothing else.
_CREDENTIAL_HEADERS = ("Authorization", "api-key", "OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta")
_WINDOW_WORDS = {"minute": "minute", "hour": "hour", "day": "24 h", "30d": "30 days"}


class ModelPrice(Protocol):
    @property
    def input_usd_per_1m(self) -> float: ...
    @property
    def output_usd_per_1m(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the caller sent to authenticate: kept for one exchange, to cancel its run as the caller."""

    headers: dict[str, str]
    query: str
    prefix: str

    def __repr__(self) -> str:  # never print a key, even in a traceback
        return f"Credentials(prefix={self.prefix!r}, headers=<{len(self.headers)} hidden>)"


class Prices:
    """USD per million tokens by model: exact name, else the longest priced name it starts with + "-"."""

    def __init__(self, table: Mapping[str, tuple[float, float]]) -> None:
        self._table = dict(table)
        self.max_rate = max((max(p) for p in self._table.values()), default=0.0)
        """The dearest per-token rate: what a run of an unknown or unpriced model is reserved at."""

    def of(self, model: str | None) -> tuple[float, float] | None:
        if not model:
            return None
        if model in self._table:
            return self._table[model]
        best = max((name for name in self._table if model.startswith(name + "-")), key=len, default=None)
        return None if best is None else self._table[best]

    def reservation(self, tokens: int, model: str | None) -> float:
        price = self.of(model)
        rate = max(price) if price is not None else self.max_rate
        return tokens * rate / 1e6

    def cost(self, prompt: int | None, completion: int | None, total: int, model: str | None) -> float:
        price = self.of(model)
        if price is None or prompt is None or completion is None:
            return self.reservation(total, model)
        return (prompt * price[0] + completion * price[1]) / 1e6


def prices_from(rows: list[dict[str, object]]) -> Prices:
    """From `store.migrations.price_rows()` (the shipped list plus the config's [prices])."""
    return Prices({str(r["model"]): (float(r["input_usd_per_1m"]), float(r["output_usd_per_1m"]))  # type: ignore[arg-type]
                   for r in rows})


def usage_of(run: RunState) -> int:
    """The run's usage so far: its snapshot, or the sum of its finished steps if that is more (a
    run's own usage is null until it ends, protocol.md, so only the steps show a run in progress)."""
    steps = sum(s.total_tokens or 0 for s in run.steps.values())
    return max(run.total_tokens or 0, steps)


@dataclass(frozen=True, slots=True)
class TopUp:
    """A continuation's top-up, held until its exchange ends: undone if the upstream refuses it."""

    charge: Charge
    tokens: int
    usd: float
    state: str
    """The charge's state before it (a top-up reopens an expired charge)."""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True, slots=True)
class Limits:
    """The request fields that bound a budgeted request's tokens (apis/base.py `Api.prompt_limit`)."""

    prompt: str | None = "max_prompt_tokens"
    outputs: tuple[str, ...] = ("max_completion_tokens",)

    def asked(self, body: Mapping[str, Any]) -> tuple[int | None, str | None, int | None]:
        """(the prompt bound, the output field the body sets, its bound)."""
        prompt = _int(body.get(self.prompt)) if self.prompt else None
        for name in self.outputs:
            if _int(body.get(name)) is not None:
                return prompt, name, _int(body.get(name))
        return prompt, None, None


ASSISTANTS_LIMITS = Limits()


def limits_of(route: Route) -> Limits:
    api = route.api
    return ASSISTANTS_LIMITS if api is None or not api.output_limits else Limits(api.prompt_limit, api.output_limits)


def estimate(body: Mapping[str, Any] | None, default: int, limits: Limits = ASSISTANTS_LIMITS) -> int:
    """Both bounds when the request sets both; else the default plus the one it sets."""
    prompt, _, completion = limits.asked(body) if body else (None, None, None)
    if prompt is not None and completion is not None:
        return prompt + completion
    return default + (prompt or 0) + (completion or 0)


@dataclass(frozen=True, slots=True)
class Shortfall:
    """The first limit a reservation does not fit."""

    alias: str
    name: str
    limit: float
    used: float
    reserved: float
    need: float
    frees_at: float | None


class Budgets:
    """The budgets in force, the ledger, and who is in flight. One per app; reconfigured on SIGHUP."""

    def __init__(self, settings: BudgetsSettings, prices: Prices, ledger: Ledger, tracker: RunStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.tracker = tracker
        self.clock = clock
        self.pending: dict[str, Charge] = {}
        """Charges reserved by exchanges still running, by request_id, until their run is known."""
        self.errors = 0
        """Admissions that raised (and were let through)."""
        self.credentials: dict[str, Credentials] = {}
        """By request_id, only for exchanges whose budget has cancel_on_exhaustion; dropped at their end."""
        self.top_ups: dict[str, TopUp] = {}
        """By request_id, the top-ups of continuations still running."""
        self.rejections: dict[str, int] = {}
        """429 refusals by key alias (runtap_budget_rejections_total; here so that it needs no metrics observer)."""
        self.configure(settings, prices)

    def configure(self, settings: BudgetsSettings, prices: Prices | None = None) -> None:
        """Swap in new settings (SIGHUP). One assignment each: an admission sees old or new, never half."""
        self.settings = settings
        self.by_key: dict[str, tuple[BudgetLimits, str]] = {k.key_id: (k, k.alias) for k in settings.keys}
        if prices is not None:
            self.prices = prices
        self.ledger.tracked = self.tracks

    def tracks(self, key_id: str) -> bool:
        """Whether the ledger keeps this key's windows: it has a budget, now or (default) whenever it shows up."""
        return key_id in self.by_key or self.settings.unknown_keys == "default"

    # -- who pays ------------------------------------------------------------------------------
    def alias(self, key_id: str | None) -> str:
        """The metric label of a key: its budget's alias, or "other" (never the key_id)."""
        entry = self.by_key.get(key_id) if key_id else None
        return entry[1] if entry is not None else OTHER

    def budget_of(self, key_id: str) -> BudgetLimits | None:
        entry = self.by_key.get(key_id)
        if entry is not None:
            return entry[0]
        return self.settings.default if self.settings.unknown_keys == "default" else None

    # -- the hot path --------------------------------------------------------------------------
    def admit(self, ex: Exchange, headers: Mapping[str, str]) -> web.Response | None:
        """None: forward (a reservation is held, and `ex.request_body` may be clamped). Else the 429.

        A bug here must not take traffic down with it: it is logged and counted, and the request
        goes through (fails open), like an observer's failure costs a record, never the stream."""
        try:
            refusal = self._admit(ex, headers)
        except Exception:
            self.errors += 1
            log.exception("budget admission failed for %s; forwarding it unchecked", ex.request_id)
            return None
        if refusal is not None:
            alias = self.alias(ex.key_id)
            self.rejections[alias] = self.rejections.get(alias, 0) + 1
        return refusal

    def _admit(self, ex: Exchange, headers: Mapping[str, str]) -> web.Response | None:
        if not ex.route.budgeted or ex.key_id is None:
            return None  # no key: the upstream refuses it, there is nobody to charge
        key_id = ex.key_id
        budget = self.budget_of(key_id)
        if budget is None and self.settings.unknown_keys == "deny":
            return errors.budget_exceeded("this API key has no budget in runtap's configuration and "
                                          "[budgets] unknown_keys = \"deny\"; ask the operator to add one",
                                          WINDOWS["day"])
        alias = self.alias(key_id)
        now = self.clock()
        body = parse_object(ex.request_body) if ex.request_body else None
        if ex.route.continues_run:
            return self._continuation(ex, key_id, budget, alias, now, headers)
        limits = limits_of(ex.route)
        need = estimate(body, self.settings.default_reservation_tokens, limits)
        model = body.get("model") if body is not None and isinstance(body.get("model"), str) else None
        usd = self.prices.reservation(need, model)
        if budget is not None:
            short = self.shortfall(key_id, budget, alias, need, usd, now)
            if short is not None:
                # A socket's message is relayed as it was framed (and compressed): never rewritten.
                clamp = budget.clamp and not ex.route.socket
                clamped = self._clamp(key_id, budget, alias, body, model, now, limits) if clamp else None
                if clamped is None:
                    return refusal(short, now)
                need, usd, ex.request_body = clamped
        charge = self.ledger.reserve(ex.request_id, key_id, need, usd, settle_in_s=self.settings.settle_unseen_after_s,
                                     model=model, alias=alias, now=now,
                                     api=ex.route.api.name if ex.route.api is not None else None)
        self.pending[ex.request_id] = charge
        self._hold_credentials(ex, budget, headers)
        return None

    def _continuation(self, ex: Exchange, key_id: str, budget: BudgetLimits | None, alias: str, now: float,
                      headers: Mapping[str, str]) -> web.Response | None:
        run_id = ex.route.run_id
        assert run_id is not None  # the route template has it
        run = self.tracker.runs.get(run_id)
        charge = self.ledger.by_run.get(run_id)
        if charge is None and (run is None or not run.terminal):
            charge = self._orphan(key_id, run_id)
        used = usage_of(run) if run is not None else 0
        if charge is not None and (charge.state == SETTLED or (charge.open and used < charge.reserved_tokens)):
            # The run's reservation still covers it; or the run has ended and was charged its final
            # usage, so the upstream will refuse this continuation and nothing more can be owed.
            self._hold_credentials(ex, budget, headers)
            return None
        if charge is None and run is not None and run.max_prompt_tokens and run.max_completion_tokens:
            need = run.max_prompt_tokens + run.max_completion_tokens
        else:
            need = self.settings.default_reservation_tokens
        model = run.model if run is not None else None
        usd = self.prices.reservation(need, model)
        if budget is not None:
            short = self.shortfall(key_id, budget, alias, need, usd, now)
            if short is not None:
                return refusal(short, now)
        if charge is None:
            # Pending like a create's: released at the exchange's end if the upstream knows no such run.
            # Should the create's charge be linked to this run later after all, link() folds the two.
            self.pending[ex.request_id] = self.ledger.reserve(
                ex.request_id, key_id, need, usd, settle_in_s=self.settings.settle_unseen_after_s, run_id=run_id,
                model=model, alias=alias, now=now)
        else:
            self.top_ups[ex.request_id] = TopUp(charge, need, usd, charge.state)
            self.ledger.top_up(charge, need, usd, settle_in_s=self.settings.settle_unseen_after_s)
        self._hold_credentials(ex, budget, headers)
        return None

    def _orphan(self, key_id: str, run_id: str) -> Charge | None:
        """The key's oldest open charge that no run and no running exchange claims, linked to `run_id`.

        Such a charge was reserved for a run that was never linked: its exchange ended (or the proxy
        restarted) before the run object was seen. A continuation of an unknown run of the same key
        is most likely that run; taking it over charges the run once instead of leaving the orphan to
        expire at its full reservation beside a new one. Rare (a cut stream, a SIGKILL), and O(open)."""
        for charge in self.ledger.open.values():
            # Another API's charge (a Responses create cut before its response) pays for no run.
            if charge.key_id == key_id and charge.run_id is None and charge.charge_id not in self.pending \
                    and charge.api in (None, "assistants"):
                log.info("continuation of run %s: taking over charge %s, never linked to a run", run_id,
                         charge.charge_id)
                return self.ledger.link(charge, run_id)
        return None

    def shortfall(self, key_id: str, budget: BudgetLimits, alias: str, need: int, usd: float,
                  now: float) -> Shortfall | None:
        """The first limit that cannot pay `need` tokens / `usd` on top of what the key holds; None if all can."""
        for name, limit in budget.limits().items():
            window_name, unit = LIMITS[name]
            window = self.ledger.window(key_id, window_name, now)
            amount = need if unit == "tokens" else usd
            if unit == "tokens":
                used, reserved = window.used_tokens, window.reserved_tokens
            else:
                used, reserved = window.used_usd, window.reserved_usd
            if used + reserved + amount > limit + (1e-9 if unit == "usd" else 0):
                excess = used + reserved + amount - limit
                frees = (window.frees_at(excess, 0.0) if unit == "tokens" else window.frees_at(0, excess)) \
                    if amount <= limit else None
                return Shortfall(alias, name, limit, used, reserved, amount, frees)
        return None

    def _clamp(self, key_id: str, budget: BudgetLimits, alias: str, body: dict[str, Any] | None,
               model: str | None, now: float, limits: Limits) -> tuple[int, float, bytes] | None:
        """Lower (or set) the output bound to what the token limits can still pay; None if under 256.

        The reservation after a clamp is the estimate of the clamped body, like any other: with
        max_prompt_tokens set, it plus max_completion_tokens; with only an output bound, the
        default plus it. A request that sets neither was estimated at the default for the whole
        call, and an output bound alone could then never fit where the default did not; so a
        quarter of what is left goes to the output (at least 256) and the rest to the input: as
        max_prompt_tokens where the API has it (Assistants), else as an estimate only (Responses
        and Chat bound no input), the request reserving all that is left."""
        if body is None:
            return None
        room = min((limit - self.ledger.window(key_id, LIMITS[name][0], now).tokens
                    for name, limit in budget.limits().items() if LIMITS[name][1] == "tokens"), default=None)
        if room is None:
            return None
        room = int(room)
        prompt, field_name, asked = limits.asked(body)
        output_field = field_name or limits.outputs[0]
        changes: dict[str, int] = {}
        need: int | None = None
        if prompt is None and asked is None:
            completion = max(MIN_COMPLETION_TOKENS, room // 4)
            if room - completion < MIN_COMPLETION_TOKENS:  # the Assistants minimum is the same for both
                return None
            if limits.prompt is not None:
                changes[limits.prompt] = room - completion
            else:
                need = room
        else:
            completion = room - (prompt or self.settings.default_reservation_tokens)
            if asked is not None:
                completion = min(completion, asked)
        if completion < MIN_COMPLETION_TOKENS:
            return None
        changes[output_field] = completion
        if need is None:
            need = estimate({**body, **changes}, self.settings.default_reservation_tokens, limits)
        usd = self.prices.reservation(need, model)
        if self.shortfall(key_id, budget, alias, need, usd, now) is not None:
            return None  # a USD limit still refuses it
        return need, usd, orjson.dumps({**body, **changes})

    def _hold_credentials(self, ex: Exchange, budget: BudgetLimits | None, headers: Mapping[str, str]) -> None:
        if budget is None or not budget.cancel_on_exhaustion:
            return
        kept = {name: headers[name] for name in _CREDENTIAL_HEADERS if name in headers}
        prefix = "/openai" if ex.path.startswith("/openai/") else "/v1"
        self.credentials[ex.request_id] = Credentials(kept, ex.query, prefix)


def _amount(value: float, unit: str) -> str:
    return f"{int(value)} tokens" if unit == "tokens" else f"{value:.4f} USD"


def refusal(short: Shortfall, now: float) -> web.Response:
    """The contract §4 429: which budget, how much it holds, when enough of it frees."""
    window, unit = LIMITS[short.name]
    who = "the default budget (keys without an entry)" if short.alias == OTHER else f"budget {short.alias!r}"
    left = max(0.0, short.limit - short.used - short.reserved)
    head = (f"{who} {short.name} = {_amount(short.limit, unit)} per rolling {_WINDOW_WORDS[window]}: this run "
            f"needs {_amount(short.need, unit)} reserved, {_amount(left, unit)} left ({_amount(short.used, unit)}"
            f" used, {_amount(short.reserved, unit)} reserved by runs in flight)")
    if short.frees_at is None:
        retry = WINDOWS[window]
        tail = ("; the reservation is larger than the limit itself, so it never fits: lower max_prompt_tokens / "
                "max_completion_tokens or raise the limit")
    else:
        retry = max(1, math.ceil(short.frees_at - now))
        at = datetime.fromtimestamp(short.frees_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        tail = f"; enough of it frees by {at} (in {retry} s), sooner if runs in flight use less than they reserved"
    return errors.budget_exceeded(head + tail, retry)
