"""Turning raw container output into bounded log lines."""

from __future__ import annotations

import pytest

from ci_server.runner.output import (
    BYTES_PER_TURN,
    LineSplitter,
    LogBudget,
    in_turns,
    pack_lines,
)


def split(chunks: list[bytes], max_chars: int = 4096) -> list[str]:
    splitter = LineSplitter(max_chars)
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
    lines.extend(splitter.finish())
    return lines


def test_lines_are_joined_across_chunks() -> None:
    assert split([b"coll", b"ected 3 items\ntest_a", b".py ..", b".\n", b"done\n"]) == [
        "collected 3 items",
        "test_a.py ...",
        "done",
    ]


def test_empty_lines_are_kept() -> None:
    assert split([b"a\n\n\nb\n"]) == ["a", "", "", "b"]


def test_crlf_line_endings_are_removed() -> None:
    assert split([b"one\r\ntwo\r", b"\nthree\r\n"]) == ["one", "two", "three"]


def test_utf8_character_split_across_chunks_survives() -> None:
    data = "résumé ✓ 🐍\n".encode()
    chunks = [data[i : i + 1] for i in range(len(data))]  # every multi-byte char is cut
    assert split(chunks) == ["résumé ✓ 🐍"]


def test_invalid_bytes_become_replacement_characters() -> None:
    assert split([b"bad \xff\xfe byte\n", b"ok\n"]) == ["bad \ufffd\ufffd byte", "ok"]


def test_truncated_utf8_at_the_end_becomes_a_replacement_character() -> None:
    assert split([b"cut \xe2\x9c"]) == ["cut \ufffd"]


def test_long_line_is_split_at_max_chars() -> None:
    assert split([b"a" * 10 + b"\nabc\n"], max_chars=4) == ["aaaa", "aaaa", "aa", "abc"]


def test_long_line_without_newline_is_emitted_before_it_ends() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]  # bounded memory: no waiting
    assert splitter.feed(b"k\n") == ["ijk"]
    assert splitter.finish() == []


def test_max_chars_counts_characters_not_bytes() -> None:
    assert split(["éééééé\n".encode()], max_chars=3) == ["ééé", "ééé"]


def test_finish_flushes_the_partial_last_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"first\nno newline at the end") == ["first"]
    assert splitter.finish() == ["no newline at the end"]
    assert splitter.finish() == []


def test_finish_without_pending_text_returns_nothing() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"complete\n") == ["complete"]
    assert splitter.finish() == []


@pytest.mark.parametrize(
    "data",
    [
        b"x" * 8 + b"\n" + b"y" * 4 + b"\nz\n",  # lines of exactly a multiple of max_chars
        b"abc\r\n" + b"abcd\r\n" + b"\r\n",  # CRLF right after max_chars characters
        "ééééé✓✓✓\nend".encode(),
        b"no newline at all, quite long",
    ],
)
def test_lines_do_not_depend_on_how_output_is_chunked(data: bytes) -> None:
    """The same bytes give the same lines whether they arrive at once or byte by byte."""
    whole = split([data], max_chars=4)
    for size in (1, 2, 3, 5):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert split(chunks, max_chars=4) == whole, f"chunks of {size} byte(s)"


def test_budget_admits_lines_until_the_limit() -> None:
    budget = LogBudget(max_bytes=12)
    assert budget.admit(["hello"]) == ["hello"]  # 5 bytes + newline = 6
    assert budget.admit(["world"]) == ["world"]  # 12 in all: exactly at the limit
    assert not budget.exhausted
    assert budget.used == 12
    assert budget.admit(["x"]) == []
    assert budget.exhausted
    assert budget.dropped_lines == 1


def test_budget_keeps_the_lines_of_a_chunk_that_fit_and_counts_the_rest() -> None:
    budget = LogBudget(max_bytes=10)
    assert budget.admit(["abc", "def", "ghi", "j"]) == ["abc", "def"]
    assert budget.dropped_lines == 2
    assert budget.used == 8


def test_budget_counts_utf8_bytes_not_characters() -> None:
    fits = LogBudget(max_bytes=7)
    assert fits.admit(["✓✓"]) == ["✓✓"]  # 2 characters, 6 bytes, + newline = 7 bytes
    assert fits.used == 7
    too_small = LogBudget(max_bytes=6)
    assert too_small.admit(["✓✓"]) == []  # 3 characters with the newline, but 7 bytes
    assert too_small.used == 0


def test_budget_refuses_everything_after_the_first_refusal() -> None:
    budget = LogBudget(max_bytes=20)
    assert budget.admit(["a" * 10]) == ["a" * 10]
    assert budget.admit(["b" * 50]) == []
    # A small line would fit, but the log is already cut: no holes in the kept output.
    assert budget.admit(["c", ""]) == []
    assert budget.dropped_lines == 3
    assert budget.used == 11


def test_lines_that_come_together_are_packed_into_texts_of_bounded_size() -> None:
    lines = ["one", "two", "", "three", "four"]
    texts = pack_lines(lines, max_chars=9)
    assert texts == ["one\ntwo\n", "three", "four"]
    assert all(len(text) <= 9 for text in texts)
    assert [line for text in texts for line in text.split("\n")] == lines


def test_a_line_longer_than_a_pack_goes_alone() -> None:
    assert pack_lines(["ab", "x" * 10, "cd"], max_chars=4) == ["ab", "x" * 10, "cd"]


def test_no_lines_make_no_text_and_an_empty_line_makes_one() -> None:
    assert pack_lines([]) == []
    assert pack_lines([""]) == [""]


def test_a_long_line_in_one_big_chunk_is_cut_into_every_piece() -> None:
    splitter = LineSplitter(4096)
    pieces = splitter.feed(b"0123456789" * 1_000_000)  # 10 MB of one line
    assert len(pieces) == 10_000_000 // 4096
    assert all(len(piece) == 4096 for piece in pieces)
    rest = splitter.feed(b"\n")
    assert len(rest) == 1 and 0 < len(rest[0]) <= 4096
    assert "".join(pieces + rest) == "0123456789" * 1_000_000


def test_a_backlog_of_chunks_is_handed_on_in_bounded_turns() -> None:
    chunks = [b"x" * 16384] * 100 + [b"y\n"] * 3000  # a long line in Docker's chunks, then lines
    turns = list(in_turns(chunks))
    assert b"".join(turns) == b"".join(chunks)
    assert all(len(turn) <= BYTES_PER_TURN for turn in turns)
    assert len(turns) <= 8  # a few turns (1.6 MB, then 3,000 chunks), not one per chunk


def test_chunks_bigger_than_a_turn_go_whole_one_per_turn() -> None:
    big = b"z" * (BYTES_PER_TURN + 1)
    assert list(in_turns([b"a", big, b"b"])) == [b"a", big, b"b"]
    assert list(in_turns([])) == []
