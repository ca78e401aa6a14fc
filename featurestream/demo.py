"""`featurestream demo`: the whole loop on this machine, from an empty directory to a consistency check.

Steps, each recorded in the report as ok / missing (a component is not
installed or not built yet) / failed / skipped (an earlier step it needs did
not run, or `--duration` ran out):

 1. start Tansu + redis-server (`LocalStack`), in a fresh data dir
 2. apply the card-fraud repo to the registry; write the profiles Parquet
    and materialize the batch view into Redis
 3. start `featurestream worker` and `featurestream serve` as child processes
 4. publish the transaction history (with a few malformed events mixed in),
    wait until the worker has applied and logged it: events/s, freshness, DLQ
 5. build a point-in-time training set, train a river logistic regression,
    register it and promote it to production
 6. live: new transactions, predictions through the HTTP API, labels back
 7. wait for the prediction log in the offline store, run the consistency check

Children are stopped by pid (SIGTERM, then SIGKILL) on the way out, on
Ctrl-C too; the kernel stops them if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from feature_store.errors import FeatureStoreError
from feature_store.examples import CARD_FRAUD
from feature_store.examples.card_fraud.data import TransactionGenerator, profiles_table
from feature_store.local_stack import LocalStack
from feature_store.repo import FeatureRepo, load_repo
from feature_store.settings import Settings, load_settings
from featurestream.demo_traffic import Traffic
from schemas import now_ms

__all__ = ["Demo", "DemoConfig", "DemoFailed", "DemoReport", "StepResult", "print_report"]

SOURCE = "transactions"
SERVICE = "fraud_detection"
MODEL = "fraud"
DAY_MS = 86_400_000
_STOP_GRACE_S = 10.0


class DemoFailed(FeatureStoreError):
    """A demo step failed; the message names it and why."""


class Missing(FeatureStoreError):
    """A component the step needs is not there (not installed, or not built yet)."""


class Skipped(FeatureStoreError):
    """A step did not run because an earlier one did not, or time ran out."""


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What one demo run does; `duration_s` bounds the whole run."""

    events: int = 20_000
    duration_s: float = 180.0
    users: int = 500
    predictions: int = 200
    malformed_every: int = 50
    data_dir: Path | None = None
    seed: int = 7
    linger_s: float = 0.0
    """Keep everything up this long after the report (to look at the dashboard); Ctrl-C ends it early."""


@dataclass
class StepResult:
    name: str
    status: str  # ok | missing | failed | skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DemoReport:
    steps: list[StepResult] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def ok(self, name: str) -> bool:
        return any(s.name == name and s.status == "ok" for s in self.steps)


class Demo:
    """Runs the steps once; `run()` always cleans up and returns the report."""

    def __init__(self, config: DemoConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console(highlight=False)
        self.report = DemoReport()
        self.repo: FeatureRepo = load_repo(CARD_FRAUD)
        self._deadline = time.monotonic() + config.duration_s
        self._stack: LocalStack | None = None
        self._children: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._tmp: Path | None = None
        self.settings: Settings | None = None
        self.api_url: str | None = None
        self.traffic: Traffic | None = None

    # ------------------------------------------------------------ the run
    def run(self, on_done: Callable[[DemoReport], None] | None = None) -> DemoReport:
        """Run every step, call `on_done(report)` while the stack is still up, linger, then stop it all."""
        try:
            self._step("local stack", self._start_stack)
            self._step("apply feature repo", self._apply, needs=["local stack"])
            self._step("profiles + materialize", self._profiles, needs=["apply feature repo"])
            self._step("stream worker", self._start_worker, needs=["apply feature repo"])
            self._step("serving API", self._start_api, needs=["apply feature repo"])
            self._step("publish transactions", self._publish, needs=["stream worker"])
            self._step("training set + model", self._train, needs=["publish transactions"])
            self._step("live predictions + labels", self._live, needs=["serving API", "training set + model"])
            self._step("consistency", self._consistency, needs=["live predictions + labels"])
            if on_done is not None:
                on_done(self.report)
            self._linger()
        except KeyboardInterrupt:
            self.console.print("[yellow]interrupted: stopping everything[/]")
            self.report.steps.append(StepResult("interrupted", "skipped", "Ctrl-C"))
        finally:
            with _ignoring_signals():
                self.stop()
        return self.report

    def _step(self, name: str, fn: Callable[[], str], *, needs: tuple[str, ...] | list[str] = ()) -> None:
        began = time.monotonic()
        missing = [n for n in needs if not self.report.ok(n)]
        if missing:
            result = StepResult(name, "skipped", f"needs: {', '.join(missing)}")
        elif time.monotonic() > self._deadline:
            result = StepResult(name, "skipped", "--duration reached")
        else:
            with self.console.status(f"{name}..."):
                try:
                    result = StepResult(name, "ok", fn())
                except (Missing, LookupError, ImportError) as exc:
                    result = StepResult(name, "missing", _one_line(exc))
                except Skipped as exc:
                    result = StepResult(name, "skipped", _one_line(exc))
                except Exception as exc:  # any step's failure is reported; the next steps degrade
                    result = StepResult(name, "failed", f"{type(exc).__name__}: {_one_line(exc)}")
        result.seconds = time.monotonic() - began
        self.report.steps.append(result)
        style = {"ok": "green", "missing": "yellow", "skipped": "dim", "failed": "red"}[result.status]
        self.console.print(f"[{style}]{result.status:>7}[/] {name} [dim]({result.seconds:.1f} s)[/] {result.detail}")

    def _linger(self) -> None:
        if self.config.linger_s <= 0 or self.api_url is None:
            return
        self.console.print(f"dashboard: {self.api_url}/ui  (everything stops in {self.config.linger_s:.0f} s; "
                           f"Ctrl-C stops now)")
        try:
            until = time.monotonic() + self.config.linger_s
            while time.monotonic() < until:
                self._alive()
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.console.print("stopping")
        except RuntimeError as exc:  # a child died while we waited
            self.console.print(f"[red]{_one_line(exc)}[/]; stopping")

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    # ------------------------------------------------------------ steps
    def _start_stack(self) -> str:
        self._tmp = Path(tempfile.mkdtemp(prefix="featurestream-demo-"))
        data_dir = self.config.data_dir or self._tmp / "data"
        # always a private stack: the demo writes topics, keys and offsets it assumes start empty,
        # and must never write into the services FEATURESTREAM_KAFKA / FEATURESTREAM_REDIS point at
        self._stack = LocalStack().start()
        self.settings = load_settings(
            redis=self._stack.redis_url, kafka=self._stack.kafka_bootstrap, data_dir=data_dir,
            registry=data_dir / "registry.db", partitions=self.repo.sources[SOURCE].partitions,
            kafka_session_timeout_s=6.0, kafka_heartbeat_s=1.0)
        return f"kafka {self._stack.kafka_bootstrap}, redis {self._stack.redis_url}, data {data_dir}"

    def _apply(self) -> str:
        try:
            from feature_store.registry import Registry
        except ImportError as exc:
            raise Missing(f"the registry (feature_store.registry): {exc}") from None
        settings = self._settings()
        plan = Registry(settings.registry).apply(self.repo, applied_by="demo")
        return f"{len(self.repo.views)} views, {len(self.repo.services)} service ({plan.summary()})"

    def _profiles(self) -> str:
        settings = self._settings()
        now = now_ms()
        table = profiles_table(self.config.users, start_ms=now - 90 * DAY_MS, seed=self.config.seed)
        path = settings.data_dir / "sources" / "profiles" / "profiles.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        pq.write_table(table, path)
        try:
            from feature_store.materialize import materialize
            from feature_store.online import KeyLayout
            from feature_store.online.client import open_online
        except ImportError as exc:
            raise Missing(f"materialization (feature_store.materialize): {exc}") from None

        views = [v for v in self.repo.views.values() if v.source.name == "profiles"]

        async def go() -> Any:
            client = open_online(settings.redis or "", cluster=settings.redis_cluster)
            try:
                return await materialize(client, KeyLayout(settings.online_prefix), settings.data_dir, views,
                                         now - 400 * DAY_MS, now)
            finally:
                await client.aclose()

        done = asyncio.run(go())
        return f"{table.num_rows} profile rows -> {done.keys} online keys"

    def _start_worker(self) -> str:
        self._need_command("worker", "the stream worker (issue 5)")
        self._spawn("worker", ["worker"])
        return "featurestream worker started (group join takes a few seconds)"

    def _start_api(self) -> str:
        options = self._need_command("serve", "the serving API (issue 6)")
        port = _free_port()
        argv = ["serve"]
        if "--port" in options:
            argv += ["--port", str(port)]
        if "--host" in options:
            argv += ["--host", "127.0.0.1"]
        self._spawn("api", argv)
        self.api_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{self.api_url}/readyz", min(60.0, self.remaining()), self._alive)
        return f"{self.api_url}  (dashboard: {self.api_url}/ui, OpenAPI: {self.api_url}/docs)"

    def _publish(self) -> str:
        settings = self._settings()
        generator = TransactionGenerator(users=self.config.users, seed=self.config.seed,
                                         start_ms=now_ms() - self.config.events * 40, spacing_ms=40)
        self.traffic = Traffic(settings, self.repo, generator, console=self.console)
        stats = self.traffic.publish_history(self.config.events, self.config.malformed_every,
                                             timeout_s=self.remaining(), alive=self._alive)
        self.report.figures.update(stats)
        return (f"{stats['published']} events + {stats['malformed']} malformed in {stats['publish_s']:.1f} s; "
                f"worker applied them at {stats['events_per_s']:.0f} events/s")

    def _train(self) -> str:
        assert self.traffic is not None
        result = self.traffic.train(MODEL, SERVICE)
        self.report.figures.update(result)
        metrics = _metrics_text(result["metrics"])
        return (f"{result['training_rows']} rows x {result['features']} features; "
                f"{MODEL} v{result['version']}: {metrics}")

    def _live(self) -> str:
        assert self.traffic is not None
        if self.api_url is None:
            raise Skipped("the API is not running")
        result = self.traffic.live(self.api_url, MODEL, self.config.predictions, alive=self._alive,
                                   timeout_s=self.remaining())
        self.report.predictions = result.pop("sample")
        self.report.figures.update(result)
        return f"{result['predicted']} predictions, {result['labels']} labels sent"

    def _consistency(self) -> str:
        assert self.traffic is not None
        report = self.traffic.consistency(self.report.figures.get("predicted", 0), timeout_s=self.remaining())
        self.report.figures["consistency"] = report.rate
        self.report.figures["consistency_values"] = report.compared
        self.report.figures["consistency_features"] = len(report.features)
        for result in report.features.values():
            for m in result.examples:
                self.report.mismatches.append(f"{m.feature} at {m.served_at} {dict(m.entity_keys)}: served "
                                              f"{m.served!r}, batch {m.recomputed!r}")
        return f"{report.rate:.2%} of {report.compared} served values match the batch path"

    # ------------------------------------------------------------ children
    def _settings(self) -> Settings:
        if self.settings is None:
            raise Skipped("the stack is not running")
        return self.settings

    def _child_env(self) -> dict[str, str]:
        settings = self._settings()
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FEATURESTREAM_")}
        env.update({
            "FEATURESTREAM_KAFKA": settings.kafka or "", "FEATURESTREAM_REDIS": settings.redis or "",
            "FEATURESTREAM_DATA_DIR": str(settings.data_dir), "FEATURESTREAM_REGISTRY": str(settings.registry),
            "FEATURESTREAM_PARTITIONS": str(settings.partitions),
            "FEATURESTREAM_KAFKA_SESSION_TIMEOUT_S": "6", "FEATURESTREAM_KAFKA_HEARTBEAT_S": "1",
            "FEATURESTREAM_ONLINE_PREFIX": settings.online_prefix, "FEATURESTREAM_LOG_LEVEL": "WARNING",
        })
        return env

    def _need_command(self, name: str, what: str) -> set[str]:
        """The options of `featurestream <name>`, or Missing when the command does not exist yet."""
        import typer

        from featurestream.cli import app

        command = typer.main.get_command(app).commands.get(name)  # type: ignore[attr-defined]
        if command is None:
            raise Missing(f"`featurestream {name}` is not there yet ({what})")
        return {opt for param in command.params for opt in getattr(param, "opts", [])}

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self._tmp is not None
        log_path = self._tmp / f"{name}.log"
        argv = [sys.executable, "-c", "from featurestream.cli import main; main()", *args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=self._child_env(), start_new_session=True, preexec_fn=_die_with_parent())
        self._children.append((name, proc, log_path))

    def _alive(self) -> None:
        """Raise when a child exited on its own, with the last line of its log."""
        for name, proc, log_path in self._children:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"{name} exited with code {code}: {_last_line(log_path)}")

    def child_logs(self) -> dict[str, str]:
        return {name: str(path) for name, _, path in self._children}

    def stop(self) -> None:
        """Stop the children (SIGTERM, then SIGKILL), then the stack; idempotent."""
        if self.traffic is not None:
            self.traffic.close()
        for _, proc, _ in reversed(self._children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for _, proc, _ in reversed(self._children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._children.clear()
        if self._stack is not None:
            self._stack.stop()
            self._stack = None
        if self._tmp is not None and self.config.data_dir is None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


# ---------------------------------------------------------------- helpers
_SHOWN_METRICS = ("roc_auc", "log_loss", "accuracy", "brier")


def _metrics_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in _SHOWN_METRICS if isinstance(metrics.get(k), float))



def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else "no output"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout_s: float, alive: Callable[[], None]) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        alive()
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s (last: {last})")


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    """A second Ctrl-C must not cut the cleanup short."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)


# ---------------------------------------------------------------- the report
def print_report(console: Console, report: DemoReport, *, api_url: str | None = None) -> None:
    """The short summary a new user reads: steps, figures, a few live predictions, the consistency result."""
    from rich.table import Table

    f = report.figures
    table = Table(title="featurestream demo", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")

    def row(label: str, value: Any) -> None:
        if value is not None:
            table.add_row(label, str(value))

    if "published" in f:
        row("events", f"{f['published']:,} published in {f['publish_s']:.1f} s "
                      f"({f['publish_events_per_s']:,.0f} events/s), {f['applied']:,} applied, {f['late']} late")
        row("worker throughput", f"{f['events_per_s']:,.0f} events/s (publish start -> last event applied)")
        if f.get("freshness_s") is not None:
            row("freshness", f"{f['freshness_s']:.2f} s from event time to servable (median, newest events)")
        row("dead letters", f"{f['invalid']} of {f['malformed']} malformed events sent to {SOURCE}.dlq")
    if "training_rows" in f:
        row("training set", f"{f['training_rows']:,} point-in-time rows, {f['positives']} frauds, "
                            f"{f['features']} model inputs")
        metrics = _metrics_text(f["metrics"])
        row("model", f"{MODEL} v{f['version']} (river logistic regression, production): {metrics}")
    if "predicted" in f:
        latency = f.get("predict_ms_per_entity")
        row("predictions", f"{f['predicted']} served via HTTP ({f['fallbacks']} fallbacks)"
                           + (f", {latency:.1f} ms per entity (median)" if latency is not None else ""))
        row("labels", f"{f['labels']} streamed back")
    if "consistency" in f:
        row("consistency", f"{f['consistency']:.2%} ({f['consistency_values']} served values of "
                           f"{f['consistency_features']} features recomputed by the batch path)")
    else:
        row("consistency", "not run (see the steps above)")
    if api_url:
        row("dashboard", f"{api_url}/ui")
    console.print(table)
    if report.predictions:
        live = Table(title="a few live predictions", title_justify="left")
        for column in ("user", "amount", "country", "fraud probability", "label"):
            live.add_column(column)
        for p in report.predictions:
            score = "fallback" if p["fallback"] else (f"{p['prediction']:.3f}" if p["prediction"] is not None else "-")
            live.add_row(p["user"], f"{p['amount']:.2f}", p["country"], score, "fraud" if p["label"] else "ok")
        console.print(live)
    for line in report.mismatches[:5]:
        console.print(f"[red]mismatch[/] {line}")
    if "consistency" in f:
        console.print(f"consistency: {f['consistency']:.2%}")
    not_ok = [s for s in report.steps if s.status != "ok"]
    if not_ok:
        console.print("[yellow]not everything ran:[/] " + "; ".join(f"{s.name}: {s.status} ({s.detail})"
                                                                    for s in not_ok))
