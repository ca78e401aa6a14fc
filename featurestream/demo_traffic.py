"""What the demo sends and measures: transactions (some malformed), training, predictions, labels, the check.

Each method is one demo step and returns the figures for the report. It uses
the project's own pieces (EventPublisher, the point-in-time training set,
`train_model`, the model registry, the HTTP API, `feature_store.consistency`)
and raises `LookupError` naming the component when one is missing.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from rich.console import Console

from feature_store.consistency import ConsistencyReport
from feature_store.definitions import StreamSource
from feature_store.examples.card_fraud.data import TransactionGenerator
from feature_store.online.keys import entity_key_bytes
from feature_store.repo import FeatureRepo
from feature_store.settings import Settings
from schemas import LABELS, now_ms

__all__ = ["Traffic"]

SOURCE = "transactions"
_POLL_S = 0.5
_CHUNK = 2_000
_PREDICT_BATCH = 20


class Traffic:
    """The demo's data: generated transactions and labels, kept to train on and to label predictions."""

    def __init__(self, settings: Settings, repo: FeatureRepo, generator: TransactionGenerator, *,
                 console: Console) -> None:
        self.settings = settings
        self.repo = repo
        self.generator = generator
        self.console = console
        self.history: list[tuple[dict[str, Any], bool]] = []
        self.sent = 0  # records sent to the source topic (good and malformed): offsets 0..sent-1 overall
        source = repo.sources[SOURCE]
        if not isinstance(source, StreamSource):
            raise LookupError(f"the demo publishes to stream source {SOURCE!r}; the repo has a batch source there")
        self.source: StreamSource = source

    def close(self) -> None:
        """Nothing to release: every step opens and closes its own clients."""

    # ------------------------------------------------------------ history
    def publish_history(self, n: int, malformed_every: int, *, timeout_s: float,
                        alive: Callable[[], None]) -> dict[str, Any]:
        """Publish `n` transactions plus one malformed record per `malformed_every`; wait until all are logged.

        The first 2% go first and are waited for, so the worker has joined its
        group before the rest is timed. Event times are shifted so the newest
        event happens now: freshness then measures the pipeline, not the data.
        """
        deadline = time.monotonic() + timeout_s
        self.history = list(self.generator.events(n))
        shift = now_ms() - max(e["ts"] for e, _ in self.history)
        for event, _ in self.history:
            event["ts"] += shift
        warm = max(1, n // 50)
        asyncio.run(self._send([e for e, _ in self.history[:warm]], []))
        waited = time.monotonic()
        asyncio.run(self.wait_applied(deadline, alive))  # the worker has joined and applied them
        later = int((time.monotonic() - waited) * 1000)  # the rest happens that much later
        for event, _ in self.history[warm:]:
            event["ts"] += later
        malformed = _malformed(self.history[warm:], malformed_every)
        began = time.monotonic()
        first_ms = now_ms()
        asyncio.run(self._send([e for e, _ in self.history[warm:]], malformed))
        publish_s = time.monotonic() - began
        counts = self._wait_logged(n, len(malformed), deadline - time.monotonic(), alive)
        stats = counts.pop("stats")
        applied_s = max((stats["last_ingest"] - first_ms) / 1000, 1e-3)
        return {"published": n, "malformed": len(malformed), "publish_s": publish_s,
                "publish_events_per_s": (n - warm) / max(publish_s, 1e-3),
                "events_per_s": (n - warm) / applied_s, "freshness_s": stats["freshness_s"], **counts}

    async def _send(self, events: Sequence[dict[str, Any]], malformed: list[tuple[bytes, bytes]]) -> None:
        try:
            from feature_store.publish import EventPublisher, ensure_topics
        except ImportError as exc:
            raise LookupError(f"the event publisher (feature_store.publish): {exc}") from None
        await ensure_topics(self.settings, self.repo)
        async with EventPublisher(self.settings, self.repo) as publisher:
            for start in range(0, len(events), _CHUNK):
                result = await publisher.publish_many(SOURCE, events[start:start + _CHUNK])
                if result.errors:
                    raise RuntimeError(f"publishing failed for {len(result.errors)} events: {result.errors[0].reason}")
            await publisher.send_raw(self.source.topic, [(k, v, []) for k, v in malformed])
        self.sent += len(events) + len(malformed)

    async def wait_applied(self, deadline: float, alive: Callable[[], None]) -> None:
        """Until the worker has applied every record sent so far (its Redis offsets cover them).

        Why the live rounds wait: the worker stamps a batch's ingest time
        before its script makes the batch visible in Redis, and serving takes
        its read time from its own clock before reading. A read inside that
        gap sees state that the as-served batch join places differently, so a
        prediction racing a batch can mismatch the batch path. Reading while
        the stream is quiet keeps the check exact until both sides share one
        clock (see docs/concepts.md, consistency).
        """

        from feature_store.online import KeyLayout
        from feature_store.online.client import open_online

        keys = KeyLayout(self.settings.online_prefix)
        client = open_online(self.settings.redis or "", cluster=self.settings.redis_cluster)
        try:
            while True:
                alive()
                offsets = [await client.hget(keys.offset_key(self.source, p), "offset")
                           for p in range(self.source.partitions)]
                if sum(int(o) + 1 for o in offsets if o is not None) >= self.sent:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the worker did not apply all {self.sent} records in time; see its log")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def _wait_logged(self, good: int, bad: int, timeout_s: float, alive: Callable[[], None]) -> dict[str, Any]:
        """Poll the event log until every good event is applied (or late) and the malformed ones are logged."""
        deadline = time.monotonic() + timeout_s
        bad_deadline: float | None = None
        counts: dict[str, Any] = {}
        while True:
            alive()
            counts = self._log_counts()
            if counts["applied"] + counts["late"] >= good:
                bad_deadline = bad_deadline or time.monotonic() + 10.0
                if counts["invalid"] >= bad or time.monotonic() > bad_deadline:
                    return counts
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the worker applied {counts['applied']} + {counts['late']} late of {good} events before the "
                    f"time ran out; see its log")
            time.sleep(_POLL_S)

    def _log_counts(self) -> dict[str, Any]:
        import duckdb

        from feature_store.offline.layout import log_files

        files = log_files(self.settings.data_dir, SOURCE)
        rows: list[Any] = []
        fresh = None
        if files:  # none yet: nothing logged
            con = duckdb.connect(":memory:")
            try:
                rows = con.execute(
                    "SELECT __status, count(*), max(__ingest_time), max(__event_time) FROM read_parquet(?, "
                    "union_by_name := true, hive_partitioning := true) GROUP BY 1", [files]).fetchall()
                fresh = con.execute(
                    "WITH l AS (SELECT * FROM read_parquet(?, union_by_name := true, hive_partitioning := true) "
                    "WHERE __status = 'applied') SELECT median(__ingest_time - __event_time) FROM l "
                    "WHERE __event_time >= (SELECT max(__event_time) - 2000 FROM l)", [files]).fetchone()
            except duckdb.IOException:  # a listed file was compacted away meanwhile: the next poll lists anew
                rows, fresh = [], None
            finally:
                con.close()
        counts: dict[str, Any] = {"applied": 0, "late": 0, "invalid": 0}
        last_ingest = 0
        for status, count, ingest, _ in rows:
            counts[str(status)] = int(count)
            last_ingest = max(last_ingest, int(ingest or 0))
        freshness = float(fresh[0]) / 1000 if fresh and fresh[0] is not None else None
        counts["stats"] = {"last_ingest": last_ingest, "freshness_s": freshness}
        return counts

    # ------------------------------------------------------------ training
    def train(self, model_name: str, service_name: str) -> dict[str, Any]:
        """Point-in-time training set over the history (t = each transaction's time), river LR, registered."""
        import pyarrow as pa
        from river import compose, linear_model, preprocessing

        from feature_store.models import ModelRegistry
        from feature_store.offline.engine import connect
        from feature_store.offline.training import TrainingSetQuery, training_set
        from feature_store.training import RunStore, train_model

        service = self.repo.service(service_name)
        rows = pa.table({
            "user_id": [e["user_id"] for e, _ in self.history],
            "merchant_id": [e["merchant_id"] for e, _ in self.history],
            "ts": pa.array([e["ts"] for e, _ in self.history], pa.int64()),
            "amount": [float(e["amount"]) for e, _ in self.history],
            "label": [1.0 if y else 0.0 for _, y in self.history],
        })
        grouped = self.repo.group_features(service.feature_refs)
        query = TrainingSetQuery(features={v: list(f) for v, f in grouped.items()}, timestamp_column="ts")
        out = self.settings.data_dir / "training" / f"{service_name}.parquet"
        con = connect(self.settings.data_dir)
        try:
            table = training_set(con, self.settings.data_dir, rows, query, out=out)
        finally:
            con.close()
        model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
        registry = ModelRegistry.from_settings(self.settings)
        result = train_model(
            model_name, model, table, label="label", registry=registry, runs=RunStore.from_settings(self.settings),
            baseline="0.05", timestamp_column="ts", feature_service=service_name,
            service_fingerprint=service.fingerprint, training_set_ref=str(out), fallback="0.05",
            data_dir=self.settings.data_dir, actor="demo")
        if result.version is None:
            raise RuntimeError(f"the acceptance gate refused the model: {result.decision.reason}")
        registry.promote(model_name, result.version.version, "production", actor="demo", reason="demo")
        return {"training_rows": table.num_rows, "features": len(result.version.features),
                "version": result.version.version, "metrics": dict(result.version.metrics),
                "positives": sum(1 for _, y in self.history if y)}

    # ------------------------------------------------------------ live traffic
    def live(self, api_url: str, model: str, n: int, *, alive: Callable[[], None],
             timeout_s: float) -> dict[str, Any]:
        """New transactions (published, then scored through the API), then their labels streamed back."""
        return asyncio.run(self._live(api_url, model, n, alive, timeout_s))

    async def _live(self, api_url: str, model: str, n: int, alive: Callable[[], None],
                    timeout_s: float) -> dict[str, Any]:
        import httpx

        from feature_store.publish import EventPublisher

        known = sorted({e["user_id"] for e, _ in self.history})
        rng = random.Random(11)
        deadline = time.monotonic() + timeout_s
        latencies: list[float] = []
        sample: list[dict[str, Any]] = []
        labels: list[tuple[bytes, bytes]] = []
        predicted = fallbacks = 0
        async with EventPublisher(self.settings, self.repo) as publisher, \
                httpx.AsyncClient(base_url=api_url, timeout=10.0) as client:
            fresh: list[tuple[dict[str, Any], bool]] = list(self.generator.events(n))
            for start in range(0, n, _PREDICT_BATCH):
                alive()
                if time.monotonic() > deadline:
                    break
                batch = fresh[start:start + _PREDICT_BATCH]
                now = now_ms()
                for event, _ in batch:
                    event["user_id"] = rng.choice(known)  # users with history: their features are present
                    event["ts"] = now  # live traffic happens now
                began = time.perf_counter()
                response = await client.post(f"/v1/predict/{model}", json={
                    "entities": [{"user_id": e["user_id"], "merchant_id": e["merchant_id"]} for e, _ in batch],
                    "request": [{"amount": float(e["amount"])} for e, _ in batch]})
                latencies.append((time.perf_counter() - began) * 1000 / len(batch))
                if response.status_code != 200:
                    raise RuntimeError(f"POST /v1/predict/{model} answered {response.status_code}: "
                                       f"{response.text[:300]}")
                for (event, label), answer in zip(batch, response.json()["predictions"], strict=True):
                    predicted += answer["prediction"] is not None
                    fallbacks += bool(answer["fallback"])
                    record = LABELS.validate({"request_id": answer["request_id"], "event_time": now_ms(),
                                              "label": 1.0 if label else 0.0, "model": model})
                    labels.append((entity_key_bytes(answer["request_id"]), orjson.dumps(record)))
                    if len(sample) < 5:
                        sample.append({"user": event["user_id"], "amount": event["amount"],
                                       "country": event["country"], "prediction": answer["prediction"],
                                       "fallback": answer["fallback"], "label": label})
                # Score first, then record the transaction (authorize, then book), and let the worker apply
                # it before the next round reads: see `wait_applied` for why reads wait for quiet.
                await publisher.publish_many(SOURCE, [e for e, _ in batch])
                self.sent += len(batch)
                await self.wait_applied(deadline, alive)
            await publisher.send_raw(_labels_topic(), [(k, v, []) for k, v in labels])
        return {"predicted": predicted, "fallbacks": fallbacks, "labels": len(labels),
                "predict_ms_per_entity": statistics.median(latencies) if latencies else None, "sample": sample}

    # ------------------------------------------------------------ consistency
    def consistency(self, expected: int, *, timeout_s: float) -> ConsistencyReport:
        """Wait for the served predictions to reach the offline store, then check them all."""
        from feature_store.consistency import ConsistencyError, batch_recompute, check, find_prediction_log, load_served

        deadline = time.monotonic() + min(timeout_s, 60.0)
        # Every record sent must be in the event log first: the log rolls files by size and age, and a
        # served read that saw a transaction the log has not written yet would look like a mismatch.
        while sum(v for k, v in self._log_counts().items() if k != "stats") < self.sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the event log did not reach all {self.sent} records sent; see the worker log")
            time.sleep(_POLL_S)
        rows: list[Any] = []
        files = None
        while time.monotonic() < deadline:
            try:
                files = find_prediction_log(self.settings.data_dir)
                rows = load_served(files, sample=max(expected, 1) * 2)
            except ConsistencyError:
                rows = []
            if files is not None and _logged(files) >= expected:
                rows = load_served(files, sample=max(expected, 1) * 2)
                break
            time.sleep(_POLL_S)
        if files is None:
            raise LookupError("served predictions never reached the offline store: the worker does not log the "
                              "_predictions topic yet (issue 5/6)")
        return check(self.repo, rows, batch_recompute(self.repo, self.settings.data_dir))


def _logged(files: list[str]) -> int:
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        row = con.execute("SELECT count(*) FROM read_parquet(?, union_by_name := true)", [files]).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def _malformed(history: Sequence[tuple[dict[str, Any], bool]], every: int) -> list[tuple[bytes, bytes]]:
    """Bad records of three kinds: not JSON, a missing field, a wrong type."""
    out: list[tuple[bytes, bytes]] = []
    for i in range(0, len(history), max(every, 1)):
        event = dict(history[i][0])
        key = entity_key_bytes(str(event["user_id"]))
        kind = (i // max(every, 1)) % 3
        if kind == 0:
            out.append((key, b"{not json"))
        elif kind == 1:
            event.pop("amount")
            out.append((key, orjson.dumps(event)))
        else:
            event["amount"] = "twelve"
            out.append((key, orjson.dumps(event)))
    return out


def _labels_topic() -> str:
    """The labels topic the worker's label agent reads."""
    try:
        from feature_store.training.live import LABELS_TOPIC
    except ImportError:
        return "_labels"
    return LABELS_TOPIC

