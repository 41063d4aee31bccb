"""Settings shared by every environment, read from the environment.

With no DATABASE_URL / REDIS_URL, Beatkeeper runs on SQLite (WAL mode) and the embedded
Valkey server under VAR_DIR, which the launcher (`make run`) starts. See README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from project import env

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env.string("BEATKEEPER_VAR_DIR") or BASE_DIR / "var").resolve()

SECRET_KEY = env.secret("SECRET_KEY")
DEBUG = False
ALLOWED_HOSTS = env.items("ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env.items("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_celery_results",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc served from here, not a CDN
    "django_htmx",  # request.htmx, and htmx itself ({% htmx_script %}): the console's live lists
    "scheduler_app",
    "maintenance",
]
# Your own task apps, without editing this file: BEATKEEPER_APPS=reports,billing (README: Adding a task).
INSTALLED_APPS += env.apps("BEATKEEPER_APPS", INSTALLED_APPS)

MIDDLEWARE = [
    "scheduler_app.middleware.ProbeMiddleware",  # /healthz, /readyz, /metrics: before host checks and redirects
    "django.middleware.security.SecurityMiddleware",
    "scheduler_app.middleware.RefuseNulMiddleware",  # a clear 400, not PostgreSQL's 500
    "scheduler_app.middleware.BodyLimitMiddleware",  # too large a body: a 413 saying the limit, before CSRF reads it
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",  # request.htmx: a live region's refresh gets only the region
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# One request body at most (scheduler_app/limits.py: MAX_BODY_BYTES); larger ones get a 413 saying so.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------------
EMBEDDED_DATABASE_URL = f"sqlite:///{VAR_DIR / 'beatkeeper.sqlite3'}"
DATABASES = {"default": env.database("DATABASE_URL", EMBEDDED_DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while the worker writes; IMMEDIATE transactions and a
    # generous timeout turn writer contention into waiting instead of "database is locked".
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A server that does not answer fails a request (and /readyz) in seconds, not after TCP's minutes.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis (broker, locks) ------------------------------------------------------------
EMBEDDED_REDIS_SOCKET = VAR_DIR / "valkey" / "valkey.sock"
REDIS_URL = env.redis_url("REDIS_URL", f"unix://{EMBEDDED_REDIS_SOCKET}")
USES_EMBEDDED_REDIS = not env.string("REDIS_URL")
# Seconds a web request waits for each Redis call (connect, answer, a publish); a hung Redis
# then costs a request a few seconds and a 503, not a proxy's timeout. Workers, beat and the
# recorder keep longer timeouts (scheduler_app/connection.py, the broker's transport options).
REDIS_REQUEST_TIMEOUT = env.number("REDIS_REQUEST_TIMEOUT", 1.5, minimum=0.1)

# --- Auth, i18n, static ---------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.string("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# --- JSON API (scheduler_app/api/) -------------------------------------------------------
# Tokens first: an anonymous call gets 401 with `WWW-Authenticate: Token`. The staff
# session works too, with Django's CSRF check on every write.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["scheduler_app.api.permissions.StaffWithModelPermission"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["scheduler_app.api.parsers.LimitedJSONParser"],  # deep JSON: a 400, not a 500
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "scheduler_app.api.errors.handle",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Beatkeeper API",
    "DESCRIPTION": "Schedules, runs and tasks. Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # /api/docs/ and /api/redoc/ load their scripts from this server (drf-spectacular-sidecar).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery ---------------------------------------------------------------------------
# Read by project/celery.py through the CELERY_ namespace.
CELERY_BROKER_URL = env.broker_url(REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    # A message held by a worker that died is delivered again after this many seconds.
    # Live workers refresh the messages they hold (scheduler_app/runs/heartbeat.py), so a long
    # run or a far ETA is never delivered twice, whatever this value.
    "visibility_timeout": env.integer("CELERY_VISIBILITY_TIMEOUT", 300, minimum=5),
    # Look for such messages every 10 s (kombu's default throttle makes it every 100 s),
    # so a dead worker's run is redelivered within visibility_timeout + 10 s.
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    # Ten priority levels, 0 the highest (Redis' order); messages default to 5.
    "priority_steps": list(range(10)),
    "queue_order_strategy": "priority",
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    "health_check_interval": 25,
    # A sentinel:// REDIS_URL: the service (master_name) and how to reach the sentinels.
    **env.broker_transport_options(REDIS_URL, socket_timeout=5),
}
# Runs are recorded in django-celery-results' TaskResult, but not on the run's path: the
# backend hands each state change to Redis and `manage.py record_runs` writes them in
# batches (scheduler_app/runs/ledger.py, recorder.py).
CELERY_RESULT_BACKEND = "scheduler_app.runs.ledger:LedgerBackend"
CELERY_RESULT_EXTENDED = True  # name, args, worker, periodic task name on every run
CELERY_TASK_TRACK_STARTED = True  # a STARTED row (with date_started) while a run is running
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-run leaves the message for redelivery
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # with late acks: hold no more than one spare message
CELERY_TASK_DEFAULT_PRIORITY = 5
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Task events (for Flower and `celery events`) are three more publishes per run: they cost
# about 45 % of a worker's throughput (bench/ledger.py --settings), and the console shows
# every run live without them. CELERY_TASK_EVENTS=true turns them on (or `celery -A project
# control enable_events` for a while).
CELERY_WORKER_SEND_TASK_EVENTS = env.boolean("CELERY_TASK_EVENTS", False)
CELERY_TASK_SEND_SENT_EVENT = CELERY_WORKER_SEND_TASK_EVENTS
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULER = "scheduler_app.beat:Scheduler"
# A slot found due later than this (beat was down) follows the schedule's catch-up policy.
BEAT_CATCH_UP_GRACE_SECONDS = env.number("BEAT_CATCH_UP_GRACE_SECONDS", 60, minimum=1)
# Beats share a leader lease: a follower takes over within this many seconds of the
# leader's death or hang (scheduler_app/beat/leader.py).
BEAT_LEASE_SECONDS = env.number("BEAT_LEASE_SECONDS", 10, minimum=2)
# How often beat renews the lease, reads the change log and writes last_run_at.
BEAT_CHECK_SECONDS = env.number("BEAT_CHECK_SECONDS", 1, minimum=0.1)
# A backfill (manage.py backfill, the admin, POST /api/schedules/{id}/backfill/) of more
# slots than this is refused, saying how many the range holds (scheduler_app/backfills.py).
BACKFILL_MAX_SLOTS = env.integer("BACKFILL_MAX_SLOTS", 1000, minimum=1)
# Retention is cleanup_old_runs' job (keep-last-N per schedule); Celery's own nightly
# backend_cleanup would delete every run older than a day.
CELERY_RESULT_EXPIRES = None
DJANGO_CELERY_BEAT_TZ_AWARE = True

# --- The run ledger (scheduler_app/runs/ledger.py, recorder.py) --------------------------
LEDGER_BATCH = min(2000, env.integer("LEDGER_BATCH", 500, minimum=1))  # state changes per upsert (at most 2000)
# The recorder writes at most this often unless a full batch waits: a finished run's row
# shows within about this long, in fewer and larger transactions.
LEDGER_FLUSH_SECONDS = env.number("LEDGER_FLUSH_SECONDS", 0.25, minimum=0)
LEDGER_LEASE_SECONDS = env.number("LEDGER_LEASE_SECONDS", 10, minimum=2)  # a standby recorder takes over within it
# /readyz fails when the oldest state change not yet in TaskResult is older than this.
LEDGER_MAX_LAG_SECONDS = env.number("LEDGER_MAX_LAG_SECONDS", 60, minimum=1)
# A backlog of more state changes than this is reported (metrics, /readyz, dashboard, log); never dropped.
LEDGER_BACKLOG_LIMIT = env.integer("LEDGER_BACKLOG_LIMIT", 1_000_000, minimum=1)
# How long a run's latest state stays in Redis: unrecorded (a database outage), and recorded.
LEDGER_UNRECORDED_TTL = env.integer("LEDGER_UNRECORDED_TTL", 7 * 86400, minimum=3600)
LEDGER_RECORDED_TTL = env.integer("LEDGER_RECORDED_TTL", 300, minimum=10)
# A run's STARTED is sent this many seconds after it starts, unless it has ended by then
# (its end carries its start): a short run costs one write instead of two. 0 sends it at once.
LEDGER_STARTED_DELAY = env.number("LEDGER_STARTED_DELAY", 0.2, minimum=0)

# --- Poison messages (scheduler_app/runs/poison.py) -------------------------------------
# A message handed to the pool this many times without finishing (its process was killed
# each time) is set aside in the dead letters instead of being run again.
WORKER_MAX_DELIVERIES = env.integer("WORKER_MAX_DELIVERIES", 3, minimum=1)
# Seconds a redelivered message's count is kept between two deliveries.
WORKER_DELIVERY_TTL = env.integer("WORKER_DELIVERY_TTL", 86400, minimum=60)
# Dead letters kept in Redis at most; the oldest go first.
DEAD_LETTERS_MAX = env.integer("DEAD_LETTERS_MAX", 10_000, minimum=1)

# --- Alerts (scheduler_app/monitoring/alerts.py) ---------------------------------------
# Late, failing and recovered schedules are sent to these channels; none set: no alerts.
ALERT_EMAILS = env.emails("ALERT_EMAILS")
ALERT_WEBHOOK_URL = env.http_url("ALERT_WEBHOOK_URL")
ALERT_WEBHOOK_SECRET = env.secret("ALERT_WEBHOOK_SECRET")  # signs the webhook's body (HMAC-SHA256)
ALERT_BASE_URL = env.http_url("ALERT_BASE_URL")  # makes the links in alerts absolute
EMAIL_HOST = env.string("EMAIL_HOST", "localhost")
EMAIL_PORT = env.integer("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env.string("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env.secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env.boolean("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env.integer("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env.string("DEFAULT_FROM_EMAIL", "beatkeeper@localhost")

# --- Maintenance tasks (defaults for the catalog's schedules) ---------------------------
RUN_RETENTION_HOURS = env.number("RUN_RETENTION_HOURS", 24, minimum=0)
RUN_RETENTION_KEEP_LAST = env.integer("RUN_RETENTION_KEEP_LAST", 10)  # newest runs kept per schedule
TEMP_CLEANUP_DIRS = env.items("TEMP_CLEANUP_DIRS", str(VAR_DIR / "tmp"), separator=":")
TEMP_CLEANUP_MAX_AGE_HOURS = env.number("TEMP_CLEANUP_MAX_AGE_HOURS", 24, minimum=0)
HEALTH_THRESHOLDS = {
    "memory_percent": env.number("HEALTH_MEMORY_WARN_PERCENT", 80),
    "disk_percent": env.number("HEALTH_DISK_WARN_PERCENT", 90),
    "cpu_percent": env.number("HEALTH_CPU_WARN_PERCENT", 90),
    "queue_depth": env.integer("HEALTH_QUEUE_WARN_DEPTH", 1000),
}
# A worker that starts sends one health check, so an operator sees the platform work at once.
STARTUP_HEALTH_CHECK = env.boolean("STARTUP_HEALTH_CHECK", True)
HEALTH_DISK_PATH = env.string("HEALTH_DISK_PATH") or str(VAR_DIR.parent)

# --- Probes and metrics (scheduler_app/monitoring/readiness.py, .../metrics.py) -----------
# /readyz fails when no beat ticked within this many seconds (or none leads).
READYZ_BEAT_MAX_AGE = env.number("READYZ_BEAT_MAX_AGE", 30, minimum=1)
# /metrics: a bearer token, a list of client networks, or both. With neither, /metrics
# answers 403 (local settings allow loopback addresses).
METRICS_TOKEN = env.secret("METRICS_TOKEN")
METRICS_ALLOWED_IPS = env.networks("METRICS_ALLOWED_IPS")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.string("LOG_LEVEL", "INFO").upper()},
    # Django's own console handler would print every django.* line a second time.
    "loggers": {"django": {"handlers": [], "level": "INFO", "propagate": True}},
}
