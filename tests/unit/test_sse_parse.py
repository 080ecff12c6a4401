"""The client's SSE parser (ci_client/sse.py)."""

from __future__ import annotations

import json

import pytest
import sseclient

from ci_client.sse import sse_events
from ci_server.api.frames import SseFrames
from ci_server.models import EventType, JobEvent

JOB = "0123456789ab"


def sse_data(chunks: list[bytes]) -> list[str]:
    return [data for _, data in sse_events(chunks)]


def every_chunking(stream: bytes) -> list[list[bytes]]:
    """The stream whole, byte by byte, and cut in two at every position."""
    cuts = [[stream[:n], stream[n:]] for n in range(1, len(stream))]
    return [[stream], [stream[n : n + 1] for n in range(len(stream))], *cuts]


STREAMS = {
    "crlf, the server's": (
        b'id: 1\r\nevent: log\r\ndata: {"a": 1}\r\n\r\n: ping\r\n\r\n'
        b'id: 2\r\nevent: end\r\ndata: {"b": 2}\r\n\r\n',
        ['{"a": 1}', '{"b": 2}'],
    ),
    "lf": (b"data: one\n\ndata: two\n\n", ["one", "two"]),
    "cr": (b"data: one\r\rdata: two\r\r", ["one", "two"]),
    "mixed": (b"data: a\r\n\ndata: b\n\r\ndata: c\r\n\r\r\n", ["a", "b", "c"]),
    "multi-line data": (b"data: first\ndata: second\ndata:third\n\n", ["first\nsecond\nthird"]),
    "no space, empty value, bare field": (
        b"data:x\n\ndata:\n\ndata\ndata: y\n\n",
        ["x", "", "\ny"],
    ),
    "comments and other fields": (
        b": hello\nretry: 10\nevent: x\nid: 7\nfoo: bar\ndata: z\n\n",
        ["z"],
    ),
    "an event without data is not dispatched": (b"event: nothing\n\ndata: kept\n\n", ["kept"]),
    "a field named like data is not data": (b"database: no\ndata: yes\n\n", ["yes"]),
    "utf-8": ("data: résumé ✓\n\n".encode(), ["résumé ✓"]),
}


@pytest.mark.parametrize(("stream", "expected"), STREAMS.values(), ids=STREAMS.keys())
def test_the_data_of_every_event_however_the_stream_is_cut(
    stream: bytes, expected: list[str]
) -> None:
    for chunks in every_chunking(stream):
        assert list(sse_data(chunks)) == expected, chunks


def test_sseclient_py_reads_the_same_from_the_server_s_frames() -> None:
    """The wire format stays what any SSE client reads (sseclient-py, the client before)."""
    events = [
        JobEvent(JOB, n, EventType.LOG, {"stream": "stdout", "text": f"{n}\n."}) for n in (1, 2)
    ]
    stream = SseFrames().of(JOB, events)
    assert list(sse_data([stream])) == [
        e.data for e in sseclient.SSEClient(iter([stream])).events()
    ]


def test_an_event_the_stream_ends_in_the_middle_of_is_not_dispatched() -> None:
    """A dropped link: the client resumes after the last whole event (sseclient-py would
    hand on the broken half)."""
    stream = b"data: done\r\n\r\ndata: cut off\r\n"
    for chunks in every_chunking(stream):
        assert list(sse_data(chunks)) == ["done"]


def test_an_event_is_dispatched_as_soon_as_its_blank_line_arrives() -> None:
    chunks = iter([b"data: one\r", b"\r", b"data: two\r\n\r\n"])
    parsed = sse_events(chunks)
    assert next(parsed) == ("message", "one")  # from the second chunk, before any other is read
    assert list(parsed) == [("message", "two")]


def test_each_event_s_type_is_its_event_field_or_message() -> None:
    """The server's word on the stream (`unauthorized`) is told from a job's events by it."""
    stream = b"event: log\r\ndata: a\r\n\r\ndata: b\r\n\r\nevent: unauthorized\r\ndata: c\r\n\r\n"
    for chunks in every_chunking(stream):
        assert list(sse_events(chunks)) == [("log", "a"), ("message", "b"), ("unauthorized", "c")]


def test_the_server_s_frames_parse_back_to_their_events() -> None:
    events = [
        JobEvent(JOB, 1, EventType.LOG, {"stream": "stdout", "text": "a\nb\r\nc\rd ✓"}),
        JobEvent(JOB, 2, EventType.END, {"status": "succeeded"}),
    ]
    stream = SseFrames().of(JOB, events)
    for chunks in every_chunking(stream):
        parsed = [json.loads(data) for data in sse_data(chunks)]
        assert [(d["seq"], d["type"]) for d in parsed] == [(1, "log"), (2, "end")]
        assert parsed[0]["text"] == "a\nb\r\nc\rd ✓"
