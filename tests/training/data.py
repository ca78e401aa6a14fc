"""Generated card-fraud model inputs for the training and learning tests (small: a few thousand rows)."""

from __future__ import annotations

import pyarrow as pa

from feature_store.examples.card_fraud.data import TransactionGenerator


def fraud_rows(n: int, *, seed: int = 7, drift: bool = False) -> list[dict[str, float]]:
    """Model inputs the label relation depends on: amount ratio to typical spend and being abroad."""
    gen = TransactionGenerator(users=200, seed=seed)
    rows = []
    for event, fraud in gen.events(n, drift=drift):
        u = int(str(event["user_id"])[1:])
        rows.append({
            "ratio": float(event["amount"]) / max(gen.typical_spend(u), 1.0),  # type: ignore[arg-type]
            "foreign": 1.0 if event["currency"] != "USD" else 0.0,
            "label": 1.0 if fraud else 0.0,
            "event_timestamp": int(event["ts"]),  # type: ignore[call-overload]
        })
    return rows


def fraud_table(n: int, **kw: object) -> pa.Table:
    return pa.Table.from_pylist(fraud_rows(n, **kw))  # type: ignore[arg-type]
