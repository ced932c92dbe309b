"""Cached, read-only views of the registry for the request path.

Each loader runs a few ORM queries in one thread hop; the results are frozen
snapshots kept in ``panel.localcache.registry_cache`` until a change to the
underlying rows bumps the shared generation (see ``ai.signals``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from django.db.models import Prefetch

from accounts.models import TIER_RANK, User
from accounts.selectors import KeyInfo
from orgs.models import Wallet
from panel import conf
from panel.localcache import registry_cache
from panel.models import SiteSettings
from panel.snapshot import snapshot_of

from ..instances.backends import served_model_id
from ..instances.client import instance_base_url, instance_origin
from ..instances.nodes import instance_hosts
from ..models import AIModel, HealthStatus, Instance, InstanceStatus, ModelLink, Upstream
from .health import upstream_health


@dataclass(frozen=True, slots=True)
class UpstreamInfo:
    id: int
    name: str
    base_url: str
    api_key: str = field(repr=False)
    upstream_model_id: str
    priority: int
    weight: int
    connect_timeout: float
    first_byte_timeout: float
    total_timeout: float
    idle_timeout: float  # a stream: the longest wait for its next event
    health_status: str  # its effective health (ai.selectors.health.upstream_health)
    probed_ok_at: float | None = None  # epoch of the last probe, when it succeeded
    # A local model server's upstream: its instance, as it was at load time.
    instance_id: int | None = None
    instance_name: str = ""
    instance_status: str = ""
    instance_node: str = ""
    # Started by the gateway (``ai.gateway.starts``) when a request needs it and it is not
    # running.
    on_demand_start: bool = False
    # Whether the router may send it requests: not an instance, or a running one with a port.
    is_routable: bool = True
    # The protocol it speaks ("openai" or "anthropic": ai.models.ApiStyle), and whether it
    # serves the Responses API; the routes that pass through to it (ai.gateway.pipeline.Native).
    api_style: str = "openai"
    speaks_responses: bool = False

    @property
    def is_startable(self) -> bool:
        """An instance that does not run now but that a request may start."""
        return self.instance_id is not None and self.on_demand_start and not self.is_routable


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    display_name: str
    kind: str
    is_active: bool
    tags: tuple[str, ...]
    config: dict
    input_price_per_million: Decimal
    output_price_per_million: Decimal
    price_per_image: Decimal
    response_cache_ttl: int | None  # seconds; None or 0: not cached
    created: int
    upstreams: tuple[UpstreamInfo, ...]  # the enabled ones, by priority
    routable: tuple[UpstreamInfo, ...]  # of those, the ones the router may try
    cached_input_price_per_million: Decimal | None = None  # None: the input price
    cache_write_price_per_million: Decimal | None = None  # None: the input price
    is_listed: bool = False  # in every signed-in user's catalog (seed 000's /api/ai/models)

    @property
    def startable(self) -> tuple[UpstreamInfo, ...]:
        """Its upstreams that do not run now but that a request may start, by priority."""
        return tuple(u for u in self.upstreams if u.is_startable)

    @property
    def max_output_tokens(self) -> int | None:
        return self.config.get("max_output_tokens")


@dataclass(frozen=True, slots=True)
class LinkInfo:
    id: int
    model_id: int
    user_id: int | None
    organisation_id: int | None
    is_enabled: bool
    expires_at: datetime | None
    is_default: bool
    limits: dict
    is_wallet_billed: bool = False
    wallet_id: int | None = None
    priority: int = 0  # instance scheduling: a higher one is evicted later

    def is_usable(self, now: datetime) -> bool:
        return self.is_enabled and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class Registry:
    by_name: dict[str, ModelInfo]
    by_id: dict[int, ModelInfo]


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    username: str
    is_active: bool
    is_staff: bool
    tier: str
    org_tiers: dict[int, str]
    links: tuple[LinkInfo, ...]

    @property
    def best_tier_rank(self) -> int:
        return max(TIER_RANK.get(t, 0) for t in (self.tier, *self.org_tiers.values()))


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """An instance as the llama.cpp passthrough routes see it."""

    id: int
    name: str
    node: str
    backend: str
    organisation_id: int | None
    status: str
    on_demand_start: bool
    address: str | None  # its server's root URL (node address and port); None without a port
    model_ids: frozenset[int]  # the models it serves (through an enabled upstream)

    @property
    def is_routable(self) -> bool:
        return self.status == InstanceStatus.RUNNING and self.address is not None


def _upstream_info(upstream: Upstream, model: AIModel, hosts: dict[str, str]) -> UpstreamInfo:
    health = upstream_health(upstream)
    probed_ok = upstream.last_checked_at and HealthStatus.is_serving(health)
    values = {
        "base_url": upstream.base_url.rstrip("/"),
        "upstream_model_id": upstream.provider_model_id or model.name,
        "health_status": health,
        "probed_ok_at": upstream.last_checked_at.timestamp() if probed_ok else None,
        "instance_name": "",
        "instance_status": "",
        "instance_node": "",
        "on_demand_start": False,
        "is_routable": True,
    }
    instance = upstream.instance if upstream.instance_id else None
    if instance is not None:
        # Its address is its node's and its port, known here: nothing left for the request.
        base_url = instance_base_url(instance, hosts)
        values.update(
            base_url=base_url or "",
            upstream_model_id=upstream.provider_model_id or served_model_id(instance),
            instance_name=instance.name,
            instance_status=instance.status,
            instance_node=instance.node,
            on_demand_start=instance.on_demand_start,
            is_routable=instance.status == InstanceStatus.RUNNING and base_url is not None,
        )
    return snapshot_of(UpstreamInfo, upstream, **values)


def _model_info(model: AIModel, hosts: dict[str, str]) -> ModelInfo:
    upstreams = sorted(model.upstreams.all(), key=lambda u: (u.priority, u.id))
    infos = tuple(_upstream_info(u, model, hosts) for u in upstreams if u.is_enabled)
    return snapshot_of(
        ModelInfo,
        model,
        display_name=model.display_name or model.name,
        tags=tuple(model.tags or ()),
        config=dict(model.config or {}),
        created=int(model.created_at.timestamp()),
        upstreams=infos,
        routable=tuple(u for u in infos if u.is_routable),
    )


def registry_load() -> Registry:
    """The registry, read now (sync, uncached); the request path uses ``registry_get``."""
    upstreams = Prefetch("upstreams", queryset=Upstream.objects.select_related("instance"))
    models = list(AIModel.objects.prefetch_related(upstreams).order_by("name"))
    # The nodes' hosts, read only when some upstream is an instance.
    is_local = any(u.instance_id for model in models for u in model.upstreams.all())
    hosts = instance_hosts() if is_local else {}
    infos = [_model_info(model, hosts) for model in models]
    return Registry(by_name={m.name: m for m in infos}, by_id={m.id: m for m in infos})


def instance_info_load(name: str) -> InstanceInfo | None:
    """An instance's snapshot, read now (sync, uncached); routes use ``instance_info_get``."""
    instance = Instance.objects.filter(name=name).first()
    if instance is None:
        return None
    served = instance.upstreams.filter(is_enabled=True).values_list("model_id", flat=True)
    return snapshot_of(
        InstanceInfo,
        instance,
        address=instance_origin(instance),
        model_ids=frozenset(served),
    )


def _owner(row: ModelLink | Wallet) -> tuple[str, int]:
    """Whom a link or a wallet belongs to: a user, else an organisation."""
    return ("user", row.user_id) if row.user_id else ("org", row.organisation_id)


def user_info_load(user_id: int) -> UserInfo | None:
    """A user's snapshot, read now (sync, uncached); the request path uses ``user_info_get``."""
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        return None
    org_tiers = dict(user.memberships.values_list("organisation_id", "organisation__tier"))
    links = ModelLink.objects.filter(user_id=user_id) | ModelLink.objects.filter(
        organisation_id__in=list(org_tiers)
    )
    # The user's own links come first: they win over an organisation's link.
    ordered = sorted(links, key=lambda link: (link.user_id is None, link.id))
    owned = Wallet.objects.filter(user_id=user_id) | Wallet.objects.filter(
        organisation_id__in=list(org_tiers)
    )
    wallets = {_owner(wallet): wallet.id for wallet in owned}
    infos = tuple(
        snapshot_of(LinkInfo, link, wallet_id=wallets.get(_owner(link))) for link in ordered
    )
    return snapshot_of(UserInfo, user, org_tiers=org_tiers, links=infos)


def _load_ai_enabled() -> bool:
    # Read without creating the row: a write here would invalidate the cache it fills.
    flag = SiteSettings.objects.filter(pk=1).values_list("is_ai_enabled", flat=True).first()
    return True if flag is None else flag


async def registry_get() -> Registry:
    return await registry_cache.get("registry", registry_load)


async def instance_info_get(name: str) -> InstanceInfo | None:
    return await registry_cache.get(("instance", name), instance_info_load, name)


async def user_info_get(user_id: int) -> UserInfo | None:
    return await registry_cache.get(("user", user_id), user_info_load, user_id)


async def ai_enabled_get() -> bool:
    return await registry_cache.get("ai_enabled", _load_ai_enabled)


def usable_links(user: UserInfo, key: KeyInfo | None) -> list[LinkInfo]:
    """The caller's links that may be used now: enabled, unexpired, within the key's org."""
    now = conf.now()  # on every request: USE_TZ as a hot setting
    org_id = key.organisation_id if key else None
    return [
        link
        for link in user.links
        if link.is_usable(now) and (org_id is None or link.organisation_id in (None, org_id))
    ]


def models_for_caller(registry: Registry, user: UserInfo, key: KeyInfo | None) -> list[ModelInfo]:
    """The active models the caller may use, by name."""
    allowed = key.allowed_model_ids if key else frozenset()
    seen: dict[int, ModelInfo] = {}
    for link in usable_links(user, key):
        model = registry.by_id.get(link.model_id)
        if not model or not model.is_active or (allowed and model.id not in allowed):
            continue
        if model_for_key(model, key) is not None:
            seen.setdefault(model.id, model)
    return sorted(seen.values(), key=lambda m: m.name)


def models_in_catalog(registry: Registry, user: UserInfo, key: KeyInfo | None) -> list[ModelInfo]:
    """Seed 000's catalog: the models the caller may use, and the active listed ones that
    anyone signed in may see (not use); a key's model scope narrows both."""
    seen = {m.id: m for m in models_for_caller(registry, user, key)}
    allowed = key.allowed_model_ids if key else frozenset()
    for model in registry.by_id.values():
        if not model.is_listed or not model.is_active or model.id in seen:
            continue
        if (allowed and model.id not in allowed) or model_for_key(model, key) is None:
            continue
        seen[model.id] = model
    return sorted(seen.values(), key=lambda m: m.name)


def model_for_key(model: ModelInfo, key: KeyInfo | None) -> ModelInfo | None:
    """``model`` as ``key`` may use it: a per-instance key only through its own instances.

    Such a key is meant for local instances, so the model's other upstreams (remote
    ones and other instances) are left out too; None when none of its upstreams is left.
    """
    if key is None or key.instance_ids is None:
        return model
    upstreams = tuple(
        u
        for u in model.upstreams
        if u.instance_id is not None and key.may_use_instance(u.instance_id)
    )
    if not upstreams:
        return None
    if len(upstreams) == len(model.upstreams):
        return model
    routable = tuple(u for u in upstreams if u.is_routable)
    return replace(model, upstreams=upstreams, routable=routable)


def _load_instance_roles(user_id: int) -> frozenset[str]:
    """What the user may do to every instance (the model_manager group): view, change."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return frozenset()
    return frozenset(a for a in ("view", "change") if user.has_perm(f"ai.{a}_instance"))


@dataclass(frozen=True, slots=True)
class InstanceAccess:
    """An instance a caller may use, and through what."""

    instance: InstanceInfo
    link: LinkInfo | None  # the caller's link to a model it serves (limits, wallet, priority)
    model: ModelInfo | None  # that model, else the first it serves (usage is recorded on it)


async def instance_for_caller(
    *, user: UserInfo, key: KeyInfo | None, name: str, action: str
) -> InstanceAccess | None:
    """The instance ``name`` if the caller may use it; None otherwise, as for no such name.

    Staff and instance managers (``ai.<action>_instance``, as the instances API asks) use
    every instance; members of the organisation that owns one use it (a key of another
    organisation does not); an operator's instance (no organisation) is used through a
    usable link to a model it serves.
    """
    instance = await instance_info_get(name)
    if instance is None:
        return None
    registry = await registry_get()
    allowed = key.allowed_model_ids if key else frozenset()
    link = next(
        (
            lk
            for lk in usable_links(user, key)
            if lk.model_id in instance.model_ids and (not allowed or lk.model_id in allowed)
        ),
        None,
    )
    if instance.organisation_id is not None:
        key_org = key.organisation_id if key else None
        is_user = instance.organisation_id in user.org_tiers and key_org in (
            None,
            instance.organisation_id,
        )
    else:
        is_user = link is not None
    if not (is_user or user.is_staff or action in await _instance_roles_get(user.id)):
        return None
    served = sorted(instance.model_ids)
    model = registry.by_id.get(link.model_id if link else served[0]) if served else None
    return InstanceAccess(instance=instance, link=link, model=model)


async def _instance_roles_get(user_id: int) -> frozenset[str]:
    return await registry_cache.get(("instance_roles", user_id), _load_instance_roles, user_id)
