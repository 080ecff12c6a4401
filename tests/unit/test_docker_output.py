"""Reading an attached container's output: Docker's framing taken off, however the bytes
arrive (a frame split over reads, many frames in one read), and no faster than the loop
takes it."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

from ci_server.runner.docker import MAX_WAITING_BYTES, _Handover, _payloads
from tests.fakes import wait_until


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def send_in_pieces(sink: socket.socket, data: bytes, piece: int) -> None:
    with sink:
        for start in range(0, len(data), piece):
            sink.sendall(data[start : start + piece])


def test_each_frame_s_payload_comes_whole_whatever_the_pieces_it_arrives_in() -> None:
    frames = [(1, b"one\n"), (2, b"oops\n"), (1, b""), (1, b"x" * 70_000), (1, b"last")]
    stream = b"".join(frame(kind, data) for kind, data in frames)
    for piece in (1, 3, 7, 8, 9, 4096, len(stream)):
        reader, writer = socket.socketpair()
        sending = threading.Thread(target=send_in_pieces, args=(writer, stream, piece))
        sending.start()
        with reader:
            received = list(_payloads(reader))
        sending.join()
        assert received == [data for _, data in frames if data], piece  # a frame's each


async def test_the_pump_waits_while_a_mebibyte_is_not_taken_by_the_loop() -> None:
    """Attached, a job prints as fast as it can: what the loop has not taken bounds what the
    pump reads (the container then waits on its writes)."""
    handover = _Handover(asyncio.get_running_loop())
    chunk = b"x" * 1024
    put: list[int] = []

    def pump(count: int) -> None:
        for _ in range(count):
            handover.put(chunk)
            put.append(1)

    flooding = threading.Thread(target=pump, args=(3 * MAX_WAITING_BYTES // len(chunk),))
    flooding.start()
    await wait_until(lambda: len(put) >= MAX_WAITING_BYTES // len(chunk), what="a MiB put")
    chunks, _ = await handover.take()
    assert len(chunks) * len(chunk) == MAX_WAITING_BYTES  # it went no further
    handover.close()  # the run ends: the pump waits no more
    await asyncio.to_thread(flooding.join, 10)
    assert not flooding.is_alive()
