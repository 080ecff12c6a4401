"""SSE frames of job events: what a client parses, and each event encoded once."""

from __future__ import annotations

import json

import sseclient

from ci_server.api.frames import SseFrames
from ci_server.models import EventType, JobEvent

JOB = "0123456789ab"


def log(seq: int, text: str) -> JobEvent:
    return JobEvent(JOB, seq, EventType.LOG, {"stream": "stdout", "text": text})


def parse(frames: bytes) -> list[sseclient.Event]:
    return list(sseclient.SSEClient(iter([frames])).events())


def test_a_client_parses_every_event_of_a_batch_with_its_id_type_and_data() -> None:
    events = [log(1, "first"), log(2, "two\nlines"), JobEvent(JOB, 3, EventType.END, {})]
    parsed = parse(SseFrames().of(JOB, events))
    assert [(e.id, e.event) for e in parsed] == [("1", "log"), ("2", "log"), ("3", "end")]
    data = [json.loads(e.data) for e in parsed]
    assert [d["seq"] for d in data] == [1, 2, 3]
    assert data[1]["text"] == "two\nlines"
    assert data[0]["time"] == events[0].time.isoformat()


def test_an_event_is_encoded_once_for_every_watcher_until_it_is_old() -> None:
    frames = SseFrames(kept=3)
    first = frames.of(JOB, [log(1, "original")])
    # The same job and seq name the same event: its frame is not made again...
    assert frames.of(JOB, [log(1, "never encoded")]) == first
    assert frames.of("another-job", [log(1, "other")]) != first
    # ...until newer events pushed it out.
    frames.of(JOB, [log(2, "b"), log(3, "c")])
    assert json.loads(parse(frames.of(JOB, [log(1, "again")]))[0].data)["text"] == "again"


def test_frames_kept_are_bounded_in_bytes_too() -> None:
    frames = SseFrames(kept_bytes=40_000)
    big = frames.of(JOB, [log(1, "x" * 16_000)])
    frames.of(JOB, [log(2, "y" * 16_000)])
    assert frames.of(JOB, [log(1, "never encoded")]) == big  # two fit
    frames.of(JOB, [log(3, "z" * 16_000)])  # a third does not: the oldest goes
    assert json.loads(parse(frames.of(JOB, [log(1, "again")]))[0].data)["text"] == "again"
    assert json.loads(parse(frames.of(JOB, [log(3, "kept")]))[0].data)["text"] == "z" * 16_000
