"""Data quality of served values: null rate and range checks.

Bounds come from a declared `QualityRule` or, when none is declared, from the
reference profile (its min/max, widened by `range_slack` of the span, and its
null rate plus `null_slack`). A value equal to a bound is in range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from feature_store.monitoring._columns import split_nulls, to_list
from feature_store.monitoring.profile import FeatureProfile

__all__ = ["QualityIssue", "QualityRule", "check_quality"]


@dataclass(frozen=True, kw_only=True)
class QualityRule:
    """Declared expectations for one feature; unset fields fall back to the profile."""

    feature: str
    max_null_rate: float | None = None
    min: float | None = None
    max: float | None = None
    max_out_of_range_rate: float = 0.01  # tolerated fraction of values outside [min, max]


@dataclass(frozen=True, kw_only=True)
class QualityIssue:
    """A failed check, with the observed value and the limit it broke."""

    feature: str
    check: Literal["null_rate", "range"]
    observed: float
    limit: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def check_quality(
    feature: str,
    served: Any,
    *,
    profile: FeatureProfile | None = None,
    rule: QualityRule | None = None,
    null_slack: float = 0.05,
    range_slack: float = 0.5,
    min_count: int = 20,
) -> list[QualityIssue]:
    """Null-rate and range issues of `served` values (empty list: all good, or too few values to judge)."""
    raw = to_list(served)
    if len(raw) < min_count:
        return []
    values, nulls = split_nulls(raw)
    issues: list[QualityIssue] = []
    null_rate = nulls / len(raw)
    max_null = rule.max_null_rate if rule and rule.max_null_rate is not None else (
        min(1.0, profile.null_rate + null_slack) if profile else None)
    if max_null is not None and null_rate > max_null:
        issues.append(QualityIssue(
            feature=feature, check="null_rate", observed=null_rate, limit=max_null,
            message=f"{feature}: {null_rate:.1%} of served values are null (limit {max_null:.1%}); "
                    "check the upstream source or the feature's ttl",
        ))
    low, high = _bounds(rule, profile, range_slack)
    numeric = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numeric and (low is not None or high is not None):
        outside = sum(1 for v in numeric if (low is not None and v < low) or (high is not None and v > high))
        rate = outside / len(numeric)
        tolerated = rule.max_out_of_range_rate if rule else 0.01
        if rate > tolerated:
            issues.append(QualityIssue(
                feature=feature, check="range", observed=rate, limit=tolerated,
                message=f"{feature}: {rate:.1%} of served values fall outside [{low}, {high}] "
                        f"(tolerated {tolerated:.1%}); check units and the upstream source",
            ))
    return issues


def _bounds(
    rule: QualityRule | None, profile: FeatureProfile | None, slack: float
) -> tuple[float | None, float | None]:
    low = rule.min if rule else None
    high = rule.max if rule else None
    if profile is not None and profile.kind == "numeric" and profile.min is not None and profile.max is not None:
        pad = (profile.max - profile.min) * slack
        low = low if low is not None else profile.min - pad
        high = high if high is not None else profile.max + pad
    return low, high
