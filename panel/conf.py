"""Settings the request path reads on every request, as plain attributes (issue 20).

Django's ``settings`` is a lazy object: each read runs its ``__getattribute__`` in Python,
whose check for a masked proxy method fails with a caught AttributeError (0.2-0.7 us a
read on this VM kind). The gateway's fast path read settings ~17 times a request.
``hot.NAME`` reads the setting through Django once, then is an instance attribute; a
setting that changes (``override_settings``, pytest-django's ``settings``, anything that
sends ``setting_changed``) is read afresh on its next use.

For the request path only: everything else reads ``django.conf.settings`` as usual.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.core.signals import setting_changed


class HotSettings:
    def __getattr__(self, name: str):
        value = getattr(settings, name)
        self.__dict__[name] = value
        return value


hot = HotSettings()


def _forget(*, setting: str, **kwargs) -> None:
    hot.__dict__.pop(setting, None)


setting_changed.connect(_forget, dispatch_uid="panel.conf.hot")


def now() -> datetime:
    """``django.utils.timezone.now()``, with USE_TZ read as a hot setting."""
    return datetime.now(tz=UTC if hot.USE_TZ else None)
