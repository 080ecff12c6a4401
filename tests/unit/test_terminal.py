"""What `ci` lets through to a terminal: hostile control sequences from a job's output."""

from __future__ import annotations

import io

import pytest

from ci_client.terminal import SafeStream, printable

ESC, BEL = "\x1b", "\x07"

# what a job prints -> what `ci` shows, on a terminal or not (no colour here): every
# control character as the text \xNN, so that the sequence is visible and inert
HOSTILE = {
    "clipboard write (OSC 52)": (
        f"{ESC}]52;c;cm0gLXJmIH4={BEL}done",
        "\\x1b]52;c;cm0gLXJmIH4=\\x07done",
    ),
    "window title, ended by ST": (f"{ESC}]0;pwned{ESC}\\title", "\\x1b]0;pwned\\x1b\\title"),
    "hyperlink (OSC 8)": (
        f"{ESC}]8;;https://evil.example{ESC}\\click{ESC}]8;;{ESC}\\",
        "\\x1b]8;;https://evil.example\\x1b\\click\\x1b]8;;\\x1b\\",
    ),
    "bell": (f"ding{BEL}", "ding\\x07"),
    "cursor up and erase line": (f"{ESC}[1A{ESC}[2KPASSED", "\\x1b[1A\\x1b[2KPASSED"),
    "clear screen, private mode (hide the cursor)": (
        f"{ESC}[2J{ESC}[?25lhidden",
        "\\x1b[2J\\x1b[?25lhidden",
    ),
    "device control string (DCS)": (f"{ESC}Pq#0{ESC}\\", "\\x1bPq#0\\x1b\\"),
    "application program command (APC), privacy message (PM)": (
        f"{ESC}_apc{ESC}\\{ESC}^pm{ESC}\\",
        "\\x1b_apc\\x1b\\\\x1b^pm\\x1b\\",
    ),
    "8-bit CSI and OSC (C1)": ("\x9b2J\x9d0;t\x9c", "\\x9b2J\\x9d0;t\\x9c"),
    "carriage return rewriting the line": ("FAILED\rPASSED", "FAILED\\x0dPASSED"),
    "backspace, NUL, DEL": ("a\x08b\x00c\x7f", "a\\x08b\\x00c\\x7f"),
    "an SGR hiding an escape in its parameters": (
        f"{ESC}[31{ESC}]0;x{BEL}m",
        "\\x1b[31\\x1b]0;x\\x07m",
    ),
    "tab, newline and any printable text": ("a\tb\nünïcödé ✓ \\x1b", "a\tb\nünïcödé ✓ \\x1b"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_control_sequence_shows_as_text_on_a_terminal_or_not(case: str) -> None:
    text, shown = HOSTILE[case]
    assert printable(text, colour=True) == shown
    assert printable(text, colour=False) == shown


def test_colour_reaches_a_terminal_and_nothing_else() -> None:
    coloured = f"{ESC}[1;31mFAILED{ESC}[0m {ESC}[38:5:208morange{ESC}[m"
    assert printable(coloured, colour=True) == coloured
    assert printable(coloured, colour=False) == "FAILED orange"


def test_no_control_character_but_tab_newline_and_sgr_is_ever_let_through() -> None:
    every = "".join(chr(c) for c in range(0x00, 0xA0))
    shown = printable(f"{ESC}[32m{every}", colour=True)
    assert shown.startswith(f"{ESC}[32m")
    controls = {c for c in shown[len(f"{ESC}[32m") :] if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0}
    assert controls == {"\t", "\n"}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "colour"), [(FakeTerminal(), True), (io.StringIO(), False)])
def test_a_safe_stream_keeps_colour_only_for_a_terminal(stream: io.StringIO, colour: bool) -> None:
    print(f"{ESC}[31mred{ESC}[0m {ESC}]0;title{BEL}", file=SafeStream(stream))
    red = f"{ESC}[31mred{ESC}[0m" if colour else "red"
    assert stream.getvalue() == rf"{red} \x1b]0;title\x07" + "\n"
