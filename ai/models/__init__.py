from .registry import AIModel, HealthStatus, ModelKind, ModelLink, Upstream
from .usage import UsageEvent, UsageStatus

__all__ = [
    "AIModel",
    "HealthStatus",
    "ModelKind",
    "ModelLink",
    "Upstream",
    "UsageEvent",
    "UsageStatus",
]
