"""The registry: plan/apply, immutable history, as_of, schema evolution, concurrent readers (SQLite WAL)."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.definitions import Aggregation, Entity, FeatureService, FeatureView, StreamSource
from feature_store.errors import DefinitionError, RegistryError, SchemaError, UnknownFeatureError
from feature_store.registry import Registry, load_live_repo
from feature_store.repo import Definition, FeatureRepo, load_repo
from feature_store.settings import load_settings
from schemas import EventSchema, Field

EXAMPLE = load_repo(Path(__file__).resolve().parents[2] / "feature_store" / "examples" / "card_fraud")


def _items(repo: FeatureRepo) -> list[Definition]:
    return [*repo.entities.values(), *repo.sources.values(), *repo.views.values(), *repo.services.values()]


def _with(repo: FeatureRepo, *changed: Definition, drop: Iterable[str] = ()) -> FeatureRepo:
    """`repo` with definitions replaced by name (and kind), some dropped."""
    dropped = set(drop)
    items = [i for i in _items(repo) if i.name not in dropped
             and not any(type(c) is type(i) and c.name == i.name for c in changed)]
    return FeatureRepo.from_definitions([*items, *changed])


def _signature(repo: FeatureRepo) -> frozenset[tuple[str, str, str]]:
    return frozenset((type(i).__name__, i.name, i.fingerprint + getattr(i, "state_fingerprint", ""))
                     for i in _items(repo))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.db")


def test_apply_adds_every_definition_once(registry: Registry) -> None:
    plan = registry.plan(EXAMPLE)
    assert plan.summary() == "9 to add, 0 to change, 0 to remove"
    assert not plan.applied
    assert {(c.kind, c.name) for c in plan.added} >= {("view", "user_spend"), ("entity", "user"),
                                                      ("source", "transactions"), ("service", "fraud_detection")}
    assert registry.generation() == 0
    done = registry.apply(EXAMPLE, applied_by="alice")
    assert done.applied
    assert registry.current() == EXAMPLE
    assert registry.version_of("user_spend") == 1
    [record] = registry.history("view", "user_spend")
    assert (record.version, record.action, record.applied_by) == (1, "add", "alice")
    assert record.definition == EXAMPLE.views["user_spend"].to_dict()
    assert record.fingerprint == EXAMPLE.views["user_spend"].fingerprint
    assert record.state_fingerprint == EXAMPLE.views["user_spend"].state_fingerprint
    assert abs(record.applied_at - time.time() * 1000) < 60_000
    again = registry.apply(EXAMPLE, applied_by="alice")
    assert again.is_empty
    assert not again.applied
    assert registry.generation() == 1


def test_a_non_breaking_change_is_a_new_version_with_the_same_state(registry: Registry) -> None:
    registry.apply(EXAMPLE, applied_by="alice")
    view = EXAMPLE.views["user_last_txn"]
    changed = dataclasses.replace(view, description="Most recent card transaction", online=False, ttl="14d")
    plan = registry.apply(_with(EXAMPLE, changed), applied_by="bob")
    [change] = plan.changes
    assert (change.action, change.kind, change.name, change.old_version, change.new_version) == (
        "change", "view", "user_last_txn", 1, 2)
    assert not change.breaking
    assert {d.path for d in change.diff} == {"description", "online", "ttl"}
    assert "ttl: 1w -> 2w" in [str(d) for d in change.diff]
    assert change.state_fingerprint == view.state_fingerprint
    assert registry.version_of("user_last_txn") == 2
    assert registry.current().views["user_last_txn"].online is False


def test_a_breaking_change_is_a_new_view_version_and_history_stays(registry: Registry) -> None:
    registry.apply(EXAMPLE, applied_by="alice")
    old = EXAMPLE.views["merchant_activity"]
    aggs = [dataclasses.replace(a, window=7_200_000) if a.name == "txn_count_1h" else a for a in old.aggregations]
    new = dataclasses.replace(old, aggregations=aggs)
    plan = registry.plan(_with(EXAMPLE, new))
    [change] = plan.changes
    assert change.breaking
    assert [str(d) for d in change.diff] == ["aggregations[txn_count_1h].window: 1h -> 2h"]
    assert f"new online keys {old.state_fingerprint} -> {new.state_fingerprint}" in change.reason
    assert "featurestream materialize" in change.reason
    registry.apply(_with(EXAMPLE, new), applied_by="bob")

    first, second = registry.history("feature_view", "merchant_activity")
    assert (first.version, first.state_fingerprint, first.definition) == (1, old.state_fingerprint, old.to_dict())
    assert (second.version, second.state_fingerprint, second.breaking) == (2, new.state_fingerprint, True)
    assert second.applied_at > first.applied_at
    assert registry.version_of("merchant_activity") == 2
    assert registry.as_of(second.applied_at - 1).views["merchant_activity"] == old
    assert registry.as_of(second.applied_at).views["merchant_activity"] == new
    assert registry.as_of(first.applied_at - 1) == FeatureRepo()


def test_a_source_key_change_breaks_the_views_that_read_it(registry: Registry) -> None:
    schema = EventSchema(name="clicks", version=1, fields={"user_id": Field("string"), "page": Field("string"),
                                                           "ts": Field("timestamp")})
    user = Entity(name="user", join_key="user_id")
    source = StreamSource(name="clicks", schema=schema, event_time="ts", key="user_id")
    view = FeatureView(name="clicks_per_user", entity=user, source=source,
                       aggregations=[Aggregation(column="*", function="count", window="1h")])
    registry.apply(FeatureRepo.from_definitions([view]), applied_by="alice")
    rekeyed = dataclasses.replace(source, key="page")
    plan = registry.apply(FeatureRepo.from_definitions([dataclasses.replace(view, source=rekeyed)]),
                          applied_by="alice")
    by_name = {c.name: c for c in plan.changes}
    assert by_name["clicks"].breaking
    assert "key changes how events are keyed" in by_name["clicks"].reason
    assert "views clicks_per_user read it" in by_name["clicks"].reason
    # the view's own declaration did not change, its stored state did: a new version with new keys
    assert by_name["clicks_per_user"].breaking
    assert [str(d) for d in by_name["clicks_per_user"].diff] == ["state.key: 'user_id' -> 'page'"]
    assert registry.version_of("clicks_per_user") == 2


def test_removal_is_recorded_and_the_past_still_sees_it(registry: Registry) -> None:
    registry.apply(EXAMPLE, applied_by="alice")
    smaller = _with(EXAMPLE, drop=["fraud_detection"])
    plan = registry.apply(smaller, applied_by="bob")
    [change] = plan.removed
    assert (change.kind, change.name, change.new_version) == ("service", "fraud_detection", 2)
    assert "fraud_detection" not in registry.current().services
    _, removed = registry.history("service", "fraud_detection")
    assert (removed.action, removed.definition, removed.applied_by) == ("remove", None, "bob")
    assert registry.as_of(removed.applied_at - 1).services["fraud_detection"] == EXAMPLE.services["fraud_detection"]
    # coming back continues the numbering: history is never rewritten
    back = registry.apply(EXAMPLE, applied_by="carol")
    assert [(c.action, c.old_version, c.new_version) for c in back.changes] == [("add", 2, 3)]
    assert [r.version for r in registry.history("service", "fraud_detection")] == [1, 2, 3]


def test_removing_a_view_a_service_uses_is_refused(registry: Registry) -> None:
    registry.apply(EXAMPLE, applied_by="alice")
    with pytest.raises(UnknownFeatureError, match=r"FeatureService 'fraud_detection': unknown feature view "
                                                  r"'user_profile'"):
        FeatureRepo.from_definitions([i for i in _items(EXAMPLE) if i.name != "user_profile"])


def test_dry_run_changes_nothing(registry: Registry) -> None:
    plan = registry.apply(EXAMPLE, applied_by="alice", dry_run=True)
    assert len(plan.added) == 9
    assert not plan.applied
    assert registry.generation() == 0
    assert registry.current() == FeatureRepo()
    assert registry.history("view", "user_spend") == []


def test_an_invalid_repo_applies_nothing(registry: Registry) -> None:
    registry.apply(EXAMPLE, applied_by="alice")
    before = registry.current()
    service = FeatureService(name="fraud_detection", features=["user_spend:no_such_feature"])
    broken = FeatureRepo(entities=EXAMPLE.entities, sources=EXAMPLE.sources, views=EXAMPLE.views,
                         services={"fraud_detection": service})  # skips the checks from_definitions runs
    view = dataclasses.replace(EXAMPLE.views["user_spend"], description="changed too")
    broken = dataclasses.replace(broken, views={**EXAMPLE.views, "user_spend": view})
    with pytest.raises(UnknownFeatureError, match=r"view 'user_spend' has no feature 'no_such_feature'"):
        registry.apply(broken, applied_by="mallory")
    assert registry.generation() == 1
    assert registry.current() == before
    assert registry.version_of("user_spend") == 1


def test_an_apply_refuses_a_plan_the_registry_has_moved_past(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    shown = Registry(path).plan(EXAMPLE)
    Registry(path).apply(EXAMPLE, applied_by="someone else")
    with pytest.raises(RegistryError, match=r"changed since the plan was shown; run the apply again"):
        Registry(path).apply(EXAMPLE, applied_by="alice", expected=shown)
    assert Registry(path).generation() == 1


def test_history_is_append_only(registry: Registry) -> None:
    registry.apply(EXAMPLE, applied_by="alice")
    con = sqlite3.connect(registry.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute("UPDATE versions SET applied_by = 'mallory'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute("DELETE FROM versions")
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_lookups_name_what_is_missing(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(UnknownFeatureError, match=r"feature view 'nope' was never applied; .*featurestream apply"):
        registry.version_of("nope")
    with pytest.raises(UnknownFeatureError, match=r"unknown definition kind 'gizmo'; use one of entity, source"):
        registry.history("gizmo", "x")
    not_sqlite = tmp_path / "junk.db"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match=r"cannot open the registry .*junk.db"):
        Registry(not_sqlite)


def test_load_live_repo_prefers_the_registry(tmp_path: Path) -> None:
    settings = load_settings(registry=tmp_path / "live.db", data_dir=tmp_path / "data")
    repo_file = Path(__file__).resolve().parents[2] / "feature_store" / "examples" / "card_fraud" / "features.py"
    with pytest.raises(DefinitionError, match=r"holds no feature definitions; run `featurestream apply <repo>`"):
        load_live_repo(settings)
    assert not settings.registry.exists()
    assert load_live_repo(settings, repo_file) == EXAMPLE
    smaller = _with(EXAMPLE, drop=["fraud_detection"])
    Registry(settings.registry).apply(smaller, applied_by="alice")
    assert load_live_repo(settings, repo_file) == smaller


# -- schema evolution through apply -----------------------------------------------------

FIELDS = {"order_id": Field("string"), "user_id": Field("string"), "amount": Field("float"),
          "country": Field("string"), "ts": Field("timestamp")}
USER = Entity(name="user", join_key="user_id")


def _orders_repo(fields: dict[str, Field], version: int, *, last: tuple[str, ...] = ("country",),
                 user: Entity = USER) -> FeatureRepo:
    schema = EventSchema(name="orders", version=version, fields=fields)
    source = StreamSource(name="orders", schema=schema, event_time="ts", key="user_id")
    spend = FeatureView(name="spend", entity=user, source=source,
                        aggregations=[Aggregation(column="amount", function="sum", window="1h")])
    latest = FeatureView(name="last_order", entity=user, source=source, fields=list(last))
    return FeatureRepo.from_definitions([spend, latest])


def test_adding_an_optional_field_is_accepted(registry: Registry) -> None:
    registry.apply(_orders_repo(FIELDS, 1), applied_by="alice")
    evolved = _orders_repo({**FIELDS, "coupon": Field("string", required=False)}, 2)
    plan = registry.apply(evolved, applied_by="alice")
    [change] = plan.changes  # the views' state does not change
    assert (change.kind, change.name, change.breaking) == ("source", "orders", False)
    assert "schema.fields[coupon]: added type='string' required=False nullable=False" in [str(d) for d in change.diff]
    assert registry.current().sources["orders"].schema.version == 2
    assert registry.current().views["spend"].source.schema.version == 2


def test_removing_a_used_field_is_refused_naming_the_features(registry: Registry) -> None:
    registry.apply(_orders_repo(FIELDS, 1), applied_by="alice")
    without_country = {k: v for k, v in FIELDS.items() if k != "country"}
    with pytest.raises(SchemaError, match=r"source 'orders': orders v2 is not compatible with orders v1: country: "
                                          r"removed \(was string\), but features use it: last_order:country"):
        registry.apply(_orders_repo(without_country, 2, last=("amount",)), applied_by="alice")
    assert registry.generation() == 1
    assert registry.current() == _orders_repo(FIELDS, 1)


def test_retyping_a_used_field_is_refused_naming_the_features(registry: Registry) -> None:
    registry.apply(_orders_repo(FIELDS, 1), applied_by="alice")
    with pytest.raises(SchemaError, match=r"amount: type changes from float to int, but features use it: "
                                          r"spend:amount_sum_1h"):
        registry.apply(_orders_repo({**FIELDS, "amount": Field("int")}, 2), applied_by="alice")
    assert registry.generation() == 1


def test_removing_an_unused_field_warns(registry: Registry) -> None:
    registry.apply(_orders_repo(FIELDS, 1), applied_by="alice")
    plan = registry.apply(_orders_repo({k: v for k, v in FIELDS.items() if k != "order_id"}, 2), applied_by="a")
    assert plan.applied
    assert any("order_id: removed" in w and "no feature uses it" in w for w in plan.warnings)


def test_schema_versions_go_up_one_at_a_time(registry: Registry) -> None:
    registry.apply(_orders_repo(FIELDS, 1), applied_by="alice")
    more = {**FIELDS, "coupon": Field("string", required=False)}
    with pytest.raises(SchemaError, match=r"versions go up one at a time; publish the change as orders v2"):
        registry.apply(_orders_repo(more, 3), applied_by="alice")
    with pytest.raises(SchemaError, match=r"keeps its version; publish the change as orders v2"):
        registry.apply(_orders_repo(more, 1), applied_by="alice")
    assert registry.generation() == 1


# -- concurrency ------------------------------------------------------------------------

_READER = textwrap.dedent("""
    import sys, time, orjson
    from pathlib import Path
    from feature_store.registry import Registry
    path, stop = Path(sys.argv[1]), Path(sys.argv[2])
    seen, errors, reads = set(), [], 0
    registry = Registry(path)
    Path(sys.argv[3]).touch()
    while not stop.exists():
        try:
            repo = registry.as_of(time.time_ns() // 1_000_000 + 10)
            items = [*repo.entities.values(), *repo.sources.values(), *repo.views.values(),
                     *repo.services.values()]
            seen.add(tuple(sorted((type(i).__name__, i.name, i.fingerprint + getattr(i, "state_fingerprint", ""))
                                  for i in items)))
            reads += 1
        except Exception as exc:
            errors.append(repr(exc))
    sys.stdout.write(orjson.dumps({"seen": sorted(seen), "errors": errors, "reads": reads}).decode())
""")


def test_readers_see_the_old_or_the_new_state_never_an_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    breaking = dataclasses.replace(EXAMPLE.views["user_last_txn"], fields=["amount", "country"])
    states = [
        EXAMPLE,
        _with(EXAMPLE, dataclasses.replace(EXAMPLE.views["user_spend"], description="non-breaking")),
        _with(EXAMPLE, breaking),
        _with(EXAMPLE, breaking, drop=["fraud_detection"]),
    ]
    expected = {_signature(FeatureRepo())} | {_signature(s) for s in states}
    Registry(path)  # create the file before the readers open it
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", _READER, str(path), str(stop), str(ready)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[frozenset[tuple[str, str, str]]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        registry = Registry(path)
        while not done.is_set():
            try:
                seen.append(_signature(registry.current()))
            except BaseException as exc:  # collected and asserted on below
                errors.append(exc)
            time.sleep(0.001)  # leave the writer some GIL

    threads = [threading.Thread(target=read) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        writer = Registry(path)
        for _ in range(2):
            for state in states:
                writer.apply(state, applied_by="writer")
                time.sleep(0.02)
    finally:
        done.set()
        stop.touch()
        for thread in threads:
            thread.join(timeout=30)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    assert errors == []
    assert set(seen) <= expected
    assert len(set(seen)) >= 2
    report: dict[str, Any] = orjson.loads(out)
    assert report["errors"] == []
    assert report["reads"] > 0
    assert len(report["seen"]) >= 2  # it read while the applies happened
    assert {frozenset(tuple(item) for item in state) for state in report["seen"]} <= expected
    assert Registry(path).current() == states[-1]


def test_concurrent_applies_of_one_repo_write_it_once(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(Registry(path).apply(EXAMPLE, applied_by="x").applied))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, True]
    assert Registry(path).generation() == 1


# -- history against an oracle (property) -----------------------------------------------


def _variants() -> list[FeatureRepo]:
    """Small repos an apply sequence moves between: non-breaking, breaking and removal steps."""
    base = _orders_repo(FIELDS, 1)
    spend, last = base.views["spend"], base.views["last_order"]
    service = FeatureService(name="model", features=["spend:amount_sum_1h", "last_order:country"])
    two_hours = Aggregation(column="amount", function="sum", window="2h", name="amount_sum_1h")
    return [
        _with(base, service),
        _with(base, service, dataclasses.replace(spend, description="money")),
        _with(base, service, dataclasses.replace(spend, aggregations=[two_hours])),
        _with(base, dataclasses.replace(last, fields=["country", "amount"])),
        _with(base, drop=["last_order"]),
        _with(_orders_repo(FIELDS, 1, user=dataclasses.replace(USER, description="a customer")), service),
    ]


VARIANTS = _variants()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(0, len(VARIANTS) - 1), min_size=1, max_size=7))
def test_history_and_as_of_match_an_oracle(tmp_path_factory: pytest.TempPathFactory, steps: list[int]) -> None:
    registry = Registry(tmp_path_factory.mktemp("oracle") / "registry.db")
    snapshots: list[tuple[int, FeatureRepo]] = []  # (applied_at, live repo), the oracle
    for step in steps:
        plan = registry.apply(VARIANTS[step], applied_by="prop")
        if plan.applied:
            first = plan.changes[0]
            snapshots.append((registry.history(first.kind, first.name)[-1].applied_at, VARIANTS[step]))
    assert registry.current() == (snapshots[-1][1] if snapshots else FeatureRepo())
    assert registry.generation() == len(snapshots)
    previous = FeatureRepo()
    for applied_at, repo in snapshots:
        assert registry.as_of(applied_at) == repo
        assert registry.as_of(applied_at - 1) == previous
        previous = repo
    for kind, name in [("view", "spend"), ("view", "last_order"), ("service", "model"), ("entity", "user")]:
        records = registry.history(kind, name)
        assert [r.version for r in records] == list(range(1, len(records) + 1))
        live_state: str | None = None
        before = "remove"  # a definition starts absent: its first record is an add
        for record in records:
            assert (record.definition is None) == (record.action == "remove")
            assert (record.action == "add") == (before == "remove")
            if record.action == "change" and kind == "view":
                assert record.breaking == (record.state_fingerprint != live_state)
            if record.action == "add" and kind == "view" and record.version > 1:
                assert record.reason.startswith(f"added again: online keys {record.state_fingerprint} may still")
            live_state, before = record.state_fingerprint, record.action
