"""Job events as Server-Sent Events frames, each encoded once however many clients watch.

Encoding (JSON, then SSE framing) took about half of the event loop's time while one client
followed a job printing as fast as it could; N clients following the same job encoded every
event N times. Frames of recent events are kept by (job id, seq), which name one event for
the life of the process.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from sse_starlette import ServerSentEvent

from ci_server.models import JobEvent

KEPT_FRAMES = 20_000
"""About 5 MB: watchers of one job read within a few batches of each other."""


def encode(event: JobEvent) -> bytes:
    payload = {"seq": event.seq, "type": event.type.value, "time": event.time.isoformat()}
    data = json.dumps(payload | event.data)
    return ServerSentEvent(data, event=event.type.value, id=str(event.seq)).encode()


class SseFrames:
    def __init__(self, kept: int = KEPT_FRAMES) -> None:
        self.kept = kept
        self._frames: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def of(self, job_id: str, events: list[JobEvent]) -> bytes:
        """The events' frames, in one piece: one write for all of them."""
        frames = []
        for event in events:
            key = (job_id, event.seq)
            frame = self._frames.get(key)
            if frame is None:
                frame = self._frames[key] = encode(event)
                if len(self._frames) > self.kept:
                    self._frames.popitem(last=False)
            frames.append(frame)
        return b"".join(frames)
