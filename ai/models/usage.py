"""What each admitted request used."""

from decimal import Decimal

from django.conf import settings
from django.db import models


class UsageStatus(models.TextChoices):
    OK = "ok", "OK"
    UPSTREAM_ERROR = "upstream_error", "Upstream error"
    CLIENT_CANCELLED = "client_cancelled", "Client cancelled"
    # Admitted by a gateway process that died before recording it; settled by the reconciler.
    LOST = "lost", "Lost (process died)"


def _reference(to: str, **options) -> models.ForeignKey:
    """A reference that outlives its row: no database constraint, nothing done on delete."""
    return models.ForeignKey(
        to,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        related_name="+",
        **options,
    )


class UsageEvent(models.Model):
    """One admitted request, whatever its end: tokens, cost, timings and who made it."""

    created_at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=64, db_index=True)
    # References without database constraints: an admin may delete a user, key, link,
    # model or upstream while its requests are in flight, and their usage must still be
    # written (and outlive the row). ``model_name`` keeps what the id meant.
    #
    # Every index is written by every request (the usage writer inserts ~one row a
    # request), and nothing reads these rows by user, organisation, link, key or
    # upstream alone: the user, organisation and link lead the indexes below, and
    # reports read the rollups. So only ``model`` (the admin's filter) has its own
    # (issue 20: 11 indexes a row were ~30 % of the writer's SQLite time).
    user = _reference(settings.AUTH_USER_MODEL, db_index=False)
    organisation = _reference("orgs.Organisation", blank=True, db_index=False)
    api_key = _reference("accounts.APIKey", blank=True, db_index=False)
    link = _reference("ai.ModelLink", blank=True, db_index=False)
    model = _reference("ai.AIModel")
    model_name = models.CharField(max_length=100, blank=True)
    upstream = _reference("ai.Upstream", blank=True, db_index=False)
    route = models.CharField(max_length=40)
    is_stream = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(
        default=0, help_text="Every input token, cache reads and writes included."
    )
    completion_tokens = models.PositiveIntegerField(
        default=0, help_text="Every output token, reasoning included."
    )
    # Columns added after the first release carry a database default too (db_default), so
    # that replicas of the previous version, which do not name them, can still insert while
    # an upgrade rolls (README, Upgrading).
    cache_read_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Of the prompt tokens, those read from the prompt cache."
    )
    cache_write_tokens = models.PositiveIntegerField(
        default=0,
        db_default=0,
        help_text="Of the prompt tokens, those written to the prompt cache.",
    )
    reasoning_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Of the completion tokens, those spent reasoning."
    )
    images = models.PositiveIntegerField(default=0)
    is_estimated = models.BooleanField(
        default=False, help_text="Tokens estimated: the upstream sent no usage block."
    )
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    # A database default too: rows written by plain inserts (the reconciler's) get it.
    is_cache_hit = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Answered from the response cache: no upstream call, no cost.",
    )
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"]),
            models.Index(fields=["organisation", "created_at"]),
            models.Index(fields=["link", "created_at"]),
        ]

    def __str__(self):
        return f"{self.request_id} {self.route} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class InFlightAdmission(models.Model):
    """An admitted request not yet recorded, journalled by the process serving it.

    Written in the admission's transaction on the database path (Redis keeps the
    same journal in a hash per process). The usage flush deletes it with the
    UsageEvent it becomes; one left behind by a dead process is settled as lost
    by ``usage_reconcile``.
    """

    process = models.CharField(max_length=80)
    request_id = models.CharField(max_length=64)
    admitted_at = models.DateTimeField()
    entry = models.JSONField()  # the event's ids and the reservation to release

    class Meta:
        indexes = [models.Index(fields=["process", "request_id"])]

    def __str__(self):
        return f"{self.process} {self.request_id}"


class GatewayProcess(models.Model):
    """A gateway process's heartbeat (database path); a stale one is taken as dead."""

    name = models.CharField(max_length=80, unique=True)
    seen_at = models.DateTimeField()

    def __str__(self):
        return self.name


class LimitCounter(models.Model):
    """A limit window's running total, for the database path (no Redis)."""

    key = models.CharField(max_length=120, unique=True)
    value = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return f"{self.key}={self.value}"


class RollupPeriod(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class UsageRollup(models.Model):
    """Usage summed per hour or day and per model, link, user, organisation and key.

    Ids are plain integers (0 = none) so that rollups outlive the rows they
    count and the unique key has no NULLs.
    """

    period = models.CharField(max_length=10, choices=RollupPeriod.choices)
    bucket_start = models.DateTimeField()
    model_id = models.BigIntegerField(default=0)
    link_id = models.BigIntegerField(default=0)
    user_id = models.BigIntegerField(default=0)
    organisation_id = models.BigIntegerField(default=0)
    api_key_id = models.BigIntegerField(default=0)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)  # cache reads and writes included
    completion_tokens = models.PositiveBigIntegerField(default=0)  # reasoning included
    cache_read_tokens = models.PositiveBigIntegerField(default=0, db_default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0, db_default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0, db_default=0)
    images = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=16, decimal_places=6, default=Decimal("0"))
    # Percentiles over the bucket's successful requests (ai/services/usage.py says how);
    # None when it had none (for TTFT: none streamed a first token).
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    ttft_p50_ms = models.FloatField(null=True, blank=True)
    ttft_p95_ms = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "period",
                    "bucket_start",
                    "model_id",
                    "link_id",
                    "user_id",
                    "organisation_id",
                    "api_key_id",
                ],
                name="usagerollup_unique_bucket",
            ),
        ]
        indexes = [models.Index(fields=["period", "bucket_start"])]

    def __str__(self):
        return f"{self.period} {self.bucket_start:%Y-%m-%d %H:00}"


class UsageSample(models.Model):
    """An hourly rollup's latency and TTFT reservoirs, so that its day is rebuilt from hours.

    For the rollup's own use (ai/services/usage.py): never shown, and pruned with the
    raw events, past which no day is recomputed. Keyed like the hourly rollup row.
    """

    bucket_start = models.DateTimeField()
    model_id = models.BigIntegerField(default=0)
    link_id = models.BigIntegerField(default=0)
    user_id = models.BigIntegerField(default=0)
    organisation_id = models.BigIntegerField(default=0)
    api_key_id = models.BigIntegerField(default=0)
    data = models.BinaryField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "bucket_start",
                    "model_id",
                    "link_id",
                    "user_id",
                    "organisation_id",
                    "api_key_id",
                ],
                name="usagesample_unique_bucket",
            ),
        ]

    def __str__(self):
        return f"samples {self.bucket_start:%Y-%m-%d %H:00}"


class RollupState(models.Model):
    """Where the usage rollup stands (one row, also its lock): which event ids it has counted.

    ``rolled_id``: every event with an id up to it is committed and counted.
    ``seen``: [unix time, highest visible id] of the recent runs, oldest first; an
    entry older than USAGE_ROLLUP_SAFETY_SECONDS becomes ``rolled_id``.
    ``pruned_before``: raw events before it are gone, so no hour before it is recomputed.
    """

    rolled_id = models.BigIntegerField(default=0)
    seen = models.JSONField(default=list)
    pruned_before = models.DateTimeField(null=True, blank=True)
    rebuilt_at = models.DateTimeField(null=True, blank=True)
    ran_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(pk=1), name="rollupstate_singleton"),
        ]

    def __str__(self):
        return f"rolled up to event {self.rolled_id}"
