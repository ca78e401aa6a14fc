"""The API under uvicorn as `featurestream serve` runs it (`serving.server`), over a real socket.

Each response must reach the client as one TCP data segment: head and body
leave in one write (`CoalescedWrites`). The kernel counts the segments a
socket received (`tcp_info.tcpi_data_segs_in`); with uvicorn's own protocol
every response here took two. Files sent in chunks, errors, several requests
on one connection and `Connection: close` must come through intact.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from serving.routers.ui import STATIC
from serving.server import server_options

pytestmark = pytest.mark.integration


@pytest.fixture
def port(app: FastAPI) -> Iterator[int]:
    """The app served by uvicorn with the options `featurestream serve` uses, in a thread of this process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free, **server_options(log_level="warning")))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.02)
    try:
        yield free
    finally:
        server.should_exit = True
        thread.join(15)


def _request(method: str, path: str, body: object = None, *, close: bool = False) -> bytes:
    payload = b"" if body is None else orjson.dumps(body)
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode() + payload


def _split(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _data_segments_in(sock: socket.socket) -> int:
    """tcp_info.tcpi_data_segs_in (Linux >= 4.6): data segments this socket received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN_OFFSET)[0])


_DATA_SEGS_IN_OFFSET = 152  # after 8 one-byte fields, 24 u32, 4 u64 and 4 u32 (include/uapi/linux/tcp.h)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = sock.recv(1 << 20)
    while b"\r\n\r\n" not in data:
        data += sock.recv(1 << 20)
    status, headers, body = _split(data)
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "the server closed the connection mid-response"
        body += chunk
    assert len(body) == length, "bytes beyond the response"
    return status, headers, body


def test_each_response_is_one_segment(port: int) -> None:
    requests = [
        (_request("GET", "/healthz"), 200),
        (_request("POST", "/v1/features", {"service": "svc", "entities": [{"user_id": "nobody"}]}), 200),
        (_request("POST", "/v1/features", {"service": "svc"}), 422),
        (_request("POST", "/v1/features", {"service": "nope", "entities": [{"user_id": "u"}]}), 404),
    ]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(5):  # one keep-alive connection throughout
            for raw, expected in requests:
                before = _data_segments_in(sock)
                sock.sendall(raw)
                status, headers, body = _read_response(sock)
                assert status == expected, body
                assert headers["content-type"] == "application/json"
                orjson.loads(body)
                assert _data_segments_in(sock) - before == 1, f"{status}, {len(body)} bytes: not one segment"


def test_streamed_and_large_bodies_and_connection_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_request("GET", "/openapi.json"))
        status, _, body = _read_response(sock)
        assert status == 200
        assert "/v1/features" in orjson.loads(body)["paths"]
        # a file is sent in chunks read on a thread: writes of several loop steps, in order
        sock.sendall(_request("GET", "/ui/static/uPlot.iife.min.js"))
        status, _, body = _read_response(sock)
        assert status == 200
        assert body == (STATIC / "uPlot.iife.min.js").read_bytes()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_request("GET", "/healthz", close=True))
        status, headers, body = _read_response(sock)
        assert (status, headers.get("connection")) == (200, "close")
        assert orjson.loads(body)
        assert sock.recv(1) == b"", "the server closes after the response"
