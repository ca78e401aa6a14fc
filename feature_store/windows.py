"""Window and tile arithmetic: the contract's read-time semantics, in one place.

All times are integer epoch milliseconds (UTC). A tile of hop `h` starting at
`s` (a multiple of `h`) holds the events with `s <= event_time < s + h`.

The value of an aggregation with window `w` and hop `h`, read at time `t`,
covers every event with

    floor(t / h) * h - w + h  <=  event_time  <=  t

i.e. the current, partial tile (events up to and including `t`) plus the
`w / h - 1` whole tiles before it: at most `w` of history.
"""

from __future__ import annotations

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "default_hop_ms",
    "first_tile_start",
    "tile_start",
    "tile_start_sql",
    "window_lower_bound",
]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def default_hop_ms(window_ms: int) -> int:
    """The hop used when none is declared: 5 min up to 12 h, 1 h up to 12 d, else 1 d.

    A window shorter than that default is its own hop (one tile).
    """
    if window_ms <= 12 * HOUR_MS:
        hop = 5 * MINUTE_MS
    elif window_ms <= 12 * DAY_MS:
        hop = HOUR_MS
    else:
        hop = DAY_MS
    return min(hop, window_ms)


def tile_start(event_time_ms: int, hop_ms: int) -> int:
    """Start of the tile holding `event_time_ms` (floor to a multiple of the hop)."""
    return event_time_ms - event_time_ms % hop_ms


def tile_start_sql(column: str, hop_ms: int) -> str:
    """`tile_start` in SQL. DuckDB's % keeps the dividend's sign, so `t - t % hop` would round times before
    1970 up to the next tile, not down."""
    return f"({column} - ((({column} % {hop_ms}) + {hop_ms}) % {hop_ms}))"


def first_tile_start(t_ms: int, window_ms: int, hop_ms: int) -> int:
    """Start of the oldest tile a read at `t_ms` covers."""
    return tile_start(t_ms, hop_ms) - window_ms + hop_ms


def window_lower_bound(t_ms: int, window_ms: int, hop_ms: int) -> int:
    """Smallest event time (inclusive) a read at `t_ms` aggregates; the upper bound is `t_ms` itself."""
    return first_tile_start(t_ms, window_ms, hop_ms)
