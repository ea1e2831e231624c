"""Settings: one ``RELAY`` dict, every key with a default, read lazily.

Reading ``settings.RELAY`` on each access (never caching at import) keeps
``override_settings`` working in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

#: Every key of ``settings.RELAY`` with its default. README.rst has the table.
DEFAULTS: dict[str, Any] = {
    # Database alias whose PostgreSQL holds the jobs.
    "DATABASE_ALIAS": "default",
    # libpq DSN for the LISTEN connection, when the alias goes through a pooler
    # in transaction mode (which cannot LISTEN). None: derived from the alias.
    "LISTEN_DSN": None,
    # psycopg's prepare_threshold for django_relay's own connections. None: never
    # prepare server-side, which is what a pooler in transaction mode (PgBouncer)
    # needs. An int (psycopg's default is 5) only with a direct connection.
    "PREPARE_THRESHOLD": None,
    # Queues a runner serves when ``--queues`` is not given: name -> concurrency.
    "QUEUES": {"default": 10},
    # Size caps, in encoded bytes.
    "MAX_ARGS_BYTES": 256 * 1024,
    "MAX_RESULT_BYTES": 8192,
    # Relay defaults.
    "DEFAULT_TIMEOUT": 30.0,
    "POLL_INTERVAL": 0.5,
    # Runner: a producer re-checks its queue this often even without a NOTIFY.
    "FETCH_INTERVAL": 1.0,
    # Runner: how often scheduled/retryable jobs that are due are made available.
    "STAGE_INTERVAL": 1.0,
    # Runner: heartbeat period (on a thread of its own), and how long without one
    # before its jobs are rescued: three missed beats, so a relay waiting the default
    # 30 s gets its result when its runner's host vanished mid-job.
    "HEARTBEAT_INTERVAL": 5.0,
    "RESCUE_AFTER": 15.0,
    # Runner: warn when its event loop was blocked this long (a job calling blocking
    # code from an async process; the heartbeat has its own thread, so no rescue).
    "LOOP_BLOCKED_WARNING": 1.0,
    # Runner: on SIGTERM/SIGINT, how long running jobs get to finish.
    "GRACE_PERIOD": 15.0,
    # Finished jobs older than this many seconds are deleted. None: keep them.
    "PRUNE_AFTER": 7 * 24 * 3600.0,
    # Listener: seconds between health pings of the LISTEN connection, and how long
    # a ping may go unanswered before the connection is replaced.
    "LISTENER_PING_INTERVAL": 10.0,
    "LISTENER_PING_TIMEOUT": 5.0,
    # Deadlines of django_relay's own connections (runner, listener, relay inserts):
    # connecting, each statement (on the client side), and TCP keepalive idle time
    # (a dead peer is detected within about twice this).
    "CONNECT_TIMEOUT": 10.0,
    "STATEMENT_TIMEOUT": 30.0,
    "TCP_KEEPALIVE": 10.0,
    # Publish job events to the Channels layer (if CHANNEL_LAYERS is configured).
    "CHANNEL_LAYER": "default",
    "PUBLISH_EVENTS": True,
    # Count jobs for Prometheus in this process (needs the ``prometheus`` extra).
    "METRICS": False,
    # Trace enqueue -> process with OpenTelemetry (needs the ``otel`` extra).
    "TRACING": False,
    # Periodic jobs: a list of {"cron", "worker", "args", "options", "timezone", "name"}.
    "PERIODIC": [],
}


class _Settings:
    """Attribute access to ``settings.RELAY`` merged over :data:`DEFAULTS`."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"RELAY has no setting {name!r}")
        return getattr(django_settings, "RELAY", {}).get(name, DEFAULTS[name])


settings = _Settings()
