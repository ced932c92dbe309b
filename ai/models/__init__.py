from .chat import Conversation, Message, MessageRole, MessageStatus
from .registry import AIModel, HealthCheck, HealthStatus, ModelKind, ModelLink, Upstream
from .usage import (
    GatewayProcess,
    InFlightAdmission,
    LimitCounter,
    RollupPeriod,
    UsageEvent,
    UsageRollup,
    UsageStatus,
)

__all__ = [
    "AIModel",
    "Conversation",
    "Message",
    "MessageRole",
    "MessageStatus",
    "GatewayProcess",
    "HealthCheck",
    "InFlightAdmission",
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
