"""proxy/sse.py: the seed's streams at every split point, line endings, field rules, properties."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sse import SseDecoder, SseEvent

SEED = Path(__file__).parents[3] / "shared" / "seed" / "create-thread-and-run.txt"

EOLS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def decode(chunks: Iterable[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    events: list[SseEvent] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        events += decoder.feed(chunk)
    events += decoder.close()
    assert decoder.bytes_fed == total
    return events


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


def one_byte_chunks(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- the seed ---------------------------------------------------------------------------------


def _seed_blocks() -> list[list[str]]:
    """Each streaming example: from its first `event:` line through `data: [DONE]`, as printed."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in SEED.read_text(encoding="utf-8").splitlines():
        if current is None:
            if line.startswith("event:"):
                current = [line]
        else:
            current.append(line)
            if line == "data: [DONE]":
                blocks.append(current)
                current = None
    assert current is None, "a stream example without its data: [DONE]"
    return blocks


BLOCKS = _seed_blocks()

TEXT_EVENTS = [
    "thread.created",
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
    "thread.message.delta",
    "thread.message.delta",
    "thread.message.delta",
    "thread.message.completed",
    "thread.run.step.completed",
    "thread.run.completed",
    "done",
]
TOOL_EVENTS = [
    "thread.created",
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    *["thread.run.step.delta"] * 5,
    "thread.run.requires_action",
    "done",
]


def _frames(block: Sequence[str]) -> list[list[str]]:
    """The block's lines grouped per event: an `event:` line starts a new one."""
    frames: list[list[str]] = []
    for line in block:
        if line.startswith("event:") or not frames:
            frames.append([line])
        else:
            frames[-1].append(line)
    return frames


def as_is(block: Sequence[str], eol: bytes = b"\n") -> bytes:
    """The block as the seed prints it: no blank line anywhere (protocol.md §1.4)."""
    return b"".join(line.encode() + eol for line in block)


def repaired(block: Sequence[str], eol: bytes = b"\n") -> bytes:
    """The real API's framing: a blank line after each event (protocol.md §1.1)."""
    return b"".join(as_is(frame, eol) + eol for frame in _frames(block))


def test_seed_has_the_two_streaming_examples() -> None:
    assert len(BLOCKS) == 2
    assert [len(b) for b in BLOCKS] == [31, 27]
    # Besides event:/data: lines the examples hold exactly these bare lines: the "..." elisions of
    # the rendering and the bare run JSON after `event: thread.run.completed` (protocol.md §1.4).
    bare = [line for b in BLOCKS for line in b if not line.startswith(("event: ", "data: "))]
    assert [line[:30] for line in bare] == ["...", '{"id":"run_123","object":"thre', "..."]


@pytest.mark.parametrize("index", [0, 1])
def test_seed_as_printed_is_one_unterminated_frame(index: int) -> None:
    block = BLOCKS[index]
    data = as_is(block)
    decoder = SseDecoder()
    assert decoder.feed(data) == []
    [frame] = decoder.close()
    assert frame == SseEvent(
        event="done",  # the last `event:` line wins
        data="\n".join(line[len("data: ") :] for line in block if line.startswith("data: ")),
        raw=data,
        complete=False,
    )
    assert frame.malformed
    assert not frame.is_done  # every data line of the stream, joined, is not "[DONE]"
    assert decode(one_byte_chunks(data)) == [frame]


def test_seed_text_stream_repaired() -> None:
    block = BLOCKS[0]
    events = decode([repaired(block)])
    assert [e.event for e in events] == TEXT_EVENTS
    lines = {i: frame for i, frame in enumerate(_frames(block))}

    first = events[0]
    assert first == SseEvent(
        "thread.created",
        '{"id":"thread_123","object":"thread","created_at":1710348075,"metadata":{}}',
    )
    assert not first.malformed and first.complete

    # The first delta carries the rendering's "..." line: an unknown field, so its bytes are kept,
    # and its data is still the delta's JSON.
    delta = events[8]
    assert delta.event == "thread.message.delta"
    assert delta.data == lines[8][1][len("data: ") :]
    assert delta.data.endswith('"text":{"value":"Hello","annotations":[]}}]}}')
    assert delta.raw == (lines[8][0] + "\n" + lines[8][1] + "\n...\n").encode()

    # `event: thread.run.completed` + a bare JSON line, no `data:` (protocol.md §1.4): malformed,
    # data "", and raw holds exactly what was seen.
    completed = events[13]
    assert completed.event == "thread.run.completed"
    assert completed.data == ""
    assert completed.malformed
    assert completed.raw is not None
    assert completed.raw.startswith(b'event: thread.run.completed\n{"id":"run_123","object":"thread.run",')
    assert completed.raw.endswith(b'"tool_choice":"auto","parallel_tool_calls":true}\n')
    assert completed.raw == ("\n".join(lines[13]) + "\n").encode()
    assert completed.complete

    last = events[-1]
    assert last == SseEvent("done", "[DONE]")
    assert last.is_done

    assert [i for i, e in enumerate(events) if e.malformed] == [8, 13]
    for i, e in enumerate(events):
        if i not in (8, 13):
            assert e.data == lines[i][1][len("data: ") :]
            assert len(lines[i]) == 2


def test_seed_tool_stream_repaired() -> None:
    block = BLOCKS[1]
    events = decode([repaired(block)])
    assert [e.event for e in events] == TOOL_EVENTS
    assert [i for i, e in enumerate(events) if e.malformed] == [8]  # the delta followed by "..."
    assert events[8].data == '{"id":"step_001","object":"thread.run.step.delta","delta":{"step_details"' + (
        ':{"type":"tool_calls","tool_calls":[{"index":0,"type":"function","function":{"arguments":"location"}}]}}}'
    )
    # The decoder does not look inside data: the seed's extra "}" on run objects passes through.
    assert events[1].data.endswith('"parallel_tool_calls":true}}')
    assert events[-1] == SseEvent("done", "[DONE]")
    assert sum(e.is_done for e in events) == 1


SEED_CASES = [
    pytest.param(index, eol, id=f"{name}-{eol_name}")
    for index, name in enumerate(["text", "tool"])
    for eol_name, eol in EOLS.items()
]


@pytest.mark.parametrize(("index", "eol"), SEED_CASES)
def test_seed_every_split_point(index: int, eol: bytes) -> None:
    data = repaired(BLOCKS[index], eol)
    whole = decode([data])
    assert len(whole) == len([TEXT_EVENTS, TOOL_EVENTS][index])
    for cut in range(len(data) + 1):
        assert decode(split(data, [cut])) == whole, cut
    assert decode(one_byte_chunks(data)) == whole


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("eol_name", ["crlf", "cr"])
def test_seed_line_endings_give_the_same_events(index: int, eol_name: str) -> None:
    eol = EOLS[eol_name]
    lf = decode([repaired(BLOCKS[index])])
    other = decode([repaired(BLOCKS[index], eol)])
    assert [(e.event, e.data, e.complete) for e in other] == [(e.event, e.data, e.complete) for e in lf]
    # raw stays byte-exact: the same frames with their own line endings.
    assert [e.raw for e in other] == [None if e.raw is None else e.raw.replace(b"\n", eol) for e in lf]


def test_seed_mixed_line_endings_at_every_split_point() -> None:
    block = BLOCKS[0]
    eols = [b"\n", b"\r\n", b"\r"]
    parts: list[bytes] = []
    n = 0
    for frame in _frames(block):
        for line in frame:
            parts.append(line.encode() + eols[n % 3])
            n += 1
        # A blank line ending in LF right after a CR would be the CR's CRLF, not a blank line.
        parts.append(b"\r\n" if parts[-1].endswith(b"\r") else b"\n")
    data = b"".join(parts)
    whole = decode([data])
    assert [(e.event, e.data) for e in whole] == [(e.event, e.data) for e in decode([repaired(block)])]
    for cut in range(len(data) + 1):
        assert decode(split(data, [cut])) == whole, cut


# --- line endings ------------------------------------------------------------------------------


def test_crlf_split_across_chunks_makes_no_empty_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: a\r") == []
    # Dispatched on the blank line's CR, without waiting to see whether a LF follows.
    assert decoder.feed(b"\ndata: 1\r\n\r") == [SseEvent("a", "1")]
    # That LF belongs to the blank line's CRLF: no second blank line, nothing dispatched.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: 2\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [SseEvent(None, "2")]
    assert decoder.close() == []


def test_bare_cr_then_lf_in_the_next_chunk_is_one_line_ending() -> None:
    # "data: x\r" + "\ndata: y\r\n\r\n" is two lines of one frame, not a frame per line.
    assert decode([b"data: x\r", b"\ndata: y\r\n\r\n"]) == [SseEvent(None, "x\ny")]
    # The CR of a CRLF may be all the next chunk's frame has of CRs: it is still a line ending.
    assert decode([b"event: a\r", b"\ndata: 1\n\n"]) == [SseEvent("a", "1")]


def test_bare_cr_line_endings() -> None:
    assert decode([b"event: a\rdata: 1\r\revent: b\rdata: 2\r\r"]) == [
        SseEvent("a", "1"),
        SseEvent("b", "2"),
    ]


def test_blank_lines_between_events_are_ignored() -> None:
    data = b"\n\r\n\revent: a\ndata: 1\n\n\n\r\n\r\r\nevent: b\ndata: 2\n\n\n"
    assert decode([data]) == [SseEvent("a", "1"), SseEvent("b", "2")]
    assert decode(one_byte_chunks(data)) == [SseEvent("a", "1"), SseEvent("b", "2")]


def test_lf_then_cr_is_a_blank_line() -> None:
    assert decode([b"data: 1\n\rdata: 2\n\n"]) == [SseEvent(None, "1"), SseEvent(None, "2")]


# --- fields ------------------------------------------------------------------------------------


def test_multi_line_data_is_joined_with_lf() -> None:
    data = b'data: {"a":\ndata:  1,\ndata:\ndata\ndata:"b":2}\n\n'
    assert decode([data]) == [SseEvent(None, '{"a":\n 1,\n\n\n"b":2}')]


def test_one_space_after_the_colon_is_stripped() -> None:
    assert decode([b"event:x\ndata:y\n\n"]) == [SseEvent("x", "y")]
    assert decode([b"event:  x\ndata:  y \n\n"]) == [SseEvent(" x", " y ")]
    assert decode([b"event: a: b\ndata: c:d\n\n"]) == [SseEvent("a: b", "c:d")]


def test_comments_are_ignored_and_not_malformed() -> None:
    data = b": ping\n\n:\n\nevent: a\n: inside\ndata: 1\n:tail\n\n: \xff not utf-8\n\n"
    assert decode([data]) == [SseEvent("a", "1")]
    assert decode(one_byte_chunks(data)) == [SseEvent("a", "1")]


def test_comment_only_tail_yields_nothing_at_close() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n\n: keep-alive\n") == [SseEvent("a", "1")]
    assert decoder.close() == []


def test_id_and_retry() -> None:
    data = b"id: 7\nretry: 3000\nevent: a\ndata: x\n\nevent: b\ndata: y\n\n"
    # `id` is the frame's own field; it is not carried into the next frame.
    assert decode([data]) == [SseEvent("a", "x", id="7", retry=3000), SseEvent("b", "y")]


def test_id_or_retry_only_frames_are_returned_well_formed() -> None:
    assert decode([b"retry: 10\n\nid: 3\n\n"]) == [SseEvent(None, "", retry=10), SseEvent(None, "", id="3")]


@pytest.mark.parametrize("value", [b"abc", b"", b"-5", b"+5", b" 5", b"1.5", b"\xd9\xa3"])
def test_retry_that_is_not_ascii_digits_is_malformed(value: bytes) -> None:
    frame = b"retry: " + value + b"\ndata: x\n"
    assert decode([frame + b"\n"]) == [SseEvent(None, "x", raw=frame)]


def test_retry_with_more_digits_than_int_accepts_is_malformed() -> None:
    frame = b"retry: " + b"9" * 5000 + b"\ndata: x\n"
    assert decode([frame + b"\n"]) == [SseEvent(None, "x", raw=frame)]


def test_line_without_colon_is_a_field_with_empty_value() -> None:
    assert decode([b"event\ndata\n\n"]) == [SseEvent("", "")]


def test_unknown_field_keeps_the_frame_bytes() -> None:
    frame = b"event: a\nfoo: bar\ndata: x\nData: y\n"
    assert decode([frame + b"\n"]) == [SseEvent("a", "x", raw=frame)]


def test_event_without_data_is_malformed() -> None:
    # The SDK would json-parse "" here (protocol.md §6.4); the recorder keeps the frame.
    assert decode([b"event: done\n\n"]) == [SseEvent("done", "", raw=b"event: done\n")]
    assert decode([b"event: done\r\n\r\n"]) == [SseEvent("done", "", raw=b"event: done\r\n")]


def test_invalid_utf8_is_replaced_and_malformed() -> None:
    frame = b"event: a\xff\ndata: caf\xc3\xa9 \xe2\x82\n"
    assert decode([frame + b"\n"]) == [SseEvent("a\ufffd", "caf\u00e9 \ufffd", raw=frame)]
    id_frame = b"id: \xc0\ndata: x\n"
    assert decode([id_frame + b"\n"]) == [SseEvent(None, "x", id="\ufffd", raw=id_frame)]


def test_utf8_split_across_chunks_is_not_malformed() -> None:
    data = "event: é\ndata: 日本\n\n".encode()
    for cut in range(len(data) + 1):
        assert decode(split(data, [cut])) == [SseEvent("é", "日本")]


def test_is_done() -> None:
    assert SseEvent("done", "[DONE]").is_done
    assert SseEvent(None, "[DONE]").is_done
    assert not SseEvent("done", "[DONE] ").is_done
    assert not SseEvent("done", "").is_done


# --- close() -----------------------------------------------------------------------------------


def test_close_returns_the_unterminated_frame() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n\nevent: thread.run.completed\ndata: {\"id\":") == [
        SseEvent("a", "1")
    ]
    assert decoder.close() == [
        SseEvent(
            "thread.run.completed",
            '{"id":',
            raw=b'event: thread.run.completed\ndata: {"id":',
            complete=False,
        )
    ]
    assert decoder.close() == []
    # close() resets: the decoder can take another stream.
    assert decoder.feed(b"data: again\n\n") == [SseEvent(None, "again")]
    assert decoder.bytes_fed == 58 + 13


def test_close_keeps_a_trailing_cr_and_a_missing_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n") == []
    assert decoder.close() == [SseEvent("a", "1", raw=b"event: a\ndata: 1\n", complete=False)]
    assert decode([b"data: x\r"]) == [SseEvent(None, "x", raw=b"data: x\r", complete=False)]


def test_close_on_nothing() -> None:
    assert SseDecoder().close() == []
    assert decode([b"", b"\n\n\r\n"]) == []


# --- size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_five_megabyte_event_in_4k_chunks(eol: bytes) -> None:
    value = '{"id":"msg_1","text":"' + "x" * 5_000_000 + '"}'
    lines = [b"event: thread.message.completed", b"data: " + value.encode(), b"", b"data: [DONE]", b"", b""]
    data = eol.join(lines)
    decoder = SseDecoder()
    events: list[SseEvent] = []
    for i in range(0, len(data), 4096):
        events += decoder.feed(data[i : i + 4096])
    events += decoder.close()
    assert decoder.bytes_fed == len(data)
    assert len(events) == 2
    assert events[0].event == "thread.message.completed"
    assert len(events[0].data) == len(value)
    assert events[0].data == value
    assert events[0].raw is None
    assert events[1] == SseEvent(None, "[DONE]")


# --- properties ----------------------------------------------------------------------------------

_text = st.text(st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=12)


@st.composite
def _frames_and_bytes(draw: st.DrawFn) -> tuple[list[SseEvent], bytes]:
    eol = draw(st.sampled_from(list(EOLS.values())))
    events: list[SseEvent] = []
    out: list[bytes] = []

    def field(name: str, value: str) -> None:
        sep = ": " if value.startswith(" ") or draw(st.booleans()) else ":"
        out.append(name.encode() + sep.encode() + value.encode() + eol)
        if draw(st.integers(0, 4)) == 0:
            out.append(b":" + draw(_text).encode() + eol)

    for _ in range(draw(st.integers(0, 6))):
        event = draw(st.none() | _text)
        lines = draw(st.lists(_text, min_size=1, max_size=4))
        id_ = draw(st.none() | _text.filter(lambda s: "\x00" not in s))
        retry = draw(st.none() | st.integers(0, 10**6))
        if draw(st.booleans()):
            out.append(eol)  # a stray blank line between events
        if event is not None:
            field("event", event)
        if id_ is not None:
            field("id", id_)
        if retry is not None:
            field("retry", str(retry))
        for line in lines:
            field("data", line)
        out.append(eol)
        events.append(SseEvent(event, "\n".join(lines), id_, retry))
    return events, b"".join(out)


@st.composite
def _bytes_and_cuts(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    value = draw(data)
    cuts = draw(st.lists(st.integers(0, len(value)), max_size=8))
    return value, cuts


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_property_well_formed_events_round_trip_under_any_chunking(data: st.DataObject) -> None:
    expected, stream = data.draw(_frames_and_bytes())
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    assert decode([stream]) == expected
    assert decode(split(stream, cuts)) == expected


_sse_ish = st.lists(
    st.sampled_from(
        [b"\n", b"\r", b"\r\n", b":", b": ", b" ", b"data", b"event", b"id", b"retry", b"7", b"x",
         b"[DONE]", b"{", b"\xff", b"\xe2\x82", b"\xc3\xa9", b"\x00"]
    ),
    max_size=60,
).map(b"".join)


def _raw_positions_in_order(stream: bytes, events: Sequence[SseEvent]) -> bool:
    pos = 0
    for e in events:
        if e.raw is not None:
            found = stream.find(e.raw, pos)
            if found < 0:
                return False
            pos = found + len(e.raw)
    return True


@settings(deadline=None, max_examples=500)
@given(_bytes_and_cuts(_sse_ish | st.binary(max_size=200)))
def test_property_random_bytes_decode_the_same_however_chunked(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    whole = decode([stream])  # never raises
    assert decode(split(stream, cuts)) == whole
    assert decode(one_byte_chunks(stream)) == whole
    # Only the last frame can be incomplete, and it always keeps its bytes.
    assert all(e.complete for e in whole[:-1])
    assert all(e.raw is not None for e in whole if not e.complete)
    # Each kept frame is the stream's own bytes, in order.
    assert _raw_positions_in_order(stream, whole)
    for e in whole:
        if e.raw is not None:
            # A kept frame, terminated, decodes to the same fields.
            [again] = decode([e.raw + b"\n\n"])
            assert (again.event, again.data, again.id, again.retry) == (e.event, e.data, e.id, e.retry)
        else:
            # A well-formed frame re-encodes to itself.
            lines = [] if e.event is None else [b"event: " + e.event.encode()]
            lines += [] if e.id is None else [b"id: " + e.id.encode()]
            lines += [] if e.retry is None else [b"retry: " + str(e.retry).encode()]
            lines += [b"data: " + part.encode() for part in e.data.split("\n")]
            assert decode([b"\n".join(lines) + b"\n\n"]) == [e]
