"""Django settings: every value comes from the environment (or `.env`) through this one module.

Development defaults are safe to run on a laptop; `DEBUG=false` refuses to start without a
real `SECRET_KEY` and `ALLOWED_HOSTS`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from backend.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Core -------------------------------------------------------------------------------------

DEBUG = env.bool("DEBUG", default=True)
_DEV_SECRET_KEY = "dev-insecure-secret-key-change-me-for-production-use-only"
SECRET_KEY = env.str("SECRET_KEY", default=_DEV_SECRET_KEY if DEBUG else "")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and (not SECRET_KEY or SECRET_KEY == _DEV_SECRET_KEY):
    raise ImproperlyConfigured("DEBUG=false needs SECRET_KEY set to a real secret")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DEBUG=false needs ALLOWED_HOSTS")

# --- HTTPS ------------------------------------------------------------------------------------
# TLS is expected to end at a proxy in front of the ASGI server. SECURE_PROXY_SSL_HEADER names the
# header that proxy sets on HTTPS requests ("X-Forwarded-Proto: https"); only set it when the proxy
# always sets or strips that header, or a client could claim HTTPS. Cookies are Secure and HSTS is
# on in production; Django sends HSTS only on requests it sees as HTTPS, so it is harmless over a
# plain-HTTP hop. Redirecting HTTP to HTTPS needs to know which requests are HTTPS, so it defaults
# on only when the proxy header is configured; probes of the health endpoints are never redirected.

_proxy_ssl_header = env.str("SECURE_PROXY_SSL_HEADER", default="")
SECURE_PROXY_SSL_HEADER: tuple[str, str] | None = None
if _proxy_ssl_header:
    _name, _, _value = _proxy_ssl_header.partition(":")
    if not _name.strip() or not _value.strip():
        raise ImproperlyConfigured('SECURE_PROXY_SSL_HEADER must look like "X-Forwarded-Proto: https"')
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip())
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG and SECURE_PROXY_SSL_HEADER is not None)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Submitting a domain to the browsers' HSTS preload list is the operator's decision (it is hard to
# undo), so check --deploy's reminder about SECURE_HSTS_PRELOAD is silenced.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "channels",
    # Before django_rq: its `rqcron` command replaces django-rq's (backend/uploads/management).
    "backend.tokens",
    "backend.uploads",
    "backend.quotas",
    "backend.webhooks",
    "backend.web",
    "django_rq",
    # Static files only: GraphiQL, React and the explorer plugin for backend/templates/graphql/graphiql.html.
    "graphene_django_graphiql_static",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "backend.static_files.StaticFilesMiddleware",  # WhiteNoise, async (backend/static_files.py)
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "backend.urls"
ASGI_APPLICATION = "backend.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "backend" / "templates"],
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
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# WhiteNoise serves /static/ under any ASGI server, DEBUG or not. It finds the files where the apps
# keep them (as `runserver` would), so neither `make run` nor a deployment needs `collectstatic`;
# STATIC_ROOT is served too once something collects into it, and until then is not worth a warning.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message=f"No directory at: {re.escape(str(STATIC_ROOT))}")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# --- Database ---------------------------------------------------------------------------------
# SQLite is shared by the web process and the workers: WAL lets readers run beside the writer,
# IMMEDIATE transactions take the write lock up front so two writers queue instead of failing
# with "database is locked", and the timeout is how long they queue.

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    )
else:
    # PostgreSQL (psycopg 3) and others. Under ASGI Django's docs say to disable persistent
    # connections: a request's ORM calls run on executor threads, and a connection kept per thread
    # is never closed by the request cycle. So one connection per request or job (CONN_MAX_AGE=0;
    # the tus routes' own thread pool is the exception: backend/tus/app.py keeps one per thread;
    # put PgBouncer in front when connecting costs too much); RQ work horses start with none of the
    # parent's (UploadWorker closes them before each fork, the job closes stale ones at start).
    DATABASES["default"].setdefault("CONN_MAX_AGE", 0)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

# --- Redis: queues and the channel layer ------------------------------------------------------
# Unset REDIS_URL means "development": `make run` starts an embedded Redis and exports its URL.

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
# "maintenance" holds the periodic jobs (reaper, sweep); every UploadWorker drains it first.
# "webhooks" holds webhook delivery attempts; only WebhookWorkers drain it.
RQ_QUEUES = {name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 3600} for name in ("default", "maintenance", "webhooks")}
RQ = {"COMMIT_MODE": "on_db_commit"}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        # driver_info=None: no CLIENT SETINFO round trips (nor a package-metadata scan) per new
        # connection; every transfer job's publisher connects anew.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "driver_info": None}]},
    }
}

# --- Storage ----------------------------------------------------------------------------------

STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="local")
if STORAGE_BACKEND not in ("local", "s3"):
    raise ImproperlyConfigured("STORAGE_BACKEND must be 'local' or 's3'")
LOCAL_STORAGE_ROOT = Path(env.str("LOCAL_STORAGE_ROOT", default=str(VAR_DIR / "bucket")))
S3_BUCKET = env.str("S3_BUCKET", default="")
S3_ENDPOINT_URL = env.str("S3_ENDPOINT_URL", default="") or None
S3_PUBLIC_ENDPOINT_URL = env.str("S3_PUBLIC_ENDPOINT_URL", default="") or S3_ENDPOINT_URL
S3_REGION = env.str("S3_REGION", default="") or None
S3_CHECKSUM_ALGORITHM = env.str("S3_CHECKSUM_ALGORITHM", default="SHA256").upper()
S3_REQUEST_CHECKSUM_CALCULATION = env.str("S3_REQUEST_CHECKSUM_CALCULATION", default="when_required")
# Each part's MD5 too (Content-MD5, checked against the ETag answered), for every part. Off (the
# default), a part is checked by its MD5 only when the store's answer carries no checksum (a store
# that knows none); a part corrupted on the way to a store that echoes checksums without verifying
# them (moto) is caught by the object's checksum after Complete and the object is started over.
S3_VERIFY_PART_ETAG = env.bool("S3_VERIFY_PART_ETAG", default=False)
S3_SSE = env.str("S3_SSE", default="") or None
S3_SSE_KMS_KEY_ID = env.str("S3_SSE_KMS_KEY_ID", default="") or None
S3_STORAGE_CLASS = env.str("S3_STORAGE_CLASS", default="") or None
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="").rstrip("/") or None
DOWNLOAD_URL_TTL = env.int("DOWNLOAD_URL_TTL", default=3600)
# Direct-to-bucket uploads (createUpload mode DIRECT, the /s3/ routes Uppy calls): S3 only. Clients
# put parts straight into the bucket with presigned URLs valid this many seconds.
DIRECT_UPLOADS = env.bool("DIRECT_UPLOADS", default=STORAGE_BACKEND == "s3") and STORAGE_BACKEND == "s3"
DIRECT_UPLOAD_URL_TTL = env.int("DIRECT_UPLOAD_URL_TTL", default=3600)

# --- Uploads ----------------------------------------------------------------------------------

UPLOAD_STAGING_DIR = Path(env.str("UPLOAD_STAGING_DIR", default=str(VAR_DIR / "staging")))
UPLOAD_STAGING_TTL = env.int("UPLOAD_STAGING_TTL", default=86400)
UPLOAD_STAGING_MIN_FREE_BYTES = env.int("UPLOAD_STAGING_MIN_FREE_BYTES", default=1024**3)
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=5 * 1024**3)
UPLOAD_ALLOWED_TYPES = env.list("UPLOAD_ALLOWED_TYPES", default=["*"])
UPLOAD_MAX_ACTIVE_PER_USER = env.int("UPLOAD_MAX_ACTIVE_PER_USER", default=10)
# Per user: bytes of COMPLETED uploads plus the declared sizes of active ones; 0 is unlimited. The
# admin sets a per-user override (backend/quotas).
UPLOAD_QUOTA_BYTES = env.int("UPLOAD_QUOTA_BYTES", default=0)
UPLOAD_PART_SIZE = env.int("UPLOAD_PART_SIZE", default=8 * 1024**2)
UPLOAD_PART_CONCURRENCY = env.int("UPLOAD_PART_CONCURRENCY", default=4)
UPLOAD_PART_RETRIES = env.int("UPLOAD_PART_RETRIES", default=5)
UPLOAD_PART_DELAY_MS = env.int("UPLOAD_PART_DELAY_MS", default=0)
# A transfer of one part no larger than this runs in the worker process itself, without forking a
# work horse (README, "Small files in the worker process"); 0: every transfer forks.
UPLOAD_IN_PROCESS_MAX_BYTES = env.int("UPLOAD_IN_PROCESS_MAX_BYTES", default=1024**2)
# Resumable uploads: send whole parts to the bucket while the client still sends (issue 19). Off,
# the transfer starts after the last byte, as for a SINGLE upload (the benchmark's baseline).
UPLOAD_PIPELINE = env.bool("UPLOAD_PIPELINE", default=True)
# A pipeline run that failed (the store refusing its parts) is asked for again by the reaper after
# this, doubling with each failure in a row up to the cap; a new part arriving asks at once.
UPLOAD_PIPELINE_BACKOFF_SECONDS = env.float("UPLOAD_PIPELINE_BACKOFF_SECONDS", default=5.0)
UPLOAD_PIPELINE_BACKOFF_MAX_SECONDS = env.float("UPLOAD_PIPELINE_BACKOFF_MAX_SECONDS", default=300.0)
# Test doubles chosen by dotted path (tests/support/doubles.py), never by patching modules: a class
# the storage factory hands the backend to stand in for it, and the class a job publishes through.
STORAGE_WRAPPER = env.str("STORAGE_WRAPPER", default="") or None
PROGRESS_PUBLISHER = env.str("PROGRESS_PUBLISHER", default="backend.uploads.progress.ProgressPublisher")
# A killed worker's upload resumes within 15 s (CONTRACT section 6): a transfer's heartbeat comes
# from a thread of its own every 2 s, the reaper runs every fifth of the stale window (2 s) and
# takes an upload silent for 10 s; a work horse that dies under a live worker is given back at once.
UPLOAD_HEARTBEAT_SECONDS = env.float("UPLOAD_HEARTBEAT_SECONDS", default=2.0)
UPLOAD_STALE_AFTER_SECONDS = env.float("UPLOAD_STALE_AFTER_SECONDS", default=10.0)
# Resumable uploads (tus at /uploads/, createUpload/uploadChunk): a RECEIVING upload with no new
# byte this long expires. The lock that keeps a second writer off an upload lives in Redis with this
# TTL, renewed by its holder while it writes, so a holder that died frees it by itself.
UPLOAD_RECEIVING_TTL = env.int("UPLOAD_RECEIVING_TTL", default=86400)
UPLOAD_LOCK_TTL_SECONDS = env.float("UPLOAD_LOCK_TTL_SECONDS", default=10.0)
UPLOAD_RECEIVING_FSYNC = env.bool("UPLOAD_RECEIVING_FSYNC", default=True)
PROGRESS_RESYNC_SECONDS = env.float("PROGRESS_RESYNC_SECONDS", default=10.0)
# A server process's count of active subscriptions (in /metrics) stops counting this long after
# its last heartbeat (it sends one every third of it): how long a crashed process is still counted.
METRICS_PROCESS_TTL_SECONDS = env.float("METRICS_PROCESS_TTL_SECONDS", default=30.0)
# Django spools request bodies itself; files go straight to staging through our handler.
FILE_UPLOAD_HANDLERS = ["backend.uploads.staging.StagingUploadHandler"]
DATA_UPLOAD_MAX_NUMBER_FILES = 10

# --- Webhooks ---------------------------------------------------------------------------------
# One attempt's time limit, and the attempts before a delivery is given up. Retries back off
# exponentially with jitter: the first within WEBHOOK_RETRY_BASE_SECONDS (half of it at least),
# then doubling; the contract fixes the first retry within 10 s, so the base may not exceed 10
# (tests lower it). WEBHOOK_WORKERS is how many webhook workers `make run` starts.

WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=8)
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = env.bool("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", default=False)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=10.0)
WEBHOOK_WORKERS = env.int("WEBHOOK_WORKERS", default=2)
if not 0 < WEBHOOK_RETRY_BASE_SECONDS <= 10:
    raise ImproperlyConfigured(
        "WEBHOOK_RETRY_BASE_SECONDS must be above 0 and at most 10 (the first retry within 10 s)"
    )
if WEBHOOK_TIMEOUT_SECONDS <= 0 or WEBHOOK_MAX_ATTEMPTS < 1:
    raise ImproperlyConfigured("WEBHOOK_TIMEOUT_SECONDS must be above 0 and WEBHOOK_MAX_ATTEMPTS at least 1")

# --- GraphQL and browsers ---------------------------------------------------------------------

GRAPHIQL = env.bool("GRAPHIQL", default=DEBUG)
# Limits on a GraphQL document (QUERY_TOO_COMPLEX). The deepest query the API needs is 4 levels
# (uploads > edges > node > field); GraphiQL's introspection query is about 500 tokens.
GRAPHQL_MAX_DEPTH = env.int("GRAPHQL_MAX_DEPTH", default=10)
GRAPHQL_MAX_ALIASES = env.int("GRAPHQL_MAX_ALIASES", default=15)
GRAPHQL_MAX_TOKENS = env.int("GRAPHQL_MAX_TOKENS", default=2000)
# The largest JSON body, and the largest `operations` plus `map` of a multipart request (400).
GRAPHQL_MAX_OPERATIONS_BYTES = env.int("GRAPHQL_MAX_OPERATIONS_BYTES", default=65536)
DATA_UPLOAD_MAX_MEMORY_SIZE = GRAPHQL_MAX_OPERATIONS_BYTES
# A request body that stalls this long is cut off (408); a websocket's credential is checked again
# this often, and the socket closed with 4403 once it is revoked or expired.
REQUEST_IDLE_TIMEOUT_SECONDS = env.float("REQUEST_IDLE_TIMEOUT_SECONDS", default=30.0)
WS_AUTH_RECHECK_SECONDS = env.float("WS_AUTH_RECHECK_SECONDS", default=30.0)
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/(graphql/?$|s3/)"
CORS_ALLOW_HEADERS = ["authorization", "content-type", "x-csrftoken"]

# --- Logging ----------------------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# `json`: one JSON object per line (for a log pipeline); `text`: one readable line per event.
LOG_FORMAT = env.str("LOG_FORMAT", default="text").lower()
try:
    LOGGING = logging_config(level=LOG_LEVEL, fmt=LOG_FORMAT)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from exc
