"""Distribution drift between a training reference and served values: PSI and two-sample KS.

PSI (population stability index) over the reference's bins:
`sum((s_i - r_i) * ln(s_i / r_i))`, each fraction floored at `EPS` so an empty
bin counts as rare, not impossible. Rule of thumb: < 0.1 stable, 0.1-0.25
moderate, >= 0.25 drifted. KS is the largest gap between the two empirical
CDFs, with the asymptotic Kolmogorov p-value (numeric features only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from feature_store.monitoring._columns import split_nulls, to_list
from feature_store.monitoring.profile import FeatureProfile

__all__ = ["EPS", "DriftThresholds", "FeatureDrift", "feature_drift", "ks_2samp", "ks_p_value", "psi"]

EPS = 1e-4
Status = Literal["ok", "warn", "drift", "insufficient"]


def psi(reference: Sequence[float], served: Sequence[float]) -> float:
    """PSI of two fraction vectors over the same buckets."""
    if len(reference) != len(served):
        raise ValueError(f"psi needs the same buckets: {len(reference)} reference vs {len(served)} served")
    total = 0.0
    for r, s in zip(reference, served, strict=True):
        r, s = max(r, EPS), max(s, EPS)
        total += (s - r) * math.log(s / r)
    return total


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic (Numerical Recipes' `probks`)."""
    if n == 0 or m == 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * statistic
    if lam < 1e-3:
        return 1.0
    total, sign, previous = 0.0, 1.0, 0.0
    for j in range(1, 101):
        term = sign * 2.0 * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) <= 1e-3 * abs(previous) or abs(term) <= 1e-8 * total:
            return min(1.0, max(0.0, total))
        sign, previous = -sign, term
    return 1.0  # series did not converge: lam tiny, no evidence


def ks_2samp(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(statistic, p-value): sup over x of |F_a(x) - F_b(x)| with right-continuous empirical CDFs."""
    xs, ys = sorted(a), sorted(b)
    n, m = len(xs), len(ys)
    if n == 0 or m == 0:
        return 0.0, 1.0
    i = j = 0
    d = 0.0
    while i < n and j < m:
        x = min(xs[i], ys[j])
        while i < n and xs[i] == x:
            i += 1
        while j < m and ys[j] == x:
            j += 1
        d = max(d, abs(i / n - j / m))
    return d, ks_p_value(d, n, m)


@dataclass(frozen=True, kw_only=True)
class DriftThresholds:
    """When a feature counts as drifted; PSI decides, KS adds evidence for numeric features."""

    psi_warn: float = 0.1
    psi_drift: float = 0.25
    ks_alpha: float = 0.001  # KS drift needs p below this ...
    ks_min_statistic: float = 0.15  # ... and a gap at least this large (big samples make tiny gaps significant)
    min_count: int = 50  # fewer served non-null values: status "insufficient"


@dataclass(frozen=True, kw_only=True)
class FeatureDrift:
    """Drift of one feature's served values against its reference profile."""

    feature: str
    kind: str
    psi: float
    ks_statistic: float | None
    ks_p_value: float | None
    served_count: int
    served_null_rate: float
    status: Status

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def feature_drift(profile: FeatureProfile, served: Any, thresholds: DriftThresholds | None = None) -> FeatureDrift:
    """Compare served values (any column shape; nulls excluded from PSI/KS) with `profile`."""
    th = thresholds or DriftThresholds()
    raw = to_list(served)
    values, nulls = split_nulls(raw)
    null_rate = nulls / len(raw) if raw else 0.0
    if profile.kind == "numeric":
        values = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    value = psi(profile.fractions, profile.bucket_fractions(values)) if values else 0.0
    ks_d: float | None = None
    ks_p: float | None = None
    if profile.kind == "numeric" and profile.sample and values:
        ks_d, ks_p = ks_2samp(profile.sample, values)
    status: Status
    if len(values) < th.min_count:
        status = "insufficient"
    elif value >= th.psi_drift or (ks_p is not None and ks_d is not None and ks_p < th.ks_alpha
                                   and ks_d >= th.ks_min_statistic):
        status = "drift"
    elif value >= th.psi_warn:
        status = "warn"
    else:
        status = "ok"
    return FeatureDrift(
        feature=profile.feature, kind=profile.kind, psi=value, ks_statistic=ks_d, ks_p_value=ks_p,
        served_count=len(values), served_null_rate=null_rate, status=status,
    )
