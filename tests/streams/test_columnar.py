"""The worker's columnar validation and classification against the record-by-record rules (brute force)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from feature_store.aggregates import NO_ORDER
from feature_store.definitions import StreamSource
from schemas import EventSchema
from streams.batch import APPLIED, INVALID, LATE, classify, log_schema, log_table
from tests.schemas.test_properties import PROPERTY_SETTINGS, events_of, mutate, schemas
from tests.streams.support import EVENTS_SCHEMA, events_repo

# raw encodings the columnar parser might read differently from orjson + the validator
_TWEAKS = [
    lambda b: b.replace(b'":', b'": ').replace(b",", b", "),  # spaces: still one line, still valid
    lambda b: b"\xef\xbb\xbf" + b,  # a byte order mark (orjson refuses it)
    lambda b: b + b" null",  # two documents in one record
    lambda b: b + b" " + b,
    lambda b: b[:-1] + b',"x":NaN}',
    lambda b: b.replace(b"{", b"{\n", 1),  # a record over two lines
    lambda b: b + b"\r",
    lambda b: b.replace(b"}", b',"' + b[2:b.index(b'"', 2)] + b'":null}', 1) if b.startswith(b'{"') else b,
    lambda b: b.replace(b'"', b'"\xff', 1) if b.count(b'"') > 3 else b,  # invalid UTF-8
    lambda b: b.replace(b".", b"e0", 1),
    lambda b: b"",
    lambda b: b"null",
    lambda b: b"  " + b,
]
_LITERALS = [b"{}", b"[]", b"null", b"{", b"}", b'{"a": }', b"{}{}", b"{} {}", b'{"\\ud800":1}']


def _records(data: st.DataObject, schema: EventSchema) -> list[bytes | None]:
    """A batch: usually all good compact JSON (the columnar path), sometimes salted with odd records."""
    n = data.draw(st.integers(1, 10))
    events = [data.draw(events_of(schema)) for _ in range(n)]
    records: list[bytes | None] = []
    for event in events:
        try:
            records.append(orjson.dumps(event))
        except orjson.JSONEncodeError:  # an int beyond 64 bits
            records.append(orjson.dumps({k: v for k, v in event.items() if not isinstance(v, int)}))
    if data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, n - 1))
            kind = data.draw(st.sampled_from(["tweak", "mutate", "literal", "none"]))
            if kind == "tweak" and records[i] is not None:
                records[i] = data.draw(st.sampled_from(_TWEAKS))(records[i])
            elif kind == "mutate":
                broken, _ = mutate(data, schema, events[i])
                try:
                    records[i] = orjson.dumps(broken)
                except orjson.JSONEncodeError:
                    records[i] = b"{"
            elif kind == "literal":
                records[i] = data.draw(st.sampled_from(_LITERALS))
            else:
                records[i] = None
    return records


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@PROPERTY_SETTINGS
@given(data=st.data(), schema=schemas)
def test_validate_records_agrees_with_validate_batch(data: st.DataObject, schema: EventSchema) -> None:
    records = _records(data, schema)
    got = schema.validate_records(records)
    want = schema.validate_batch([b"null" if r is None else r for r in records])
    assert got.invalid == want.invalid
    assert got.table.num_rows == len(records)
    rows = got.table.to_pylist()
    valid = dict(zip(want.valid_index, want.valid, strict=True))
    for index, row in enumerate(rows):
        expected = valid.get(index, dict.fromkeys(schema.columns))
        assert list(row) == list(expected)
        assert all(_same(row[k], expected[k]) for k in row), (index, records[index], row, expected)


def _reference(values: list[bytes | None], offsets: list[int], watermark: int, now: int, lateness: int,
               tolerance: int) -> tuple[list[str], list[int | None], list[str | None], int, list[int]]:
    """The rules of streams.batch, one record at a time."""
    result = EVENTS_SCHEMA.validate_batch([b"null" if v is None else v for v in values])
    status, times, reasons = [INVALID] * len(values), [None] * len(values), [None] * len(values)
    dlq = [i for i, _ in result.invalid]
    for i, reason in result.invalid:
        reasons[i] = reason
    wm = watermark
    for i, event in zip(result.valid_index, result.valid, strict=True):
        et = event["ts"]
        if et > now + tolerance:
            reasons[i] = (f"ts: {et} is more than {tolerance} ms ahead of the worker clock ({now}); fix the "
                          "producer's clock or the timestamp")
            dlq.append(i)
        elif wm != NO_ORDER and et < wm - lateness:
            status[i], times[i] = LATE, et
            reasons[i] = f"ts: {et} is older than the watermark {wm} minus allowed lateness {lateness} ms"
        else:
            status[i], times[i] = APPLIED, et
            wm = max(wm, et)
    return status, times, reasons, wm, sorted(dlq)


_T0 = 1_767_225_600_000
_event = st.fixed_dictionaries({
    "id": st.sampled_from(["a", "b"]), "user": st.sampled_from(["u1", "u2"]), "shop": st.just("s"),
    "amount": st.none() | st.floats(-10, 10), "ts": st.integers(_T0 - 200_000, _T0 + 400_000),
})


@PROPERTY_SETTINGS
@given(events=st.lists(_event | st.sampled_from([b"{}", b"null", b'{"id": 1}']), max_size=30),
       watermark=st.sampled_from([NO_ORDER, _T0 - 100_000, _T0, _T0 + 100_000]))
def test_classify_agrees_with_the_record_by_record_rules(events: list[Any], watermark: int) -> None:
    source = events_repo("unused").sources["events"]  # lateness 1m, future tolerance 5m
    values = [e if isinstance(e, bytes) else orjson.dumps(e) for e in events]
    offsets = list(range(10, 10 + len(values)))
    c = classify(source, values, offsets, watermark, _T0)
    status, times, reasons, wm, dlq = _reference(values, offsets, watermark, _T0, source.allowed_lateness_ms,
                                                  source.future_tolerance_ms)
    assert c.status == status
    assert c.event_times == times
    assert c.watermark == wm
    assert c.dlq == dlq
    assert c.reasons == reasons
    log = log_table(log_schema(source), c, 0, 3, 99).to_pylist()
    assert [row["__status"] for row in log] == status
    assert [row["__offset"] for row in log] == offsets


@PROPERTY_SETTINGS
@given(data=st.data(), schema=schemas)
def test_validating_groups_together_equals_validating_each(data: st.DataObject, schema: EventSchema) -> None:
    """The worker validates a fetch's partitions in one call: same verdicts, reasons and rows as one call each."""
    groups = [_records(data, schema) for _ in range(data.draw(st.integers(1, 4)))]
    got = schema.validate_record_groups(groups)
    assert len(got) == len(groups)
    for group, checked in zip(groups, got, strict=True):
        want = schema.validate_records(group)
        assert checked.invalid == want.invalid
        assert checked.table.schema == want.table.schema
        rows, expected = checked.table.to_pylist(), want.table.to_pylist()
        assert len(rows) == len(expected) == len(group)
        assert all(_same(row[k], e[k]) for row, e in zip(rows, expected, strict=True) for k in e)


@PROPERTY_SETTINGS
@given(partitions=st.lists(st.lists(_event | st.sampled_from([b"{}", b"null", b'{"id": 1}']), min_size=1,
                                    max_size=12), min_size=1, max_size=4),
       watermark=st.sampled_from([NO_ORDER, _T0 - 100_000, _T0, _T0 + 100_000]))
def test_classify_with_a_fetch_validated_once(partitions: list[list[Any]], watermark: int) -> None:
    """classify given its slice of the fetch's validation equals classify validating the partition itself."""
    source = events_repo("unused").sources["events"]
    assert isinstance(source, StreamSource)
    groups = [[e if isinstance(e, bytes) else orjson.dumps(e) for e in events] for events in partitions]
    for values, checked in zip(groups, source.schema.validate_record_groups(groups), strict=True):
        offsets = list(range(5, 5 + len(values)))
        got = classify(source, values, offsets, watermark, _T0, checked)
        want = classify(source, values, offsets, watermark, _T0)
        assert (got.status, got.reasons, got.event_times, got.watermark, got.dlq) == \
            (want.status, want.reasons, want.event_times, want.watermark, want.dlq)
        assert got.rows(source).equals(want.rows(source))
        schema = log_schema(source)
        assert log_table(schema, got, 0, 1, 7).equals(log_table(schema, want, 0, 1, 7))
