"""`featurestream demo` end to end, as a user runs it: a real subprocess on its own local stack.

The short run must reach the consistency check and report 100%; Ctrl-C in
the middle must stop every process the demo started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from featurestream.cli import main; main()"]


def _env() -> dict[str, str]:
    """No FEATURESTREAM_* from the developer: the demo starts its own Tansu and redis-server."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FEATURESTREAM_")}
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "120", "NO_COLOR": "1"})
    return env


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children started in their own sessions included)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_short_demo_run_reports_100_percent_consistency() -> None:
    done = subprocess.run([*CLI, "demo", "--events", "3000", "--duration", "150", "--predictions", "100"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "consistency: 100.00%" in output, output
    assert "dead letters" in output
    assert "a few live predictions" in output


def test_ctrl_c_stops_every_child() -> None:
    proc = subprocess.Popen([*CLI, "demo", "--events", "2000", "--duration", "120"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    children: set[int] = set()
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            seen.append(line)
            if "serving API" in line or time.monotonic() > deadline:
                break
        assert any("ok serving API" in line for line in seen), "".join(seen)
        children = _descendants(proc.pid)
        assert len(children) >= 4, "redis-server, Tansu, the worker and the API run below the demo"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    left = {pid for pid in children if _alive(pid)}
    assert not left, f"processes left running: {left}"
