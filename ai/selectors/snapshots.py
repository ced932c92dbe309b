"""Cached, read-only views of the registry for the request path.

Each loader runs a few ORM queries in one thread hop; the results are frozen
snapshots kept in ``panel.localcache.registry_cache`` until a change to the
underlying rows bumps the shared generation (see ``ai.signals``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Prefetch
from django.utils import timezone

from accounts.models import TIER_RANK, User
from accounts.selectors import KeyInfo
from orgs.models import Wallet
from panel.localcache import registry_cache
from panel.models import SiteSettings
from panel.snapshot import snapshot_of

from ..instances.backends import served_model_id
from ..instances.client import instance_base_url
from ..instances.nodes import instance_hosts
from ..models import AIModel, HealthStatus, InstanceStatus, ModelLink, Upstream
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
    health_status: str  # its effective health (ai.selectors.health.upstream_health)
    probed_ok_at: float | None = None  # epoch of the last probe, when it succeeded
    # A local model server's upstream: its instance, as it was at load time.
    instance_id: int | None = None
    instance_name: str = ""
    instance_status: str = ""
    # Whether the router may send it requests: not an instance, or a running one with a port.
    is_routable: bool = True


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
    created: int
    upstreams: tuple[UpstreamInfo, ...]  # the enabled ones, by priority
    routable: tuple[UpstreamInfo, ...]  # of those, the ones the router may try

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


async def user_info_get(user_id: int) -> UserInfo | None:
    return await registry_cache.get(("user", user_id), user_info_load, user_id)


async def ai_enabled_get() -> bool:
    return await registry_cache.get("ai_enabled", _load_ai_enabled)


def usable_links(user: UserInfo, key: KeyInfo | None) -> list[LinkInfo]:
    """The caller's links that may be used now: enabled, unexpired, within the key's org."""
    now = timezone.now()
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
        if model and model.is_active and (not allowed or model.id in allowed):
            seen.setdefault(model.id, model)
    return sorted(seen.values(), key=lambda m: m.name)
