"""The stream path: the worker (a Faust app hosting the batch materializer), dead letters, producer SDK."""

from __future__ import annotations

__all__: list[str] = []
