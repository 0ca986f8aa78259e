"""What the core asks of an API: one small interface, one implementation per API (apis/<name>/).

The relay, the tap, the recorder and the observers know no API by name. For each request the
core asks the registry (apis/__init__.py) for a `Route`; the route names its `Api`, and the tap asks
that API three things as the response goes by:
- `delta_events` and `deltas`: which SSE events are deltas (the bulk of a stream), and a run of
  them as their bytes: recorded as they came, never framed one by one or parsed on the loop
  (frames.py finds them by name in C); the API keeps what it may need of them (the text of an
  answer a stream breaks off in).
- `fold`: a lifecycle object (an SSE event's data or a JSON body) folded into the run model
  (proxy/runs.py): which run, step, tool-call and message states changed.
- `request_changes`: what the request itself changed once the upstream accepted it (tool outputs
  a client submitted); `exchange_ended`: what its end changed (a stream cut before its end).
Routes no API claims are relayed and recorded as requests only (`OTHER`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..exchange import Exchange, Outcome
    from ..runs import RunStore, Seen, State


@dataclass(slots=True, frozen=True)
class Route:
    """Which route of which API a request is, from its method and path alone."""

    kind: str
    """The API's own name for the route (`create_run`, ...); `other` for a route no API claims."""
    template: str
    """`POST /v1/threads/{thread_id}/runs`: a bounded metric label; the ids go to rows and spans."""
    thread_id: str | None = None
    run_id: str | None = None
    step_id: str | None = None
    response_id: str | None = None
    """The Responses API response the path names (`GET /v1/responses/{response_id}`)."""
    api: Api | None = None
    """None: relayed, its request recorded, its body neither read whole nor parsed."""
    creates_run: bool = False
    """The request starts or continues an Assistants run (its spans start or go on)."""
    continues_run: bool = False
    """The request continues a run it names (tool outputs): no new run, the budget's reservation grows."""
    creates_call: bool = False
    """The request creates one model call (a Responses create, a Chat completion): a charge and a
    `chat` span of its own, in a turn runtap stitches."""
    socket: bool = False
    """A WebSocket of the API (its Upgrade; relay/socket_tap.py records its messages), or a message
    on one (its body cannot be rewritten: a compressed socket's later messages depend on it)."""

    @property
    def budgeted(self) -> bool:
        """The request may spend tokens: budget admission applies before it is forwarded."""
        return self.creates_run or self.creates_call

    @property
    def recorded(self) -> bool:
        """Routes whose request body runtap reads whole (bounded) and whose responses it parses."""
        return self.api is not None


OTHER = Route("other", "other")


class Api:
    """The base every API implements; the defaults are an API with no runs."""

    name: ClassVar[str] = "none"

    prompt_limit: ClassVar[str | None] = None
    """The request field that bounds a budgeted request's input tokens, if the API has one."""
    output_limits: ClassVar[tuple[str, ...]] = ()
    """The request fields that bound its output tokens, the one budgets' `clamp` sets first."""

    def classify(self, method: str, path: str) -> Route | None:
        """This API's route for the request, or None when it is not one of this API's."""
        return None

    delta_events: ClassVar[frozenset[str]] = frozenset()
    """SSE event names this API never needs parsed live: its streams' deltas."""
    delta_data: ClassVar[bytes | None] = None
    """For an API whose frames have no event name: a regex (bytes, one line) that a data-only
    frame's data is a delta of (frames.py matches it in C)."""

    def deltas(self, ex: Exchange, frames: bytes, store: RunStore) -> bool:
        """A run of delta frames (canonical SSE: `event: <a delta_events name>\ndata: ...\n\n`,
        each); False hands them back to be parsed and folded one by one like any other frame."""
        return False

    def fold(self, ex: Exchange, obj: dict[str, Any], store: RunStore, seen: Seen) -> list[State]:
        """A lifecycle object into the run model; returns the states whose snapshot changed."""
        return []

    def request_changes(self, ex: Exchange, store: RunStore, at: datetime) -> list[State]:
        """What the request changed, once the upstream accepted it (its status is below 300)."""
        return []

    def socket_message(self, socket: Route, obj: dict[str, Any]) -> Route | None:
        """The route of a client message on one of this API's sockets (`socket`: the Upgrade's
        route) that the server answers with a stream of events, as if it were that request; None
        for any other message (relayed, not recorded as a request)."""
        return None

    stream_end: ClassVar[str | None] = None
    """What ends this API's streams when it is not `data: [DONE]` (named in a truncation's error)."""

    def stream_ended(self, ex: Exchange, store: RunStore) -> bool:
        """Whether a stream without `[DONE]` reached its protocol's end all the same."""
        return False

    def exchange_ended(self, ex: Exchange, store: RunStore, at: datetime, outcome: Outcome) -> list[State]:
        """What the end of the exchange (its `outcome`: TRUNCATED for a stream cut before its end)
        changed, after its last event and before the observers hear it finished."""
        return []
