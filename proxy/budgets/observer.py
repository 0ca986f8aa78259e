"""Settlement beside the stream: run events → the ledger (link, settle, extend), and budget cancels.

An `Observer` like the recorder: its hooks run deferred behind the relay (forward.py), so budget
accounting never delays a byte. It reads the run tracker's states, which already apply the
"cumulative usage, counted once" rule (runs.py): a charge is settled with the run's final usage
when the run is first seen terminal, whichever exchange shows it (the create stream, a
submit_tool_outputs continuation, a poll), and only once.

Responses and Chat Completions bill per model call (a response, a completion), not per turn: their
APIs hand a `runs.ModelCall` among the changes, linked to the admitting exchange's charge and
settled once at its own usage (`_model_call`).

cancel_on_exhaustion: when a step of a run ends and the run's usage so far (its completed steps,
or its own usage snapshot if larger) would push a token window of its budget past the limit, runtap
POSTs `.../runs/{run_id}/cancel` upstream with the credentials of the exchange that is streaming the
run, which `Budgets` holds only while that exchange runs. The request goes out in its own task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from ..exchange import Exchange, Outcome, RunEvent
from ..observers import Observer
from ..runs import STEP_TERMINAL, ModelCall, RunState, StepState
from .gate import Budgets, Credentials, usage_of
from .ledger import RELEASED, SETTLED
from .settings import LIMITS

log = logging.getLogger("runtap.budgets")
EXPIRY_GRACE_S = 60.0
"""Past a run's expires_at before its reservation is settled as is: a poll right at expiry still
brings the real final usage first."""

Cancel = Callable[[Credentials, str, str], Coroutine[Any, Any, int | None]]


__all__ = ["EXPIRY_GRACE_S", "BudgetObserver", "upstream_canceller", "usage_of"]


class BudgetObserver(Observer):
    name = "budgets"

    def __init__(self, budgets: Budgets, cancel: Cancel | None = None) -> None:
        self._budgets = budgets
        self._cancel = cancel
        self._tasks: set[asyncio.Task[Any]] = set()

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        for state in event.changes:
            kind = type(state)
            if kind is RunState:
                self._run(ex, state)  # type: ignore[arg-type]  # checked by type
            elif kind is StepState and state.status in STEP_TERMINAL:  # type: ignore[union-attr]
                self._step(ex, state)  # type: ignore[arg-type]
            elif kind is ModelCall:
                self._model_call(ex, state)  # type: ignore[arg-type]

    def exchange_finished(self, ex: Exchange) -> None:
        budgets = self._budgets
        budgets.credentials.pop(ex.request_id, None)
        answered_error = ex.outcome is Outcome.COMPLETED and ex.status is not None and ex.status >= 400
        unreachable = ex.outcome is Outcome.UPSTREAM_ERROR and ex.status == 502
        top_up = budgets.top_ups.pop(ex.request_id, None)
        if top_up is not None and (answered_error or unreachable):
            # The upstream refused the continuation (or never got it): the run did not go on, so the
            # top-up is not owed.
            budgets.ledger.take_back(top_up.charge, top_up.tokens, top_up.usd, top_up.state)
        charge = budgets.pending.pop(ex.request_id, None)
        if charge is None or not charge.open:
            return
        run = budgets.tracker.runs.get(charge.run_id) if charge.run_id is not None else None
        if run is not None and run.status is not None:
            return  # the run exists: its charge settles when it ends
        # No run came of it. When the upstream answered with an error (or could not be reached at
        # all) no run exists, so nothing is owed; otherwise (a timeout, a stream cut before the run
        # object) a run may exist unseen, and the reservation stands until settle_unseen_after_s.
        if answered_error or unreachable:
            budgets.ledger.release(charge)

    # -- runs ----------------------------------------------------------------------------------
    def _run(self, ex: Exchange, run: RunState) -> None:
        if run.api != "assistants":
            return  # a turn stitched of model calls, each billed on its own (`_model_call`), its id their first's
        budgets = self._budgets
        ledger = budgets.ledger
        charge = budgets.pending.get(ex.request_id)
        if charge is not None and charge.run_id is None:
            # Folds a continuation's charge reserved before this link, if any: one run, one charge.
            ledger.link(charge, run.run_id, run.model, used=usage_of(run))
        charge = ledger.by_run.get(run.run_id)
        if charge is None:
            return
        if run.model and charge.model != run.model:
            ledger.link(charge, run.run_id, run.model)
        if run.terminal:
            tokens = run.total_tokens if run.total_tokens is not None else usage_of(run)
            usd = budgets.prices.cost(run.prompt_tokens, run.completion_tokens, tokens, run.model)
            ledger.settle(charge, tokens, usd)
        elif run.expires_at is not None:
            ledger.settle_unseen_at(charge, run.expires_at.timestamp() + EXPIRY_GRACE_S)

    # -- Responses and Chat: one charge per model call ------------------------------------------
    def _model_call(self, ex: Exchange, call: ModelCall) -> None:
        """Linked to the exchange's charge when first seen, settled once when final: at its usage,
        or at its reservation when none will come (a cancelled response, a Chat stream without
        `include_usage`), never at zero. Whichever exchange shows it final (the create's stream, a
        poll or resume of a background response, after a restart too) settles it."""
        budgets = self._budgets
        ledger = budgets.ledger
        charge = budgets.pending.get(ex.request_id)
        if charge is not None and charge.run_id is None:
            ledger.link(charge, call.call_id, call.model)
        charge = ledger.by_run.get(call.call_id)
        if charge is None or charge.state in (SETTLED, RELEASED):
            return
        if call.model and charge.model != call.model:
            ledger.link(charge, call.call_id, call.model)
        if not call.final:
            return
        if call.total_tokens is None:
            ledger.settle(charge, charge.reserved_tokens, charge.reserved_usd)
        else:
            ledger.settle(charge, call.total_tokens, budgets.prices.cost(
                call.input_tokens, call.output_tokens, call.total_tokens, call.model))

    # -- cancel_on_exhaustion ------------------------------------------------------------------
    def _step(self, ex: Exchange, step: StepState) -> None:
        budgets = self._budgets
        if not budgets.credentials or step.run_id is None:
            return  # nobody streaming has cancel_on_exhaustion: the common case, O(1)
        credentials = budgets.credentials.get(ex.request_id)
        charge = budgets.ledger.by_run.get(step.run_id)
        run = budgets.tracker.runs.get(step.run_id)
        if credentials is None or charge is None or run is None or charge.cancelled or not charge.open:
            return
        budget = budgets.budget_of(charge.key_id)
        if budget is None or not budget.cancel_on_exhaustion or run.thread_id is None:
            return
        running = usage_of(run)
        for name, limit in budget.limits().items():
            window_name, unit = LIMITS[name]
            window = budgets.ledger.window(charge.key_id, window_name)
            if unit != "tokens" or not window.holds(charge):
                continue
            if window.tokens - charge.reserved_tokens + running > limit:
                log.warning("run %s of budget %r passed %s (%d tokens so far): cancelling it", run.run_id,
                            budgets.alias(charge.key_id), name, running)
                budgets.ledger.mark_cancelled(charge)
                if self._cancel is not None:
                    task = asyncio.get_running_loop().create_task(self._cancel(credentials, run.thread_id, run.run_id))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                return

    async def close(self) -> None:
        """At shutdown: cancels still in flight are abandoned (the session is closing), and awaited."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def upstream_canceller(session: Callable[[], aiohttp.ClientSession | None], upstream: str) -> Cancel:
    """POST .../runs/{run_id}/cancel upstream as the caller; the status, or None if it failed."""

    async def cancel(credentials: Credentials, thread_id: str, run_id: str) -> int | None:
        client = session()
        if client is None:
            return None
        url = f"{upstream.rstrip('/')}{credentials.prefix}/threads/{thread_id}/runs/{run_id}/cancel"
        if credentials.query:
            url += "?" + credentials.query
        try:
            async with client.post(url, headers={**credentials.headers, "Content-Type": "application/json"},
                                   data=b"{}") as response:
                await response.read()
                if response.status >= 400:
                    log.warning("cancelling run %s for its budget: upstream answered %d", run_id, response.status)
                return response.status
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
            # RuntimeError: the session was closed under it (shutdown); nothing may escape the task,
            # whose result nobody reads ("Task exception was never retrieved").
            log.warning("cancelling run %s for its budget failed: %s", run_id, type(exc).__name__)
            return None

    return cancel
