"""What `ci` lets through to a terminal: job output is hostile.

A job decides the text of its log, its test names and messages, and through them of what
`ci` prints. A terminal obeys the control sequences in that text: a test could set the
window title, write the clipboard (OSC 52), plant a hyperlink, move the cursor to rewrite
lines already shown, or ring the bell, on the screen of whoever watches the job (an admin
too). So every piece of text goes through `printable` on its way out:

- SGR sequences (`ESC [ 1;31 m`: colour, bold) are kept when the stream is a terminal
  and removed when it is not (a file or a pipe gets plain text);
- every other control character (C0 but tab and newline, DEL, C1) is shown as the text
  `\\xNN`, never sent as itself. An OSC, DCS, APC, PM or any other CSI sequence
  (cursor moves, erase) thus arrives as harmless visible text: `\\x1b]0;title\\x07`.

Newline is kept: a message of several lines still prints as several lines, and a line
cannot do more than start a new one. Carriage return is escaped, as it could rewrite the
line it is on (`PASSED\\rFAILED`).
"""

from __future__ import annotations

import re
from typing import TextIO

SGR = r"\x1b\[[0-9;:]*m"
CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"
"""Unicode's Cc characters but tab (09) and newline (0a): C0, DEL and C1."""
_UNSAFE = re.compile(f"({SGR})|{CONTROL}")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _keep_sgr(match: re.Match[str]) -> str:
    return match.group() if match.group(1) else _escaped(match)


def _drop_sgr(match: re.Match[str]) -> str:
    return "" if match.group(1) else _escaped(match)


def printable(text: str, *, colour: bool) -> str:
    """`text` safe for a terminal: colour kept if `colour`, every other control escaped."""
    return _UNSAFE.sub(_keep_sgr if colour else _drop_sgr, text)


class SafeStream:
    """A text stream that writes only `printable` text to the stream it wraps: pass it to
    `print(file=...)`. Colour is kept when the wrapped stream is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.colour = stream.isatty()

    def write(self, text: str) -> int:
        return self.stream.write(printable(text, colour=self.colour))

    def flush(self) -> None:
        self.stream.flush()
