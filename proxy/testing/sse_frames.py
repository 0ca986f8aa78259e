"""SSE framing for the Responses and Chat Completions fakes, with the fault knobs of
:mod:`proxy.testing.faults` applied the same way as on Assistants streams.

- Responses (protocol-responses.md §2): ``event: <type>\\n`` + ``data: <compact JSON>\\n`` + ``\\n``
  per event, LF only, no comments, and **no** ``[DONE]``: the body ends after the terminal event.
- Chat Completions (§9): data-only frames ``data: <chunk>\\n\\n`` ending with ``data: [DONE]\\n\\n``.

The lifecycle events (those carrying ``response``) play the part run-status events play for the
Assistants shaper: ``huge_event_bytes`` and ``split_data`` apply to them, and the terminal event
is the one ``invalid_json`` / ``bare_json_line`` / ``error_event*`` / ``unknown_event`` spoil.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from proxy.testing.faults import Fault, Shaper, Wire
from proxy.testing.streams import Json, dumps

_ERROR = {"code": "server_error", "message": "The server had an error while processing your request.",
          "param": None}


class ResponsesShaper(Shaper):
    def frames(self, event: str, data: Json, *, ending: bool, last: bool) -> list[bytes]:
        kind = self.fault.malformed
        if self._huge_pending and "response" in data:
            self._huge_pending = False
            data = {**data, "response": {**data["response"], "instructions": "x" * (self.fault.huge_event_bytes or 0)}}
        if ending and kind in ("error_event", "error_event_wrapped"):
            self.stop = True  # the error replaces the terminal event (§6 without response.failed)
            seq = {"type": "error", "sequence_number": data.get("sequence_number")}
            wrapped = {**seq, "error": {"type": "server_error", **_ERROR}}
            shaped = {**seq, **_ERROR} if kind == "error_event" else wrapped
            return [self._finish(b"event: error\ndata: " + dumps(shaped))]
        payload = dumps(data)
        if kind == "invalid_json" and ending:
            payload += b"}"
        if kind == "split_data" and "response" in data:
            cut = payload.index(b",") + 1
            payload = payload[:cut] + b"\ndata: " + payload[cut:]
        prefix = b"" if kind == "bare_json_line" and ending else b"data: "
        head = b"" if kind == "data_only" else b"event: " + event.encode() + b"\n"
        frame = head + prefix + payload
        out: list[bytes] = []
        if kind == "unknown_event" and ending:
            # A future event type: no sequence_number, so the numbering of real events stays contiguous.
            unknown = dumps({"type": "response.something_new"})
            out.append(self._finish(b"event: response.something_new\ndata: " + unknown))
        if kind == "no_final_blank_line" and last:
            self.stop = True
            out.append(self._line_endings(frame + b"\n"))
        else:
            out.append(self._finish(frame))
        return out

    def done(self) -> bytes:
        # §2: nothing follows the terminal event -- unless the fault imitates a compatible server.
        return self._finish(b"data: [DONE]") if self.fault.malformed == "trailing_done" else b""


class ChatShaper(Shaper):
    def frames(self, event: str, data: Json, *, ending: bool, last: bool) -> list[bytes]:
        kind = self.fault.malformed
        if ending and kind in ("error_event", "error_event_wrapped"):
            self.stop = True  # mid-stream error the way compatible servers send one; the SDK raises APIError
            shaped = {**_ERROR, "type": "server_error"}
            return [self._finish(b"data: " + dumps(shaped if kind == "error_event" else {"error": shaped}))]
        payload = dumps(data)
        if kind == "invalid_json" and ending:
            payload += b"}"
        if kind == "split_data":
            cut = payload.index(b",") + 1
            payload = payload[:cut] + b"\ndata: " + payload[cut:]
        frame = (b"" if kind == "bare_json_line" and ending else b"data: ") + payload
        if kind == "no_final_blank_line" and last:
            self.stop = True
            return [self._line_endings(frame + b"\n")]
        return [self._finish(frame)]

    def done(self) -> bytes:
        return b"" if self.fault.malformed == "done_without_data" else self._finish(b"data: [DONE]")


async def pump(wire: Wire, shaper: Shaper, fault: Fault | None,
               events: AsyncIterable[tuple[str, Json, bool]]) -> bool:
    """Write ``(name, data, ending)`` events, one write per event (so per-event timing is real),
    logging each name in ``wire.sent.events``. True if the stream ran to its end; False if the
    client left or a fault cut it short (the caller then sends no ``[DONE]``)."""
    count = 0
    async for name, data, ending in events:
        for frame in shaper.frames(name, data, ending=ending, last=ending):
            if not await wire.write(frame):
                return False
        wire.sent.events.append(name)
        count += 1
        if shaper.stop or (fault and fault.clean_eof_after_events is not None
                           and count >= fault.clean_eof_after_events):
            return False
    return True


async def finish(wire: Wire, shaper: Shaper, natural: bool) -> None:
    """The stream's tail (``[DONE]`` for Chat, nothing for Responses) and a clean chunked end."""
    if natural and (tail := shaper.done()) and await wire.write(tail):
        wire.sent.events.append("done")
    await wire.finish()
