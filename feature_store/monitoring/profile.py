"""Reference profiles: what a feature looked like in the training set, small enough to keep with a model.

A profile holds what drift and quality checks need later without the
training data: null rate, min/max, quantile bin edges with the reference's
fraction per bin (numeric) or category fractions (categorical), and a sorted
sample of at most `sample_size` values for the KS test. It is JSON-able, so
it can travel in model metadata or a file next to the training set.

Binning: a value `x` falls in bin `bisect_right(edges, x)`, i.e. bin `i`
holds `edges[i-1] <= x < edges[i]` (first bin unbounded below, last above).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from feature_store.errors import DefinitionError
from feature_store.monitoring._columns import split_nulls, to_list

__all__ = ["OTHER", "FeatureProfile", "bin_fractions", "profile_column", "profile_table"]

OTHER = "__other__"  # bucket for categories the reference did not have (or beyond `max_categories`)
Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True, kw_only=True)
class FeatureProfile:
    """One feature's reference distribution (see module doc for the binning rule)."""

    feature: str
    kind: Kind
    count: int  # rows in the reference, nulls included
    null_rate: float
    min: float | None = None
    max: float | None = None
    edges: tuple[float, ...] = ()  # numeric: inner quantile edges, ascending, unique
    categories: tuple[str, ...] = ()  # categorical: reference categories kept (plus OTHER)
    fractions: tuple[float, ...] = ()  # reference fraction per bin / per category (non-null values)
    sample: tuple[float, ...] = ()  # numeric: sorted reference sample for KS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureProfile:
        fields = dict(data)
        for name in ("edges", "categories", "fractions", "sample"):
            fields[name] = tuple(fields.get(name, ()))
        return cls(**fields)

    def bucket_fractions(self, values: Sequence[Any]) -> list[float]:
        """Fractions of non-null `values` per bin (numeric) or category (categorical), same order as `fractions`."""
        if self.kind == "numeric":
            return bin_fractions(self.edges, [float(v) for v in values])
        index = {c: i for i, c in enumerate(self.categories)}
        other = index.get(OTHER)
        counts = [0] * len(self.categories)
        total = 0
        for v in values:
            i = index.get(str(v), other)
            if i is not None:
                counts[i] += 1
            total += 1
        return [c / total for c in counts] if total else [0.0] * len(counts)


def bin_fractions(edges: Sequence[float], values: Sequence[float]) -> list[float]:
    """Fraction of `values` in each of the `len(edges) + 1` bins."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect.bisect_right(edges, v)] += 1
    n = len(values)
    return [c / n for c in counts] if n else [0.0] * len(counts)


def _is_numeric(values: Iterable[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _quantile_edges(sorted_values: Sequence[float], bins: int) -> tuple[float, ...]:
    n = len(sorted_values)
    edges: list[float] = []
    for i in range(1, bins):
        q = sorted_values[min(n - 1, (i * n) // bins)]
        if (not edges or q > edges[-1]) and q > sorted_values[0]:
            edges.append(q)
    return tuple(edges)


def _sample(sorted_values: Sequence[float], size: int) -> tuple[float, ...]:
    n = len(sorted_values)
    if n <= size:
        return tuple(sorted_values)
    return tuple(sorted_values[(i * (n - 1)) // (size - 1)] for i in range(size))


def profile_column(
    feature: str, column: Any, *, bins: int = 10, max_categories: int = 50, sample_size: int = 2000
) -> FeatureProfile:
    """Profile one reference column (Arrow, pandas, numpy or list); kind is inferred from its values."""
    if bins < 2 or sample_size < 2:
        raise DefinitionError(f"profile of {feature!r}: bins and sample_size must be >= 2")
    raw = to_list(column)
    values, nulls = split_nulls(raw)
    null_rate = nulls / len(raw) if raw else 0.0
    if values and _is_numeric(values):
        ordered = sorted(float(v) for v in values)
        edges = _quantile_edges(ordered, bins)
        return FeatureProfile(
            feature=feature, kind="numeric", count=len(raw), null_rate=null_rate,
            min=ordered[0], max=ordered[-1], edges=edges,
            fractions=tuple(bin_fractions(edges, ordered)), sample=_sample(ordered, sample_size),
        )
    counts = Counter(str(v) for v in values)
    kept = sorted(c for c, _ in counts.most_common(max_categories))
    other = sum(counts.values()) - sum(counts[c] for c in kept)
    total = len(values)
    fractions = (*(counts[c] / total for c in kept), other / total) if total else (0.0,) * (len(kept) + 1)
    return FeatureProfile(feature=feature, kind="categorical", count=len(raw), null_rate=null_rate,
                          categories=(*kept, OTHER), fractions=tuple(fractions))


def profile_table(table: Any, features: Iterable[str] | None = None, **options: Any) -> dict[str, FeatureProfile]:
    """Profiles of `features` (default: every column) of an Arrow table or pandas DataFrame."""
    names = list(features) if features is not None else list(table.column_names if hasattr(table, "column_names")
                                                              else table.columns)
    return {name: profile_column(name, table[name], **options) for name in names}
