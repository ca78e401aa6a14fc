"""River drift detectors, one per watched stream (a feature, the predictions, the error rate).

`StreamDetectors.update(stream, value)` feeds one value and answers True
when that stream's detector signals a change. Detectors are built lazily from
a `DetectorSpec`, so a new feature needs no setup, and the whole object
pickles (river detectors do), so a worker can snapshot and restore it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from river import drift

from feature_store.errors import DefinitionError

__all__ = ["DetectorSpec", "StreamDetectors", "StreamState"]


@dataclass(frozen=True, kw_only=True)
class DetectorSpec:
    """Which river detector and its parameters (`river.drift.ADWIN` or `river.drift.PageHinkley`)."""

    kind: Literal["adwin", "page_hinkley"] = "adwin"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("adwin", "page_hinkley"):
            raise DefinitionError(f"detector kind {self.kind!r} is unknown; use 'adwin' or 'page_hinkley'")

    def build(self) -> Any:
        if self.kind == "adwin":
            return drift.ADWIN(**self.params)  # type: ignore[no-untyped-call]  # river is untyped
        return drift.PageHinkley(**self.params)


@dataclass
class StreamState:
    """What we know about one watched stream."""

    seen: int = 0
    drifts: int = 0
    last_drift_at: int | None = None  # value index (1-based) of the last detected change
    last_value: float | None = None


class StreamDetectors:
    """One river detector per named stream, built from a spec on first use (`specs[stream]` or `default`)."""

    def __init__(self, default: DetectorSpec | None = None, specs: dict[str, DetectorSpec] | None = None) -> None:
        self.default = default or DetectorSpec()
        self.specs = dict(specs or {})
        self._detectors: dict[str, Any] = {}
        self.states: dict[str, StreamState] = {}

    def update(self, stream: str, value: float) -> bool:
        """Feed one value; True when this value made the stream's detector signal drift."""
        detector = self._detectors.get(stream)
        if detector is None:
            detector = self._detectors[stream] = self.specs.get(stream, self.default).build()
            self.states[stream] = StreamState()
        state = self.states[stream]
        detector.update(float(value))
        state.seen += 1
        state.last_value = float(value)
        if detector.drift_detected:
            state.drifts += 1
            state.last_drift_at = state.seen
            return True
        return False

    def streams(self) -> list[str]:
        return sorted(self.states)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: {"seen": s.seen, "drifts": s.drifts, "last_drift_at": s.last_drift_at,
                       "detector": self.specs.get(name, self.default).kind}
                for name, s in sorted(self.states.items())}
