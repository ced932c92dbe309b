import pytest
from django.utils import timezone

from panel.models import Heartbeat, SiteSettings
from panel.tasks import heartbeat_record

pytestmark = pytest.mark.django_db


def test_it_enables_the_ai_feature_by_default():
    assert SiteSettings.load().is_ai_enabled is True


def test_it_keeps_a_single_settings_row():
    first = SiteSettings.load()
    second = SiteSettings(is_ai_enabled=False)
    second.save()
    assert SiteSettings.objects.count() == 1
    first.refresh_from_db()
    assert first.is_ai_enabled is False


@pytest.mark.django_db(transaction=True)
async def test_it_loads_the_settings_from_async_code():
    settings_row = await SiteSettings.aload()
    assert settings_row.pk == 1


def test_it_records_a_heartbeat_from_the_task():
    before = timezone.now()
    heartbeat_record.apply(kwargs={"name": "beat"})
    heartbeat_record.apply(kwargs={"name": "beat"})
    beat = Heartbeat.objects.get()
    assert beat.name == "beat" and beat.beat_at >= before
