"""Request-time derived features: one tiny expression language, two evaluators.

A `FeatureService` may declare `derived={"amount_ratio": "amount / coalesce(user_spend__amount_mean_24h, amount)"}`.
Names are request fields (by name) or fetched features (`view__feature` for
'view:feature'). Serving evaluates an expression per request in Python
(`Expression.evaluate`, the tree compiled once into closures); training sets
and batch scoring compile the same parsed tree to a DuckDB SQL expression
(`Expression.to_sql`). The tests hold both evaluators equal with hypothesis.

Grammar (parsed with Python's `ast`, anything else is refused):
numbers, names, `+ - * /`, unary `-`, comparisons `< <= > >= == !=`
(chains allowed; string literals only as a comparison operand), `and`,
`or`, `not`, and the calls `coalesce(a, ...)`, `abs(x)`, `min(a, ...)`,
`max(a, ...)`, `log(x)`, `if_(cond, a, b)`.

Semantics (SQL's, so both evaluators agree):
- null (None) propagates through arithmetic and comparisons; `x / 0` is null;
  `log(x)` is the natural log, null when `x <= 0`.
- arithmetic is on doubles (booleans count as 1.0/0.0); `min`/`max` skip
  nulls and are null only when every argument is; `coalesce` returns the
  first non-null argument.
- `and`/`or`/`not` use three-valued logic; a number in a boolean place is
  true when non-zero. `if_(cond, a, b)` is `a` when cond is true, else `b`
  (null cond -> `b`).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, cast

from feature_store.errors import DefinitionError

if TYPE_CHECKING:
    from feature_store.definitions import FeatureService
    from feature_store.repo import FeatureRepo

__all__ = [
    "Expression",
    "derived_expressions",
    "feature_name",
    "parse",
    "ref_of_name",
]

Kind = Literal["num", "bool", "str", "any"]
_FUNCTIONS = {"coalesce": (1, None), "abs": (1, 1), "min": (1, None), "max": (1, None), "log": (1, 1),
              "if_": (3, 3)}
_MAX_LENGTH = 2_000
_MAX_NODES = 200


def feature_name(ref: str) -> str:
    """The expression name of a 'view:feature' reference: 'view__feature'."""
    return ref.replace(":", "__", 1)


def ref_of_name(name: str) -> str | None:
    """'view__feature' -> 'view:feature'; None for a plain (request field) name."""
    view, sep, feature = name.partition("__")
    return f"{view}:{feature}" if sep and view and feature else None


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression; build it with `parse(source)`."""

    source: str
    tree: ast.expr = field(repr=False, compare=False)
    names: frozenset[str] = field(compare=False)
    compiled: Callable[[Mapping[str, Any]], Any] = field(repr=False, compare=False)

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """The value for one row; `env` maps every name in `names` to its value (None = null)."""
        return self.compiled(env)

    def to_sql(self, column: Callable[[str], str] | None = None) -> str:
        """A DuckDB SQL expression; `column(name)` gives the SQL of a name (default: the quoted name)."""
        quote = column or (lambda name: '"' + name.replace('"', '""') + '"')
        return _sql(self.tree, quote)

    def check_types(self, types: Mapping[str, str], *, where: str) -> None:
        """Refuse unknown names and strings in numeric places; `types` maps names to field types."""
        unknown = sorted(self.names - set(types))
        if unknown:
            raise DefinitionError(
                f"{where}: expression {self.source!r} uses unknown name(s) {unknown}; use request fields "
                f"({', '.join(sorted(n for n in types if '__' not in n)) or 'none'}) or fetched features as "
                f"view__feature ({', '.join(sorted(n for n in types if '__' in n)) or 'none'})"
            )
        kinds = {name: _kind_of_type(dtype) for name, dtype in types.items()}
        _check(self.tree, kinds, where=f"{where}: expression {self.source!r}")


@lru_cache(maxsize=1024)
def parse(source: str) -> Expression:
    """Parse and check the grammar; DefinitionError says what is not allowed."""
    if not isinstance(source, str) or not source.strip():
        raise DefinitionError(f"expression {source!r} is empty; write e.g. 'amount / coalesce(avg_amount, 1)'")
    if len(source) > _MAX_LENGTH:
        raise DefinitionError(f"expression is longer than {_MAX_LENGTH} characters; split it into derived features")
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as exc:
        raise DefinitionError(f"expression {source!r} is not valid syntax: {exc.msg}") from None
    names: set[str] = set()
    count = 0
    for node in ast.walk(tree):
        count += 1
        _allow(node, source)
        if isinstance(node, ast.Name):
            names.add(node.id)
    if count > _MAX_NODES:
        raise DefinitionError(f"expression {source!r} is too large ({count} nodes, at most {_MAX_NODES})")
    names.difference_update(_FUNCTIONS)
    return Expression(source=source, tree=tree, names=frozenset(names), compiled=_compile(tree))


def derived_expressions(service: FeatureService, repo: FeatureRepo | None = None) -> dict[str, Expression]:
    """Parse and check every derived feature of `service` against its request fields and features.

    Unknown names, bad syntax or a string used as a number raise DefinitionError
    naming the service and the derived feature. Without `repo`, feature types
    are not known and only names are checked.
    """
    types: dict[str, str] = {name: dtype for name, dtype in service.request_fields.items()}
    for ref in service.feature_refs:
        dtype = "any"
        if repo is not None:
            view, feature = repo.resolve(ref, context=f"FeatureService {service.name!r}")
            dtype = view.feature_type(feature)
        types[feature_name(ref)] = dtype
    out: dict[str, Expression] = {}
    for name, source in service.derived.items():
        where = f"FeatureService {service.name!r} derived feature {name!r}"
        if name in types:
            raise DefinitionError(f"{where}: the name is already a request field or feature; rename it")
        try:
            expression = parse(source)
        except DefinitionError as exc:
            raise DefinitionError(f"{where}: {exc}") from None
        expression.check_types(types, where=where)
        out[name] = expression
    return out


# ---------------------------------------------------------------- grammar

_ALLOWED = (ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call,
            ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or,
            ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)


def _allow(node: ast.AST, source: str) -> None:
    if not isinstance(node, _ALLOWED):
        raise DefinitionError(
            f"expression {source!r}: {type(node).__name__} is not allowed; use numbers, names, + - * /, "
            f"comparisons, and/or/not and {', '.join(_FUNCTIONS)}"
        )
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float | str):
            raise DefinitionError(f"expression {source!r}: constant {node.value!r} is not a number or string")
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise DefinitionError(f"expression {source!r}: constant {node.value!r} is not finite")
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise DefinitionError(
                f"expression {source!r}: only the functions {', '.join(_FUNCTIONS)} can be called "
                f"(positional arguments)"
            )
        low, high = _FUNCTIONS[node.func.id]
        if len(node.args) < low or (high is not None and len(node.args) > high):
            want = str(low) if low == high else f"at least {low}"
            raise DefinitionError(f"expression {source!r}: {node.func.id}() takes {want} argument(s)")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise DefinitionError(f"expression {source!r}: *args is not allowed")
    elif isinstance(node, ast.Name) and node.id in _FUNCTIONS:
        return  # the callee of a Call; a bare function name is refused by _check/_compile
    elif isinstance(node, ast.Name) and not node.id.isidentifier():
        raise DefinitionError(f"expression {source!r}: bad name {node.id!r}")


def _kind_of_type(dtype: str) -> Kind:
    if dtype in ("int", "float", "timestamp"):
        return "num"
    if dtype == "bool":
        return "bool"
    if dtype == "string":
        return "str"
    return "any"


def _check(node: ast.expr, kinds: Mapping[str, Kind], *, where: str) -> Kind:
    """Static kinds: refuse a string (field or literal) where a number or a boolean is needed."""

    def numeric(child: ast.expr) -> None:
        if _check(child, kinds, where=where) == "str":
            raise DefinitionError(f"{where}: {ast.unparse(child)!r} is a string; it cannot be used as a number")

    if isinstance(node, ast.Constant):
        return "str" if isinstance(node.value, str) else "num"
    if isinstance(node, ast.Name):
        if node.id in _FUNCTIONS:
            raise DefinitionError(f"{where}: {node.id} is a function; call it like {node.id}(...)")
        return kinds.get(node.id, "any")
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        for child in (node.left, node.right) if isinstance(node, ast.BinOp) else (node.operand,):
            numeric(child)
        return "bool" if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) else "num"
    if isinstance(node, ast.BoolOp):
        for child in node.values:
            numeric(child)
        return "bool"
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        operand_kinds = [_check(o, kinds, where=where) for o in operands]
        if "str" in operand_kinds and any(k in ("num", "bool") for k in operand_kinds):
            raise DefinitionError(f"{where}: compares a string with a number in {ast.unparse(node)!r}")
        return "bool"
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):  # _allow guarantees it
        raise DefinitionError(f"unexpected {type(node).__name__} in an expression")
    for child in node.args:
        numeric(child)
    return "num"


# ---------------------------------------------------------------- Python evaluator


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _truth(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _has_str(node: ast.Compare) -> bool:
    return any(isinstance(o, ast.Constant) and isinstance(o.value, str) for o in (node.left, *node.comparators))


Env = Mapping[str, Any]
Compiled = Callable[[Env], Any]
_ARITHMETIC: dict[type, Callable[[float, float], float]] = {ast.Add: operator.add, ast.Sub: operator.sub,
                                                            ast.Mult: operator.mul}


def _compile(node: ast.expr) -> Compiled:
    """The node as a Python closure over the row: dispatch on node types happens once, not per row."""
    if isinstance(node, ast.Constant):
        constant = node.value if isinstance(node.value, str) else float(cast(float, node.value))
        return lambda env: constant
    if isinstance(node, ast.Name):
        name = node.id
        return lambda env: env.get(name)
    if isinstance(node, ast.BinOp):
        return _compile_arithmetic(node.op, _compile(node.left), _compile(node.right))
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand)
        if isinstance(node.op, ast.Not):
            def negated(env: Env) -> bool | None:
                t = _truth(operand(env))
                return None if t is None else not t
            return negated
        negate = isinstance(node.op, ast.USub)

        def signed(env: Env) -> float | None:
            x = _num(operand(env))
            return None if x is None else -x if negate else x
        return signed
    if isinstance(node, ast.BoolOp):
        return _compile_bool(isinstance(node.op, ast.Or), [_compile(v) for v in node.values])
    if isinstance(node, ast.Compare):
        return _compile_compare(node)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):  # parse() checked it
        raise DefinitionError(f"unexpected {type(node).__name__} in an expression")
    return _compile_call(node.func.id, [_compile(a) for a in node.args])


def _compile_arithmetic(op: ast.operator, left: Compiled, right: Compiled) -> Compiled:
    if isinstance(op, ast.Div):
        def divide(env: Env) -> float | None:
            a, b = _num(left(env)), _num(right(env))
            return None if a is None or b is None or b == 0 else a / b
        return divide
    apply = _ARITHMETIC[type(op)]

    def arithmetic(env: Env) -> float | None:
        a, b = _num(left(env)), _num(right(env))
        return None if a is None or b is None else apply(a, b)
    return arithmetic


def _compile_bool(is_or: bool, values: list[Compiled]) -> Compiled:
    def boolean(env: Env) -> bool | None:
        truths = [_truth(v(env)) for v in values]
        if is_or in truths:  # True decides an `or`, False an `and`
            return is_or
        return None if None in truths else not is_or
    return boolean


def _compile_compare(node: ast.Compare) -> Compiled:
    raw = _has_str(node)
    operands = [_compile(o) for o in (node.left, *node.comparators)]
    ops = list(node.ops)

    def compare(env: Env) -> bool | None:
        values = [o(env) for o in operands]
        if not raw:
            values = [_num(v) for v in values]
        result: bool | None = True
        for op, a, b in zip(ops, values, values[1:], strict=False):
            step = None if a is None or b is None else _compare(op, a, b)
            if step is False:
                return False
            if step is None:
                result = None
        return result
    return compare


def _compile_call(name: str, args: list[Compiled]) -> Compiled:
    if name == "if_":
        cond, then, otherwise = args

        def if_(env: Env) -> float | None:
            return _num(then(env) if _truth(cond(env)) else otherwise(env))
        return if_
    if name == "coalesce":
        def coalesce(env: Env) -> float | None:
            values = [_num(f(env)) for f in args]  # all evaluated, as SQL would
            return next((a for a in values if a is not None), None)
        return coalesce
    if name == "abs":
        (only,) = args

        def abs_(env: Env) -> float | None:
            x = _num(only(env))
            return None if x is None else abs(x)
        return abs_
    if name == "log":
        (only,) = args

        def log(env: Env) -> float | None:
            x = _num(only(env))
            return math.log(x) if x is not None and x > 0 else None
        return log
    pick = min if name == "min" else max

    def extreme(env: Env) -> float | None:
        present = [a for a in [_num(f(env)) for f in args] if a is not None]
        return pick(present) if present else None
    return extreme


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    if isinstance(op, ast.Lt):
        return bool(a < b)
    if isinstance(op, ast.LtE):
        return bool(a <= b)
    if isinstance(op, ast.Gt):
        return bool(a > b)
    if isinstance(op, ast.GtE):
        return bool(a >= b)
    if isinstance(op, ast.Eq):
        return bool(a == b)
    return bool(a != b)


# ---------------------------------------------------------------- SQL compiler

_SQL_OPS: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
                             ast.GtE: ">=", ast.Eq: "=", ast.NotEq: "<>"}


def _sql(node: ast.expr, quote: Callable[[str], str]) -> str:
    def num(child: ast.expr) -> str:
        return f"CAST({_sql(child, quote)} AS DOUBLE)"

    def truth(child: ast.expr) -> str:
        return f"CAST({_sql(child, quote)} AS BOOLEAN)"

    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return "'" + node.value.replace("'", "''") + "'"
        return f"CAST({float(cast(float, node.value))!r} AS DOUBLE)"
    if isinstance(node, ast.Name):
        return quote(node.id)
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Div):
            return f"({num(node.left)} / NULLIF({num(node.right)}, 0.0))"
        return f"({num(node.left)} {_SQL_OPS[type(node.op)]} {num(node.right)})"
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            return f"(NOT {truth(node.operand)})"
        return f"({'-' if isinstance(node.op, ast.USub) else '+'}{num(node.operand)})"
    if isinstance(node, ast.BoolOp):
        joiner = " OR " if isinstance(node.op, ast.Or) else " AND "
        return "(" + joiner.join(truth(v) for v in node.values) + ")"
    if isinstance(node, ast.Compare):
        raw = _has_str(node)
        operands = [node.left, *node.comparators]
        text = [_sql(o, quote) if raw else num(o) for o in operands]
        steps = [f"({a} {_SQL_OPS[type(op)]} {b})" for op, a, b in zip(node.ops, text, text[1:], strict=False)]
        return steps[0] if len(steps) == 1 else "(" + " AND ".join(steps) + ")"
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):  # parse() checked it
        raise DefinitionError(f"unexpected {type(node).__name__} in an expression")
    name = node.func.id
    if name == "if_":
        return f"(CASE WHEN {truth(node.args[0])} THEN {num(node.args[1])} ELSE {num(node.args[2])} END)"
    args = [num(a) for a in node.args]
    if name == "coalesce":
        return f"coalesce({', '.join(args)})"
    if name == "abs":
        return f"abs({args[0]})"
    if name == "log":
        return f"(CASE WHEN {args[0]} > 0 THEN ln({args[0]}) END)"
    return f"{'least' if name == 'min' else 'greatest'}({', '.join(args)})"
