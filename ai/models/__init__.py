from .chat import Conversation, Message, MessageRole, MessageStatus
from .registry import AIModel, HealthCheck, HealthStatus, ModelKind, ModelLink, Upstream
from .usage import LimitCounter, RollupPeriod, UsageEvent, UsageRollup, UsageStatus

__all__ = [
    "AIModel",
    "Conversation",
    "Message",
    "MessageRole",
    "MessageStatus",
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
