"""Settings for django_relay's own test suite.

Environment:
    DATABASE_URL: the PostgreSQL server to test against; unset, the suite starts a
        throwaway server of its own in ``.pgdata/tests`` (the ``embedded`` extra) and
        exports its URL here, so that ``relayworker`` subprocesses reach it too.
    RELAY_TEST_DB_NAME: overrides the database name; tests set it when they start a
        ``relayworker`` subprocess, pointing it at pytest-django's test database.
    RELAY_TEST_SETTINGS: JSON merged over the default ``RELAY`` dict, for subprocesses.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# example_app and example_project live in example_project/. pytest's `pythonpath` adds it
# too, but relayworker subprocesses and mypy's Django plugin load these settings without it.
for _entry in (REPO_ROOT, REPO_ROOT / "example_project"):
    if str(_entry) not in sys.path:
        sys.path.append(str(_entry))

from example_project.dburl import parse  # noqa: E402
from example_project.embedded import database_url  # noqa: E402

SECRET_KEY = "django-relay-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pgtrigger",
    "channels",
    "channels_postgres",
    "django_relay",
    "example_app",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example_project.urls"

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

ASGI_APPLICATION = "example_project.asgi.application"

if "mypy" in sys.modules:
    # mypy's Django plugin loads these settings for the models' metadata and never
    # connects: no server to start for it.
    _url = os.environ.get("DATABASE_URL", "postgres:///django_relay")
else:
    _url = database_url("django_relay", purpose="tests")
_database: dict[str, Any] = parse(_url)
if os.environ.get("RELAY_TEST_DB_NAME"):
    _database["NAME"] = os.environ["RELAY_TEST_DB_NAME"]
# Names each process's connections in pg_stat_activity (its listener's too), which tests
# count; client ports would not tell them apart over the embedded server's Unix socket.
_database["OPTIONS"].setdefault("application_name", f"relay-tests-{os.getpid()}")
if os.environ.get("RELAY_TEST_CONN_MAX_AGE"):  # "none": persistent connections
    _age = os.environ["RELAY_TEST_CONN_MAX_AGE"]
    _database["CONN_MAX_AGE"] = None if _age == "none" else int(_age)
DATABASES = {
    "default": _database,
    # channels-postgres (tested as a channel layer for the job-event feed) reads its
    # tables through this alias; in tests it is the same test database.
    "channels_postgres": {**_database, "TEST": {"MIRROR": "default"}},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

RELAY: dict[str, Any] = {
    "QUEUES": {"default": 10},
    **json.loads(os.environ.get("RELAY_TEST_SETTINGS", "{}")),
}

# Django's Tasks framework on django_relay (Django 6+; Django 5.2 ignores the setting).
TASKS = {
    "default": {"BACKEND": "django_relay.tasks.RelayBackend", "QUEUES": []},
    "two_queues": {"BACKEND": "django_relay.tasks.RelayBackend", "QUEUES": ["default", "mail"]},
    "fast_retries": {
        "BACKEND": "django_relay.tasks.RelayBackend",
        "QUEUES": [],
        "OPTIONS": {"MAX_ATTEMPTS": 4, "BACKOFF": 0.1},
    },
    "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend", "QUEUES": []},
}

STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},  # stderr
    "loggers": {
        "django_relay": {"handlers": ["console"], "level": "INFO"},
        # Django's own lines for tasks (enqueued, started, finished with a traceback).
        "django.tasks": {"handlers": ["console"], "level": "INFO"},
    },
}

# RELAY_TEST_SPANS: a file where this process (a runner subprocess) writes the
# OpenTelemetry spans it ends, one JSON object per line; set up here as a project
# would set up its SDK in settings.py.
if os.environ.get("RELAY_TEST_SPANS"):
    from opentelemetry import trace as _trace
    from opentelemetry.sdk.trace import TracerProvider as _TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    _provider = _TracerProvider()
    _provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=open(os.environ["RELAY_TEST_SPANS"], "a", buffering=1),  # noqa: SIM115
                formatter=lambda span: json.dumps(json.loads(span.to_json())) + "\n",
            )
        )
    )
    _trace.set_tracer_provider(_provider)
