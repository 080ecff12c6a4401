"""Job events as Server-Sent Events frames, each encoded once however many clients watch.

Encoding (JSON, then SSE framing) took about half of the event loop's time while one client
followed a job printing as fast as it could; N clients following the same job encoded every
event N times. Frames of recent events are kept by (job id, seq), which name one event for
the life of the process, up to KEPT_FRAMES of them and KEPT_BYTES in all.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from ci_server.models import JobEvent

KEPT_FRAMES = 20_000
"""Watchers of one job read within a few batches of each other."""
KEPT_BYTES = 16 * 1024 * 1024
"""A log event may carry 16 KiB of lines: 20,000 such frames would hold 320 MB."""


def encode(event: JobEvent) -> bytes:
    """The event's SSE frame: `id`, `event` and one `data` line of JSON.

    Written out rather than through sse_starlette's ServerSentEvent, whose search for line
    breaks in the data took as long as the JSON itself: json.dumps escapes every line break,
    so the JSON is always one line.
    """
    payload = {"seq": event.seq, "type": event.type.value, "time": event.time.isoformat()}
    data = json.dumps(payload | event.data)
    return f"id: {event.seq}\r\nevent: {event.type.value}\r\ndata: {data}\r\n\r\n".encode()


class SseFrames:
    def __init__(self, kept: int = KEPT_FRAMES, kept_bytes: int = KEPT_BYTES) -> None:
        self.kept = kept
        self.kept_bytes = kept_bytes
        self._frames: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0

    def of(self, job_id: str, events: list[JobEvent]) -> bytes:
        """The events' frames, in one piece: one write for all of them."""
        frames = []
        for event in events:
            key = (job_id, event.seq)
            frame = self._frames.get(key)
            if frame is None:
                frame = self._frames[key] = encode(event)
                self._bytes += len(frame)
                while len(self._frames) > self.kept or self._bytes > self.kept_bytes:
                    self._bytes -= len(self._frames.popitem(last=False)[1])
            frames.append(frame)
        return b"".join(frames)
