"""Incremental SSE framing for the Assistants streams runtap tees (sans-io: no I/O, asyncio or JSON).

Why this exists: forward.py writes every upstream chunk to the client untouched and only then hands
the same chunk to the tap (architecture.md §8.3). Chunk boundaries mean nothing (TCP and aiohttp's
`iter_any()` re-chunk freely, protocol.md §6.5.1), and aiohttp's `readline()` is not an option
because it raises `LineTooLong` on a long run event (§6.5.4). So the tap frames its own copy here.

The framing follows what openai-python 3.57.0 does (protocol.md §6.2, `_SSELineDecoder` and
`SSEDecoder` in `src/openai/_streaming.py`), so we see the events the client sees:
- lines end in LF, CRLF or a bare CR (§1.1), and a CRLF may be split across two chunks;
- an event is dispatched at a blank line; `:` lines are comments; one space after the colon is
  stripped; several `data:` lines are joined with "\\n"; a line without a colon is a field with an
  empty value.

Where the SDK drops a frame or fails on it, a recorder must still keep what was seen, so here we
differ (protocol.md §1.4, §6.4):
- Unknown fields are ignored by the SDK. The seed's `event: thread.run.completed` followed by a bare
  JSON line (no `data:`) therefore reaches the SDK as an event with empty data (`JSONDecodeError`).
  Here such a frame comes back *malformed*: `raw` holds its exact bytes.
- An `event:` without any `data:` (the SDK's `JSONDecodeError` again, §6.4) is returned, malformed.
- Invalid UTF-8 makes the SDK raise `UnicodeDecodeError` (it decodes each line strictly). Here the
  value is decoded with U+FFFD replacements and the frame is malformed.
- `retry` must be ASCII digits (WHATWG); the SDK's `int()` also takes "+5", " 5", "-5". Anything
  else is malformed here.
- A last event with no blank line before EOF is silently dropped by the SDK (§6.4). `close()`
  returns it with `complete=False`, so a truncated stream is visible in the recording.
- `id` is the frame's own `id:` field. The SDK carries the last id forward into later events (as
  the SSE spec says); the Assistants examples send no ids (§1.1), and a recorder wants what was sent.
- A frame with only `id:`/`retry:` is returned (data ""), though the SSE spec would not dispatch it.

`raw` is the frame's lines exactly as received, line endings included, but not the blank line that
ended it. Leaving the terminator out lets a frame be dispatched as soon as its blank line starts
(even if that line's CR may be the first half of a CRLF still in the next chunk: the LF is then an
empty line before the next frame, which dispatches nothing), and `raw` is still the same however
the stream was chunked. Only a CR ending a *non-empty* line at the end of a chunk must wait for the
next byte: a LF there is the same line ending, not a blank line.

Speed: this runs for every chunk on the proxy's hot path. Line endings are found with
`bytearray.find` (for CR too, but only once a CR has been seen), never byte by byte; the search for
a line's end resumes where the previous feed stopped, so a 5 MB event fed in 4 KB chunks costs
linear time; and a whole `event: x\\ndata: y\\n\\n` frame, the real API's framing, is recognised
with four C calls and no line splitting.
"""

from __future__ import annotations

from dataclasses import dataclass

_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A


# Not frozen: a frozen dataclass costs ~1.6 us to build against ~0.4 us, and one is built per
# event on the tee path. Treat instances as immutable all the same.
@dataclass(slots=True)
class SseEvent:
    """One SSE frame, as dispatched at its blank line (or flushed by `SseDecoder.close()`)."""

    event: str | None
    """The value of the `event:` field (the last one, if repeated); None if the frame had none."""
    data: str
    """The `data:` values joined with "\\n"; "" if the frame had no `data:` line."""
    id: str | None = None
    """The frame's own `id:` field (not carried over from earlier frames)."""
    retry: int | None = None
    """The frame's `retry:` field, when it was ASCII digits."""
    raw: bytes | None = None
    """The frame's exact bytes, set only when it was malformed or incomplete; else None."""
    complete: bool = True
    """False only for a trailing frame that `close()` flushed without its blank line."""

    @property
    def malformed(self) -> bool:
        return self.raw is not None

    @property
    def is_done(self) -> bool:
        """The terminator, exactly. The SDK stops at any `data.startswith("[DONE]")` (§6.2)."""
        return self.data == "[DONE]"


def _decode(value: bytes) -> tuple[str, bool]:
    """The UTF-8 text of a field value, and whether it had to be repaired."""
    try:
        return value.decode(), False
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace"), True


def _parse_frame(frame: bytes, complete: bool) -> SseEvent | None:
    """The general parser: any line endings, any fields. None if the frame held only comments."""
    event_b: bytes | None = None
    data_b: list[bytes] = []
    id_b: bytes | None = None
    retry: int | None = None
    bad = not complete
    seen = False
    for line in frame.splitlines():  # bytes.splitlines() splits on exactly CR, LF and CRLF
        if not line or line[0] == _COLON:
            continue
        seen = True
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data_b.append(value)
        elif name == b"event":
            event_b = value
        elif name == b"id":
            id_b = value
        elif name == b"retry":
            try:
                retry = int(value) if value.isdigit() else None  # bytes.isdigit(): ASCII only
            except ValueError:  # more digits than int() accepts (sys.get_int_max_str_digits())
                retry = None
            if retry is None:
                bad = True
        else:
            bad = True  # unknown field, e.g. the seed's bare JSON line (protocol.md §1.4)
    if not seen:
        return None
    if not data_b and event_b is not None:
        bad = True  # the SDK would json-parse "" here (protocol.md §6.4)
    data, repaired = _decode(b"\n".join(data_b))
    bad |= repaired
    event: str | None = None
    if event_b is not None:
        event, repaired = _decode(event_b)
        bad |= repaired
    id_: str | None = None
    if id_b is not None:
        id_, repaired = _decode(id_b)
        bad |= repaired
    return SseEvent(event, data, id_, retry, bytes(frame) if bad else None, complete)


class SseDecoder:
    """Feed it raw body chunks as they arrive; it returns the frames each chunk completed.

    `close()` flushes a trailing frame that never got its blank line and resets the decoder, so
    one decoder may be reused for another stream.
    """

    __slots__ = ("_buf", "_cr_seen", "_line", "_seek", "bytes_fed")

    def __init__(self) -> None:
        self.bytes_fed: int = 0
        """Every byte passed to `feed()`, over the decoder's life."""
        self._buf = bytearray()
        """The unconsumed bytes: the current, still incomplete frame; never starts with an EOL."""
        self._line = 0
        """Where in `_buf` the first line without a known ending starts (0: the frame's first)."""
        self._seek = 0
        """Where the search for that line's ending resumes: `_buf[_line:_seek]` holds no EOL."""
        self._cr_seen = False
        """Sticky: once a CR has arrived, line endings are looked for among CRs too."""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if not chunk:
            return []
        self.bytes_fed += len(chunk)
        buf = self._buf
        if not buf and not self._cr_seen and chunk[-2:] == b"\n\n" and b"\r" not in chunk:
            # The common case: a chunk of whole LF frames (the upstream writes one event per
            # write). Split it at once instead of walking it line by line.
            return _whole_frames(chunk)
        fs = 0  # start of the current frame in buf
        cr_mode = self._cr_seen
        if not cr_mode and b"\r" in chunk:
            cr_mode = self._cr_seen = True
        buf += chunk
        n = len(buf)
        line = self._line
        seek = self._seek
        lf = cr = -1  # the next LF / CR at or after `seek`; n when there is none
        events: list[SseEvent] = []
        while True:
            if line == fs:
                # A frame's first line. Empty lines here end an empty frame: nothing to dispatch.
                # This also absorbs the LF of a blank line's CRLF split across two chunks.
                while fs < n and buf[fs] in (_LF, _CR):
                    fs += 1
                if fs >= n:
                    line = seek = fs
                    break
                if line < fs:
                    line = seek = fs
                if seek == fs and not cr_mode and buf.startswith(b"event: ", fs):
                    # The fast path: a whole `event: x\ndata: y\n\n` frame, LF only (§1.1).
                    i = buf.find(b"\n", fs + 7)
                    if i > 0 and buf.startswith(b"data: ", i + 1):
                        j = buf.find(b"\n", i + 7)
                        if 0 < j < n - 1 and buf[j + 1] == _LF:
                            try:
                                ev = SseEvent(buf[fs + 7 : i].decode(), buf[i + 7 : j].decode())
                            except UnicodeDecodeError:
                                ev = _parse_frame(bytes(buf[fs : j + 1]), True)
                            events.append(ev)
                            fs = line = seek = j + 2
                            continue
            else:
                # A line after a complete one: if it is empty, the frame before it is complete.
                if line >= n:
                    break
                c = buf[line]
                if c in (_LF, _CR):
                    ev = _parse_frame(bytes(buf[fs:line]), True) if cr_mode else _fast_frame(buf, fs, line)
                    if ev is not None:
                        events.append(ev)
                    fs = line = seek = line + 1
                    continue
            # Find the end of the line that starts at `line`.
            if lf < seek:
                lf = buf.find(b"\n", seek)
                if lf < 0:
                    lf = n
            k = lf
            if cr_mode:
                if cr < seek:
                    cr = buf.find(b"\r", seek)
                    if cr < 0:
                        cr = n
                if cr < k:
                    k = cr
            if k >= n:
                seek = n
                break
            if buf[k] == _CR:
                if k + 1 == n:
                    seek = k  # CR or CRLF? The next chunk tells; until then the next line is unknown.
                    break
                line = seek = k + 2 if buf[k + 1] == _LF else k + 1
            else:
                line = seek = k + 1
        if fs:
            del buf[:fs]
        self._line = line - fs
        self._seek = seek - fs
        return events

    @property
    def at_frame_boundary(self) -> bool:
        """No frame is part-way: the bytes fed so far frame the same without what comes next."""
        return not self._buf

    def close(self) -> list[SseEvent]:
        buf = self._buf
        ev = _parse_frame(bytes(buf), False) if buf else None
        self._buf = bytearray()
        self._line = self._seek = 0
        self._cr_seen = False
        return [ev] if ev is not None else []


def _fast_frame(buf: bytearray, start: int, end: int) -> SseEvent | None:
    """An LF-only frame: `event: x\\ndata: y\\n` without splitting lines, else the general parser."""
    if buf.startswith(b"event: ", start):
        i = buf.find(b"\n", start + 7, end)
        if buf.startswith(b"data: ", i + 1, end) and buf.find(b"\n", i + 7, end) == end - 1:
            try:
                return SseEvent(buf[start + 7 : i].decode(), buf[i + 7 : end - 1].decode())
            except UnicodeDecodeError:
                pass
    return _parse_frame(bytes(buf[start:end]), True)


def _whole_frames(chunk: bytes) -> list[SseEvent]:
    """Frames of a chunk that holds only complete LF-terminated frames (checked by the caller).

    Splitting at blank lines gives the same frames as the line walk: a frame part that starts
    with extra LFs is an empty line (nothing to dispatch) followed by the frame, and
    `_parse_frame` skips empty lines.
    """
    events: list[SseEvent] = []
    for frame in chunk.split(b"\n\n")[:-1]:
        if frame[:7] == b"event: ":
            i = frame.find(b"\n")
            if i > 0 and frame[i + 1 : i + 7] == b"data: " and frame.find(b"\n", i + 1) < 0:
                try:
                    events.append(SseEvent(frame[7:i].decode(), frame[i + 7 :].decode()))
                    continue
                except UnicodeDecodeError:
                    pass
        frame = frame.lstrip(b"\n")  # leading empty lines end nothing and are not the frame's
        if frame:
            ev = _parse_frame(frame + b"\n", True)  # raw keeps its last line's ending
            if ev is not None:
                events.append(ev)
    return events
