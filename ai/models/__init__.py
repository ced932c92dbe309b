from .registry import AIModel, HealthStatus, ModelKind, ModelLink, Upstream

__all__ = ["AIModel", "HealthStatus", "ModelKind", "ModelLink", "Upstream"]
