"""A stream's bytes → its recording, in the writer's thread (never on the event loop).

The tap hands the recorder each streamed response as the bytes it came as (`exchange.StreamBytes`:
chunks and their arrival times, in segments that end at frame boundaries). Here, off the loop,
each segment becomes one of two things:

- one `response_streams` row holding the segment's text, when its framing is canonical: every frame
  `event: <name>\\ndata: <one line>\\n\\n` or `data: <one line>\\n\\n`, LF only, valid UTF-8 (what the
  OpenAI and Azure services send). For such text, splitting at blank lines (the `events` view,
  migrations.EVENTS_VIEW) gives exactly the frames `sse.SseDecoder` gives, so DuckDB frames it when
  it is read and nothing is done per event when it is written;
- else `event_rows` rows, one per frame, from `SseDecoder` run over the same chunks as the tap ran
  it (same frames, same `raw` for a malformed one, same arrival time per frame). So are all frames
  under `record_content = false`, whose rows keep every field but the data.

Why: per event, rows cost DuckDB ~5 us of intake and ~3 us of compression at checkpoint, about
0.5 ms of a 60-event run; one zstd-compressed text per stream costs ~0.15 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from ..exchange import StreamBytes
from ..frames import CANONICAL
from ..sse import SseDecoder

EventRow = tuple[Any, ...]
"""An `event_rows` row in writer.EVENT_COLUMNS order."""


def canonical_text(body: bytes) -> str | None:
    """The body as text when the events view can frame it, else None."""
    if b"\r" in body or CANONICAL.fullmatch(body) is None:
        return None
    try:
        return body.decode()
    except UnicodeDecodeError:  # SseDecoder repairs such a frame and marks it malformed: rows
        return None


def stream_rows(
    request_id: str, run_id: str | None, segment: StreamBytes, *, record_content: bool = True
) -> tuple[dict[str, Any] | None, list[EventRow]]:
    """The segment as a `response_streams` row, or else as `event_rows` rows (never both)."""
    chunks = segment.chunks
    if not chunks:
        return None, []
    if record_content:
        text = canonical_text(b"".join(chunks))
        if text is not None:
            ends: list[int] = []
            end = 0
            for chunk in chunks:
                end += len(chunk)
                ends.append(end)
            return {"request_id": request_id, "seq0": segment.seq0, "run_id": run_id, "body": text,
                    "chunk_ends": ends, "chunk_times": segment.arrived}, []
    return None, _framed_rows(request_id, run_id, segment, record_content)


def _framed_rows(request_id: str, run_id: str | None, segment: StreamBytes, record_content: bool) -> list[EventRow]:
    """One row per frame, framed as the tap framed it (the same chunks through the same decoder)."""
    decoder = SseDecoder()
    rows: list[EventRow] = []
    seq = segment.seq0
    for chunk, arrived in zip(segment.chunks, segment.arrived, strict=True):
        events = decoder.feed(chunk)
        if events:
            at = datetime.fromtimestamp(arrived, UTC)
        for event in events:
            rows.append(_row(request_id, seq, event.event, event.data, at, run_id, event.raw, record_content))
            seq += 1
    if segment.final:
        at = datetime.fromtimestamp(segment.arrived[-1], UTC)  # a flushed frame came with the last chunk
        for event in decoder.close():
            rows.append(_row(request_id, seq, event.event, event.data, at, run_id, event.raw, record_content))
            seq += 1
    return rows


def _row(request_id: str, seq: int, name: str | None, data: str, at: datetime, run_id: str | None,
         raw: bytes | None, record_content: bool) -> EventRow:
    if record_content:
        return (request_id, seq, name, data, at, run_id, raw, None)  # the view reads its number from data
    # The data goes, its sequence number (an id, not content) stays.
    number = _SEQUENCE_NUMBER.search(data)
    return (request_id, seq, name, None, at, run_id, None, int(number.group(1)) if number else None)


_SEQUENCE_NUMBER = re.compile(r'"sequence_number":\s*(\d{1,18})')
