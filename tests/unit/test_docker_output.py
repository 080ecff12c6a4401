"""Reading an attached container's output: Docker's framing taken off, however the bytes
arrive (a frame split over reads, many frames in one read)."""

from __future__ import annotations

import socket
import struct
import threading

from ci_server.runner.docker import _payloads


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def send_in_pieces(sink: socket.socket, data: bytes, piece: int) -> None:
    with sink:
        for start in range(0, len(data), piece):
            sink.sendall(data[start : start + piece])


def test_payloads_come_whole_whatever_the_pieces_they_arrive_in() -> None:
    frames = [(1, b"one\n"), (2, b"oops\n"), (1, b""), (1, b"x" * 70_000), (1, b"last")]
    stream = b"".join(frame(kind, data) for kind, data in frames)
    for piece in (1, 3, 7, 8, 9, 4096, len(stream)):
        reader, writer = socket.socketpair()
        sending = threading.Thread(target=send_in_pieces, args=(writer, stream, piece))
        sending.start()
        with reader:
            received = b"".join(_payloads(reader))
        sending.join()
        assert received == b"".join(data for _, data in frames), piece
