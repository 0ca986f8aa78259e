"""proxy/websocket.py against an independent implementation: frames built by the `websockets`
package (masked, fragmented, permessage-deflate with and without context takeover), fed in any split."""

from __future__ import annotations

import itertools
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from proxy.websocket import CLOSE, PING, TEXT, MessageReader, close_frame, deflate_of, server_text_frame

Texts = st.lists(st.text(min_size=0, max_size=300).map(str.encode), min_size=1, max_size=8)


def _frames(messages: list[bytes], *, mask: bool, deflate: PerMessageDeflate | None, pieces: int) -> list[bytes]:
    """Each message as `pieces` fragments (a ping between the first two), serialised by websockets."""
    out: list[bytes] = []
    extensions = [deflate] if deflate is not None else []
    for data in messages:
        step = max(1, -(-len(data) // pieces))
        chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        for i, chunk in enumerate(chunks):
            opcode = Opcode.TEXT if i == 0 else Opcode.CONT
            out.append(Frame(opcode, chunk, fin=i == len(chunks) - 1).serialize(mask=mask, extensions=extensions))
            if i == 0 and len(chunks) > 1:
                out.append(Frame(Opcode.PING, b"are you there").serialize(mask=mask))
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(Texts, st.booleans(), st.sampled_from(["none", "context", "fresh"]), st.integers(1, 4),
       st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_of_any_frames_reads_the_same_messages(messages, mask, compression, pieces, cuts):
    deflate = None if compression == "none" else PerMessageDeflate(
        remote_no_context_takeover=False, local_no_context_takeover=compression == "fresh",
        remote_max_window_bits=15, local_max_window_bits=15)
    wire = b"".join(_frames(messages, mask=mask, deflate=deflate, pieces=pieces))
    reader = MessageReader(masked=mask, max_message=1 << 20, deflate=deflate is not None)
    seen = []
    for part in _split(wire, cuts):
        seen += reader.feed(part)
    texts = [m for m in seen if m.opcode == TEXT]
    assert [m.payload for m in texts] == messages
    assert {m.opcode for m in seen} <= {TEXT, PING}
    assert reader.at_boundary and seen[-1].end == len(wire) and not reader.broken
    # Each message's span covers its frames (a control frame between its fragments lies inside it),
    # and the spans of messages follow one another: what lies between two is a control frame's.
    assert texts[0].start == 0 and all(a.end <= b.start for a, b in itertools.pairwise(texts))
    assert all(t.start < t.end for t in texts)


def test_a_message_over_the_limit_or_a_bomb_is_not_read_and_the_next_one_is():
    big = b"x" * 5000
    deflate = PerMessageDeflate(False, False, 15, 15)
    wire = b"".join(_frames([big, b"small"], mask=True, deflate=deflate, pieces=1))
    assert len(wire) < 200  # 5000 bytes deflate to a few dozen: a bomb in miniature
    reader = MessageReader(masked=True, max_message=1000, deflate=True)
    over, small = reader.feed(wire)
    assert (over.payload, small.payload) == (None, b"small")


def test_broken_framing_stops_reading_and_a_bad_deflate_costs_one_message():
    reader = MessageReader(masked=False, max_message=100)
    assert reader.feed(b"\x81\x7f\x80" + b"\x00" * 7) == [] and reader.broken
    reader = MessageReader(masked=False, max_message=100, deflate=True)
    bad = bytes((0xC1, 3)) + b"\xff\xff\xff"  # RSV1 set: "compressed", but not deflate
    good = _frames([b"next"], mask=False, deflate=PerMessageDeflate(False, True, 15, 15), pieces=1)[0]
    first, second = reader.feed(bad + good)
    assert first.payload is None and second.payload == b"next"


def test_runtaps_own_frames_and_the_extension_header():
    reader = MessageReader(masked=False, max_message=1 << 20)
    [text] = reader.feed(server_text_frame(b'{"type":"error"}'))
    assert (text.opcode, text.payload) == (TEXT, b'{"type":"error"}')
    [long] = reader.feed(server_text_frame(b"y" * 70_000))
    assert long.payload == b"y" * 70_000
    [close] = MessageReader(masked=True, max_message=100).feed(close_frame(1008, "budget", masked=True))
    assert (close.opcode, close.payload) == (CLOSE, (1008).to_bytes(2) + b"budget")
    assert deflate_of("permessage-deflate; client_max_window_bits=15") == (True, False)
    assert deflate_of("x-other, permessage-deflate; client_no_context_takeover") == (True, True)
    assert deflate_of(None) == (False, False)
    assert zlib.decompressobj(-15).decompress(b"\x03\x00") == b""  # the empty block a sync flush ends in
