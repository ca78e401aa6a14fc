"""Request-time expressions: grammar, checks, and the Python evaluator == the DuckDB compiler."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.definitions import FeatureService
from feature_store.errors import DefinitionError
from feature_store.examples.card_fraud import features as card_fraud
from feature_store.expressions import derived_expressions, feature_name, parse, ref_of_name
from feature_store.repo import load_repo

NAMES = ("a", "b", "view__x")

# ---------------------------------------------------------------- expression strategy

_numbers = st.one_of(st.integers(-50, 50), st.floats(-1e3, 1e3, allow_nan=False).map(lambda f: round(f, 3)))


def _leaf() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NAMES), _numbers.map(lambda n: f"({n})"))


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    compare = st.tuples(inner, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), inner).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})")
    logic = st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    unary = st.tuples(st.sampled_from(["-", "not "]), inner).map(lambda t: f"({t[0]}{t[1]})")
    calls = st.one_of(
        st.lists(inner, min_size=1, max_size=3).flatmap(
            lambda args: st.sampled_from(["coalesce", "min", "max"]).map(lambda f: f"{f}({', '.join(args)})")),
        st.tuples(st.sampled_from(["abs", "log"]), inner).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"if_({t[0]}, {t[1]}, {t[2]})"),
    )
    return st.one_of(binary, compare, logic, unary, calls)


expressions = st.recursive(_leaf(), _extend, max_leaves=8)
values = st.one_of(st.none(), _numbers, st.booleans())


def _same(python: Any, sql: Any) -> bool:
    if python is None or sql is None:
        return python is None and sql is None
    if isinstance(python, bool) or isinstance(sql, bool):
        return bool(python) == bool(sql) and isinstance(python, bool) == isinstance(sql, bool)
    if isinstance(python, float) and math.isnan(python):
        return isinstance(sql, float) and math.isnan(sql)
    return math.isclose(float(python), float(sql), rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture(scope="module")
def db() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=expressions, rows=st.lists(st.fixed_dictionaries({n: values for n in NAMES}), min_size=1, max_size=4))
def test_python_and_sql_agree(db: duckdb.DuckDBPyConnection, source: str, rows: list[dict[str, Any]]) -> None:
    expression = parse(source)
    # every name as a DOUBLE column (booleans as 1.0/0.0, as the language treats them)
    table = [{n: (None if r[n] is None else float(r[n])) for n in NAMES} for r in rows]
    values_sql = ", ".join("(" + ", ".join("NULL::DOUBLE" if r[n] is None else f"{r[n]!r}::DOUBLE" for n in NAMES)
                           + ")" for r in table)
    columns = ", ".join(f'"{n}"' for n in NAMES)
    sql = f"SELECT {expression.to_sql()} FROM (VALUES {values_sql}) AS t({columns})"
    try:
        got = [r[0] for r in db.execute(sql).fetchall()]
    except duckdb.OutOfRangeException:  # overflow beyond doubles: no value to compare
        return
    for row, sql_value in zip(table, got, strict=True):
        python_value = expression.evaluate(row)
        if isinstance(python_value, float) and math.isinf(python_value):
            continue
        assert _same(python_value, sql_value), (source, row, python_value, sql_value)


@pytest.mark.parametrize(
    ("source", "env", "want"),
    [
        ("a / b", {"a": 1, "b": 0}, None),
        ("a + b", {"a": 1, "b": None}, None),
        ("coalesce(a, b, 3)", {"a": None, "b": None}, 3.0),
        ("min(a, b)", {"a": None, "b": 2}, 2.0),
        ("max(a, b)", {"a": None, "b": None}, None),
        ("log(a)", {"a": 0}, None),
        ("log(a)", {"a": math.e}, 1.0),
        ("if_(a > 1, 10, 20)", {"a": None}, 20.0),
        ("a > 1 or b", {"a": None, "b": 1}, True),
        ("a > 1 and b", {"a": None, "b": 0}, False),
        ("a > 1 and b", {"a": None, "b": 1}, None),
        ("not a", {"a": 0}, True),
        ("1 < a < 3", {"a": 2}, True),
        ("country == 'US'", {"country": "US"}, True),
        ("abs(-a)", {"a": 2.5}, 2.5),
    ],
)
def test_semantics(source: str, env: dict[str, Any], want: Any) -> None:
    assert parse(source).evaluate(env) == want


@pytest.mark.parametrize(
    ("source", "fix"),
    [
        ("__import__('os')", "only the functions"),
        ("a.b", "Attribute is not allowed"),
        ("a[0]", "Subscript is not allowed"),
        ("a ** 2", "Pow is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("abs(a, b)", "abs() takes 1"),
        ("if_(a, b)", "if_() takes 3"),
        ("a +", "not valid syntax"),
        ("", "empty"),
        ("True", "not a number"),
        ("a // 2", "FloorDiv is not allowed"),
        ("[a]", "List is not allowed"),
    ],
)
def test_refused(source: str, fix: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse(source)
    assert fix in str(info.value)


def test_names_and_refs() -> None:
    assert parse("amount / coalesce(user_spend__amount_mean_24h, amount)").names == {
        "amount", "user_spend__amount_mean_24h"}
    assert feature_name("user_spend:amount_mean_24h") == "user_spend__amount_mean_24h"
    assert ref_of_name("user_spend__amount_mean_24h") == "user_spend:amount_mean_24h"
    assert ref_of_name("amount") is None


def test_derived_checked_against_the_service() -> None:
    repo = load_repo(Path(card_fraud.__file__))
    service = repo.service("fraud_detection")
    good = FeatureService(name="s1", features=list(service.feature_refs), request_fields={"amount": "float"},
                          derived={"ratio": "amount / coalesce(user_spend__amount_mean_24h, amount)"})
    assert set(derived_expressions(good, repo)) == {"ratio"}
    unknown = FeatureService(name="s2", features=list(service.feature_refs), derived={"r": "amount2 * 2"})
    with pytest.raises(DefinitionError, match=r"derived feature 'r'.*unknown name\(s\) \['amount2'\]"):
        derived_expressions(unknown, repo)
    as_number = FeatureService(name="s3", features=list(service.feature_refs),
                               derived={"r": "user_last_txn__country + 1"})
    with pytest.raises(DefinitionError, match="is a string; it cannot be used as a number"):
        derived_expressions(as_number, repo)
    shadow = FeatureService(name="s4", features=list(service.feature_refs), request_fields={"amount": "float"},
                            derived={"amount": "amount * 2"})
    with pytest.raises(DefinitionError, match="already a request field"):
        derived_expressions(shadow, repo)
