"""Switchboard settings: one module, driven by environment variables.

With no environment at all it runs embedded: SQLite in DATA_DIR, an in-memory
channel layer, a local-memory cache and a Celery broker on the file system.
DATABASE_URL and REDIS_URL switch it to PostgreSQL and Redis.
"""

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from panel.logs import FORMATS, logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Off unless asked for: `make run` and the test suite set DEBUG=true.
DEBUG = env.bool("DEBUG", default=False)
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _generated_secret(name: str, make) -> str:
    """A development secret made once and kept in DATA_DIR (mode 0600), never a constant."""
    path = DATA_DIR / name.lower().replace("_", "-")
    if not path.exists():
        # Written aside and linked into place, so two processes starting together
        # (web, worker, beat) never read a half-written file: one link wins.
        spare = path.with_name(f".{path.name}.{os.getpid()}")
        spare.write_text(make())
        spare.chmod(0o600)
        try:
            os.link(spare, path)
        except FileExistsError:
            pass
        finally:
            spare.unlink()
    return path.read_text().strip()


def _required_secret(name: str, make) -> str:
    value = env.str(name, default="")
    if value:
        return value
    if DEBUG:
        return _generated_secret(name, make)
    raise ImproperlyConfigured(
        f"{name} is not set. Set it in the environment or in .env before starting "
        "with DEBUG=false (see .env.example)."
    )


SECRET_KEY = _required_secret("SECRET_KEY", lambda: secrets.token_urlsafe(50))
# Fernet keys (comma-separated, newest first) for upstream credentials at rest.
FIELD_ENCRYPTION_KEYS = [
    k.strip()
    for k in _required_secret("FIELD_ENCRYPTION_KEY", lambda: Fernet.generate_key().decode()).split(
        ","
    )
]
for _key in FIELD_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except ValueError as _exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64-encoded bytes); "
            'generate one with: python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())"'
        ) from _exc

# Also the origins the chat WebSocket accepts (channels' AllowedHostsOriginValidator).
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "rest_framework",
    "adrf",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    # Before panel, whose admin re-registers auditlog's LogEntry page with more filters.
    "auditlog",
    "panel",
    "accounts",
    "orgs",
    "ai",
    # After our apps, so templates/ and accounts' own templates win over allauth's.
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.mfa",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "panel.audit.AuditContextMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "panel.errors.ApiErrorMiddleware",
]

ROOT_URLCONF = "panel.urls"
ASGI_APPLICATION = "panel.asgi.application"
WSGI_APPLICATION = "panel.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASE_URL = (
    env.str("DATABASE_URL", default="") or f"sqlite:///{DATA_DIR / 'switchboard.sqlite3'}"
)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL and a busy timeout let web, worker and beat share the file.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests run real servers in other threads: a file (not shared-cache memory)
    # gives them ordinary locking with the busy timeout above.
    DATABASES["default"]["TEST"] = {
        "NAME": str(DATA_DIR / f"test-switchboard-{os.getpid()}.sqlite3")
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # An unreachable server fails a connection attempt after this many seconds
    # instead of the OS's minutes; DATABASE_URL's ?connect_timeout= overrides it.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, channel layer, Celery broker ------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# Seconds to connect to Redis and to wait for a reply before it counts as down.
REDIS_TIMEOUT = env.float("REDIS_TIMEOUT", default=2.0)

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="sb"),
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "filesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "data_folder_processed": str(_broker_dir / "processed"),
        # kombu's default is ./control, which would litter the working directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"
CELERY_HEARTBEAT_INTERVAL = env.int("CELERY_HEARTBEAT_INTERVAL", default=30)

# --- Auth -------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/chat/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
SITE_ID = 1

# --- Accounts (django-allauth; accounts/adapters.py) ---------------------------------------
# Sign-up is a site setting (SiteSettings.allow_signup, off by default); an invitation
# opens it for the invitee alone. Users sign in with their username or e-mail address.
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_FORMS = {"login": "accounts.forms.LoginForm"}
SOCIALACCOUNT_ADAPTER = "accounts.adapters.SocialAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
# "mandatory" (the default): a new address is confirmed before it signs in; "optional"
# or "none" for a closed deployment whose administrator vouches for the addresses.
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="mandatory")
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "http" if DEBUG else "https"
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Switchboard] "
MFA_ADAPTER = "accounts.adapters.MFAAdapter"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = env.str("MFA_TOTP_ISSUER", default="Switchboard")
# OpenID Connect providers: any number, configured here from the environment
# (OIDC_PROVIDERS, a JSON list) or as Social applications in the admin.
_OIDC_FIELDS = ("id", "name", "issuer", "client_id", "secret")


def _oidc_apps(raw: str) -> list[dict]:
    """OIDC_PROVIDERS' JSON list as allauth's apps; its errors never quote a value (secrets)."""
    try:
        providers = json.loads(raw or "[]")
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"OIDC_PROVIDERS is not valid JSON (line {exc.lineno}, column {exc.colno})."
        ) from None
    if not isinstance(providers, list):
        raise ImproperlyConfigured("OIDC_PROVIDERS must be a JSON list of providers.")
    apps = []
    for index, provider in enumerate(providers):
        missing = [f for f in _OIDC_FIELDS if not isinstance(provider, dict) or not provider.get(f)]
        if missing:
            raise ImproperlyConfigured(
                f"OIDC_PROVIDERS[{index}] lacks {', '.join(missing)} "
                f"(each provider needs {', '.join(_OIDC_FIELDS)})."
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(provider["id"])):
            raise ImproperlyConfigured(
                f"OIDC_PROVIDERS[{index}]'s id goes in URLs: letters, digits, '_', '.', '-' only."
            )
        apps.append(
            {
                "provider_id": str(provider["id"]),
                "name": str(provider["name"]),
                "client_id": str(provider["client_id"]),
                "secret": str(provider["secret"]),
                "settings": {"server_url": str(provider["issuer"])},
            }
        )
    return apps


SOCIALACCOUNT_PROVIDERS = {
    "openid_connect": {
        "APPS": _oidc_apps(env.str("OIDC_PROVIDERS", default="")),
        # PKCE binds the code to this sign-in; a provider without it ignores the parameters.
        "OAUTH_PKCE_ENABLED": True,
    }
}
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_STORE_TOKENS = False

# --- Mail ----------------------------------------------------------------------------------
# EMAIL_URL in django-environ's form (smtp+tls://user:password@host:587); unset, mail
# (or empty) is written to the console (`make run`).
vars().update(environ.Env.email_url_config(env.str("EMAIL_URL", default="") or "consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Switchboard <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# An organisation's invitation can be accepted this many days after it was sent.
INVITATION_TTL_DAYS = env.int("INVITATION_TTL_DAYS", default=7)

REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "panel.errors.drf_exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "panel.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api.authentication.APIKeyAuthentication",
        "accounts.api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "panel.pagination.Pagination",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI 3 at /api/schema/, Swagger UI at /api/docs/ with its assets served locally.
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchboard API",
    "DESCRIPTION": "The management API (`manage` keys or a staff session), the OpenAI-compatible "
    "gateway and the panel routes. Errors use OpenAI's envelope.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "panel.openapi.postprocess",
        "ai.api.openapi.postprocess",
    ],
}

# --- I18N, static -------------------------------------------------------------
LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
# The pages people read (chat, account, sign-in) in English or Vietnamese: the browser's
# Accept-Language, or the language chosen with the selector (Django's set_language view).
LANGUAGES = [("en", "English"), ("vi", "Tiếng Việt")]
# locale/ is ours (makemessages); locale/vendor/ holds Vietnamese for the third-party msgids
# those pages show (django-allauth ships no Vietnamese), kept by hand. The first path wins.
LOCALE_PATHS = [BASE_DIR / "locale", BASE_DIR / "locale" / "vendor"]
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"

# --- Security in production ---------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# "HTTP_X_FORWARDED_PROTO,https" behind a proxy that sets that header (and strips a
# client's own); unset, only the connection's own scheme counts as HTTPS.
SECURE_PROXY_SSL_HEADER = tuple(env.list("SECURE_PROXY_SSL_HEADER", default=[])) or None
if SECURE_PROXY_SSL_HEADER and len(SECURE_PROXY_SSL_HEADER) != 2:
    raise ImproperlyConfigured(
        "SECURE_PROXY_SSL_HEADER is a header and a value, e.g. HTTP_X_FORWARDED_PROTO,https."
    )
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# Load balancers and scrapers probe these over plain HTTP on the internal address.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Sent on every response by panel.security (fast path and static files too).
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Every log line is one JSON object (timestamp, level, logger, message, request_id and the
# line's own fields; panel/logs.py). LOG_FORMAT=text writes the same for a terminal
# (`make run` sets it: the demo is read by a person, a deployment's lines by a collector).
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
if LOG_FORMAT not in FORMATS:
    raise ImproperlyConfigured(f"LOG_FORMAT must be one of {', '.join(FORMATS)}.")
LOGGING = logging_config(log_format=LOG_FORMAT, level=env.str("LOG_LEVEL", default="INFO"))

# OpenTelemetry traces of the gateway's requests (ai/gateway/tracing.py), exported over
# OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (the exporter reads the standard OTEL_*
# variables). Off unless an endpoint is set or OTEL_TRACES=true.
OTEL_TRACES = (
    env.bool("OTEL_TRACES")
    if env.str("OTEL_TRACES", default="")
    else bool(
        env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
        or env.str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", default="")
    )
)

# Static files are served by the ASGI app itself (no thread per request) unless
# a reverse proxy serves STATIC_ROOT after collectstatic.
SERVE_STATIC = env.bool("SERVE_STATIC", default=True)

# --- Gateway ---------------------------------------------------------------------
GATEWAY_BREAKER_THRESHOLD = env.int("GATEWAY_BREAKER_THRESHOLD", default=3)
GATEWAY_BREAKER_COOLDOWN = env.float("GATEWAY_BREAKER_COOLDOWN", default=30.0)
# Usage events are written in batches, off the request path, at this interval.
GATEWAY_USAGE_FLUSH_INTERVAL = env.float("GATEWAY_USAGE_FLUSH_INTERVAL", default=0.2)
# The output reserved against token and cost limits when a request sets no
# max_tokens and its model has no max_output_tokens.
GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS = env.int("GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS", default=1024)
# With Redis, a process reserves several requests at a time (a lease, ai/gateway/leases.py)
# and gives back what it has not spent after this many seconds.
GATEWAY_LEASE_SECONDS = env.float("GATEWAY_LEASE_SECONDS", default=1.0)
# A gateway process whose heartbeat is older than this is taken as dead, and the
# reconciler settles the requests it admitted but never recorded (ai/gateway/journal.py).
GATEWAY_PROCESS_TIMEOUT = env.float("GATEWAY_PROCESS_TIMEOUT", default=30.0)
# How long a graceful stop keeps retrying to write pending usage (database or Redis away).
GATEWAY_SHUTDOWN_FLUSH_SECONDS = env.float("GATEWAY_SHUTDOWN_FLUSH_SECONDS", default=10.0)
USAGE_RECONCILE_INTERVAL = env.int("USAGE_RECONCILE_INTERVAL", default=30)
# While the database is unreachable, cached keys, users and models are served
# for up to this many seconds after they were loaded; past it (or never loaded) 503.
GATEWAY_STALE_CACHE_SECONDS = env.float("GATEWAY_STALE_CACHE_SECONDS", default=300.0)
# A rotated API key's old secret keeps working this long (a rotate request may say otherwise).
API_KEY_ROTATION_GRACE_SECONDS = env.int("API_KEY_ROTATION_GRACE_SECONDS", default=86400)
# The per-process cache keeps at most this many found entries, and as many
# not-found ones (unknown keys), least recently used dropped first.
GATEWAY_CACHE_MAX_ENTRIES = env.int("GATEWAY_CACHE_MAX_ENTRIES", default=10_000)
# While the database or Redis is unreachable, the request path tries it again at
# most once per this many seconds (panel.outage); meanwhile requests get the fallback.
GATEWAY_OUTAGE_RETRY_SECONDS = env.float("GATEWAY_OUTAGE_RETRY_SECONDS", default=1.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=20 * 1024 * 1024)
# Read timeouts of the web server's HTTP protocol (panel.http): the whole request line
# and headers within HTTP_HEADER_TIMEOUT seconds, no body read stalled for longer than
# HTTP_BODY_TIMEOUT seconds. 0 turns one off.
HTTP_HEADER_TIMEOUT = env.float("HTTP_HEADER_TIMEOUT", default=10.0)
HTTP_BODY_TIMEOUT = env.float("HTTP_BODY_TIMEOUT", default=30.0)

# --- Usage rollups ------------------------------------------------------------------
USAGE_ROLLUP_INTERVAL = env.int("USAGE_ROLLUP_INTERVAL", default=60)
# Each rollup run recomputes only the hours that received events since the last
# one, found by event id. It re-reads the ids of this many seconds back, because on
# PostgreSQL an insert can commit a lower id after a higher one is seen: an insert
# transaction open longer than this could be missed (``manage.py usage_rollup --rebuild``).
USAGE_ROLLUP_SAFETY_SECONDS = env.int("USAGE_ROLLUP_SAFETY_SECONDS", default=600)
# Raw usage events older than this many days are pruned, whole days at a time
# (rollups are kept).
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=90)
if USAGE_RETENTION_DAYS < 1:
    raise ImproperlyConfigured("USAGE_RETENTION_DAYS must be at least 1.")

# --- Audit log (django-auditlog; panel/audit.py) -------------------------------------
# Who changed what in the registry, tenants, keys, wallets and settings. Only the fields an
# operator writes: what the agent, the gateway and the health checks write (through
# queryset updates, which send no signal) is left out, and secrets are masked: an entry
# says that one changed, never its value.
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=365)
AUDITLOG_MASK_CALLABLE = "panel.audit.mask"
AUDITLOG_INCLUDE_TRACKING_MODELS = (
    {"model": "ai.AIModel", "exclude_fields": ["updated_at"]},
    {
        "model": "ai.Upstream",
        "exclude_fields": [
            "health_status",
            "last_checked_at",
            "last_error",
            "consecutive_failures",
            "updated_at",
        ],
        "mask_fields": ["api_key"],
    },
    "ai.ModelLink",
    {
        "model": "ai.Instance",
        "exclude_fields": [
            "status",
            "status_reason",
            "pid",
            "pid_started",
            "started_at",
            "ready_at",
            "exit_code",
            "restart_count",
            "assigned_port",
            "last_request_at",
            "last_request_priority",
            "updated_at",
        ],
        "mask_fields": ["environment"],
    },
    {"model": "ai.Node", "exclude_fields": ["updated_at"], "mask_fields": ["api_key"]},
    {"model": "ai.Trainer", "mask_fields": ["environment"]},
    # The runner's writes are not audited; a person's cancel request is.
    {"model": "ai.TrainingJob", "include_fields": ["cancel_requested_at"]},
    {
        "model": "accounts.User",
        "exclude_fields": ["last_login"],
        "mask_fields": ["password"],
        "m2m_fields": {"groups"},
    },
    {
        "model": "accounts.APIKey",
        "exclude_fields": ["key_hash", "previous_hash", "last_used_at"],
        "m2m_fields": {"allowed_models", "instances"},
    },
    "orgs.Organisation",
    "orgs.Membership",
    # Who invited whom, with which role, and when it was accepted or revoked; never the token.
    {"model": "orgs.Invitation", "exclude_fields": ["token_hash"]},
    # The balance and holds move with usage (queryset updates); the ledger says why.
    {"model": "orgs.Wallet", "exclude_fields": ["balance", "held", "updated_at"]},
    # Top-ups, refunds and adjustments; usage charges are skipped (orgs.apps).
    "orgs.LedgerEntry",
    {"model": "panel.SiteSettings", "exclude_fields": ["updated_at"]},
    # SSO providers configured in the admin: that the client secret changed, never its value.
    {"model": "socialaccount.SocialApp", "mask_fields": ["secret"]},
)

# --- Responses API ---------------------------------------------------------------------
# A stored response (``store``, the default) can be retrieved or continued this long.
RESPONSES_TTL_DAYS = env.int("RESPONSES_TTL_DAYS", default=30)

# --- Training (ai/training) -----------------------------------------------------------
# Jobs run on Celery's ``training`` queue (workers on GPU hosts subscribe to it with
# ``-Q training``; `make run`'s worker takes it too).
CELERY_TASK_ROUTES = {"ai.tasks.training_run_task": {"queue": "training"}}
TRAINING_QUEUE = "training"
# A dataset upload larger than this is refused (413); the content is kept in the database.
TRAINING_DATASET_MAX_BYTES = env.int("TRAINING_DATASET_MAX_BYTES", default=32 * 1024 * 1024)
# Where a worker writes what its jobs produce (a directory per job).
# An empty value (.env.example's) means the default, as INSTANCE_LOG_DIR's does.
TRAINING_OUTPUT_DIR = Path(env.str("TRAINING_OUTPUT_DIR", default="") or DATA_DIR / "training")
# A job running longer than this (seconds) is stopped and failed; a trainer may set less.
TRAINING_JOB_TIMEOUT = env.int("TRAINING_JOB_TIMEOUT", default=24 * 3600)
# The runner writes the job's heartbeat (and progress) at most this often (seconds);
# a running job whose heartbeat is older than TRAINING_ORPHAN_AFTER is failed by beat.
TRAINING_HEARTBEAT_INTERVAL = env.float("TRAINING_HEARTBEAT_INTERVAL", default=5.0)
TRAINING_ORPHAN_AFTER = env.float("TRAINING_ORPHAN_AFTER", default=120.0)
# How often an upstream-trained job's status is polled (seconds).
TRAINING_UPSTREAM_POLL = env.float("TRAINING_UPSTREAM_POLL", default=10.0)

# --- Upstream health checks -----------------------------------------------------------
HEALTH_CHECK_INTERVAL = env.int("HEALTH_CHECK_INTERVAL", default=30)
HEALTH_CHECK_TICK = env.int("HEALTH_CHECK_TICK", default=5)
HEALTH_PROBE_TIMEOUT = env.float("HEALTH_PROBE_TIMEOUT", default=5.0)
HEALTH_DEGRADED_LATENCY_MS = env.int("HEALTH_DEGRADED_LATENCY_MS", default=2000)
HEALTH_RECENT_CHECKS = env.int("HEALTH_RECENT_CHECKS", default=5)
HEALTH_RETENTION_DAYS = env.int("HEALTH_RETENTION_DAYS", default=7)

# --- Observability ----------------------------------------------------------------------
# /metrics answers only with "Authorization: Bearer <METRICS_TOKEN>"; unset, metrics are off.
# Several worker processes on a host: set PROMETHEUS_MULTIPROC_DIR (prometheus-client's
# multiprocess mode) so /metrics sums them.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- Local model instances (seed 003; ai/instances) --------------------------------------
# This host's node: its agent (`manage.py instance_agent`) runs the instances whose node
# has this name, binds them to INSTANCE_HOST, and answers on INSTANCE_AGENT_URL.
INSTANCE_NODE = env.str("INSTANCE_NODE", default="local")
INSTANCE_HOST = env.str("INSTANCE_HOST", default="127.0.0.1")
INSTANCE_AGENT_URL = env.str("INSTANCE_AGENT_URL", default="http://127.0.0.1:9201")
# The agent's bearer key; unset, one derived from SECRET_KEY (every process of one
# deployment shares it).
INSTANCE_AGENT_KEY = (
    env.str("INSTANCE_AGENT_KEY", default="")
    or hmac.new(SECRET_KEY.encode(), b"switchboard-instance-agent", hashlib.sha256).hexdigest()
)
# Ports given to instances that name none, "first-last".
INSTANCE_PORT_RANGE = env.str("INSTANCE_PORT_RANGE", default="8200-8999")
INSTANCE_LOG_DIR = Path(env.str("INSTANCE_LOG_DIR", default="") or DATA_DIR / "instances")
# Each instance's log is cut at this size, keeping this many older files.
INSTANCE_LOG_MAX_BYTES = env.int("INSTANCE_LOG_MAX_BYTES", default=10 * 1024 * 1024)
INSTANCE_LOG_BACKUPS = env.int("INSTANCE_LOG_BACKUPS", default=3)
# Seconds between SIGTERM and SIGKILL when an instance is stopped.
INSTANCE_STOP_GRACE = env.float("INSTANCE_STOP_GRACE", default=10.0)
# Variables of the agent's environment passed on to model servers beyond the host's
# own (PATH, locale, CUDA_*, HF_*...; never Switchboard's settings), comma-separated.
INSTANCE_PASS_ENV = env.list("INSTANCE_PASS_ENV", default=[])
# Seconds between the agent's looks at the database and its children.
INSTANCE_POLL_INTERVAL = env.float("INSTANCE_POLL_INTERVAL", default=0.5)
# Scheduling (seed 003's InstancesConfig). Per node at most this many instances run
# (0: no limit; a Node row may say otherwise), and at most INSTANCE_MAX_INSTANCES exist.
INSTANCE_MAX_RUNNING = env.int("INSTANCE_MAX_RUNNING", default=0)
INSTANCE_MAX_INSTANCES = env.int("INSTANCE_MAX_INSTANCES", default=0)
# Seconds a request waits for an on-demand start before it gets a 503.
INSTANCE_ON_DEMAND_START_TIMEOUT = env.float("INSTANCE_ON_DEMAND_START_TIMEOUT", default=120.0)
# Requests per instance and process that may wait for a start; more get a 503 at once.
INSTANCE_START_QUEUE = env.int("INSTANCE_START_QUEUE", default=64)
# Seconds between the agent's checks for idle instances (idle_timeout is in minutes).
INSTANCE_TIMEOUT_CHECK_INTERVAL = env.float("INSTANCE_TIMEOUT_CHECK_INTERVAL", default=60.0)
# Anti-thrash: an instance that started less than this many seconds ago is evicted
# only when no other idle instance can be.
INSTANCE_MIN_RESIDENCY = env.float("INSTANCE_MIN_RESIDENCY", default=60.0)
# Seconds between a web process's writes of Instance.last_request_at for the
# instances it has requests in flight on; an instance written within twice this is busy.
INSTANCE_ACTIVITY_INTERVAL = env.float("INSTANCE_ACTIVITY_INTERVAL", default=1.0)
