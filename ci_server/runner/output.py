"""Turn a container's raw output into bounded log lines, and lines into log events' texts."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

LOG_EVENT_CHARS = 16 * 1024
"""Most characters of lines one log event carries (a line alone may take its own event).

One event per line cost more than the line itself at every step (an object, a row, a JSON
document, an SSE frame, a parse in the client): a suite printing 64,000 lines ran 1.3 times
slower through the service than alone. Lines that arrive together share an event; a line
that arrives alone is still sent at once, in its own."""


CHUNKS_PER_TURN = 1000
BYTES_PER_TURN = 512 * 1024
"""What the event loop takes of a backlog of output in one go, before other tasks may run.

Docker sends a long line in chunks of 16 KiB: a thousand chunks were 16 MB in one go (its
lines cut, kept, published, then written to the store), and `/health` waited for it."""


def in_turns(chunks: list[bytes]) -> Iterator[bytes]:
    """The chunks joined in pieces of at most CHUNKS_PER_TURN chunks and about BYTES_PER_TURN."""
    start, size = 0, 0
    for n, chunk in enumerate(chunks):
        if n > start and (n - start >= CHUNKS_PER_TURN or size + len(chunk) > BYTES_PER_TURN):
            yield b"".join(chunks[start:n])
            start, size = n, 0
        size += len(chunk)
    if start < len(chunks):
        yield b"".join(chunks[start:])


class LineSplitter:
    """Split a byte stream into text lines; a line longer than `max_chars` is split in pieces.

    Decoding is incremental, so a UTF-8 character cut between two chunks survives, and bad
    bytes become U+FFFD instead of an error.
    """

    def __init__(self, max_chars: int = 4096) -> None:
        self.max_chars = max_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._partial + self._decoder.decode(data)
        lines = text.split("\n")
        self._partial = lines.pop()
        out: list[str] = []
        for line in lines:
            out.extend(self._cut(line.removesuffix("\r")))
        # Whole pieces go at once, leaving at most max_chars: strictly, not counting a final
        # \r, because the rest of a full line may still be a \r\n in the next chunk, which
        # must not make an extra empty line. Cut in one pass: taking one piece at a time
        # off the rest copied a 16 MB chunk of one long line 4,000 times.
        size = len(self._partial.removesuffix("\r"))
        if size > self.max_chars:
            whole = (size - 1) // self.max_chars * self.max_chars
            out.extend(self._cut(self._partial[:whole]))
            self._partial = self._partial[whole:]
        return out

    def finish(self) -> list[str]:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return self._cut(rest) if rest else []

    def _cut(self, line: str) -> list[str]:
        if len(line) <= self.max_chars:
            return [line]
        return [line[i : i + self.max_chars] for i in range(0, len(line), self.max_chars)]


class LogBudget:
    """Admit log lines until `max_bytes` of text have been kept, then refuse the rest."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.dropped_lines = 0

    @property
    def exhausted(self) -> bool:
        return self.dropped_lines > 0

    def admit(self, lines: list[str]) -> list[str]:
        """The lines kept: those before the first that does not fit; the rest are counted."""
        for kept, line in enumerate(lines):
            size = (len(line) if line.isascii() else len(line.encode())) + 1
            if self.dropped_lines or self.used + size > self.max_bytes:
                self.dropped_lines += len(lines) - kept
                return lines[:kept]
            self.used += size
        return lines


def pack_lines(lines: Iterable[str], max_chars: int = LOG_EVENT_CHARS) -> list[str]:
    """The lines joined by \\n into texts of at most `max_chars` (or one longer line alone)."""
    texts: list[str] = []
    group: list[str] = []
    size = 0
    for line in lines:
        if group and size + len(line) > max_chars:
            texts.append("\n".join(group))
            group, size = [], 0
        group.append(line)
        size += len(line) + 1
    if group:
        texts.append("\n".join(group))
    return texts
