"""Responses kept for the Responses API (``store``), per tenant, until they expire."""

from django.conf import settings
from django.db import models


class StoredResponse(models.Model):
    """A Responses API response and the input items that led to it, kept for a while.

    Its tenant is its user and the organisation of the key that created it (none
    for a personal key or a session): only that pair may read, continue or delete it.
    """

    id = models.CharField(primary_key=True, max_length=64)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    organisation = models.ForeignKey(
        "orgs.Organisation", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    model_name = models.CharField(max_length=200)
    # Every input item of the conversation so far (a continued one's history included).
    input_items = models.JSONField(default=list)
    response = models.JSONField()
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["user", "created_at"])]

    def __str__(self):
        return self.id


class CachedResponse(models.Model):
    """A reply of the response cache, when no Redis is configured (embedded mode).

    Its key is a digest of the tenant, the model and the canonical request body
    (``ai.gateway.response_cache``); expired rows are ignored, then purged.
    """

    key = models.CharField(primary_key=True, max_length=64)
    reply = models.JSONField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return self.key
