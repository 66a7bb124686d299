"""Settings chosen by environment.

With no environment set, the embedded default serves on a fresh machine: SQLite, the in-memory
channel layer, eager Celery and files on disk under ``var/``. ``DATABASE_URL``, ``REDIS_URL`` and
the ``AWS_*`` variables switch to PostgreSQL, Redis (channel layer, cache, Celery broker and result
backend) and S3. ``CCGSC_ENV=production`` turns on the production security settings and requires
every secret to come from the environment.
"""

import ipaddress
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CCGSC_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

CCGSC_ENV = os.environ.get("CCGSC_ENV", "development")
if CCGSC_ENV not in {"development", "test", "production"}:
    raise ImproperlyConfigured("CCGSC_ENV must be development, test or production")
PRODUCTION = CCGSC_ENV == "production"


def _env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable (1/true/yes/on)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated environment variable."""
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def _development_secret_key() -> str:
    """A per-checkout secret kept under var/, so sessions survive restarts in development."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set in production")
    SECRET_KEY = _development_secret_key()

DEBUG = _env_bool("DJANGO_DEBUG", default=CCGSC_ENV == "development")
ALLOWED_HOSTS = _env_list(
    "DJANGO_ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "testserver", "[::1]"]
)
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SITE_URL = os.environ.get("CCGSC_SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "tenants",
    "jobs",
    "billing",
    "worker_frontend",
]

MIDDLEWARE = [
    "ccgsc_site.middleware.ProxyHeadersMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.middleware.ActiveTenantMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "ccgsc_site.urls"
ASGI_APPLICATION = "ccgsc_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.active_tenant",
            ],
        },
    },
]

# Database: SQLite under var/ unless DATABASE_URL says otherwise.
DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL",
        default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        # Persistent connections: the dispatch plane makes several short transactions per result.
        # (Tests close connections after each use: threads outlive test databases.)
        conn_max_age=int(
            os.environ.get("DATABASE_CONN_MAX_AGE", "0" if CCGSC_ENV == "test" else "60")
        ),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so the servers a test starts (Daphne, Celery) share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    # WAL and a busy timeout let Daphne, the eager Celery tasks and management commands share it.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
# PostgreSQL connections come from a pool per process (psycopg's), so a burst of requests waits
# for one of DATABASE_POOL_SIZE connections instead of opening one each and exhausting the
# server's max_connections. Size it so that processes × size stays below max_connections.
# CCGSC_DATABASE_POOL_SIZE=0 turns the pool off (then DATABASE_CONN_MAX_AGE applies).
DATABASE_POOL_SIZE = int(os.environ.get("CCGSC_DATABASE_POOL_SIZE", "10"))
DATABASE_POOL_TIMEOUT = float(os.environ.get("CCGSC_DATABASE_POOL_TIMEOUT", "20"))
if DATABASES["default"]["ENGINE"].endswith("postgresql") and DATABASE_POOL_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django requires it with a pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT,
        # Connections idle this long are closed, down to min_size.
        "max_idle": 300,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# SQLite has one writer, so dispatch stays on one database thread there.
DISPATCH_PARALLEL_DATABASE = DATABASES["default"]["ENGINE"].endswith("postgresql")
# Group commit (jobs.dispatch.flusher): each Daphne process writes what its worker sockets sent
# in one transaction per flush; the set-based SQL it uses is PostgreSQL's.
DISPATCH_GROUP_COMMIT = DISPATCH_PARALLEL_DATABASE and _env_bool(
    "CCGSC_DISPATCH_GROUP_COMMIT", default=True
)
DISPATCH_FLUSH_MS = float(os.environ.get("CCGSC_DISPATCH_FLUSH_MS", "5"))
DISPATCH_FLUSH_ITEMS = int(os.environ.get("CCGSC_DISPATCH_FLUSH_ITEMS", "256"))
# Tasks a worker holds beyond its slots, so its next task is there when one finishes.
DISPATCH_PREFETCH = int(os.environ.get("CCGSC_DISPATCH_PREFETCH", "1"))
# How long a woken or welcomed socket that just got tasks to start waits before it claims its
# prefetch (jobs.consumers.WorkerConsumer.fill): a job start's prefetch claims then leave the
# CPU to the other sockets' first claims (docs/benchmarks.md). A socket whose slots are busy,
# and a result's refill, claim the prefetch at once.
DISPATCH_PREFETCH_HOLD_S = float(os.environ.get("CCGSC_DISPATCH_PREFETCH_HOLD_S", "0.3"))
# How often (±50 % jitter) a process re-checks all its idle worker sockets at once for work a
# lost wake did not announce (jobs.dispatch.idle).
DISPATCH_IDLE_RECHECK_S = float(os.environ.get("CCGSC_DISPATCH_IDLE_RECHECK_S", "15"))
# The ASGI server process's cyclic garbage collector (ccgsc_site.asgi): thresholds of
# generations 0, 1 and 2 (Python's own are 700, 10, 10; 0 turns automatic collection off). Under 1,000 sockets, Python's defaults
# promote every in-flight message's objects to the oldest generation and then run a full
# collection over every socket's objects several times a second: half a Daphne's CPU.
_gc_thresholds = _env_list("CCGSC_ASGI_GC_THRESHOLDS", ["50000", "20", "10"])
if not (1 <= len(_gc_thresholds) <= 3 and all(value.isdigit() for value in _gc_thresholds)):
    raise ImproperlyConfigured(
        "CCGSC_ASGI_GC_THRESHOLDS takes one to three non-negative integers, comma-separated"
    )
ASGI_GC_THRESHOLDS = tuple(int(value) for value in _gc_thresholds)
# A running job keeps this many of its tasks queued (the high-water mark; 0: one per replica the
# workers online can hold, at least 64): the start queues them in the request's transaction, and
# the claim that leaves half of them asks Celery to top the queue up again
# (jobs.services.lifecycle.job_queue_fill). Never more than DISPATCH_QUEUE_CHUNK per statement.
DISPATCH_QUEUE_HIGH = int(os.environ.get("CCGSC_DISPATCH_QUEUE_HIGH", "0"))
DISPATCH_QUEUE_CHUNK = int(os.environ.get("CCGSC_DISPATCH_QUEUE_CHUNK", "5000"))

AUTH_USER_MODEL = "tenants.User"
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
if CCGSC_ENV == "test":
    # Argon2 at production cost dominates test time; the hasher choice is not under test.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "landing"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Redis carries the channel layer, the cache (throttling) and Celery; without it, in-process.
# Every Redis pool is a blocking one (ccgsc_site.redis_pools): past REDIS_POOL_SIZE connections
# per pool and process, callers wait up to REDIS_POOL_TIMEOUT seconds instead of failing.
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_POOL_SIZE = int(os.environ.get("CCGSC_REDIS_POOL_SIZE", "50"))
REDIS_POOL_TIMEOUT = float(os.environ.get("CCGSC_REDIS_POOL_TIMEOUT", "10"))
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "ccgsc_site.redis_pools.BlockingRedisChannelLayer",
            # redis-py reads time out after 5 s by default, exactly the channel layer's blocking
            # receive; a longer socket timeout keeps idle consumers from crashing.
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 30,
                        "socket_connect_timeout": 5,
                        "max_connections": REDIS_POOL_SIZE,
                        "timeout": REDIS_POOL_TIMEOUT,
                    }
                ],
                "capacity": 1500,
                "expiry": 30,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("CCGSC_CACHE_PREFIX", "ccgsc"),
            "OPTIONS": {
                "pool_class": "redis.BlockingConnectionPool",
                "max_connections": REDIS_POOL_SIZE,
                "timeout": REDIS_POOL_TIMEOUT,
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT = "ccgsc_site.redis_pools:BlockingRedisTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "max_connections": REDIS_POOL_SIZE,
        "pool_timeout": REDIS_POOL_TIMEOUT,
    }
    # "<backend class>+<url>" is how Celery takes a backend class with a URL.
    CELERY_RESULT_BACKEND = f"ccgsc_site.redis_pools:BlockingRedisBackend+{REDIS_URL}"
    CELERY_REDIS_MAX_CONNECTIONS = REDIS_POOL_SIZE
    CELERY_REDIS_POOL_TIMEOUT = REDIS_POOL_TIMEOUT
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_RESULT_BACKEND = None
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_TASK_EAGER_PROPAGATES = True

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CCGSC_CELERY_QUEUE", "ccgsc")
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    "lease-sweep": {"task": "jobs.tasks.lease_sweep", "schedule": 5.0},
    # The safety net of a fill request lost with its message: a few seconds of idle workers at
    # most (the low-water mark leaves half a queue to work through meanwhile).
    "job-queue-fill": {"task": "jobs.tasks.job_queue_fill_all", "schedule": 3.0},
    "job-counters-fold": {"task": "jobs.tasks.job_counters_fold", "schedule": 10.0},
    "job-deadline-sweep": {"task": "jobs.tasks.job_deadline_sweep", "schedule": 30.0},
    "fl-round-sweep": {"task": "jobs.tasks.round_sweep", "schedule": 5.0},
    "fl-secagg-sweep": {"task": "jobs.tasks.secagg_sweep", "schedule": 5.0},
    "ledger-reconcile": {"task": "billing.tasks.ledger_reconcile", "schedule": 3600.0},
    "usage-sweep-stale": {"task": "billing.tasks.usage_sweep_stale", "schedule": 60.0},
    "stripe-reconcile": {"task": "billing.tasks.stripe_reconcile", "schedule": 3600.0},
}

# Files: disk under var/media unless an S3 bucket is configured.
AWS_STORAGE_BUCKET_NAME = os.environ.get("AWS_STORAGE_BUCKET_NAME", "")
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(VAR_DIR / "media")},
    },
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
if AWS_STORAGE_BUCKET_NAME:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": os.environ.get("AWS_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("AWS_S3_REGION_NAME") or None,
            "default_acl": None,
            "file_overwrite": False,
            "querystring_auth": True,
        },
    }
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = not PRODUCTION

# Mail: the console by default; a file directory or SMTP when configured.
_MAIL_BACKEND = os.environ.get("CCGSC_MAIL_BACKEND", "smtp" if PRODUCTION else "console")
_MAIL_BACKENDS = {
    "console": ("django.core.mail.backends.console.EmailBackend", {}),
    "file": (
        "django.core.mail.backends.filebased.EmailBackend",
        {"file_path": os.environ.get("CCGSC_MAIL_FILE_PATH", str(VAR_DIR / "mail"))},
    ),
    "smtp": (
        "django.core.mail.backends.smtp.EmailBackend",
        {
            "host": os.environ.get("CCGSC_SMTP_HOST", "localhost"),
            "port": int(os.environ.get("CCGSC_SMTP_PORT", "587")),
            "username": os.environ.get("CCGSC_SMTP_USER", ""),
            "password": os.environ.get("CCGSC_SMTP_PASSWORD", ""),
            "use_tls": _env_bool("CCGSC_SMTP_TLS", default=True),
        },
    ),
}
if _MAIL_BACKEND not in _MAIL_BACKENDS:
    raise ImproperlyConfigured("CCGSC_MAIL_BACKEND must be console, file or smtp")
MAILERS = {
    "default": {
        "BACKEND": _MAIL_BACKENDS[_MAIL_BACKEND][0],
        "OPTIONS": _MAIL_BACKENDS[_MAIL_BACKEND][1],
    }
}
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "CCGSC <no-reply@ccgsc.local>")

# Stripe. Without a secret key, billing runs in a clearly labelled test mode.
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")  # a local fake Stripe in tests
STRIPE_METER_EVENT_NAME = os.environ.get("STRIPE_METER_EVENT_NAME", "ccgsc_usage_cents")
STRIPE_ENTERPRISE_PRICE_ID = os.environ.get("STRIPE_ENTERPRISE_PRICE_ID", "")
# Test mode lets owners credit their own balance: production refuses it unless a demo deployment
# sets CCGSC_ALLOW_TEST_PAYMENTS=1 on purpose.
BILLING_TEST_MODE_ALLOWED = not PRODUCTION or os.environ.get("CCGSC_ALLOW_TEST_PAYMENTS", "") == "1"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "ccgsc_site.api_support.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": [
        "ccgsc_site.api_support.TenantRateThrottle",
        "ccgsc_site.api_support.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "tenant": os.environ.get("CCGSC_TENANT_RATE", "1200/min"),
        "anon": os.environ.get("CCGSC_ANON_RATE", "120/min"),
    },
    "DEFAULT_SCHEMA_CLASS": "ccgsc_site.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "ccgsc_site.api_support.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # `?format=` belongs to our endpoints (results as CSV), not to content negotiation.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CCGSC API",
    "DESCRIPTION": "Federated computing and federated learning platform API.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "tenants.roles.Role",
        "ApiKeyRoleEnum": [("member", "Member"), ("admin", "Admin")],
    },
}

# Security. Production turns on transport security; every environment sends a strict CSP.
# 'wasm-unsafe-eval' lets pages compile WebAssembly kernels without allowing eval().
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE, CSP.WASM_UNSAFE_EVAL],
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF, "ws:", "wss:"],
    "worker-src": [CSP.SELF, "blob:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    # Probes talk plain HTTP to the container, not through the TLS proxy.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CSP["connect-src"] = [CSP.SELF, "wss:"]

# Proxies. Off unless a deployment says so: a client could otherwise claim HTTPS or any address.
# CCGSC_PROXY_SSL_HEADER names the header the TLS-terminating proxy sets ("X-Forwarded-Proto");
# CCGSC_TRUSTED_PROXIES lists the proxies' addresses or networks. When both are set, the header
# is believed only from those addresses; throttles read the client address from X-Forwarded-For
# only through them (ccgsc_site.throttling.client_ip).
TRUSTED_PROXIES = [
    ipaddress.ip_network(item, strict=False) for item in _env_list("CCGSC_TRUSTED_PROXIES", [])
]
_PROXY_SSL_HEADER = os.environ.get("CCGSC_PROXY_SSL_HEADER", "").strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https") if _PROXY_SSL_HEADER else None
)

# Failed sign-ins and API-key authentications: (failures allowed, per window in seconds), counted
# in the cache. Per account whether or not it exists, so refusals reveal nothing.
FAILURE_LIMITS = {
    "login_account": (int(os.environ.get("CCGSC_LOGIN_FAILURES_PER_ACCOUNT", "10")), 900),
    "login_ip": (int(os.environ.get("CCGSC_LOGIN_FAILURES_PER_IP", "50")), 900),
    "api_key_ip": (int(os.environ.get("CCGSC_API_KEY_FAILURES_PER_IP", "30")), 600),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("CCGSC_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
