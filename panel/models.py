"""Site-wide settings and process heartbeats."""

from django.db import models


class SiteSettings(models.Model):
    """The single row of site-wide switches an administrator edits in the admin."""

    is_ai_enabled = models.BooleanField(
        "AI feature enabled",
        default=True,
        help_text="When off, every AI route answers 503 feature_disabled.",
    )
    allow_signup = models.BooleanField(
        "anyone may sign up",
        default=False,
        help_text="When off, accounts come from an administrator, an invitation or SSO.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "site settings"
        verbose_name_plural = "site settings"
        constraints = [
            models.CheckConstraint(condition=models.Q(pk=1), name="sitesettings_singleton"),
        ]

    def __str__(self):
        return "Site settings"

    def save(self, *args, **kwargs):
        self.pk = 1
        super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> "SiteSettings":
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj

    @classmethod
    async def aload(cls) -> "SiteSettings":
        obj, _ = await cls.objects.aget_or_create(pk=1)
        return obj


class Heartbeat(models.Model):
    """The last time a background process (beat, worker) proved it was alive."""

    name = models.CharField(max_length=50, unique=True)
    beat_at = models.DateTimeField()

    def __str__(self):
        return f"{self.name} at {self.beat_at:%Y-%m-%d %H:%M:%S}"
