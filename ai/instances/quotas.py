"""Instance quotas: INSTANCE_MAX_INSTANCES in all, and an organisation's max_instances
(owned) and max_running_instances (wanted running at once, on every node)."""

from __future__ import annotations

from django.conf import settings

from ..models import DesiredState, Instance


def refusal(instance: Instance, *, is_new_owner: bool, is_starting: bool) -> str | None:
    """Why ``instance`` may not be created or given to its organisation (``is_new_owner``)
    or asked to run (``is_starting``) under the quotas; None when it may."""
    limit = settings.INSTANCE_MAX_INSTANCES
    if instance.pk is None and limit and Instance.objects.count() >= limit:
        return f"This deployment allows at most {limit} instances (INSTANCE_MAX_INSTANCES)."
    org = instance.organisation
    if org is None:
        return None
    others = Instance.objects.filter(organisation=org).exclude(pk=instance.pk)
    if is_new_owner and org.max_instances is not None and others.count() >= org.max_instances:
        return f"The organisation '{org.slug}' may own at most {org.max_instances} instances."
    running = others.filter(desired_state=DesiredState.RUNNING)
    limit = org.max_running_instances
    if is_starting and limit is not None and running.count() >= limit:
        return (
            f"The organisation '{org.slug}' may run at most {limit} instances at once; "
            "stop one of them first."
        )
    return None
