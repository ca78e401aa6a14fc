"""The offline store: Parquet under the data dir, read and computed with DuckDB.

    layout     paths of the event log and batch sources, the log's bookkeeping columns
    events     a view's applied events as one relation (log or BatchSource), tie order, packed order key
    training   point-in-time training sets (windowed: range join + stat_sql; latest: one sort + streaming max)
    engine     DuckDB connections (memory, threads, spill dir) and progress for long queries

Materialization into Redis is `feature_store.materialize`; the user-facing
API is `feature_store.store.FeatureStore`. Modules are imported by name
(nothing is re-exported here, so importing `layout` does not load DuckDB).
"""
