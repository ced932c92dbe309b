from .registry import AIModel, HealthStatus, ModelKind, ModelLink, Upstream
from .usage import LimitCounter, RollupPeriod, UsageEvent, UsageRollup, UsageStatus

__all__ = [
    "AIModel",
    "HealthStatus",
    "LimitCounter",
    "ModelKind",
    "ModelLink",
    "Upstream",
    "RollupPeriod",
    "UsageEvent",
    "UsageRollup",
    "UsageStatus",
]
