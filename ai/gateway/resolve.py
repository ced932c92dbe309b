"""Step 2: which model the caller means, and the link that grants it."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.authentication import Identity
from accounts.models import APIKey
from panel.errors import (
    AuthenticationFailed,
    ErrorCode,
    InvalidModelType,
    ModelNotAvailable,
    ModelNotFound,
    ModelStarting,
    PermissionDenied,
)

from ..models import InstanceStatus, ModelKind
from ..selectors import (
    KeyInfo,
    LinkInfo,
    ModelInfo,
    UserInfo,
    model_for_key,
    models_for_caller,
    registry_get,
    usable_links,
    user_info_get,
)

# Which model kinds each route serves.
CHAT = frozenset({ModelKind.CHAT})
COMPLETION = frozenset({ModelKind.COMPLETION, ModelKind.CHAT})
EMBEDDING = frozenset({ModelKind.EMBEDDING})
IMAGE = frozenset({ModelKind.IMAGE})


@dataclass(frozen=True, slots=True)
class Resolution:
    user: UserInfo
    key: KeyInfo | None
    model: ModelInfo
    link: LinkInfo

    @property
    def organisation_id(self) -> int | None:
        """The organisation billed: the link's, else the key's."""
        return self.link.organisation_id or (self.key.organisation_id if self.key else None)


async def caller_get(identity: Identity) -> UserInfo:
    """The caller's cached user snapshot; an inactive or deleted user is not authenticated."""
    user = await user_info_get(identity.user_id)
    if user is None or not user.is_active:
        raise AuthenticationFailed("This account is disabled.")
    return user


async def resolve(
    *,
    identity: Identity,
    kinds: frozenset[str],
    model_name: str | None = None,
    model_id: int | None = None,
) -> Resolution:
    """The model named by ``model_id``, else ``model_name``, else the caller's default."""
    user = await caller_get(identity)
    registry = await registry_get()
    key = identity.key
    links = usable_links(user, key)
    if model_id is not None:
        model = registry.by_id.get(model_id)
        wanted = str(model_id)
    elif model_name:
        model = registry.by_name.get(model_name)
        wanted = model_name
    else:
        model, wanted = _default_model(registry.by_id, links), None
    link = next((lk for lk in links if model and lk.model_id == model.id), None)
    if model is None or link is None:
        raise _not_found(wanted, models_for_caller(registry, user, key))
    if key and key.allowed_model_ids and model.id not in key.allowed_model_ids:
        raise PermissionDenied(
            f"This API key may not use the model '{model.name}'.",
            param="model",
            code=ErrorCode.MODEL_NOT_ALLOWED,
        )
    model = _as_key_may_use(model, key)
    _check_usable(model, kinds)
    return Resolution(user=user, key=key, model=model, link=link)


def key_may_use_instance(key: KeyInfo | APIKey | None, instance_id: int) -> bool:
    """Whether the caller's key (its snapshot, or its row on the management API) may use
    the instance: any key with allow_all may, and so may a session (None)."""
    return key is None or key.may_use_instance(instance_id)


def _as_key_may_use(model: ModelInfo, key: KeyInfo | None) -> ModelInfo:
    """The model with only the upstreams a per-instance key may use; 403 when none is left."""
    seen = model_for_key(model, key)
    if seen is None:
        raise PermissionDenied(
            f"This API key may not use any instance that serves the model '{model.name}'.",
            param="model",
            code=ErrorCode.PERMISSION_DENIED,
        )
    return seen


def _default_model(by_id: dict[int, ModelInfo], links: list[LinkInfo]) -> ModelInfo | None:
    # links are ordered with the user's own first, so their default wins over an org's.
    default = next((link for link in links if link.is_default), None)
    return by_id.get(default.model_id) if default else None


def _not_found(wanted: str | None, available: list[ModelInfo]) -> ModelNotFound:
    message = (
        f"The model '{wanted}' does not exist or you do not have access to it."
        if wanted
        else "No model was given and no default model is assigned to you."
    )
    return ModelNotFound(message, param="model", available_models=[m.name for m in available])


def _check_usable(model: ModelInfo, kinds: frozenset[str]) -> None:
    if model.kind not in kinds:
        raise InvalidModelType(
            f"Model '{model.name}' is a {model.kind} model and cannot be used with this endpoint.",
            param="model",
        )
    if not model.is_active:
        raise ModelNotAvailable(f"Model '{model.name}' is not active.", param="model")
    if not model.upstreams:
        raise ModelNotAvailable(f"Model '{model.name}' has no enabled upstream.", param="model")
    if not model.routable and not model.startable:
        starting = (InstanceStatus.STARTING, InstanceStatus.RESTARTING)
        if any(u.instance_status in starting for u in model.upstreams):
            raise ModelStarting(_not_running(model), param="model")
        raise ModelNotAvailable(_not_running(model), param="model")


def _not_running(model: ModelInfo) -> str:
    """Why none of the model's upstreams can be tried: its instances are not running."""
    reasons = dict.fromkeys(
        f"Instance '{u.instance_name}' has no port yet."
        if u.instance_status == InstanceStatus.RUNNING
        else f"Instance '{u.instance_name}' is {u.instance_status}."
        for u in model.upstreams
    )
    return " ".join(reasons)
