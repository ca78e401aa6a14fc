"""Declare once, check everything: every definition of the example repos passes every check,
and bad definitions fail at declaration with messages that name the object and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.definitions import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    StreamSource,
    fingerprint_of,
)
from feature_store.errors import DefinitionError, UnknownFeatureError
from feature_store.registry import used_fields
from feature_store.repo import Definition, FeatureRepo, load_repo
from feature_store.serialization import definition_from_dict, repo_from_dicts
from feature_store.transforms import DUCKDB_TYPES, transform_output_types, transformed_sql
from schemas import EventSchema, Field

EXAMPLES = Path(__file__).resolve().parents[2] / "feature_store" / "examples"
REPOS = {path.parent.name: load_repo(path) for path in sorted(EXAMPLES.glob("*/features.py"))}


def _definitions() -> list[Any]:
    params = []
    for repo_name, repo in REPOS.items():
        for group in (repo.entities, repo.sources, repo.views, repo.services):
            for name, item in group.items():
                kind = item.to_dict()["kind"]
                params.append(pytest.param(repo_name, item, id=f"{repo_name}:{kind}:{name}"))
    return params


def _resolver(repo: FeatureRepo) -> Any:
    def resolve(group: str, name: str) -> Any:
        return {"entity": repo.entities, "source": repo.sources}[group].get(name)
    return resolve


def test_there_are_example_repos_to_check() -> None:
    assert "card_fraud" in REPOS
    assert len(_definitions()) >= 9


@pytest.mark.parametrize(("repo_name", "item"), _definitions())
def test_every_definition_passes_every_check(repo_name: str, item: Definition) -> None:
    repo = REPOS[repo_name]
    data = item.to_dict()

    # re-validates from its stored form: same spec, same fingerprint, JSON-safe
    assert orjson.loads(orjson.dumps(data)) == data
    again = definition_from_dict(orjson.loads(orjson.dumps(data)), _resolver(repo))
    assert again == item
    assert again.fingerprint == item.fingerprint
    # fingerprints are stable and content-derived
    assert item.fingerprint == item.fingerprint == fingerprint_of(data)
    assert len(item.fingerprint) == 64

    if isinstance(item, StreamSource | BatchSource):
        _check_source(item)
    elif isinstance(item, FeatureView):
        _check_view(repo, item)
        assert isinstance(again, FeatureView)
        assert again.state_fingerprint == item.state_fingerprint
    elif isinstance(item, FeatureService):
        _check_service(repo, item)
    else:
        assert isinstance(item, Entity)
        users = [v for v in repo.views.values() if v.entity.name == item.name]
        for view in users:
            assert item.join_key in view.input_columns


def _check_source(source: StreamSource | BatchSource) -> None:
    columns = source.schema.columns
    assert columns[source.event_time] == "timestamp"
    assert columns[source.key] in ("string", "int")
    assert EventSchema.from_dict(source.schema.to_dict()) == source.schema
    if isinstance(source, BatchSource) and source.created_time is not None:
        assert columns[source.created_time] == "timestamp"


def _check_view(repo: FeatureRepo, view: FeatureView) -> None:
    # references resolve to the repo's own definitions
    assert repo.entities[view.entity.name] == view.entity
    assert repo.sources[view.source.name] == view.source
    # the transform binds, and the one SQL runs on an empty batch of the schema
    outputs = transform_output_types(view.name, view.source.schema, dict(view.transform))
    assert set(outputs) == set(view.transform)
    con = duckdb.connect(":memory:")
    try:
        columns = ", ".join(f'"{n}" {DUCKDB_TYPES[t]}' for n, t in view.source.schema.columns.items())
        con.execute(f"CREATE TABLE batch ({columns})")
        described = con.execute(f"DESCRIBE {transformed_sql('batch', dict(view.transform))}").fetchall()
        assert [row[0] for row in described] == [*view.source.schema.columns, *view.transform]
    finally:
        con.close()
    # windows are whole numbers of hops; every used column exists
    for agg in view.aggregations:
        assert agg.window_ms % agg.hop_ms == 0
        assert agg.window_ms > 0
        assert agg.column == "*" or agg.column in view.input_columns
    for name in view.fields:
        assert name in view.input_columns
    assert view.entity.join_key in view.input_columns
    assert set(used_fields([view])) <= set(view.source.schema.columns)
    assert len(set(view.feature_names)) == len(view.feature_names)
    for feature in view.feature_names:
        assert view.feature_type(feature) in ("int", "float", "string", "bool", "timestamp")


def _check_service(repo: FeatureRepo, service: FeatureService) -> None:
    assert service.feature_refs
    for ref in service.feature_refs:
        view, feature = repo.resolve(ref)
        assert feature in view.feature_names
    for ref in service.staleness:
        assert ref == "*" or ref in service.feature_refs


def test_the_example_repo_round_trips_through_to_dict() -> None:
    for repo in REPOS.values():
        items = [*repo.entities.values(), *repo.sources.values(), *repo.views.values(), *repo.services.values()]
        rebuilt = repo_from_dicts(reversed([orjson.loads(orjson.dumps(i.to_dict())) for i in items]))
        assert rebuilt == repo
        for name, view in repo.views.items():
            assert rebuilt.views[name].fingerprint == view.fingerprint
            assert rebuilt.views[name].state_fingerprint == view.state_fingerprint


def test_used_fields_names_the_features_reading_each_field() -> None:
    repo = REPOS["card_fraud"]
    uses = used_fields(repo.views_of(repo.source("transactions")))
    # read only through the transform: the features built from its outputs
    assert uses["currency"] == ["user_spend:amount_max_24h", "user_spend:amount_mean_24h",
                                "user_spend:amount_mean_7d", "user_spend:amount_std_7d", "user_spend:amount_sum_1h"]
    assert "user_spend:foreign_count_24h" in uses["country"]
    assert "user_last_txn:country" in uses["country"]
    assert "merchant_activity:amount_mean_24h" in uses["amount"]
    # the event time feeds everything; nobody reads channel or transaction_id
    assert "merchant_activity:txn_count_1h" in uses["ts"]
    assert "channel" not in uses
    assert "transaction_id" not in uses


# -- bad definitions fail at declaration --------------------------------------------------

SCHEMA = EventSchema(name="orders", version=1, fields={
    "order_id": Field("string"), "user_id": Field("string"), "amount": Field("float"),
    "country": Field("string"), "ts": Field("timestamp"),
})
ORDERS = StreamSource(name="orders", schema=SCHEMA, event_time="ts", key="user_id")
USER = Entity(name="user", join_key="user_id")


def _view(**overrides: Any) -> FeatureView:
    spec: dict[str, Any] = {"name": "spend", "entity": USER, "source": ORDERS,
                            "aggregations": [Aggregation(column="amount", function="sum", window="1h")]}
    spec.update(overrides)
    return FeatureView(**spec)


def test_unknown_column_is_named_with_the_columns_there_are() -> None:
    with pytest.raises(DefinitionError, match=r"FeatureView 'spend' aggregation 'amountt_sum_1h': column "
                                              r"'amountt' is not a column of source 'orders'.*columns: order_id"):
        _view(aggregations=[Aggregation(column="amountt", function="sum", window="1h")])
    with pytest.raises(DefinitionError, match=r"field 'colour' is not a column of source 'orders'"):
        _view(aggregations=(), fields=["colour"])


def test_window_must_be_a_multiple_of_the_hop() -> None:
    with pytest.raises(DefinitionError, match=r"window 1h is not a multiple of hop 7m; pick a hop that divides"):
        Aggregation(column="amount", function="sum", window="1h", hop="7m")


def test_duplicate_feature_names_in_a_view() -> None:
    aggs = [Aggregation(column="amount", function="sum", window="1h", name="total"),
            Aggregation(column="amount", function="max", window="1h", name="total")]
    with pytest.raises(DefinitionError, match=r"FeatureView 'spend': duplicate feature names \['total'\]; "
                                              r"give each aggregation a unique name"):
        _view(aggregations=aggs)


def test_two_views_with_one_name_in_a_repo() -> None:
    other = _view(aggregations=[Aggregation(column="amount", function="max", window="1h")])
    with pytest.raises(DefinitionError, match=r"two different FeatureView definitions are named 'spend'; rename one"):
        FeatureRepo.from_definitions([_view(), other])


def test_same_name_across_kinds_is_refused() -> None:
    clash = Entity(name="spend", join_key="user_id")
    with pytest.raises(DefinitionError, match=r"FeatureView 'spend' has the same name as a Entity"):
        FeatureRepo.from_definitions([_view(), clash])


def test_missing_entity_key_in_the_schema() -> None:
    card = Entity(name="card", join_key="card_id")
    with pytest.raises(DefinitionError, match=r"entity 'card' join key 'card_id' is not a column of source "
                                              r"'orders'.*add it to the schema or use another entity"):
        _view(entity=card)


def test_sum_needs_a_numeric_column() -> None:
    with pytest.raises(DefinitionError, match=r"sum needs a numeric column but 'country' is 'string'; "
                                              r"cast it in the transform or use count/last"):
        _view(aggregations=[Aggregation(column="country", function="sum", window="1h")])


def test_bad_transform_sql_says_which_transform_and_schema() -> None:
    with pytest.raises(DefinitionError, match=r"FeatureView 'spend': transform 'big' = 'amount_x > 10' does not "
                                              r"run on schema 'orders' v1: .*fix the SQL expression"):
        _view(transform={"big": "amount_x > 10"})
    with pytest.raises(DefinitionError, match=r"transform 'shout' = 'upper\(country' does not run"):
        _view(transform={"shout": "upper(country"})


def test_star_only_counts() -> None:
    with pytest.raises(DefinitionError, match=r"column '\*' only works with function 'count'; name a column"):
        Aggregation(column="*", function="sum", window="1h")


def test_aggregations_and_fields_are_exclusive() -> None:
    with pytest.raises(DefinitionError, match=r"FeatureView 'spend': declare either aggregations .* not both"):
        _view(fields=["amount"])
    with pytest.raises(DefinitionError, match=r"not neither"):
        _view(aggregations=())


def test_unknown_service_reference() -> None:
    service = FeatureService(name="model", features=["spend:amount_sum_1h", "spend:nope"])
    with pytest.raises(UnknownFeatureError, match=r"FeatureService 'model': view 'spend' has no feature 'nope' "
                                                  r"\(features: amount_sum_1h\)"):
        FeatureRepo.from_definitions([_view(), service])
    ghost = FeatureService(name="model", features=["ghost:x"])
    with pytest.raises(UnknownFeatureError, match=r"unknown feature view 'ghost' in 'ghost:x'"):
        FeatureRepo.from_definitions([_view(), ghost])


def test_a_bad_repo_file_fails_to_load_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "features.py"
    bad.write_text("from feature_store.definitions import Aggregation\n"
                   "agg = Aggregation(column='x', function='sum', window='1h', hop='7m')\n")
    with pytest.raises(DefinitionError, match=r"not a multiple of hop") as info:
        load_repo(tmp_path)
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(DefinitionError, match=r"broken.py' failed to import: RuntimeError: boom"):
        load_repo(broken)


def test_stored_definitions_that_do_not_rebuild_are_named() -> None:
    with pytest.raises(DefinitionError, match=r"stored definition 'x' has kind 'gadget'"):
        repo_from_dicts([{"kind": "gadget", "name": "x"}])
    data = _view().to_dict()
    with pytest.raises(DefinitionError, match=r"FeatureView 'spend' refers to entity 'user', which is not defined"):
        repo_from_dicts([data, ORDERS.to_dict()])
    with pytest.raises(DefinitionError, match=r"stored entity 'user' does not match .*re-apply the repo"):
        repo_from_dicts([{**USER.to_dict(), "colour": "red"}])


# -- round trip for any valid view (property) ---------------------------------------------

_HOPS_MS = [60_000, 300_000, 3_600_000]


@st.composite
def views(draw: st.DrawFn) -> FeatureView:
    functions = ["count", "sum", "mean", "min", "max", "last", "stddev"]
    aggs = []
    for i in range(draw(st.integers(1, 4))):
        hop = draw(st.sampled_from(_HOPS_MS))
        column = draw(st.sampled_from(["amount", "*", "big"]))
        function = "count" if column == "*" else draw(st.sampled_from(functions))
        aggs.append(Aggregation(column=column, function=function, window=hop * draw(st.integers(1, 48)),
                                hop=hop, name=f"f{i}"))
    transform = {"big": "CASE WHEN amount > 100 THEN 1 ELSE 0 END"} if draw(st.booleans()) else {}
    if not transform:
        aggs = [a for a in aggs if a.column != "big"] or [Aggregation(column="*", function="count", window="1h")]
    return FeatureView(name="v", entity=USER, source=ORDERS, aggregations=aggs, transform=transform,
                       online=draw(st.booleans()), description=draw(st.text(max_size=10)))


@settings(max_examples=40, deadline=None)
@given(view=views())
def test_any_valid_view_round_trips(view: FeatureView) -> None:
    repo = FeatureRepo.from_definitions([view])
    rebuilt = repo_from_dicts([USER.to_dict(), ORDERS.to_dict(), orjson.loads(orjson.dumps(view.to_dict()))])
    assert rebuilt == repo
    assert rebuilt.views["v"].state_fingerprint == view.state_fingerprint
