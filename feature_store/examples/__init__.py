"""Example feature repos shipped with featurestream (used by `init`, the demo, tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CARD_FRAUD"]

CARD_FRAUD = Path(__file__).parent / "card_fraud"
"""Folder of the card-fraud example repo (`features.py`)."""
