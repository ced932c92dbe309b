"""Settings are read once at start-up, so each case runs in a fresh interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
    "db": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "db_host": settings.DATABASES["default"].get("HOST", ""),
    "db_options": settings.DATABASES["default"].get("OPTIONS", {}),
    "cache": settings.CACHES["default"]["BACKEND"],
    "cache_location": settings.CACHES["default"].get("LOCATION", ""),
    "channels": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "broker": settings.CELERY_BROKER_URL,
    "broker_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    "debug": settings.DEBUG,
    "secret_key": settings.SECRET_KEY,
    "field_keys": settings.FIELD_ENCRYPTION_KEYS,
    "allowed_hosts": settings.ALLOWED_HOSTS,
    "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
    "csrf_cookie_secure": settings.CSRF_COOKIE_SECURE,
}))
"""


def _run(tmp_path, **env_vars):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DEBUG"}
        and not key.startswith("FIELD_ENCRYPTION")
    }
    env.update({"DJANGO_SETTINGS_MODULE": "panel.settings", "DATA_DIR": str(tmp_path), **env_vars})
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,  # no .env from the checkout is read from here
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


SECRETS = {
    "SECRET_KEY": "a-real-secret",
    "FIELD_ENCRYPTION_KEY": "2yy8YpVhS1u0c8yJqmPZ7Yw0RqUq7Vq3Ck4o8mP3m8k=",
}


def test_it_runs_embedded_when_debug_is_asked_for(tmp_path):
    result = _run(tmp_path, DEBUG="true")
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["db"] == "django.db.backends.sqlite3"
    assert probe["db_name"] == str(tmp_path / "switchboard.sqlite3")
    assert probe["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert probe["channels"] == "channels.layers.InMemoryChannelLayer"
    assert probe["broker"] == "filesystem://"
    assert probe["broker_options"]["data_folder_in"] == str(tmp_path / "broker" / "queue")
    assert (tmp_path / "broker" / "queue").is_dir()


def test_it_selects_postgresql_and_redis_from_the_environment(tmp_path):
    result = _run(
        tmp_path,
        DEBUG="true",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["db"] == "django.db.backends.postgresql"
    assert probe["db_name"] == "test"
    assert probe["db_host"] == "127.0.0.1"
    assert probe["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert probe["cache_location"] == "redis://127.0.0.1:6379/0"
    assert probe["channels"] == "channels_redis.core.RedisChannelLayer"
    assert probe["broker"] == "redis://127.0.0.1:6379/0"


def test_it_is_safe_by_default_with_no_environment(tmp_path):
    # Issue 11: DEBUG defaulted to true, with ALLOWED_HOSTS=* and keys derived from
    # constants in settings.py. Now nothing set means production: secrets required.
    result = _run(tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_debug_is_off_and_cookies_secure_unless_asked_for(tmp_path):
    result = _run(tmp_path, **SECRETS)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["debug"] is False
    assert probe["session_cookie_secure"] is True
    assert probe["csrf_cookie_secure"] is True
    assert "*" not in probe["allowed_hosts"]


def test_debug_generates_its_secrets_once_and_keeps_them_in_the_data_dir(tmp_path):
    (tmp_path / "other").mkdir()
    first = json.loads(_run(tmp_path, DEBUG="true").stdout)
    again = json.loads(_run(tmp_path, DEBUG="true").stdout)
    other = json.loads(_run(tmp_path / "other", DEBUG="true").stdout)
    assert first["secret_key"] == again["secret_key"] != other["secret_key"]
    assert first["field_keys"] == again["field_keys"] != other["field_keys"]
    assert "dev-only" not in first["secret_key"]
    for name in ("secret-key", "field-encryption-key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "field-encryption-key").read_text() == first["field_keys"][0]
    assert "*" not in first["allowed_hosts"]
    assert first["session_cookie_secure"] is False


@pytest.mark.parametrize(
    ("url", "seconds"),
    [
        ("postgres://postgres@db.internal/sb", 3),
        ("postgres://postgres@db.internal/sb?connect_timeout=7", 7),
    ],
)
def test_a_database_that_cannot_be_reached_fails_a_connection_in_seconds(tmp_path, url, seconds):
    result = _run(tmp_path, DATABASE_URL=url, **SECRETS)
    assert result.returncode == 0, result.stderr
    assert int(json.loads(result.stdout)["db_options"]["connect_timeout"]) == seconds


@pytest.mark.parametrize("debug", [{}, {"DEBUG": "false"}])
@pytest.mark.parametrize("missing", ["SECRET_KEY", "FIELD_ENCRYPTION_KEY"])
def test_it_refuses_to_start_without_secrets_when_debug_is_off(tmp_path, missing, debug):
    secrets = dict(SECRETS)
    del secrets[missing]
    result = _run(tmp_path, **debug, **secrets)
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr


def test_it_starts_with_debug_off_when_secrets_are_given(tmp_path):
    result = _run(tmp_path, DEBUG="false", **SECRETS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["debug"] is False


def test_it_refuses_a_field_encryption_key_that_is_not_a_fernet_key(tmp_path):
    result = _run(tmp_path, DEBUG="false", SECRET_KEY="s", FIELD_ENCRYPTION_KEY="short")
    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEY" in result.stderr


def test_env_example_lists_every_variable_the_settings_read():
    import re

    settings_source = (ROOT / "panel" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z_]+)"', settings_source))
    read |= set(re.findall(r'_required_secret\("([A-Z_]+)"', settings_source))
    listed = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read - listed == set()
