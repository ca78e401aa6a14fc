"""Running the API under uvicorn: the server options `featurestream serve` and `bench/online.py` share.

Each response goes out in one socket write. uvicorn's httptools protocol
writes the status line and headers as soon as the app starts the response,
then the body: two TCP segments per response, so the client wakes up and
reads twice. `CoalescedWrites` holds what the app writes during one
event-loop step and sends it together when the step ends; a streamed response
still goes out as it comes (each step's writes leave before the next step
runs). The server's CPU per request stays about the same (one larger write
costs about what the two did); clients do half the reads:
`bench/online.py`, closed loop, 8 connections, server, client and Redis
sharing one core: healthz 4.5-5.0k -> 6.3-6.9k requests/s, features_1
3.1-3.3k -> 3.2-4.0k (three interleaved pairs).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescedWrites", "run", "server_options"]


class _CoalescingTransport:
    """A transport whose writes made during one loop step leave in one write once the step ends."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class CoalescedWrites(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol, with each response's head and body sent in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


def server_options(*, access_log: bool = False, log_level: str | None = None) -> dict[str, Any]:
    """uvicorn options: one worker on uvloop with `CoalescedWrites`; logging stays ours (`log_config=None`)."""
    return {"workers": 1, "loop": "uvloop", "http": CoalescedWrites, "access_log": access_log, "log_config": None,
            "log_level": log_level, "lifespan": "on"}


def run(app: Any, *, host: str, port: int, access_log: bool = False, log_level: str | None = None) -> None:
    """Serve `app` until interrupted (exits 3 when it cannot start, e.g. the port is taken)."""
    uvicorn.run(app, host=host, port=port, **server_options(access_log=access_log, log_level=log_level))
