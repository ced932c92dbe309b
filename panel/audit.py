"""The audit log's glue to django-auditlog: who acted, from where, and secrets kept out.

django-auditlog writes one LogEntry per create, change and delete of the models listed in
``AUDITLOG_INCLUDE_TRACKING_MODELS`` (settings). Its own middleware reads ``request.user``
when the request arrives, before DRF has authenticated an API key, and is sync only; this
one keeps the request in a context variable instead, and a ``pre_save`` receiver on
LogEntry reads the actor, the key, the address and the route when an entry is written.
"""

import contextvars

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from auditlog.models import LogEntry
from django.db.models.signals import pre_save

MASK = "********"

_request = contextvars.ContextVar("audit_request", default=None)


class AuditContextMiddleware:
    """Keeps the current request where the audit receiver can find it (sync or async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)

    async def _acall(self, request):
        token = _request.set(request)
        try:
            return await self.get_response(request)
        finally:
            _request.reset(token)


def mask(value: str) -> str:
    """A secret's value in an entry: whether it is set, never a character of it."""
    return MASK if value not in ("", "None") else value


def _acting_key(request):
    from accounts.models import APIKey

    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, APIKey) else None


def _request_facts(request) -> dict:
    facts = {"method": request.method, "path": request.path}
    key = _acting_key(request)
    if key is not None:
        facts["api_key"] = {"id": key.pk, "name": key.name, "prefix": key.prefix}
    return facts


def entry_fill(sender, instance: LogEntry, **kwargs) -> None:
    """Stamps a new entry with the request's actor, API key, address and route."""
    request = _request.get()
    if request is None or instance.pk is not None:
        return
    user = getattr(request, "user", None)
    if instance.actor_id is None and user is not None and user.is_authenticated:
        instance.actor = user
        instance.actor_email = user.email or None
    instance.remote_addr = request.META.get("REMOTE_ADDR") or None
    instance.additional_data = {**(instance.additional_data or {}), **_request_facts(request)}


def connect() -> None:
    pre_save.connect(entry_fill, sender=LogEntry, dispatch_uid="panel.audit.entry_fill")
