"""The offline store: Parquet under the data dir, read and computed with DuckDB."""
