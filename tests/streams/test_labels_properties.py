"""The label join against a brute-force oracle on random interleavings (hypothesis, real Redis).

Random sequences of predictions and labels over a few request ids, with
labels that overtake their prediction, duplicates (another label for a joined
request), replays (the same label offset again) and labels for requests that
never get a prediction; then one sweep after every wait has expired.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.training.live import LiveKeys
from streams.labels import JoinConfig, LabelJoiner

T0 = 1_767_225_600_000
_PREFIXES = itertools.count()

Op = tuple[str, int, int]  # ("pred", rid, 0) | ("label", rid, offset) | ("replay", index of an earlier label, 0)
ops = st.lists(st.one_of(st.tuples(st.just("pred"), st.integers(0, 4), st.just(0)),
                         st.tuples(st.just("label"), st.integers(0, 5), st.just(0)),
                         st.tuples(st.just("replay"), st.integers(0, 30), st.just(0))), max_size=25)


def oracle(sequence: list[Op]) -> tuple[list[str], list[str]]:
    """Outcomes of each label call, then of the final sweep, word for word from the module's rules."""
    preds: set[int] = set()
    joined_by: dict[int, str] = {}
    pending: dict[str, int] = {}
    labels: list[tuple[int, int]] = []
    outcomes: list[str] = []

    def join(rid: int, marker: str) -> str:
        if rid not in joined_by:
            joined_by[rid] = marker
            return "joined"
        return "replay" if joined_by[rid] == marker else "duplicate"

    for kind, a, _ in sequence:
        if kind == "pred":
            preds.add(a)
            continue
        if kind == "replay":
            if not labels:
                continue
            rid, offset = labels[a % len(labels)]
        else:
            rid, offset = a, len(labels)
            labels.append((rid, offset))
        member = f"s:{offset}"
        if rid in preds:
            outcomes.append(join(rid, member))
        else:
            pending[member] = rid
            outcomes.append("pending")
    swept = [join(pending[m], f"pending:{m}") if pending[m] in preds else "orphan" for m in sorted(pending)]
    return outcomes, swept


async def _run(url: str, sequence: list[Op]) -> tuple[list[str], list[str]]:
    client = aioredis.Redis.from_url(url)
    joiner = LabelJoiner(client, LiveKeys(f"p{next(_PREFIXES)}"), JoinConfig(wait_s=1.0))
    labels: list[tuple[int, int]] = []
    outcomes: list[str] = []
    try:
        for kind, a, _ in sequence:
            if kind == "pred":
                await joiner.add_prediction({
                    "request_id": f"r{a}", "model": "m", "model_version": 1, "served_at": T0,
                    "entity_keys": orjson.dumps({"user_id": "u"}).decode(), "features": "{}", "prediction": 0.5,
                    "fallback": False, "service": ""})
                continue
            if kind == "replay":
                if not labels:
                    continue
                rid, offset = labels[a % len(labels)]
            else:
                rid, offset = a, len(labels)
                labels.append((rid, offset))
            label: dict[str, Any] = {"request_id": f"r{rid}", "event_time": T0, "label": 1.0}
            got = await joiner.join(label, source="s", offset=offset, now_ms=T0)
            outcomes.append(got.outcome)
        swept = [o.outcome for o in await joiner.sweep(now_ms=T0 + 2000)]
    finally:
        await client.aclose()
    return outcomes, swept


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_label_join_matches_the_oracle(redis_db_url: str, sequence: list[Op]) -> None:
    assert asyncio.run(_run(redis_db_url, sequence)) == oracle(sequence)
