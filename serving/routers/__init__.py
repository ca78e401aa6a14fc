"""One APIRouter per resource: features, predict, push, models, health, metrics, ui (dashboard)."""
