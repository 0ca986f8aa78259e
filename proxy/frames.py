"""A batch of canonically framed SSE, scanned in C: its lifecycle frames found, its deltas counted.

What the OpenAI and Azure services send is canonical: every frame `event: <name>\\ndata: <one
line>\\n\\n` or `data: <one line>\\n\\n`, LF only. For such bytes a frame ends exactly at each
`\\n\\n`, so `sse.SseDecoder` (the general framing, a Python step per frame) is not needed to know
where frames are: a regex over the whole batch finds the frames that are not deltas, and
`bytes.count` counts the deltas between them. The tap (tap.py) parses only those lifecycle frames;
a run of deltas stays one span of bytes, handed on whole. Per 60-event run this is ~40 us of C
where framing each event in Python was ~300 us (docs/benchmarks.md).

Anything else (a CR, a comment, an `id:` line, several data lines, an extra blank line) is not
canonical: `scan()` returns None and the tap frames that stream with `SseDecoder` from then on.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Collection
from itertools import accumulate

from .sse import SseDecoder, SseEvent

CANONICAL = re.compile(rb"(?:(?:event: [^\n]*+\n)?+data: [^\n]*+\n\n)++")
"""Frames split at blank lines exactly as SseDecoder frames them, given no CR anywhere (checked
apart: a class of one byte, `[^\\n]`, matches 7x faster than `[^\\r\\n]`: 13 against 92 us for the
benchmark's 15 KB run): no comment or other field, one data line, no blank line but each frame's."""

FRAME_START = b"\n\n"
"""`scan()` takes its bytes after this prefix: every frame then starts right after a `\\n\\n`."""

LIFECYCLE = 0
DELTAS = 1
Piece = tuple[int, int, int, int, int]
"""(LIFECYCLE or DELTAS, index of its first frame in the batch, frame count, start, end): a
lifecycle frame's bytes without its blank line, or a run of delta frames with their blank lines."""


class FrameScanner:
    """One per API: the event names it calls deltas (apis/base.py `Api.delta_events`), and the
    pattern of a data-only frame's data that is one (`Api.delta_data`: Chat's frames have no name)."""

    __slots__ = ("_data_delta", "_not_delta", "delta_prefixes")

    def __init__(self, delta_events: Collection[str], delta_data: bytes | None = None) -> None:
        self.delta_prefixes = tuple(b"event: " + name.encode() + b"\n" for name in sorted(delta_events))
        """What a delta frame starts with (a tuple for `bytes.startswith`)."""
        names = b"|".join(re.escape(name.encode()) for name in sorted(delta_events))
        alternatives = [rb"event: (?:" + names + rb")\n"] if names else []
        if delta_data is not None:
            alternatives.append(rb"data: " + delta_data)  # the frame's start says it: no scan to its end
        self._data_delta = re.compile(rb"data: " + delta_data + rb"[^\n]*+\n\n") if delta_data is not None else None
        # Each frame start that is not a delta's; the literal prefix lets the engine search for it.
        self._not_delta = re.compile(rb"\n\n(?!" + b"|".join(alternatives) + rb")" if alternatives else rb"\n\n")

    def is_delta(self, frame: bytes) -> bool:
        """A whole canonical frame (its blank line included) is a delta."""
        if frame.startswith(self.delta_prefixes):
            return True
        return self._data_delta is not None and self._data_delta.fullmatch(frame) is not None

    def scan(self, buf: bytes, end: int) -> list[Piece] | None:
        """`buf[:end]` (FRAME_START, then whole frames: `end` is just past a blank line) as pieces
        in stream order, or None if it is not canonical."""
        if buf.find(b"\r", 0, end) >= 0 or CANONICAL.fullmatch(buf, 2, end) is None:
            return None
        pieces: list[Piece] = []
        count = buf.count
        index = 0  # frames before `at`
        at = 2  # where the next frame starts
        for match in self._not_delta.finditer(buf, 0, end - 2):
            start = match.end()
            if start > at:  # deltas between the previous lifecycle frame and this one
                n = count(FRAME_START, at, start)
                pieces.append((DELTAS, index, n, at, start))
                index += n
            stop = buf.find(FRAME_START, start, end)
            pieces.append((LIFECYCLE, index, 1, start, stop))
            index += 1
            at = stop + 2
        if at < end:
            pieces.append((DELTAS, index, count(FRAME_START, at, end), at, end))
        return pieces


def frame_fields(frame: bytes) -> tuple[str | None, str] | None:
    """A canonical frame's event name and data, or None when it is not valid UTF-8."""
    try:
        if frame.startswith(b"event: "):
            i = frame.find(b"\n")
            return frame[7:i].decode(), frame[i + 7:].decode()
        return None, frame[6:].decode()
    except UnicodeDecodeError:
        return None


FRAME = 0
RUN_OF_DELTAS = 1
Item = tuple[int, int, object, object, float]
"""(FRAME, seq, SseEvent, None, arrived) or (RUN_OF_DELTAS, seq of the first, count, the frames'
exact bytes, arrival of the first): what `BatchFramer` hands the tap, in stream order."""


class BatchFramer:
    """A stream's framing, batch by batch (sans-io): canonical bytes by `FrameScanner`, anything
    else by `SseDecoder`, which takes over for good at the first batch that is not canonical.

    Items carry arrival times: a frame arrived with the chunk that held the first byte of its blank
    line (when SseDecoder would have dispatched it). Bytes after the last blank line wait for the
    next batch; they are kept as chunks and joined once a batch completes a frame, so a long event
    fed in small pieces costs linear time."""

    __slots__ = ("_carry", "_carry_times", "_decoder", "_scanner", "frames")

    def __init__(self, scanner: FrameScanner) -> None:
        self._scanner = scanner
        self._decoder: SseDecoder | None = None
        self._carry: list[bytes] = []
        self._carry_times: list[float] = []
        self.frames = 0
        """Frames dispatched so far: the next one's seq."""

    @property
    def at_boundary(self) -> bool:
        """No frame is part-way: the bytes so far frame the same whatever comes next."""
        return self._decoder.at_frame_boundary if self._decoder is not None else not self._carry

    def feed(self, chunks: list[bytes], times: list[float]) -> list[Item]:
        if self._decoder is not None:
            return self._decode(chunks, times)
        new = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not new:
            return []  # nothing (the relay feeds no empty chunk; an empty one must not look like a carry)
        if b"\r" in new:  # not canonical, whatever follows; and a CR may end a frame on its own
            return self._decode(chunks, times)
        carry = self._carry
        if not carry and len(chunks) == 1 and new.find(FRAME_START) == len(new) - 2 >= 0:
            # One whole frame: the usual chunk of a live stream (one event per upstream write).
            return self._one_frame(new, times[0])
        if FRAME_START not in new and not (carry and new[:1] == b"\n" and carry[-1][-1:] == b"\n"):
            carry.append(new)
            self._carry_times.append(times[-1])
            return []
        buf = b"".join([FRAME_START, *carry, new]) if carry else FRAME_START + new
        end = buf.rfind(FRAME_START) + 2
        pieces = self._scanner.scan(buf, end) if end > 2 else []
        if pieces is None:
            return self._decode(chunks, times)
        # ends[i]: just past chunk i in buf (the carry counts into the first); one chunk needs none
        ends = list(accumulate(map(len, chunks), initial=len(buf) - len(new)))[1:] if len(chunks) > 1 else None
        arrived = times[0]
        base = self.frames
        items: list[Item] = []
        for kind, index, count, start, stop in pieces:
            if kind == LIFECYCLE:
                if ends is not None:
                    arrived = times[bisect_right(ends, stop + 1)]
                items.append((FRAME, base + index, _event(buf[start:stop]), None, arrived))
            else:
                if ends is not None:
                    arrived = times[bisect_right(ends, buf.find(FRAME_START, start, stop) + 1)]
                items.append((RUN_OF_DELTAS, base + index, count, buf[start:stop], arrived))
        self.frames = base + (pieces[-1][1] + pieces[-1][2] if pieces else 0)
        self._carry = [buf[end:]] if end < len(buf) else []
        self._carry_times = [times[-1]] if end < len(buf) else []
        return items

    def _one_frame(self, frame: bytes, arrived: float) -> list[Item]:
        if CANONICAL.fullmatch(frame) is None:
            return self._decode([frame], [arrived])
        seq = self.frames
        self.frames = seq + 1
        if self._scanner.is_delta(frame):
            return [(RUN_OF_DELTAS, seq, 1, frame, arrived)]
        return [(FRAME, seq, _event(frame[:-2]), None, arrived)]

    def close(self) -> list[Item]:
        """The stream ended: a frame still part-way is flushed, cut off (SseDecoder.close)."""
        items: list[Item] = []
        if self._decoder is None:
            if not self._carry:
                return []
            items = self._decode([], [])  # hands the carry to a decoder (it completes no frame)
        decoder = self._decoder
        assert decoder is not None
        last = self._carry_times[-1] if self._carry_times else 0.0
        return items + [(FRAME, self._next(), event, None, last) for event in decoder.close()]

    def _decode(self, chunks: list[bytes], times: list[float]) -> list[Item]:
        decoder = self._decoder
        if decoder is None:  # the carry first: it is the start of a frame these chunks go on with
            decoder = self._decoder = SseDecoder()
            chunks, times = self._carry + chunks, self._carry_times + times
            self._carry = []
        items: list[Item] = []
        for chunk, arrived in zip(chunks, times, strict=True):
            for event in decoder.feed(chunk):
                items.append((FRAME, self._next(), event, None, arrived))
        if times:
            self._carry_times = [times[-1]]
        return items

    def _next(self) -> int:
        seq = self.frames
        self.frames = seq + 1
        return seq


def _event(frame: bytes) -> SseEvent:
    """A canonical frame (without its blank line) as SseDecoder would dispatch it."""
    fields = frame_fields(frame)
    if fields is not None:
        return SseEvent(*fields)
    # Not UTF-8: the general parser repairs it and marks it malformed.
    return SseDecoder().feed(frame + b"\n\n")[0]
