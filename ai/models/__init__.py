from .chat import Conversation, Message, MessageRole, MessageStatus
from .instances import Backend, DesiredState, Instance, InstanceStatus, Node
from .registry import AIModel, ApiStyle, HealthCheck, HealthStatus, ModelKind, ModelLink, Upstream
from .responses import CachedResponse, StoredResponse
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
    "ApiStyle",
    "Backend",
    "CachedResponse",
    "DesiredState",
    "Instance",
    "InstanceStatus",
    "Node",
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
    "StoredResponse",
    "UsageEvent",
    "UsageRollup",
    "UsageStatus",
]
