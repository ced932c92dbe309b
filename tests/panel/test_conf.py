"""panel.conf: the request path's settings, read once and forgotten when they change."""

from datetime import UTC

from django.test import override_settings

from panel.conf import hot, now


def test_a_hot_setting_is_the_setting_and_follows_its_changes(settings):
    settings.REDIS_URL = "redis://one:6379/0"
    assert hot.REDIS_URL == "redis://one:6379/0"
    assert "REDIS_URL" in vars(hot)  # kept as a plain attribute

    settings.REDIS_URL = ""
    assert hot.REDIS_URL == ""
    with override_settings(REDIS_URL="redis://two:6379/0"):
        assert hot.REDIS_URL == "redis://two:6379/0"
    assert hot.REDIS_URL == ""


def test_now_follows_use_tz(settings):
    settings.USE_TZ = True
    assert now().tzinfo is UTC
    settings.USE_TZ = False
    assert now().tzinfo is None
