"""Realistic generated data for the card-fraud repo: transactions, profiles, labels.

Deterministic for a seed, so tests, the demo and the benchmarks share data
shapes. Users have a typical spend; a transaction is fraudulent with a
probability that grows with its amount relative to that typical spend and
with being abroad - the relation the demo's model learns.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

__all__ = ["TransactionGenerator", "fraud_probability", "profiles_table"]

COUNTRIES = ["US", "US", "US", "US", "GB", "DE", "FR", "BR"]
CURRENCY = {"US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "BR": "USD"}
CHANNELS = ["web", "pos", "app", None]


def fraud_probability(amount: float, typical: float, foreign: bool, *, drift: bool = False) -> float:
    """The hidden label relation. `drift=True` flips which side is risky (concept drift)."""
    ratio = amount / max(typical, 1.0)
    score = 1.6 * (ratio - 2.5) + (1.5 if foreign else -0.5)
    if drift:
        score = -1.6 * (ratio - 0.6) + (-0.5 if foreign else 1.0)
    return 1.0 / (1.0 + math.exp(-score))


@dataclass
class TransactionGenerator:
    """Transactions around `start_ms`, `spacing_ms` apart on average, some slightly out of order."""

    users: int = 1_000
    merchants: int = 200
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    spacing_ms: int = 50
    disorder_ms: int = 2_000
    seed: int = 7

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._rng = rng
        self._typical = [math.exp(rng.gauss(3.5, 0.8)) for _ in range(self.users)]
        self._home = [rng.choice(COUNTRIES) for _ in range(self.users)]
        self._clock = self.start_ms
        self._count = 0

    def typical_spend(self, user_index: int) -> float:
        return self._typical[user_index]

    def events(self, n: int, *, drift: bool = False) -> Iterator[tuple[dict[str, object], bool]]:
        """Yield (event, is_fraud) pairs; the label is drawn from `fraud_probability`."""
        rng = self._rng
        for _ in range(n):
            self._clock += int(rng.expovariate(1.0 / self.spacing_ms)) if self.spacing_ms else 0
            heavy = rng.random() < 0.5  # half the traffic comes from a few heavy users
            u = min(int(rng.paretovariate(1.2)) - 1, self.users - 1) if heavy else rng.randrange(self.users)
            foreign = rng.random() < 0.08
            country = rng.choice([c for c in COUNTRIES if c != self._home[u]]) if foreign else self._home[u]
            amount = round(self._typical[u] * math.exp(rng.gauss(0.0, 0.7)) * (4.0 if rng.random() < 0.03 else 1.0), 2)
            ts = self._clock - (rng.randrange(self.disorder_ms) if self.disorder_ms and rng.random() < 0.1 else 0)
            self._count += 1
            event: dict[str, object] = {
                "transaction_id": f"t{self.seed}-{self._count}",
                "user_id": f"u{u}",
                "merchant_id": f"m{rng.randrange(self.merchants)}",
                "amount": amount,
                "currency": CURRENCY[country],
                "country": country,
                "channel": rng.choice(CHANNELS),
                "ts": ts,
            }
            label = rng.random() < fraud_probability(amount, self._typical[u], country != self._home[u], drift=drift)
            yield event, label


def profiles_table(users: int, *, start_ms: int = 1_735_689_600_000, snapshots: int = 2, seed: int = 7) -> pa.Table:
    """Profile snapshots: `snapshots` rows per user at increasing `updated_at`, some sharing a timestamp."""
    rng = random.Random(seed)
    rows: dict[str, list[object]] = {k: [] for k in ("user_id", "age", "segment", "credit_limit", "signup_ts",
                                                      "updated_at")}
    for u in range(users):
        signup = start_ms + rng.randrange(86_400_000 * 30)
        updated = signup
        for _ in range(snapshots):
            updated += rng.choice([0, 86_400_000, 86_400_000 * 7])
            rows["user_id"].append(f"u{u}")
            rows["age"].append(rng.randrange(18, 90))
            rows["segment"].append(rng.choice(["basic", "gold", "platinum"]))
            rows["credit_limit"].append(float(rng.choice([500, 1000, 2500, 5000, 10000])))
            rows["signup_ts"].append(signup)
            rows["updated_at"].append(updated)
    return pa.table({k: pa.array(v) for k, v in rows.items()})
