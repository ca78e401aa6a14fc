"""The HTTP serving layer: features, predictions, push, models, telemetry and auth.

`create_app(settings)` builds the FastAPI app; `featurestream serve` runs it.
Imports `feature_store` and `schemas`, never `streams`.
"""

from __future__ import annotations

from serving.app import create_app
from serving.state import ServingConfig

__all__ = ["ServingConfig", "create_app"]
