from .registry import AIModel, HealthCheck, HealthStatus, ModelKind, ModelLink, Upstream
from .usage import LimitCounter, RollupPeriod, UsageEvent, UsageRollup, UsageStatus

__all__ = [
    "AIModel",
    "HealthCheck",
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
