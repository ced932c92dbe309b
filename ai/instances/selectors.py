"""Reads of instances for the API and the admin (operators only: no tenancy below them)."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from panel.errors import ErrorCode, InvalidRequest, NotFound

from ..models import Instance, Upstream
from ..models.instances import NAME_RE


def instances_list() -> QuerySet[Instance]:
    """Every instance, by name, with the upstreams (and models) that serve it."""
    upstreams = Upstream.objects.select_related("model").order_by("id")
    instances = Instance.objects.select_related("organisation")
    return instances.prefetch_related(Prefetch("upstreams", queryset=upstreams))


def is_valid_name(name: str) -> bool:
    """A DNS label (``fullmatch``: ``$`` alone would let a trailing newline through)."""
    return NAME_RE.fullmatch(name) is not None


def name_check(name: str) -> None:
    """Raises the API's 400 invalid_name for a name no instance can have."""
    if not is_valid_name(name):
        raise InvalidRequest(
            "An instance name is 1 to 63 lower-case letters, digits and hyphens, starting and "
            "ending with a letter or digit.",
            param="name",
            code=ErrorCode.INVALID_NAME,
        )


def instance_get(*, name: str) -> Instance:
    """The instance named ``name``; 400 for a name no instance can have, else 404."""
    name_check(name)
    instance = instances_list().filter(name=name).first()
    if instance is None:
        raise NotFound(f"No instance is named '{name}'.", code=ErrorCode.INSTANCE_NOT_FOUND)
    return instance


def registered_model(instance: Instance) -> str | None:
    """The public name of the (first) model the instance serves, if any."""
    upstreams = list(instance.upstreams.all())
    return upstreams[0].model.name if upstreams else None
