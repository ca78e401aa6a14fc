"""Card fraud: card transactions by user and merchant, plus user profiles.

A transactions stream keyed by user feeds windowed spend features per user
and activity per merchant and the user's last transaction; a Parquet batch
source of user profiles feeds a latest-value view. The service
`fraud_detection` is what the fraud model consumes.
"""

from __future__ import annotations

from feature_store.definitions import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    StalenessPolicy,
    StreamSource,
)
from schemas import EventSchema, Field

user = Entity(name="user", join_key="user_id", description="A card holder")
merchant = Entity(name="merchant", join_key="merchant_id", description="A merchant accepting cards")

transactions_v1 = EventSchema(
    name="transactions",
    version=1,
    fields={
        "transaction_id": Field("string"),
        "user_id": Field("string"),
        "merchant_id": Field("string"),
        "amount": Field("float"),
        "currency": Field("string"),
        "country": Field("string"),
        "channel": Field("string", required=False, nullable=True),
        "ts": Field("timestamp"),
    },
)

transactions = StreamSource(
    name="transactions",
    schema=transactions_v1,
    event_time="ts",
    key="user_id",
    partitions=4,
    allowed_lateness="10m",
    future_tolerance="5m",
    description="Card transactions, keyed by user",
)

profiles_v1 = EventSchema(
    name="profiles",
    version=1,
    fields={
        "user_id": Field("string"),
        "age": Field("int"),
        "segment": Field("string"),
        "credit_limit": Field("float"),
        "signup_ts": Field("timestamp"),
        "updated_at": Field("timestamp"),
    },
)

profiles = BatchSource(
    name="profiles",
    schema=profiles_v1,
    path="sources/profiles/*.parquet",
    event_time="updated_at",
    created_time="updated_at",
    key="user_id",
    description="User profile snapshots exported nightly",
)

user_spend = FeatureView(
    name="user_spend",
    entity=user,
    source=transactions,
    transform={
        "amount_usd": "amount * CASE currency WHEN 'EUR' THEN 1.08 WHEN 'GBP' THEN 1.27 ELSE 1.0 END",
        "is_foreign": "CASE WHEN country <> 'US' THEN 1 ELSE 0 END",
    },
    aggregations=[
        Aggregation(column="*", function="count", window="5m", name="txn_count_5m"),
        Aggregation(column="*", function="count", window="1h", name="txn_count_1h"),
        Aggregation(column="amount_usd", function="sum", window="1h", name="amount_sum_1h"),
        Aggregation(column="amount_usd", function="mean", window="24h", name="amount_mean_24h"),
        Aggregation(column="amount_usd", function="max", window="24h", name="amount_max_24h"),
        Aggregation(column="is_foreign", function="sum", window="24h", name="foreign_count_24h"),
        Aggregation(column="amount_usd", function="stddev", window="7d", name="amount_std_7d"),
        Aggregation(column="amount_usd", function="mean", window="7d", name="amount_mean_7d"),
    ],
    description="How much and how often a user spends",
)

merchant_activity = FeatureView(
    name="merchant_activity",
    entity=merchant,
    source=transactions,
    aggregations=[
        Aggregation(column="*", function="count", window="1h", name="txn_count_1h"),
        Aggregation(column="amount", function="mean", window="24h", name="amount_mean_24h"),
        Aggregation(column="amount", function="min", window="24h", name="amount_min_24h"),
    ],
    description="Merchant traffic (state per source partition, merged at read time)",
)

user_last_txn = FeatureView(
    name="user_last_txn",
    entity=user,
    source=transactions,
    fields=["amount", "merchant_id", "country"],
    ttl="7d",
    description="The user's most recent transaction",
)

user_profile = FeatureView(
    name="user_profile",
    entity=user,
    source=profiles,
    fields=["age", "segment", "credit_limit"],
    ttl="400d",
    description="Latest profile snapshot",
)

fraud_detection = FeatureService(
    name="fraud_detection",
    features=[
        user_spend,
        "merchant_activity:txn_count_1h",
        "merchant_activity:amount_mean_24h",
        "user_last_txn:country",
        "user_profile:age",
        "user_profile:credit_limit",
    ],
    staleness={
        "user_profile:credit_limit": StalenessPolicy(max_age="400d", action="default"),
        "user_last_txn:country": StalenessPolicy(max_age="7d", action="serve"),
    },
    request_fields={"amount": "float"},
    derived={"amount_ratio": "amount / coalesce(user_spend__amount_mean_24h, amount)"},
    description="Features of the card-fraud model",
)
