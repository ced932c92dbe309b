"""Reads of the ``ai`` app, by subject: request-path snapshots, usage reports, health.

The key snapshot lives in ``accounts.selectors``; it is re-exported for old importers.
"""

from accounts.selectors import KeyInfo, key_info_get

from .health import (
    STATUS_ORDER,
    deployment_health,
    effective_health,
    instance_counts,
    model_statuses,
    upstream_health,
)
from .snapshots import (
    InstanceAccess,
    InstanceInfo,
    LinkInfo,
    ModelInfo,
    Registry,
    UpstreamInfo,
    UserInfo,
    ai_enabled_get,
    instance_for_caller,
    instance_info_get,
    model_for_key,
    models_for_caller,
    models_in_catalog,
    registry_get,
    registry_load,
    usable_links,
    user_info_get,
    user_info_load,
)
from .usage import USAGE_GROUPS, usage_scope_filter, usage_summary

__all__ = [
    "STATUS_ORDER",
    "USAGE_GROUPS",
    "InstanceAccess",
    "InstanceInfo",
    "KeyInfo",
    "LinkInfo",
    "ModelInfo",
    "Registry",
    "UpstreamInfo",
    "UserInfo",
    "ai_enabled_get",
    "model_for_key",
    "deployment_health",
    "effective_health",
    "instance_counts",
    "instance_for_caller",
    "instance_info_get",
    "key_info_get",
    "model_statuses",
    "models_for_caller",
    "models_in_catalog",
    "registry_get",
    "registry_load",
    "upstream_health",
    "usable_links",
    "usage_scope_filter",
    "usage_summary",
    "user_info_get",
    "user_info_load",
]
