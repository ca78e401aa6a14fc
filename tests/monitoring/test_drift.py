"""PSI, KS and binning checked against brute-force oracles written from the definitions."""

from __future__ import annotations

import itertools
import math
import random

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.monitoring import DriftThresholds, feature_drift, ks_2samp, profile_column, psi
from feature_store.monitoring.drift import EPS, ks_p_value
from feature_store.monitoring.profile import OTHER, bin_fractions

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(st.one_of(floats, st.integers(-5, 5).map(float)), min_size=1, max_size=60)


def ks_oracle(a: list[float], b: list[float]) -> float:
    """sup_x |F_a(x) - F_b(x)|, evaluated at every sample point (where the sup is reached)."""
    best = 0.0
    for x in a + b:
        fa = sum(1 for v in a if v <= x) / len(a)
        fb = sum(1 for v in b if v <= x) / len(b)
        best = max(best, abs(fa - fb))
    return best


def psi_oracle(r: list[float], s: list[float]) -> float:
    total = 0.0
    for ri, si in zip(r, s, strict=True):
        a, b = max(ri, EPS), max(si, EPS)
        total += (b - a) * math.log(b / a)
    return total


@given(samples, samples)
def test_ks_statistic_matches_oracle(a: list[float], b: list[float]) -> None:
    d, p = ks_2samp(a, b)
    assert d == pytest.approx(ks_oracle(a, b), abs=1e-12)
    assert 0.0 <= p <= 1.0


@given(samples, st.lists(floats, max_size=10, unique=True).map(sorted))
def test_bin_fractions_match_oracle(values: list[float], edges: list[float]) -> None:
    got = bin_fractions(edges, values)
    bounds = [-math.inf, *edges, math.inf]
    want = [sum(1 for v in values if lo <= v < hi) / len(values) for lo, hi in itertools.pairwise(bounds)]
    assert got == pytest.approx(want)
    assert sum(got) == pytest.approx(1.0)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=12).flatmap(
    lambda r: st.tuples(st.just(r), st.lists(st.floats(0, 1), min_size=len(r), max_size=len(r)))))
def test_psi_matches_oracle_and_is_nonnegative_on_distributions(pair: tuple[list[float], list[float]]) -> None:
    r, s = pair
    assert psi(r, s) == pytest.approx(psi_oracle(r, s))
    if sum(r) > 0 and sum(s) > 0:
        rn, sn = [x / sum(r) for x in r], [x / sum(s) for x in s]
        assert psi(rn, sn) >= -1e-9  # symmetric KL-like: never negative between distributions
        assert psi(rn, rn) == pytest.approx(0.0)


def test_psi_needs_same_buckets() -> None:
    with pytest.raises(ValueError, match="same buckets"):
        psi([0.5, 0.5], [1.0])


@settings(max_examples=50)
@given(st.lists(floats, min_size=5, max_size=200), st.integers(2, 12))
def test_profile_bins_hold_every_reference_value(values: list[float], bins: int) -> None:
    profile = profile_column("x", values, bins=bins)
    assert profile.kind == "numeric"
    assert list(profile.edges) == sorted(set(profile.edges))
    assert len(profile.fractions) == len(profile.edges) + 1
    assert sum(profile.fractions) == pytest.approx(1.0)
    assert profile.min == min(values)
    assert profile.max == max(values)
    # the reference against itself does not drift
    assert feature_drift(profile, values).psi == pytest.approx(0.0, abs=1e-9)


def test_ks_p_value_known_points() -> None:
    # Kolmogorov distribution: Q(1.36) ~ 0.05, Q(1.63) ~ 0.01 for large samples
    n = 10**6
    lam = math.sqrt(n * n / (2 * n))
    assert ks_p_value(1.36 / lam, n, n) == pytest.approx(0.05, abs=0.002)
    assert ks_p_value(1.63 / lam, n, n) == pytest.approx(0.01, abs=0.001)
    assert ks_p_value(0.0, 10, 10) == 1.0
    assert ks_p_value(0.5, 0, 10) == 1.0


@pytest.mark.parametrize("make", [list, pa.array, pd.Series, lambda v: pa.chunked_array([v[:100], v[100:]])])
def test_column_shapes_and_nulls(make: object) -> None:
    rng = random.Random(3)
    ref = [rng.gauss(0, 1) for _ in range(500)]
    served = [rng.gauss(0, 1) for _ in range(300)] + [None] * 100
    profile = profile_column("x", make(ref))  # type: ignore[operator]
    result = feature_drift(profile, make(served))  # type: ignore[operator]
    assert result.served_count == 300
    assert result.served_null_rate == pytest.approx(0.25)
    assert result.status == "ok"


def test_shift_is_drift_and_same_distribution_is_not() -> None:
    rng = random.Random(11)
    profile = profile_column("x", [rng.gauss(0, 1) for _ in range(5000)])
    same = feature_drift(profile, [rng.gauss(0, 1) for _ in range(2000)])
    shifted = feature_drift(profile, [rng.gauss(0.8, 1) for _ in range(2000)])
    assert same.status == "ok"
    assert shifted.status == "drift"
    assert shifted.psi > 0.25
    assert shifted.ks_p_value is not None
    assert shifted.ks_p_value < 1e-6


def test_too_few_values_is_insufficient() -> None:
    profile = profile_column("x", [float(i) for i in range(100)])
    assert feature_drift(profile, [1000.0] * 10).status == "insufficient"
    assert feature_drift(profile, [1000.0] * 10, DriftThresholds(min_count=5)).status == "drift"


def test_categorical_profile_and_unseen_categories() -> None:
    profile = profile_column("country", ["US"] * 80 + ["GB"] * 20 + [None] * 10, max_categories=5)
    assert profile.kind == "categorical"
    assert profile.categories == ("GB", "US", OTHER)
    assert profile.fractions == pytest.approx((0.2, 0.8, 0.0))
    assert profile.null_rate == pytest.approx(10 / 110)
    assert feature_drift(profile, ["US"] * 80 + ["GB"] * 20).psi == pytest.approx(0.0)
    unseen = feature_drift(profile, ["BR"] * 100)
    assert unseen.status == "drift"
    assert unseen.ks_statistic is None


def test_profile_round_trips_through_dict() -> None:
    from feature_store.monitoring import FeatureProfile

    for profile in (profile_column("x", [1.0, 2.0, 3.0, None]), profile_column("c", ["a", "b"])):
        assert FeatureProfile.from_dict(profile.to_dict()) == profile


@given(st.lists(st.one_of(st.none(), st.sampled_from("abcdefg")), min_size=1, max_size=80), st.integers(1, 8))
def test_categorical_fractions_match_counts(values: list[str | None], keep: int) -> None:
    from collections import Counter

    profile = profile_column("c", values, max_categories=keep)
    present = [v for v in values if v is not None]
    if not present:
        return
    counts = Counter(present)
    kept = set(profile.categories) - {OTHER}
    assert len(kept) <= keep
    assert sum(profile.fractions) == pytest.approx(1.0)
    for category, fraction in zip(profile.categories, profile.fractions, strict=True):
        want = (sum(n for c, n in counts.items() if c not in kept) if category == OTHER else counts[category])
        assert fraction == pytest.approx(want / len(present))
    assert profile.bucket_fractions(present) == pytest.approx(list(profile.fractions))
